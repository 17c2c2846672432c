"""``make screenshots``: the pictures of the MLflow UI in docs/, taken from the real UI.

Starts ``mlflow ui`` on a free loopback port over the project's store (``MLFLOW_TRACKING_URI``,
else mlflow.db at the root; run ``make repro`` and a search first), opens each page in headless
Chromium and saves it as a PNG:

- docs/mlflow-runs.png: the MNIST experiment's runs table, newest first, a search one parent row;
- docs/mlflow-run.png: the best MNIST run's metric charts;
- docs/mlflow-model.png: the registered model of that run, with its description and versions;
- docs/mlflow-search.png: the latest search of that experiment, its trials best first.

Chromium comes from the system (``apt-get install chromium``); ``--chromium`` names another. It is
driven through its DevTools protocol on a pipe (``--remote-debugging-pipe``: no port, no package),
so that the browser's UI settings can be those of a person who chose the training view and
closed MLflow's assistant panel (it opens itself on a browser's first visit).
"""

from __future__ import annotations

import argparse
import base64
import fcntl
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

from nnlab.config.paths import find_root
from nnlab.errors import TrackingError
from nnlab.tracking.ui import WORKFLOW, runs_url, tracking_uri

PROG = "nnlab.screenshots"
WINDOW = (1700, 1000)
SETTLE_SECONDS = 3.0  # a page is drawn once its text has not changed for this long
PAGE_TIMEOUT = 120.0
# A headless browser that fetches nothing of its own (the tests render pages with these too).
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)
# The runs table's columns beside the run's name: what a person compares.
COLUMNS = [
    "attributes.`Models`",
    "metrics.`test_acc`",
    "metrics.`best_val_acc`",
    "metrics.`train_seconds`",
    "params.`model.class`",
    "params.`optimizer.lr`",
    "params.`data.batch_size`",
    "params.`trainer.max_epochs`",
]
# A search's trials: their objective and the values the search chose.
SEARCH_COLUMNS = [
    "metrics.`best_val_acc`",
    "tags.`optuna_state`",
    "params.`optimizer.class`",
    "params.`optimizer.lr`",
    "params.`data.batch_size`",
    "params.`model.hidden_sizes`",
    "params.`model.dropout`",
]
# What the run's page shows: its learning curves (the charts are listed by name, timings first).
FILTERS = {"mlflow-run.png": "loss"}
# The UI's own settings in the browser's local storage (key_v<version>: JSON), as a person leaves them.
UI_SETTINGS = {
    "mlflow.workflowType_v1": "machine_learning",
    "mlflow.assistant.fab.autoOpenedOnFirstLoad_v1": True,
    "mlflow.assistant.panelOpen_v1": False,
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_ui(uri: str, port: int, artifacts: Path) -> subprocess.Popen:
    """``mlflow ui`` as ``make ui`` starts it; returns once it answers (or raises TrackingError)."""
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri]
    command += ["--default-artifact-root", str(artifacts), "--host", "127.0.0.1", "--port", str(port)]
    command += ["--workers", "1"]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while time.time() < deadline:
        if server.poll() is not None:
            raise TrackingError(f"mlflow ui exited: {server.stderr.read().decode(errors='replace')[-500:]}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).read()
            return server
        except OSError:
            time.sleep(1)
    server.kill()
    raise TrackingError("mlflow ui did not answer within 300 s")


def pages(uri: str, base: str) -> dict[str, tuple[str, dict]]:
    """{file name: (address, the UI's settings for that page)} of the pages to take, from what the
    store holds. The runs table's settings (its columns) are kept per experiment, so each table
    page sets its own."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    mnist = client.get_experiment_by_name("nnlab-mnist")
    if mnist is None:
        raise TrackingError(f"tracking store {uri} has no nnlab-mnist experiment: run make repro first")
    table = f"MLflowLocalStorage-1.1-ExperimentPage-{json.dumps([mnist.experiment_id])}-ReactComponentState"
    runs = runs_url(base, mnist.experiment_id)
    # The UI nests child runs under their parent only when the table is sorted by start time.
    newest = "orderByKey=attributes.start_time&orderByAsc=false"
    found = {"mlflow-runs.png": (f"{runs}&{newest}", {table: {"selectedColumns": COLUMNS}})}
    best = client.search_runs([mnist.experiment_id], "metrics.test_acc > 0", order_by=["metrics.test_acc DESC"])
    if best:
        run = best[0]
        page = f"{base}/#/experiments/{mnist.experiment_id}/runs/{run.info.run_id}/model-metrics?{WORKFLOW}"
        found["mlflow-run.png"] = (page, {})
        name = f"nnlab-{run.data.tags.get('experiment')}"
        if client.search_registered_models(f"name = '{name}'"):
            found["mlflow-model.png"] = (f"{base}/#/models/{name}?{WORKFLOW}", {})
    searches = client.search_runs(
        [mnist.experiment_id], "attributes.run_name LIKE 'search: %'", order_by=["attributes.start_time DESC"]
    )
    if searches:
        parent = searches[0]
        # the parent and its trials in one list, ranked (the parent holds the study's best value)
        only = urllib.parse.quote(f"tags.optuna_study = '{parent.data.tags['optuna_study']}'")
        best_first = f"orderByKey={urllib.parse.quote('metrics.`best_val_acc`')}&orderByAsc=false"
        found["mlflow-search.png"] = (
            f"{runs}&searchFilter={only}&{best_first}",
            {table: {"selectedColumns": SEARCH_COLUMNS}},
        )
    return found


class Browser:
    """Headless Chromium over its DevTools pipe (fd 3: commands in, fd 4: replies out, each a
    JSON message ended by a NUL byte), one page."""

    def __init__(self, chromium: str, profile: str):
        to_browser, self._write = os.pipe()
        self._read, from_browser = os.pipe()
        # above the numbers the child needs, so that placing them cannot overwrite each other
        ends = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_browser, from_browser)]
        for fd in (to_browser, from_browser):
            os.close(fd)

        def pipes() -> None:  # in the child: Chromium reads fd 3 and writes fd 4
            os.dup2(ends[0], 3)
            os.dup2(ends[1], 4)

        command = [chromium, *CHROMIUM_FLAGS, "--hide-scrollbars", "--remote-debugging-pipe"]
        command += [f"--user-data-dir={profile}", f"--window-size={WINDOW[0]},{WINDOW[1]}"]
        self.process = subprocess.Popen(
            command, preexec_fn=pipes, pass_fds=(3, 4), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        for fd in ends:
            os.close(fd)
        self._buffer, self._id, self.session = b"", 0, None
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.call(
            "Emulation.setDeviceMetricsOverride", width=WINDOW[0], height=WINDOW[1], deviceScaleFactor=1, mobile=False
        )

    def call(self, method: str, **params) -> dict:
        self._id += 1
        message = {"id": self._id, "method": method, "params": params}
        if self.session and not method.startswith("Target."):
            message["sessionId"] = self.session
        os.write(self._write, json.dumps(message).encode() + b"\0")
        while True:
            while b"\0" not in self._buffer:
                chunk = os.read(self._read, 1 << 20)
                if not chunk:
                    raise OSError(f"chromium exited while answering {method}")
                self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise OSError(f"chromium: {method}: {reply['error'].get('message')}")
                return reply.get("result", {})

    def evaluate(self, expression: str):
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def open(self, url: str | None) -> None:
        """Load ``url`` (None: reload the page) and wait until its text settles (the UI fetches,
        then draws)."""
        if url is None:
            self.call("Page.reload", ignoreCache=True)
        else:
            self.call("Page.navigate", url=url)
        self.settle()

    def settle(self) -> None:
        """Wait until the page's text has not changed for SETTLE_SECONDS."""
        deadline, last, since = time.time() + PAGE_TIMEOUT, None, time.time()
        while time.time() < deadline:
            time.sleep(0.5)
            text = self.evaluate("document.readyState + document.body.innerText")
            if text != last:
                last, since = text, time.time()
            elif time.time() - since >= SETTLE_SECONDS and str(text).startswith("complete"):
                return
        raise OSError(f"the page did not finish drawing within {PAGE_TIMEOUT:.0f} s")

    def filter(self, text: str) -> None:
        """Type ``text`` into the page's search box (a React input: set through the native
        setter, then an input event) and wait for the page to settle."""
        self.evaluate(
            "(() => { const box = document.querySelector('input[placeholder^=\"Search\"]');"
            "Object.getOwnPropertyDescriptor(HTMLInputElement.prototype, 'value').set.call(box, "
            f"{json.dumps(text)}); box.dispatchEvent(new Event('input', {{bubbles: true}})); }})()"
        )
        self.settle()

    def screenshot(self, path: Path) -> None:
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))

    def close(self) -> None:
        for fd in (self._write, self._read):
            os.close(fd)
        self.process.terminate()
        self.process.wait(timeout=30)


def store(browser: Browser, settings: dict) -> None:
    """Write the UI's ``settings`` into the browser's local storage (the UI reads them when it starts)."""
    script = "".join(
        f"localStorage.setItem({json.dumps(k)}, {json.dumps(json.dumps(v))});" for k, v in settings.items()
    )
    browser.evaluate(script)


def take(chromium: str, base: str, shots: dict[str, tuple[str, dict]], out: Path) -> None:
    """Each page of ``shots`` as out/<name>, in one browser with a person's UI_SETTINGS and each
    page's own."""
    with tempfile.TemporaryDirectory(prefix="nnlab-chromium-") as profile:
        browser = Browser(chromium, profile)
        try:
            browser.open(base)
            store(browser, UI_SETTINGS)
            browser.open(None)  # the UI reads its settings when it starts
            for name, (url, settings) in shots.items():
                store(browser, settings)
                browser.open(url)
                if settings:
                    browser.open(None)  # a page the UI has drawn keeps its state until it restarts
                if name in FILTERS:
                    browser.filter(FILTERS[name])
                browser.screenshot(out / name)
                print(f"{out / name}: {url}")
        finally:
            browser.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="folder for the PNGs (default: docs/)")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "chromium")
    args = parser.parse_args(argv)
    root = find_root()
    out = args.out or root / "docs"
    try:
        out.mkdir(parents=True, exist_ok=True)
        uri = tracking_uri()
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        server = start_ui(uri, port, root / "mlartifacts")
        try:
            take(args.chromium, base, pages(uri, base), out)
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
    except (TrackingError, OSError, subprocess.SubprocessError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

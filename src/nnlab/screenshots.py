"""``make screenshots``: the pictures of the MLflow UI in docs/, taken from the real UI.

Starts ``mlflow ui`` on a free loopback port over the project's store (``MLFLOW_TRACKING_URI``,
else mlflow.db at the root; run ``make repro`` and a search first), opens each page in headless
Chromium and saves it as a PNG:

- docs/mlflow-runs.png: the MNIST experiment's runs table (with a sweep's parent, if any);
- docs/mlflow-run.png: the best MNIST run's metric charts;
- docs/mlflow-model.png: the registered model of that run, with its description and versions.

Chromium comes from the system (``apt-get install chromium``); ``--chromium`` names another.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from nnlab.config.errors import TrackingError
from nnlab.config.paths import find_root
from nnlab.tracking.ui import WORKFLOW, runs_url, tracking_uri

PROG = "nnlab.screenshots"
WINDOW = (1600, 1000)
RENDER_MS = 30_000  # virtual time for the React app to load its data and draw its charts
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
)


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


def pages(uri: str, base: str) -> dict[str, str]:
    """{file name: address} of the pages to take, from what the store holds."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    mnist = client.get_experiment_by_name("nnlab-mnist")
    if mnist is None:
        raise TrackingError(f"tracking store {uri} has no nnlab-mnist experiment: run make repro first")
    found = {"mlflow-runs.png": runs_url(base, mnist.experiment_id)}
    best = client.search_runs([mnist.experiment_id], "metrics.test_acc > 0", order_by=["metrics.test_acc DESC"])
    if best:
        run = best[0]
        found["mlflow-run.png"] = (
            f"{base}/#/experiments/{mnist.experiment_id}/runs/{run.info.run_id}/model-metrics?{WORKFLOW}"
        )
        name = f"nnlab-{run.data.tags.get('experiment')}"
        if client.search_registered_models(f"name = '{name}'"):
            found["mlflow-model.png"] = f"{base}/#/models/{name}?{WORKFLOW}"
    return found


def screenshot(chromium: str, url: str, path: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="nnlab-chromium-") as profile:
        subprocess.run(
            [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={WINDOW[0]},{WINDOW[1]}"]
            + [f"--virtual-time-budget={RENDER_MS}", f"--screenshot={path}", url],
            check=True,
            capture_output=True,
            timeout=300,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="folder for the PNGs (default: docs/)")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "chromium")
    args = parser.parse_args(argv)
    root = find_root()
    out = args.out or root / "docs"
    try:
        uri = tracking_uri()
        port = free_port()
        server = start_ui(uri, port, root / "mlartifacts")
        try:
            for name, url in pages(uri, f"http://127.0.0.1:{port}").items():
                screenshot(args.chromium, url, out / name)
                print(f"{out / name}: {url}")
        finally:
            server.terminate()
            server.wait(timeout=30)
    except (TrackingError, OSError, subprocess.SubprocessError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

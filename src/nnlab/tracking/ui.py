"""What ``make ui`` and ``make serve`` check and print before they start MLflow's own servers.

``python -m nnlab.tracking.ui urls --port 5000``: the address of each experiment's runs table.
MLflow 3.17's UI opens an experiment on the view its URL's ``workflowType`` names, else on the
one last chosen in that browser (the GenAI "Overview" at first); the ``mlflow.experimentKind``
tag does not change it. These addresses open the training runs.

``python -m nnlab.tracking.ui check-model models:/<name>@<alias>``: exit 1 with one line when the
tracking store has no such model version (``make serve`` would end in a page of traceback).
"""

from __future__ import annotations

import argparse
import os
import sys

from nnlab.config.paths import find_root
from nnlab.errors import TrackingError, first_line

PROG = "nnlab.tracking.ui"
WORKFLOW = "workflowType=machine_learning"  # the UI's training view (its other value: genai)


def runs_url(base: str, experiment_id: str | None = None) -> str:
    """The runs table of one experiment (the experiment list when None), in the training view."""
    page = f"experiments/{experiment_id}/runs" if experiment_id else "experiments"
    return f"{base.rstrip('/')}/#/{page}?{WORKFLOW}"


def tracking_uri() -> str:
    from nnlab.tracking.run import resolve_tracking_uri

    return resolve_tracking_uri(None, find_root())


def experiment_urls(uri: str, base: str) -> list[tuple[str, str]]:
    """(experiment name, runs table address) of every experiment with runs in the store."""
    from mlflow.tracking import MlflowClient

    from nnlab.tracking.sqlite import sqlite_file

    database = sqlite_file(uri)
    if database is not None and not database.is_file():
        return []  # nothing trained yet; looking must not create an empty store
    client = MlflowClient(tracking_uri=uri)
    found = [e for e in client.search_experiments() if client.search_runs([e.experiment_id], max_results=1)]
    return [(e.name, runs_url(base, e.experiment_id)) for e in sorted(found, key=lambda e: e.name)]


def check_model(uri: str, model: str) -> None:
    """TrackingError with one line when ``model`` (models:/<name>@<alias> or models:/<name>/<version>)
    is not in the store."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from nnlab.tracking.run import check_reachable

    if not model.startswith("models:/"):
        return
    check_reachable(uri)
    name, _, which = model.removeprefix("models:/").replace("@", "/@", 1).partition("/")
    client = MlflowClient(tracking_uri=uri)
    try:
        if which.startswith("@"):
            client.get_model_version_by_alias(name, which[1:])
        else:
            client.get_model_version(name, which)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise TrackingError(f"{model}: tracking store {uri} failed: {first_line(exc.message)}") from None
        experiment = name.removeprefix("nnlab-")
        raise TrackingError(
            f"{model} is not registered in tracking store {uri}: register it with `dvc repro` (its "
            f"evaluate stages register every model) or `python -m nnlab.evaluate experiment={experiment} "
            "logger.mlflow.register=true`, or serve another one (make serve SERVE_MODEL=models:/<name>@<alias>)"
        ) from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    urls = commands.add_parser("urls", help="print the runs table address of each experiment")
    urls.add_argument("--host", default="127.0.0.1")
    urls.add_argument("--port", type=int, default=5000)
    check = commands.add_parser("check-model", help="exit 1 with one line when the model is not registered")
    check.add_argument("model")
    args = parser.parse_args(argv)
    try:
        uri = tracking_uri()
        if args.command == "check-model":
            check_model(uri, args.model)
            return 0
        base = f"http://{args.host}:{args.port}"
        listed = experiment_urls(uri, base)
        for name, url in listed:
            print(f"  {name}: {url}")
        if not listed:
            print(f"  (no runs yet: train one, e.g. dvc repro) {runs_url(base)}")
    except TrackingError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    sys.exit(main())

"""Security: crafted checkpoints cannot run code, credentials never reach a file, names stay plain."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from helpers import run_module


def _crafted_models(marker: Path) -> dict[str, dict]:
    """Model configs that would create ``marker`` if anything instantiated them."""
    write = {"_target_": "pathlib.Path.write_text", "self": str(marker), "data": "pwned"}
    return {
        "target": write,
        "torch_load": {"_target_": "torch.load", "f": str(marker), "weights_only": False},
        "nested": {
            "_target_": "nnlab.models.networks.MLP",
            "input_shape": [1, 28, 28],
            "num_classes": 10,
            "hidden_sizes": write,
        },
        "interpolation": {
            "_target_": "nnlab.models.networks.LinearClassifier",
            "input_shape": [1, 28, 28],
            "num_classes": "${oc.env:HOME}",
        },
    }


def _crafted_checkpoint(path: Path, model: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    config = {"model": model, "data": {"input_shape": [1, 28, 28], "mean": 0.1307, "std": 0.3081}}
    torch.save({"state_dict": {}, "nnlab_config": config}, path)
    return path


def _digit(path: Path) -> Path:
    image = Image.new("L", (120, 120), 255)
    ImageDraw.Draw(image).line([(60, 15), (60, 105)], fill=0, width=12)
    image.save(path)
    return path


@pytest.mark.parametrize("kind", ["target", "torch_load", "nested", "interpolation"])
def test_a_crafted_checkpoint_runs_no_code_in_predict(tmp_path, kind):
    marker = tmp_path / "pwned.txt"
    ckpt = _crafted_checkpoint(tmp_path / "crafted.ckpt", _crafted_models(marker)[kind])
    proc = run_module("nnlab.predict", "--model", str(ckpt), str(_digit(tmp_path / "d.png")), cwd=tmp_path, timeout=120)
    assert not marker.exists()
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "refusing its saved config" in lines[0], proc.stderr


def test_a_crafted_checkpoint_runs_no_code_in_evaluate(project, tmp_path):
    marker = tmp_path / "pwned.txt"
    _crafted_checkpoint(project / "models" / "crafted" / "best.ckpt", _crafted_models(marker)["target"])
    proc = run_module(
        "nnlab.evaluate", "experiment=mnist_linear", "name=crafted", "trainer=cpu", cwd=project, timeout=120
    )
    assert not marker.exists()
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"nnlab.evaluate: error: {project / 'models' / 'crafted' / 'best.ckpt'}: refusing its saved config: "
        "model._target_: must be one of nnlab.models.networks.LinearClassifier, nnlab.models.networks.MLP, "
        "nnlab.models.networks.CNN, got 'pathlib.Path.write_text'"
    ]


def test_a_genuine_checkpoint_still_loads_through_the_checked_builder(compose):
    from omegaconf import OmegaConf

    from nnlab.models.checkpoint import build_network

    cfg = compose("experiment=mnist_cnn")
    net = build_network(OmegaConf.to_container(cfg.model, resolve=True))
    assert type(net).__name__ == "CNN"
    assert sum(p.numel() for p in net.parameters()) == 421_642


@pytest.mark.parametrize("name", ["", "../../x", "a/b", "..", "x%y", ".hidden"])
def test_a_name_that_is_not_plain_is_refused_before_anything_is_written(project, name):
    proc = run_module("nnlab.train", "experiment=blobs_linear", f"name={name}", "trainer=cpu", cwd=project, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "nnlab.train: error: config: config.name: must be a plain name (letters, digits, '.', '_', '-'; "
        f"starting with a letter or digit), got {name!r}"
    ]
    assert not (project / "models").exists() and not (project.parent / "x").exists()


class _RunsShell:
    """Unpickling this calls os.system: what a crafted checkpoint would do with torch.load's
    default before PyTorch 2.6, or with weights_only=False."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def _shell_checkpoint(path: Path, marker: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {}, "nnlab_config": {}, "payload": _RunsShell(f"touch {marker}")}, path)
    return path


def _names_system(path: Path) -> str:
    return f"{path} names posix.system, which a checkpoint of tensors and plain values never does: refused, and nothing in it was run"


def test_a_checkpoint_that_names_code_is_refused_by_name_in_predict(tmp_path):
    marker = tmp_path / "pwned.txt"
    ckpt = _shell_checkpoint(tmp_path / "shell.ckpt", marker)
    proc = run_module("nnlab.predict", "--model", str(ckpt), str(_digit(tmp_path / "d.png")), cwd=tmp_path, timeout=120)
    assert not marker.exists()
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"nnlab.predict: error: {_names_system(ckpt)}"]


def test_a_checkpoint_that_names_code_is_refused_by_name_in_evaluate(project, tmp_path):
    marker = tmp_path / "pwned.txt"
    ckpt = _shell_checkpoint(project / "models" / "shell" / "best.ckpt", marker)
    proc = run_module(
        "nnlab.evaluate", "experiment=mnist_linear", "name=shell", "trainer=cpu", cwd=project, timeout=120
    )
    assert not marker.exists()
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"nnlab.evaluate: error: {_names_system(ckpt)}"]
    assert not (project / "metrics").exists()


def test_resuming_from_a_last_checkpoint_that_names_code_is_one_line(project, tmp_path):
    marker = tmp_path / "pwned.txt"
    folder = project / "logs" / "runs" / "shell" / "2026-01-01_00-00-00"
    last = _shell_checkpoint(folder / "models" / "last.ckpt", marker)
    proc = run_module(
        "nnlab.train", "experiment=blobs_linear", "name=shell", "trainer=cpu", "resume=true", cwd=project, timeout=120
    )
    assert not marker.exists()
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"nnlab.train: error: config: resume: {_names_system(last)}; delete {folder} or run without resume=true"
    ]


def _cut_short(path: Path) -> Path:
    torch.save({"state_dict": {"w": torch.zeros(4096)}, "nnlab_config": {}}, path)
    path.write_bytes(path.read_bytes()[:5000])
    return path


@pytest.mark.parametrize(
    "write, reason",
    [
        (lambda p: p.write_bytes(b""), "is not a PyTorch checkpoint (empty, cut short, or another kind of file)"),
        (_cut_short, "is not a PyTorch checkpoint (empty, cut short, or another kind of file)"),
        (lambda p: p.write_text("hello\n"), "is not a PyTorch checkpoint (empty, cut short, or another kind of file)"),
        (lambda p: torch.save([1, 2], p), "was not written by nnlab (it holds a list, not a mapping)"),
        (lambda p: torch.save({"a": 1}, p), "was not written by nnlab (no nnlab_config inside)"),
    ],
    ids=["empty", "cut-short", "text", "list", "foreign"],
)
def test_a_file_that_is_not_an_nnlab_checkpoint_is_one_plain_reason(tmp_path, write, reason):
    from nnlab.predict import ModelError, load_model

    path = tmp_path / "model.ckpt"
    write(path)
    with pytest.raises(ModelError) as error:
        load_model(str(path))
    assert str(error.value) == f"{path} {reason}"


def _nested_secret_configs() -> dict[str, dict]:
    """Saved configs with ``${oc.env:NNLAB_TEST_SECRET}`` deep inside values a loader reads."""
    mlp = {"_target_": "nnlab.models.networks.MLP", "input_shape": [1, 28, 28], "num_classes": 10}
    linear = {"_target_": "nnlab.models.networks.LinearClassifier", "input_shape": [1, 28, 28], "num_classes": 10}
    data = {"input_shape": [1, 28, 28], "mean": 0.1307, "std": 0.3081}
    secret = "${oc.env:NNLAB_TEST_SECRET}"
    return {
        "model.hidden_sizes[0]": {"model": {**mlp, "hidden_sizes": [secret]}, "data": data},
        "data.mean": {"model": linear, "data": {**data, "mean": secret}},
        "data.input_shape[0]": {"model": linear, "data": {**data, "input_shape": [secret, 28, 28]}},
        "data.extra.deep[1].x": {"model": linear, "data": {**data, "extra": {"deep": [1, {"x": secret}]}}},
    }


@pytest.mark.parametrize("key", list(_nested_secret_configs()))
def test_no_interpolation_in_a_saved_config_is_resolved_at_any_depth(tmp_path, monkeypatch, key):
    from nnlab.predict import ModelError, load_model

    monkeypatch.setenv("NNLAB_TEST_SECRET", "hunter2-secret")
    path = tmp_path / "crafted.ckpt"
    torch.save({"state_dict": {}, "nnlab_config": _nested_secret_configs()[key]}, path)
    with pytest.raises(ModelError) as error:
        load_model(str(path))
    assert str(error.value) == (
        f"{path}: refusing its saved config: {key}: interpolations (${{...}}) are not allowed in a saved config"
    )


def test_predict_prints_no_environment_variable_from_a_crafted_checkpoint(tmp_path):
    path = tmp_path / "crafted.ckpt"
    torch.save({"state_dict": {}, "nnlab_config": _nested_secret_configs()["data.mean"]}, path)
    proc = run_module(
        "nnlab.predict",
        "--model",
        str(path),
        str(_digit(tmp_path / "d.png")),
        cwd=tmp_path,
        timeout=120,
        NNLAB_TEST_SECRET="hunter2-secret",
    )
    assert proc.returncode == 2
    assert "hunter2" not in proc.stderr + proc.stdout
    assert proc.stderr.strip().splitlines() == [
        f"nnlab.predict: error: {path}: refusing its saved config: data.mean: "
        "interpolations (${...}) are not allowed in a saved config"
    ]


def _pyfunc_folder(folder: Path, marker: Path) -> Path:
    """An MLflow model folder whose loading runs code (a python_function model with a loader
    module of its own that writes ``marker``)."""
    code = folder / "code"
    code.mkdir(parents=True)
    (code / "crafted_loader.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('pwned')\n"
        "def _load_pyfunc(path):\n    raise SystemExit('loaded')\n"
    )
    (folder / "MLmodel").write_text(
        "flavors:\n  python_function:\n    loader_module: crafted_loader\n    code: code\n    python_version: 3.11.0\n"
    )
    return folder


@pytest.mark.parametrize("as_uri", [False, True], ids=["folder", "file-uri"])
def test_predict_loads_no_mlflow_model_folder_unless_asked(tmp_path, as_uri):
    marker = tmp_path / "pwned.txt"
    folder = _pyfunc_folder(tmp_path / "model", marker)
    spec = folder.as_uri() if as_uri else str(folder)
    image = str(_digit(tmp_path / "d.png"))
    proc = run_module("nnlab.predict", "--model", spec, image, cwd=tmp_path, timeout=120)
    assert not marker.exists()
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"nnlab.predict: error: {spec} is an MLflow model folder: loading it runs the code it holds (pickles); "
        "pass --trust-model-code if you trust its author, or give an nnlab checkpoint (.ckpt, data only)"
    ]
    trusted = run_module("nnlab.predict", "--model", spec, "--trust-model-code", image, cwd=tmp_path, timeout=120)
    assert marker.exists(), trusted.stderr  # asked for explicitly: MLflow ran the folder's code


def test_predict_help_says_which_model_sources_are_code():
    proc = run_module("nnlab.predict", "--help", cwd=Path.cwd(), timeout=60)
    text = " ".join(proc.stdout.split())
    assert "an nnlab .ckpt (data only: nothing in it runs)" in text
    assert "an MLflow model, which is code that runs when it loads" in text
    assert "--trust-model-code" in text


def test_a_folder_that_is_not_an_mlflow_model_is_no_checkpoint_either(tmp_path):
    from nnlab.predict import ModelError, load_model

    with pytest.raises(ModelError) as error:
        load_model(str(tmp_path))  # models/<name>/ given instead of its best.ckpt
    assert str(error.value) == f"no checkpoint at {tmp_path}"

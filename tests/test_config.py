import subprocess

import pytest
import yaml
from hydra.utils import instantiate

from nnlab.config.paths import conf_dir
from nnlab.config.schema import ConfigError, validate

from helpers import REPO, run_module

EXPERIMENTS = sorted(p.stem for p in (conf_dir() / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_composes_validates_and_builds(compose, name):
    cfg = compose(f"experiment={name}")
    checked = validate(cfg)
    assert cfg.name == name
    assert checked["trainer"].max_epochs >= 1
    net = instantiate(cfg.model)
    count = net.parameter_count() if hasattr(net, "parameter_count") else sum(p.numel() for p in net.parameters())
    assert count > 0


def test_params_yaml_lists_the_config_files_each_experiment_reads(compose):
    """dvc.yaml declares conf/model/<model>.yaml and conf/data/<data>.yaml per experiment: they must be right."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for name, spec in params["experiments"].items():
        cfg = compose(f"experiment={name}")
        model = yaml.safe_load((conf_dir() / "model" / f"{spec['model']}.yaml").read_text())
        data = yaml.safe_load((conf_dir() / "data" / f"{spec['data']}.yaml").read_text())
        assert cfg.model._target_ == model["_target_"], name
        assert cfg.data._target_ == data["_target_"], name


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "+model.hidden_size=10",
            "model.hidden_size: unknown key; allowed: input_shape, num_classes, hidden_sizes, activation, dropout",
        ),
        ("optimizer.lr=fast", "optimizer.lr: Value 'fast' of type 'str' could not be converted to Float"),
        ("optimizer.lr=-0.1", "optimizer.lr: must be > 0, got -0.1"),
        ("model.dropout=1.5", "model.dropout: must be in [0, 1), got 1.5"),
        ("model.activation=swish", "model.activation: must be one of relu, sigmoid, tanh, got 'swish'"),
        ("trainer.accelerator=tpu", "trainer.accelerator: must be one of auto, cpu, gpu, cuda, mps, got 'tpu'"),
        ("trainer.max_epochs=0", "trainer.max_epochs: must be > 0, got 0"),
    ],
)
def test_validation_errors_name_the_key(compose, override, message):
    with pytest.raises(ConfigError) as info:
        validate(compose("model=mlp", override))
    assert str(info.value) == message


def _cli(*args: str) -> subprocess.CompletedProcess:
    return run_module("nnlab.train", *args, cwd=REPO, timeout=120)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("model.hidden_size=10", "model.hidden_size"),  # a plain override of a key that does not exist
        ("optimizer.lr=fast", "optimizer.lr: Value 'fast'"),  # wrong type
        ("optimizer.lr=-1", "optimizer.lr: must be > 0, got -1"),  # impossible value
    ],
)
def test_cli_config_errors_are_one_line(override, expected, tmp_path):
    result = _cli("experiment=mnist_mlp", override)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("nnlab.train: error: config: ") and expected in lines[0]
    if override.startswith("model.hidden_size"):
        assert "allowed keys: input_shape, num_classes, hidden_sizes, activation, dropout" in lines[0]


def test_the_root_is_found_from_any_folder_of_the_project(tmp_path, monkeypatch):
    from nnlab.config.paths import find_root

    for var in ("NNLAB_ROOT", "DVC_ROOT"):
        monkeypatch.delenv(var, raising=False)
    (tmp_path / ".dvc").mkdir()
    (tmp_path / "reference").mkdir()
    (tmp_path / "reference" / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "logs" / "multirun" / "0").mkdir(parents=True)
    assert find_root(tmp_path / "reference") == tmp_path
    assert find_root(tmp_path / "logs" / "multirun" / "0") == tmp_path
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "reference"))
    assert find_root(tmp_path) == tmp_path / "reference"


def _readme_commands(module: str) -> list[list[str]]:
    """The overrides of every `python -m <module>` line in the README (continuations joined)."""
    text = (REPO / "README.md").read_text().replace("\\\n", " ")
    commands = []
    for line in text.splitlines():
        if f"-m {module} " in line and line.lstrip().startswith((".venv/bin/python", "python", "MLFLOW_")):
            args = line.split(f"-m {module} ", 1)[1].split("#")[0].split()
            commands.append(args)
    return commands


@pytest.mark.parametrize("args", _readme_commands("nnlab.train"), ids=" ".join)
def test_readme_training_examples_compose_and_validate(compose, args):
    """Each README example, with the first value of every swept option, is a valid config."""
    overrides = [
        a.split("=")[0] + "=" + a.split("=", 1)[1].split(",")[0] for a in args if "=" in a and not a.startswith("hydra")
    ]
    assert overrides and validate(compose(*overrides))

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


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("optimizer.fused=maybe",), "optimizer.fused: Value 'maybe' is not a valid bool (type str)"),
        (
            ("optimizer.fused=true", "optimizer.foreach=true"),
            "optimizer.fused: must not be true together with foreach (torch runs one of them)",
        ),
        (
            ("optimizer=rmsprop", "+optimizer.fused=true"),  # torch has no fused RMSprop
            "optimizer.fused: unknown key; allowed: lr, weight_decay, foreach, alpha, eps, momentum",
        ),
    ],
)
def test_the_optimizer_implementation_is_one_torch_has(compose, overrides, message):
    with pytest.raises(ConfigError) as info:
        validate(compose("model=mlp", *overrides))
    assert str(info.value) == message
    assert validate(compose("model=mlp", "optimizer=sgd", "optimizer.fused=true"))["optimizer"].fused is True


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
    # A temporary DVC experiment runs in a copy whose DVC_ROOT names the parent repository: the
    # copy's own files are used, and only the embedded MLflow store is the parent's.
    from nnlab.config.paths import store_root

    copy = tmp_path / ".dvc" / "tmp" / "exps" / "tmp1"
    (copy / "conf").mkdir(parents=True)
    (copy / "conf" / "train.yaml").write_text("name: x\n")
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    assert find_root(copy) == copy
    assert store_root(find_root(copy)) == tmp_path


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


SCHEMA_GROUPS = ("data", "model", "optimizer", "scheduler", "trainer", "logger", "paths")


def _option_files():
    return [(group, path) for group in SCHEMA_GROUPS for path in sorted((REPO / "conf" / group).glob("*.yaml"))]


@pytest.mark.parametrize(("group", "path"), _option_files(), ids=lambda v: getattr(v, "stem", v))
def test_every_value_has_one_source_the_yaml(group, path, project):
    """A value set in a conf/ file is never also a schema default (the two would drift apart);
    each option composes and validates on its own, so no schema field is left unset."""
    import dataclasses

    from omegaconf import MISSING

    from nnlab.config.compose import compose_config
    from nnlab.config.schema import PLAIN_GROUPS, SCHEMAS, validate

    cfg = compose_config([f"{group}={path.stem}", "trainer=cpu" if group != "trainer" else "seed=1"])
    validate(cfg)
    written = yaml.safe_load(path.read_text()) or {}
    node = cfg[group]
    schema = PLAIN_GROUPS.get(group) or SCHEMAS[group].get(node.get("_target_"))
    if schema is None:  # scheduler=none: nothing to check
        return
    defaults = {f.name: f.default for f in dataclasses.fields(schema)}
    nested = {k: v for k, v in written.items() if isinstance(v, dict) and k in defaults}
    for key in set(written) - {"defaults", "_target_", "_partial_"} - set(nested):
        assert defaults[key] == MISSING, f"{path.name}: {key} is also a default in {schema.__name__}"
    for key, values in nested.items():  # logger.mlflow
        inner = next(t for t in dataclasses.fields(schema) if t.name == key).type
        inner_schema = {"MlflowConfig | None": "MlflowConfig"}.get(str(inner), str(inner))
        from nnlab.config import schema as module

        inner_defaults = {f.name: f.default for f in dataclasses.fields(getattr(module, inner_schema))}
        for sub in values:
            assert inner_defaults[sub] == MISSING, f"{path.name}: {key}.{sub} is also a schema default"


def test_train_yaml_is_the_one_source_of_the_root_values():
    import dataclasses

    from omegaconf import MISSING

    from nnlab.config.schema import RootConfig

    written = yaml.safe_load((REPO / "conf" / "train.yaml").read_text())
    for f in dataclasses.fields(RootConfig):
        assert f.name in written and f.default == MISSING, f.name

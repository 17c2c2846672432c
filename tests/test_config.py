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
    validate(cfg)  # checks, returns nothing: the code goes on reading cfg
    assert cfg.name == name
    assert cfg.trainer.max_epochs >= 1
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
        (
            "callbacks.model_checkpoint.monitor=val_acc",
            "callbacks.model_checkpoint.monitor: must be one of val/loss, val/acc, train/loss, train/acc "
            "(it chooses the best epoch), got 'val_acc'",
        ),
        ("callbacks.model_checkpoint.mode=best", "callbacks.model_checkpoint.mode: must be min or max"),
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
    fused = compose("model=mlp", "optimizer=sgd", "optimizer.fused=true")
    validate(fused)
    assert fused.optimizer.fused is True


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
    assert overrides
    validate(compose(*overrides))


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


# ---- schemas registered beside their classes (docs/extending.md) -------------------------------

OWN_MODULE = """
from dataclasses import dataclass

from omegaconf import MISSING

from nnlab.config.schema import DataSchema, check, register_schema


class SquaresDataModule:  # never built here: the check needs only the schema
    pass


@register_schema("data")
@dataclass
class SquaresData(DataSchema):
    _target_: str = "{module}.SquaresDataModule"
    side: int = MISSING

    def __post_init__(self):
        super().__post_init__()
        check(self.side % 2 == 0, "side", f"must be even, got {{self.side}}")
"""


@pytest.fixture
def registry(monkeypatch):
    """SCHEMAS as it is, restored after the test (a schema registered here stays here)."""
    from nnlab.config.schema import SCHEMAS

    for group in SCHEMAS:
        monkeypatch.setitem(SCHEMAS, group, dict(SCHEMAS[group]))
    return SCHEMAS


@pytest.fixture
def own_module(tmp_path, monkeypatch, registry):
    """write(name): a module of the user's own, nnlab.<name>, in a folder of nnlab's package
    path (as a file under src/nnlab/ would be); it registers a data schema beside its class."""
    import sys

    import nnlab

    monkeypatch.setattr(nnlab, "__path__", [*nnlab.__path__, str(tmp_path)])

    def write(name: str, text: str = OWN_MODULE) -> str:
        (tmp_path / f"{name}.py").write_text(text.format(module=f"nnlab.{name}"))
        monkeypatch.delitem(sys.modules, f"nnlab.{name}", raising=False)  # undone after the test
        return f"nnlab.{name}"

    return write


def _squares(compose, target: str, *overrides: str):
    return compose("data=blobs", f"data._target_={target}", "+data.side=4", *overrides)


def test_a_schema_registered_beside_its_class_checks_the_config(compose, own_module, registry):
    import sys

    module = own_module("squares")
    assert module not in sys.modules and f"{module}.SquaresDataModule" not in registry["data"]
    validate(_squares(compose, f"{module}.SquaresDataModule"))  # imports the module: its schema registers
    assert registry["data"][f"{module}.SquaresDataModule"].__name__ == "SquaresData"
    with pytest.raises(ConfigError) as odd:
        validate(_squares(compose, f"{module}.SquaresDataModule", "data.side=3"))
    assert str(odd.value) == "data.side: must be even, got 3"
    with pytest.raises(ConfigError) as unknown:
        validate(_squares(compose, f"{module}.SquaresDataModule", "+data.colour=red"))
    assert str(unknown.value) == (
        "data.colour: unknown key; allowed: data_dir, input_shape, num_classes, batch_size, eval_batch_size, seed, side"
    )


@pytest.mark.parametrize("target", ["nnlab.data.nosuch.Squares", "nnlab.data.modules.Squares", "Squares", "x"])
def test_a_target_without_a_schema_is_refused_in_one_line(compose, target):
    with pytest.raises(ConfigError) as caught:
        validate(compose("data=blobs", f"data._target_={target}"))
    assert str(caught.value) == (
        "data._target_: must be one of nnlab.data.modules.MNISTDataModule, nnlab.data.modules.BlobsDataModule, "
        f"got '{target}'"
    )


def test_a_config_never_imports_a_module_outside_nnlab(compose, tmp_path, monkeypatch, registry):
    """Only nnlab's own modules are imported for their schema: a config value names no other code to run."""
    import sys

    (tmp_path / "outside_squares.py").write_text(OWN_MODULE.format(module="outside_squares"))
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(
        ConfigError, match=r"^data._target_: must be one of .*, got 'outside_squares.SquaresDataModule'$"
    ):
        validate(_squares(compose, "outside_squares.SquaresDataModule"))
    assert "outside_squares" not in sys.modules


def test_an_own_module_that_cannot_import_keeps_its_traceback(compose, own_module):
    """A module that exists but imports what is not installed is a bug to see, not an unknown target."""
    module = own_module("broken_squares", "import no_such_dependency_of_nnlab\n" + OWN_MODULE)
    with pytest.raises(ModuleNotFoundError, match="no_such_dependency_of_nnlab"):
        validate(_squares(compose, f"{module}.SquaresDataModule"))


def test_register_schema_refuses_a_group_or_target_it_cannot_keep(registry):
    from dataclasses import dataclass

    from nnlab.config.schema import MLPModel, register_schema

    with pytest.raises(
        ValueError, match="group must be one of data, model, optimizer, scheduler, trainer, got 'models'"
    ):
        register_schema("models")

    @dataclass
    class OtherMLP(MLPModel):  # the same _target_ as nnlab's own MLP schema
        pass

    with pytest.raises(ValueError, match="nnlab.models.networks.MLP already has the schema MLPModel"):
        register_schema("model")(OtherMLP)
    assert registry["model"]["nnlab.models.networks.MLP"] is MLPModel

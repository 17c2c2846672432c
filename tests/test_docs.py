"""The docs as a user meets them: README.md and docs/*.md.

Every relative link resolves (files and #anchors); every `python -m nnlab...` command shown
composes (Hydra entry points: their config composes and passes the schemas; the others: their
arguments parse and `--help` works); and docs/extending.md, followed literally in a temporary
copy of the project, adds a data set, a network and an experiment that `dvc repro` trains and
scores.
"""

from __future__ import annotations

import importlib
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO, venv_env

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
HYDRA_ENTRY_POINTS = ("nnlab.train", "nnlab.evaluate")
FENCE = re.compile(r"^(```+|~~~+)(.*)$")
PLACEHOLDER = "PLACEHOLDER"  # stands for a <...> in a command
HYDRA_FLAGS_WITH_VALUE = ("--cfg", "-c", "--package", "-p", "--config-name", "-cn", "--config-path", "-cp")


# ---- reading markdown --------------------------------------------------------------------------


def _prose_and_blocks(text: str) -> tuple[str, list[tuple[str, str, str]]]:
    """The text outside fenced code blocks, and each block as (info string, body, the paragraph
    just before it)."""
    prose, blocks, body, fence, info = [], [], [], None, ""
    paragraph: list[str] = []  # the lines of the last paragraph of prose
    for line in text.splitlines():
        match = FENCE.match(line.strip())
        if fence is None and match:
            fence, info, body = match.group(1), match.group(2).strip(), []
        elif fence is not None and line.strip() == fence:
            blocks.append((info, "\n".join(body) + "\n", " ".join(paragraph)))
            fence, paragraph = None, []
        elif fence is not None:
            body.append(line)
        else:
            prose.append(line)
            if line.strip():
                paragraph = [*paragraph, line] if prose[-2:-1] != [""] else [line]
    return "\n".join(prose), blocks


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]|\[([^]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    prose, _ = _prose_and_blocks(path.read_text())
    seen: dict[str, int] = {}
    anchors = set()
    for line in prose.splitlines():
        if line.startswith("#"):
            slug = _slug(line.lstrip("#"))
            anchors.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
            seen[slug] = seen.get(slug, 0) + 1
    return anchors


def _links(path: Path) -> list[str]:
    prose, _ = _prose_and_blocks(path.read_text())
    prose = re.sub(r"`[^`\n]*`", "", prose)  # code spans are not links
    return re.findall(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", prose)


def _relative_links() -> list[tuple[str, str]]:
    return [
        (str(path.relative_to(REPO)), link)
        for path in DOCS
        for link in _links(path)
        if not re.match(r"[a-z][a-z0-9+.-]*:", link)  # http:, https:, mailto:
    ]


# ---- links -------------------------------------------------------------------------------------


def test_the_docs_exist_and_the_readme_is_short():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    assert "make test" in readme and "make repro" in readme
    for page in ("configuration", "performance", "extending", "deploy"):
        assert (REPO / "docs" / f"{page}.md").is_file(), page


def test_the_readmes_figures_are_the_committed_results():
    """The Results table quotes metrics/<experiment>/test.json, each experiment once."""
    readme = (REPO / "README.md").read_text()
    rows = re.findall(r"^\| `(\w+)` \|.*\| ([\d.]+) %[^|]*\|$", readme, re.M)
    quoted = {name: float(value) for name, value in rows}
    assert len(quoted) == len(rows) >= 4, rows
    for name, value in quoted.items():
        test = json.loads((REPO / "metrics" / name / "test.json").read_text())
        assert value == round(100 * test["test_acc"], 2), name


def test_the_readme_holds_no_timing_history():
    """No machine-by-machine history: no commit hashes, CPU generations or 'earlier' runs."""
    readme = (REPO / "README.md").read_text()
    for pattern in (r"\b[0-9a-f]{7,40}\b", r"\bZen ?\d", r"earlier (machine|run)", r"an hour earlier", r"/work/|/tmp/"):
        assert not re.search(pattern, readme), pattern


def test_the_link_finder_sees_links_and_anchors():
    """The parsing the link test relies on, on a known text (so that the link test can fail)."""
    assert _slug("Team mode (`make services-up`)") == "team-mode-make-services-up"
    assert _slug(" 1. A data set") == "1-a-data-set"
    assert _links(REPO / "README.md"), "README.md has no links"
    assert all(anchor for anchor in _anchors(REPO / "README.md"))


@pytest.mark.parametrize(("page", "link"), _relative_links(), ids=lambda v: v)
def test_every_relative_link_resolves(page, link):
    source = REPO / page
    target, _, anchor = link.partition("#")
    path = (source.parent / target).resolve() if target else source
    assert path.exists(), f"{page}: {link} names {path.relative_to(REPO) if path.is_relative_to(REPO) else path}"
    assert path.is_relative_to(REPO), f"{page}: {link} leaves the project"
    if anchor and path.suffix == ".md":
        assert anchor in _anchors(path), f"{page}: {link}: no heading #{anchor} in {path.name}"


# ---- commands ----------------------------------------------------------------------------------


def _commands() -> list[tuple[str, str, list[str]]]:
    """(page, module, arguments) of every `python -m nnlab...` line in the docs' code blocks and
    code spans, continuations joined, comments and shell redirections dropped."""
    found = []
    for path in DOCS:
        prose, blocks = _prose_and_blocks(path.read_text())
        lines = [line for _, body, _ in blocks for line in body.replace("\\\n", " ").splitlines()]
        # in prose, a code span with arguments (a bare `python -m nnlab.predict` is a mention)
        lines += re.findall(r"`([^`\n]*python -m nnlab[\w.]* [^`\n]+)`", prose.replace("\n", " "))
        for line in lines:
            match = re.search(r"python -m (nnlab(?:\.\w+)*)(?![\w.<])(.*)", line)
            if not match:
                continue
            rest = re.split(r"\s(?:#|\||&&|;|>|2>)", " " + match.group(2))[0]
            rest = re.sub(r"<[^<>]*>", PLACEHOLDER, rest)  # <run id>, <its folder>, <name>
            try:
                args = shlex.split(rest)
            except ValueError:  # an unbalanced quote: the test fails on it below
                args = [rest]
            found.append((str(path.relative_to(REPO)), match.group(1), args))
    return found


def _first_values(args: list[str]) -> list[str]:
    """A command's overrides as one job's: Hydra's flags dropped (and their values), the first
    value of each comma list; a placeholder or a search space entry left out."""
    out = []
    for before, arg in zip(["", *args], args):
        if arg.startswith("-") or before in HYDRA_FLAGS_WITH_VALUE or PLACEHOLDER in arg:
            continue
        key, eq, value = arg.partition("=")
        if re.match(r"(choice|interval|range|tag|glob)\(", value):
            continue  # a search space entry: the sweeper reads it, composition cannot
        if eq and "[" not in value:
            value = value.split(",")[0]
        out.append(f"{key}{eq}{value}")
    return out


@pytest.fixture(scope="module")
def composer(tmp_path_factory):
    """compose(overrides): the config the Hydra entry point builds (hydra.* overrides applied),
    then the project's schemas; a project root with no data is enough (nothing is loaded)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from nnlab.config.paths import conf_dir, register_resolvers
    from nnlab.config.schema import validate

    register_resolvers()

    def _compose(overrides: list[str]):
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            cfg = compose(config_name="train", overrides=overrides, return_hydra_config=True)
        plain = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
        validate(plain)
        return cfg

    return _compose


COMMANDS = _commands()


def test_the_command_finder_sees_the_readmes_commands():
    modules = {module for page, module, _ in COMMANDS if page == "README.md"}
    assert {"nnlab.train"} <= modules, modules


@pytest.mark.parametrize(
    ("page", "module", "args"),
    [c for c in COMMANDS if c[1] in HYDRA_ENTRY_POINTS and "--help" not in c[2] and c[0] != "docs/extending.md"],
    ids=lambda v: " ".join(v) if isinstance(v, list) else v,
)
def test_every_training_command_composes(page, module, args, composer, monkeypatch):
    """Composition only (nothing trains): the command's overrides, one job of a sweep, build a
    config that the schemas accept; flags such as --cfg are Hydra's own."""
    cfg = composer(_first_values(args))
    assert cfg.name and cfg.data._target_ and cfg.model._target_


@pytest.mark.parametrize(
    ("page", "module", "args"),
    [c for c in COMMANDS if c[1] not in HYDRA_ENTRY_POINTS],
    ids=lambda v: " ".join(v) if isinstance(v, list) else v,
)
def test_every_other_command_parses(page, module, args):
    """The other entry points: the arguments shown are accepted by the module's argparse parser
    (nothing runs); a module without a parser of its own must list each option in --help."""
    args = [a.replace(PLACEHOLDER, "x") for a in args]
    if "--help" in args or "-h" in args:
        return  # test_every_entry_point_shown_has_help
    entry = importlib.import_module(module)
    if hasattr(entry, "parse_args"):
        entry.parse_args(args)
    elif hasattr(entry, "parser") or hasattr(entry, "arguments"):
        (getattr(entry, "parser", None) or entry.arguments)().parse_args(args)
    else:
        shown = subprocess.run(
            [sys.executable, "-m", module, "--help"], capture_output=True, text=True, env=venv_env(), cwd=REPO
        ).stdout
        assert all(a.split("=")[0] in shown for a in args if a.startswith("-")), (args, shown)


@pytest.mark.parametrize("module", sorted({m for _, m, _ in COMMANDS}))
def test_every_entry_point_shown_has_help(module):
    result = subprocess.run(
        [sys.executable, "-m", module, "--help"], capture_output=True, text=True, env=venv_env(), timeout=120, cwd=REPO
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert module in result.stdout


def test_the_configuration_pages_error_line_is_the_real_one(composer):
    """docs/configuration.md quotes the line a bad value gets: the schema's message as it is."""
    from nnlab.errors import NnlabError

    with pytest.raises(NnlabError) as caught:
        composer(["optimizer.lr=-1"])
    line = f"nnlab.train: error: config: {caught.value}"
    assert line in (REPO / "docs" / "configuration.md").read_text(), line


def _table_rows(text: str, first_header: str) -> list[list[str]]:
    """The body rows of the first markdown table whose header starts with ``first_header``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip().strip("*") for cell in line.strip("|").split("|")])
    return rows


def test_the_performance_pages_headline_is_the_latest_report():
    """docs/performance.md quotes reports/bench.md's training table (medians), not older runs."""
    report = {row[0]: row for row in _table_rows((REPO / "reports" / "bench.md").read_text(), "case")}
    quoted = _table_rows((REPO / "docs" / "performance.md").read_text(), "case")
    assert quoted and {row[0] for row in quoted} == set(report)
    for case, batch, precision, plain, lightning, nnlab, ratio in quoted:
        row = report[case]
        medians = [cell.split(" (")[0] for cell in row[4:8]]
        assert [batch, precision] == row[1:3], case
        assert [plain, lightning, nnlab, ratio] == medians, case


# ---- docs/extending.md, followed literally -----------------------------------------------------


def _apply(info: str, body: str, before: str, root: Path, env: dict) -> str | None:
    """Do what one block of docs/extending.md says; returns what it did, or None for a block
    that only illustrates."""
    words = shlex.split(info)
    attrs = dict(w.split("=", 1) for w in words[1:] if "=" in w)
    if "run" in words[1:]:
        result = subprocess.run(["bash", "-e", "-c", body], cwd=root, env=env, capture_output=True, text=True)
        assert result.returncode == 0, f"{body}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        return result.stdout
    target = attrs.get("file") or attrs.get("append")
    if not target:
        return None
    assert f"`{target}`" in before, f"the text before the block does not name {target}: {before[-300:]}"
    path = root / target
    if "append" in attrs:
        assert path.is_file(), target
        path.write_text(path.read_text() + body)
    elif "after" in attrs or "before" in attrs:
        anchor = attrs.get("after") or attrs["before"]
        assert f"`{anchor}`" in before, f"the text before the block does not name the line {anchor!r}"
        lines = path.read_text().splitlines(keepends=True)
        at = [i for i, line in enumerate(lines) if line.rstrip("\n") == anchor]
        assert len(at) == 1, f"{target}: {len(at)} lines read {anchor!r}"
        where = at[0] + 1 if "after" in attrs else at[0]
        lines[where:where] = [body]
        path.write_text("".join(lines))
    else:
        assert not path.exists(), f"{target} exists already"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(body)
    return target


def _project_copy(root: Path) -> None:
    """The project as a clone has it: tracked and untracked-but-not-ignored files, a fresh git."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for name in filter(None, listed.split("\0")):
        source = REPO / name
        if source.is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, root / name)
    git = ["git", "-c", "user.email=docs@nnlab", "-c", "user.name=docs"]
    for command in (["git", "init", "-q"], ["git", "add", "-A"], [*git, "commit", "-qm", "copy"]):
        subprocess.run(command, cwd=root, check=True, capture_output=True)


def test_extending_guide_works_as_written(tmp_path):
    """docs/extending.md step by step in a copy of the project: files written, edits made,
    commands run as shown; `dvc repro` trains and scores the new experiment on the new data set
    with the new network, and MLflow records it."""
    root = tmp_path / "project"
    _project_copy(root)
    schemas = (root / "src/nnlab/config/schema.py").read_bytes()
    env = venv_env(PYTHONPATH=str(root / "src"))  # the copy's package, with the guide's new files
    for var in ("NNLAB_ROOT", "MLFLOW_TRACKING_URI", "DVC_ROOT"):
        env.pop(var, None)
    _, blocks = _prose_and_blocks((REPO / "docs" / "extending.md").read_text())
    done = [_apply(info, body, before, root, env) for info, body, before in blocks]
    written = {d for d in done if d and "/" in d or d in ("params.yaml", "dvc.yaml")}
    assert {"src/nnlab/data/circles.py", "conf/experiment/circles_residual.yaml", "params.yaml"} <= written
    # the new schemas are registered beside their classes: nnlab's schema module is not edited
    assert (root / "src/nnlab/config/schema.py").read_bytes() == schemas
    lint = subprocess.run(
        [
            str(Path(sys.executable).parent / "ruff"),
            "check",
            "src/nnlab/data/circles.py",
            "src/nnlab/models/networks.py",
        ],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
    )
    assert lint.returncode == 0, lint.stdout  # the guide's code is as clean as the project's

    # the guide's commands by hand: the config composes; a bad value is the line the guide shows
    shown = subprocess.run(
        [sys.executable, "-m", "nnlab.train", "data=circles", "model=residual_mlp", "--cfg", "job"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
    )
    assert shown.returncode == 0 and "_target_: nnlab.models.networks.ResidualMLP" in shown.stdout, shown.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "nnlab.train", "data=circles", "model=residual_mlp", "model.blocks=-1"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
    )
    assert bad.returncode != 0 and "model.blocks: must be >= 0, got -1" in bad.stderr, bad.stderr
    guide = (REPO / "docs" / "extending.md").read_text()
    assert "stops with `model.blocks: must be >= 0, got -1`" in guide.replace("\n", " ")

    name = "circles_residual"
    test = json.loads((root / "metrics" / name / "test.json").read_text())
    train = json.loads((root / "metrics" / name / "train.json").read_text())
    assert test["n"] == 100 and test["test_acc"] >= 0.9, test  # the circles are separable
    assert train["epochs"] == 15
    for plot in ("history.csv", "curves.png", "confusion.png", "predictions.png"):
        assert (root / "plots" / name / plot).is_file(), plot
    status = subprocess.run(["dvc", "status", f"evaluate@{name}"], cwd=root, env=env, capture_output=True, text=True)
    assert "up to date" in status.stdout, status.stdout

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    run_id = json.loads((root / "models" / name / "run.json").read_text())["mlflow_run_id"]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["test_acc"] == pytest.approx(test["test_acc"])
    assert run.data.params["model.width"] == "32"
    assert run.data.tags["data"] == "circles" and run.data.tags["model"] == "ResidualMLP"
    assert client.get_experiment(run.info.experiment_id).name == "nnlab-circles"
    # what the compare stage of a whole `dvc repro` does with it (run alone: no MNIST here)
    compared = subprocess.run(
        [sys.executable, "-m", "nnlab.compare"], cwd=root, env=env, capture_output=True, text=True
    )
    assert compared.returncode == 0, compared.stderr
    assert f"| {name} |" in (root / "reports" / "comparison.md").read_text()
    assert len(run.data.tags["data_md5"]) == 32

"""Bad data gives one clear line: the file, what is wrong and what to run; nothing half-written."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import yaml

from nnlab.config.schema import ParamsError, check_section
from nnlab.data import blobs, idx, integrity, mnist
from nnlab.data.idx import FILES, DataError

from helpers import REPO

TRAIN_IMAGES, TRAIN_LABELS = FILES["train_images"], FILES["train_labels"]
MNIST_FIX = "run `dvc checkout data/mnist` or `dvc repro -f prepare_mnist`"
BLOBS_FIX = "run `dvc repro prepare_blobs`"


def error_of(fn, *args, **kwargs) -> str:
    """The message of the DataError ``fn`` raises, checked to be a single stripped line."""
    with pytest.raises(DataError) as caught:
        fn(*args, **kwargs)
    message = str(caught.value)
    assert "\n" not in message and "\r" not in message and message == message.strip() and message
    return message


@pytest.fixture
def mnist_dir(tmp_path, raw_dir) -> Path:
    """Synthetic MNIST in the canonical form (500 train, 100 val, 200 test)."""
    folder, md5s = raw_dir
    out = tmp_path / "data" / "mnist"
    mnist.prepare(out, mnist.from_dir(folder), "dir", val_size=100, seed=0, expected_md5=md5s)
    return out


@pytest.fixture
def blobs_dir(tmp_path) -> Path:
    out = tmp_path / "data" / "blobs"
    blobs.write(out, blobs.make(500, 3, 2, 42, 0.2))
    return out


def flip_byte(path: Path, offset: int, new: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    data[offset] = data[offset] ^ 0xFF if new is None else new
    path.write_bytes(bytes(data))


def test_data_error_is_always_one_line():
    assert str(DataError("pip failed:\n  ERROR: no network\r\n\n")) == "pip failed: | ERROR: no network"


# 1. IDX files: truncated or wrong magic -------------------------------------------------------


@pytest.mark.parametrize(
    "damage, what",
    [
        (lambda b: b"\x00\x00\x0d\x03" + b[4:], "not an unsigned-byte IDX file (bad magic number)"),
        (lambda b: b[:-100], "IDX header says 470416 bytes for shape (600, 28, 28), file has 470316 (truncated)"),
        (lambda b: b[:10], "truncated IDX header (10 bytes, 3 dimensions need 16)"),
        (lambda b: b"", "truncated IDX file (0 bytes, no complete header)"),
    ],
)
def test_bad_idx_file_names_file_and_remedy(mnist_dir, damage, what):
    path = mnist_dir / "raw" / TRAIN_IMAGES
    path.write_bytes(damage(path.read_bytes()))
    expected = f"{path}: {what}; {MNIST_FIX}"
    assert error_of(mnist.load, mnist_dir) == expected
    assert error_of(idx.read, path) == expected


def test_missing_idx_file(mnist_dir):
    path = mnist_dir / "raw" / FILES["test_labels"]
    path.unlink()
    assert error_of(mnist.load, mnist_dir) == f"{path}: file is missing; {MNIST_FIX}"


def test_decode_without_remedy_keeps_the_plain_message():
    data = idx.encode(np.zeros((2, 3), dtype=np.uint8))
    assert error_of(idx.decode, data + b"\x00", "x") == (
        "x: IDX header says 18 bytes for shape (2, 3), file has 19 (trailing bytes)"
    )


# 2. Corrupted raw bytes: md5 against manifest.json on load ------------------------------------


@pytest.mark.parametrize("name, offset", [(TRAIN_IMAGES, 16 + 5 * 784 + 400), (TRAIN_LABELS, 8 + 17)])
def test_flipped_byte_fails_the_manifest_md5(mnist_dir, name, offset):
    path = mnist_dir / "raw" / name
    want = json.loads((mnist_dir / "manifest.json").read_text())["md5"][name]
    old = path.read_bytes()[offset]
    flip_byte(path, offset, (old + 1) % 10)  # a label stays a digit, a pixel stays a pixel
    got = hashlib.md5(path.read_bytes()).hexdigest()
    assert error_of(mnist.load, mnist_dir) == (
        f"{path}: md5 {got} does not match {want} in manifest.json (corrupted or changed file); {MNIST_FIX}"
    )
    # the IDX structure is intact: only the md5 check finds it
    assert mnist.load(mnist_dir, check_md5=False)["train"][0].shape == (500, 28, 28)


def test_data_module_refuses_corrupted_mnist(mnist_dir):
    from nnlab.data.modules import MNISTDataModule

    flip_byte(mnist_dir / "raw" / TRAIN_IMAGES, 16 + 123)
    module = MNISTDataModule(str(mnist_dir), input_shape=[1, 28, 28], num_classes=10)
    message = error_of(module.setup)
    assert message.startswith(f"{mnist_dir / 'raw' / TRAIN_IMAGES}: md5 ") and message.endswith(MNIST_FIX)
    assert module.splits == {}


def test_garbage_manifest(mnist_dir):
    (mnist_dir / "manifest.json").write_text('{"source": "dir", "md5": ')
    assert error_of(mnist.load, mnist_dir) == (
        f"{mnist_dir / 'manifest.json'}: not a readable MNIST manifest (JSONDecodeError); {MNIST_FIX}"
    )


# 3. data_hash: over the data bytes ----------------------------------------------------------


def test_data_hash_is_md5_of_the_data_files_in_sorted_order(mnist_dir, blobs_dir):
    def by_hand(folder: Path, names: list[str]) -> str:
        digest = hashlib.md5()
        for name in names:
            data = (folder / name).read_bytes()
            digest.update(name.encode() + b"\0" + len(data).to_bytes(8, "big") + data)
        return digest.hexdigest()

    mnist_names = [
        "raw/t10k-images-idx3-ubyte",
        "raw/t10k-labels-idx1-ubyte",
        "raw/train-images-idx3-ubyte",
        "raw/train-labels-idx1-ubyte",
        "split.npz",
    ]
    assert integrity.data_hash(mnist_dir) == by_hand(mnist_dir, mnist_names)
    assert integrity.data_hash(blobs_dir) == by_hand(blobs_dir, ["scaler.json", "train.csv", "val.csv"])
    assert integrity.data_hash(str(blobs_dir)) == integrity.data_hash(blobs_dir)


def test_data_hash_changes_with_the_data_not_the_metadata(tmp_path, mnist_dir, raw_dir):
    clean = integrity.data_hash(mnist_dir)
    # the same data prepared again, from "another source", hashes the same
    again = tmp_path / "again"
    mnist.prepare(again, mnist.from_dir(raw_dir[0]), "pypi", val_size=100, seed=0, expected_md5=raw_dir[1])
    assert integrity.data_hash(again) == clean
    # another split is other data
    mnist.prepare(again, mnist.from_dir(raw_dir[0]), "dir", val_size=100, seed=1, expected_md5=raw_dir[1])
    assert integrity.data_hash(again) != clean
    # one pixel, one label
    seen = {clean}
    for name, offset in ((TRAIN_IMAGES, 16 + 300), (TRAIN_LABELS, 8 + 3)):
        path = mnist_dir / "raw" / name
        before = path.read_bytes()
        flip_byte(path, offset)
        seen.add(integrity.data_hash(mnist_dir))
        path.write_bytes(before)
    assert len(seen) == 3
    assert integrity.data_hash(mnist_dir) == clean


def test_data_hash_of_blobs_sees_one_changed_digit(blobs_dir):
    clean = integrity.data_hash(blobs_dir)
    path = blobs_dir / "val.csv"
    lines = path.read_text().split("\n")
    lines[5] = lines[5][:-1] + ("1" if lines[5][-1] != "1" else "0")
    path.write_text("\n".join(lines))
    assert integrity.data_hash(blobs_dir) != clean


def test_data_hash_names_a_missing_file(mnist_dir, tmp_path):
    (mnist_dir / "split.npz").unlink()
    assert error_of(integrity.data_hash, mnist_dir) == f"{mnist_dir / 'split.npz'}: file is missing; {MNIST_FIX}"
    (tmp_path / "empty").mkdir()
    assert "no prepared MNIST" in error_of(integrity.data_hash, tmp_path / "empty")


# 4. split.npz missing or garbage ------------------------------------------------------------


@pytest.mark.parametrize(
    "damage, what",
    [
        (lambda p: p.unlink(), "file is missing"),
        (lambda p: p.write_bytes(b"not a zip at all"), "not a readable .npz file (ValueError)"),
        (lambda p: p.write_bytes(p.read_bytes()[:200]), "not a readable .npz file (BadZipFile)"),
        (lambda p: np.savez(p, train=np.arange(10)), "not a split file (needs the arrays 'train' and 'val')"),
        (lambda p: np.savez(p, train=np.arange(500), val=np.arange(600, 700)), "'val' has indices outside 0..599"),
        (lambda p: np.savez(p, train=np.arange(500), val=np.arange(499, 599)), "'train' and 'val' share images"),
        (
            lambda p: np.savez(p, train=np.arange(500.0), val=np.arange(500, 600)),
            "'train' must be a non-empty 1-D integer index array, got float64 (500,)",
        ),
    ],
)
def test_bad_split_file(mnist_dir, damage, what):
    path = mnist_dir / "split.npz"
    damage(path)
    message = error_of(mnist.load, mnist_dir)
    assert message == f"{path}: {what}; {MNIST_FIX}"
    assert "train it" not in message


# 5. Blobs CSVs -------------------------------------------------------------------------------


def edit_line(number: int, new):
    """A damage that replaces line ``number`` (1 = header) of a CSV with new(old)."""

    def damage(text: str) -> str:
        lines = text.split("\n")
        lines[number - 1] = new(lines[number - 1])
        return "\n".join(lines)

    return damage


def set_cell(number: int, column: int, value: str):
    def new(line: str) -> str:
        cells = line.split(",")
        cells[column] = value
        return ",".join(cells)

    return edit_line(number, new)


@pytest.mark.parametrize(
    "split, damage, what",
    [
        ("train", lambda t: "", "empty file (no header, no rows)"),
        ("val", lambda t: t.split("\n")[0] + "\n", "header only, no data rows"),
        ("train", lambda t: t[: t.index("\n", 300) - 3], None),  # cut in the middle: checked below
        (
            "train",
            edit_line(9, lambda line: line.rsplit(",", 1)[0]),
            "line 9: 2 columns, expected 3 (truncated or malformed row)",
        ),
        ("train", edit_line(1, lambda line: "a,b,c"), "line 1: header 'a,b,c' is not x1,...,xN,label"),
        ("train", set_cell(7, 1, "abc"), "line 7, column x2: 'abc' is not a number"),
        ("val", set_cell(12, 0, ""), "line 12, column x1: '' is not a number"),
        ("train", set_cell(4, 0, "nan"), "line 4, column x1: nan is not a finite number"),
        ("val", set_cell(3, 1, "-inf"), "line 3, column x2: -inf is not a finite number"),
        ("train", set_cell(20, 2, "-1"), "line 20, column label: -1 is negative"),
        ("train", set_cell(21, 2, "1.5"), "line 21, column label: 1.5 is not an integer class"),
        (
            "val",
            set_cell(30, 2, "7"),
            "line 30, column label: class 7 occurs 1 time(s) in train.csv and val.csv "
            "while the other classes occur 166-167 times (a corrupted label?)",
        ),
        (
            "train",
            set_cell(40, 2, "3"),
            "line 40, column label: class 3 occurs 1 time(s) in train.csv and val.csv "
            "while the other classes occur 165-167 times (a corrupted label?)",
        ),  # was a 2
    ],
)
def test_bad_blobs_csv(blobs_dir, split, damage, what):
    path = blobs_dir / f"{split}.csv"
    path.write_text(damage(path.read_text()))
    message = error_of(blobs.load, blobs_dir)
    if what is None:  # truncated mid-row: whichever way the last line is cut, it is named
        n_lines = len(path.read_text().split("\n"))
        assert message == (
            f"{path} line {n_lines}: incomplete last line (no newline at the end: truncated file?); {BLOBS_FIX}"
        )
    else:
        sep = " " if what.startswith("line") else ": "
        assert message == f"{path}{sep}{what}; {BLOBS_FIX}"


@pytest.mark.parametrize(
    "value, what",
    [
        ("1e39", "1e39 overflows float32, the type training reads the data as (largest 3.403e+38)"),
        ("-1e30", "-1e+30 is not a standardised value (|x| <= sqrt(500 - 1) = 22.34 for 500 points)"),
        ("23", "23 is not a standardised value (|x| <= sqrt(500 - 1) = 22.34 for 500 points)"),
    ],
)
def test_blobs_values_too_large_for_training_blame_the_data(blobs_dir, value, what):
    """1e39 is finite as float64 but inf as the float32 training uses (the run then blamed the
    learning rate); 1e30 trained to a loss of 1.6e27 and was reported a success."""
    path = blobs_dir / "train.csv"
    path.write_text(set_cell(11, 1, value)(path.read_text()))
    assert error_of(blobs.load, blobs_dir) == (f"{path} line 11, column x2: {what}; the data is at fault: {BLOBS_FIX}")


def test_training_on_overflowing_blobs_fails_in_one_line_naming_the_data(tmp_path):
    from mlflow.tracking import MlflowClient

    from helpers import run_module

    root = tmp_path / "project"
    blobs.write(root / "data" / "blobs", blobs.make(500, 3, 2, 42, 0.2))
    (root / "params.yaml").write_text("{}\n")
    path = root / "data" / "blobs" / "train.csv"
    path.write_text(set_cell(5, 0, "1e39")(path.read_text()))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = run_module(
        "nnlab.train", "experiment=blobs_linear", "trainer=cpu", cwd=root, NNLAB_ROOT=str(root), MLFLOW_TRACKING_URI=uri
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"nnlab.train: error: {path} line 5, column x1: 1e39 overflows float32, the type training reads the data "
        f"as (largest 3.403e+38); the data is at fault: {BLOBS_FIX}"
    )
    client = MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [r.info.status for r in runs] in ([], ["FAILED"])  # none left RUNNING


@pytest.mark.filterwarnings("ignore:overflow encountered")
def test_a_float32_overflow_is_caught_whatever_the_loader(tmp_path):
    """The data module checks what the model will read, in the dtype it reads it."""
    from nnlab.data.tensors import TensorData

    class Overflowing(TensorData):
        def load(self):
            x = np.ones((8, 2))
            x[3, 1] = 1e39  # float64: finite
            return {s: (x, np.arange(8) % 2) for s in ("train", "val", "test")}

    data = Overflowing(str(tmp_path), input_shape=[2], num_classes=2)
    with pytest.raises(DataError) as caught:
        data.setup()
    assert str(caught.value) == (
        f"{tmp_path}: the train split holds values that are not finite as torch.float32 "
        "(NaN, infinite, or too large for that type); the data is at fault, not the training"
    )


def test_blobs_label_changed_to_another_class_is_caught_by_the_counts(blobs_dir):
    path = blobs_dir / "train.csv"
    lines = path.read_text().split("\n")
    row = next(i for i, line in enumerate(lines[1:], 1) if line.endswith(",2"))
    lines[row] = lines[row][:-1] + "0"
    path.write_text("\n".join(lines))
    assert np.bincount(np.concatenate([blobs.make(500, 3, 2, 42, 0.2)[s][1] for s in ("train", "val")])).tolist() == [
        167,
        167,
        166,
    ]
    assert error_of(blobs.load, blobs_dir) == (
        f"{blobs_dir}: the classes 0..2 occur [168, 167, 165] times in train.csv and val.csv, but make_blobs "
        f"gives each class the same number of points (a changed label?); {BLOBS_FIX}"
    )


def test_blobs_missing_val_and_bad_scaler(blobs_dir):
    (blobs_dir / "scaler.json").write_text(json.dumps({"mean": [0.0], "scale": [1.0]}))
    assert error_of(blobs.load, blobs_dir) == (
        f"{blobs_dir / 'scaler.json'}: mean and scale must have 2 values (one per column of the CSVs), "
        f"got 1 and 1; {BLOBS_FIX}"
    )
    (blobs_dir / "val.csv").unlink()
    assert error_of(blobs.load, blobs_dir) == f"{blobs_dir / 'val.csv'}: file is missing; {BLOBS_FIX}"


def test_clean_blobs_load_as_before(blobs_dir):
    data = blobs.load(blobs_dir)
    table = np.loadtxt(blobs_dir / "train.csv", delimiter=",", skiprows=1)
    assert np.array_equal(data["train"][0], table[:, :2].astype(np.float32))
    assert np.array_equal(data["train"][1], table[:, 2].astype(np.int64))
    assert data["train"][0].dtype == np.float32 and data["val"][1].dtype == np.int64
    assert data["test"] is data["val"] and len(data["val"][1]) == 100


def test_blobs_write_leaves_nothing_half_written(blobs_dir, monkeypatch):
    before = {p.name: p.read_bytes() for p in blobs_dir.iterdir()}
    real = blobs._write_csv

    def fail_on_val(path, x, y):
        if path.name == "val.csv":
            raise OSError("disk full")
        real(path, x, y)

    monkeypatch.setattr(blobs, "_write_csv", fail_on_val)
    with pytest.raises(OSError, match="disk full"):
        blobs.write(blobs_dir, blobs.make(300, 3, 2, 1, 0.2))
    assert {p.name: p.read_bytes() for p in blobs_dir.iterdir()} == before
    assert sorted(p.name for p in blobs_dir.parent.iterdir()) == ["blobs"]  # no temporary folders left


# 6. params.yaml validation ------------------------------------------------------------------
# The prepare stages' sections are checked by the config schemas' mechanism (check_section):
# the line printed is ParamsError's label, "params.yaml ", and "<section>.<key>: ...".


def params_error(section: str, values: object) -> str:
    """The one line a prepare stage prints for ``values`` as its params.yaml ``section``."""
    schema = {"blobs": blobs.BlobsParams, "mnist": mnist.MnistParams}[section]
    with pytest.raises(ParamsError) as caught:
        check_section(section, schema, values)
    line = caught.value.line()
    assert "\n" not in line and line == line.strip() and caught.value.exit_code == 2
    return line


BLOBS_OK = {"n_samples": 500, "centers": 3, "n_features": 2, "random_state": 42, "test_size": 0.2}


def test_params_of_the_repository_pass():
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    assert asdict(check_section("blobs", blobs.BlobsParams, params["blobs"])) == params["blobs"]
    checked = check_section("mnist", mnist.MnistParams, params["mnist"])
    assert asdict(checked) == {**params["mnist"], "md5": None}


@pytest.mark.parametrize(
    "change, message",
    [
        ({"test_size": 1.5}, "params.yaml blobs.test_size: must be a number in (0, 1), got 1.5"),
        ({"test_size": 0}, "params.yaml blobs.test_size: must be a number in (0, 1), got 0.0"),
        ({"test_size": float("nan")}, "params.yaml blobs.test_size: must be a number in (0, 1), got nan"),
        (
            {"test_size": "a fifth"},
            "params.yaml blobs.test_size: Value 'a fifth' of type 'str' could not be converted to Float",
        ),
        ({"centers": True}, "params.yaml blobs.centers: Value 'True' of type 'bool' could not be converted to Integer"),
        ({"centers": 1}, "params.yaml blobs.centers: must be an integer >= 2, got 1"),
        (
            {"n_features": "abc"},
            "params.yaml blobs.n_features: Value 'abc' of type 'str' could not be converted to Integer",
        ),
        ({"n_features": 0}, "params.yaml blobs.n_features: must be an integer >= 1, got 0"),
        (
            {"n_features": 2.0},
            "params.yaml blobs.n_features: Value '2.0' of type 'float' could not be converted to Integer",
        ),
        ({"n_samples": 5}, "params.yaml blobs.n_samples: must be an integer >= 2 * blobs.centers = 6, got 5"),
        ({"random_state": -1}, "params.yaml blobs.random_state: must be an integer in 0..4294967295, got -1"),
        (
            {"random_state": 2**32},
            "params.yaml blobs.random_state: must be an integer in 0..4294967295, got 4294967296",
        ),
        (
            {"n_samples": 6, "test_size": 0.9},
            "params.yaml blobs.test_size: 0.9 of 6 samples leaves 0 for training and 6 for validation; both need at least 1",
        ),
        (
            {"centres": 3},
            "params.yaml blobs.centres: unknown key; allowed: n_samples, centers, n_features, random_state, test_size",
        ),
    ],
)
def test_blobs_params_rejected(change, message):
    assert params_error("blobs", {**BLOBS_OK, **change}) == message


def test_blobs_params_missing_key_not_a_mapping_and_types_returned():
    params = dict(BLOBS_OK)
    del params["random_state"]
    assert params_error("blobs", params) == "params.yaml blobs.random_state: missing"
    assert params_error("blobs", [1, 2]) == (
        "params.yaml blobs: must be a mapping of n_samples, centers, n_features, random_state, test_size, got [1, 2]"
    )
    checked = check_section("blobs", blobs.BlobsParams, {**BLOBS_OK, "n_samples": 40, "test_size": 1 / 4})
    assert asdict(checked) == {**BLOBS_OK, "n_samples": 40, "test_size": 0.25}
    assert type(checked.n_samples) is int and type(checked.test_size) is float


MNIST_OK = {"source": "auto", "dir": None, "val_size": 5000, "seed": 42}


@pytest.mark.parametrize(
    "change, message",
    [
        ({"source": "s3"}, "params.yaml mnist.source: must be one of auto, torchvision, pypi, dir, got 's3'"),
        (
            {"source": "dir"},
            "params.yaml mnist.dir: required when mnist.source is dir (a folder with the four IDX files), got None",
        ),
        (
            {"source": "dir", "dir": "/no/such/folder"},
            "params.yaml mnist.dir: '/no/such/folder' is not an existing folder",
        ),
        ({"dir": "  "}, "params.yaml mnist.dir: must be null or a folder path, got '  '"),
        ({"val_size": 0}, "params.yaml mnist.val_size: must be an integer in 1..59999, got 0"),
        ({"val_size": 60000}, "params.yaml mnist.val_size: must be an integer in 1..59999, got 60000"),
        (
            {"val_size": True},
            "params.yaml mnist.val_size: Value 'True' of type 'bool' could not be converted to Integer",
        ),
        (
            {"val_size": "abc"},
            "params.yaml mnist.val_size: Value 'abc' of type 'str' could not be converted to Integer",
        ),
        ({"seed": -3}, "params.yaml mnist.seed: must be an integer >= 0, got -3"),
        ({"seed": 1.5}, "params.yaml mnist.seed: Value '1.5' of type 'float' could not be converted to Integer"),
        (
            {"md5": {"train-images-idx3-ubyte": "xyz"}},
            "params.yaml mnist.md5.train-images-idx3-ubyte: must be 32 hex digits, got 'xyz'",
        ),
        (
            {"md5": {"train.gz": "0" * 32}},
            "params.yaml mnist.md5: unknown file 'train.gz'; allowed: "
            "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
            "t10k-labels-idx1-ubyte",
        ),
        ({"url": "x"}, "params.yaml mnist.url: unknown key; allowed: source, dir, val_size, seed, md5"),
    ],
)
def test_mnist_params_rejected(change, message):
    assert params_error("mnist", {**MNIST_OK, **change}) == message


def test_mnist_params_dir_source(raw_dir):
    folder, md5s = raw_dir
    upper = {name: value.upper() for name, value in md5s.items()}
    params = {"source": "dir", "dir": str(folder), "val_size": 100, "seed": 0, "md5": upper}
    checked = check_section("mnist", mnist.MnistParams, params)
    assert asdict(checked) == {**params, "md5": md5s}  # md5s compared in lower case
    assert params_error("mnist", {"source": "dir", "dir": str(folder)}) == "params.yaml mnist.val_size: missing"


def test_a_prepare_stage_prints_the_params_line_and_writes_nothing(tmp_path, capsys):
    from nnlab import prepare_blobs

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"blobs": {**BLOBS_OK, "centers": 1}, "mnist": {"val_size": "bad"}}))
    with pytest.raises(SystemExit) as stopped:
        prepare_blobs.main(["--params", str(params), "--out", str(tmp_path / "blobs")])
    assert stopped.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        "nnlab.prepare_blobs: error: params.yaml blobs.centers: must be an integer >= 2, got 1"
    ]
    assert not (tmp_path / "blobs").exists()


# 7. data.num_classes / data.input_shape against the data ---------------------------------------


@pytest.mark.parametrize(
    "kind, input_shape, num_classes, message",
    [
        (
            "mnist",
            [1, 28, 28],
            5,
            "data.num_classes=5 does not match the data: the labels in {dir} are 0-9, so set data.num_classes=10",
        ),
        (
            "mnist",
            [2],
            10,
            "data.input_shape=[2] (2 values per sample) does not match the data: each sample in {dir} "
            "has 784 values (28x28), so set data.input_shape=[1, 28, 28]",
        ),
        (
            "mnist",
            [1, 28, 28],
            True,
            "data.num_classes: must be an integer >= 2, got True; the data in {dir} needs data.num_classes=10",
        ),
        (
            "blobs",
            [2],
            2,
            "data.num_classes=2 does not match the data: the labels in {dir} are 0-2, so set data.num_classes=3",
        ),
        (
            "blobs",
            [1, 28, 28],
            3,
            "data.input_shape=[1, 28, 28] (784 values per sample) does not match the data: each "
            "sample in {dir} has 2 values (2), so set data.input_shape=[2]",
        ),
        (
            "blobs",
            [0, 2],
            3,
            "data.input_shape: must be a list of positive integers, got [0, 2]; the data in {dir} "
            "needs data.input_shape=[2]",
        ),
    ],
)
def test_config_that_does_not_fit_the_data(mnist_dir, blobs_dir, kind, input_shape, num_classes, message):
    from nnlab.data.modules import BlobsDataModule, MNISTDataModule

    cls, folder = (MNISTDataModule, mnist_dir) if kind == "mnist" else (BlobsDataModule, blobs_dir)
    module = cls(str(folder), input_shape=input_shape, num_classes=num_classes)
    assert error_of(module.setup) == message.format(dir=folder)
    assert module.splits == {}


def test_config_that_fits_the_data(mnist_dir, blobs_dir):
    from nnlab.data.modules import BlobsDataModule, MNISTDataModule

    flat = MNISTDataModule(str(mnist_dir), input_shape=[784], num_classes=10)  # a flat shape of the same size
    flat.setup()
    assert tuple(flat.splits["train"][0].shape) == (500, 784)
    module = BlobsDataModule(str(blobs_dir), input_shape=[2], num_classes=3)
    module.setup()
    assert tuple(module.splits["val"][0].shape) == (100, 2) and int(module.splits["train"][1].max()) == 2
    BlobsDataModule(str(blobs_dir), input_shape=[2], num_classes=4).setup()  # an unused output is allowed
    assert math.isclose(
        float(flat.inputs("val")[0].mean()),
        float(((mnist.load(mnist_dir)["val"][0] / 255.0 - 0.1307) / 0.3081).mean()),
        rel_tol=1e-5,
    )

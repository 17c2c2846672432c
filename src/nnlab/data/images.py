"""Turn an arbitrary picture of one digit into a 28×28 MNIST-style input.

The steps follow how MNIST itself was made: grey levels, white ink on black, the ink's bounding
box scaled (anti-aliased, aspect kept) so its longer side is 20 px, then placed in a 28×28 field
with the ink's centre of mass at (14, 14).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from nnlab.errors import NnlabError, first_line

SIZE = 28  # the field
BOX = 20  # the longer side of the ink's bounding box
INK_LEVEL = 0.1  # after contrast stretching, fainter pixels are background
MIN_CONTRAST = 0.05  # ink minus background, on a 0-1 scale, below which an image is blank


class ImageError(NnlabError, ValueError):
    """A file that cannot be turned into a digit image; ``reason`` says why in one line."""

    def __init__(self, path: str | Path, reason: str):
        self.path, self.reason = str(path), reason
        super().__init__(f"{path}: {reason}")


def load_digit(path: str | Path, max_bytes: int = 20_000_000, max_pixels: int = 40_000_000) -> np.ndarray:
    """float32 (28, 28) in [0, 1], white digit on black, from any image file Pillow reads."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(path, "no such file" if not path.exists() else "not a file")
    size = path.stat().st_size
    if size > max_bytes:
        raise ImageError(path, f"file is {size:,} bytes, over the limit of {max_bytes:,}")
    return to_mnist(_open(path, max_pixels), path)


def _open(path: Path, max_pixels: int) -> Image.Image:
    """The decoded image, refused by its header's size before the pixels are decoded."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise ImageError(
                        path, f"image is {width}×{height} = {width * height:,} pixels, over the limit of {max_pixels:,}"
                    )
                image.load()
                return ImageOps.exif_transpose(image)  # photos taken sideways
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(
            path, f"refused as a decompression bomb ({first_line(exc)}); limit {max_pixels:,} pixels"
        ) from exc
    except Image.UnidentifiedImageError as exc:
        raise ImageError(path, "not an image file Pillow can read") from exc
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as exc:
        raise ImageError(path, f"unreadable image: {first_line(exc)}") from exc


def to_mnist(image: Image.Image, name: str | Path = "image") -> np.ndarray:
    """The MNIST-style (28, 28) float32 array of a decoded image (see the module docstring)."""
    ink = _ink(_grey(image), name)
    rows, cols = np.nonzero(ink > 0)
    digit = _scale(ink[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1])
    if digit.sum() <= 0:
        raise ImageError(name, "blank image (no ink found)")
    return _centre(digit)


def _grey(image: Image.Image) -> np.ndarray:
    """Grey levels in [0, 1]; transparent parts count as white paper."""
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        paper = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(paper, rgba)
    if image.mode in ("I", "F") or image.mode.startswith("I;"):  # 16/32-bit and float images
        grey = np.asarray(image, dtype=np.float64)
        low, high = grey.min(), grey.max()
        return (grey - low) / (high - low) if high > low else np.zeros_like(grey)
    return np.asarray(image.convert("L"), dtype=np.float64) / 255.0


def _ink(grey: np.ndarray, name: str | Path) -> np.ndarray:
    """White ink on black: inverted when the border is light, background at 0, strongest ink at 1."""
    border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    if np.median(border) > 0.5:
        grey = 1.0 - grey
    background = float(np.median(np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])))
    peak = float(grey.max())
    if peak - background < MIN_CONTRAST:
        raise ImageError(name, "blank image (no ink found)")
    ink = np.clip((grey - background) / (peak - background), 0.0, 1.0)
    return np.clip((ink - INK_LEVEL) / (1.0 - INK_LEVEL), 0.0, 1.0)  # faint noise becomes 0


def _scale(crop: np.ndarray) -> np.ndarray:
    """The crop resized (anti-aliased, aspect kept) so that its longer side is 20 px."""
    height, width = crop.shape
    factor = BOX / max(height, width)
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    resized = Image.fromarray(crop.astype(np.float32)).resize(size, Image.Resampling.LANCZOS)
    return np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)


def _centre(digit: np.ndarray) -> np.ndarray:
    """Placed in a 28×28 field with its centre of mass at (14, 14), clipped at the borders."""
    total = float(digit.sum())
    rows, cols = np.indices(digit.shape)
    top = round(SIZE / 2 - float((rows * digit).sum()) / total)
    left = round(SIZE / 2 - float((cols * digit).sum()) / total)
    field = np.zeros((SIZE, SIZE), dtype=np.float32)
    height, width = digit.shape
    r0, c0 = max(top, 0), max(left, 0)
    r1, c1 = min(top + height, SIZE), min(left + width, SIZE)
    field[r0:r1, c0:c1] = digit[r0 - top : r1 - top, c0 - left : c1 - left]
    return field

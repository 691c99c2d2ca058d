"""Turn any image file or camera frame into the model's input pixels.

This is the one preprocessing function of noodle: training, int8 calibration,
evaluation and the device all call it, so a model never sees pixels on the Pi
that differ from the pixels it was trained on. It returns raw RGB uint8
(0-255); normalization lives inside the model as a Rescaling layer.

numpy and Pillow only: this file ships to the device.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps

from edge.errors import NoodleError

# Recorded in every manifest; bump the version whenever the pixels this file
# produces change, so an old model is not fed pixels it never saw.
PREPROCESSING = {
    "name": "noodle-rgb-squash",
    "version": 1,
    "files": "decode (JPEG draft), EXIF orientation, alpha on white, RGB, squash to size",
    "frames": "centre-crop to square, then squash to size",
    "resample": "bilinear",
    "dtype": "uint8",
    "range": [0, 255],
    "normalization": "inside the model (Rescaling 1/255)",
}

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"})

# Truncated files are errors, not silently grey-padded pictures.
ImageFile.LOAD_TRUNCATED_IMAGES = False
# Pillow's own limit (about 89 Mpx, then twice that) stays; its warning becomes
# an error below, so a decompression bomb is refused rather than decoded.
_RESAMPLE = Image.Resampling.BILINEAR


class ImageError(NoodleError, ValueError):
    """A file that cannot be turned into pixels; str() names the file and the reason."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def is_image_file(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def load_image(path: str | os.PathLike, size: tuple[int, int]) -> np.ndarray:
    """Decode one image file to a (height, width, 3) uint8 array of `size` (h, w)."""
    height, width = size
    try:
        if os.path.getsize(path) == 0:
            raise ImageError(path, "empty file (0 bytes)")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                # JPEG draft mode decodes at 1/2, 1/4 or 1/8 scale, never below
                # the target, so a 500 px photo is not fully decoded to make 64 px.
                # Asked square so that an EXIF rotation afterwards cannot undercut it.
                side = max(height, width)
                img.draft("RGB", (side, side))
                img = ImageOps.exif_transpose(img)
                rgb = _to_rgb(img)
                return np.asarray(rgb.resize((width, height), _RESAMPLE), dtype=np.uint8)
    except ImageError:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise ImageError(path, f"image too large to decode safely ({exc})") from None
    except Image.UnidentifiedImageError:
        raise ImageError(path, "not an image Pillow can read") from None
    except FileNotFoundError:
        raise ImageError(path, "no such file") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        # Truncated or corrupt data surfaces as OSError/SyntaxError from the decoders.
        raise ImageError(path, f"corrupt or truncated image ({exc})") from None


def from_frame(frame: np.ndarray, size: tuple[int, int], bgr: bool = False) -> np.ndarray:
    """A camera frame (H, W, 3 uint8; BGR from OpenCV when `bgr`) to model input.

    Centre-cropped to a square first: cameras are 4:3 or 16:9, and squashing a
    wide frame would stretch the subject far more than training photos were.
    """
    if frame.ndim == 2:
        frame = np.repeat(frame[:, :, None], 3, axis=2)
    if frame.shape[2] == 4:
        frame = frame[:, :, :3]
    if bgr:
        frame = frame[:, :, ::-1]
    h, w = frame.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = np.ascontiguousarray(frame[top : top + side, left : left + side])
    img = Image.fromarray(square.astype(np.uint8, copy=False), "RGB")
    height, width = size
    return np.asarray(img.resize((width, height), _RESAMPLE), dtype=np.uint8)


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB; transparent pixels become white."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # 16-bit (and 32-bit) grey: scale to 8 bits instead of Pillow's clipping.
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if mode.startswith("I") and arr.max(initial=0) > 255 else 255.0
        if mode == "F":
            peak = 1.0 if arr.max(initial=0) <= 1.0 else 255.0
        grey = np.clip(np.rint(arr * (255.0 / peak)), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        mode == "P" and "transparency" in img.info
    )
    if has_alpha:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode == "RGB":
        return img
    return img.convert("RGB")

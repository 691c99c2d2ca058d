"""Turn any image file or camera frame into the model's input pixels.

This is the one preprocessing function of noodle: training, int8 calibration,
evaluation and the device all call it, so a model never sees pixels on the Pi
that differ from the pixels it was trained on. It returns raw RGB uint8
(0-255); normalization lives inside the model as a Rescaling layer, and the
manifest records what it computes, read from the model that was built
(train.models.preprocessing), since it differs between architectures.

numpy and Pillow only: this file ships to the device.
"""
from __future__ import annotations

import errno
import io
import os
import threading
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps

from edge.errors import NoodleError

# Recorded in every manifest; bump the version whenever the pixels this file
# produces change, so an old model is not fed pixels it never saw.
# 2: 16-bit and float grey scaled by their mode's range, no longer by their content.
PREPROCESSING = {
    "name": "noodle-rgb-squash",
    "version": 2,
    "files": "decode (JPEG draft), EXIF orientation, alpha on white, RGB, squash to size",
    "frames": "centre-crop to square, then squash to size",
    "resample": "bilinear",
    "dtype": "uint8",
    "range": [0, 255],
}

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"})
# Pillow's names for those formats (JPEG opens a phone's multi-picture MPO too). Bytes from the
# network are tried as these only, never as EPS, PSD or the other formats Pillow knows.
UPLOAD_FORMATS = ("JPEG", "PNG", "BMP", "WEBP", "GIF", "TIFF")
# Phone photos Pillow reads only through the pillow-heif plugin.
HEIF_SUFFIXES = frozenset({".heic", ".heif"})
HEIF_FIX = "pip install pillow-heif"

# Memory all decodes in this process may hold at once, and so the most one
# image may take. A Raspberry Pi 3 or Zero 2 W has 512 MB-1 GB: 256 MiB
# decodes an 8192x8192 RGB PNG or any phone JPEG (drafted), and a 9400x9400
# PNG bomb is refused before it is decoded. Every decode waits for its share,
# so four workers never hold four huge images at once.
DECODE_BUDGET_BYTES = 256 * 2**20

# Truncated files are errors, not silently grey-padded pictures.
ImageFile.LOAD_TRUNCATED_IMAGES = False
# Pillow's own bomb limit counts declared pixels (89 Mpx), which refuses a
# 108 Mpx phone JPEG that draft mode decodes at 1/8 scale in 8 MB and lets
# through a 9400x9400 PNG that takes 750 MB. decode_bytes() replaces it.
Image.MAX_IMAGE_PIXELS = None
_RESAMPLE = Image.Resampling.BILINEAR


class ImageError(NoodleError, ValueError):
    """A file that cannot be turned into pixels; str() names the file and the reason."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def is_image_file(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def is_heif_file(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in HEIF_SUFFIXES


_heif = threading.Lock()
_heif_ready: bool | None = None


def heif_support() -> bool:
    """Teach Pillow HEIC/HEIF through pillow-heif when it is installed; False when it is not.

    Imported only when a HEIC file turns up: it costs start-up time nobody else should pay.
    """
    global _heif_ready
    with _heif:
        if _heif_ready is None:
            try:
                import pillow_heif
            except ImportError:
                _heif_ready = False
            else:
                pillow_heif.register_heif_opener()
                _heif_ready = True
        return _heif_ready


def os_reason(exc: OSError) -> str | None:
    """What a file-system error means for the person, or None for a decoder's OSError (no errno)."""
    reasons = {
        errno.ENOENT: "no such file",
        errno.EACCES: "permission denied; make it readable (chmod a+r) or run as a user who may read it",
        errno.EPERM: "permission denied; make it readable (chmod a+r) or run as a user who may read it",
        errno.ELOOP: "symlink loop; point the link at a real file",
        errno.EISDIR: "is a folder, not a file",
        errno.ENAMETOOLONG: "name too long for this file system",
    }
    if exc.errno is None:
        return None
    return reasons.get(exc.errno, f"cannot read it ({exc.strerror or exc})")


class DecodeBudget:
    """Bytes of decoded pixels the threads of this process may hold at once (a semaphore of bytes)."""

    def __init__(self, limit: int):
        self.limit, self.used, self.peak = limit, 0, 0
        self._cond = threading.Condition()

    @contextmanager
    def hold(self, nbytes: int):
        """Wait until `nbytes` fit beside the decodes running now, and hold them for the block."""
        with self._cond:
            # Alone it always fits (nbytes <= limit is checked first), so nobody waits forever.
            self._cond.wait_for(lambda: self.used + nbytes <= self.limit)
            self.used += nbytes
            self.peak = max(self.peak, self.used)
        try:
            yield
        finally:
            with self._cond:
                self.used -= nbytes
                self._cond.notify_all()


# Shared by every decode in the process: the classify pool's workers, training's loaders.
BUDGET = DecodeBudget(DECODE_BUDGET_BYTES)
# glibc's mallopt(M_MMAP_THRESHOLD): blocks from this size up are mmapped, so freed at once.
_M_MMAP_THRESHOLD, _MMAP_FROM = -3, 1 << 20
_malloc_tamed = False


def return_freed_decodes() -> None:
    """Make glibc give a large decode's memory back when it is freed (once, before decoding).

    glibc raises its mmap threshold each time a large block is freed; after that,
    large blocks come from per-thread arenas that keep the memory. Four decode
    threads then hold four images' worth although the budget lets one decode at a
    time (docs/experiments.md, "Figures behind the code"). A fixed threshold
    stops that. Elsewhere (macOS, musl) this does nothing.
    """
    global _malloc_tamed
    if _malloc_tamed:
        return
    _malloc_tamed = True
    try:
        import ctypes  # numpy has imported it already

        ctypes.CDLL(None).mallopt(_M_MMAP_THRESHOLD, _MMAP_FROM)
    except (OSError, AttributeError):
        pass


# Bytes per pixel Pillow stores for a mode (1-bit and 8-bit modes take one, 16-bit two,
# everything else, RGB included, four), then what _to_rgb adds on top while converting.
_STORED = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_WIDE_GREY = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
# Bytes a pixel a decoder holds of its own beside Pillow's image. Pillow reads every WebP,
# still or animated, through libwebp's animation decoder: two RGBA canvases of its own, and
# each frame handed over as a third RGBA copy before Pillow's, plus the codec's scratch
# (a 36-byte 8000x8000 WebP counted as 4 bytes a pixel peaked at 1 GB).
_DECODER_OWN = {"HEIF": 6, "WEBP": 14}
# EXIF orientations that make exif_transpose copy the whole image.
_TURNED = range(2, 9)


def decode_bytes(img: Image.Image) -> int:
    """Peak bytes a decode of `img` (after any draft reduction) takes until it is resized.

    An estimate from the mode: the largest PNG accepted in each of RGB, L, P,
    RGBA and I;16 raised a process's peak memory by 240-265 MB, against 256 MiB counted.
    """
    pixels = img.size[0] * img.size[1]
    stored = _STORED.get(img.mode, 4)
    if img.mode == "RGB":
        convert = 0
    elif img.mode in _ALPHA_MODES or (img.mode == "P" and "transparency" in img.info):
        convert = 12  # RGBA copy, a white canvas, the composite
    elif img.mode in _WIDE_GREY:
        convert = 10  # numpy copy, 32-bit working array, 8-bit grey, then RGB
    else:
        convert = 4  # the RGB copy
    turned = stored if _orientation(img) in _TURNED else 0
    # pillow-heif decodes into a buffer of its own first: a 12 Mpx HEIC measured 9.2
    # bytes a pixel at its peak, against the 4 counted for its RGB.
    own = _DECODER_OWN.get(img.format, 0)
    return pixels * (stored + turned + convert + own)


def _fitting_side(img: Image.Image, need: int, limit: int) -> int:
    """The long side, in hundreds of pixels, at which this image (its shape and format) fits `limit`."""
    scale = (limit / need) ** 0.5
    return int(max(img.size) * scale) // 100 * 100


def _orientation(img: Image.Image) -> int:
    # A PNG's EXIF may follow its pixels, and Pillow decodes them all to look;
    # only a chunk seen in the header counts, or the check would be the bomb.
    if img.format == "PNG" and "exif" not in img.info:
        return 1
    return img.getexif().get(0x0112, 1)


def load_image(path: str | os.PathLike, size: tuple[int, int],
               budget: DecodeBudget | None = None, data: bytes | None = None) -> np.ndarray:
    """Decode one image file to a (height, width, 3) uint8 array of `size` (h, w).

    The decode waits for its bytes in `budget` (default: the process's BUDGET),
    and an image needing more than the whole budget is refused undecoded.
    `data`: the file's bytes, already in memory (an upload to `noodle-edge
    serve`); `path` then only names it in messages, nothing is read from disk,
    and only the formats of IMAGE_SUFFIXES are tried.
    """
    height, width = size
    budget = budget or BUDGET
    try:
        if (len(data) if data is not None else os.path.getsize(path)) == 0:
            raise ImageError(path, "empty file (0 bytes)")
        if data is None and is_heif_file(path) and not heif_support():
            raise ImageError(path, f"HEIC/HEIF photo and pillow-heif is not installed; {HEIF_FIX}")
        opened = Image.open(path) if data is None else Image.open(io.BytesIO(data), formats=UPLOAD_FORMATS)
        with opened as img:
            # JPEG draft mode decodes at 1/2, 1/4 or 1/8 scale, never below
            # the target, so a 500 px photo is not fully decoded to make 64 px.
            # Asked square so that an EXIF rotation afterwards cannot undercut it.
            side = max(height, width)
            img.draft("RGB", (side, side))
            need = decode_bytes(img)
            if need > budget.limit:
                raise ImageError(path, f"image too large to decode safely ({img.size[0]}x{img.size[1]} "
                                       f"{img.mode} needs about {need / 2**20:.0f} MiB, over the "
                                       f"{budget.limit / 2**20:.0f} MiB decode budget); "
                                       f"scale it down to {_fitting_side(img, need, budget.limit)} px on "
                                       "the long side or less")
            with budget.hold(need):
                # In place: without an EXIF turn the copy exif_transpose would return
                # doubles the memory of every decode for nothing.
                ImageOps.exif_transpose(img, in_place=True)
                rgb = _to_rgb(img)
                return np.asarray(rgb.resize((width, height), _RESAMPLE), dtype=np.uint8)
    except ImageError:
        raise
    except Image.UnidentifiedImageError:
        raise ImageError(path, "not an image Pillow can read") from None
    except Image.DecompressionBombError as exc:  # someone set Image.MAX_IMAGE_PIXELS again
        raise ImageError(path, f"image too large to decode safely ({exc})") from None
    except OSError as exc:
        # File-system errors carry an errno; the decoders' OSErrors about bad data do not.
        reason = os_reason(exc)
        raise ImageError(path, reason or f"corrupt or truncated image ({exc})") from None
    except (SyntaxError, ValueError, EOFError) as exc:
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
    square = np.ascontiguousarray(crop_square(frame))
    img = Image.fromarray(square.astype(np.uint8, copy=False), "RGB")
    height, width = size
    return np.asarray(img.resize((width, height), _RESAMPLE), dtype=np.uint8)


def crop_square(frame: np.ndarray) -> np.ndarray:
    """The centred square of a frame (a view, no copy)."""
    h, w = frame.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return frame[top : top + side, left : left + side]


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB; transparent pixels become white."""
    mode = img.mode
    if mode in _WIDE_GREY:
        # Scaled by the mode's range, never by the content, so a dark picture stays
        # dark whatever its brightest pixel. 16-bit: 65535 -> 255. "I" is how PGM and
        # older Pillows hand over 16-bit files, so it takes the 16-bit range too;
        # floats are taken as 0-1.
        # One working array, changed in place, keeps a large picture's peak low.
        if mode == "F":
            work = np.clip(np.asarray(img), 0.0, 1.0)
            work *= 255.0
            np.rint(work, out=work)
        else:
            # Integer arithmetic: (v * 255 + 32767) // 65535 is v / 257 rounded.
            work = np.clip(np.asarray(img), 0, 65535).astype(np.uint32)
            work *= 255
            work += 32767
            work //= 65535
        return Image.fromarray(work.astype(np.uint8), "L").convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        mode == "P" and "transparency" in img.info
    )
    if has_alpha:
        rgba = img if mode == "RGBA" else img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode == "RGB":
        return img
    return img.convert("RGB")

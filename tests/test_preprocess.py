"""edge.preprocess: every image format and mode to the same RGB uint8 pixels."""
from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from edge.preprocess import ImageError, from_frame, load_image

SIZE = (64, 64)
RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def halves(size=(120, 80), left=RED, right=BLUE) -> Image.Image:
    """Left half one colour, right half another: orientation shows in the output."""
    img = Image.new("RGB", size, left)
    img.paste(Image.new("RGB", (size[0] // 2, size[1]), right), (size[0] // 2, 0))
    return img


def close(pixel, colour, tol=40) -> bool:
    return bool(np.abs(np.asarray(pixel, int) - np.asarray(colour, int)).max() <= tol)


@pytest.mark.parametrize("suffix,fmt", [(".jpg", "JPEG"), (".png", "PNG"), (".bmp", "BMP"),
                                        (".webp", "WEBP"), (".tif", "TIFF")])
def test_rgb_formats_decode_to_rgb_uint8(tmp_path, suffix, fmt):
    path = tmp_path / f"img{suffix}"
    halves().save(path, fmt)
    x = load_image(path, SIZE)
    assert x.shape == (64, 64, 3) and x.dtype == np.uint8
    assert close(x[32, 5], RED) and close(x[32, 58], BLUE)


def test_gif_uses_first_frame(tmp_path):
    path = tmp_path / "anim.gif"
    frames = [Image.new("RGB", (40, 40), RED), Image.new("RGB", (40, 40), BLUE)]
    frames[0].save(path, save_all=True, append_images=frames[1:])
    assert close(load_image(path, SIZE)[20, 20], RED)


def test_transparent_pixels_become_white(tmp_path):
    img = Image.new("RGBA", (50, 50), (0, 0, 0, 0))
    img.paste(Image.new("RGBA", (25, 50), (0, 0, 255, 255)), (0, 0))
    img.save(tmp_path / "a.png")
    x = load_image(tmp_path / "a.png", SIZE)
    assert close(x[32, 5], BLUE) and close(x[32, 60], WHITE)


def test_palette_with_transparency_becomes_white(tmp_path):
    img = Image.new("P", (30, 30), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    img.paste(1, (0, 0, 15, 30))
    img.save(tmp_path / "p.png", transparency=0)
    x = load_image(tmp_path / "p.png", SIZE)
    assert close(x[32, 5], RED) and close(x[32, 60], WHITE)


def test_grayscale_becomes_three_equal_channels(tmp_path):
    Image.new("L", (30, 30), 100).save(tmp_path / "g.jpg")
    x = load_image(tmp_path / "g.jpg", SIZE)
    assert np.allclose(x[..., 0], x[..., 1]) and np.allclose(x[..., 1], x[..., 2])
    assert abs(int(x.mean()) - 100) <= 2


def test_cmyk_jpeg(tmp_path):
    halves().convert("CMYK").save(tmp_path / "c.jpg")
    x = load_image(tmp_path / "c.jpg", SIZE)
    assert close(x[32, 5], RED, tol=60) and close(x[32, 58], BLUE, tol=60)


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path):
    arr = np.full((20, 20), 32896, dtype=np.uint16)  # mid-grey in 16 bits
    arr[:, 10:] = 65535
    Image.fromarray(arr).save(tmp_path / "deep.png")
    x = load_image(tmp_path / "deep.png", SIZE)
    assert abs(int(x[10, 5, 0]) - 128) <= 2 and x[10, 60, 0] == 255


def test_exif_orientation_is_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # the camera was turned: display rotated 90 degrees clockwise
    halves(size=(120, 80)).save(tmp_path / "turned.jpg", exif=exif)
    x = load_image(tmp_path / "turned.jpg", SIZE)
    # After the rotation the left (red) half is on top.
    assert close(x[5, 32], RED) and close(x[58, 32], BLUE)


def test_draft_decoding_matches_a_full_decode(tmp_path):
    rng = np.random.default_rng(0)
    smooth = Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).resize((512, 384))
    smooth.save(tmp_path / "big.jpg", quality=95)
    drafted = load_image(tmp_path / "big.jpg", SIZE).astype(int)
    full = np.asarray(Image.open(tmp_path / "big.jpg").convert("RGB").resize((64, 64))).astype(int)
    assert np.abs(drafted - full).mean() < 6


def test_non_square_target_size(tmp_path):
    halves().save(tmp_path / "h.png")
    assert load_image(tmp_path / "h.png", (32, 48)).shape == (32, 48, 3)


@pytest.mark.parametrize(
    "name,content,reason",
    [
        ("empty.jpg", b"", "empty file"),
        ("notes.jpg", b"these are not pixels\n" * 10, "not an image"),
    ],
)
def test_unreadable_files_raise_image_error_naming_the_file(tmp_path, name, content, reason):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ImageError) as err:
        load_image(path, SIZE)
    assert str(path) in str(err.value) and reason in str(err.value)


def test_truncated_jpeg(tmp_path):
    buf = io.BytesIO()
    halves(size=(300, 300)).save(buf, "JPEG")
    (tmp_path / "cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageError, match="truncated"):
        load_image(tmp_path / "cut.jpg", SIZE)


def test_missing_file(tmp_path):
    with pytest.raises(ImageError, match="no such file"):
        load_image(tmp_path / "nope.jpg", SIZE)


def test_decompression_bomb_is_refused(tmp_path, monkeypatch):
    Image.new("RGB", (200, 200)).save(tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageError, match="too large"):
        load_image(tmp_path / "bomb.png", SIZE)


def test_frame_is_centre_cropped_and_bgr_swapped():
    frame = np.zeros((480, 640, 3), np.uint8)
    frame[:, :80] = (0, 255, 0)  # green bands left and right of the centre square
    frame[:, -80:] = (0, 255, 0)
    frame[:, 80:-80] = (255, 0, 0)  # blue in BGR
    x = from_frame(frame, SIZE, bgr=True)
    assert x.shape == (64, 64, 3)
    assert close(x[32, 1], BLUE, tol=5) and close(x[32, 62], BLUE, tol=5)


def test_frame_grey_and_rgba():
    assert from_frame(np.full((48, 64), 7, np.uint8), SIZE).shape == (64, 64, 3)
    assert from_frame(np.zeros((48, 64, 4), np.uint8), SIZE).shape == (64, 64, 3)


def test_importing_preprocess_does_not_import_tensorflow():
    code = ("import sys, edge.preprocess; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr

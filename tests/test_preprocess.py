"""edge.preprocess: every image format and mode to the same RGB uint8 pixels."""
from __future__ import annotations

import io
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from edge import preprocess
from edge.preprocess import ImageError, decode_bytes, from_frame, load_image

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


def test_sixteen_bit_grey_is_scaled_by_its_range_not_its_content(tmp_path):
    # Was: values <= 255 of 65535 came out mid-grey, and one pixel at 256 made it black.
    dark = np.full((20, 20), 200, dtype=np.uint16)
    Image.fromarray(dark).save(tmp_path / "dark.png")
    dark[0, 0] = 256
    Image.fromarray(dark).save(tmp_path / "dark-256.png")
    a = load_image(tmp_path / "dark.png", SIZE)
    b = load_image(tmp_path / "dark-256.png", SIZE)
    assert Image.open(tmp_path / "dark.png").mode == "I;16"
    assert a.max() == 1 and np.abs(a.astype(int) - b).max() <= 1  # 200 / 257 rounds to 1
    white = np.full((4, 4), 65535, dtype=np.uint16)
    Image.fromarray(white).save(tmp_path / "white.png")
    assert load_image(tmp_path / "white.png", SIZE).min() == 255


def test_float_grey_is_taken_as_zero_to_one(tmp_path):
    Image.fromarray(np.full((8, 8), 0.5, np.float32), "F").save(tmp_path / "f.tif")
    Image.fromarray(np.full((8, 8), 200.0, np.float32), "F").save(tmp_path / "f200.tif")
    assert load_image(tmp_path / "f.tif", SIZE).mean() == 128
    assert load_image(tmp_path / "f200.tif", SIZE).mean() == 255


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


# -- decode memory ------------------------------------------------------------

def test_a_108_megapixel_phone_jpeg_is_decoded_through_draft_mode(tmp_path):
    # Pillow's declared-pixel limit (89 Mpx) refused this; drafted to 1/8 it needs ~7 MB.
    path = tmp_path / "phone.jpg"
    Image.new("RGB", (12000, 9000), RED).save(path, quality=50)
    with Image.open(path) as img:
        img.draft("RGB", (64, 64))
        assert img.size == (1500, 1125) and decode_bytes(img) < 16 * 2**20
    x = load_image(path, SIZE)
    assert x.shape == (64, 64, 3) and close(x[32, 32], RED)


def test_a_png_bomb_is_refused_before_it_is_decoded(tmp_path, monkeypatch):
    # 257 KB on disk, 88 Mpx declared: Pillow's limit let it through to take 745 MB.
    path = tmp_path / "bomb.png"
    Image.new("L", (9400, 9400)).save(path)
    monkeypatch.setattr(preprocess, "_to_rgb", lambda img: pytest.fail("decoded a refused image"))
    with pytest.raises(ImageError, match=r"too large to decode safely \(9400x9400 L needs about 421 MiB"):
        load_image(path, SIZE)


def test_the_limit_is_the_memory_after_draft_not_the_declared_pixels(tmp_path):
    # The same 2400x1800 picture: as a JPEG drafted to 300x225 it fits a 4 MiB budget,
    # as a PNG (decoded whole, 4 bytes a pixel) it does not.
    budget = preprocess.DecodeBudget(4 * 2**20)
    halves(size=(2400, 1800)).save(tmp_path / "big.jpg")
    halves(size=(2400, 1800)).save(tmp_path / "big.png")
    x = load_image(tmp_path / "big.jpg", SIZE, budget=budget)
    assert close(x[32, 5], RED) and close(x[32, 58], BLUE)
    with pytest.raises(ImageError, match="over the 4 MiB decode budget"):
        load_image(tmp_path / "big.png", SIZE, budget=budget)
    assert budget.used == 0


def test_concurrent_decodes_share_one_budget(tmp_path, monkeypatch):
    # Each PNG needs 3.8 MB; with a 10 MB budget at most two decode at once on 4 threads.
    halves(size=(1000, 1000)).save(tmp_path / "a.png")
    budget = preprocess.DecodeBudget(10 * 2**20)
    running, most = [0], [0]
    lock = threading.Lock()
    to_rgb = preprocess._to_rgb

    def slow_to_rgb(img):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.2)  # long enough to overlap on a busy machine
        with lock:
            running[0] -= 1
        return to_rgb(img)

    monkeypatch.setattr(preprocess, "_to_rgb", slow_to_rgb)
    with ThreadPoolExecutor(4) as pool:
        out = list(pool.map(lambda _: load_image(tmp_path / "a.png", SIZE, budget=budget), range(8)))
    assert len(out) == 8 and most[0] == 2 and budget.peak <= budget.limit and budget.used == 0


def test_an_image_larger_than_the_budget_never_waits(tmp_path):
    budget = preprocess.DecodeBudget(2**20)
    Image.new("RGB", (1000, 1000)).save(tmp_path / "a.png")
    with budget.hold(2**20), pytest.raises(ImageError, match="too large"):
        load_image(tmp_path / "a.png", SIZE, budget=budget)  # refused at once, not queued


def test_pillows_own_bomb_error_is_one_line(tmp_path, monkeypatch):
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

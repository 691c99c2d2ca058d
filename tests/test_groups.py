"""Splits that respect time: bursts (capture runs, EXIF times, near-identical frames) stay on one side."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from train.data import DataError, find_dataset
from train.groups import dhash, groups


def scene(seed: int, side: int = 96) -> np.ndarray:
    """A smooth random picture: one subject, as a still camera sees it."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8))
    return np.asarray(small.resize((side + 8, side + 8), Image.Resampling.BICUBIC), dtype=np.int16)


def frames(seed: int, n: int, side: int = 96) -> list[np.ndarray]:
    """Frames of one still subject: shifted by a few pixels, with sensor noise."""
    rng = np.random.default_rng(seed + 1000)
    base = scene(seed, side)
    out = []
    for _ in range(n):
        dy, dx = rng.integers(0, 5, 2)
        frame = base[dy:dy + side, dx:dx + side] + rng.integers(-8, 9, (side, side, 3))
        out.append(np.clip(frame, 0, 255).astype(np.uint8))
    return out


def save(folder, name: str, pixels: np.ndarray, exif_time: str | None = None):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    image = Image.fromarray(pixels)
    if exif_time:
        exif = Image.Exif()
        exif.get_ifd(0x8769)[36867] = exif_time
        image.save(path, exif=exif, quality=90)
    else:
        image.save(path, quality=90)
    return path


def test_near_identical_frames_are_one_burst_and_other_photos_are_not(tmp_path):
    paths = [save(tmp_path, f"a{i}.jpg", f) for i, f in enumerate(frames(1, 6))]
    paths += [save(tmp_path, f"other{s}.jpg", scene(s)[:96, :96].astype(np.uint8)) for s in range(20, 26)]
    found = groups(paths)
    assert len(set(found[:6])) == 1  # shifted, noisy frames of one subject: one group (bytes all differ)
    assert len(set(found[6:])) == 6 and found[0] not in found[6:]
    assert dhash(tmp_path / "missing.jpg") is None


def test_capture_names_and_exif_times_make_bursts(tmp_path):
    # Different content, but one `noodle-edge capture` run: its names say so (edge/camera.py's _save).
    run = [save(tmp_path, f"cat-20261206-101500-{i:04d}.jpg", scene(40 + i)[:96, :96].astype(np.uint8))
           for i in range(1, 4)]
    later = save(tmp_path, "cat-20261206-111500-0001.jpg", scene(50)[:96, :96].astype(np.uint8))
    shots = [save(tmp_path, f"IMG_{i}.jpg", scene(60 + i)[:96, :96].astype(np.uint8),
                  f"2026:12:06 10:00:0{i}") for i in range(3)]
    apart = save(tmp_path, "IMG_9.jpg", scene(70)[:96, :96].astype(np.uint8), "2026:12:06 11:00:00")
    found = groups([*run, later, *shots, apart])
    assert len(set(found[:3])) == 1 and found[3] != found[0]
    assert len(set(found[4:7])) == 1 and found[7] != found[4]


def test_one_capture_per_class_reports_no_test_figure_and_points_to_test(tmp_path):
    """A carved test split of frames whose twins trained: flagged, so no figure of it is reported."""
    for label, seed in (("cat", 1), ("dog", 2)):
        for i, f in enumerate(frames(seed, 30)):
            save(tmp_path / label, f"{label}-20261206-101500-{i + 1:04d}.jpg", f)
    dataset = find_dataset(tmp_path)
    assert dataset.shared.get("test") and dataset.summary()["shared_bursts"] == dataset.shared
    (warning,) = [w for w in dataset.warnings if "test photos share a burst" in w]
    assert "no figure of that split is reported" in warning and "TEST=" in warning


def test_several_sessions_per_class_are_split_by_session(tmp_path):
    for label, base in (("cat", 100), ("dog", 200)):
        for session in range(8):
            for i, f in enumerate(frames(base + session, 5)):
                save(tmp_path / label, f"{label}-2026120{session}-101500-{i + 1:04d}.jpg", f)
    dataset = find_dataset(tmp_path)
    assert dataset.shared == {} and not [w for w in dataset.warnings if "share a burst" in w]
    sessions = {split: {p.name.split("-")[1] + p.parent.name for p, _ in items}
                for split, items in dataset.splits.items()}
    assert sessions["test"] and not sessions["test"] & sessions["train"]
    assert not sessions["val"] & sessions["train"] and not sessions["val"] & sessions["test"]


def test_a_given_test_folder_sharing_bursts_with_train_is_flagged(tmp_path):
    for label, seed in (("cat", 1), ("dog", 2)):
        shot = frames(seed, 12)
        for i, f in enumerate(shot[:10]):
            save(tmp_path / "train" / label, f"{label}{i}.jpg", f)
        for i, f in enumerate(shot[10:]):
            save(tmp_path / "test" / label, f"{label}-copy{i}.jpg", f)
    dataset = find_dataset(tmp_path)
    assert dataset.shared["test"] == 4


def test_compare_refuses_a_split_that_shares_bursts(tmp_path, monkeypatch):
    import export.compare as compare
    from export.convert import ExportError

    class Manifest:
        data = {"shared_bursts": {"test": 3}}

    class Recorded:
        root, evaluation, splits = tmp_path, "test", {"test": [1, 2, 3, 4]}

    monkeypatch.setattr(compare, "evaluation_data", lambda *args: Recorded())
    with pytest.raises(ExportError, match=r"3 of its test split's 4 photos share a burst.*TEST=folder"):
        compare.evaluation_photos(tmp_path, Manifest())


def test_too_few_bursts_still_needs_photos(tmp_path):
    save(tmp_path / "cat", "a.jpg", frames(1, 1)[0])
    save(tmp_path / "dog", "b.jpg", frames(2, 1)[0])
    with pytest.raises(DataError, match="too few training photos"):
        find_dataset(tmp_path)


def test_report_md_gives_no_keras_figure_of_a_split_that_shares_bursts():
    from export.compare import _keras_accuracy

    class Trained:
        data, metrics = {"shared_bursts": {"test": 16}}, {"test": {"accuracy": 1.0}}

    validation = {"split": "test", "keras": {"accuracy": 1.0}}
    assert _keras_accuracy(Trained(), validation) is None  # was: 100.00 %, of frames training saw twins of
    Trained.data = {}
    assert _keras_accuracy(Trained(), validation) == 1.0


@pytest.mark.parametrize("bitwise_count", [True, False], ids=["numpy-2", "numpy-1"])
def test_near_pairs_are_every_pair_within_near_bits_once(monkeypatch, bitwise_count):
    """The blocked word-wise comparison finds exactly the pairs a plain bit count of each pair finds."""
    from train.groups import BLOCK_PAIRS, NEAR_BITS, near_pairs

    rng = np.random.default_rng(0)
    codes = rng.integers(0, 256, (700, 24), dtype=np.uint8)
    for i in range(0, 300, 3):  # near-duplicates a few bits to a few more than NEAR_BITS apart
        bits = np.unpackbits(codes[i])
        bits[rng.choice(192, rng.integers(0, NEAR_BITS + 6), replace=False)] ^= 1
        codes[i + 1] = np.packbits(bits)
    if not bitwise_count:
        monkeypatch.delattr(np, "bitwise_count")
    monkeypatch.setattr("train.groups.BLOCK_PAIRS", 700 * 50)  # several blocks, not one
    assert BLOCK_PAIRS > 700 * 50
    found = list(near_pairs(codes.tobytes()))
    distance = np.unpackbits(codes[:, None, :] ^ codes[None, :, :], axis=-1).sum(-1)
    expected = {(a, b) for a, b in zip(*np.nonzero(distance <= NEAR_BITS), strict=True) if a < b}
    assert len(found) == len(set(found)) and set(found) == expected
    assert 20 < len(expected) < 100  # planted pairs on both sides of the line, no random ones
    assert list(near_pairs(b"")) == []

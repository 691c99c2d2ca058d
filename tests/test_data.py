"""train.data: layouts detected, splits made, bad files skipped, bad datasets refused."""
from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from noodle import app
from train.data import DataError, decode, find_dataset


def photo(path: Path, colour=(200, 100, 50)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 30), colour).save(path)
    return path


def folders(root: Path, counts: dict[str, int], split: str | None = "train") -> Path:
    for label, n in counts.items():
        for i in range(n):
            photo((root / split if split else root) / label / f"{label}.{i}.jpg")
    return root


def totals(dataset, splits=("train", "val")) -> dict[str, int]:
    counts = Counter()
    for split in splits:
        for _, y in dataset.splits.get(split, []):
            counts[dataset.classes[y]] += 1
    return dict(counts)


def test_folders_with_train_and_test(tmp_path):
    folders(tmp_path, {"dogs": 10, "cats": 10})
    folders(tmp_path, {"dogs": 3, "cats": 4}, split="test")
    ds = find_dataset(tmp_path)
    assert ds.layout == "folders"
    assert ds.classes == ["cats", "dogs"]  # sorted: the first class is label 0
    assert ds.val_carved and len(ds.splits["val"]) == 4  # 20 % of each class
    assert totals(ds) == {"cats": 10, "dogs": 10}
    assert totals(ds, ("test",)) == {"cats": 4, "dogs": 3}


def test_seed_folder_names_training_set_and_test_set(tmp_path):
    folders(tmp_path, {"cats": 5, "dogs": 5}, split="training_set")
    folders(tmp_path, {"cats": 2, "dogs": 2}, split="test_set")
    folders(tmp_path, {"cats": 2, "dogs": 2}, split="validation")
    ds = find_dataset(tmp_path)
    assert not ds.val_carved and {k: len(v) for k, v in ds.splits.items()} == {
        "train": 10, "test": 4, "val": 4}


def test_single_class_folders_are_split_stratified_and_repeatably(tmp_path):
    folders(tmp_path, {"a": 20, "b": 10, "c": 5}, split=None)
    first, second = find_dataset(tmp_path), find_dataset(tmp_path)
    assert first.layout == "class-folders" and "test" not in first.splits
    assert totals(first, ("val",)) == {"a": 4, "b": 2, "c": 1}
    assert first.splits["val"] == second.splits["val"]


def test_kaggle_flat_names(tmp_path):
    for i in range(6):
        photo(tmp_path / f"cat.{i}.jpg")
        photo(tmp_path / f"dog.{i}.jpg")
    ds = find_dataset(tmp_path)
    assert ds.layout == "kaggle-flat" and ds.classes == ["cat", "dog"]
    assert totals(ds) == {"cat": 6, "dog": 6}


def test_csv_with_header_and_split_column(tmp_path):
    rows = [("file", "label", "split")]
    for i in range(5):
        for label in ("x", "y"):
            rows.append((str(photo(tmp_path / "img" / f"{label}{i}.png").relative_to(tmp_path)),
                         label, "test" if i == 0 else "train"))
    with open(tmp_path / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    ds = find_dataset(tmp_path / "labels.csv")
    assert ds.layout == "csv" and ds.classes == ["x", "y"]
    assert totals(ds, ("test",)) == {"x": 1, "y": 1} and totals(ds) == {"x": 4, "y": 4}


def test_csv_without_header(tmp_path):
    lines = [f"{photo(tmp_path / f'{c}{i}.jpg').name},{c}" for c in "pq" for i in range(3)]
    (tmp_path / "l.csv").write_text("\n".join(lines) + "\n")
    assert totals(find_dataset(tmp_path / "l.csv")) == {"p": 3, "q": 3}


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda p: p / "missing", "no such file or folder"),
        (lambda p: folders(p, {"cats": 3}), "only one class"),
        (lambda p: (folders(p, {"cats": 3}), (p / "train" / "dogs").mkdir())[0], "no images"),
        (lambda p: (p / "readme.txt").write_text("hi") and p, "unknown layout"),
        (lambda p: (p / "l.csv").write_text("gone.jpg,cat\nalso.jpg,dog\n") and p / "l.csv",
         "2 file(s) it names do not exist"),
    ],
    ids=["missing", "one-class", "empty-class", "unknown-layout", "csv-missing-files"],
)
def test_bad_datasets_are_refused_with_a_reason(tmp_path, make, message):
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        find_dataset(make(tmp_path))


def test_bad_dataset_on_the_cli_is_one_line_and_exit_2(tmp_path):
    folders(tmp_path, {"cats": 3})
    result = CliRunner().invoke(app, ["train", str(tmp_path), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in result.output
    assert not (tmp_path / "run").exists()


def bad_files(folder: Path) -> list[Path]:
    """A corrupt JPEG, a zero-byte file and a text file named .jpg."""
    folder.mkdir(parents=True, exist_ok=True)
    good = photo(folder / "good.jpg")
    corrupt = folder / "corrupt.jpg"
    corrupt.write_bytes(good.read_bytes()[:20] + b"\x00garbage" * 50)
    (folder / "zero.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("not a photo")
    return [corrupt, folder / "zero.jpg", folder / "text.jpg"]


def test_decode_skips_bad_files_and_keeps_cmyk(tmp_path):
    bad = bad_files(tmp_path)
    Image.new("CMYK", (30, 30), (0, 200, 200, 0)).save(tmp_path / "cmyk.jpg")
    items = [(p, 0) for p in sorted(tmp_path.iterdir())]
    decoded = decode(items, (16, 16))
    assert len(decoded.y) == 2 and decoded.x.shape == (2, 16, 16, 3)
    assert sorted(s["file"] for s in decoded.skipped) == sorted(str(p) for p in bad)
    assert all(s["reason"] for s in decoded.skipped)


def test_flat_and_csv_layouts_match_the_folder_layout_on_real_photos(shared_photos, tmp_path):
    """The same 1,000 photos as class folders, Kaggle flat names and a CSV."""
    photos = sorted((shared_photos / "train").glob("*/*.jpg"))
    rows = ["file,label"]
    for f in photos:
        label = f.name.split(".")[0]  # cat.1.jpg -> cat
        (tmp_path / "folders" / label).mkdir(parents=True, exist_ok=True)
        (tmp_path / "folders" / label / f.name).symlink_to(f)
        (tmp_path / "flat").mkdir(exist_ok=True)
        (tmp_path / "flat" / f.name).symlink_to(f)
        rows.append(f"{f},{label}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")

    by_folder = find_dataset(tmp_path / "folders")
    by_name = find_dataset(tmp_path / "flat")
    by_csv = find_dataset(tmp_path / "labels.csv")
    assert (by_folder.layout, by_name.layout, by_csv.layout) == ("class-folders", "kaggle-flat", "csv")
    assert by_folder.classes == by_name.classes == by_csv.classes == ["cat", "dog"]
    assert by_folder.counts() == by_name.counts() == by_csv.counts()
    assert totals(by_folder) == {"cat": 500, "dog": 500}
    # The same photos land in the same splits whichever way they were labelled.
    names = [{s: sorted(f.name for f, _ in items) for s, items in ds.splits.items()}
             for ds in (by_folder, by_name, by_csv)]
    assert names[0] == names[1] == names[2]


def test_sample_data_is_two_balanced_classes(sample_data):
    ds = find_dataset(sample_data)
    assert ds.classes == ["discs", "stripes"]
    assert totals(ds) == {"discs": 60, "stripes": 60}

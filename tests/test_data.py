"""train.data: layouts detected, splits made, bad files skipped, bad datasets refused."""
from __future__ import annotations

import csv
import itertools
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from edge.escape import label_problem
from edge.preprocess import PREPROCESSING
from noodle import app
from tests.hostile import (
    HOSTILE,
    clean,
)
from train.data import DataError, decode, find_dataset, read_labelled

_photos = itertools.count(1)


def photo(path: Path, colour=None) -> Path:
    """A small JPEG; each call draws other noise, so no two photos share their bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if colour is None:
        pixels = np.random.default_rng(next(_photos)).integers(0, 256, (30, 40, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(path)
    else:
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
            counts[dataset.labels[y]] += 1
    return dict(counts)


def test_folders_with_train_and_test(tmp_path):
    folders(tmp_path, {"dogs": 10, "cats": 10})
    folders(tmp_path, {"dogs": 3, "cats": 4}, split="test")
    ds = find_dataset(tmp_path)
    assert ds.layout == "folders"
    assert ds.labels == ["cats", "dogs"]  # sorted: the first class is label 0
    assert ds.sources["val"].startswith("carved 20%") and len(ds.splits["val"]) == 4  # 20 % of each class
    assert totals(ds) == {"cats": 10, "dogs": 10}
    assert totals(ds, ("test",)) == {"cats": 4, "dogs": 3}


def test_seed_folder_names_training_set_and_test_set(tmp_path):
    folders(tmp_path, {"cats": 5, "dogs": 5}, split="training_set")
    folders(tmp_path, {"cats": 2, "dogs": 2}, split="test_set")
    folders(tmp_path, {"cats": 2, "dogs": 2}, split="validation")
    ds = find_dataset(tmp_path)
    assert set(ds.sources.values()) == {"given"} and {k: len(v) for k, v in ds.splits.items()} == {
        "train": 10, "test": 4, "val": 4}


def test_single_class_folders_are_split_stratified_and_repeatably(tmp_path):
    """No test split given: 70/15/15 per class, at least one photo in each split."""
    folders(tmp_path, {"a": 20, "b": 10, "c": 5}, split=None)
    first, second = find_dataset(tmp_path), find_dataset(tmp_path)
    assert first.layout == "class-folders"
    assert totals(first, ("val",)) == totals(first, ("test",)) == {"a": 3, "b": 2, "c": 1}
    assert totals(first, ("train",)) == {"a": 14, "b": 6, "c": 3}
    assert first.splits == second.splits


def test_kaggle_flat_names(tmp_path):
    for i in range(6):
        photo(tmp_path / f"cat.{i}.jpg")
        photo(tmp_path / f"dog.{i}.jpg")
    ds = find_dataset(tmp_path)
    assert ds.layout == "kaggle-flat" and ds.labels == ["cat", "dog"]
    assert totals(ds, ("train", "val", "test")) == {"cat": 6, "dog": 6}


def test_csv_with_header_and_split_column(tmp_path):
    rows = [("file", "label", "split")]
    for i in range(5):
        for label in ("x", "y"):
            rows.append((str(photo(tmp_path / "img" / f"{label}{i}.png").relative_to(tmp_path)),
                         label, "test" if i == 0 else "train"))
    with open(tmp_path / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    ds = find_dataset(tmp_path / "labels.csv")
    assert ds.layout == "csv" and ds.labels == ["x", "y"]
    assert totals(ds, ("test",)) == {"x": 1, "y": 1} and totals(ds) == {"x": 4, "y": 4}


def test_csv_without_header(tmp_path):
    lines = [f"{photo(tmp_path / f'{c}{i}.jpg').name},{c}" for c in "pq" for i in range(3)]
    (tmp_path / "l.csv").write_text("\n".join(lines) + "\n")
    assert totals(find_dataset(tmp_path / "l.csv"), ("train", "val", "test")) == {"p": 3, "q": 3}


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda p: p / "missing", "no such file or folder"),
        (lambda p: folders(p, {"cats": 3}), "only one class"),
        (lambda p: (folders(p, {"cats": 3}), (p / "train" / "dogs").mkdir())[0], "no images"),
        (lambda p: (p / "readme.txt").write_text("hi") and p, "unknown layout"),
        (lambda p: (p / "l.csv").write_text("gone.jpg,cat\nalso.jpg,dog\n") and p / "l.csv",
         "all 2 files it lists are missing"),
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
    assert by_folder.labels == by_name.labels == by_csv.labels == ["cat", "dog"]
    assert by_folder.counts() == by_name.counts() == by_csv.counts()
    assert totals(by_folder, ("train", "val", "test")) == {"cat": 500, "dog": 500}
    # The same photos land in the same splits whichever way they were labelled.
    names = [{s: sorted(f.name for f, _ in items) for s, items in ds.splits.items()}
             for ds in (by_folder, by_name, by_csv)]
    assert names[0] == names[1] == names[2]


def test_sample_data_is_two_balanced_classes(sample_data):
    ds = find_dataset(sample_data)
    assert ds.labels == ["discs", "stripes"]
    assert totals(ds) == {"discs": 60, "stripes": 60}


# --------------------------------------------------------------- CSVs as people write them

def write_csv(path: Path, rows, delimiter: str = ",") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        csv.writer(f, delimiter=delimiter).writerows(rows)
    return path


def test_csv_header_image_breed_without_split_skips_missing_files(tmp_path):
    rows = [("image", "breed")]
    for breed in ("beagle", "pug", "corgi"):
        rows += [(f"pics/{breed}_{i}.jpg", breed) for i in range(6)]
        photo_names = [r[0] for r in rows[-6:]]
        for name in photo_names:
            photo(tmp_path / name)
    gone = ["pics/beagle_0.jpg", "pics/pug_3.jpg", "pics/corgi_5.jpg"]
    for name in gone:
        (tmp_path / name).unlink()
    ds = find_dataset(write_csv(tmp_path / "labels.csv", rows))
    assert ds.layout == "csv" and ds.labels == ["beagle", "corgi", "pug"]
    assert totals(ds, ("train", "val", "test")) == {"beagle": 5, "pug": 5, "corgi": 5}
    assert sorted(s["file"] for s in ds.skipped) == sorted(str(tmp_path / g) for g in gone)
    assert {s["reason"] for s in ds.skipped} == {"listed in CSV but missing"}
    assert ds.summary()["missing"] == 3


def test_csv_kaggle_ids_without_extension_found_in_a_sibling_folder(tmp_path):
    """Kaggle's labels.csv `id,label` beside train/<id>.jpg; an id with no photo is skipped."""
    rows = [("id", "label")]
    for i in range(12):
        ident = f"{i:04x}a9f"
        rows.append((ident, "malignant" if i % 2 else "benign"))
        if i != 7:
            photo(tmp_path / "train" / f"{ident}.jpg")
    photo(tmp_path / "test" / "ffffa9f.jpg")  # unlabelled photos elsewhere are not read
    ds = find_dataset(write_csv(tmp_path / "labels.csv", rows))
    files = {f for items in ds.splits.values() for f, _ in items}
    assert len(files) == 11 and all(f.parent == (tmp_path / "train").resolve() for f in files)
    assert ds.labels == ["benign", "malignant"]
    assert [s["file"] for s in ds.skipped] == [str(tmp_path / "0007a9f")]
    # The folder itself is not a layout: the error points at the CSV beside the photos.
    with pytest.raises(DataError, match=r"no '<class>.' prefix.* or pass .*labels.csv as DATA"):
        find_dataset(tmp_path)


def test_csv_paths_written_on_another_machine(tmp_path):
    """Windows paths into class folders, and Label Studio's upload paths to a flat folder."""
    rows = [("filepath", "label")]
    for kind in ("cats", "dogs"):
        for i in range(5):
            photo(tmp_path / "pets" / kind / f"{i}.jpg")  # the same names in both classes
            rows.append((f"C:\\Users\\me\\Desktop\\pets\\{kind}\\{i}.jpg", kind))
    ds = find_dataset(write_csv(tmp_path / "windows.csv", rows))
    assert ds.labels == ["cats", "dogs"] and not ds.skipped
    assert all(f.parent.name == ds.labels[y] for items in ds.splits.values() for f, y in items)
    # A relative path that is missing stays missing, not the other class's photo of that name.
    (tmp_path / "pets" / "cats" / "4.jpg").unlink()
    rows = [("filepath", "label")] + [(f"pets/{k}/{i}.jpg", k) for k in ("cats", "dogs") for i in range(5)]
    ds = find_dataset(write_csv(tmp_path / "relative.csv", rows))
    assert [s["file"] for s in ds.skipped] == [str(tmp_path / "pets" / "cats" / "4.jpg")]
    rows = [("id", "image", "choice", "annotator")]
    for i in range(12):
        name = photo(tmp_path / "upload" / f"3f{i:02d}-pic{i}.jpg").name
        rows.append((str(i), f"/data/upload/1/{name}", "left" if i % 2 else "right", "me@example.com"))
    ds = find_dataset(write_csv(tmp_path / "label-studio.csv", rows))
    assert ds.labels == ["left", "right"] and not ds.skipped
    assert totals(ds, ("train", "val", "test")) == {"left": 6, "right": 6}


def test_csv_from_a_spreadsheet_semicolons_bom_crlf_and_spaced_header(tmp_path):
    lines = ["\ufeffFile Name;Class"] + [f"{photo(tmp_path / f'p {i}.jpg').name};{'ab'[i % 2]}"
                                         for i in range(8)]
    (tmp_path / "l.csv").write_text("\r\n".join(lines) + "\r\n", encoding="utf-8")
    ds = find_dataset(tmp_path / "l.csv")
    assert ds.labels == ["a", "b"] and totals(ds, ("train", "val", "test")) == {"a": 4, "b": 4}


def test_csv_columns_by_name_then_by_option(tmp_path):
    rows = [("notes", "photo", "kind", "fold")]
    for i in range(4):
        for kind in ("a", "b"):
            rows.append(("x", photo(tmp_path / f"{kind}{i}.png").name, kind, "test" if i == 0 else "train"))
    path = write_csv(tmp_path / "l.csv", rows)
    # "photo" is no known name, but its cells name photos; "notes" or "kind" is a guess too far.
    with pytest.raises(DataError, match=r"cannot tell which column holds the labels .*--label-column"):
        find_dataset(path)
    ds = find_dataset(path, label_column="Kind")
    assert ds.labels == ["a", "b"] and totals(ds, ("test",)) == {"a": 1, "b": 1}
    assert ds.options == {"label_column": "Kind"}
    ds = find_dataset(path, file_column="photo", label_column="3")
    assert ds.labels == ["a", "b"] and totals(ds, ("test",)) == {"a": 1, "b": 1}
    # Two columns of photos: only an option can tell.
    rows2 = [(*r[1:], r[1]) for r in rows]
    with pytest.raises(DataError, match=r"cannot tell which column holds the photos .*--file-column"):
        find_dataset(write_csv(tmp_path / "l3.csv", rows2))
    # A fold column of numbers is not a split: say so, and how to ignore it.
    rows = [(r[1], r[2], "3") for r in rows[1:]]
    with pytest.raises(DataError, match=r"l2.csv:2: unknown split '3' .*--split-column none"):
        find_dataset(write_csv(tmp_path / "l2.csv", [("filename", "class", "fold"), *rows]))
    ds = find_dataset(tmp_path / "l2.csv", split_column="none")
    assert ds.sources["test"].startswith("carved")


@pytest.mark.parametrize("header", [("photo", "kind", "subset"), ("Picture", "Animal")])
def test_csv_headers_of_other_names_are_read_by_what_their_cells_hold(tmp_path, header):
    rows = [header]
    for i in range(8):
        for kind in ("kitty", "pup"):
            name = photo(tmp_path / f"{kind}{i}.jpg").name
            rows.append((name, kind, "validation" if i == 0 else "training")[: len(header)])
    ds = find_dataset(write_csv(tmp_path / "export.csv", rows, delimiter=";"))
    assert ds.labels == ["kitty", "pup"] and not ds.skipped
    assert totals(ds, ("train", "val", "test")) == {"kitty": 8, "pup": 8}
    if "subset" in header:  # a split column of other words: "validation" is val
        assert ds.sources["val"] == "given" and totals(ds, ("val",)) == {"kitty": 1, "pup": 1}


def test_csv_one_hot_labels_name_the_class_by_the_column_marked_1(tmp_path):
    """Kaggle's plant-pathology shape: image_id,healthy,rust,scab with one 1 a row (ids without extension)."""
    rows = [("image_id", "healthy", "rust", "scab")]
    for i in range(18):
        hot = ["0", "0", "0"]
        hot[i % 3] = "1.0" if i % 2 else "1"
        rows.append((photo(tmp_path / "images" / f"Train_{i}.jpg").stem, *hot))
    ds = find_dataset(write_csv(tmp_path / "train.csv", rows))
    assert ds.labels == ["healthy", "rust", "scab"] and not ds.skipped
    assert totals(ds, ("train", "val", "test")) == {"healthy": 6, "rust": 6, "scab": 6}
    # Two classes marked, or none: one line naming the row and the fix.
    bad = rows[:-1] + [(rows[-1][0], "1", "0", "1")]
    with pytest.raises(DataError, match=r"b.csv:19: Train_17 is marked 'healthy' and 'scab'; .*exactly one "
                                        r"of the columns healthy, rust, scab"):
        find_dataset(write_csv(tmp_path / "b.csv", bad))
    bad = rows[:-1] + [(rows[-1][0], "0", "0", "0")]
    with pytest.raises(DataError, match=r"c.csv:19: Train_17 is marked no class"):
        find_dataset(write_csv(tmp_path / "c.csv", bad))
    # No header: nothing names the classes, and the fix says where they go.
    with pytest.raises(DataError, match=r"d.csv: columns other than the file's hold only 0 and 1, .*"
                                        r"no header row names the classes; add one, e.g. file,class1,class2,"
                                        r"class3$"):
        find_dataset(write_csv(tmp_path / "d.csv", rows[1:]))


def test_roboflow_export_one_csv_per_split_folder(tmp_path):
    """train/ valid/ test/, each with photos and a `_classes.csv`: `filename, Cat, Dog` (spaces and all)."""
    for split, n in (("train", 10), ("valid", 3), ("test", 4)):
        rows = [("filename", " Cat", " Dog")]
        for i in range(n):
            for hot, kind in (((" 1", " 0"), "cat"), ((" 0", " 1"), "dog")):
                rows.append((photo(tmp_path / split / f"{kind}{i}_jpg.rf.{i:04x}.jpg").name, *hot))
        rows.append(("gone_jpg.rf.0.jpg", " 1", " 0"))  # listed, not there: skipped and reported
        write_csv(tmp_path / split / "_classes.csv", rows)
    ds = find_dataset(tmp_path)
    assert ds.layout == "csv-per-split" and ds.labels == ["Cat", "Dog"]
    assert {s: n for s, n in ds.sources.items()} == {"train": "given", "val": "given", "test": "given"}
    assert totals(ds, ("train",)) == {"Cat": 10, "Dog": 10} and totals(ds, ("test",)) == {"Cat": 4, "Dog": 4}
    assert len(ds.skipped) == 3 and {s["reason"] for s in ds.skipped} == {"listed in CSV but missing"}
    # Scoring a model on the export reads its test split the same way.
    items, skipped, _ = read_labelled(tmp_path, ["Cat", "Dog"])
    assert len(items) == 8 and [s["file"] for s in skipped] == [str(tmp_path / "test" / "gone_jpg.rf.0.jpg")]
    # A CSV that labels nothing beside photos whose names do: the names.
    for kind in ("cat", "dog"):
        for i in range(5):
            photo(tmp_path / "kaggle" / "train" / f"{kind}.{i}.jpg")
    write_csv(tmp_path / "kaggle" / "train" / "notes.csv", [("who", "when"), ("me", "today")])
    # A test folder of two photos a class: the training split's classes vouch for its names.
    for kind in ("cat", "dog"):
        for i in (10, 11):
            photo(tmp_path / "kaggle" / "test" / f"{kind}.{i}.jpg")
    write_csv(tmp_path / "kaggle" / "test" / "notes.csv", [("who", "when"), ("me", "today")])
    ds = find_dataset(tmp_path / "kaggle")
    assert ds.layout == "kaggle-flat" and totals(ds, ("test",)) == {"cat": 2, "dog": 2}
    # One that labels nothing beside photos whose names do not: the CSV's own error.
    (tmp_path / "train" / "_classes.csv").write_text("who,when\nme,today\n")
    with pytest.raises(DataError, match=r"_classes.csv: names none of the photos beside it; write one"):
        find_dataset(tmp_path)


def test_csv_empty_label_names_the_row(tmp_path):
    rows = [("file", "label")] + [(photo(tmp_path / f"{i}.jpg").name, "cat" if i else "") for i in range(4)]
    with pytest.raises(DataError, match=r"l.csv:2: empty label for 0.jpg"):
        find_dataset(write_csv(tmp_path / "l.csv", rows))


def test_csv_same_file_with_two_labels_is_an_error(tmp_path):
    rows = [("filename", "class")] + [(photo(tmp_path / f"{i}.jpg").name, "cat") for i in range(4)]
    rows += [("3.jpg", "dog")]
    with pytest.raises(DataError, match=r"l.csv:6: 3.jpg is labelled 'dog' here and 'cat' on line 5"):
        find_dataset(write_csv(tmp_path / "l.csv", rows))


def test_too_few_photos_in_a_class_names_it_and_the_count(tmp_path):
    rows = [("file", "label")] + [(photo(tmp_path / f"c{i}.jpg").name, "cat") for i in range(5)]
    rows += [(photo(tmp_path / "d0.jpg").name, "dog"), ("d1.jpg", "dog")]
    with pytest.raises(DataError, match=r"1 class\(es\) with too few training photos \('dog' has 1 "
                                        r"\(1 listed but missing\)\); each needs at least 3, one each for "
                                        r"training, validation, test; add photos of it"):
        find_dataset(write_csv(tmp_path / "l.csv", rows))


def breeds_csv(path: Path, counts: dict[str, int]) -> Path:
    """Kaggle's dog-breed layout: labels.csv of id,breed over train/<id>.jpg, no split column."""
    rows = [("id", "breed")]
    for breed, n in counts.items():
        for i in range(n):
            photo(path.parent / "train" / f"{breed}{i}.jpg")
            rows.append((f"{breed}{i}", breed))
    return write_csv(path, rows)


BREEDS = {"beagle": 8, "clumber": 2, "pug": 6, "shetland_sheepdog": 2, "whippet": 1, "boxer": 7}


def test_too_few_photos_names_every_short_class_at_once(tmp_path):
    """Was: one class per run (clumber, then shetland_sheepdog on the next)."""
    with pytest.raises(DataError) as caught:
        find_dataset(breeds_csv(tmp_path / "labels.csv", BREEDS))
    message = str(caught.value)
    assert "\n" not in message and "3 class(es) with too few training photos" in message
    assert "('clumber' has 2, 'shetland_sheepdog' has 2, 'whippet' has 1)" in message
    assert message.endswith("or pass --min-photos 3 to drop every class below 3")


def test_min_photos_drops_the_small_classes_from_every_split_and_says_which(tmp_path):
    data = breeds_csv(tmp_path / "labels.csv", BREEDS)
    ds = find_dataset(data, min_photos=3)
    assert ds.labels == ["beagle", "boxer", "pug"]
    assert ds.dropped == {"clumber": 2, "shetland_sheepdog": 2, "whippet": 1}
    assert ds.summary()["dropped"] == ds.dropped and ds.summary()["options"] == {"min_photos": 3}
    assert totals(ds, ("train", "val", "test")) == {"beagle": 8, "boxer": 7, "pug": 6}
    assert find_dataset(data, min_photos=7).labels == ["beagle", "boxer"]
    with pytest.raises(DataError, match=r"found only one class \(beagle\) of 8 or more training photos "
                                        r"\(--min-photos dropped 5\)"):
        find_dataset(data, min_photos=8)
    with pytest.raises(DataError, match=r"found no class of 9 or more"):
        find_dataset(data, min_photos=9)
    # A given test split loses the dropped classes too; the count is of training photos.
    given = folders(tmp_path / "given", {"cats": 6, "dogs": 6, "eels": 2})
    folders(given, {"cats": 2, "dogs": 2, "eels": 5}, split="test")
    ds = find_dataset(given, min_photos=3)
    assert ds.labels == ["cats", "dogs"] and ds.dropped == {"eels": 2}
    assert totals(ds, ("test",)) == {"cats": 2, "dogs": 2}


def trained_on(dataset):
    """The run manifest of a model trained on `dataset`, as export reads it: labels and data record."""
    from edge.manifest import InputSpec, Preprocessing, RunManifest

    return RunManifest(labels=dataset.labels, input=InputSpec(32, 32), output="softmax",
                       preprocessing=Preprocessing.from_dict(PREPROCESSING), arch="seed", params=0,
                       data=dataset.summary())


def test_min_photos_names_another_run_folder_and_export_finds_the_same_classes(tmp_path):
    from export.convert import evaluation_data
    from train.rundir import RunDir
    from train.splits import write_splits

    data = breeds_csv(tmp_path / "labels.csv", BREEDS)
    result = CliRunner().invoke(app, ["train", str(data), "--runs", str(tmp_path / "runs"),
                                      "--print-run-dir"])
    assert result.exit_code == 2 and result.output.count("\n") == 1
    assert "'clumber' has 2, 'shetland_sheepdog' has 2, 'whippet' has 1" in result.output
    three = run_dir(data, "--runs", tmp_path / "runs", "--min-photos", 3)
    seven = run_dir(data, "--runs", tmp_path / "runs", "--min-photos", 7)
    assert three != seven
    ds = find_dataset(data, min_photos=3)
    run = tmp_path / "run"
    write_splits(RunDir(run).splits, ds)
    recorded = evaluation_data(run, trained_on(ds))  # the photos training found, classes dropped and all
    assert {split: recorded.items(split) for split in ds.splits} == ds.splits
    refused = CliRunner().invoke(app, ["train", str(data), "--min-photos", "-1", "--print-run-dir"])
    assert refused.exit_code == 2 and "--min-photos -1: out of range; give 0 to" in refused.output


def test_min_photos_identity_is_unchanged_when_not_asked_for(tmp_path):
    """Runs trained before --min-photos existed keep their run folder."""
    from train.config import TrainConfig
    from train.runs import identity

    ds = find_dataset(folders(tmp_path / "a", {"x": 5, "y": 5}, split=None))
    plain = identity(ds, TrainConfig(data=tmp_path, out=tmp_path, arch="allconv"))
    assert "min_photos" not in plain["settings"]
    asked = identity(ds, TrainConfig(data=tmp_path, out=tmp_path, arch="allconv", min_photos=2))
    assert asked["settings"]["min_photos"] == 2 and asked["run"] != plain["run"]


@pytest.mark.slow
def test_min_photos_training_records_the_dropped_classes_in_the_manifest(tmp_path):
    """A tiny from-scratch run: the manifest and the summary name what --min-photos left out."""
    data = breeds_csv(tmp_path / "labels.csv", {"ant": 8, "bee": 8, "cat": 2})
    done = subprocess.run(
        [sys.executable, "-m", "noodle", "train", str(data), "--arch", "allconv", "--epochs", "1",
         "--image-size", "32", "--batch-size", "8", "-q", "--min-photos", "3",
         "--out", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["labels"] == ["ant", "bee"] and manifest["data"]["dropped"] == {"cat": 2}
    assert manifest["data"]["options"] == {"min_photos": 3}
    assert manifest["identity"]["settings"]["min_photos"] == 3
    assert "dropped      1 class(es) of fewer than 3 training photos ('cat' 2)" in done.stdout


# ------------------------------------------------------------------------ guessing layouts

def test_numbered_flat_names_are_one_clear_error_not_500_classes(tmp_path):
    jpeg = photo(tmp_path / "Img1.jpg").read_bytes()
    for i in range(2, 501):
        (tmp_path / f"Img{i}.jpg").write_bytes(jpeg)
    with pytest.raises(DataError) as err:
        find_dataset(tmp_path)
    message = str(err.value)
    assert "\n" not in message and "500 of 500 names have no '<class>.' prefix" in message
    assert "class folders" in message and "Kaggle names" in message and "CSV" in message


@pytest.mark.parametrize("names,why", [
    ([f"cat.{i}.jpg" for i in range(30)], "one class"),
    ([f"{i}.scan.jpg" for i in range(40)], "40 of 40 prefixes name fewer than 5 photos"),
    ([f"cat.{i}.jpg" for i in range(9)] + [f"dog.{i}.jpg" for i in range(3)], "'dog.' (3)"),
], ids=["one-prefix", "unique-prefixes", "a-small-class"])
def test_implausible_flat_names_are_refused(tmp_path, names, why):
    for name in names:
        photo(tmp_path / name)
    with pytest.raises(DataError, match="file names do not spell classes") as err:
        find_dataset(tmp_path)
    assert why in str(err.value)


def test_macos_and_hidden_entries_are_ignored(tmp_path):
    folders(tmp_path / "zipped", {"cats": 4, "dogs": 4}, split=None)
    for where in ("zipped/__MACOSX/cats", "zipped/cats", "zipped/dogs/sub"):
        (tmp_path / where).mkdir(parents=True, exist_ok=True)
        (tmp_path / where / "._cat.0.jpg").write_bytes(b"\x00\x05\x16\x07AppleDouble")
    (tmp_path / "zipped" / "cats" / ".hidden").mkdir()
    photo(tmp_path / "zipped" / "cats" / ".hidden" / "cat.x.jpg")
    (tmp_path / "zipped" / ".DS_Store").write_bytes(b"\x00")
    photo(tmp_path / "zipped" / "_unsure" / "20261206-101010-1.jpg")  # `noodle pull --unsure`'s frames
    ds = find_dataset(tmp_path / "zipped")
    assert ds.labels == ["cats", "dogs"]
    files = [f for items in ds.splits.values() for f, _ in items]
    assert len(files) == 8 and not any(part.startswith((".", "__")) for f in files for part in f.parts[-3:])

    flat = tmp_path / "flat"
    for label in ("cat", "dog"):
        for i in range(5):
            photo(flat / f"{label}.{i}.jpg")
    (flat / "._cat.0.jpg").write_bytes(b"\x00\x05\x16\x07")
    (flat / "__MACOSX").mkdir()
    (flat / "__MACOSX" / "._dog.0.jpg").write_bytes(b"\x00")
    ds = find_dataset(flat)
    assert ds.layout == "kaggle-flat" and sum(len(v) for v in ds.splits.values()) == 10


def test_symlinked_class_folders_are_read_alike_by_training_and_the_edge(tmp_path):
    """Was: noodle-edge classify and bench said "folder has no images" where compare --test read them."""
    from edge.files import expand

    real = folders(tmp_path / "elsewhere", {"cats": 3, "dogs": 3}, split=None)
    photo(real / "more" / "dogs.extra.jpg")
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("cats", "dogs"):
        (photos / name).symlink_to(real / name, target_is_directory=True)
    (real / "dogs" / "extra").symlink_to(real / "more")  # a linked folder inside a class folder
    (real / "cats" / "loop").symlink_to(real / "cats")  # a loop: read once
    (real / "cats" / "up").symlink_to(tmp_path)  # a folder above it: not followed
    expected = sorted([str(photos / "cats" / f"cats.{i}.jpg") for i in range(3)]
                      + [str(photos / "dogs" / f"dogs.{i}.jpg") for i in range(3)]
                      + [str(photos / "dogs" / "extra" / "dogs.extra.jpg")])
    files, problems = expand([photos])  # what classify and bench read
    assert problems == [] and sorted(files) == expected
    ds = find_dataset(photos)
    assert ds.labels == ["cats", "dogs"]
    assert sorted(str(f) for items in ds.splits.values() for f, _ in items) == expected
    items, _, _ = read_labelled(photos, ["cats", "dogs"])  # what compare --test reads
    assert sorted(str(f) for f, _ in items) == expected


def test_the_same_photo_in_two_splits_is_a_warning(tmp_path):
    folders(tmp_path, {"cats": 6, "dogs": 6})
    folders(tmp_path, {"cats": 2, "dogs": 2}, split="test")
    for name in ("cats/cats.0.jpg", "dogs/dogs.1.jpg"):
        (tmp_path / "test" / name).write_bytes((tmp_path / "train" / name).read_bytes())
    # Same size, other bytes: not a copy.
    other = (tmp_path / "train" / "cats" / "cats.2.jpg").read_bytes()
    (tmp_path / "test" / "cats" / "cats.1.jpg").write_bytes(other[:-3] + b"\x00\x00\x00")
    ds = find_dataset(tmp_path)
    shared = [w for w in ds.warnings if "more than one split" in w]
    assert len(shared) == 1
    assert "2 photo(s) are in more than one split" in shared[0]
    assert "test/cats/cats.0.jpg" in shared[0] and "train/cats/cats.0.jpg" in shared[0]
    assert ds.summary()["warnings"] == ds.warnings
    clean = find_dataset(folders(tmp_path / "clean", {"a": 5, "b": 5}))
    assert not [w for w in clean.warnings if "more than one split" in w]


def test_the_same_photo_under_two_labels_is_an_error_naming_the_pairs(tmp_path):
    """Was: the same frame in cat/ and dog/ was counted as a leak between splits, or not at all."""
    data = folders(tmp_path / "photos", {"cat": 6, "dog": 6})
    folders(data, {"cat": 2, "dog": 2}, split="test")
    train = data / "train"
    (train / "dog" / "frame.jpg").write_bytes((train / "cat" / "cat.0.jpg").read_bytes())
    (data / "test" / "dog" / "again.jpg").write_bytes((train / "cat" / "cat.1.jpg").read_bytes())
    with pytest.raises(DataError) as caught:
        find_dataset(data)
    message = str(caught.value)
    assert "\n" not in message and "2 photo(s) have the same bytes under two labels" in message
    assert "train/cat/cat.0.jpg ('cat') = train/dog/frame.jpg ('dog')" in message
    assert "test/dog/again.jpg ('dog') = train/cat/cat.1.jpg ('cat')" in message
    assert "more than one split" not in message
    result = CliRunner().invoke(app, ["train", str(data), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and result.output.count("\n") == 1
    # A CSV that gives two names of the same bytes two labels is the same error.
    rows = [("file", "label")]
    rows += [(photo(tmp_path / "c" / f"{c}{i}.jpg").name, c) for c in "xy" for i in range(4)]
    (tmp_path / "c" / "copy.jpg").write_bytes((tmp_path / "c" / "x0.jpg").read_bytes())
    with pytest.raises(DataError, match=r"copy.jpg \('y'\) = x0.jpg \('x'\)"):
        find_dataset(write_csv(tmp_path / "c" / "l.csv", rows + [("copy.jpg", "y")]))


def test_too_few_test_photos_is_one_warning_with_the_counts_and_what_helps(tmp_path):
    ds = find_dataset(folders(tmp_path / "few", {"cats": 20, "dogs": 20}, split=None))
    few = [w for w in ds.warnings if "trustworthy" in w]
    assert len(few) == 1
    assert "the test split has 3 photo(s) per class ('cats' 3, 'dogs' 3;" in few[0]
    assert "more test photos per class (make export TEST=folder), or fewer classes (--min-photos N, make " \
           "MIN_PHOTOS=N" in few[0]
    # No architecture advice: the run may use the recommended one already, and no model makes 3 photos enough.
    assert "--arch" not in few[0]
    many = find_dataset(folders(tmp_path / "many", {f"c{i:02d}": 4 + i for i in range(12)}, split=None))
    few = [w for w in many.warnings if "trustworthy" in w]
    assert len(few) == 1 and "has 1 to 2 photo(s) per class (median 2; 'c00' 1," in few[0]
    assert "'c07' 2, ... and 4 more; all in manifest.json" in few[0]
    enough = folders(tmp_path / "enough", {"cats": 12, "dogs": 12})
    folders(enough, {"cats": 10, "dogs": 11}, split="test")
    assert not [w for w in find_dataset(enough).warnings if "trustworthy" in w]


def test_carved_test_split_is_disjoint_stratified_and_keeps_training_photos(tmp_path):
    counts = {"ant": 40, "bee": 20, "cat": 7, "dog": 3, "eel": 13}
    folders(tmp_path, counts, split=None)
    ds = find_dataset(tmp_path)
    parts = {s: {f for f, _ in items} for s, items in ds.splits.items()}
    assert not parts["train"] & parts["val"] and not parts["train"] & parts["test"]
    assert not parts["val"] & parts["test"]
    assert totals(ds, ("train", "val", "test")) == counts
    for name, n in counts.items():
        held = max(1, round(n * 0.15))
        assert totals(ds, ("val",))[name] == totals(ds, ("test",))[name] == held
        assert totals(ds, ("train",))[name] == n - 2 * held >= 1
    carved = "carved 15% of each class from train by burst (seed 20240613)"
    assert ds.sources == {"train": "given", "val": carved, "test": carved}
    # A given validation split: only test is carved.
    folders(tmp_path / "v", {"ant": 10, "bee": 10})
    folders(tmp_path / "v", {"ant": 2, "bee": 2}, split="val")
    ds = find_dataset(tmp_path / "v")
    assert ds.sources["val"] == "given" and ds.sources["test"].startswith("carved 15%")
    assert totals(ds, ("test",)) == {"ant": 2, "bee": 2} and len(ds.splits["val"]) == 4


# ------------------------------------------------------------- photos a model never saw

def test_read_labelled_maps_classes_to_the_model_labels(tmp_path):
    labels = ["ant", "bee", "cat"]
    folders(tmp_path / "held", {"cat": 2, "ant": 1}, split=None)
    items, skipped, _ = read_labelled(tmp_path / "held", labels)
    assert sorted((f.name, y) for f, y in items) == [("ant.0.jpg", 0), ("cat.0.jpg", 2), ("cat.1.jpg", 2)]
    assert skipped == []
    # A data set with splits: its test split only.
    folders(tmp_path / "split", {"bee": 3, "cat": 3})
    folders(tmp_path / "split", {"bee": 1}, split="test")
    items, _, _ = read_labelled(tmp_path / "split", labels)
    assert [(f.parent.parent.name, y) for f, y in items] == [("test", 1)]
    # Kaggle flat names, even with fewer than five per class; a CSV with a missing file.
    for name in ("bee.1.jpg", "ant.9.jpg"):
        photo(tmp_path / "flat" / name)
    assert sorted(y for _, y in read_labelled(tmp_path / "flat", labels)[0]) == [0, 1]
    csv_path = write_csv(tmp_path / "c" / "t.csv",
                         [("image", "category"), ("x.jpg", "cat"), ("y.jpg", "bee")])
    photo(tmp_path / "c" / "x.jpg")
    items, skipped, _ = read_labelled(csv_path, labels)
    assert [y for _, y in items] == [2] and skipped[0]["file"] == str(tmp_path / "c" / "y.jpg")


def test_read_labelled_refuses_classes_the_model_lacks(tmp_path):
    folders(tmp_path, {"cats": 2, "wolves": 2}, split=None)
    with pytest.raises(DataError) as err:
        read_labelled(tmp_path, ["cats", "dogs"])
    message = str(err.value)
    assert "\n" not in message and "classes 'wolves' are not the model's ('cats', 'dogs')" in message
    assert "--test-map wolves=LABEL" in message


def test_read_labelled_matches_plural_and_case_one_to_one_and_says_how(tmp_path):
    folders(tmp_path / "plural", {"cats": 2, "Dogs": 2}, split=None)
    items, _, mapping = read_labelled(tmp_path / "plural", ["cat", "dog"])
    assert mapping == {"cats": "cat", "Dogs": "dog"} and sorted(y for _, y in items) == [0, 0, 1, 1]
    # Two classes that could both be 'cat' are no match: the user says which, with --test-map.
    folders(tmp_path / "both", {"cat": 2, "cats": 2}, split=None)
    with pytest.raises(DataError, match="--test-map cats=LABEL"):
        read_labelled(tmp_path / "both", ["cat", "dog"])
    items, _, mapping = read_labelled(tmp_path / "both", ["cat", "dog"], {"cats": "dog"})
    assert mapping == {"cats": "dog"}
    folders(tmp_path / "wolf", {"wolves": 2, "dogs": 2}, split=None)
    items, _, mapping = read_labelled(tmp_path / "wolf", ["cat", "dog"], {"wolves": "cat"})
    assert mapping == {"wolves": "cat", "dogs": "dog"}
    for bad, words in (({"foxes": "cat"}, "'foxes' that are not in it"),
                       ({"wolves": "fox"}, "'fox', not labels"),
                       ({"wolves": "dog"}, "--test-map dogs=LABEL"),  # dogs no longer the one for dog
                       ({"wolves": "dog", "dogs": "dog"}, "reads two classes as 'dog'")):
        with pytest.raises(DataError, match=words):
            read_labelled(tmp_path / "wolf", ["cat", "dog"], bad)


# ----------------------------------------------------------------------- run identity

def run_dir(*args) -> str:
    result = CliRunner().invoke(app, ["train", *map(str, args), "--print-run-dir"])
    assert result.exit_code == 0, result.output
    return result.stdout.strip()


def test_run_folder_is_named_by_data_and_settings(tmp_path):
    first = folders(tmp_path / "a" / "photos", {"cats": 5, "dogs": 5}, split=None)
    second = folders(tmp_path / "b" / "photos", {"cats": 5, "dogs": 5}, split=None)
    name = run_dir(first, "--runs", tmp_path / "runs")
    from train.config import ARCHITECTURES, DEFAULT_ARCH

    assert Path(name).parent == tmp_path / "runs" and Path(name).name.startswith(f"photos-{DEFAULT_ARCH}-")
    assert run_dir(first, "--runs", tmp_path / "runs") == name
    default = ARCHITECTURES[DEFAULT_ARCH]
    own = ("--epochs", default.epochs, "--image-size", default.image_size)  # the default's own settings
    assert run_dir(first, "--runs", tmp_path / "runs", *own) == name
    # The default's head is solved, with no epochs or seed: those name the same model (test_train.py).
    assert run_dir(first, "--runs", tmp_path / "runs", "--epochs", default.epochs + 1, "--seed", 1) == name
    seed = ("--runs", tmp_path / "runs", "--arch", "seed")
    others = [run_dir(second, "--runs", tmp_path / "runs"),
              run_dir(first, *seed),
              run_dir(first, *seed, "--epochs", 26),
              run_dir(first, *seed, "--seed", 1),
              run_dir(first, "--runs", tmp_path / "runs", "--fine-tune", 1),
              run_dir(first, "--runs", tmp_path / "runs", "--image-size", 64)]
    assert len({name, *others}) == 7
    edited = first / "cats" / "cats.0.jpg"
    before = edited.stat().st_mtime
    photo(edited)  # same name, new pixels, maybe the same size: the fingerprint sees the mtime
    os.utime(edited, (before + 2, before + 2))  # whole seconds, as the fingerprint keeps them
    assert run_dir(first, "--runs", tmp_path / "runs") != name


def test_a_run_folder_of_other_data_is_refused_unless_forced(tmp_path):
    from train.config import TrainConfig
    from train.runs import RunMismatch, check_run_dir, identity, record_start

    cfg = TrainConfig(data=tmp_path, out=tmp_path / "run")
    mine = identity(find_dataset(folders(tmp_path / "a", {"x": 5, "y": 5}, split=None)), cfg)
    other = identity(find_dataset(folders(tmp_path / "b", {"x": 5, "y": 5}, split=None)), cfg)
    out = tmp_path / "run"
    assert check_run_dir(out, mine) == "empty"
    record_start(out, mine)  # an interrupted run of this data resumes
    assert check_run_dir(out, mine) == "resume"
    with pytest.raises(RunMismatch, match=r"interrupted run trained on other data .*--force"):
        check_run_dir(out, other)
    (out / "manifest.json").write_text(json.dumps({"identity": other}))
    with pytest.raises(RunMismatch, match=r"holds a model trained on other data .*pass another --out"):
        check_run_dir(out, mine)
    assert check_run_dir(out, other) == "complete"
    assert check_run_dir(out, mine, force=True) == "empty" and not (out / "manifest.json").exists()
    (out / ".backup").mkdir()  # resume state from before identities were recorded
    with pytest.raises(RunMismatch, match="interrupted run with no record of its data"):
        check_run_dir(out, mine)


@pytest.mark.slow
def test_two_data_sets_in_folders_of_the_same_name_train_two_models(tmp_path):
    """Two labels.csv, one after the other: two run folders; again: reused; crossed: refused."""
    a = tmp_path / "a" / "labels.csv"
    rows = [("image", "breed")]
    for breed in ("pug", "corgi"):
        for i in range(8):
            photo(a.parent / "img" / f"{breed}{i}.jpg")
            rows.append((f"img/{breed}{i}.jpg", breed))
    write_csv(a, rows + [("img/gone1.jpg", "pug"), ("img/gone2.jpg", "corgi")])
    b = tmp_path / "b" / "labels.csv"
    rows = [("id", "label")]
    for i in range(24):
        rows.append((f"{i:05d}", ("ant", "bee", "cat")[i % 3]))
        photo(b.parent / "train" / f"{i:05d}.png")
    write_csv(b, rows)

    def train(data, *extra):
        return subprocess.run(
            [sys.executable, "-m", "noodle", "train", str(data), "--runs", str(tmp_path / "runs"),
             "--epochs", "1", "--image-size", "32", "--batch-size", "8", "-q", *map(str, extra)],
            capture_output=True, text=True, timeout=600, cwd=tmp_path)

    first = train(a)
    assert first.returncode == 0, first.stderr[-3000:]
    second = train(b)
    assert second.returncode == 0, second.stderr[-3000:]
    runs = sorted((tmp_path / "runs").iterdir())
    from train.config import DEFAULT_ARCH

    assert len(runs) == 2 and all(r.name.startswith(f"labels-{DEFAULT_ARCH}-") for r in runs)
    by_labels = {tuple(json.loads((r / "manifest.json").read_text())["labels"]): r for r in runs}
    assert set(by_labels) == {("corgi", "pug"), ("ant", "bee", "cat")}
    run_a = by_labels[("corgi", "pug")]
    csv_run = json.loads((run_a / "manifest.json").read_text())
    assert sorted(s["file"] for s in csv_run["skipped"]) == [str(a.parent / "img" / f"gone{i}.jpg")
                                                            for i in (1, 2)]
    assert "skipped      2 listed in the CSV but missing" in first.stdout
    assert csv_run["data"]["fingerprint"] == csv_run["identity"]["data_fingerprint"]
    assert csv_run["data"]["splits"]["test"].startswith("carved 15%")
    assert csv_run["metrics"]["test"]["count"] == 2  # 15 % of 8 per class

    before = (run_a / "model.keras").stat().st_mtime_ns
    again = train(a, "--reuse")
    assert again.returncode == 0 and f"reusing {run_a}:" in again.stdout
    assert (run_a / "model.keras").stat().st_mtime_ns == before
    crossed = train(b, "--out", run_a)
    assert crossed.returncode == 2 and crossed.stderr.count("\n") == 1
    assert "trained on other data" in crossed.stderr and "--force" in crossed.stderr


def test_export_reads_the_splits_training_wrote_and_refuses_photos_changed_since(tmp_path, caplog):
    from export.convert import evaluation_data
    from train.rundir import RunDir
    from train.splits import unchanged, write_splits

    data = folders(tmp_path / "photos", {"cats": 10, "dogs": 10}, split=None)
    trained = find_dataset(data)
    run = tmp_path / "run"
    write_splits(RunDir(run).splits, trained)
    manifest = trained_on(trained)
    photo(data / "cats" / "cats.new.jpg")  # found again, the carve of cats would be another draw
    recorded = evaluation_data(run, manifest)
    assert {split: recorded.items(split) for split in trained.splits} == trained.splits
    assert unchanged(recorded, "test") == trained.splits["test"]
    changed = trained.splits["test"][0][0]
    changed.write_bytes(changed.read_bytes() + b"\0")
    n = len(trained.splits["test"])
    with pytest.raises(DataError, match=rf"changed since training \(1 of the test split.s {n}, such") as err:
        unchanged(recorded, "test")
    assert str(err.value).count("\n") == 0
    given = unchanged(evaluation_data(run, manifest, data=data), "test")  # --data: the user's choice
    assert given == trained.splits["test"][1:] and f"left out 1 of the test split's {n}" in caplog.text


def test_a_malformed_test_map_is_one_line_before_any_work(tmp_path):
    from typer.testing import CliRunner

    from noodle import app

    result = CliRunner().invoke(app, ["compare", str(tmp_path), "--test", str(tmp_path),
                                      "--test-map", "cats"])
    assert result.exit_code == 2 and "cats: give CLASS=LABEL pairs" in result.output


def test_training_refuses_hostile_class_folders_naming_the_folder(tmp_path):
    from train.data import DataError, find_dataset

    for i, label in enumerate(HOSTILE):
        if "/" in label or "\0" in label or len(label.encode()) > 255:
            continue  # no folder can have that name
        root = tmp_path / f"d{i}"
        for k, name in enumerate((label, "other")):
            (root / name).mkdir(parents=True)
            for j in range(4):  # other pixels per class: the same bytes under two labels is an error
                Image.new("RGB", (8, 8), (j * 60, k * 100, 0)).save(root / name / f"{j}.png")
        if label_problem(label) is None:
            assert label in find_dataset(root).labels
            continue
        with pytest.raises(DataError) as caught:
            find_dataset(root)
        message = str(caught.value)
        assert clean(message) and "\n" not in message, repr(message)
        assert message.startswith(str(root)) and "class name" in message


def test_training_refuses_hostile_csv_labels_naming_the_line(tmp_path):
    from train.data import DataError, find_dataset

    for j in range(3):
        Image.new("RGB", (8, 8), (0, j * 80, 0)).save(tmp_path / f"{j}.png")
    for label in HOSTILE:
        path = tmp_path / "labels.csv"
        with open(path, "w", newline="") as f:
            csv.writer(f).writerows([["file", "label"], ["0.png", "other"], ["1.png", "other"],
                                     ["2.png", label]])
        if label_problem(label.strip()) is None:  # cells are stripped ("\tx" is x)
            continue  # accepted by the rule; too few photos to split, which is not the point here
        with pytest.raises(DataError) as caught:
            find_dataset(path)
        message = str(caught.value)
        assert clean(message) and "\n" not in message, repr(message)
        assert message.startswith(f"{path}:4: class name"), message

"""Enrolment on the device against the full pipeline, on the same photos (docs/teach.md's figures).

    python -m bench.teach DATA SCRATCH [--per-class 5,10,20,50] [--third FOLDER]

DATA: a folder with train/<class>/ and test/<class>/ (cats-vs-dogs). For each
count k, the first k photos of a seeded shuffle of each class's training
photos (nested: the 5 are among the 10) are given both to `noodle train` +
`noodle export --variants int8` (a test/ beside them, so all k are trained
on) and, as captures, to `noodle-edge teach --replace` on that export's
embed.tflite. Both models score DATA/test under ai-edge-litert (this Python)
and tflite-runtime 2.14 (.venv-edge). --third FOLDER: a class folder taught
onto the last export, keeping its classes, and the first two classes scored
again. Every training runs under nice. Prints a JSON report and Markdown rows.
"""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

EDGE_PYTHON = os.environ.get("NOODLE_EDGE_PYTHON", ".venv-edge/bin/python")
BIN = Path(sys.executable).parent


def run(cmd: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(["nice", *cmd], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.strip()[-800:]}")
    return time.perf_counter() - start, done.stdout + done.stderr


def subset(data: Path, scratch: Path, k: int) -> tuple[Path, Path]:
    """SCRATCH/data-k (train/ of k a class, test/ linked) and SCRATCH/captures-k (the same k)."""
    root, captures = scratch / f"data-{k}", scratch / f"captures-{k}"
    for cls in sorted(p.name for p in (data / "train").iterdir() if p.is_dir()):
        files = sorted((data / "train" / cls).iterdir())
        random.Random(0).shuffle(files)
        for folder in (root / "train" / cls, captures / cls):
            folder.mkdir(parents=True, exist_ok=True)
            for f in files[:k]:
                if not (folder / f.name).exists():
                    os.symlink(f.resolve(), folder / f.name)
    if not (root / "test").exists():
        os.symlink((data / "test").resolve(), root / "test")
    return root, captures


def accuracy(python: str, model: Path, test: Path, classes: list[str] | None = None) -> float:
    """Share of DATA/test photos whose top label is their folder's."""
    _, out = run([python, "-m", "edge", "classify", str(model), str(test), "--json"])
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    rows = [r for r in rows if classes is None or Path(r["file"]).parent.name in classes]
    return sum(r["label"] == Path(r["file"]).parent.name for r in rows) / len(rows)


def main(argv: list[str]) -> None:
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("data", type=Path)
    parser.add_argument("scratch", type=Path)
    parser.add_argument("--per-class", default="5,10,20,50")
    parser.add_argument("--third", type=Path)
    args = parser.parse_args(argv)
    test = args.data / "test"
    rows, last = [], None
    for k in map(int, args.per_class.split(",")):
        root, captures = subset(args.data, args.scratch, k)
        run_dir = args.scratch / f"run-{k}"
        train_s, _ = run([str(BIN / "noodle"), "train", str(root), "--out", str(run_dir)])
        export_s, _ = run([str(BIN / "noodle"), "export", str(run_dir), "--variants", "int8"])
        export = run_dir / "export"
        row = {"per_class": k, "train_seconds": round(train_s, 1), "export_seconds": round(export_s, 1)}
        for name, python in (("ai-edge-litert", sys.executable), ("tflite-runtime", EDGE_PYTHON)):
            taught = args.scratch / f"taught-{k}-{name}"
            teach_s, said = run([python, "-m", "edge", "teach", str(captures), "--model", str(export),
                                 "--out", str(taught), "--replace"])
            manifest = json.loads((taught / "manifest.json").read_text())
            row[name] = {"export_int8": accuracy(python, export / "int8.tflite", test),
                         "taught": accuracy(python, taught, test),
                         "teach_seconds": round(teach_s, 2), "teach_line": said.strip().splitlines()[-1],
                         "solve": manifest["solve"]}
        print(json.dumps(row), flush=True)
        rows.append(row)
        last = export
    if args.third is not None and last is not None:
        captures = args.scratch / "captures-third"
        captures.mkdir(parents=True, exist_ok=True)
        link = captures / args.third.name
        if not link.exists():
            os.symlink(args.third.resolve(), link)
        classes = sorted(p.name for p in test.iterdir() if p.is_dir())
        third = {"class": args.third.name, "photos": len(list(args.third.iterdir()))}
        for name, python in (("ai-edge-litert", sys.executable), ("tflite-runtime", EDGE_PYTHON)):
            taught = args.scratch / f"taught-third-{name}"
            teach_s, said = run([python, "-m", "edge", "teach", str(captures), "--model", str(last),
                                 "--out", str(taught)])
            third[name] = {"shipped_int8": accuracy(python, last / "int8.tflite", test),
                           "three_classes": accuracy(python, taught, test, classes),
                           "labels": json.loads((taught / "manifest.json").read_text())["labels"],
                           "teach_seconds": round(teach_s, 2)}
        print(json.dumps({"third": third}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])

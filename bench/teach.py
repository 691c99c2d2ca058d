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
again. Every training runs under nice. Prints a JSON report; `make bench`'s
teach section (bench.cli) runs `enrolment` and renders it (bench.report).
"""
from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

EDGE_PYTHON = os.environ.get("NOODLE_EDGE_PYTHON", ".venv-edge/bin/python")
BIN = Path(sys.executable).parent
PER_CLASS = (5, 10, 20, 50)
# teach's last line: "... N capture(s) embedded in M invoke(s); S s in all"
TAUGHT = re.compile(r"(\d+) capture\(s\) embedded in (\d+) invoke\(s\); ([\d.]+) s in all")


class Failed(RuntimeError):
    """A step failed: its command and the end of what it said."""


def run(cmd: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(["nice", *cmd], capture_output=True, text=True)
    if done.returncode:
        raise Failed(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.strip()[-800:]}")
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


def enrolment(data: Path, scratch: Path, per_class=PER_CLASS, third: Path | None = None,
              say=print) -> dict:
    """For each k of `per_class`: make export against teach on the same k photos a class; a third class."""
    test = data / "test"
    rows, last = [], None
    for k in per_class:
        root, captures = subset(data, scratch, k)
        run_dir = scratch / f"run-{k}"
        train_s, _ = run([str(BIN / "noodle"), "train", str(root), "--out", str(run_dir)])
        export_s, _ = run([str(BIN / "noodle"), "export", str(run_dir), "--variants", "int8"])
        export = run_dir / "export"
        row = {"per_class": k, "train_seconds": round(train_s, 1), "export_seconds": round(export_s, 1)}
        for name, python in (("ai-edge-litert", sys.executable), ("tflite-runtime", EDGE_PYTHON)):
            taught = scratch / f"taught-{k}-{name}"
            wall, said = run([python, "-m", "edge", "teach", str(captures), "--model", str(export),
                              "--out", str(taught), "--replace"])
            row[name] = {"export_int8": accuracy(python, export / "int8.tflite", test),
                         "taught": accuracy(python, taught, test), **_taught(said, wall),
                         "solve": json.loads((taught / "manifest.json").read_text())["solve"]}
        say(json.dumps(row))
        rows.append(row)
        last = export
    out = {"data": str(data), "test_photos": sum(1 for p in test.rglob("*") if p.is_file()), "rows": rows}
    if third is not None and last is not None:
        out["third"] = third_class(data, scratch, third, last)
        say(json.dumps({"third": out["third"]}))
    return out


def _taught(said: str, wall: float) -> dict:
    """teach's own figures from its last line: captures embedded, invokes, seconds; and the wall time."""
    got = TAUGHT.search(said)
    return {"teach_seconds": float(got[3]) if got else None, "wall_seconds": round(wall, 2),
            "captures_embedded": int(got[1]) if got else None, "invokes": int(got[2]) if got else None,
            "teach_line": said.strip().splitlines()[-1]}


def third_class(data: Path, scratch: Path, third: Path, export: Path) -> dict:
    """`third` (a class folder) taught onto `export`, its classes kept; the first classes scored again."""
    test = data / "test"
    captures = scratch / "captures-third"
    captures.mkdir(parents=True, exist_ok=True)
    link = captures / third.name
    if not link.exists():
        os.symlink(third.resolve(), link)
    classes = sorted(p.name for p in test.iterdir() if p.is_dir())
    out = {"class": third.name, "photos": len(list(third.iterdir())), "shipped": str(export.parent.name)}
    for name, python in (("ai-edge-litert", sys.executable), ("tflite-runtime", EDGE_PYTHON)):
        taught = scratch / f"taught-third-{name}"
        wall, said = run([python, "-m", "edge", "teach", str(captures), "--model", str(export),
                          "--out", str(taught)])
        out[name] = {"shipped_int8": accuracy(python, export / "int8.tflite", test),
                     "three_classes": accuracy(python, taught, test, classes),
                     "labels": json.loads((taught / "manifest.json").read_text())["labels"],
                     **_taught(said, wall)}
    return out


def main(argv: list[str]) -> None:
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("data", type=Path)
    parser.add_argument("scratch", type=Path)
    parser.add_argument("--per-class", default=",".join(map(str, PER_CLASS)))
    parser.add_argument("--third", type=Path)
    args = parser.parse_args(argv)
    try:
        enrolment(args.data, args.scratch, [int(k) for k in args.per_class.split(",")], args.third,
                  say=lambda line: print(line, flush=True))
    except Failed as exc:
        raise SystemExit(str(exc)) from None


if __name__ == "__main__":
    main(sys.argv[1:])

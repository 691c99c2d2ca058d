"""The gate: what `--max-drop PP` means, and whether an export may ship. Written once, here.

`--max-drop PP` asks a non-inferiority question of each variant against float32,
paired on the same photos: is its accuracy at most PP points below float32's?
The point delta alone cannot say so on a few photos (on 110 photos one photo
is 0.9 pp, and the 95 % interval is about 8 pp wide), so the interval decides
(export.stats.paired_comparison's Newcombe interval):

- passed: the whole 95 % CI lies at or above -PP: the loss is at most PP points;
- failed: the whole 95 % CI lies below -PP: it loses more than PP points;
- undecided: the CI straddles -PP: too few photos to tell; more photos (--test)
  narrow it.

A failing variant is also detectably worse than float32 (its CI excludes 0),
so the verdict and the gate never contradict each other.

The export's outcome combines validation's checks (every file loads and runs,
float32 matches Keras) with the gate when one was asked for. It is recorded
in manifest.json's `validation` (`passed`, `checks_passed`, `gate`), and read
back only through `export_outcome`: by `noodle compare`, `noodle bundle`
(which ships only a passed export, or with --force one that failed or left
undecided the gate), `make bundle` (`python -m export.gate RUN`) and pi-check.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

REFERENCE = "float32"
# A hair of slack: a bound of -0.25 computed as 100 * -1 / 400 must not fail --max-drop 0.25.
SLACK = 1e-9


class Outcome(str, Enum):
    passed = "passed"
    failed = "failed"  # the gate, or validation's checks
    undecided = "undecided"  # the gate's CI straddles -max_drop: too few photos
    unfinished = "unfinished"  # no export, or its validation never finished


# The exit status of `noodle export` and `python -m export.gate` for each outcome. 1 is also what an
# export with a variant that failed to convert exits with: both say "do not ship this".
EXIT = {Outcome.passed: 0, Outcome.failed: 1, Outcome.undecided: 3, Outcome.unfinished: 4}


def rule(max_drop: float) -> str:
    """The gate in one line, the same in the terminal and report.md."""
    m = f"{max_drop:g}"
    return (f"--max-drop {m}: a variant passes when the 95 % CI of its accuracy minus float32's stays at or "
            f"above -{m} pp, fails when the whole CI lies below -{m} pp, and is undecided (too few photos: "
            "add more with --test) when the CI straddles it")


@dataclass
class Decision:
    variant: str
    outcome: Outcome
    line: str


@dataclass
class GateResult:
    max_drop: float
    count: int  # photos
    decisions: list[Decision] = field(default_factory=list)

    @property
    def outcome(self) -> Outcome:
        found = {d.outcome for d in self.decisions}
        return (Outcome.failed if Outcome.failed in found else
                Outcome.undecided if Outcome.undecided in found else Outcome.passed)

    def summary(self) -> str:
        return f"gate {self.outcome.value} on {self.count} photos; {rule(self.max_drop)}"

    def to_dict(self) -> dict:
        return {"max_drop": self.max_drop, "outcome": self.outcome.value, "count": self.count,
                "rule": rule(self.max_drop),
                "variants": {d.variant: {"outcome": d.outcome.value, "line": d.line} for d in self.decisions}}


def decide(variant: str, figure: dict, max_drop: float) -> Decision:
    """One variant's outcome from its paired figures (delta_pp, delta_ci95, discordant)."""
    lo, hi = figure["delta_ci95"]
    d = figure["discordant"]
    detail = (f"delta {figure['delta_pp']:+.2f} pp, 95 % CI {lo:+.2f}..{hi:+.2f} pp; {d['float_only']} "
              f"photo(s) only {REFERENCE} got right, {d['variant_only']} only {variant}")
    if lo >= -max_drop - SLACK:
        return Decision(variant, Outcome.passed,
                        f"{variant} passed: loses at most {max_drop:g} pp ({detail})")
    if hi < -max_drop - SLACK:
        return Decision(variant, Outcome.failed,
                        f"{variant} failed: loses more than {max_drop:g} pp against {REFERENCE} ({detail})")
    return Decision(variant, Outcome.undecided,
                    f"{variant} undecided: too few photos to tell a loss of {max_drop:g} pp from none "
                    f"({detail})")


def gate(figures: dict[str, dict], max_drop: float, count: int) -> GateResult:
    """Every variant but float32 decided against `max_drop`."""
    return GateResult(max_drop, count, [decide(v, f, max_drop) for v, f in figures.items()
                                        if v != REFERENCE and "delta_ci95" in f])


# ---------------------------------------------------------------- the record, and its one reader

def validation_record(checks_passed: bool, max_drop: float | None) -> dict:
    """manifest.json's `validation` fields on the outcome, when validation has just finished.

    With a gate asked for, `passed` stays false until `record_gate` writes its outcome: an export
    killed while scoring for the gate never reads as passed.
    """
    gate_ = None if max_drop is None else {"max_drop": max_drop, "outcome": None}
    return {"passed": checks_passed and gate_ is None, "checks_passed": checks_passed, "gate": gate_}


def record_gate(run_dir, result: GateResult) -> None:
    """The gate's outcome into RUN/export/manifest.json, atomically; `passed` follows it."""
    from edge.atomic import write_json
    from edge.manifest import MANIFEST_NAME, load_export
    from train.rundir import RunDir

    out = RunDir(run_dir).export
    manifest = load_export(out)
    validation = dict(manifest.validation or {})
    validation["gate"] = result.to_dict()
    validation["passed"] = bool(validation.get("checks_passed")) and result.outcome is Outcome.passed
    manifest.validation = validation
    write_json(out / MANIFEST_NAME, manifest.to_dict())


@dataclass
class ExportOutcome:
    outcome: Outcome
    line: str  # one line a user can act on
    checks_passed: bool  # validation's own checks: every file loads, runs and matches Keras

    @property
    def forcible(self) -> bool:
        """Shippable with --force: the files were checked, and only the gate said no."""
        return self.checks_passed and self.outcome in (Outcome.failed, Outcome.undecided)


def export_outcome(validation: dict | None) -> ExportOutcome:
    """What manifest.json's `validation` says of an export: the ONE reading of "passed"."""
    if validation is None:
        return ExportOutcome(Outcome.unfinished, "its validation never finished", False)
    # Manifests written before the gate was recorded have `passed` alone: that was the checks'.
    checks = bool(validation.get("checks_passed", validation.get("passed")))
    gate_ = validation.get("gate")
    if not checks:
        return ExportOutcome(Outcome.failed, "its validation failed (a file did not load or run, or float32 "
                                             "differs from Keras)", False)
    if gate_ is None:
        return ExportOutcome(Outcome.passed, "its validation passed (no --max-drop gate was asked for)", True)
    outcome = gate_.get("outcome")
    if outcome is None:
        return ExportOutcome(Outcome.unfinished, f"its --max-drop {gate_.get('max_drop')} gate never "
                                                 "finished", True)
    try:
        found = Outcome(outcome)
    except ValueError:
        return ExportOutcome(Outcome.failed, f"its gate records an unknown outcome {outcome!r}", False)
    if found is Outcome.passed and not validation.get("passed"):  # a hand-edited record: trust neither
        return ExportOutcome(Outcome.failed, "its manifest contradicts itself (gate passed, passed false)",
                             False)
    words = {Outcome.passed: "passed", Outcome.failed: "failed",
             Outcome.undecided: "was undecided (too few photos)"}[found]
    return ExportOutcome(found, f"its --max-drop {gate_.get('max_drop'):g} gate {words} on "
                                f"{gate_.get('count')} photos", True)


def run_outcome(run_dir) -> ExportOutcome:
    """export_outcome of RUN/export/manifest.json; unfinished when there is none or it is unreadable."""
    from edge.errors import NoodleError
    from edge.manifest import load_export
    from train.rundir import RunDir

    path = RunDir(run_dir).export_manifest
    try:
        return export_outcome(load_export(path).validation)
    except (NoodleError, OSError) as exc:
        return ExportOutcome(Outcome.unfinished, f"no readable export ({str(exc).splitlines()[0]})", False)


def main(argv: list[str] | None = None) -> int:
    """`python -m export.gate RUN`: the export's outcome in one line, and its exit status (EXIT)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m export.gate RUN_DIR", file=sys.stderr)
        return 2
    found = run_outcome(Path(args[0]))
    print(f"{args[0]}: {found.outcome.value}: {found.line}")
    return EXIT[found.outcome]


if __name__ == "__main__":
    raise SystemExit(main())

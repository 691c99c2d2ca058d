"""Paired statistics: is a variant's accuracy different from float32's on the same photos?

Both models label the same photos, so the question is about the discordant
pairs: photos float32 gets right and the variant wrong (`float_only`), and the
reverse (`variant_only`). Photos both get right or both get wrong say nothing
about the difference.

- The delta is (variant_only - float_only) / n, in percentage points.
- Its 95 % confidence interval is Newcombe's hybrid score interval for a
  difference of paired proportions (Newcombe 1998, Statistics in Medicine
  17:2635-2650, method 10): Wilson intervals of each accuracy, combined with
  the correlation of the pairs. Closed form, no resampling, and it keeps its
  coverage with few discordant pairs, where the Wald interval collapses to
  zero width. tests/test_stats.py holds it to the paper's worked example and
  to three later published ones, and Wilson and McNemar to scipy.
- McNemar's exact test: under "no difference" each discordant photo is a fair
  coin, so the two-sided p-value is a binomial tail on the discordant pairs.
- The verdict calls a difference detectable when that p-value is below 0.05.

numpy and the standard library only (math.comb for the binomial tail).
"""
from __future__ import annotations

import math

import numpy as np

# The usual 95 %: z for the interval, alpha for the verdict.
Z95 = 1.959963984540054
ALPHA = 0.05


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def paired_table(reference_correct: np.ndarray, variant_correct: np.ndarray) -> dict:
    """The 2x2 counts of two models' right/wrong on the same photos."""
    r = np.asarray(reference_correct, bool)
    v = np.asarray(variant_correct, bool)
    if r.shape != v.shape:
        raise ValueError(f"paired results differ in length: {r.shape} vs {v.shape}")
    return {"both": int((r & v).sum()), "float_only": int((r & ~v).sum()),
            "variant_only": int((~r & v).sum()), "neither": int((~r & ~v).sum())}


def newcombe_ci(table: dict, z: float = Z95) -> tuple[float, float]:
    """95 % interval of accuracy(variant) - accuracy(float32), as fractions."""
    a, b, c, d = table["both"], table["float_only"], table["variant_only"], table["neither"]
    n = a + b + c + d
    if n == 0:
        return -1.0, 1.0
    p_ref, p_var = (a + b) / n, (a + c) / n
    l_ref, u_ref = wilson(a + b, n, z)
    l_var, u_var = wilson(a + c, n, z)
    denominator = (a + b) * (c + d) * (a + c) * (b + d)
    # The correlation of the pairs; a positive one is first shrunk by n/2, as
    # method 10 defines it. 0 when a margin is empty (then it is undefined).
    covariance = a * d - b * c
    if covariance > 0:
        covariance = max(covariance - n / 2, 0.0)
    phi = covariance / math.sqrt(denominator) if denominator else 0.0
    delta = p_var - p_ref
    lower = delta - math.sqrt(max(0.0, (p_var - l_var) ** 2 - 2 * phi * (p_var - l_var) * (u_ref - p_ref)
                                  + (u_ref - p_ref) ** 2))
    upper = delta + math.sqrt(max(0.0, (u_var - p_var) ** 2 - 2 * phi * (u_var - p_var) * (p_ref - l_ref)
                                  + (p_ref - l_ref) ** 2))
    return max(-1.0, lower), min(1.0, upper)


def mcnemar_exact(float_only: int, variant_only: int) -> float:
    """Two-sided exact McNemar p-value: a binomial(b + c, 1/2) tail, doubled, at most 1."""
    n = float_only + variant_only
    if n == 0:
        return 1.0
    k = min(float_only, variant_only)
    tail = sum(math.comb(n, i) for i in range(k + 1))
    # Exact integer arithmetic, then one division: no underflow for large n.
    return min(1.0, 2 * tail / 2**n)


def paired_comparison(y: np.ndarray, reference_pred: np.ndarray, variant_pred: np.ndarray) -> dict:
    """delta_pp, delta_ci95, discordant counts and McNemar's p of a variant vs float32."""
    y = np.asarray(y)
    table = paired_table(np.asarray(reference_pred) == y, np.asarray(variant_pred) == y)
    n = sum(table.values())
    delta = (table["variant_only"] - table["float_only"]) / n if n else 0.0
    lower, upper = newcombe_ci(table)
    return {
        "delta_pp": 100 * delta,
        "delta_ci95": [100 * lower, 100 * upper],
        "discordant": {"float_only": table["float_only"], "variant_only": table["variant_only"]},
        "mcnemar_p": mcnemar_exact(table["float_only"], table["variant_only"]),
        "count": n,
    }


def verdict(variant: str, paired: dict, alpha: float = ALPHA) -> str:
    """One sentence a user can act on."""
    lo, hi = paired["delta_ci95"]
    d, p = paired["discordant"], paired["mcnemar_p"]
    detail = (f"delta {paired['delta_pp']:+.2f} pp, 95 % CI {lo:+.2f}..{hi:+.2f} pp; "
              f"{d['float_only']} photo(s) only float32 got right, {d['variant_only']} only {variant}; "
              f"McNemar p = {p:.3g}")
    if p >= alpha:
        return f"{variant}: no detectable difference from float32 ({detail})"
    word = "worse" if paired["delta_pp"] < 0 else "better"
    return (f"{variant} is {word} than float32 by {abs(paired['delta_pp']):.2f} pp "
            f"(CI {lo:+.2f}..{hi:+.2f} pp; {detail.split('; ', 1)[1]})")


def confusion(y: np.ndarray, pred: np.ndarray, classes: int) -> np.ndarray:
    """counts[true, predicted]."""
    counts = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(counts, (np.asarray(y, np.int64), np.asarray(pred, np.int64)), 1)
    return counts


def per_class(counts: np.ndarray, labels: list[str]) -> dict:
    """Accuracy of each true class with the number of photos it rests on."""
    out = {}
    for i, label in enumerate(labels):
        total = int(counts[i].sum())
        out[label] = {"accuracy": float(counts[i, i] / total) if total else None,
                      "correct": int(counts[i, i]), "count": total}
    return out

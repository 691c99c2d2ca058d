"""export.stats against references: scipy for Wilson and the exact McNemar, published tables for Newcombe.

export.stats writes the formulas out (numpy and the standard library) so that
comparing models needs no scipy; these tests hold each formula to an
implementation or a worked example that was not written here.
"""
from __future__ import annotations

import numpy as np
import pytest

from export import stats

scipy_stats = pytest.importorskip("scipy.stats")  # the dev extra installs it

# Tables (a, b, c, d) of paired right/wrong: a both right, b only the first
# method right, c only the second, d neither. Each interval is for
# p1 - p2 = (b - c) / n at 95 %, as published, to the digits published.
PUBLISHED = [
    # Newcombe RG. Improved confidence intervals for the difference between
    # binomial proportions based on paired data. Statistics in Medicine 1998;
    # 17:2635-2650: its worked example, method 10. The figures as the ratesci
    # R package's tests carry them (petelaud/ratesci, tests/testthat/test3.R);
    # the paper's method 8 (no correlation term) gives 0.0618..0.3242 there.
    ((20, 12, 2, 16), (0.0562, 0.3292), 4),
    # Fagerland MW, Lydersen S, Laake P. Recommended tests and confidence
    # intervals for paired binomial proportions. Statistics in Medicine 2014;
    # 33:2850-2875: Newcombe's method 10 on their example (ratesci, as above).
    ((1, 1, 7, 12), (-0.507, -0.026), 3),
    # Tang M-L et al. 2010, the hybrid (MOVER-Wilson) interval of their
    # risk-difference example, as ratesci's tests name and carry it.
    ((8, 3, 1, 2), (-0.1574, 0.4136), 4),
    # Chang P et al. Journal of Applied Statistics 2024; 51:139-152 (ratesci).
    ((7, 25, 2, 68), (0.133, 0.318), 3),
]


def as_table(a: int, b: int, c: int, d: int) -> dict:
    """A published table in export.stats' terms, the second method as float32.

    stats' delta is accuracy(variant) - accuracy(float32), so the variant is
    the first method: variant_only is b, float_only is c.
    """
    return {"both": a, "variant_only": b, "float_only": c, "neither": d}


@pytest.mark.parametrize("table, published, digits", PUBLISHED, ids=lambda v: str(v))
def test_newcombe_method_10_matches_the_published_examples(table, published, digits):
    lower, upper = stats.newcombe_ci(as_table(*table))
    assert (round(lower, digits), round(upper, digits)) == published


@pytest.mark.parametrize("table, published, digits", PUBLISHED[:1])
def test_paired_comparison_gives_the_published_interval_from_labels(table, published, digits):
    """The same table built from labels: the counting and the percentage points on top of the formula."""
    a, b, c, d = table
    y = np.zeros(sum(table), int)
    # (variant right, float32 right) per photo, in the table's four kinds.
    kinds = [(1, 1)] * a + [(1, 0)] * b + [(0, 1)] * c + [(0, 0)] * d
    variant = np.array([0 if v else 1 for v, _ in kinds])
    reference = np.array([0 if r else 1 for _, r in kinds])
    paired = stats.paired_comparison(y, reference, variant)
    assert paired["discordant"] == {"float_only": c, "variant_only": b}
    assert paired["delta_pp"] == pytest.approx(100 * (b - c) / sum(table))
    lower, upper = paired["delta_ci95"]
    assert (round(lower / 100, digits), round(upper / 100, digits)) == published
    assert paired["mcnemar_p"] == pytest.approx(scipy_stats.binomtest(c, b + c, 0.5).pvalue, rel=1e-12)


def test_newcombe_interval_flips_with_the_roles_and_holds_its_estimate():
    """Swapping which model is float32 mirrors the interval; it always holds the point delta."""
    rng = np.random.default_rng(3)
    for _ in range(500):
        a, b, c, d = (int(v) for v in rng.integers(0, 60, 4))
        if a + b + c + d == 0:
            continue
        lower, upper = stats.newcombe_ci(as_table(a, b, c, d))
        mirrored = stats.newcombe_ci(as_table(a, c, b, d))
        assert mirrored == pytest.approx((-upper, -lower), abs=1e-12)
        delta = (b - c) / (a + b + c + d)
        assert -1.0 <= lower <= delta <= upper <= 1.0


@pytest.mark.parametrize("n", [1, 2, 5, 13, 40, 100, 401, 1600])
def test_wilson_matches_scipy(n):
    for k in sorted({0, 1, n // 3, n // 2, n - 1, n}):
        expected = scipy_stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        assert stats.wilson(k, n) == pytest.approx((expected.low, expected.high), abs=1e-12), (k, n)


def test_mcnemar_exact_matches_scipys_binomial_test():
    """Two-sided exact McNemar: a binomial(b + c, 1/2) test on the discordant pairs."""
    pairs = [(b, c) for b in range(0, 41) for c in range(0, 41)] + [(400, 520), (3, 997), (250, 251)]
    for b, c in pairs:
        expected = scipy_stats.binomtest(b, b + c, 0.5).pvalue if b + c else 1.0
        assert stats.mcnemar_exact(b, c) == pytest.approx(expected, rel=1e-9, abs=1e-300), (b, c)

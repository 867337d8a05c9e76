"""The confidence intervals of the evaluations (dfusion_core/stats.py) against hand computations."""

from __future__ import annotations

import math

import pytest

from dfusion_core.stats import mean_ci, paired_ci, t975


def test_paired_ci_by_hand() -> None:
    # differences 0.1, 0.2, 0.0, 0.3: mean 0.15, sd sqrt(0.05 / 3), t(3) = 3.182
    ci = paired_ci([0.5, 0.7, 0.6, 0.9], [0.4, 0.5, 0.6, 0.6])
    half = 3.182 * math.sqrt(0.05 / 3) / 2
    assert ci["n"] == 4 and ci["mean"] == pytest.approx(0.15)
    assert (ci["lo"], ci["hi"]) == (pytest.approx(0.15 - half), pytest.approx(0.15 + half))
    assert ci["lo"] == pytest.approx(-0.0553970, abs=1e-6)


def test_pairing_removes_what_the_samples_share() -> None:
    """A constant gain over widely spread samples: the paired interval is a point, the unpaired one is wide."""
    before = [0.1, 0.5, 0.9, 0.3]
    after = [b + 0.05 for b in before]
    paired = paired_ci(after, before)
    assert paired["lo"] == pytest.approx(0.05) and paired["hi"] == pytest.approx(0.05)
    assert mean_ci(after)["hi"] - mean_ci(after)["lo"] > 0.5


def test_edges() -> None:
    one = paired_ci([0.7], [0.5])
    assert one["mean"] == pytest.approx(0.2) and math.isnan(one["lo"]) and math.isnan(one["hi"])
    with pytest.raises(ValueError, match="equal lengths"):
        paired_ci([0.1, 0.2], [0.1])
    with pytest.raises(ValueError, match="at least 2 values"):
        t975(0)
    assert t975(1) == 12.706 and t975(30) == 2.042
    assert t975(40) == pytest.approx(2.021, abs=1e-3) and t975(120) == pytest.approx(1.980, abs=1e-3)


def test_the_benches_use_the_same_functions() -> None:
    from bench import stats as bench_stats

    assert bench_stats.mean_ci is mean_ci and bench_stats.t975 is t975

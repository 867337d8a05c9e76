"""Small statistics: a mean with its 95 % confidence interval (Student's t), and the paired
interval of a before/after comparison on the same samples. Pure Python (no torch, no scipy).

The two-sided 97.5 % t quantiles are tabulated for the sample sizes used here (a few seeds to a
few dozen captions) and interpolated towards the normal quantile beyond them.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

# t_{0.975, df} for df = 1..30 (standard tables, 3 decimals)
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042)
_Z975 = 1.960


def t975(df: int) -> float:
    """The 97.5 % quantile of Student's t with `df` degrees of freedom (df > 30: between the
    df = 30 value and the normal one, interpolated in 1/df, which is exact to 3 decimals at df = 40, 60, 120)."""
    if df < 1:
        raise ValueError(f"need at least 2 values for a confidence interval (df = {df})")
    if df <= len(_T975):
        return _T975[df - 1]
    return _Z975 + (_T975[-1] - _Z975) * len(_T975) / df


def mean_ci(values: Sequence[float]) -> dict[str, float]:
    """{'mean', 'lo', 'hi', 'n', 'sd'}: the mean of independent values and its 95 % t interval
    (lo, hi and sd are NaN for fewer than 2 values)."""
    xs = [float(v) for v in values]
    m = statistics.fmean(xs)
    if len(xs) < 2:
        return {"mean": m, "lo": math.nan, "hi": math.nan, "n": len(xs), "sd": math.nan}
    sd = statistics.stdev(xs)
    half = t975(len(xs) - 1) * sd / math.sqrt(len(xs))
    return {"mean": m, "lo": m - half, "hi": m + half, "n": len(xs), "sd": sd}


def paired_ci(after: Sequence[float], before: Sequence[float]) -> dict[str, float]:
    """`mean_ci` of the differences after[i] - before[i]: pairs measured on the same sample (the same
    prompt and noise), so what varies between pairs is the sample, not the model."""
    if len(after) != len(before):
        raise ValueError(f"paired values need equal lengths, got {len(after)} after and {len(before)} before")
    return mean_ci([float(a) - float(b) for a, b in zip(after, before, strict=True)])

"""Small statistics for the benches: a mean with its 95 % confidence interval (Student's t).

They live in `dfusion_core.stats` (the jobs' train-caption evaluation uses them too); this module
keeps the benches' import path.
"""

from __future__ import annotations

from dfusion_core.stats import mean_ci, paired_ci, t975

__all__ = ["mean_ci", "paired_ci", "t975"]

"""Preference pairs from scored samples, per prompt (DESIGN §1)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from dfusion_core.errors import ConfigError


@dataclass(frozen=True)
class PairPlan:
    """Indices into one prompt's samples.

    D-Fusion pairs: `reference` lends attention inside the item mask, `base` is the loser and
    the target starts from it. Plain pairs: `reference` is the winner itself, `base` the loser.
    """

    index: int
    reference: int
    base: int


def pairs_per_prompt(samples_per_prompt: int) -> int:
    """Pairs one prompt yields per epoch: n/2, for D-Fusion and plain pairs alike."""
    if samples_per_prompt <= 0 or samples_per_prompt % 4:
        raise ConfigError("samples_per_prompt", f"needs a positive multiple of 4, got {samples_per_prompt}")
    return samples_per_prompt // 2


def _ranked(scores: Sequence[float]) -> list[int]:
    n = len(scores)
    if n == 0 or n % 4:
        raise ConfigError("samples_per_prompt", f"needs a positive multiple of 4 samples per prompt, got {n}")
    # stable sort, best first: ties keep sample order, so selection is deterministic
    return sorted(range(n), key=lambda i: -float(scores[i]))


def select_fusion_pairs(scores: Sequence[float]) -> list[PairPlan]:
    """References = the top n/4, each used twice; bases = the bottom n/2, in descending order;
    pair k = (reference k, base k), references listed as [r_0 .. r_{n/4-1}, r_0 .. r_{n/4-1}]."""
    ranked = _ranked(scores)
    n = len(ranked)
    refs = ranked[: n // 4] * 2
    bases = ranked[n // 2 :]
    return [PairPlan(k, r, b) for k, (r, b) in enumerate(zip(refs, bases, strict=True))]


def select_plain_pairs(scores: Sequence[float]) -> list[PairPlan]:
    """The ablation: best vs worst raw samples, n/2 pairs (the same count as D-Fusion's)."""
    ranked = _ranked(scores)
    n = len(ranked)
    return [PairPlan(k, ranked[k], ranked[n - 1 - k]) for k in range(n // 2)]


def carries_preference(winner_score: float, loser_score: float, rule: str) -> bool:
    """Whether a pair is trained under `rule` (TrainingConfig.pair_filter).

    'winner_beats_loser': the winner (a fused target scored on its own image, or a plain winner)
    must score strictly above its loser; a tie or a fusion that did not help teaches nothing true.
    'none': every pair, as the authors' selection produces them.
    """
    if rule == "none":
        return True
    if rule == "winner_beats_loser":
        return float(winner_score) > float(loser_score)
    raise ConfigError("training.pair_filter", f"unknown pair filter {rule!r}; use 'winner_beats_loser' or 'none'")

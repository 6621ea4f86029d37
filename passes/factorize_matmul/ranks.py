"""Rank rules of factorize-matmul: how an option turns a layer's spectrum into a rank.

A layer W [k, n] factorized at rank r holds r (k + n) parameters instead of k n, so it saves
only below the useful limit ceil(k n / (k + n)). Each rule is one `RankRule` in `RANK_RULES`:

- `rank-ratio=q`: r = round(q min(k, n)).
- `param-ratio=p`: r = floor(p k n / (k + n)): the factors hold about a share p of W's parameters.
- `energy=e`: the fewest singular values s_1 >= s_2 >= ... whose squares hold a share e of
  sum s_i^2.
- `layer-cosine=c`: the smallest r whose layer outputs keep cosine c (searched in `fitting`).

Rounding to a multiple m goes down for a rule that cuts (the cut is at least the one asked) and
up for a rule that keeps a floor (the floor still holds).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

# (value, k, n, singular values, energy) -> rank
RankFunction = Callable[[float, int, int, np.ndarray, float], int]


@dataclass(frozen=True)
class RankRule:
    """One rank option: its range (0, 1] or (0, 1), its rounding and how it picks r.

    Attributes:
        closed_high: Whether 1 is in the option's range.
        rounds_up: Whether the rule keeps a floor (round up) rather than makes a cut (down).
        from_shape: Whether r follows from k and n alone (a randomized sketch can stop there).
        needs_data: Whether the rule reads calibration data.
        rank: The rank for (value, k, n, s, energy); None for a rule searched by fitting.
    """

    closed_high: bool
    rounds_up: bool
    from_shape: bool
    needs_data: bool
    rank: RankFunction | None


def _rank_ratio(q: float, k: int, n: int, _s: np.ndarray, _energy: float) -> int:
    return max(1, round(q * min(k, n)))


def _param_ratio(p: float, k: int, n: int, _s: np.ndarray, _energy: float) -> int:
    return max(1, int(p * k * n / (k + n)))


def _energy(share: float, _k: int, _n: int, s: np.ndarray, energy: float) -> int:
    kept = np.cumsum(s.astype(np.float64) ** 2) / max(energy, 1e-300)
    index = int(np.searchsorted(kept, share * (1 - 1e-12)))
    return min(index + 1, len(s))


RANK_RULES: Mapping[str, RankRule] = {
    "rank-ratio": RankRule(True, False, True, False, _rank_ratio),
    "energy": RankRule(True, True, False, False, _energy),
    "param-ratio": RankRule(False, False, True, False, _param_ratio),
    "layer-cosine": RankRule(False, True, False, True, None),
}
DEFAULT_RULE = ("param-ratio", 0.5)


def useful_rank_limit(k: int, n: int) -> int:
    """The smallest rank at which factorizing a k x n matrix saves nothing: ceil(kn / (k+n))."""
    return -(-k * n // (k + n))


def round_rank(rank: int, multiple: int, up: bool) -> int:
    """`rank` rounded down (or up) to a multiple of `multiple`; ranks below one multiple stay."""
    if multiple <= 1 or rank < multiple:
        return rank
    return -(-rank // multiple) * multiple if up else rank - rank % multiple


def check_rule_value(option: str, value: float) -> None:
    """Raise ValueError unless `value` is in the rank option's range."""
    closed = RANK_RULES[option].closed_high
    above = value > 1.0 if closed else value >= 1.0
    if not value > 0.0 or above:
        raise ValueError(f"{option} must be in (0, 1{']' if closed else ')'}, got {value}")

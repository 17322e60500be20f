"""Statistics over seeds, with rliable (Agarwal et al. 2021, "Deep Reinforcement Learning at the Edge of the
Statistical Precipice", google-research/rliable), and the one rule that turns them into a verdict.

- Per algorithm: the mean and the interquartile mean (IQM) of a score over seeds, each with a 95% stratified-
  bootstrap confidence interval (``rliable.library.get_interval_estimates``, percentile method).
- Between two algorithms: the probability of improvement P(X > Y) (``rliable.metrics.probability_of_improvement``,
  the Mann-Whitney statistic, ties counted half) with its 95% bootstrap interval, each sample resampled on its own.
- Against a fixed value (is CQL's Q below the return?): the interval of the mean.

The rule (:func:`verdict`), used by ``o2o-report``, the study pages, the README and the tests: a claim **holds**
when its interval lies wholly on the side the claim states (the interval of a difference on that side of 0, the
probability of improvement's lower end above 0.5), is **contradicted** when it lies wholly on the other side, and is
**inconclusive at this scale** otherwise. A claim made of parts holds when every part holds and is contradicted when
any part is.

The bootstrap draws ``BOOTSTRAP_REPS`` resamples from a fixed seed, so a page written twice shows the same
intervals (tested). Measured with 5 seeds (standard deviation of an interval's lower end over 8 bootstrap seeds): at
2,000 resamples 0.003 for a mean of scores in [0, 1] and 0.019 for a probability of improvement; at 10,000, 0.001 and
0.013, at five times the cost (a probability of improvement takes 3 s at 10,000: a study page computes dozens).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

HOLDS, INCONCLUSIVE, CONTRADICTED = "holds", "inconclusive at this scale", "contradicted"
CONFIDENCE = 0.95
BOOTSTRAP_REPS = 2_000
BOOTSTRAP_SEED = 0
MIN_SEEDS = 5  # studies run at least this many; fewer gives intervals too wide to decide anything


@dataclass(frozen=True)
class Interval:
    point: float
    low: float
    high: float
    seeds: int | None = None  # the fewest per-seed values behind it (None: not from seeds); below MIN_SEEDS it decides nothing

    def __str__(self) -> str:
        return self.format()

    def format(self, digits: int = 3) -> str:
        if math.isnan(self.point):
            return "n/a"
        return f"{self.point:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


NAN = Interval(math.nan, math.nan, math.nan)


def _clean(values: Iterable[float]) -> np.ndarray:
    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], dtype=float)
    return v.reshape(-1, 1)  # rliable's layout: (runs, tasks), one task


def _estimate(scores: dict, func) -> tuple[dict, dict]:
    import logging

    from rliable import library as rly

    logging.getLogger("absl").setLevel(logging.WARNING)  # rliable logs "Calculating estimates for ..." per call
    # rliable 1.2.0's StratifiedBootstrap draws its indices from NumPy's global generator whatever random_state
    # says (library.py, update_indices): that generator is seeded around the call and given back as it was
    saved = np.random.get_state()
    np.random.seed(BOOTSTRAP_SEED)
    try:
        with warnings.catch_warnings():  # arch's notice about its random_state argument, which rliable passes on
            warnings.simplefilter("ignore", FutureWarning)
            return rly.get_interval_estimates(scores, func, reps=BOOTSTRAP_REPS, confidence_interval_size=CONFIDENCE,
                                              random_state=np.random.RandomState(BOOTSTRAP_SEED))
    finally:
        np.random.set_state(saved)


def aggregates(values: Sequence[float]) -> dict[str, Interval]:
    """``mean`` and ``iqm`` of one algorithm's per-seed values, with their 95% intervals (NaN values left out)."""
    from rliable import metrics

    v = _clean(values)
    if len(v) == 0:
        return {"mean": NAN, "iqm": NAN}
    if len(v) == 1:
        x = float(v[0, 0])
        return {"mean": Interval(x, x, x, 1), "iqm": Interval(x, x, x, 1)}
    point, ci = _estimate({"x": v}, lambda s: np.array([metrics.aggregate_mean(s), metrics.aggregate_iqm(s)]))
    return {name: Interval(float(point["x"][i]), float(ci["x"][0, i]), float(ci["x"][1, i]), len(v))
            for i, name in enumerate(("mean", "iqm"))}


def mean_interval(values: Sequence[float]) -> Interval:
    return aggregates(values)["mean"]


def probability_of_improvement(x: Sequence[float], y: Sequence[float]) -> Interval:
    """P(X > Y) for a run of X and a run of Y drawn at random, with its 95% interval."""
    from rliable import metrics

    a, b = _clean(x), _clean(y)
    if len(a) == 0 or len(b) == 0:
        return NAN
    point, ci = _estimate({"p": (a, b)}, metrics.probability_of_improvement)
    return Interval(float(point["p"]), float(ci["p"][0, 0]), float(ci["p"][1, 0]), min(len(a), len(b)))


def verdict(interval: Interval, threshold: float, claimed: str) -> str:
    """The rule. ``claimed``: ``"above"`` or ``"below"``, the side of ``threshold`` the claim puts the value on
    (0 for a difference, 0.5 for a probability of improvement)."""
    if claimed not in ("above", "below"):
        raise ValueError(f"claimed must be 'above' or 'below', not {claimed!r}")
    if math.isnan(interval.low) or math.isnan(interval.high):
        return INCONCLUSIVE
    if interval.seeds is not None and interval.seeds < MIN_SEEDS:  # one seed's interval has no width at all
        return INCONCLUSIVE
    above, below = interval.low > threshold, interval.high < threshold
    if (above and claimed == "above") or (below and claimed == "below"):
        return HOLDS
    if above or below:
        return CONTRADICTED
    return INCONCLUSIVE


def improves(x: Sequence[float], y: Sequence[float], higher_is_better: bool = True) -> tuple[str, Interval]:
    """Is X better than Y? The verdict on P(X better than Y) > 0.5, and that probability's interval."""
    p = probability_of_improvement(x, y) if higher_is_better else probability_of_improvement(y, x)
    return verdict(p, 0.5, "above"), p


def combine(verdicts: Iterable[str]) -> str:
    """A claim made of parts: holds if every part holds, contradicted if any part is."""
    parts = list(verdicts)
    if parts and all(v == HOLDS for v in parts):
        return HOLDS
    return CONTRADICTED if CONTRADICTED in parts else INCONCLUSIVE


RULE = ("A claim *holds* when its 95% stratified-bootstrap interval (rliable) lies wholly on the side the claim "
        "states: for two algorithms, the lower end of the probability of improvement above 0.5; against a fixed "
        "value, the interval of the mean on the claimed side of it. It is *contradicted* when the interval lies "
        "wholly on the other side, and *inconclusive at this scale* otherwise. With fewer than "
        f"{MIN_SEEDS} seeds a side, no claim is decided: every verdict is inconclusive.")

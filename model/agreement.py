"""Agreement between the model and its readers over a 2×2 table: sensitivity, specificity,
percent agreement and Cohen's kappa, with the reader's verdict as the reference."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Agreement:
    """Model against readers over reviewed cases (each prediction's latest review), fracture = 1."""

    model_version: str
    true_positive: int
    false_positive: int
    false_negative: int
    true_negative: int
    cases: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(
            self,
            "cases",
            self.true_positive + self.false_positive + self.false_negative + self.true_negative,
        )

    @property
    def sensitivity(self) -> float | None:
        positives = self.true_positive + self.false_negative
        return self.true_positive / positives if positives else None

    @property
    def specificity(self) -> float | None:
        negatives = self.true_negative + self.false_positive
        return self.true_negative / negatives if negatives else None

    @property
    def agreement(self) -> float | None:
        return (self.true_positive + self.true_negative) / self.cases if self.cases else None

    @property
    def kappa(self) -> float | None:
        """Cohen's kappa between model and readers; None where chance agreement is total."""
        return cohen_kappa(
            self.true_positive, self.false_positive, self.false_negative, self.true_negative
        )


def cohen_kappa(tp: int, fp: int, fn: int, tn: int) -> float | None:
    """Cohen's kappa of a 2×2 table (rows: reader, columns: model); None when undefined."""
    n = tp + fp + fn + tn
    if n == 0:
        return None
    observed = (tp + tn) / n
    model_pos, reader_pos = (tp + fp) / n, (tp + fn) / n
    expected = model_pos * reader_pos + (1 - model_pos) * (1 - reader_pos)
    if expected >= 1.0:
        return None
    return (observed - expected) / (1 - expected)


MIN_CASES = 20  # below this, agreement figures and their intervals say too little to show
BOOTSTRAP_DRAWS = 4000


@dataclass(frozen=True)
class Interval:
    """An estimate with its confidence interval (95 % unless stated)."""

    estimate: float
    low: float
    high: float


def wilson(successes: int, trials: int, level: float = 0.95) -> Interval | None:
    """A proportion with its Wilson score interval (scipy); None without trials."""
    from scipy.stats import binomtest

    if trials <= 0:
        return None
    ci = binomtest(successes, trials).proportion_ci(confidence_level=level, method="wilson")
    return Interval(successes / trials, float(ci.low), float(ci.high))


def kappa_interval(
    tp: int, fp: int, fn: int, tn: int, *, level: float = 0.95, seed: int = 0
) -> Interval | None:
    """Cohen's kappa with a percentile bootstrap interval: the 2×2 table's cases resampled
    with replacement BOOTSTRAP_DRAWS times (a fixed seed: the same table, the same interval).
    None when kappa is undefined."""
    import numpy as np

    estimate = cohen_kappa(tp, fp, fn, tn)
    if estimate is None:
        return None
    n = tp + fp + fn + tn
    draws = np.random.default_rng(seed).multinomial(
        n, np.array([tp, fp, fn, tn], dtype=float) / n, size=BOOTSTRAP_DRAWS
    )
    a, b, c, d = (draws[:, i] / n for i in range(4))
    observed = a + d
    model_pos, reader_pos = a + b, a + c
    expected = model_pos * reader_pos + (1 - model_pos) * (1 - reader_pos)
    with np.errstate(divide="ignore", invalid="ignore"):
        kappas = np.where(expected < 1.0, (observed - expected) / (1 - expected), np.nan)
    tail = (1 - level) / 2 * 100
    # A resample with one class only (chance agreement total) has no kappa: left out.
    low, high = np.nanpercentile(kappas, [tail, 100 - tail])
    return Interval(estimate, float(low), float(high))


def usual_range(
    successes: int, trials: int, recent_trials: int, level: float = 0.99
) -> tuple[float, float] | None:
    """The range a rate over `recent_trials` cases falls in `level` of the time when its true
    rate is the history's (successes / trials): the central binomial interval (scipy), as
    rates. None without history or recent cases."""
    from scipy.stats import binom

    if trials <= 0 or recent_trials <= 0:
        return None
    low, high = binom.interval(level, recent_trials, successes / trials)
    return float(low) / recent_trials, float(high) / recent_trials

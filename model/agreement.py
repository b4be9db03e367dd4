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

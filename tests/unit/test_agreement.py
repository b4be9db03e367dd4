"""Model-against-reader statistics of a 2×2 table, against scikit-learn."""

from __future__ import annotations

import pytest
from sklearn.metrics import cohen_kappa_score

from model.agreement import cohen_kappa


@pytest.mark.parametrize(
    "table", [(5, 0, 0, 5), (3, 2, 1, 4), (0, 3, 3, 0), (7, 1, 2, 0), (1, 0, 0, 0)]
)
def test_cohen_kappa_formula(table: tuple[int, int, int, int]) -> None:
    tp, fp, fn, tn = table
    reader = [1] * tp + [0] * fp + [1] * fn + [0] * tn
    model = [1] * tp + [1] * fp + [0] * fn + [0] * tn
    expected = cohen_kappa_score(reader, model) if len(set(reader) | set(model)) > 1 else None
    ours = cohen_kappa(tp, fp, fn, tn)
    if expected is None:
        assert ours is None
    else:
        assert ours == pytest.approx(expected)

"""jbptt.plotting refuses rows it cannot draw, naming what is missing."""

import pytest

from jbptt import plotting


@pytest.mark.parametrize(
    "rows, match",
    [
        ([], "non-empty list"),
        ({"estimator": "tbptt(k=2)"}, "non-empty list"),
        ([{"x": 1}], r"rows\[0\] lacks expected_depth, rel_bias, estimator"),
        ([{"estimator": "tbptt(k=2)", "expected_depth": 2.0}], "lacks rel_bias"),
    ],
)
def test_bias_variance_names_bad_rows(rows, match):
    with pytest.raises(ValueError, match=match):
        plotting.bias_variance(rows)

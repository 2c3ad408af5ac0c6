"""Which steps of teacher trajectories become critic training data (SPEC §5), on crafted scores."""

import pytest

from training.data.export import ExportOptions, step_rules


@pytest.mark.parametrize(
    "scores, accepted_by_pass, expected",
    [
        ([3.0, 5.0, 8.0], True, ["trend"]),  # a refinement that worked
        ([3.0, 5.0, 8.0], False, []),  # rose, but the last attempt was not a pass
        ([5.0, 4.0, 8.0], True, []),  # not a steady rise
        ([6.0, 6.0], True, ["low_variance"]),  # flat: no trend, stable
        ([8.0, 9.0], True, ["trend", "stable_high", "low_variance"]),
        ([7.0], True, ["stable_high", "low_variance"]),  # one attempt: no trend, no variance
        ([2.0], False, ["low_variance"]),
        ([9.0, 2.0], False, []),  # fell apart: nothing to learn from as SFT
    ],
)
def test_keep_rules(scores, accepted_by_pass, expected):
    assert step_rules(scores, accepted_by_pass, ExportOptions()) == expected


def test_thresholds_are_options():
    strict = ExportOptions(high_score=9.5, max_std=0.1)
    assert step_rules([9.0, 9.3], True, strict) == ["trend"]
    assert step_rules([9.0, 9.3], True, ExportOptions()) == ["trend", "stable_high", "low_variance"]

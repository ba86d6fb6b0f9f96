"""reproduce.ablation.intervals against a printed t table and intervals worked by hand."""

import math

import pytest

from reproduce.ablation import intervals

# Student's t, two-sided 95% (p = 0.975) and one-sided 95% (p = 0.95), from a printed table
TABLE = [
    (0.975, 1, 12.706),
    (0.975, 2, 4.303),
    (0.975, 4, 2.776),
    (0.975, 10, 2.228),
    (0.975, 30, 2.042),
    (0.95, 5, 2.015),
    (0.995, 3, 5.841),
]


@pytest.mark.parametrize("p, df, t", TABLE)
def test_t_quantiles_are_the_printed_table(p, df, t):
    assert intervals.t_quantile(p, df) == pytest.approx(t, abs=1e-3)
    assert intervals.t_quantile(1 - p, df) == pytest.approx(-t, abs=1e-3)


def test_a_large_df_is_the_normal_quantile():
    assert intervals.t_quantile(0.975, 1e6) == pytest.approx(1.95996, abs=1e-4)


def test_welch_interval_worked_by_hand():
    paper, variant = [20.0, 22.0, 24.0], [25.0, 27.0, 29.0]
    # means 22 and 27; each variance 4, so the standard error is sqrt(4/3 + 4/3) and Welch's df is
    # (8/3)^2 / ((4/3)^2/2 + (4/3)^2/2) = 4: t = 2.776
    half = 2.776 * math.sqrt(8 / 3)
    delta = intervals.difference_interval(variant, paper)
    assert delta.value == pytest.approx(5.0)
    assert (delta.low, delta.high) == pytest.approx((5 - half, 5 + half), abs=2e-3)
    assert delta.excludes_zero
    small = intervals.difference_interval([21.0, 23.0, 25.0], paper)  # +1 with the same spread
    assert (small.low, small.high) == pytest.approx(
        (1 - half, 1 + half), abs=2e-3
    ) and not small.excludes_zero
    assert math.isnan(intervals.difference_interval([30.0], paper).low)  # one seed: no interval


def test_mean_and_ratio_intervals_worked_by_hand():
    mean = intervals.mean_interval([40.0, 44.0, 42.0])  # sd 2, se 2/sqrt(3), df 2: t = 4.303
    assert (mean.value, mean.low, mean.high) == pytest.approx(
        (42, 42 - 4.303 * 2 / math.sqrt(3), 42 + 4.303 * 2 / math.sqrt(3)), abs=2e-3
    )
    # ratios 4 and 9 over two paired seeds: the geometric mean 6; the logs' se is ln(9/4)/2, df 1: t = 12.706
    ratio = intervals.ratio_interval([4.0, 18.0], [1.0, 2.0])
    se = math.log(9 / 4) / 2
    assert ratio.value == pytest.approx(6.0)
    assert (ratio.low, ratio.high) == pytest.approx(
        (6 * math.exp(-12.706 * se), 6 * math.exp(12.706 * se)), rel=1e-3
    )
    assert ratio.excludes_one is False
    same = intervals.ratio_interval([6.0, 12.0, 3.0], [1.0, 2.0, 0.5])
    assert (same.value, same.low, same.high) == pytest.approx((6.0, 6.0, 6.0)) and same.excludes_one

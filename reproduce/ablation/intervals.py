"""95% intervals over seeds, for the ablation tables: is a measured change bigger than the noise between seeds?

Student's t throughout (few seeds): a mean's interval, Welch's interval for the
difference of two means (two variants, each over its own seeds), and the
interval of a ratio from the log-ratios of paired seeds (Figure 1's tanh over
ReLU, seed against seed). No SciPy: the t distribution's CDF is the regularised
incomplete beta function, inverted by bisection.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence


class Interval(NamedTuple):
    value: float  # the estimate: a mean, a difference of means, a ratio
    low: float
    high: float

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    @property
    def excludes_one(self) -> bool:
        return self.low > 1 or self.high < 1


NAN = Interval(math.nan, math.nan, math.nan)


def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, c, d = 1e-300, 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 300):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= c * d
        if abs(c * d - 1.0) < 1e-14:
            break
    return result


def incomplete_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b), the regularised incomplete beta function."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    front = math.exp(
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    if x < (a + 1) / (a + b + 2):
        return front * _beta_fraction(a, b, x) / a
    return 1.0 - front * _beta_fraction(b, a, 1 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom (df need not be an integer: Welch)."""
    tail = 0.5 * incomplete_beta(df / 2, 0.5, df / (df + t * t))
    return 1 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The t with P(T <= t) = p."""
    if not 0 < p < 1 or not df > 0:
        raise ValueError(f"t_quantile needs 0 < p < 1 and df > 0, not p={p}, df={df}")
    low, high = -1.0, 1.0
    while t_cdf(low, df) > p:
        low *= 2
    while t_cdf(high, df) < p:
        high *= 2
    for _ in range(200):
        middle = (low + high) / 2
        low, high = (middle, high) if t_cdf(middle, df) < p else (low, middle)
    return (low + high) / 2


def _mean_var(values: Sequence[float]):
    values = [float(v) for v in values if not math.isnan(float(v))]
    n = len(values)
    mean = sum(values) / n if n else math.nan
    var = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else math.nan
    return n, mean, var


def mean_interval(values: Sequence[float], level: float = 0.95) -> Interval:
    """The mean and its t interval (NaN bounds with fewer than two values)."""
    n, mean, var = _mean_var(values)
    if n < 2:
        return Interval(mean, math.nan, math.nan)
    half = t_quantile(0.5 + level / 2, n - 1) * math.sqrt(var / n)
    return Interval(mean, mean - half, mean + half)


def difference_interval(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> Interval:
    """mean(a) - mean(b) with Welch's interval (unequal variances, Welch-Satterthwaite degrees of freedom)."""
    na, ma, va = _mean_var(a)
    nb, mb, vb = _mean_var(b)
    if na < 2 or nb < 2:
        return Interval(ma - mb, math.nan, math.nan)
    sa, sb = va / na, vb / nb
    if sa + sb == 0:  # every seed gave the same value in both: no spread to speak of
        return Interval(ma - mb, ma - mb, ma - mb)
    df = (sa + sb) ** 2 / (sa**2 / (na - 1) + sb**2 / (nb - 1))
    half = t_quantile(0.5 + level / 2, df) * math.sqrt(sa + sb)
    return Interval(ma - mb, ma - mb - half, ma - mb + half)


def ratio_interval(top: Sequence[float], bottom: Sequence[float], level: float = 0.95) -> Interval:
    """The geometric mean of top[i] / bottom[i] over paired seeds, with the t interval of the log-ratios."""
    logs = [
        math.log(t / b) for t, b in zip(top, bottom) if t > 0 and b > 0 and not math.isnan(t / b)
    ]
    if not logs:
        return NAN
    mean = mean_interval(logs, level)
    return Interval(*(math.exp(v) if not math.isnan(v) else math.nan for v in mean))

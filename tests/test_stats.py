"""rlsparsity.stats: intervals and the three-way verdict on hand-built inputs with exact answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rlsparsity import stats as S


def test_bits_roundtrip_and_errors():
    assert S.encode_bits([1.0, 0.0, 0.5, True, 0, 1]) == "100101"
    assert S.decode_bits("0110").tolist() == [0.0, 1.0, 1.0, 0.0]
    for bad in ("", "012", "1 0"):
        with pytest.raises(ValueError):
            S.decode_bits(bad)


def test_t_quantile():
    assert S.t975(1) == 12.7062 and S.t975(30) == 2.0423
    assert abs(S.t975(60) - 2.0003) < 2e-4 and abs(S.t975(1000) - 1.9623) < 2e-4


def test_mean_interval_exact():
    iv = S.mean_interval([0.1, 0.3])
    # mean 0.2, sd = sqrt(0.02), half = 12.7062 * sd / sqrt(2) = 12.7062 * 0.1
    assert iv.estimate == pytest.approx(0.2) and iv.n == 2
    assert iv.low == pytest.approx(0.2 - 1.27062) and iv.high == pytest.approx(0.2 + 1.27062)
    one = S.mean_interval([0.7, float("nan")])
    assert one.n == 1 and one.estimate == 0.7 and not one.defined
    assert S.mean_interval([]).n == 0
    flat = S.mean_interval([0.5, 0.5, 0.5])
    assert (flat.low, flat.high) == (0.5, 0.5)


def test_mean_interval_of_a_share_stays_in_0_1():
    iv = S.mean_interval([0.9, 0.99])  # mean 0.945, half 12.7062 * 0.045 = 0.5718
    assert iv.high == pytest.approx(0.945 + 0.571779) and iv.low == pytest.approx(0.945 - 0.571779)
    cut = S.mean_interval([0.9, 0.99], share=True)
    assert cut.estimate == pytest.approx(0.945) and cut.high == 1.0 and cut.low == pytest.approx(0.373221)
    low = S.mean_interval([0.01, 0.1], share=True)  # mean 0.055, half 0.5718: low cut to 0
    assert low.low == 0.0 and low.high == pytest.approx(0.055 + 0.571779)
    inside = S.mean_interval([0.4, 0.5, 0.6], share=True)  # an interval inside [0, 1] is untouched
    assert (inside.low, inside.high) == (S.mean_interval([0.4, 0.5, 0.6]).low, S.mean_interval([0.4, 0.5, 0.6]).high)
    assert cut.fmt() == "94.5 [37.3, 100.0]"


def test_paired_bootstrap_degenerate_and_exact_support():
    iv = S.paired_bootstrap([("1111", "0011"), ("1100", "0000")])  # diffs (1,1,0,0) twice
    assert iv.estimate == 0.5 and iv.n == 2 and 0.0 <= iv.low < 0.5 < iv.high <= 1.0
    # no difference on any problem of any unit -> the interval is the point 0
    assert S.paired_bootstrap([("11", "11"), ("00", "00")]) == S.Interval(0.0, 0.0, 0.0, 2, S.BOOTSTRAP)
    # one unit, diffs (+1, 0): replicate mean in {0, 0.5, 1} with prob 1/4, 1/2, 1/4 -> 95 % interval [0, 1]
    iv = S.paired_bootstrap([("10", "00")])
    assert (iv.estimate, iv.low, iv.high) == (0.5, 0.0, 1.0)
    # fixed seed: identical result twice
    a = S.paired_bootstrap([("1010110", "0010100"), ("1110001", "0110000")])
    assert a == S.paired_bootstrap([("1010110", "0010100"), ("1110001", "0110000")])
    assert a.low <= a.estimate <= a.high


def test_paired_bootstrap_is_paired():
    # a and b differ on 1 of 1000 problems; unpaired accuracies ~0.5 ± 3 pts would straddle 0,
    # the paired interval of the difference cannot go below 0
    rng = np.random.default_rng(0)
    b = "".join(rng.choice(["0", "1"], 1000))
    i = b.index("0")
    a = b[:i] + "1" + b[i + 1:]
    iv = S.paired_bootstrap([(a, b)])
    assert iv.estimate == pytest.approx(0.001) and iv.low >= 0.0 and iv.high <= 0.003


def test_paired_bootstrap_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="length"):
        S.paired_bootstrap([("101", "10")])
    with pytest.raises(ValueError, match="different numbers"):
        S.paired_bootstrap([("10", "10"), ("101", "101")])


def test_accuracy_difference_falls_back_without_bits():
    iv = S.accuracy_difference([("10", "00"), (None, "00")], [(0.5, 0.1), (0.3, 0.1)])
    assert iv.method.startswith(S.T_INTERVAL) and iv.estimate == pytest.approx(0.3)
    assert S.accuracy_difference([("10", "00")], [(0.5, 0.0)]).method == S.BOOTSTRAP


@pytest.mark.parametrize("low,high,expect_ge,expect_le", [
    (0.75, 0.9, S.HOLDS, S.FAILS), (0.5, 0.65, S.FAILS, S.HOLDS), (0.6, 0.8, S.INCONCLUSIVE, S.INCONCLUSIVE)])
def test_decide(low, high, expect_ge, expect_le):
    iv = S.Interval((low + high) / 2, low, high, 3, "t")
    assert S.decide(iv, 0.7, ">=") == expect_ge
    assert S.decide(iv, 0.7, "<=") == expect_le


def test_decide_undefined_and_within():
    assert S.decide(S.Interval(0.9, math.nan, math.nan, 1, "t"), 0.7) == S.INCONCLUSIVE
    assert S.decide(S.Interval(math.nan, math.nan, math.nan, 0, "t"), 0.7) == S.NODATA
    mk = lambda lo, hi: S.Interval((lo + hi) / 2, lo, hi, 2, "t")  # noqa: E731
    assert S.decide_within(mk(-0.02, 0.03), -0.05, 0.05) == S.HOLDS
    assert S.decide_within(mk(0.06, 0.2), -0.05, 0.05) == S.FAILS
    assert S.decide_within(mk(0.0, 0.2), -0.05, 0.05) == S.INCONCLUSIVE
    with pytest.raises(ValueError):
        S.decide(mk(0, 1), 0.5, ">")


def test_combine():
    assert S.combine([S.HOLDS, S.HOLDS, S.NODATA]) == S.HOLDS
    assert S.combine([S.FAILS]) == S.FAILS
    assert S.combine([S.HOLDS, S.FAILS, S.INCONCLUSIVE]) == S.DEPENDS
    assert S.combine([S.HOLDS, S.INCONCLUSIVE]) == S.INCONCLUSIVE
    assert S.combine([S.NODATA]) == S.combine([]) == S.NODATA


def test_binomial_half_width_matches_the_config_note():
    assert S.binomial_half_width(0.2, 1000) == pytest.approx(0.0248, abs=1e-4)

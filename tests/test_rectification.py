import itertools
import math

import mpmath
import pytest

from lightning_ranger import rectification, rho_inf


@pytest.mark.parametrize("beta2", [0.0, 0.5, 0.9, 0.99, 0.999, 0.9999])
def test_rho_inf_closed_form(beta2):
    assert rho_inf(beta2) == pytest.approx(2.0 / (1.0 - beta2) - 1.0, rel=1e-15)
    assert rho_inf(beta2) == pytest.approx((1.0 + beta2) / (1.0 - beta2), rel=1e-12)


@pytest.mark.parametrize("beta2", [0.5, 0.8, 0.9, 0.999])
def test_first_steps_closed_forms(beta2):
    # rho_1 = 1 and rho_2 = (1 + 3 beta2) / (1 + beta2): both below 4, so r_t is 0.
    assert rectification(1, beta2) == (pytest.approx(1.0, rel=1e-12), 0.0)
    rho_2, r_2 = rectification(2, beta2)
    assert rho_2 == pytest.approx((1.0 + 3.0 * beta2) / (1.0 + beta2), rel=1e-12)
    assert r_2 == 0.0


@pytest.mark.parametrize("step", [5, 6, 10, 100, 2500])
def test_r_t_closed_form(step):
    beta2 = 0.999
    r_inf = 1999.0
    rho_t = r_inf - 2 * step * beta2**step / (1 - beta2**step)
    expected = math.sqrt((rho_t - 4) * (rho_t - 2) * r_inf / ((r_inf - 4) * (r_inf - 2) * rho_t))
    assert rectification(step, beta2) == (pytest.approx(rho_t, rel=1e-12), pytest.approx(expected))


@pytest.mark.parametrize("beta2", ["0.999", "0.99", "0.9", "0.8"])
@pytest.mark.parametrize("step", [2, 3, 5, 6, 7, 20, 1000])
def test_against_50_digit_arithmetic(step, beta2):
    with mpmath.workdps(50):
        b = mpmath.mpf(beta2)
        r_inf = 2 / (1 - b) - 1
        rho = r_inf - 2 * step * b**step / (1 - b**step)
        r = mpmath.sqrt((rho - 4) * (rho - 2) * r_inf / ((r_inf - 4) * (r_inf - 2) * rho))
        expected = (float(rho), float(r) if rho > 4 else 0.0)
    rho_t, r_t = rectification(step, float(beta2))
    assert rho_t == pytest.approx(expected[0], rel=1e-12)
    assert r_t == pytest.approx(expected[1], rel=1e-10)


def test_known_values_with_the_default_beta2():
    # beta2 = 0.999: rho_5 = 4.996 is rectified only with the paper's threshold 4, rho_6 = 5.994.
    assert rectification(5, 0.999)[0] == pytest.approx(4.995998, abs=1e-6)
    assert rectification(6, 0.999)[0] == pytest.approx(5.994164, abs=1e-6)
    assert rectification(5, 0.999)[1] == pytest.approx(0.0173115, abs=1e-7)


@pytest.mark.parametrize("beta2", [0.7, 0.9, 0.99, 0.999])
def test_limits_rho_increases_to_rho_inf_and_r_to_one(beta2):
    steps = [1, 2, 3, 5, 8, 13, 21, 50, 100, 1000, 10_000, 100_000]
    rhos, rs = zip(*(rectification(t, beta2) for t in steps), strict=True)
    # Strictly increasing until float64 cannot tell rho_t from rho_inf any more.
    assert all(a < b or b == rho_inf(beta2) for a, b in itertools.pairwise(rhos)), rhos
    assert all(a <= b for a, b in itertools.pairwise(rs)), rs
    assert all(rho <= rho_inf(beta2) for rho in rhos)
    assert rhos[-1] == pytest.approx(rho_inf(beta2), rel=1e-9)
    assert rs[-1] == pytest.approx(1.0, rel=1e-9)
    assert all(0.0 <= r <= 1.0 for r in rs)


def test_r_t_is_zero_where_undefined():
    # beta2 = 0.6 gives rho_inf = 4: rho_t never exceeds 4, r_t stays 0.
    assert all(rectification(t, 0.6)[1] == 0.0 for t in range(1, 200))
    assert rectification(1, 0.0) == (1.0, 0.0)


def test_float_step_equals_int_step():
    assert rectification(7.0, 0.99) == rectification(7, 0.99)


@pytest.mark.parametrize(
    ("step", "beta2", "error", "match"),
    [
        (0, 0.999, ValueError, r"`step` must be a float >= 1 \(steps count from 1\), got 0"),
        (-3, 0.999, ValueError, r"`step` must be a float >= 1 .*, got -3"),
        (float("nan"), 0.999, ValueError, r"`step` must be a float >= 1 .*, got nan"),
        ("1", 0.999, TypeError, r"`step` must be a float >= 1 .*, got '1'"),
        (True, 0.999, TypeError, r"`step` must be a float >= 1 .*, got True"),
        (1, 1.0, ValueError, r"`beta2` must be a float in \[0, 1\), got 1.0"),
        (1, -0.1, ValueError, r"`beta2` must be a float in \[0, 1\), got -0.1"),
        (1, None, TypeError, r"`beta2` must be a float in \[0, 1\), got None"),
    ],
)
def test_bad_input(step, beta2, error, match):
    with pytest.raises(error, match=match):
        rectification(step, beta2)

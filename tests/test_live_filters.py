"""One-Euro filter: exact first steps, EMA lag/jitter theory at beta=0, lag reduction with beta."""
import math

import numpy as np
import pytest

from ezvtb.live.filters import OneEuroFilter


def _run(f, xs, dt):
    return np.array([f(np.atleast_1d(x), i * dt)[0] for i, x in enumerate(xs)])


def test_first_sample_passes_through_and_hand_computed_second_step():
    f = OneEuroFilter(1, min_cutoff=1.0, beta=0.0, d_cutoff=1.0)
    assert f(np.array([0.25]), 0.0)[0] == 0.25
    # beta = 0: alpha = 2 pi fc dt / (1 + 2 pi fc dt)
    a = 2 * math.pi * 0.1 / (1 + 2 * math.pi * 0.1)
    got = f(np.array([1.25]), 0.1)[0]
    print("beta=0 second step", got, "expected", 0.25 + a)
    assert got == pytest.approx(0.25 + a, abs=1e-12)

    g = OneEuroFilter(1, min_cutoff=1.0, beta=1.0, d_cutoff=1.0)
    g(np.array([0.0]), 0.0)
    dx_hat = a * 10.0  # speed 10/s low-passed at d_cutoff = 1 Hz
    fc = 1.0 + dx_hat
    expected = 1.0 / (1.0 + 1.0 / (2 * math.pi * fc * 0.1))
    got = g(np.array([1.0]), 0.1)[0]
    print("beta=1 second step", got, "expected", expected)
    assert got == pytest.approx(expected, abs=1e-12)


def test_ramp_lag_matches_ema_theory_at_beta_zero_and_shrinks_with_beta():
    dt, slope = 1 / 120, 0.2
    t = np.arange(0, 8, dt)
    xs = slope * t
    lags = {}
    for beta in (0.0, 5.0):
        out = _run(OneEuroFilter(1, min_cutoff=1.0, beta=beta), xs, dt)
        lags[beta] = float(np.mean((xs[-120:] - out[-120:]) / slope))  # seconds behind, steady state
    theory = 1 / (2 * math.pi * 1.0)
    print(f"ramp lag: beta=0 {lags[0.0] * 1e3:.1f} ms (theory {theory * 1e3:.1f} ms), beta=5 {lags[5.0] * 1e3:.1f} ms")
    assert lags[0.0] == pytest.approx(theory, rel=0.01)
    assert lags[5.0] < 0.5 * lags[0.0]


def test_jitter_reduction_matches_ema_variance_and_beta_keeps_most_of_it():
    rng = np.random.default_rng(0)
    dt = 1 / 60
    xs = 0.5 + rng.normal(0, 0.02, 6000)
    out0 = _run(OneEuroFilter(1, min_cutoff=1.0, beta=0.0), xs, dt)
    out1 = _run(OneEuroFilter(1, min_cutoff=1.0, beta=1.0), xs, dt)
    a = 1 / (1 + 1 / (2 * math.pi * dt))
    theory = math.sqrt(a / (2 - a))  # std ratio of an EMA on white noise
    r0 = out0[120:].std() / xs[120:].std()
    r1 = out1[120:].std() / xs[120:].std()
    print(f"jitter std ratio: beta=0 {r0:.3f} (theory {theory:.3f}), beta=1 {r1:.3f}")
    assert r0 == pytest.approx(theory, rel=0.1)
    assert r1 < 0.35
    assert abs(out1[120:].mean() - 0.5) < 0.005


def test_step_response_fast_with_beta_and_settles():
    dt = 1 / 60
    xs = np.r_[np.zeros(30), np.ones(60)]
    slow = _run(OneEuroFilter(1, min_cutoff=1.0, beta=0.0), xs, dt)
    fast = _run(OneEuroFilter(1, min_cutoff=1.0, beta=2.0), xs, dt)
    # 100 ms after the step
    print("100 ms after a 0->1 step:", slow[36], fast[36])
    assert fast[36] > slow[36] + 0.2
    assert fast[-1] == pytest.approx(1.0, abs=0.02)
    assert np.all(np.diff(fast[30:]) >= -1e-12)  # no overshoot wiggle


def test_vector_parameters_are_per_value_and_independent():
    f = OneEuroFilter(3, min_cutoff=[0.5, 1.0, 4.0], beta=0.0)
    f(np.zeros(3), 0.0)
    y = f(np.ones(3), 0.05)
    expected = [1 / (1 + 1 / (2 * math.pi * fc * 0.05)) for fc in (0.5, 1.0, 4.0)]
    np.testing.assert_allclose(y, expected, rtol=1e-12)


def test_timestamp_not_advancing_returns_previous_and_reset():
    f = OneEuroFilter(2)
    a = f(np.array([0.0, 1.0]), 1.0)
    b = f(np.array([5.0, 5.0]), 1.0)
    np.testing.assert_array_equal(a, b)
    b[0] = 99  # the caller owns the returned array
    np.testing.assert_array_equal(f(np.array([5.0, 5.0]), 0.5), a)
    f.reset()
    np.testing.assert_array_equal(f(np.array([3.0, 4.0]), 2.0), [3.0, 4.0])


@pytest.mark.parametrize("kw, word", [({"min_cutoff": 0}, "min_cutoff"), ({"beta": -1}, "beta"),
                                      ({"d_cutoff": float("nan")}, "d_cutoff"), ({"min_cutoff": [1, 2]}, "min_cutoff")])
def test_bad_parameters(kw, word):
    with pytest.raises(ValueError, match=word):
        OneEuroFilter(3, **kw)


def test_bad_input_keeps_filter_usable():
    f = OneEuroFilter(3)
    f(np.zeros(3), 0.0)
    with pytest.raises(ValueError, match=r"x: expected shape \(3,\)"):
        f(np.zeros(4), 0.1)
    with pytest.raises(ValueError, match="t: expected a finite"):
        f(np.zeros(3), float("nan"))
    assert f(np.ones(3), 0.1).shape == (3,)

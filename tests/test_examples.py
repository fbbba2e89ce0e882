"""The example scripts leave the checkout as they found it: every committed kernel under
generated/ is the golden of a spec in examples/specs/ (so a test regenerates and compares it),
and an example without such a spec writes its kernel elsewhere (examples/input_optimization.py:
a temporary directory)."""
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

import symbp

ROOT = Path(__file__).resolve().parent.parent


def _spec_names():
    names = {symbp.load(p).name for p in (ROOT / "examples" / "specs").glob("*.toml")}
    names |= {symbp.load_graph(p).name for p in (ROOT / "examples" / "specs" / "graphs").glob("*.toml")}
    return names


def _committed_kernel_dirs():
    out = subprocess.run(["git", "ls-files", "generated"], cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip("not a git checkout")
    return sorted({Path(line).parts[1] for line in out.stdout.splitlines() if line.count("/") >= 2})


def test_every_committed_kernel_has_a_spec():
    dirs = _committed_kernel_dirs()
    assert dirs, "no committed kernels found"
    missing = [d for d in dirs if d not in _spec_names()]
    assert missing == [], f"committed kernels no golden test covers: generated/{missing}"


def _snapshot(folder):
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and "__pycache__" not in p.parts}


@pytest.mark.jit
def test_input_optimization_writes_nothing_into_the_checkout(tmp_path):
    before = _snapshot(ROOT / "generated")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    env.pop("SYMBP_GENERATED", None)
    run = subprocess.run([sys.executable, str(ROOT / "examples" / "input_optimization.py"),
                          "--plot", str(tmp_path / "plot.png")],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "goal reached" in run.stdout
    assert _snapshot(ROOT / "generated") == before
    assert not (ROOT / "generated" / "bars").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name != "plot.png"] == []

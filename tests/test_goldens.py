"""The generated kernels of the examples are committed under generated/; regenerating them from
their specs must give the same bytes (deterministic output). After an intended change of the
emitter, refresh them with:  SYMBP_UPDATE_GOLDENS=1 python -m pytest tests/test_goldens.py
"""
import os
from pathlib import Path

import pytest

import symbp
from symbp.codegen.graph_emit import emit_mlp
from symbp.codegen.load import write

ROOT = Path(__file__).resolve().parent.parent
SPECS = sorted((ROOT / "examples" / "specs").glob("*.toml"))
CASES = [(spec, dtype) for spec in SPECS for dtype in ("float64", "float32")]


@pytest.mark.parametrize("spec,dtype", CASES, ids=[f"{s.stem}-{d}" for s, d in CASES])
def test_golden_bytes(spec, dtype):
    net = symbp.load(spec)
    source = emit_mlp(symbp.derive(net), "cpu", dtype)
    golden = ROOT / "generated" / net.name / f"cpu_{dtype}.py"
    if os.environ.get("SYMBP_UPDATE_GOLDENS"):
        golden.unlink(missing_ok=True)     # replaced whatever it holds: no .edited backup
        write(golden, source)
    assert golden.exists(), f"missing golden {golden}: run with SYMBP_UPDATE_GOLDENS=1"
    assert golden.read_bytes() == source.encode("utf-8"), f"{golden} differs from a fresh emission"


def test_emission_is_deterministic_across_derivations():
    net = symbp.load(SPECS[0])
    assert emit_mlp(symbp.derive(net), "cpu", "float64") == emit_mlp(symbp.derive(net), "cpu", "float64")


def test_generate_writes_the_golden_bytes(tmp_path):
    net = symbp.load(ROOT / "examples" / "specs" / "xor.toml")
    k = symbp.generate(symbp.derive(net), out_dir=tmp_path, jit=False)
    assert k.path == tmp_path / "xor" / "cpu_float64.py"
    assert k.path.read_bytes() == (ROOT / "generated" / "xor" / "cpu_float64.py").read_bytes()
    assert [p.name for p in k.path.parent.iterdir() if p.suffix == ".tmp"] == []

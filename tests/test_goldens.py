"""The generated kernels of the examples are committed under generated/; regenerating them from
their specs must give the same bytes (deterministic output). After an intended change of the
emitter, refresh them with:  SYMBP_UPDATE_GOLDENS=1 python -m pytest tests/test_goldens.py
"""
import os
import re
import warnings
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


def _commented_assignments(source, name):
    """(comment's right side, code's right side) of each comment "# <name> = ..." followed by
    the assignment it describes (of <name>, or of its buffer in a tiled CUDA kernel)."""
    lines = [line.strip() for line in source.splitlines()]
    head = f"# {name} = "
    return [(c[len(head):].split("   [")[0], code.split(" = ", 1)[1])
            for c, code in zip(lines, lines[1:]) if c.startswith(head) and " = " in code and code[0] != "#"]


def _as_comment(code):
    """Printed code in a comment's spelling: no indices, no typed constants or identifier
    prefixes, the batch size Bf as B."""
    code = re.sub(r"np\.float32\(([^()]*)\)", r"\1", code)
    code = re.sub(r"\[[^\]]*\]", "", code)
    code = re.sub(r"\b(\d+)\.0\b", r"\1", code)
    code = re.sub(r"\bv_", "", code)
    return code.lower().replace("bf", "b").replace(" ", "")


# (spec, output delta's comment): swish + sse keeps the factored 2 (a - y) a pass chose, and
# sigmoid + bce cancels to (a - y)/B
COMMENTED = [("swish", "2*(a2 - y)"), ("xor", "(a2 - y)/B")]


@pytest.mark.parametrize("spec,expected", COMMENTED)
def test_comments_print_the_expression_the_code_prints(spec, expected):
    from symbp.codegen.cuda import emit_cuda
    d = symbp.derive(symbp.load(ROOT / "examples" / "specs" / f"{spec}.toml"))
    sources = [(emit_mlp(d, "cpu", dt), "g_z2") for dt in ("float64", "float32")]
    with warnings.catch_warnings():      # fuse_width=1: the tiled kernels, announced by a warning
        warnings.simplefilter("ignore")
        sources += [(emit_cuda(d, dt, fuse_width=fw), "delta2") for dt in ("float64", "float32") for fw in (128, 1)]
    for source, name in sources:
        pairs = _commented_assignments(source, name)
        assert pairs, f"no commented assignment of {name}"
        for comment, code in pairs:
            assert comment == expected
            assert _as_comment(code) == comment.lower().replace(" ", "")

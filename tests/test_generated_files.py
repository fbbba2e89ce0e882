"""Generated files are sealed and checked, and a damaged Numba cache heals itself.

- Every generated module (MLP, graph, CUDA) starts with a seal line holding the spec digest and
  the sha256 of the rest of the file. A file edited by hand is never imported (one-line
  GeneratedFileError, the edited code not executed), nor one from another spec; ``generate``
  over an edited (or unsealed) file keeps it as ``<file>.edited`` (then ``.edited.1``, ...),
  writes the generated code and says so in one stderr line; regenerating an intact file says
  nothing and keeps no backup.
- A truncated ``.nbc`` and a garbage ``.nbi`` in the kernel's ``__pycache__`` (written by a first
  process) do not make the next process fail: the entries are discarded, the functions compiled
  anew, one stderr line says so; a third process loads the repaired cache silently.
"""
import hashlib
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import symbp
from symbp.codegen import load
from symbp.codegen.cuda_kernel import generate_cuda
from symbp.codegen.graph_emit import generate_graph
from symbp.codegen.load import GeneratedFileError, import_module
from symbp.model.graph import load_graph
from symbp.derivation.graph import derive_graph

ROOT = Path(__file__).resolve().parent.parent
XOR = ROOT / "examples" / "specs" / "xor.toml"
GATED = ROOT / "examples" / "specs" / "graphs" / "gated.toml"


def make(kind, out):
    """(kernel, spec digest) of a freshly generated (not compiled) kernel of each kind."""
    if kind == "graph":
        d = derive_graph(load_graph(GATED))
        return generate_graph(d, out_dir=out, jit=False), d.graph.digest
    d = symbp.derive(symbp.load(XOR))
    if kind == "cuda":
        return generate_cuda(d, "float64", out_dir=out, jit=False), d.network.digest
    return symbp.generate(d, out_dir=out, jit=False), d.network.digest


KINDS = ["mlp", "graph", "cuda"]


def edit(path, marker="EDITED"):
    """A hand edit of the body: a line that would record that the file was executed."""
    text = path.read_text()
    head, body = text.split("\n", 1)
    path.write_text(head + "\n" + body.replace("\nimport math\n", f"\nimport math\nimport builtins\n"
                                                                    f"builtins.{marker} = True\n", 1))
    assert path.read_text() != text


@pytest.mark.parametrize("kind", KINDS)
def test_generated_file_carries_its_seal(tmp_path, kind):
    k, digest = make(kind, tmp_path)
    data = k.path.read_bytes()
    first, body = data.split(b"\n", 1)
    assert first.decode() == (f"# symbp seal: spec sha256 {digest}, "
                              f"body sha256 {hashlib.sha256(body).hexdigest()}")
    assert body.startswith(b'"""symbp ')          # the module docstring follows the seal line
    assert load.seal_problem(data, digest) is None


@pytest.mark.parametrize("kind", KINDS)
def test_an_edited_file_is_never_imported(tmp_path, kind, monkeypatch):
    import builtins
    k, digest = make(kind, tmp_path)
    edit(k.path)
    monkeypatch.delattr(builtins, "EDITED", raising=False)
    with pytest.raises(GeneratedFileError) as e:
        import_module(k.path, f"symbp_test_edited_{kind}", jit=False, digest=digest)
    msg = str(e.value)
    assert msg.startswith(f"{k.path.resolve()}: was edited after symbp generated it") and "\n" not in msg
    assert not hasattr(builtins, "EDITED")           # the edited code did not run
    # without a seal line at all, and with a seal of another spec: refused too
    k.path.write_text(k.path.read_text().split("\n", 1)[1])
    with pytest.raises(GeneratedFileError, match="has no symbp seal line"):
        import_module(k.path, f"symbp_test_unsealed_{kind}", jit=False)
    k, _ = make(kind, tmp_path)
    with pytest.raises(GeneratedFileError, match=r"was generated from another spec \(sha256 "):
        import_module(k.path, f"symbp_test_other_{kind}", jit=False, digest="0" * 64)


@pytest.mark.parametrize("kind", KINDS)
def test_generate_replaces_an_edited_file_and_keeps_it(tmp_path, kind, capfd):
    k, _ = make(kind, tmp_path)
    fresh = k.path.read_bytes()
    capfd.readouterr()
    make(kind, tmp_path)                              # intact: nothing said, nothing kept
    assert capfd.readouterr().err == ""
    assert sorted(p.name for p in k.path.parent.iterdir() if ".edited" in p.name) == []
    edit(k.path)
    edited = k.path.read_bytes()
    make(kind, tmp_path)
    err = capfd.readouterr().err
    backup = k.path.with_name(k.path.name + ".edited")
    assert err == (f"symbp: warning: {k.path}: was edited after symbp generated it (its body does not "
                   f"match the sha256 in its seal line); replaced by the generated code, the old file "
                   f"is kept as {backup}\n")
    assert k.path.read_bytes() == fresh and backup.read_bytes() == edited
    edit(k.path, "EDITED_AGAIN")                      # a second edit does not overwrite the first backup
    make(kind, tmp_path)
    assert f"kept as {backup}.1" in capfd.readouterr().err
    assert backup.read_bytes() == edited and k.path.read_bytes() == fresh
    k.path.write_bytes(fresh.split(b"\n", 1)[1])      # an unsealed file (an older symbp's) is kept too
    make(kind, tmp_path)
    assert "has no symbp seal line" in capfd.readouterr().err
    assert Path(f"{backup}.2").read_bytes() == fresh.split(b"\n", 1)[1]


def test_cli_generate_over_an_edited_file_says_one_line(tmp_path, capsys):
    from symbp.cli.commands import main
    assert main(["generate", str(XOR), "--out", str(tmp_path), "--no-jit"]) == 0
    path = tmp_path / "xor" / "cpu_float64.py"
    edit(path)
    capsys.readouterr()
    assert main(["generate", str(XOR), "--out", str(tmp_path), "--no-jit"]) == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"symbp: warning: {path}: was edited")
    assert load.seal_problem(path.read_bytes()) is None


# ---------------------------------------------------------------------------------------------
# a damaged Numba cache
# ---------------------------------------------------------------------------------------------

SCRIPT = textwrap.dedent("""
    import numpy as np, symbp
    d = symbp.derive(symbp.mlp([2, 2, 1], ["tanh", "sigmoid"], "bce", name="damaged"))
    k = symbp.generate(d, out_dir={out!r}).compile()
    p = k.init_params(0)
    X = np.array([[0.5, -1.0], [2.0, 0.25]]); Y = np.array([[1.0], [0.0]])
    # the entry points the Kernel calls (each links the functions it calls into its own code)
    fs = [k.module.forward_split, k.module.loss_and_grad_split, k.module.loss_and_input_grad,
          k.module.sgd_step_split]
    print(repr(k.loss_and_grad(p, X, Y)[0]), repr(float(k.forward(p, X)[0, 0])),
          sum(len(f.stats.cache_hits) for f in fs))
""")


def run(out):
    return subprocess.run([sys.executable, "-c", SCRIPT.format(out=str(out))], capture_output=True, text=True)


@pytest.mark.jit
def test_a_damaged_numba_cache_is_discarded_and_rebuilt(tmp_path):
    first = run(tmp_path)
    assert first.returncode == 0, first.stderr
    cache = tmp_path / "damaged" / "__pycache__"
    nbc = sorted(cache.glob("cpu_float64.loss_and_grad_split-*.nbc"))
    nbi = sorted(cache.glob("cpu_float64.forward_split-*.nbi"))
    assert nbc and nbi
    nbc[0].write_bytes(nbc[0].read_bytes()[:40])      # truncated
    nbi[0].write_bytes(b"garbage\x00" * 16)            # not a pickle at all
    second = run(tmp_path)
    assert second.returncode == 0, second.stderr
    lines = second.stderr.splitlines()
    warned = [line for line in lines if line.startswith("symbp: warning: ")]
    assert len(warned) == 1, second.stderr            # said once, though two entries were bad
    assert "Numba's cache entry for" in warned[0] and warned[0].endswith("discarded it, compiling anew")
    assert second.stdout.split()[:2] == first.stdout.split()[:2]     # the same numbers
    third = run(tmp_path)
    assert third.returncode == 0 and third.stderr == "", third.stderr
    assert third.stdout.split()[:2] == first.stdout.split()[:2]
    assert int(third.stdout.split()[2]) == 4          # every entry point from the repaired cache

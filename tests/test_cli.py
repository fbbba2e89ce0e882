"""The command line through its public entry point (symbp.cli.main and the `symbp` script)."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from symbp.cli import main
from symbp.simplify import PASSES

ROOT = Path(__file__).resolve().parent.parent
XOR = str(ROOT / "examples" / "specs" / "xor.toml")


def test_derive_prints_the_equations(capsys):
    assert main(["derive", XOR]) == 0
    out = capsys.readouterr().out
    assert "delta2 = (a2 - y)/B" in out
    assert "delta1 = a1*ga1*(1 - a1)" in out
    assert "gW1 = sum_s delta1 a0^T" in out


def test_derive_dump_shows_every_pass_in_order(capsys):
    assert main(["derive", XOR, "--dump"]) == 0
    out = capsys.readouterr().out
    # the output delta of sigmoid + bce: derived, collapsed, then cancelled to a - y
    lines = [l for l in out.splitlines() if l.strip().startswith("delta2[s, j] [")]
    stages = [l.split("[", 2)[2].split("]")[0] for l in lines]
    order = [p.name for p in PASSES]
    assert stages[0] == "derived" and stages[-1] in order
    assert [order.index(s) for s in stages[1:]] == sorted(order.index(s) for s in stages[1:])
    assert lines[-1].endswith("(a2[s, j] - y[s, j])/B")
    assert "f'(z) [forward_outputs]: a*(1 - a)" in out


def test_derive_latex_writes_a_document(tmp_path, capsys):
    tex = tmp_path / "xor.tex"
    assert main(["derive", XOR, "--latex", str(tex)]) == 0
    text = tex.read_text()
    assert text.startswith("\\documentclass") and text.rstrip().endswith("\\end{document}")
    assert r"\delta^{[2]} = \frac{a^{[2]} - y}{B}" in text


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex not installed")
def test_derive_latex_compiles(tmp_path):
    tex = tmp_path / "xor.tex"
    assert main(["derive", XOR, "--latex", str(tex)]) == 0
    run = subprocess.run(["pdflatex", "-halt-on-error", "-interaction=nonstopmode", tex.name],
                         cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-2000:]


def test_generate_and_check_without_jit(tmp_path, capsys):
    assert main(["generate", XOR, "--out", str(tmp_path), "--no-jit"]) == 0
    assert (tmp_path / "xor" / "cpu_float64.py").exists()
    assert main(["check", XOR, "--out", str(tmp_path), "--no-jit"]) == 0
    out = capsys.readouterr().out
    assert "W1" in out and "max error" in out


@pytest.mark.parametrize("argv,message", [
    (["derive", "no/such/file.toml"], "cannot read the spec file"),
    (["generate", XOR, "--dtype", "float16", "--no-jit"], "dtype: expected one of"),
    (["derive", XOR, "--latex", "x.tex", "--notation", "klingon"], "unknown notation 'klingon'"),
])
def test_user_errors_are_one_line_and_exit_2(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    assert main(argv + (["--out", str(tmp_path / "gen")] if argv[0] == "generate" else [])) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("symbp: error: ") and message in err
    assert "Traceback" not in err
    assert not (tmp_path / "gen").exists() and not (tmp_path / "x.tex").exists()


@pytest.mark.jit
def test_demo_runs_end_to_end(tmp_path):
    """The README's main command: the console script, on a fresh output directory."""
    exe = shutil.which("symbp")
    cmd = [exe, "demo", "--out", str(tmp_path)] if exe else [sys.executable, "-m", "symbp", "demo", "--out", str(tmp_path)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    out = run.stdout
    assert "sigmoid'(z) = exp(-z)/(1 + exp(-z))**2  ->  a*(1 - a)" in out
    assert "delta2 = (a2 - y)/B" in out
    assert "4/4 points classified right." in out
    assert (tmp_path / "xor" / "cpu_float64.py").read_bytes() == (ROOT / "generated" / "xor" / "cpu_float64.py").read_bytes()


def test_toy_spec_with_the_new_keys_derives_generates_and_warns_in_one_line(tmp_path, capsys):
    """relu_at_zero, bias = false and allow_any_output from a spec file through the command line:
    the OutputRangeWarning is one 'symbp: warning:' line, and the kernel compiles (its warm-up
    point, a = 0, is outside the loss's domain)."""
    spec = tmp_path / "toy.toml"
    spec.write_text('[network]\nname = "toy"\ninputs = 2\nrelu_at_zero = 1\n'
                    '[[layer]]\nunits = 1\nactivation = "relu"\nbias = false\n'
                    '[loss]\nkind = "bce"\nallow_any_output = true\n')
    assert main(["derive", str(spec)]) == 0
    out, err = capsys.readouterr()
    assert "z1 = W1 a0\n" in out and "Heaviside(z1, 1)" in out
    assert err.splitlines() == [f"symbp: warning: {spec}: loss.allow_any_output: loss 'bce' after a 'relu' "
                                "output: outputs may leave (0, 1), where the loss is undefined (the log "
                                "of a non-positive number)"]
    assert main(["generate", str(spec), "--out", str(tmp_path / "gen"), "--no-jit"]) == 0
    assert (tmp_path / "gen" / "toy" / "cpu_float64.py").exists()

"""The vectorized example f(x, W) = ||W x||^2 from the command line (symbp wx-norm): SymPy's
matrix-symbol gradients, the slides' numbers (equal to examples/wx_norm.py's), any shape, the
LaTeX/PDF handout, and one-line errors."""
import os
import re
import shutil
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest
import sympy as sp

from symbp.cli.commands import main
from symbp.derivation.wx_norm import WxNormError, parse_numbers, wx_norm

ROOT = Path(__file__).resolve().parent.parent
R = sp.Rational


def test_gradients_are_sympys_matrix_derivatives():
    r = wx_norm([[1, 2]], [3, 4])
    m, n = sp.symbols("m n", integer=True, positive=True)
    W, x, q = sp.MatrixSymbol("W", m, n), sp.MatrixSymbol("x", n, 1), sp.MatrixSymbol("q", m, 1)
    assert r.dW == 2 * W * x * x.T and r.dx == 2 * W.T * W * x
    assert r.dW_q == 2 * q * x.T and r.dx_q == 2 * W.T * q


def test_the_slides_numbers_exactly():
    r = wx_norm([[0.1, 0.5], [-0.3, 0.8]], [0.2, 0.4])
    assert list(r.q) == [R(11, 50), R(13, 50)] and r.value == R(29, 250)
    assert r.gW == sp.Matrix([[R(11, 125), R(22, 125)], [R(13, 125), R(26, 125)]])
    assert r.gx == sp.Matrix([R(-14, 125), R(159, 250)])
    assert r.fd_error < 1e-8


def test_a_rectangular_W_keeps_the_shapes():
    W, x = [[1, 2, 3], [4, 5, 6]], [1, 0, -1]
    r = wx_norm(W, x)
    Wm, xm = sp.Matrix(W), sp.Matrix(x)
    q = Wm * xm
    assert r.gW.shape == (2, 3) and r.gx.shape == (3, 1)
    assert r.gW == 2 * q * xm.T and r.gx == 2 * Wm.T * q      # checked against the matrix products
    assert r.fd_error < 1e-6


def test_cli_numbers_equal_the_example_script(tmp_path, capsys):
    assert main(["wx-norm"]) == 0
    out = capsys.readouterr().out
    exact = re.search(r"^exact: (q = .*)$", out, re.M).group(1)
    run = subprocess.run([sys.executable, str(ROOT / "examples" / "wx_norm.py"), str(tmp_path)],
                         capture_output=True, text=True, timeout=600, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    example = re.search(r"^\s+(q = \[.*)$", run.stdout, re.M).group(1)
    assert exact == example
    for shown in ("q = W x       = [0.22, 0.26]", "f = q^T q     = 0.116",
                  "df/dW = 2 q x^T = [[0.088, 0.176], [0.104, 0.208]]", "df/dx = 2 W^T q = [-0.112, 0.636]"):
        assert shown in out


def test_cli_takes_W_and_x(capsys):
    assert main(["wx-norm", "--W", "1,2,3;4,5,6", "--x", "1,0,-1", "--decimals", "2"]) == 0
    out = capsys.readouterr().out
    assert "df/dW = 2 q x^T = [[-4, 0, 4], [-4, 0, 4]]   (shape 2 x 3, as W)" in out
    assert "df/dx = 2 W^T q = [-20, -28, -36]   (shape 3, as x)" in out


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex not installed")
def test_cli_latex_and_pdf(tmp_path, capsys):
    tex = tmp_path / "wx.tex"
    assert main(["wx-norm", "--latex", str(tex), "--pdf"]) == 0
    text = tex.read_text()
    assert "seed" not in text.lower() and "Multi-Layer Networks" in text
    assert r"\begin{bmatrix} 0.088 & 0.176 \\ 0.104 & 0.208 \end{bmatrix}" in text
    assert r"\begin{tikzpicture}" in text                     # 2 x 2: the scalar circuit too
    assert tex.with_suffix(".pdf").read_bytes().startswith(b"%PDF")
    assert f"wrote {tex.with_suffix('.pdf')}" in capsys.readouterr().out


def test_large_W_has_no_circuit_picture():
    r = wx_norm([[1, 2, 3], [4, 5, 6], [7, 8, 9]], [1, 1, 1])
    assert r"\begin{tikzpicture}" not in r.document()


def test_parse_numbers_without_eval():
    assert parse_numbers("0.1, 1/3;-2,3e-1", "--W") == [[Fraction(1, 10), Fraction(1, 3)],
                                                         [Fraction(-2), Fraction(3, 10)]]
    with pytest.raises(WxNormError, match="is not a number"):
        parse_numbers("__import__('os')", "--W")


@pytest.mark.parametrize("argv, message", [
    (["--W", "1,2;3"], "W: rows of different lengths (2, 1)"),
    (["--x", "1,2,3"], "x: expected 2 entries (W has 2 columns), got 3"),
    (["--W", "1,a"], "--W: 'a' is not a number"),
    (["--x", "1/0,1"], "--x: '1/0' has a zero denominator"),
    (["--x", "1;2"], "--x: expected one row of numbers"),
    (["--pdf"], "--pdf needs --latex FILE"),
    (["--decimals", "13"], "--decimals: expected an integer from 0 to 12"),
])
def test_cli_mistakes_are_one_line(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    assert main(["wx-norm"] + argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("symbp: error: wx-norm: ") and message in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []

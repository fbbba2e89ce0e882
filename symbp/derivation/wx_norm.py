"""The vectorized example of the CS231n-style slides ("Multi-Layer Networks & Back-Propagation"):
f(x, W) = ||W x||^2 with q = W x, whose gradients are df/dW = 2 q x^T and df/dx = 2 W^T q.

Contract: ``wx_norm(W, x) -> WxNorm``. ``W`` is a list of rows (m rows of n numbers), ``x`` a
list of n numbers; numbers are ints, floats (by their shortest repr, 0.1 -> 1/10), Fractions or
SymPy Rationals, so the arithmetic is exact. SymPy derives the gradients with matrix symbols
(``sympy.diff`` of tr((W x)^T (W x)) with respect to the MatrixSymbols W of shape m x n and x of
shape n x 1: 2 W x x^T and 2 W^T W x, i.e. 2 q x^T and 2 W^T q once W x is named q); they are
then evaluated at the numbers. ``WxNorm`` holds the symbolic results (``dW``, ``dx``, ``dW_q``,
``dx_q``), the exact values (``q``, ``value``, ``gW``, ``gx``, SymPy matrices with the shapes of
q, W and x) and the largest difference to central finite differences in float64 (``fd_error``).
``text(decimals)`` is the plain-text report, ``document(decimals)`` the LaTeX handout
(templates/latex/circuit_wx_norm.tex.j2, with the scalar circuit of the same function when W has
at most ``MAX_CIRCUIT`` entries). Bad input raises ``WxNormError`` (a SymbpError, one line).

``add_command(subparsers)`` adds ``symbp wx-norm [--W ROWS] [--x VALUES] [--latex FILE] [--pdf]
[--decimals N]``: rows separated by ``;``, entries by ``,`` (integers, decimals or p/q); the
defaults are the slides' numbers W = [[0.1, 0.5], [-0.3, 0.8]], x = [0.2, 0.4].
"""
import re
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import sympy as sp

from ..errors import SymbpError

DEFAULT_W = "0.1,0.5;-0.3,0.8"
DEFAULT_X = "0.2,0.4"
MAX_CIRCUIT = 6          # entries of W up to which the scalar circuit is drawn too
MAX_SIZE = 12            # rows or columns
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?(/\d+)?")


class WxNormError(SymbpError, ValueError):
    def __init__(self, message):
        super().__init__(f"wx-norm: {message}")


def _exact(v, key):
    if isinstance(v, bool):
        raise WxNormError(f"{key}: expected a number, got {v!r}")
    if isinstance(v, (int, Fraction)):
        v = Fraction(v)
        return sp.Rational(v.numerator, v.denominator)
    if isinstance(v, float):
        if v != v or v in (float("inf"), float("-inf")):
            raise WxNormError(f"{key}: expected a finite number, got {v}")
        f = Fraction(repr(v))
        return sp.Rational(f.numerator, f.denominator)
    if isinstance(v, sp.Rational):
        return v
    raise WxNormError(f"{key}: expected a number, got {type(v).__name__} {v!r}")


def parse_numbers(text, key):
    """``"0.1,0.5;-0.3,0.8"`` -> [[Fraction, ...], ...] (rows split at ``;``), without eval."""
    rows = []
    for r, row in enumerate(text.split(";")):
        parts = [p.strip() for p in row.split(",")]
        if not any(parts):
            raise WxNormError(f"{key}: row {r + 1} is empty (rows are separated by ';', entries by ',')")
        vals = []
        for p in parts:
            if not _NUMBER.fullmatch(p):
                raise WxNormError(f"{key}: {p!r} is not a number (integer, decimal or p/q)")
            try:
                vals.append(Fraction(p))
            except ZeroDivisionError:
                raise WxNormError(f"{key}: {p!r} has a zero denominator") from None
        rows.append(vals)
    return rows


@dataclass(frozen=True)
class WxNorm:
    f: sp.Expr
    dW: sp.Expr
    dx: sp.Expr
    dW_q: sp.Expr
    dx_q: sp.Expr
    W: sp.Matrix
    x: sp.Matrix
    q: sp.Matrix
    value: sp.Rational
    gW: sp.Matrix
    gx: sp.Matrix
    fd_error: float

    def text(self, decimals=3):
        fmt = _num

        def vec(m):
            return "[" + ", ".join(fmt(v, decimals) for v in m) + "]"

        def mat(m):
            return "[" + ", ".join(vec(m.row(i)) for i in range(m.rows)) + "]"
        return "\n".join([
            "f(x, W) = ||W x||^2, q = W x  (the vectorized example of the slides "
            "\"Multi-Layer Networks & Back-Propagation\")",
            "SymPy, with matrix symbols (W: m x n, x: n x 1):",
            f"  df/dW = {self.dW} = {self.dW_q}   (with q = W x)",
            f"  df/dx = {self.dx} = {self.dx_q}",
            f"At W = {mat(self.W)}, x = {vec(self.x)}:",
            f"  q = W x       = {vec(self.q)}",
            f"  f = q^T q     = {fmt(self.value, decimals)}",
            f"  df/dW = 2 q x^T = {mat(self.gW)}   (shape {self.gW.rows} x {self.gW.cols}, as W)",
            f"  df/dx = 2 W^T q = {vec(self.gx)}   (shape {self.gx.rows}, as x)",
            f"exact: q = {list(self.q)}, f = {self.value}, df/dW = {self.gW.tolist()}, df/dx = {list(self.gx)}",
            f"central finite differences (float64): max |difference| = {self.fd_error:.2e}",
        ]) + "\n"

    def document(self, decimals=3):
        from ..model.circuit import circuit
        from ..output import environment

        def bmatrix(M, d):
            rows = [" & ".join(_num(v, d) for v in M.row(i)) for i in range(M.rows)]
            return r"\begin{bmatrix} " + r" \\ ".join(rows) + r" \end{bmatrix}"
        pic = ""
        if self.W.rows * self.W.cols <= MAX_CIRCUIT:
            m, n = self.W.shape
            terms = [" + ".join(f"W{i + 1}{j + 1}*x{j + 1}" for j in range(n)) for i in range(m)]
            at = {f"W{i + 1}{j + 1}": self.W[i, j] for i in range(m) for j in range(n)}
            at.update({f"x{j + 1}": self.x[j] for j in range(n)})
            c = circuit(" + ".join(f"({t})**2" for t in terms), at=at)
            pic = c.tikz(decimals)
        return environment().get_template("latex/circuit_wx_norm.tex.j2").render(
            f=sp.latex(self.f), dW=sp.latex(self.dW), dx=sp.latex(self.dx), dW_q=sp.latex(self.dW_q),
            dx_q=sp.latex(self.dx_q), W=bmatrix(self.W, decimals), x=bmatrix(self.x, decimals),
            q=bmatrix(self.q, decimals), value=_num(self.value, decimals),
            gW=bmatrix(self.gW, decimals), gx=bmatrix(self.gx, decimals),
            fd_error=sp.latex(sp.Float(self.fd_error, 2)), circuit_tikz=pic)


def _num(v, decimals):
    """A value as the shortest decimal that is exact within ``decimals`` places (0.1, 0.22,
    0.116), else rounded to ``decimals`` places."""
    from ..render.circuit import fmt
    for d in range(decimals + 1):
        s = fmt(v, d)
        if sp.Rational(s) == v:
            return s
    return fmt(v, decimals)


def derive_matrix_gradients():
    """SymPy's df/dW and df/dx of f = tr((W x)^T (W x)), W: m x n, x: n x 1, and their forms
    with q = W x. The trace makes the 1 x 1 product a scalar for any m and n."""
    m, n = sp.symbols("m n", integer=True, positive=True)
    W, x, q = sp.MatrixSymbol("W", m, n), sp.MatrixSymbol("x", n, 1), sp.MatrixSymbol("q", m, 1)
    f = sp.Trace((W * x).T * (W * x))
    dW, dx = sp.diff(f, W), sp.diff(f, x)
    return (m, n, W, x, q), (W * x).T * (W * x), dW, dx, dW.subs(W * x, q), dx.subs(W * x, q)


def wx_norm(W, x):
    if not isinstance(W, (list, tuple)) or not W or not all(isinstance(r, (list, tuple)) for r in W):
        raise WxNormError("W: expected a list of rows")
    if not isinstance(x, (list, tuple)) or not x:
        raise WxNormError("x: expected a list of numbers")
    n = len(W[0])
    if any(len(r) != n for r in W):
        raise WxNormError(f"W: rows of different lengths ({', '.join(str(len(r)) for r in W)})")
    if len(x) != n:
        raise WxNormError(f"x: expected {n} entries (W has {n} columns), got {len(x)}")
    if len(W) > MAX_SIZE or n > MAX_SIZE:
        raise WxNormError(f"W: at most {MAX_SIZE} rows and columns, got {len(W)} x {n}")
    Wv = sp.Matrix([[_exact(v, f"W[{i + 1}][{j + 1}]") for j, v in enumerate(r)] for i, r in enumerate(W)])
    xv = sp.Matrix([_exact(v, f"x[{j + 1}]") for j, v in enumerate(x)])
    (m_, n_, Ws, xs, qs), f, dW, dx, dW_q, dx_q = derive_matrix_gradients()
    qv = Wv * xv
    value = (qv.T * qv)[0, 0]
    sizes = {m_: Wv.rows, n_: Wv.cols}
    gW = sp.Matrix(dW_q.subs({qs: qv, xs: xv, **sizes}).doit())
    gx = sp.Matrix(dx_q.subs({qs: qv, Ws: Wv, **sizes}).doit())
    if gW.shape != Wv.shape or gx.shape != xv.shape:
        raise SymbpError(f"wx-norm: gradient shapes {gW.shape}, {gx.shape} differ from W {Wv.shape}, x {xv.shape}")
    return WxNorm(f, dW, dx, dW_q, dx_q, Wv, xv, qv, value, gW, gx, _fd_error(Wv, xv, gW, gx))


def _fd_error(Wv, xv, gW, gx, h=1e-6):
    """Largest |central difference - gradient| over every entry of W and x, in float64."""
    Wn, xn = np.array(Wv.tolist(), dtype=float), np.array(list(xv), dtype=float)

    def f(Wm, xm):
        return float(np.sum((Wm @ xm) ** 2))
    err = 0.0
    for idx in np.ndindex(*Wn.shape):
        E = np.zeros_like(Wn)
        E[idx] = h
        err = max(err, abs((f(Wn + E, xn) - f(Wn - E, xn)) / (2 * h) - float(gW[idx])))
    for j in range(len(xn)):
        e = np.zeros_like(xn)
        e[j] = h
        err = max(err, abs((f(Wn, xn + e) - f(Wn, xn - e)) / (2 * h) - float(gx[j])))
    return err


# --- command line ----------------------------------------------------------------------------

def cmd_wx_norm(args):
    from ..model.circuit import check_decimals
    try:
        decimals = check_decimals(args.decimals)
    except SymbpError:
        raise WxNormError(f"--decimals: expected an integer from 0 to 12, got {args.decimals}") from None
    if args.pdf and not args.latex:
        raise WxNormError("--pdf needs --latex FILE (the PDF is written beside it)")
    W = parse_numbers(args.W, "--W")
    xs = parse_numbers(args.x, "--x")
    if len(xs) != 1:
        raise WxNormError("--x: expected one row of numbers, e.g. 0.2,0.4")
    r = wx_norm(W, xs[0])
    out = []
    if args.latex:
        from pathlib import Path

        from ..output import write
        from ..render.pdf import compile_pdf
        tex = r.document(decimals)
        try:
            data = compile_pdf(tex, Path(args.latex).stem)[0] if args.pdf else None
        except SymbpError as e:
            raise WxNormError(str(e)) from None
        write(args.latex, tex)
        out.append(str(args.latex))
        if data is not None:
            pdf = Path(args.latex).with_suffix(".pdf")
            write(pdf, data)
            out.append(str(pdf))
    print(r.text(decimals), end="")
    for p in out:
        print(f"wrote {p}")
    return 0


def add_command(subparsers):
    p = subparsers.add_parser("wx-norm", help="the vectorized example f(x, W) = ||W x||^2: "
                              "gradients 2 q x^T and 2 W^T q derived by SymPy with matrix symbols")
    p.add_argument("--W", default=DEFAULT_W, metavar="ROWS",
                   help=f"the matrix W, rows separated by ';' (default {DEFAULT_W!r}, the slides' numbers)")
    p.add_argument("--x", default=DEFAULT_X, metavar="VALUES", help=f"the vector x (default {DEFAULT_X!r})")
    p.add_argument("--latex", metavar="FILE", help="write a LaTeX handout (derivation, numbers, circuit)")
    p.add_argument("--pdf", action="store_true", help="also compile the --latex document to PDF")
    p.add_argument("--decimals", type=int, default=3, help="decimals shown (0..12; default 3)")
    p.set_defaults(fn=cmd_wx_norm)
    return p

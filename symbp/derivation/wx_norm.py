"""The vectorized example of the CS231n-style slides ("Multi-Layer Networks & Back-Propagation"):
f(x, W) = ||W x||^2 with q = W x, whose gradients are df/dW = 2 q x^T and df/dx = 2 W^T q.

Contract: ``wx_norm(W, x) -> WxNorm``. ``W`` is a list of rows (m rows of n numbers), ``x`` a
list of n numbers; numbers are ints, floats (by their shortest repr, 0.1 -> 1/10), Fractions or
SymPy Rationals, so the arithmetic is exact. SymPy derives the gradients with matrix symbols
(``sympy.diff`` of tr((W x)^T (W x)) with respect to the MatrixSymbols W of shape m x n and x of
shape n x 1: 2 W x x^T and 2 W^T W x, i.e. 2 q x^T and 2 W^T q once W x is named q); they are
then evaluated at the numbers. ``WxNorm`` holds the symbolic results (``dW``, ``dx``, ``dW_q``,
``dx_q``), the exact values (``q``, ``value``, ``gW``, ``gx``, SymPy matrices with the shapes of
q, W and x), the largest difference to central finite differences in float64 (``fd_error``) and,
for W of at most ``MAX_CIRCUIT`` entries, the scalar ``circuit`` of the same function.
Bad input raises ``WxNormError`` (a SymbpError, one line). ``parse_numbers(text, key)`` reads
rows separated by ``;``, entries by ``,`` (integers, decimals or p/q), without eval.

The report and the handout are rendered by ``symbp.render.wx_norm`` (``r.text(decimals)``,
``r.document(decimals)`` once the public face has composed the stages), which also holds the
``symbp wx-norm`` command; this stage never imports the render stage.
"""
import re
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import sympy as sp

from ..errors import SymbpError
from .circuit import circuit

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
    circuit: object = None     # the scalar Circuit of the same function (W of <= MAX_CIRCUIT entries)


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
    return WxNorm(f, dW, dx, dW_q, dx_q, Wv, xv, qv, value, gW, gx, _fd_error(Wv, xv, gW, gx), _circuit(Wv, xv))


def _circuit(Wv, xv):
    """The scalar circuit of sum_i (sum_j W_ij x_j)^2 at the numbers, for W of at most
    MAX_CIRCUIT entries (the handout draws it), else None."""
    if Wv.rows * Wv.cols > MAX_CIRCUIT:
        return None
    m, n = Wv.shape
    terms = [" + ".join(f"W{i + 1}{j + 1}*x{j + 1}" for j in range(n)) for i in range(m)]
    at = {f"W{i + 1}{j + 1}": Wv[i, j] for i in range(m) for j in range(n)}
    at.update({f"x{j + 1}": xv[j] for j in range(n)})
    return circuit(" + ".join(f"({t})**2" for t in terms), at=at)


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

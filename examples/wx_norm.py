"""The vectorized example of the slides "Multi-Layer Networks & Back-Propagation": f(x, W) = ||W x||^2.

With q = W x and f = q^T q. The same numbers from the command line: ``symbp wx-norm [--latex F --pdf]``.

SymPy derives the gradients three ways, and they are checked against each other and numerically:
1. with matrix symbols: ``sympy.diff((W x)^T (W x), W)`` gives 2 W x x^T and ``diff(.., x)``
   gives 2 W^T W x, i.e. 2 q x^T and 2 W^T q once W x is named q;
2. entry by entry on a 2 x 2 example (df/dW_ij = 2 q_i x_j, df/dx_i = sum_k 2 q_k W_ki);
3. as a scalar circuit (symbp.circuit) of (W11 x1 + W12 x2)^2 + (W21 x1 + W22 x2)^2;
and ``symbp.wx_norm`` gives the same numbers and renders the handout.
At the slide's numbers W = [[0.1, 0.5], [-0.3, 0.8]], x = [0.2, 0.4] (exact rationals) this gives
q = [0.22, 0.26], f = 0.116, df/dW = [[0.088, 0.176], [0.104, 0.208]], df/dx = [-0.112, 0.636],
which central finite differences in float64 confirm; every gradient has its variable's shape.
Writes wx_norm.tex (and wx_norm.pdf when pdflatex is installed) into OUT_DIR.

Run: python examples/wx_norm.py [OUT_DIR]   (default ./out; exit status 0 when all checks pass)
"""
import argparse
import shutil
import sys
from pathlib import Path

import numpy as np
import sympy as sp

import symbp


def fmt(v, decimals):
    """An exact SymPy number rounded for display (none of the checked values is a tie)."""
    return f"{float(v):.{decimals}f}"


ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("out", nargs="?", default="out", help="output directory (default ./out)")
out = Path(ap.parse_args().out)
checks = []


def check(name, ok):
    checks.append((name, bool(ok)))
    print(f"  [{'ok' if ok else 'FAILED'}] {name}")


# 1. Matrix symbols: what sympy.diff gives for d/dW and d/dx of (W x)^T (W x).
n = sp.Symbol("n", integer=True, positive=True)
W, x, q = sp.MatrixSymbol("W", n, n), sp.MatrixSymbol("x", n, 1), sp.MatrixSymbol("q", n, 1)
f = (W * x).T * (W * x)
dW, dx = sp.diff(f, W), sp.diff(f, x)
dW_q, dx_q = dW.subs(W * x, q), dx.subs(W * x, q)
print("1. Matrix symbols, f = (W x)^T (W x):")
print(f"   sympy.diff(f, W) = {dW}   with q = W x: {dW_q}")
print(f"   sympy.diff(f, x) = {dx}   with q = W x: {dx_q}")
check("d/dW = 2 q x^T", sp.simplify(dW_q - 2 * q * x.T) == sp.ZeroMatrix(n, n))
check("d/dx = 2 W^T q", sp.simplify(dx_q - 2 * W.T * q) == sp.ZeroMatrix(n, 1))

# 2. Entry by entry on 2 x 2: the scalar f differentiated by each W_ij and x_i.
Ws = sp.Matrix(2, 2, sp.symbols("W11 W12 W21 W22", real=True))
xs = sp.Matrix(2, 1, sp.symbols("x1 x2", real=True))
qs = Ws * xs
fs = (qs.T * qs)[0, 0]
gW = Ws.applyfunc(lambda w: sp.diff(fs, w))
gx = xs.applyfunc(lambda v: sp.diff(fs, v))
print("2. Entries (2 x 2): df/dW_ij and df/dx_i")
check("df/dW_ij = 2 q_i x_j", (gW - 2 * qs * xs.T).expand() == sp.zeros(2, 2))
check("df/dx_i = sum_k 2 q_k W_ki", (gx - 2 * Ws.T * qs).expand() == sp.zeros(2, 1))

# The slide's numbers, exact.
Wv = sp.Matrix([[sp.Rational(1, 10), sp.Rational(1, 2)], [sp.Rational(-3, 10), sp.Rational(4, 5)]])
xv = sp.Matrix([sp.Rational(1, 5), sp.Rational(2, 5)])
at = {**dict(zip(Ws, Wv)), **dict(zip(xs, xv))}
qv = Wv * xv
fv = (qv.T * qv)[0, 0]
# Evaluate SymPy's matrix-symbol results (2 q x^T, 2 W^T q) at the numbers.
gWv = sp.Matrix(dW_q.subs({q: qv, x: xv, n: 2}).doit())
gxv = sp.Matrix(dx_q.subs({q: qv, W: Wv, n: 2}).doit())
print(f"   q = {list(qv)}, f = {fv}, df/dW = {gWv.tolist()}, df/dx = {list(gxv)}")
check("entries agree with the matrix form at the numbers", gWv == gW.subs(at) and gxv == gx.subs(at))
check("the slide's numbers: q = [0.22, 0.26], f = 0.116",
      [fmt(v, 2) for v in qv] == ["0.22", "0.26"] and fmt(fv, 3) == "0.116")
check("the slide's numbers: df/dW = [[0.088, 0.176], [0.104, 0.208]], df/dx = [-0.112, 0.636]",
      [fmt(v, 3) for v in gWv] == ["0.088", "0.176", "0.104", "0.208"]
      and [fmt(v, 3) for v in gxv] == ["-0.112", "0.636"])
check("each gradient has the shape of its variable", gWv.shape == Wv.shape and gxv.shape == xv.shape)

# 3. The scalar circuit of the same function gives the same gradients, exactly.
c = symbp.circuit("(W11*x1 + W12*x2)**2 + (W21*x1 + W22*x2)**2",
            **{str(s): v for s, v in at.items()})
print("3. Scalar circuit:")
print("   " + c.table(3).replace("\n", "\n   "))
cg = c.gradients
check("circuit gradients equal 2 q x^T and 2 W^T q",
      sp.Matrix(2, 2, [cg[str(s)] for s in Ws]) == gWv and sp.Matrix([cg["x1"], cg["x2"]]) == gxv
      and c.value == fv)

# Central finite differences in float64.
Wn, xn = np.array(Wv.tolist(), dtype=float), np.array(list(xv), dtype=float)
fn = lambda Wm, xm: float(np.sum((Wm @ xm) ** 2))
h = 1e-6
fdW = np.zeros((2, 2))
for i in range(2):
    for j in range(2):
        E = np.zeros((2, 2))
        E[i, j] = h
        fdW[i, j] = (fn(Wn + E, xn) - fn(Wn - E, xn)) / (2 * h)
fdx = np.array([(fn(Wn, xn + h * e) - fn(Wn, xn - h * e)) / (2 * h) for e in np.eye(2)])
err = max(np.max(np.abs(fdW - np.array(gWv.tolist(), dtype=float))),
          np.max(np.abs(fdx - np.array(list(gxv), dtype=float))))
print(f"   finite differences (h = {h:g}): max |difference| = {err:.2e}")
check("central finite differences agree (1e-8)", err < 1e-8)


# 4. symbp.wx_norm does all of the above for any W and x: the same numbers, and the handout.
r = symbp.wx_norm([[0.1, 0.5], [-0.3, 0.8]], [0.2, 0.4])
check("symbp.wx_norm gives the same exact numbers", r.q == qv and r.value == fv and r.gW == gWv and r.gx == gxv)
tex = r.document(3)
out.mkdir(parents=True, exist_ok=True)
paths = [out / "wx_norm.tex"]
paths[0].write_text(tex, encoding="utf-8")
if shutil.which("pdflatex"):
    paths.append(out / "wx_norm.pdf")
    paths[1].write_bytes(symbp.pdflatex(tex, "wx_norm"))
for p in paths:
    print(f"wrote {p}")
failed = [name for name, ok in checks if not ok]
print("all checks passed" if not failed else f"FAILED: {', '.join(failed)}")
sys.exit(1 if failed else 0)

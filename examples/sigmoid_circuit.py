"""The staged sigmoid circuit of the slides "Multi-Layer Networks & Back-Propagation":
f(w, x) = 1/(1 + exp(-(w0 x0 + w1 x1 + w2))).

At the slide's numbers w0 = 2, x0 = -1, w1 = -3, x1 = -2, w2 = -3 it prints the table of both
graphs (atomic gates: *, +, *-1, exp, +1, 1/x; fused: the sigmoid gate, whose local gradient is
(1 - sigma) sigma), and writes for each a LaTeX document with the TikZ picture and the
"[upstream] x [local]" steps, plus the PDF when pdflatex is installed.

Run: python examples/sigmoid_circuit.py [OUT_DIR]   (default ./out; exit status 0 when the
numbers are the slide's: f = 0.73, gradients w0 -0.20, x0 0.39, w1 -0.39, x1 -0.59, w2 0.20)
"""
import argparse
import shutil
import sys
from pathlib import Path

import symbp

EXPR = "1/(1+exp(-(w0*x0 + w1*x1 + w2)))"
VALUES = dict(w0=2, x0=-1, w1=-3, x1=-2, w2=-3)
SLIDE = {"f": "0.73", "w0": "-0.20", "x0": "0.39", "w1": "-0.39", "x1": "-0.59", "w2": "0.20"}


def fmt(v, decimals):
    """An exact SymPy number as the slide prints it (none of these values is a rounding tie)."""
    return f"{float(v):.{decimals}f}"


ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("out", nargs="?", default="out", help="output directory (default ./out)")
out = Path(ap.parse_args().out)
pdf = shutil.which("pdflatex") is not None

ok = True
for granularity in ("atomic", "fused"):
    c = symbp.circuit(EXPR, granularity, **VALUES)
    print(c.table())
    got = {"f": fmt(c.value, 2), **{k: fmt(v, 2) for k, v in c.gradients.items()}}
    if got != SLIDE:
        print(f"MISMATCH with the slide: {got}")
        ok = False
    for path in c.write(latex=out / f"sigmoid_circuit_{granularity}.tex",
                        tikz=out / f"sigmoid_circuit_{granularity}_tikz.tex", pdf=pdf):
        print(f"wrote {path}")
    print()
if not pdf:
    print("pdflatex not found: wrote the .tex files only")
print("numbers agree with the slide" if ok else "numbers DIFFER from the slide")
sys.exit(0 if ok else 1)

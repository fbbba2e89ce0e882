"""The toy example of the Understanding Deep Learning slides "Backpropagation" as numbered
forward and backward steps, with numbers.

The network of the slides "Backpropagation Algorithm: Toy Example" (A. Aghamohammadi, in the
notation of Understanding Deep Learning):

    (1) f_0 = beta_0 + Omega_0 x        (2) h_1 = ReLU(f_0)
    (3) L = -y log h_1 - (1 - y) log(1 - h_1)

and backward (3) dL/dh_1 = (h_1 - y) / (h_1 (1 - h_1)), (2) dL/df_0 = I[f_0 > 0] dL/dh_1,
(1) dL/dbeta_0 = dL/df_0, dL/dOmega_0 = dL/df_0 x^T. symbp derives all of it with SymPy and
evaluates the derivation exactly at the numbers below (0.4 is 2/5 exactly, rounded only when
shown). A binary cross-entropy on a ReLU output is only defined for 0 < h_1 < 1, so the spec
builder (which wants a sigmoid under bce) does not accept it: the Network is constructed
directly here; h_1 = 0 or 1 would be a "log of zero" error.

Run: python examples/toy_relu_bce.py [OUT_DIR]   (default ./out/; writes toy_relu_bce.tex,
toy_relu_bce.md and, where pdflatex exists, toy_relu_bce.pdf)
"""
import shutil
import sys
from pathlib import Path

import symbp
from symbp.codegen.load import write
from symbp.functions import ACTIVATIONS, LOSSES
from symbp.network import Layer, Network
from symbp.render.worked import pdflatex, worked_example

out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("out")

net = Network("toy_relu_bce", 2, (Layer(1, ACTIVATIONS["relu"]),), LOSSES["bce"], "mean")
d = symbp.derive(net)
params = {"W1": [[0.4, -0.2]], "b1": [0.1]}      # Omega_0 and beta_0
w = worked_example(d, params, x=[1, 0.5], y=1, decimals=3, lr=0.1, notation="udl")

tex = w.latex(document=True)
pdf = pdflatex(tex, "toy_relu_bce") if shutil.which("pdflatex") else None
write(out / "toy_relu_bce.tex", tex)
write(out / "toy_relu_bce.md", w.markdown())
print(f"wrote {out / 'toy_relu_bce.tex'} and {out / 'toy_relu_bce.md'}")
if pdf is not None:
    (out / "toy_relu_bce.pdf").write_bytes(pdf)
    print(f"wrote {out / 'toy_relu_bce.pdf'}")

v = w.values
print(f"f_0 = {v['z1'][0]}, h_1 = {v['a1'][0]}, L = {v['loss']} = {float(v['loss']):.4f}")
print(f"dL/dh_1 = {v['ga1'][0]}, dL/df_0 = {v['delta1'][0]}, "
      f"dL/dOmega_0 = {list(v['gW1'])}, dL/dbeta_0 = {list(v['gb1'])}")

"""The toy example of the slides in the notation of "Understanding Deep Learning": numbered
forward and backward steps, with numbers, on the public ``symbp`` API only.

The slides "Backpropagation Algorithm: Toy Example":

    (1) f_0 = beta_0 + Omega_0 x        (2) h_1 = ReLU(f_0)
    (3) L = -y log h_1 - (1 - y) log(1 - h_1)

and backward (3) dL/dh_1 = (h_1 - y) / (h_1 (1 - h_1)), (2) dL/df_0 = I[f_0 > 0] dL/dh_1,
(1) dL/dbeta_0 = dL/df_0, dL/dOmega_0 = dL/df_0 x^T. symbp derives all of it with SymPy,
evaluates the derivation exactly at the numbers below (0.4 is 2/5 exactly, rounded only when
shown), and checks the generated kernel against those exact values.

A binary cross-entropy wants outputs in (0, 1), which a sigmoid guarantees and a ReLU does not:
``allow_any_output=True`` asks for it explicitly (symbp warns), the loss is computed from h_1
rather than from f_0, and it is NaN (log of a non-positive number) where h_1 <= 0 or h_1 >= 1.
The numbers here keep h_1 = 0.4 inside (0, 1).

Run: python examples/toy_relu_bce.py [OUT_DIR]   (default ./out/; writes toy_relu_bce.tex,
toy_relu_bce.md, the kernel under OUT_DIR/generated/ and, where pdflatex exists,
toy_relu_bce.pdf)
"""
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np

import symbp

out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("out")
out.mkdir(parents=True, exist_ok=True)

with warnings.catch_warnings():
    # the warning says what the module docstring says: outputs may leave (0, 1)
    warnings.simplefilter("ignore", symbp.OutputRangeWarning)
    net = symbp.mlp([2, 1], ["relu"], "bce", name="toy_relu_bce", allow_any_output=True)
d = symbp.derive(net)
params = {"W1": [[0.4, -0.2]], "b1": [0.1]}      # Omega_0 and beta_0
x, y = [1, 0.5], 1
w = symbp.worked_example(d, params, x=x, y=y, decimals=3, lr=0.1, notation="udl")

tex = w.latex(document=True)
(out / "toy_relu_bce.tex").write_text(tex)
(out / "toy_relu_bce.md").write_text(w.markdown())
print(f"wrote {out / 'toy_relu_bce.tex'} and {out / 'toy_relu_bce.md'}")
if shutil.which("pdflatex"):
    (out / "toy_relu_bce.pdf").write_bytes(symbp.pdflatex(tex, "toy_relu_bce"))
    print(f"wrote {out / 'toy_relu_bce.pdf'}")

v = w.values
print(f"f_0 = {v['z1'][0]}, h_1 = {v['a1'][0]}, L = {v['loss']} = {float(v['loss']):.4f}")
print(f"dL/dh_1 = {v['ga1'][0]}, dL/df_0 = {v['delta1'][0]}, "
      f"dL/dOmega_0 = {list(v['gW1'])}, dL/dbeta_0 = {list(v['gb1'])}")

# the generated kernel computes the same numbers (the loss from h_1, not from f_0)
k = symbp.generate(d, out_dir=out / "generated", jit=False)
p = {key: np.array(val, dtype=np.float64) for key, val in params.items()}
loss, grads = k.loss_and_grad(p, np.array([x], dtype=np.float64), np.array([[y]], dtype=np.float64))
assert abs(loss - float(v["loss"])) < 1e-12
assert np.allclose(grads["W1"], np.array(v["gW1"], dtype=float).reshape(1, 2), rtol=1e-12)
assert np.allclose(grads["b1"], np.array(v["gb1"], dtype=float).ravel(), rtol=1e-12)
print(f"kernel: L = {loss:.4f}, dL/dOmega_0 = {grads['W1'].ravel().tolist()}, "
      f"dL/dbeta_0 = {grads['b1'].tolist()}")

"""A tied-weight autoencoder (W and W^T) on a generated graph kernel
(the book chapter "Backpropagation", section 14.8).

code = tanh(W x + b_enc), x_hat = W^T code + b_dec: the encoder and the decoder share W, so its
gradient is the sum of the gradients of its two uses (g_W = g_W__dec + g_W__enc, a "shared_sum"
step, eq. 14.47). Data: 6-dimensional points near a 3-dimensional subspace.

Run: python examples/autoencoder.py   (exit status 0 when the held-out reconstruction error is
below 5 % of the data's variance and the gradients pass the finite-difference check)
"""
import sys
import time
from pathlib import Path

import numpy as np

import symbp

HERE = Path(__file__).resolve().parent
t0 = time.perf_counter()
d = symbp.derive(symbp.load_graph(HERE / "specs" / "graphs" / "autoencoder.toml"))
k = symbp.generate(d, out_dir=HERE.parent / "generated").compile()
print(f"{d.graph}\n  derived, emitted to {k.path} and compiled in {time.perf_counter() - t0:.1f} s")
for e in d.of_kind("grad_W", "shared_sum"):
    if e.node == "W":
        print(f"  {e.lhs} = {e.rhs}   [{e.kind}]")

rng = np.random.default_rng(2)
basis = np.linalg.qr(rng.normal(size=(6, 3)))[0].T          # 3 orthonormal rows in R^6


def data(n):
    latent = rng.uniform(-0.8, 0.8, size=(n, 3))
    return latent @ basis + 0.02 * rng.normal(size=(n, 6))


X, Xtest = data(500), data(500)
params = k.init_params(seed=0)
report = symbp.gradcheck(k, params, X[:8], X[:8])
print(report)

lr = 0.5
for epoch in range(1, 4001):
    loss = k.sgd_step(params, X, X, lr)
    if epoch % 1000 == 0 or epoch == 1:
        print(f"epoch {epoch:5d}  train loss (1/2 squared error) {loss:.5f}")
err = float(np.mean(np.sum((k.forward(params, Xtest) - Xtest) ** 2, axis=1)))
var = float(np.mean(np.sum((Xtest - Xtest.mean(axis=0)) ** 2, axis=1)))
print(f"held-out reconstruction error {err:.5f} = {100 * err / var:.2f} % of the variance {var:.4f}")
ok = report.ok and err < 0.05 * var
print("goal reached" if ok else "goal NOT reached")
sys.exit(0 if ok else 1)

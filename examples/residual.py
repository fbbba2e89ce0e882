"""A residual block y = a + f(a) (the book chapter "Backpropagation", section 14.7)
on a generated graph kernel.

The hidden value a feeds the block f and the skip connection: a branch, so the derivation sums
the two gradients that come back (g_a = g_a__r + g_a__f1, a "branch_sum" step). The network
regresses t = sin(2 x0) cos(x1) with full-batch gradient descent.

Run: python examples/residual.py   (exit status 0 when the test MSE falls below 0.01 and the
gradients pass the finite-difference check)
"""
import sys
import time
from pathlib import Path

import numpy as np

import symbp

HERE = Path(__file__).resolve().parent
t0 = time.perf_counter()
d = symbp.derive(symbp.load_graph(HERE / "specs" / "graphs" / "residual.toml"))
k = symbp.generate(d, out_dir=HERE.parent / "generated").compile()
print(f"{d.graph}\n  derived, emitted to {k.path} and compiled in {time.perf_counter() - t0:.1f} s")
for e in d.of_kind("branch_sum"):
    print(f"  {e.name} = {' + '.join(e.terms)}   ({e.doc})")

rng = np.random.default_rng(0)


def data(n):
    x = rng.uniform(-1.5, 1.5, size=(n, 2))
    return x, (np.sin(2 * x[:, 0]) * np.cos(x[:, 1]))[:, None]


X, T = data(256)
Xtest, Ttest = data(256)
params = k.init_params(seed=0)
report = symbp.gradcheck(k, params, X[:8], T[:8])
print(report)

lr = 0.1
for epoch in range(1, 3001):
    loss = k.sgd_step(params, X, T, lr)
    if epoch % 500 == 0 or epoch == 1:
        print(f"epoch {epoch:5d}  train loss (1/2 MSE) {loss:.5f}")
mse = float(np.mean((k.forward(params, Xtest) - Ttest) ** 2))
print(f"test MSE {mse:.5f} (target variance {np.var(Ttest):.3f})")
ok = report.ok and mse < 0.01
print("goal reached" if ok else "goal NOT reached")
sys.exit(0 if ok else 1)

"""y = |x - 1| (the IT5005 slides "Multi-Layer Perceptrons") on a generated kernel:
1-8-1 ReLU network, mean squared error.

|x - 1| = relu(x - 1) + relu(1 - x): two ReLU units suffice, so the fit should be near exact.
Run: python examples/abs.py   (exit status 0 when the maximum error is small)
"""
import sys

import numpy as np

from _common import kernel_for
from symbp.train import train

k = kernel_for("abs")
rng = np.random.default_rng(0)
x = rng.uniform(-3, 3, size=(200, 1))
y = np.abs(x - 1)
params = k.init_params(seed=0)
train(k, params, x, y, lr=0.05, epochs=2000, batch_size=20, log_every=400)

grid = np.linspace(-3, 3, 13)[:, None]
pred = k.forward(params, grid)
for xi, p in zip(grid[:, 0], pred[:, 0]):
    print(f"  x = {xi:5.2f}   |x - 1| = {abs(xi - 1):5.2f}   network {p:5.2f}")
err = float(np.max(np.abs(pred[:, 0] - np.abs(grid[:, 0] - 1))))
print(f"max error on the grid: {err:.3f}")
sys.exit(0 if err < 0.15 else 1)

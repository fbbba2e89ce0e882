"""y = |x - 1| (S. R. Prasad, "IT5005: Multi-Layer Perceptrons", course slides) on a generated
kernel: 1-8-1 ReLU network, mean squared error, trained with symbp.Adam as the slides train
with torch.optim.Adam.

|x - 1| = relu(x - 1) + relu(1 - x): two ReLU units suffice, so the fit should be near exact.
``symbp.train`` runs mini-batches of 20 rows, each one compiled call that does forward,
backward and the Adam update, and returns the loss per epoch (a history to plot).
Run: python examples/abs.py   (exit status 0 when the maximum error is small)
"""
import sys

import numpy as np

import symbp
from _common import kernel_for

k = kernel_for("abs")
rng = np.random.default_rng(0)
x = rng.uniform(-3, 3, size=(200, 1))
y = np.abs(x - 1)
params = k.init_params(seed=0)
history = symbp.train(k, params, x, y, optimizer=symbp.Adam(lr=0.01), epochs=300, batch_size=20,
                      seed=0, log_every=50)
print(f"loss history: {len(history)} epochs, {history[0]:.5f} -> {history[-1]:.5f}")

grid = np.linspace(-3, 3, 13)[:, None]
pred = k.forward(params, grid)
for xi, p in zip(grid[:, 0], pred[:, 0]):
    print(f"  x = {xi:5.2f}   |x - 1| = {abs(xi - 1):5.2f}   network {p:5.2f}")
err = float(np.max(np.abs(pred[:, 0] - np.abs(grid[:, 0] - 1))))
print(f"max error on the grid: {err:.3f}")
sys.exit(0 if err < 0.15 else 1)

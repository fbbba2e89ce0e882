"""y = x^2 (S. R. Prasad, "IT5005: Multi-Layer Perceptrons", course slides: the 1-8-8-1 model
trained with torch.optim.Adam) on a generated kernel: ReLU hidden layers, mean squared error,
trained with symbp.Adam (PyTorch's definition and defaults).

As in the slides, x = 5 N(0, 1) and y = x^2 + N(0, 1) noise, 100 samples. Inputs and targets are
scaled (x/5, y/25); predictions are reported unscaled. ``symbp.train`` runs mini-batches of 10
rows, each one compiled call that does forward, backward and the Adam update
(``train_step_adam`` in generated/square/cpu_float64.py), and returns the loss per epoch.
Run: python examples/square.py   (exit status 0 when the test error is small)
"""
import sys

import numpy as np

import symbp
from _common import kernel_for

k = kernel_for("square")
rng = np.random.default_rng(0)
x = 5 * rng.normal(size=(100, 1))
y = x ** 2 + rng.normal(size=(100, 1))
params = k.init_params(seed=1)
history = symbp.train(k, params, x / 5, y / 25, optimizer=symbp.Adam(lr=0.003), epochs=400,
                      batch_size=10, seed=0, log_every=100)
print(f"loss history: {len(history)} epochs, {history[0]:.5f} -> {history[-1]:.5f}")

x2 = np.array([[-4.0], [-2.0], [-0.5], [1.0], [3.0], [4.5]])
pred = 25 * k.forward(params, x2 / 5)
for xi, p in zip(x2[:, 0], pred[:, 0]):
    print(f"  x = {xi:5.2f}   x^2 = {xi * xi:6.2f}   network {p:6.2f}")
err = float(np.sqrt(np.mean((pred[:, 0] - x2[:, 0] ** 2) ** 2)))
print(f"root mean squared error against x^2: {err:.2f}")
sys.exit(0 if err < 2.0 else 1)

"""y = x^2 (the IT5005 slides "Multi-Layer Perceptrons") on a generated kernel:
1-8-8-1 ReLU network, mean squared error.

As in the seed, x = 5 N(0, 1) and y = x^2 + N(0, 1) noise, 100 samples. Inputs and targets are
scaled (x/5, y/25) so plain mini-batch SGD is stable; predictions are reported unscaled.
Run: python examples/square.py   (exit status 0 when the test error is small)
"""
import sys

import numpy as np

from _common import kernel_for
from symbp.train import train

k = kernel_for("square")
rng = np.random.default_rng(0)
x = 5 * rng.normal(size=(100, 1))
y = x ** 2 + rng.normal(size=(100, 1))
params = k.init_params(seed=1)
train(k, params, x / 5, y / 25, lr=0.05, epochs=3000, batch_size=10, log_every=500)

x2 = np.array([[-4.0], [-2.0], [-0.5], [1.0], [3.0], [4.5]])
pred = 25 * k.forward(params, x2 / 5)
for xi, p in zip(x2[:, 0], pred[:, 0]):
    print(f"  x = {xi:5.2f}   x^2 = {xi * xi:6.2f}   network {p:6.2f}")
err = float(np.sqrt(np.mean((pred[:, 0] - x2[:, 0] ** 2) ** 2)))
print(f"root mean squared error against x^2: {err:.2f}")
sys.exit(0 if err < 2.0 else 1)

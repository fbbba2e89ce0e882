"""XOR (the tutorial notebook "Backpropagation") on a generated kernel:
2-3-1 sigmoid network, binary cross-entropy, SGD.

Run: python examples/xor.py   (exit status 0 when all four points are classified right)
"""
import sys

import numpy as np

from _common import kernel_for
from symbp import gradcheck, train

k = kernel_for("xor")
X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float64)
Y = np.array([[0], [1], [1], [0]], dtype=np.float64)
params = k.init_params(seed=0)
print(gradcheck(k, params, X, Y))
train(k, params, X, Y, lr=2.0, epochs=3000, log_every=500)
out = k.forward(params, X)[:, 0]
for x, y, o in zip(X, Y[:, 0], out):
    print(f"  x = {x}  target {int(y)}  output {o:.4f}")
right = int(np.sum((out > 0.5) == (Y[:, 0] > 0.5)))
print(f"{right}/4 classified right")
sys.exit(0 if right == 4 else 1)

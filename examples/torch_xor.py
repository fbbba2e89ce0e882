"""XOR (the tutorial notebook "Backpropagation") trained by an ordinary PyTorch loop: the loss
and its gradients come from the generated kernel (``Kernel.torch_function``), the update from
torch.optim. The 2-3-1 sigmoid network with binary cross-entropy, as in examples/xor.py.

Run: python examples/torch_xor.py   (needs PyTorch; exit status 0 when all four points are
classified right)
"""
import sys

import numpy as np
import torch

from _common import kernel_for

k = kernel_for("xor")
loss_fn = k.torch_function()          # loss_fn.apply(W1, b1, W2, b2, X, Y) -> loss
params = [torch.tensor(a, requires_grad=True) for a in k.init_params(seed=0).values()]
X = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=torch.float64)
Y = torch.tensor([[0], [1], [1], [0]], dtype=torch.float64)

opt = torch.optim.Adam(params, lr=0.05)
for epoch in range(1, 1001):
    opt.zero_grad()
    loss = loss_fn.apply(*params, X, Y)
    loss.backward()
    opt.step()
    if epoch == 1 or epoch % 200 == 0:
        print(f"epoch {epoch:5d}  loss {loss.item():.6f}")

with torch.no_grad():
    out = k.forward(dict(zip(k.module.PARAMS, (p.numpy() for p in params))), X.numpy())[:, 0]
for x, y, o in zip(X.numpy(), Y[:, 0].numpy(), out):
    print(f"  x = {x}  target {int(y)}  output {o:.4f}")
right = int(np.sum((out > 0.5) == (Y[:, 0].numpy() > 0.5)))
print(f"{right}/4 classified right")
sys.exit(0 if right == 4 else 1)

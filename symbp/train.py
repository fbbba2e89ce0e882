"""Gradient descent on a generated kernel, as the examples and the demo use it.

Contract: ``train(kernel, params, X, Y, lr, epochs, batch_size=None, seed=0, log_every=0,
log=print)`` updates ``params`` in place with SGD (theta <- theta - lr dL/dtheta per mini-batch,
reshuffled every epoch with ``seed``; the whole batch when batch_size is None) and returns the
list of per-epoch mean losses. ``one_hot(labels, classes)`` builds targets for ce.
"""
import numpy as np

from .codegen.cuda_kernel import as_batch, take_rows


def one_hot(labels, classes, dtype=np.float64):
    labels = np.asarray(labels)
    out = np.zeros((labels.shape[0], classes), dtype=dtype)
    out[np.arange(labels.shape[0]), labels] = 1
    return out


def train(kernel, params, X, Y, lr, epochs, batch_size=None, seed=0, log_every=0, log=print):
    # device arrays of a CUDA kernel stay on the device (mini-batches gathered there)
    X, Y = as_batch(kernel, X), as_batch(kernel, Y)
    n = X.shape[0]
    bs = n if batch_size is None else int(batch_size)
    rng = np.random.default_rng(seed)
    history = []
    for epoch in range(1, epochs + 1):
        if bs >= n:
            loss = kernel.sgd_step(params, X, Y, lr)
        else:
            order = rng.permutation(n)
            total = 0.0
            for start in range(0, n, bs):
                idx = order[start:start + bs]
                total += kernel.sgd_step(params, take_rows(kernel, X, idx, 0),
                                         take_rows(kernel, Y, idx, 1), lr) * len(idx)
            loss = total / n
        history.append(loss)
        if log_every and (epoch % log_every == 0 or epoch == 1 or epoch == epochs):
            log(f"epoch {epoch:6d}  loss {loss:.6f}")
    return history

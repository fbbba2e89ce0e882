"""Shared test helper: random parameters and a batch that fits a network's loss
(``from conftest import random_batch``; pytest puts tests/ on sys.path)."""
import numpy as np


def random_batch(net, batch, seed=0, dtype="float64", scale=0.7):
    """(params, X, Y) for ``net``: W ~ N(0, scale^2 / n_in), b ~ N(0, 0.1^2), X ~ N(0, 1);
    Y one-hot for ce, in {0, 1} for bce, N(0, 1) otherwise. Continuous draws put every
    pre-activation away from ReLU kinks with probability 1. Every value is rounded to float32,
    so the float64 and float32 batches of one seed hold the same numbers (one oracle run serves
    both dtypes)."""
    rng = np.random.default_rng(seed)
    params = {}
    for key, shape in net.param_shapes().items():
        if len(shape) == 2:
            params[key] = rng.normal(0.0, scale / np.sqrt(shape[1]), size=shape)
        else:
            params[key] = rng.normal(0.0, 0.1, size=shape)
    X = rng.normal(size=(batch, net.inputs))
    n_out = net.sizes[-1]
    if net.loss.name == "ce":
        Y = np.eye(n_out)[rng.integers(0, n_out, batch)]
    elif net.loss.name == "bce":
        Y = rng.integers(0, 2, size=(batch, n_out)).astype(float)
    else:
        Y = rng.normal(size=(batch, n_out))

    def cast(a):
        return a.astype(np.float32).astype(dtype)

    return {k: cast(v) for k, v in params.items()}, cast(X), cast(Y)


"""Verification of derivations and kernels, three independent ways, for either kind of model.

Contract (a model is a ``Network`` (MLP) or a ``Graph``; a kernel is of either kind; for an MLP
X is (B, n0) and Y (B, nL), for a graph X is the inputs {name: (B, width)}, or one array for a
graph with one input, and Y the target):

- ``gradcheck(kernel, params, X, Y)``: the kernel's gradients against central finite
  differences of its loss in float64; a ``GradcheckReport`` (``symbp.verify.fd``).
- ``oracle_gradients(model, params, X, Y)``: the certificate that does not trust
  ``symbp.derive``: the fully expanded loss differentiated by ``sympy.diff``, exact Rationals
  where the model is rational, kinks as its relu_at_zero (``symbp.verify.oracle``, one body:
  an MLP is its chain graph). Small sizes only.
- ``torch_gradients(model, params, X, Y)``: PyTorch autograd in float64
  (``symbp.verify.torch_ref``); ImportError without torch.
- ``sample(model_or_kernel, batch, seed, dtype)``: the one kind of random batch symbp draws (the
  ``check`` command, ``symbp bench``, the tests): inputs ~ N(0, 1) and a target the loss accepts
  (one-hot rows for ce, 0/1 for bce, N(0, 1) otherwise), from ``numpy.random.default_rng(seed)``
  in a fixed order (the inputs in the model's order, then the target): one seed, one batch.
- ``model_of(obj)``: the Network or Graph of a model or a kernel; ``is_graph(obj)``: its kind.

The oracle and the torch reference return ``(loss, grads)``, ``grads`` keyed by parameter and,
for the inputs checked (an MLP's "X" with ``input_grad``, a graph's inputs marked grad), by
input name: parameters and graph nodes share one namespace.
"""
import numpy as np

from ..errors import InputError
from .fd import DEFAULT_TOL, GradcheckReport, GradcheckRow, check_tol, gradcheck, is_graph, model_of
from .oracle import ORACLE_MAX_BATCH, ORACLE_MAX_PARAMS, oracle_gradients, oracle_loss_expression
from .torch_ref import torch_gradients


def sample(obj, batch, seed=0, dtype="float64"):
    """A random batch for a model or a kernel of either kind: ``(X, Y)`` for an MLP (X (batch,
    n0), Y (batch, nL)), ``(inputs, target)`` for a graph (inputs {name: (batch, width)})."""
    if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 1:
        raise InputError(f"sample: batch: expected an integer >= 1, got {batch!r}")
    model = model_of(obj)
    rng = np.random.default_rng(seed)
    if is_graph(model):
        inputs = {n.name: rng.normal(size=(batch, n.width)).astype(dtype) for n in model.inputs}
        width, loss = model.node(model.target).width, model.loss_node.loss.name
    else:
        inputs = rng.normal(size=(batch, model.inputs)).astype(dtype)
        width, loss = model.sizes[-1], model.loss.name
    if loss == "ce":
        target = np.eye(width, dtype=dtype)[rng.integers(0, width, size=batch)]
    elif loss == "bce":
        target = rng.integers(0, 2, size=(batch, width)).astype(dtype)
    else:
        target = rng.normal(size=(batch, width)).astype(dtype)
    return inputs, target


__all__ = ["DEFAULT_TOL", "GradcheckReport", "GradcheckRow", "ORACLE_MAX_BATCH", "ORACLE_MAX_PARAMS",
           "check_tol", "gradcheck", "is_graph", "model_of", "oracle_gradients", "oracle_loss_expression",
           "sample", "torch_gradients"]

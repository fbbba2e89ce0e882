"""GraphKernel: the Python face of a generated graph module.

Contract: every array is checked before compiled code runs (keys, shapes, dtype); ``inputs`` is
a dict {input name: (B, width)} of the graph's input nodes (the loss's target excluded), or one
array when the graph has exactly one such input; ``target`` is (B, target width). Parameters
are a dict keyed like ``graph.param_shapes()`` in the kernel's dtype; gradients come back keyed
the same way. Work buffers are kept per batch size and per thread (``threading.local``: calls
from several threads at once never share a buffer, as for the MLP Kernel); results are fresh
arrays unless ``copy=False`` (the calling thread's buffers). A mistake in an argument (a list
for an array, a None target, a wrong dtype or shape, an empty batch, missing or unexpected
keys, a read-only parameter or a non-finite lr for ``sgd_step``) is one ``InputError`` line
naming it, raised before compiled code runs.
"""
import threading

import numpy as np

from ..errors import InputError
from .kernel import _ABSENT, check_array, check_keys, check_lr, check_writable, glorot_params


class GraphKernel:
    def __init__(self, derivation, module, path, target, dtype, jit):
        self.derivation = derivation
        self.graph = derivation.graph
        self.network = self.graph
        self.module = module
        self.path = path
        self.target = target
        self.dtype = np.dtype(dtype)
        self.jit = jit
        self.param_shapes = {k: tuple(v) for k, v in module.PARAM_SHAPES.items()}
        self.inputs = dict(module.INPUTS)
        self.target_name, self.target_width = module.TARGET
        self._params = tuple(module.PARAMS)
        self._local = threading.local()    # .work: {batch size: buffers} of the calling thread

    def __repr__(self):
        return f"<GraphKernel {self.graph.name} {self.target} {self.dtype} jit={self.jit} at {self.path}>"

    # parameters ---------------------------------------------------------------------------
    def init_params(self, seed=0):
        """Glorot-uniform weights, zero biases (symbp.codegen.kernel.glorot_params)."""
        return glorot_params(self.param_shapes, self.dtype, seed)

    # checks -------------------------------------------------------------------------------
    def _array(self, name, a, shape):
        return check_array(name, a, shape, self.dtype)

    def _check(self, params, inputs, target=_ABSENT):
        names = list(self.inputs)
        if isinstance(inputs, np.ndarray) and len(names) == 1:
            inputs = {names[0]: inputs}
        if not isinstance(inputs, dict):
            raise InputError(f"inputs: expected a dict with keys {', '.join(names)}"
                             + (" (or one array)" if len(names) == 1 else "")
                             + f", got {type(inputs).__name__}")
        check_keys("inputs", inputs, names)
        first = inputs[names[0]]
        if not isinstance(first, np.ndarray) or first.ndim != 2:
            got = first.shape if isinstance(first, np.ndarray) else type(first).__name__
            raise InputError(f"inputs[{names[0]!r}]: expected an array of shape (batch, {self.inputs[names[0]]}), got {got}")
        B = first.shape[0]
        if B < 1:
            raise InputError(f"inputs[{names[0]!r}]: expected at least one row (sample)")
        xs = [self._array(f"inputs[{k!r}]", inputs[k], (B, self.inputs[k])) for k in names]
        if target is not _ABSENT:
            target = self._array("target", target, (B, self.target_width))
        check_keys("params", params, self._params)
        ps = [self._array(f"params[{k!r}]", params[k], self.param_shapes[k]) for k in self._params]
        return ps, xs, target

    def _buffers(self, B):
        """The calling thread's work buffers for batch size B (made on first use)."""
        try:
            return self._local.work[B]      # the common case: one lookup each
        except AttributeError:
            work = self._local.work = {}
        except KeyError:
            work = self._local.work
        m = self.module
        fwd = {k: np.empty((B, n), self.dtype) for k, n in m.FORWARD_BUFFERS.items()}
        bwd = {k: np.empty((B, n), self.dtype) for k, n in m.BACKWARD_BUFFERS.items()}
        use = [np.empty(s, self.dtype) for s in m.USE_BUFFERS.values()]
        grads = [np.empty(self.param_shapes[k], self.dtype) for k in self._params]
        if len(work) >= 4:   # a few batch sizes (train and test) stay allocated
            work.pop(next(iter(work)))
        w = work[B] = (fwd, bwd, use, grads)
        return w

    def _run(self, params, inputs, target):
        ps, xs, t = self._check(params, inputs, target)
        fwd, bwd, use, grads = self._buffers(xs[0].shape[0])
        loss = self.module.loss_and_grad(*xs, t, *ps, *fwd.values(), *bwd.values(), *use, *grads)
        return float(loss), fwd, bwd, grads

    def compile(self):
        """Compile every entry point now (Numba compiles on first call); returns self."""
        params = self.init_params(0)
        xs = {k: np.zeros((1, n), self.dtype) for k, n in self.inputs.items()}
        t = np.zeros((1, self.target_width), self.dtype)
        self.forward(params, xs)
        self.loss_and_grad(params, xs, t)
        self.sgd_step(params, xs, t, 0.0)
        return self

    # calls --------------------------------------------------------------------------------
    def forward(self, params, inputs):
        """The value of the node the loss reads, shape (B, width)."""
        ps, xs, _ = self._check(params, inputs)
        fwd, _, _, _ = self._buffers(xs[0].shape[0])
        return self.module.forward(*xs, *ps, *fwd.values()).copy()

    def values(self, params, inputs):
        """{node name: value} of every node after the forward pass (inputs included)."""
        ps, xs, _ = self._check(params, inputs)
        fwd, _, _, _ = self._buffers(xs[0].shape[0])
        self.module.forward(*xs, *ps, *fwd.values())
        out = {k: x.copy() for k, x in zip(self.inputs, xs)}
        out.update({k: v.copy() for k, v in fwd.items()})
        return out

    def loss_and_grad(self, params, inputs, target, copy=True):
        """(loss, {param: dL/dparam} keyed like params). copy=False returns the work buffers."""
        loss, _, _, grads = self._run(params, inputs, target)
        return loss, {k: (g.copy() if copy else g) for k, g in zip(self._params, grads)}

    def loss(self, params, inputs, target):
        return self._run(params, inputs, target)[0]

    def input_grads(self, params, inputs, target):
        """{input: dL/dinput} for the inputs marked grad (backpropagation to the data, chapter 14
        "Backpropagation", section 14.9); shape (B, width) each."""
        if not self.module.INPUT_GRADS:
            raise InputError(f"input_grads: no input of graph {self.graph.name!r} is marked grad = true")
        _, _, bwd, _ = self._run(params, inputs, target)
        return {k: bwd[label].copy() for k, label in self.module.INPUT_GRADS.items()}

    def loss_and_input_grads(self, params, inputs, target):
        """(loss, {param: grad}, {input: grad}) from one pass."""
        loss, _, bwd, grads = self._run(params, inputs, target)
        return (loss, {k: g.copy() for k, g in zip(self._params, grads)},
                {k: bwd[label].copy() for k, label in self.module.INPUT_GRADS.items()})

    def sgd_step(self, params, inputs, target, lr):
        """theta <- theta - lr dL/dtheta for every parameter, in place; returns the loss before."""
        lr = check_lr(lr, self.dtype)
        ps, xs, t = self._check(params, inputs, target)
        check_writable(params, self._params, ps, self.dtype)
        fwd, bwd, use, grads = self._buffers(xs[0].shape[0])
        return float(self.module.sgd_step(*xs, t, *ps, *fwd.values(), *bwd.values(), *use, *grads, lr))

    # interop (symbp.codegen.interop) ----------------------------------------------------
    def torch_function(self):
        """A torch.autograd.Function: ``F.apply(*params, *inputs, target)`` (PARAMS and INPUTS
        order) is the loss, with gradients for the parameters and the inputs marked grad."""
        from .interop import torch_function
        return torch_function(self)

    def jax_function(self):
        """A jax.custom_vjp function ``f(*params, *inputs, target)`` -> loss (pure_callback)."""
        from .interop import jax_function
        return jax_function(self)

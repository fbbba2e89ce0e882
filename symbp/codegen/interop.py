"""Generated kernels as differentiable functions of PyTorch and JAX.

Contract: for a Kernel (CPU or CUDA) of an MLP with parameters ``p1, ..., pk`` (the kernel's
``PARAMS`` order: W1, b1, W2, ...) the data are ``X, Y``; for a GraphKernel they are its inputs
in ``INPUTS`` order and then the target. Then

- ``torch_function(kernel)`` is a ``torch.autograd.Function`` subclass; ``F.apply(p1, ..., pk,
  *data)`` is the loss (a 0-d tensor of the kernel's dtype) and its backward gives dL/dp_i and
  the data gradients the kernel has (dL/dX; the graph inputs marked ``grad = true``) from the
  generated kernel: one call of the kernel computes the loss and every gradient in the forward,
  the backward only scales them by the incoming gradient. CPU tensors are handed to the kernel
  as NumPy views (no copy: ``Tensor.numpy`` shares memory) and the gradients come back as
  tensors over the kernel's fresh arrays (``torch.from_numpy``, no copy). CUDA tensors given to
  a CUDA kernel are passed as numba device arrays over the same memory
  (``__cuda_array_interface__``).
- ``jax_function(kernel)`` is a ``jax.custom_vjp`` function ``f(p1, ..., pk, *data)`` whose
  forward and backward run the kernel through ``jax.pure_callback`` (so it works under ``jit``;
  ``vmap`` and forward-mode are not supported).

Y (the target) and graph inputs not marked grad are data, not variables: the kernels give no
gradient for them. Torch refuses such an argument that requires grad (one InputError line naming
it) rather than returning a silent zero; JAX treats them as constants (a zero cotangent, as
under ``jax.lax.stop_gradient``). Double backward is not supported (the gradients are numbers
from compiled code, not a graph).

Both libraries are optional: asking for interop without the library is one ``SymbpError`` line
saying what to install, never an ImportError traceback. Argument mistakes are one-line
``InputError`` messages naming the argument (the kernel's own checks under torch; under JAX the
dtypes and shapes are checked at trace time). A float64 kernel under JAX needs
``jax_enable_x64`` (JAX's default is float32): asked for otherwise, one InputError line.
"""
import importlib

import numpy as np

from ..errors import InputError, SymbpError

_INSTALL = {"torch": "PyTorch (pip install torch)", "jax": "JAX (pip install jax)"}


def _require(module, where):
    """The module, or one SymbpError line naming what to install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise SymbpError(f"{where}: needs {_INSTALL[module]}, which is not installed") from None


class _Adapter:
    """What the glue needs of a kernel, the same for an MLP Kernel (data X, Y) and a GraphKernel
    (data: its inputs in INPUTS order, then the target): argument names and shapes, and
    ``run(arrays) -> (loss, [dL/dparam], [dL/ddata or None])`` from one call of the kernel
    (None where the kernel gives no gradient: Y, the target, graph inputs not marked grad)."""

    def __init__(self, kernel):
        self.kernel = kernel
        m = kernel.module
        self.keys = tuple(kernel._params)     # the kernel's names (a graph CUDA kernel renames PARAMS)
        self.shapes = [tuple(kernel.param_shapes[k]) for k in self.keys]
        # a graph kernel names its inputs (every CPU module has INPUTS: an MLP's is its chain
        # graph's); a chain graph's CUDA kernel takes one input and the target, as an MLP's
        self.graph = hasattr(kernel, "loss_and_input_grads") and hasattr(m, "INPUTS")
        if self.graph:
            self.inputs = list(m.INPUTS)
            self.data = [(f"inputs[{k!r}]", w) for k, w in m.INPUTS.items()] + [("target", m.TARGET[1])]
            self.grad_data = [k in m.INPUT_GRADS for k in self.inputs] + [False]
        else:
            n = kernel.network.sizes
            self.data = [("X", n[0]), ("Y", n[-1])]
            self.grad_data = [True, False]
        self.names = [f"params[{k!r}]" for k in self.keys] + [name for name, _ in self.data]
        self.n = len(self.keys)
        self.labels = list(self.keys) + (self.inputs + [m.TARGET[0]] if self.graph else ["X", "Y"])

    def check_count(self, where, args):
        if len(args) != len(self.names):
            raise InputError(f"{where}: expected {len(self.names)} arguments ({', '.join(self.labels)}), "
                             f"got {len(args)}")

    def run(self, arrays):
        n, k = self.n, self.kernel
        params = dict(zip(self.keys, arrays[:n]))
        data = arrays[n:]
        if self.graph:
            loss, grads, ig = k.loss_and_input_grads(params, dict(zip(self.inputs, data[:-1])), data[-1])
            dgrads = [ig.get(name) for name in self.inputs] + [None]
        else:
            loss, grads, gx = k.loss_and_grads(params, data[0], data[1])
            dgrads = [gx, None]
        return loss, [grads[key] for key in self.keys], dgrads


# -----------------------------------------------------------------------------------------
# PyTorch
# -----------------------------------------------------------------------------------------
def _torch_array(kernel, t):
    """A tensor as the kernel takes it: a NumPy view of a CPU tensor, a numba device array over
    a CUDA tensor's memory for a CUDA kernel, else the tensor unchanged (the kernel's check
    then names it)."""
    import torch
    if not isinstance(t, torch.Tensor):
        return t
    t = t.detach()
    if t.is_cuda:
        if kernel.target == "cuda":
            from numba import cuda
            return cuda.as_cuda_array(t.contiguous())
        t = t.cpu()
    return t.contiguous().numpy()


def torch_function(kernel):
    """A torch.autograd.Function: ``F.apply(*params, *data)`` -> loss (see the module docstring)."""
    torch = _require("torch", "torch_function")
    from torch.autograd.function import once_differentiable
    ad = _Adapter(kernel)
    n = ad.n

    class KernelLoss(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *args):
            ad.check_count("torch_function", args)
            # results go to the device of the first tensor argument
            device = next((a.device for a in args if isinstance(a, torch.Tensor)), torch.device("cpu"))
            loss, grads, dgrads = ad.run([_torch_array(kernel, a) for a in args])
            ctx.have = [True] * n + [g is not None for g in dgrads]
            out = [torch.from_numpy(g).to(device) for g in grads + [g for g in dgrads if g is not None]]
            ctx.save_for_backward(*out)
            return torch.tensor(loss, dtype=out[0].dtype, device=device)

        @staticmethod
        @once_differentiable
        def backward(ctx, g):
            saved = iter(ctx.saved_tensors)
            result = []
            for name, have, need in zip(ad.names, ctx.have, ctx.needs_input_grad):
                if not have and need:
                    raise InputError(f"{name}: the kernel gives no gradient with respect to it "
                                     f"(data, not a variable: pass it without requires_grad)")
                s = next(saved) if have else None
                result.append(g * s if have and need else None)
            return tuple(result)

    KernelLoss.__name__ = KernelLoss.__qualname__ = f"{kernel.network.name}_loss"
    KernelLoss.__doc__ = (f"Loss of the generated kernel {kernel.network.name} ({kernel.target}, "
                          f"{kernel.dtype}): apply({', '.join(ad.labels)}).")
    return KernelLoss


# -----------------------------------------------------------------------------------------
# JAX
# -----------------------------------------------------------------------------------------
def jax_function(kernel):
    """A jax.custom_vjp function ``f(*params, *data)`` -> loss (see the module docstring)."""
    jax = _require("jax", "jax_function")
    import jax.numpy as jnp
    ad = _Adapter(kernel)
    n = ad.n
    dt = np.dtype(kernel.dtype)
    if dt == np.float64 and not jax.config.jax_enable_x64:
        raise InputError("jax_function: this kernel is float64 and JAX runs in float32: call "
                         "jax.config.update('jax_enable_x64', True) first, or use a float32 kernel")

    def check(args):
        # at trace time, so that a mistake is one line and not an error raised inside the
        # callback (which JAX reports as a runtime error with its traceback)
        ad.check_count("jax_function", args)
        first, width = ad.data[0]
        if np.ndim(args[n]) != 2:
            raise InputError(f"{first}: expected an array of shape (batch, {width}), got {tuple(np.shape(args[n]))}")
        B = np.shape(args[n])[0]
        for name, a, shape in zip(ad.names, args, ad.shapes + [(B, w) for _, w in ad.data]):
            if np.dtype(getattr(a, "dtype", None) or np.result_type(a)) != dt:
                raise InputError(f"{name}: expected dtype {dt} (this kernel's dtype), got {a.dtype}")
            if tuple(np.shape(a)) != shape:
                raise InputError(f"{name}: expected shape {shape}, got {tuple(np.shape(a))}")

    def host(*arrays):
        # the callback gets JAX arrays on the host: NumPy views of them for the kernel
        loss, grads, dgrads = ad.run([np.asarray(a) for a in arrays])
        return (np.asarray(loss, dt), *grads, *[g for g in dgrads if g is not None])

    def run(args):
        check(args)
        shape = [jax.ShapeDtypeStruct((), dt)] + [jax.ShapeDtypeStruct(s, dt) for s in ad.shapes]
        shape += [jax.ShapeDtypeStruct(np.shape(a), dt) for a, have in zip(args[n:], ad.grad_data) if have]
        return jax.pure_callback(host, tuple(shape), *args)

    @jax.custom_vjp
    def loss(*args):
        return run(args)[0]

    def loss_fwd(*args):
        out = run(args)
        # the data without a gradient ride along only for their shapes (residuals must be arrays)
        return out[0], (out[1:], [a for a, have in zip(args[n:], ad.grad_data) if not have])

    def loss_bwd(res, g):
        grads, consts = iter(res[0]), iter(res[1])
        out = [g * next(grads) for _ in range(n)]
        for have in ad.grad_data:
            # data without a gradient from the kernel is a constant: a zero cotangent
            out.append(g * next(grads) if have else jnp.zeros_like(next(consts)))
        return tuple(out)

    loss.defvjp(loss_fwd, loss_bwd)
    return loss

"""Generated kernels as differentiable functions of PyTorch and JAX.

Contract: for a Kernel (CPU or CUDA) of an MLP with parameters ``p1, ..., pk`` (the kernel's
``PARAMS`` order: W1, b1, W2, ...),

- ``torch_function(kernel)`` is a ``torch.autograd.Function`` subclass; ``F.apply(p1, ..., pk,
  X, Y)`` is the loss (a 0-d tensor of the kernel's dtype) and its backward gives dL/dp_i and
  dL/dX from the generated kernel (one call of the kernel computes the loss and every gradient
  in the forward; the backward only scales them by the incoming gradient). CPU tensors are
  handed to the kernel as NumPy views (no copy: ``Tensor.numpy`` shares memory) and the
  gradients come back as tensors over the kernel's fresh arrays (``torch.from_numpy``, no copy).
  CUDA tensors given to a CUDA kernel are passed as numba device arrays over the same memory
  (``__cuda_array_interface__``).
- ``jax_function(kernel)`` is a ``jax.custom_vjp`` function ``f(p1, ..., pk, X, Y)`` whose
  forward and backward run the kernel through ``jax.pure_callback`` (so it works under ``jit``;
  ``vmap`` and forward-mode are not supported).

Y is data, not a variable: the kernels give no dL/dY. Torch refuses a Y that requires grad (one
InputError line) rather than returning a silent zero; JAX treats Y as a constant (its cotangent
is zero, as under ``jax.lax.stop_gradient``). Double backward is not supported (the gradients
are numbers from compiled code, not a graph).

Both libraries are optional: asking for interop without the library is one ``SymbpError`` line
saying what to install, never an ImportError traceback. Argument mistakes (a wrong dtype or
shape) are the kernel's own one-line ``InputError`` messages. A float64 kernel under JAX needs
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


def _kernel_parts(kernel):
    """(parameter names, number of parameters) of an MLP kernel (Kernel or CudaKernel)."""
    keys = tuple(kernel.module.PARAMS)
    return keys, len(keys)


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
    """A torch.autograd.Function: ``F.apply(*params, X, Y)`` -> loss (see the module docstring)."""
    torch = _require("torch", "torch_function")
    from torch.autograd.function import once_differentiable
    keys, n = _kernel_parts(kernel)

    class KernelLoss(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *args):
            if len(args) != n + 2:
                raise InputError(f"torch_function: expected {n + 2} arguments "
                                 f"({', '.join(keys)}, X, Y), got {len(args)}")
            ref = args[n]          # results go to X's device
            arrays = [_torch_array(kernel, a) for a in args]
            params = dict(zip(keys, arrays[:n]))
            loss, grads, gx = kernel.loss_and_grads(params, arrays[n], arrays[n + 1])
            out = [torch.from_numpy(grads[k]).to(ref.device) for k in keys]
            ctx.save_for_backward(*out, torch.from_numpy(gx).to(ref.device))
            return torch.tensor(loss, dtype=out[0].dtype, device=ref.device)

        @staticmethod
        @once_differentiable
        def backward(ctx, g):
            if ctx.needs_input_grad[n + 1]:
                raise InputError("Y: the kernel gives no gradient with respect to the targets; "
                                 "pass Y without requires_grad (Y.detach())")
            saved = ctx.saved_tensors
            return (*[g * s if need else None for s, need in zip(saved, ctx.needs_input_grad)], None)

    KernelLoss.__name__ = KernelLoss.__qualname__ = f"{kernel.network.name}_loss"
    KernelLoss.__doc__ = (f"Loss of the generated kernel {kernel.network.name} ({kernel.target}, "
                          f"{kernel.dtype}): apply({', '.join(keys)}, X, Y).")
    return KernelLoss


# -----------------------------------------------------------------------------------------
# JAX
# -----------------------------------------------------------------------------------------
def jax_function(kernel):
    """A jax.custom_vjp function ``f(*params, X, Y)`` -> loss (see the module docstring)."""
    jax = _require("jax", "jax_function")
    import jax.numpy as jnp
    keys, n = _kernel_parts(kernel)
    dt = np.dtype(kernel.dtype)
    if dt == np.float64 and not jax.config.jax_enable_x64:
        raise InputError("jax_function: this kernel is float64 and JAX runs in float32: call "
                         "jax.config.update('jax_enable_x64', True) first, or use a float32 kernel")
    shapes = [tuple(kernel.param_shapes[k]) for k in keys]

    n0, nL = kernel.network.sizes[0], kernel.network.sizes[-1]

    def check(args):
        # at trace time, so that a mistake is the kernel's one line and not an error raised
        # inside the callback (which JAX reports as a runtime error with its traceback)
        if len(args) != n + 2:
            raise InputError(f"jax_function: expected {n + 2} arguments ({', '.join(keys)}, X, Y), "
                             f"got {len(args)}")
        if np.ndim(args[n]) != 2:
            raise InputError(f"X: expected an array of shape (batch, {n0}), got {tuple(np.shape(args[n]))}")
        B = np.shape(args[n])[0]
        for name, a, shape in zip([f"params[{k!r}]" for k in keys] + ["X", "Y"], args,
                                  shapes + [(B, n0), (B, nL)]):
            if np.dtype(getattr(a, "dtype", None) or np.result_type(a)) != dt:
                raise InputError(f"{name}: expected dtype {dt} (this kernel's dtype), got {a.dtype}")
            if tuple(np.shape(a)) != shape:
                raise InputError(f"{name}: expected shape {shape}, got {tuple(np.shape(a))}")

    def host(*arrays):
        # the callback gets JAX arrays on the host: NumPy views of them for the kernel
        arrays = [np.asarray(a) for a in arrays]
        params = dict(zip(keys, arrays[:n]))
        loss, grads, gx = kernel.loss_and_grads(params, arrays[n], arrays[n + 1])
        return (np.asarray(loss, dt), *[grads[k] for k in keys], gx)

    def run(args):
        check(args)
        X = args[n]
        shape = (jax.ShapeDtypeStruct((), dt), *[jax.ShapeDtypeStruct(s, dt) for s in shapes],
                 jax.ShapeDtypeStruct(X.shape, dt))
        return jax.pure_callback(host, shape, *args)

    @jax.custom_vjp
    def loss(*args):
        return run(args)[0]

    def loss_fwd(*args):
        out = run(args)
        return out[0], (out[1:], args[n + 1])

    def loss_bwd(res, g):
        grads, Y = res
        return (*[g * a for a in grads], jnp.zeros(Y.shape, Y.dtype))

    loss.defvjp(loss_fwd, loss_bwd)
    return loss

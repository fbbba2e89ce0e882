"""CudaKernel: the Python face of a generated CUDA module, with the CPU Kernel's methods.

Contract: the same calls as ``symbp.codegen.kernel.Kernel`` (``init_params``, ``forward``,
``loss_and_grad``, ``loss``, ``input_grad``, ``sgd_step``, ``compile``) and the same results
(NumPy arrays and a float loss). Inputs may be NumPy arrays (copied to the device) or numba
device arrays (used in place, no copy); every array is checked before any kernel runs (keys,
shapes, dtype, C order). ``sgd_step`` updates the parameters in place: NumPy parameters are
copied back into the same arrays, device parameters are updated on the device.

A batch is run in chunks of at most ``chunk_size(B)`` rows: on a GPU as many rows as fit in
``MEMORY_FRACTION`` of the free device memory (asked from the driver), capped by ``max_chunk``
when set; under the simulator ``max_chunk`` rows, or the whole batch when it is None. The loss
and the gradients of the chunks add up on the device (the kernels receive the size of the whole
batch for the mean), so a batch too large for the device is split, not refused.
Without a GPU and without the simulator every call raises ``SymbpError(cuda.NO_DEVICE)``.

Arguments are checked as the CPU Kernel checks them (one ``InputError`` line naming the
argument). Threads: the device buffers (parameters, gradients, loss, per-row work) belong to
the kernel, and the device runs one launch sequence at a time anyway, so calls from several
threads are serialized by a lock held from the first copy to the device to the last copy back.
"""
import functools
import threading

import numpy as np

from ..errors import InputError, SymbpError
from . import cuda as _cuda
from .kernel import _ABSENT, Kernel, check_keys, check_lr, check_writable

MEMORY_FRACTION = 0.5   # of the free device memory, for the per-row work buffers of one chunk


def _locked(method):
    """The method run while holding the kernel's lock (see the module docstring)."""
    @functools.wraps(method)
    def call(self, *args, **kwargs):
        with self._lock:
            return method(self, *args, **kwargs)
    return call


def is_device_array(a):
    """A numba device array (or the simulator's stand-in), not a NumPy array."""
    return (not isinstance(a, np.ndarray) and hasattr(a, "copy_to_host")
            and hasattr(a, "shape") and hasattr(a, "dtype"))


class CudaKernel(Kernel):
    def __init__(self, derivation, module, path, dtype, jit, max_chunk=None):
        super().__init__(derivation, module, path, _cuda.TARGET, dtype, jit)
        self.strategy = module.STRATEGY
        self.max_chunk = max_chunk
        self._work = {}        # chunk rows -> per-row device buffers
        self._chunks = {}      # (batch, max_chunk) -> chunk rows
        self._dev = None       # device parameters, gradients and loss (no per-row size)
        self._lock = threading.RLock()   # one call at a time uses the buffers above

    def __repr__(self):
        return (f"<CudaKernel {self.network.name} {self.dtype} {self.strategy} "
                f"max_chunk={self.max_chunk} at {self.path}>")

    # checks -------------------------------------------------------------------------------
    def _array(self, name, a, shape):
        if a is None:
            raise InputError(f"{name}: expected an array of shape {shape} and dtype {self.dtype}, got None")
        if is_device_array(a):
            if np.dtype(a.dtype) != self.dtype:
                raise InputError(f"{name}: expected dtype {self.dtype} (this kernel's dtype), got {a.dtype}")
            if tuple(a.shape) != shape:
                raise InputError(f"{name}: expected shape {shape}, got {tuple(a.shape)}")
            if not a.is_c_contiguous():
                raise InputError(f"{name}: expected a C-contiguous device array")
            return a
        if not isinstance(a, np.ndarray):
            raise InputError(f"{name}: expected a numpy or numba device array of dtype {self.dtype}, "
                             f"got {type(a).__name__}")
        return super()._array(name, a, shape)

    def _check(self, params, X, Y=_ABSENT):
        n0, nL = self.network.sizes[0], self.network.sizes[-1]
        if not (isinstance(X, np.ndarray) or is_device_array(X)) or len(X.shape) != 2:
            got = tuple(X.shape) if hasattr(X, "shape") else type(X).__name__
            raise InputError(f"X: expected an array of shape (batch, {n0}), got {got}")
        B = X.shape[0]
        if B < 1:
            raise InputError("X: expected at least one row (sample)")
        X = self._array("X", X, (B, n0))
        if Y is not _ABSENT:
            Y = self._array("Y", Y, (B, nL))
        check_keys("params", params, self._params)
        ps = [self._array(f"params[{k!r}]", params[k], tuple(self.param_shapes[k])) for k in self._params]
        return ps, X, Y

    def bind(self, params, X, Y):
        """Not for CUDA kernels: the packed single-call step is a CPU entry point."""
        raise SymbpError("bind: a bound step is a CPU kernel entry point; on CUDA call "
                         "sgd_step or loss_and_grad (device arrays stay on the device)")

    # device memory ------------------------------------------------------------------------
    def _bytes_per_row(self):
        m, n = self.module, self.network.sizes
        widths = sum(m.BUFFER_WIDTHS[b] for b in m.FORWARD_BUFFERS + m.BACKWARD_BUFFERS)
        return self.dtype.itemsize * (2 * n[0] + n[-1] + widths)     # X, GX, Y and the buffers

    def chunk_size(self, B):
        """Rows per launch for a batch of B rows (see the module docstring)."""
        mc = self.max_chunk
        if mc is not None and (isinstance(mc, bool) or not isinstance(mc, int) or mc < 1):
            raise InputError(f"max_chunk: expected a positive integer or None, got {mc!r}")
        key = (B, mc)
        c = self._chunks.get(key)
        if c is None:
            c = B if mc is None else min(B, mc)
            if not _cuda.simulator():
                from numba import cuda
                free, _ = cuda.current_context().get_memory_info()
                held = sum(self._bytes_per_row() * rows for rows in self._work)  # reusable
                fit = int((free + held) * MEMORY_FRACTION) // self._bytes_per_row()
                if fit < 1:
                    raise InputError(f"X: not even one sample's work buffers fit in the free device "
                                     f"memory ({free} bytes)")
                c = min(c, fit)
            self._chunks[key] = c
        return c

    def _device(self):
        from numba import cuda
        if self._dev is None:
            shapes = self.param_shapes
            self._dev = {
                "params": [cuda.device_array(shapes[k], self.dtype) for k in self._params],
                "grads": [cuda.device_array(shapes[k], self.dtype) for k in self._params],
                "loss": cuda.device_array(1, self.dtype),
            }
        return self._dev

    def _rows(self, rows):
        from numba import cuda
        w = self._work.get(rows)
        if w is None:
            m, n = self.module, self.network.sizes
            new = lambda width: cuda.device_array((rows, width), self.dtype)
            w = {"X": new(n[0]), "Y": new(n[-1]), "GX": new(n[0]),
                 "fwd": [new(m.BUFFER_WIDTHS[b]) for b in m.FORWARD_BUFFERS],
                 "bwd": [new(m.BUFFER_WIDTHS[b]) for b in m.BACKWARD_BUFFERS]}
            if len(self._work) >= 2:     # a train and a test size stay allocated
                self._work.pop(next(iter(self._work)))
            self._work[rows] = w
        return w

    def _params_on_device(self, ps):
        dev = self._device()
        out = []
        for a, d in zip(ps, dev["params"]):
            if is_device_array(a):
                out.append(a)
            else:
                d.copy_to_device(a)
                out.append(d)
        return out

    @staticmethod
    def _slice(a, lo, hi, buf):
        """Rows lo:hi of a on the device: a view of a device array, or copied into buf."""
        if is_device_array(a):
            return a[lo:hi]
        view = buf[:hi - lo]
        view.copy_to_device(a[lo:hi])
        return view

    def _ready(self):
        _cuda.require_device()

    # calls --------------------------------------------------------------------------------
    def compile(self):
        """Compile every kernel now (Numba compiles on the first launch); returns self.
        A second process loads them from Numba's cache next to the generated file."""
        self._ready()
        params = self.init_params(0)
        X = np.zeros((1, self.network.sizes[0]), self.dtype)
        Y = np.zeros((1, self.network.sizes[-1]), self.dtype)
        self.forward(params, X)
        self.input_grad(params, X, Y)            # the training kernels, dL/dX included
        self.sgd_step(params, X, Y, 0.0)         # and the update kernels
        return self

    @_locked
    def forward(self, params, X):
        """Network output a^L for the rows of X, shape (B, nL), as a NumPy array."""
        ps, X, _ = self._check(params, X)
        self._ready()
        B = X.shape[0]
        c = self.chunk_size(B)
        w = self._rows(c)
        dps = self._params_on_device(ps)
        out = np.empty((B, self.network.sizes[-1]), self.dtype)
        for lo in range(0, B, c):
            hi = min(lo + c, B)
            n = hi - lo
            dX = self._slice(X, lo, hi, w["X"])
            res = self.module.forward(dX, *dps, *[b[:n] for b in w["fwd"]])
            res.copy_to_host(out[lo:hi])
        return out

    def _loss_and_grad(self, ps, X, Y, want_gx):
        """Runs the chunks; leaves the loss and gradients on the device; returns (dps, GX)."""
        self._ready()
        m = self.module
        B = X.shape[0]
        c = self.chunk_size(B)
        w = self._rows(c)
        dev = self._device()
        dps = self._params_on_device(ps)
        for g in dev["grads"]:
            m.zero(g)
        m.zero(dev["loss"])
        GX = np.empty((B, self.network.sizes[0]), self.dtype) if want_gx else None
        for lo in range(0, B, c):
            hi = min(lo + c, B)
            n = hi - lo
            dX = self._slice(X, lo, hi, w["X"])
            dY = self._slice(Y, lo, hi, w["Y"])
            m.loss_and_grad(dX, dY, *dps, *[b[:n] for b in w["fwd"]], *[b[:n] for b in w["bwd"]],
                            *dev["grads"], dev["loss"], w["GX"][:n], want_gx, B)
            if want_gx:
                w["GX"][:n].copy_to_host(GX[lo:hi])
        return dps, GX

    @_locked
    def loss_and_grad(self, params, X, Y, copy=True):
        """(loss, {"gW1": ..., ...} keyed like params), NumPy arrays (``copy`` is accepted for
        the CPU Kernel's signature: the gradients are always fresh host arrays)."""
        ps, X, Y = self._check(params, X, Y)
        self._loss_and_grad(ps, X, Y, False)
        dev = self._device()
        grads = {k: g.copy_to_host() for k, g in zip(self._params, dev["grads"])}
        return float(dev["loss"].copy_to_host()[0]), grads

    @_locked
    def loss_and_grads(self, params, X, Y):
        """(loss, gradients keyed like params, dL/dX) from one launch sequence, NumPy arrays."""
        ps, X, Y = self._check(params, X, Y)
        _, GX = self._loss_and_grad(ps, X, Y, True)
        dev = self._device()
        grads = {k: g.copy_to_host() for k, g in zip(self._params, dev["grads"])}
        return float(dev["loss"].copy_to_host()[0]), grads, GX

    @_locked
    def loss(self, params, X, Y):
        ps, X, Y = self._check(params, X, Y)
        self._loss_and_grad(ps, X, Y, False)
        return float(self._device()["loss"].copy_to_host()[0])

    @_locked
    def input_grad(self, params, X, Y):
        """dL/dX, shape (B, n0), as a NumPy array."""
        ps, X, Y = self._check(params, X, Y)
        return self._loss_and_grad(ps, X, Y, True)[1]

    @_locked
    def sgd_step(self, params, X, Y, lr):
        """theta <- theta - lr dL/dtheta for every parameter, in place; returns the loss before."""
        lr = check_lr(lr, self.dtype)
        ps, X, Y = self._check(params, X, Y)
        check_writable(params, self._params, ps, self.dtype)
        dps, _ = self._loss_and_grad(ps, X, Y, False)
        dev = self._device()
        self.module.sgd(*dps, *dev["grads"], lr)
        for a, d in zip(ps, dps):
            if not is_device_array(a):
                d.copy_to_host(a)
        return float(dev["loss"].copy_to_host()[0])

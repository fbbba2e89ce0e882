"""CudaKernel: the Python face of a generated CUDA module, with the CPU Kernel's methods.

``generate_cuda(derivation, dtype, out_dir, jit, ...)`` emits (``symbp.codegen.cuda``), writes
and imports the CUDA module of a derivation and returns its CudaKernel (here, not in the emitter,
so that the emitter never imports the runtime that imports it).

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

Staying on the device: ``loss_and_grad(..., copy=False)`` and ``device_grads`` give the
kernel's device gradient arrays and ``device_loss`` its loss array (no copy); ``bind`` returns a
``CudaBoundStep`` that holds parameters, batch, gradients and loss on the device and copies the
loss to the host only when asked; ``as_batch``/``take_rows`` let ``symbp.train`` keep device
batches on the device (mini-batches gathered there). A step is one launch to zero every
gradient and the loss, the loss-and-gradient launches (fused: one kernel; tiled: the matrix
products, with the bias gradients folded into them, and the elementwise passes) and one launch
for the update of every parameter (fused: folded into the kernel's epilogue instead).

Arguments are checked as the CPU Kernel checks them (one ``InputError`` line naming the
argument). Threads: the device buffers (parameters, gradients, loss, per-row work) belong to
the kernel, and the device runs one launch sequence at a time anyway, so calls from several
threads are serialized by a lock held from the first copy to the device to the last copy back.
"""
import functools
import hashlib
import threading

import numpy as np

from .. import naming
from ..errors import InputError
from . import cuda as _cuda
from .load import import_module, kernel_path, write
from .kernel import Kernel, check_lr, check_writable

MEMORY_FRACTION = 0.5   # of the free device memory, for the per-row work buffers of one chunk


def generate_cuda(derivation, dtype="float64", out_dir=None, jit=True, *, fuse_width=_cuda.FUSE_WIDTH,
                  geometry=_cuda.DEFAULT_GEOMETRY, max_chunk=None):
    """Emit, write and import the CUDA kernel module of ``derivation``; returns a CudaKernel.

    ``jit=True`` requires a GPU or the simulator first (``SymbpError(NO_DEVICE)`` otherwise);
    ``max_chunk`` caps the samples per launch (the Kernel also splits by free device memory).
    """
    module, path = load_cuda(derivation, dtype, out_dir, jit, fuse_width, geometry)
    return CudaKernel(derivation, module, path, dtype, jit, max_chunk=max_chunk)


def load_cuda(derivation, dtype, out_dir, jit, fuse_width=_cuda.FUSE_WIDTH, geometry=_cuda.DEFAULT_GEOMETRY):
    """``generate_cuda`` up to the kernel object: options and device checked, the module
    emitted, written and imported; returns (module, path). ``codegen.graph_cuda`` wraps the
    module of a chain graph in its own kernel class."""
    _cuda._check_options(dtype, fuse_width, geometry)
    if jit:
        _cuda.require_device()
    net = derivation.network
    source = _cuda.emit_cuda(derivation, dtype, fuse_width=fuse_width, geometry=geometry)
    path = kernel_path(net, _cuda.TARGET, dtype, out_dir)
    write(path, source)
    # The source hash is part of the module name: the same file regenerated with other options
    # (fuse_width, geometry) must not be served from sys.modules as the old module.
    tag = hashlib.sha256(source.encode()).hexdigest()[:8]
    name = f"{naming.import_name(net.name, _cuda.TARGET, dtype, net.digest)}_{tag}"
    return import_module(path, name, jit=True, digest=net.digest), path


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
    def __init__(self, derivation, module, path, dtype, jit, max_chunk=None, rename=None):
        super().__init__(derivation, module, path, _cuda.TARGET, dtype, jit, rename)
        self.strategy = module.STRATEGY
        self.max_chunk = max_chunk
        self._work = {}        # chunk rows -> per-row device buffers
        self._chunks = {}      # (batch, max_chunk) -> chunk rows
        self._dev = None       # device parameters, gradients and loss (no per-row size)
        self._lock = threading.RLock()   # one call at a time uses the buffers above
        self._gathered = {}    # (slot, width) -> device buffer of take_rows

    def __repr__(self):
        return (f"<CudaKernel {self.network.name} {self.dtype} {self.strategy} "
                f"max_chunk={self.max_chunk} at {self.path}>")

    # checks -------------------------------------------------------------------------------
    def _array(self, name, a, shape):
        if not is_device_array(a):
            if a is not None and not isinstance(a, np.ndarray):
                raise InputError(f"{name}: expected a numpy or numba device array of dtype {self.dtype}, "
                                 f"got {type(a).__name__}")
            return super()._array(name, a, shape)       # NumPy's checks (and None's message)
        if np.dtype(a.dtype) != self.dtype:
            raise InputError(f"{name}: expected dtype {self.dtype} (this kernel's dtype), got {a.dtype}")
        if tuple(a.shape) != shape:
            raise InputError(f"{name}: expected shape {shape}, got {tuple(a.shape)}")
        if not a.is_c_contiguous():
            raise InputError(f"{name}: expected a C-contiguous device array")
        return a

    def _is_array(self, a):
        return isinstance(a, np.ndarray) or is_device_array(a)

    def bind(self, params, X, Y):
        """A CudaBoundStep: parameters, batch, gradients and loss held on the device, so that a
        training step is a few launches and no copy between host and device (see its doc)."""
        return CudaBoundStep(self, params, X, Y)

    @property
    def device_grads(self):
        """The gradients of the last loss_and_grad, loss, input_grad or sgd_step call as the
        kernel's own device arrays keyed like params (no copy; the next call overwrites them)."""
        return dict(zip(self._params, self._device()["grads"]))

    @property
    def device_loss(self):
        """The loss of the last call as the kernel's device array of shape (1,) (no copy)."""
        return self._device()["loss"]

    @_locked
    def take_rows(self, a, idx, slot=0):
        """Rows ``idx`` (integers) of ``a``: ``a[idx]`` for a NumPy array; for a device array a
        gather on the device into a buffer of the kernel kept per ``slot`` (X and Y of a
        mini-batch use two slots), returned as a device array; nothing goes to the host."""
        if not is_device_array(a):
            return a[idx]
        from numba import cuda
        idx = np.ascontiguousarray(idx, dtype=np.int64)
        key = (slot, a.shape[1])
        buf = self._gathered.get(key)
        if buf is None or buf.shape[0] < idx.shape[0]:
            buf = self._gathered[key] = cuda.device_array((idx.shape[0], a.shape[1]), self.dtype)
        return self.module.gather(a, cuda.to_device(idx), buf)

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
                # the fused kernel's ticket counter for the update in its epilogue (0 between launches)
                "done": cuda.to_device(np.zeros(1, np.int32)),
            }
        return self._dev

    def _rows(self, rows):
        w = self._work.get(rows)
        if w is None:
            w = _work_buffers(self, rows)
            if len(self._work) >= 2:     # a train and a test size stay allocated
                self._work.pop(next(iter(self._work)))
            self._work[rows] = w
        return w

    def _params_on_device(self, ps):
        """The parameters as device arrays: device arrays as they are, NumPy arrays copied into
        the kernel's own."""
        out = list(ps)
        for i, (a, d) in enumerate(zip(ps, self._device()["params"])):
            if not is_device_array(a):
                d.copy_to_device(a)
                out[i] = d
        return out

    def _ready(self):
        _cuda.require_device()

    # calls --------------------------------------------------------------------------------
    def compile(self):
        """Compile every kernel now (Numba compiles on the first launch); returns self.
        A second process loads them from Numba's cache next to the generated file."""
        self._ready()
        return super().compile()

    def _compile_calls(self):
        # the training kernels, dL/dX included, and the update kernels
        return (self.input_grad, lambda *a: self.sgd_step(*a, 0.0))

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
            dX = _slice(X, lo, hi, w["X"])
            res = self.module.forward(dX, *dps, *[b[:n] for b in w["fwd"]])
            res.copy_to_host(out[lo:hi])
        return out

    def _loss_and_grad(self, params, X, Y, want_gx, lr=None):
        """Checks the arguments (with lr, ``sgd_step``: the parameters must be writable), runs
        the chunks, leaves the loss and gradients on the device; returns (ps, dps, GX). With lr,
        the last chunk's launch also updates the parameters (theta - lr g)."""
        ps, X, Y = self._check(params, X, Y)
        if lr is not None:
            check_writable(params, self._params, ps, self.dtype)
        self._ready()
        B = X.shape[0]
        c = self.chunk_size(B)
        dev = self._device()
        dps = self._params_on_device(ps)
        GX = np.empty((B, self.network.sizes[0]), self.dtype) if want_gx else None
        _launch(self.module, X, Y, dps, self._rows(c), dev, c, lr, GX)
        return ps, dps, GX

    def _loss(self):
        return float(self._device()["loss"].copy_to_host()[0])

    def _grads(self):
        return {k: g.copy_to_host() for k, g in zip(self._params, self._device()["grads"])}

    @_locked
    def loss_and_grad(self, params, X, Y, copy=True):
        """(loss, {"W1": dL/dW1, ...} keyed like params) as NumPy arrays; ``copy=False`` gives
        the kernel's device gradient arrays instead (``device_grads``: no copy to the host)."""
        self._loss_and_grad(params, X, Y, False)
        return self._loss(), (self._grads() if copy else self.device_grads)

    @_locked
    def loss_and_grads(self, params, X, Y):
        """(loss, gradients keyed like params, dL/dX) from one launch sequence, NumPy arrays."""
        GX = self._loss_and_grad(params, X, Y, True)[2]
        return self._loss(), self._grads(), GX

    @_locked
    def loss(self, params, X, Y):
        self._loss_and_grad(params, X, Y, False)
        return self._loss()

    @_locked
    def input_grad(self, params, X, Y):
        """dL/dX, shape (B, n0), as a NumPy array."""
        return self._loss_and_grad(params, X, Y, True)[2]

    @_locked
    def sgd_step(self, params, X, Y, lr):
        """theta <- theta - lr dL/dtheta for every parameter, in place; returns the loss before."""
        lr = check_lr(lr, self.dtype)
        ps, dps, _ = self._loss_and_grad(params, X, Y, False, lr)     # the update in the last launch
        for a, d in zip(ps, dps):
            if not is_device_array(a):
                d.copy_to_host(a)
        return self._loss()


def _work_buffers(kernel, rows):
    """Per-row device buffers of a chunk of ``rows`` rows: X, Y, GX and the module's forward and
    backward buffers."""
    from numba import cuda
    m, n = kernel.module, kernel.network.sizes
    new = lambda width: cuda.device_array((rows, width), kernel.dtype)   # noqa: E731
    return {"X": new(n[0]), "Y": new(n[-1]), "GX": new(n[0]),
            "fwd": [new(m.BUFFER_WIDTHS[b]) for b in m.FORWARD_BUFFERS],
            "bwd": [new(m.BUFFER_WIDTHS[b]) for b in m.BACKWARD_BUFFERS]}


def _slice(a, lo, hi, buf):
    """Rows lo:hi of a on the device: a view of a device array, or copied into buf."""
    if is_device_array(a):
        return a[lo:hi]
    view = buf[:hi - lo]
    view.copy_to_device(a[lo:hi])
    return view


def _launch(m, X, Y, ps, w, dev, c, lr=None, GX=None):
    """One launch to zero the gradients and the loss of ``dev`` ({"grads", "loss", "done"}
    device arrays), then the loss-and-gradient launch of each chunk of ``c`` rows (work
    buffers ``w``) adding into them; dL/dX into GX (host) when given; with lr, the last launch
    also updates the parameters ``ps``."""
    B = X.shape[0]
    m.zero_grads(*dev["grads"], dev["loss"])
    for lo in range(0, B, c):
        hi = min(lo + c, B)
        n = hi - lo
        m.loss_and_grad(_slice(X, lo, hi, w["X"]), _slice(Y, lo, hi, w["Y"]), *ps, *[b[:n] for b in w["fwd"]],
                        *[b[:n] for b in w["bwd"]], *dev["grads"], dev["loss"], w["GX"][:n], GX is not None, B,
                        dev["done"], 0.0 if lr is None else lr, lr is not None and hi == B)
        if GX is not None:
            w["GX"][:n].copy_to_host(GX[lo:hi])


def as_batch(kernel, a):
    """A batch for a training loop (symbp.train): a device array of a CUDA kernel as it is (no
    copy to the host), anything else as a C-contiguous NumPy array of the kernel's dtype."""
    if is_device_array(a) and getattr(kernel, "target", None) == _cuda.TARGET:
        return a
    return np.ascontiguousarray(a, dtype=kernel.dtype)


def take_rows(kernel, a, idx, slot=0):
    """Rows ``idx`` of a batch: ``a[idx]``, or a gather on the device (``CudaKernel.take_rows``)."""
    return kernel.take_rows(a, idx, slot) if is_device_array(a) else a[idx]


class CudaBoundStep:
    """A training step on the device (``CudaKernel.bind``).

    ``params`` are device arrays (the caller's own device arrays, updated in place, or device
    copies of NumPy parameters made at bind time: read them back with ``params_to_host()``);
    ``grads`` are device arrays keyed like params and ``loss_device`` a device array of shape
    (1,), all owned by the step. ``run()`` computes the loss and gradients (one launch to zero,
    the loss-and-gradient launches of each chunk) and copies nothing; ``sgd(lr)`` is ``run()``
    and one update launch; ``loss`` copies the loss (one number) to the host when asked;
    ``step()`` is ``run()`` and returns that loss, like the CPU BoundStep. A step belongs to one
    thread.
    """

    def __init__(self, kernel, params, X, Y):
        from numba import cuda
        ps, X, Y = kernel._check(params, X, Y)
        kernel._ready()
        self.kernel, keys, dt = kernel, kernel._params, kernel.dtype
        dev = lambda a: a if is_device_array(a) else cuda.to_device(a)   # noqa: E731
        self.params = {k: dev(a) for k, a in zip(keys, ps)}
        self.grads = {k: cuda.device_array(kernel.param_shapes[k], dt) for k in keys}
        self.loss_device = cuda.device_array(1, dt)
        self.X, self.Y = dev(X), dev(Y)
        self.chunk = kernel.chunk_size(X.shape[0])
        self._work = _work_buffers(kernel, self.chunk)
        self._ps = [self.params[k] for k in keys]
        self._dev = {"grads": [self.grads[k] for k in keys], "loss": self.loss_device,
                     "done": cuda.to_device(np.zeros(1, np.int32))}

    def run(self, lr=None):
        """Loss and gradients into loss_device and grads; nothing is copied to the host. With lr
        (``sgd``), the last launch also updates the parameters."""
        _launch(self.kernel.module, self.X, self.Y, self._ps, self._work, self._dev, self.chunk, lr)

    def sgd(self, lr):
        """Loss, gradients and theta <- theta - lr dL/dtheta on the device: 2 launches fused
        (the update in the kernel's epilogue), 5 L + 1 tiled."""
        self.run(check_lr(lr, self.kernel.dtype))

    @property
    def loss(self):
        """The loss of the last run, copied to the host now (a float)."""
        return float(self.loss_device.copy_to_host()[0])

    def params_to_host(self):
        """The parameters as fresh NumPy arrays keyed like params."""
        return {k: a.copy_to_host() for k, a in self.params.items()}

    def __call__(self):
        self.run()
        return self.loss

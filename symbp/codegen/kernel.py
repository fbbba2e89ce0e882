"""Kernel: the Python face of a generated module.

Contract: a Kernel checks every argument before any compiled code runs (keys, shapes, dtype,
numpy arrays not lists, at least one row, Y given where a loss is computed, writable parameters
and a finite real lr for ``sgd_step``; finiteness of the arrays is not checked) and reports a
mistake as one ``InputError`` line naming the argument; a non-contiguous array is copied. It
returns fresh arrays unless ``copy=False`` is asked for. Parameters are a dict {"W1": (n1, n0),
"b1": (n1,), ...} in the kernel's dtype; X is (B, n0) and Y is (B, nL), batch rows.

Threads: a Kernel may be called from several threads at once. Work buffers (one set per batch
size) are kept per thread (``threading.local``), so concurrent calls never write into each
other's buffers; ``copy=False`` returns the calling thread's buffers, which only that thread's
next call overwrites. A ``BoundStep`` owns its arrays and belongs to one thread.

Arithmetic follows NumPy's error model (compiled with ``error_model="numpy"``; plain Python
through ``load.NUMPY_MATH``): an output outside the loss's domain (bce with a <= 0 or a >= 1,
possible only with ``allow_any_output``) or an undefined derivative gives an inf or NaN loss or
gradient, never an exception.

Cost per call: the arrays that passed the checks last are remembered per thread (by identity,
holding references to them until the thread's next call), so a loop over the same arrays pays
for their shapes only; ``loss_and_grad``, ``forward`` and ``sgd_step`` pass the work buffers and
gradients packed (``*_split`` entry points of the generated module), since Numba's call cost
grows with the number of array arguments. ``loss_and_grad(..., out=grads)`` writes into the
caller's arrays instead of fresh ones. ``bind(params, X, Y, optimizer)`` fuses an optimizer's
update into the step (symbp.optim).
"""
import math
import numbers
import operator
import threading

import numpy as np

from ..errors import InputError

_ABSENT = object()     # "no Y/target argument" (forward), as opposed to a None passed by mistake
_SHAPE = operator.attrgetter("shape")


def check_lr(lr, dtype=np.float64, where="lr"):
    """``lr`` as a float when it is one real number, finite in ``dtype`` (a float32 kernel
    steps with DTYPE(lr)), not a bool, not an array; else an InputError naming ``where``. A
    negative lr is allowed (gradient ascent)."""
    if isinstance(lr, np.ndarray) and lr.ndim == 0:
        lr = lr[()]
    if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not math.isfinite(lr) \
            or abs(float(lr)) > float(np.finfo(dtype).max):
        got = f"an array of shape {lr.shape}" if isinstance(lr, np.ndarray) else repr(lr)
        raise InputError(f"{where}: expected one finite real number (in {np.dtype(dtype).name}), got {got}")
    return float(lr)


def check_seed(seed):
    """``seed`` for numpy.random.default_rng: a non-negative integer (or None: fresh entropy)."""
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0):
        raise InputError(f"seed: expected a non-negative integer, got {seed!r}")
    return seed


def check_keys(where, given, expected):
    """An InputError naming ``where`` unless ``given`` is a dict with exactly the keys
    ``expected`` (names listed in the caller's order, unexpected ones in the dict's order)."""
    if not isinstance(given, dict):
        raise InputError(f"{where}: expected a dict with keys {', '.join(expected)}, got {type(given).__name__}")
    missing = [k for k in expected if k not in given]
    extra = [k for k in given if k not in expected]
    if missing or extra:
        raise InputError(f"{where}: missing {missing or 'nothing'}, unexpected {extra or 'nothing'}")


def check_writable(params, keys, checked, dtype):
    """sgd_step updates in place: each checked array must be the caller's own (no copy was
    needed: C-contiguous, right dtype) and writable."""
    for k, a in zip(keys, checked):
        if params[k] is not a:
            raise InputError(f"params[{k!r}]: sgd_step updates in place and needs a C-contiguous "
                             f"array of dtype {dtype}")
        if isinstance(a, np.ndarray) and not a.flags.writeable:
            raise InputError(f"params[{k!r}]: sgd_step updates in place and needs a writable array "
                             f"(this one is read-only)")


def glorot_params(shapes, dtype, seed=0):
    """Parameters for ``shapes`` ({name: shape}): matrices W ~ U(-r, r) with
    r = sqrt(6 / (rows + columns)) (Glorot), vectors zero."""
    rng = np.random.default_rng(check_seed(seed))
    params = {}
    for key, shape in shapes.items():
        if len(shape) >= 2:
            # a convolution kernel (C_out, C_in, k_h, k_w): fans of C_in k_h k_w and C_out k_h k_w
            receptive = int(np.prod(shape[2:]))
            r = np.sqrt(6.0 / ((shape[0] + shape[1]) * receptive))
            params[key] = rng.uniform(-r, r, size=shape).astype(dtype)
        else:
            params[key] = np.zeros(shape, dtype=dtype)
    return params


def check_array(name, a, shape, dtype):
    """``a`` as a C-contiguous array of ``shape`` and ``dtype``, or an InputError naming ``name``."""
    if a is None or a is _ABSENT:
        raise InputError(f"{name}: expected an array of shape {shape} and dtype {dtype}, got None")
    if not isinstance(a, np.ndarray):
        raise InputError(f"{name}: expected a numpy array of dtype {dtype}, got {type(a).__name__}")
    if a.dtype != dtype:
        raise InputError(f"{name}: expected dtype {dtype} (this kernel's dtype), got {a.dtype}; "
                         f"convert with .astype(np.{dtype})")
    if a.shape != shape:
        raise InputError(f"{name}: expected shape {shape}, got {a.shape}")
    return np.ascontiguousarray(a)


def _views(flat, shapes):
    """Views of consecutive parts of the 1-d array ``flat``, one per shape, back to back."""
    out, off = [], 0
    for shape in shapes:
        size = int(np.prod(shape))
        out.append(flat[off:off + size].reshape(shape))
        off += size
    return out


def _getter(keys):
    """dict -> tuple of its values at ``keys`` (in that order); KeyError when one is missing."""
    if len(keys) > 1:
        return operator.itemgetter(*keys)
    if len(keys) == 1:
        return lambda d, k=keys[0]: (d[k],)
    return lambda d: ()


class BaseKernel:
    """The Python face of a generated CPU module, for an MLP (``Kernel``: data X, Y) and a graph
    (``GraphKernel``: data its inputs, then the target) alike: argument checks, buffers per
    thread, the packed calls, ``bind``, ``init_params``, ``torch_function``/``jax_function``.

    Internally the data are a tuple of input arrays (one for an MLP: X) and the target; every
    generated module takes them first, in that order, then the parameters. The subclasses only
    name the data (``_labels``, ``_yname``) and add the calls that exist in one kind only."""

    _labels = ("X",)       # names of the input arrays in messages
    _yname = "Y"           # name of the target in messages

    def __init__(self, derivation, module, path, target, dtype, jit, rename=None):
        self.derivation = derivation
        self.module = module
        self.path = path
        self.target = target
        self.dtype = np.dtype(dtype)
        self.jit = jit
        # the module's parameters in its order, under the caller's names where ``rename`` gives
        # them (a chain graph's CUDA kernel: W1 -> its weight's name); every buffer, bound step
        # and result dict is keyed by _params
        rename = rename or {}
        self.param_shapes = {rename.get(k, k): tuple(v) for k, v in module.PARAM_SHAPES.items()}
        self._params = tuple(rename.get(k, k) for k in module.PARAMS)
        self._shapes = tuple(self.param_shapes[k] for k in self._params)
        self._local = threading.local()    # .work: {batch size: buffers} of the calling thread
        self._getter = _getter(self._params)
        self._sizes = tuple(int(np.prod(s)) for s in self._shapes)
        self._serial_fns = {}              # (batch size, packed): the step function, see _step_fn

    # parameters ---------------------------------------------------------------------------
    def init_params(self, seed=0):
        """Glorot-uniform weights, zero biases (see glorot_params)."""
        return glorot_params(self.param_shapes, self.dtype, seed)

    # checks -------------------------------------------------------------------------------
    def _array(self, name, a, shape):
        return check_array(name, a, shape, self.dtype)

    def _is_array(self, a):
        return isinstance(a, np.ndarray)

    def _fast(self, a, shape):
        return type(a) is np.ndarray and a.dtype == self.dtype and a.shape == shape and a.flags.c_contiguous

    def _inputs_tuple(self, inputs):
        """The input arrays of ``inputs`` as a tuple, unchecked, or None when they are not given
        in the plain form (the slow check then says what is wrong)."""
        return (inputs,)

    def _check_data(self, params, inputs, Y=_ABSENT):
        """(parameter arrays in order, input arrays (tuple), Y), all checked (Y stays _ABSENT
        when not given); the common case costs a few attribute reads per array, the messages are
        built only on failure.

        The arrays that passed the full check last (inputs, Y and the parameters) are remembered
        per thread, by identity (a reference is held, so no other array can take their ids): the
        same arrays again, as in a training loop, are only checked for their shapes. An array
        whose dtype or strides are reassigned in place between calls (``a.dtype = ...``) is not
        checked again."""
        if type(params) is dict and len(params) == len(self._params):
            try:
                ps = self._getter(params)
            except KeyError:
                ps = None
            xs = self._inputs_tuple(inputs) if ps is not None else None
            if xs is not None:
                arrays = (*xs, *ps) if Y is _ABSENT else (*xs, Y, *ps)
                ids = tuple(map(id, arrays))
                local = self._local
                if ids == getattr(local, "ids", None) and tuple(map(_SHAPE, arrays)) == local.shapes:
                    return ps, xs, Y
                X = xs[0]
                if type(X) is np.ndarray and X.ndim == 2 and X.shape[0] >= 1:
                    B = X.shape[0]
                    if all(self._fast(x, (B, w)) for x, w in zip(xs, self._in_widths)) \
                            and (Y is _ABSENT or self._fast(Y, (B, self._y_width))) \
                            and all(map(self._fast, ps, self._shapes)):
                        local.ids, local.held, local.shapes = ids, arrays, tuple(map(_SHAPE, arrays))
                        return ps, xs, Y
        return self._check_slow(params, inputs, Y)

    def _check_slow(self, params, inputs, Y):
        xs = self._inputs_tuple(inputs)
        label, w0 = self._labels[0], self._in_widths[0]
        X = xs[0]
        if not self._is_array(X) or len(X.shape) != 2:
            got = tuple(X.shape) if self._is_array(X) else type(X).__name__
            raise InputError(f"{label}: expected an array of shape (batch, {w0}), got {got}")
        B = X.shape[0]
        if B < 1:
            raise InputError(f"{label}: expected at least one row (sample)")
        xs = tuple(self._array(name, x, (B, w)) for name, x, w in zip(self._labels, xs, self._in_widths))
        if Y is not _ABSENT:
            Y = self._array(self._yname, Y, (B, self._y_width))
        return self._keyed("params", params), xs, Y

    def _keyed(self, where, given):
        """The arrays of the dict ``given`` in parameter order, checked as parameters."""
        check_keys(where, given, self._params)
        return [self._array(f"{where}[{k!r}]", given[k], s) for k, s in zip(self._params, self._shapes)]

    def _work_size(self, B):
        """Entries of the packed work array for B rows: B x WORK_WIDTH, then USE_SIZE."""
        return B * self.module.WORK_WIDTH + getattr(self.module, "USE_SIZE", 0)

    def _buffers(self, B):
        """The calling thread's work buffers for batch size B (made on first use): (forward
        buffers, backward buffers, gradients, dL/dX, work, gtheta), the buffers and gradients
        views into the packed ``work`` and ``gtheta`` in the layout of loss_and_grad_packed
        (the backward buffers end with the per-use parameter gradients; dL/dX, the view of the
        first input gradient's buffer, is None where no input is marked grad)."""
        try:
            return self._local.work[B]      # the common case: one lookup each
        except AttributeError:
            work = self._local.work = {}
        except KeyError:
            work = self._local.work
        m = self.module
        names = m.FORWARD_BUFFERS + m.BACKWARD_BUFFERS
        packed = np.empty(self._work_size(B), self.dtype)
        views = _views(packed, [(B, m.BUFFER_WIDTHS[n]) for n in names]
                       + list(getattr(m, "USE_BUFFERS", {}).values()))
        fwd, bwd = views[:len(m.FORWARD_BUFFERS)], views[len(m.FORWARD_BUFFERS):]
        gtheta = np.empty(sum(self._sizes), self.dtype)
        grads = _views(gtheta, self._shapes)
        # dL/d(first input): its backward buffer, written by loss_and_input_grad only
        gname = next(iter(getattr(m, "INPUT_GRADS", {}).values()), None)
        gx = views[names.index(gname)] if gname is not None else None
        if len(work) >= 4:   # a few batch sizes (train and test) stay allocated
            work.pop(next(iter(work)))
        w = work[B] = (fwd, bwd, grads, gx, packed, gtheta)
        return w

    def _parallel(self, B):
        """Whether a step of B rows takes the module's ``*_parallel`` variant: enough work per
        call (B x PARALLEL_COST >= PARALLEL_MIN, see symbp.codegen.emit) and more than one Numba
        thread. Modules without the variant (a BLAS layer; graph kernels) stay serial."""
        m = self.module
        if not self.jit or B * getattr(m, "PARALLEL_COST", 0) < getattr(m, "PARALLEL_MIN", 1):
            return False
        import numba
        return numba.get_num_threads() > 1

    def _step_fn(self, B, packed=False):
        """The module's loss_and_grad (``packed``: loss_and_grad_packed) for B rows: the parallel
        variant (see _parallel), else the serial one, on one BLAS thread when the step's products
        are small (B x BLAS_FLOPS < BLAS_THREADS_MIN, see symbp.codegen.emit)."""
        fn = self._serial_fns.get((B, packed))      # the common case: one lookup
        if fn is not None:
            return fn
        m = self.module
        if self._parallel(B):      # not cached: it depends on the calling thread's thread count
            return m.loss_and_grad_packed_parallel if packed else m.loss_and_grad_parallel
        fn = m.loss_and_grad_packed if packed else m.loss_and_grad
        flops = B * getattr(m, "BLAS_FLOPS", 0)
        if self.jit and 0 < flops < m.BLAS_THREADS_MIN:
            from .blas import one_thread
            fn = one_thread(fn)
        if B * getattr(m, "PARALLEL_COST", 0) < getattr(m, "PARALLEL_MIN", 1) and len(self._serial_fns) < 16:
            self._serial_fns[(B, packed)] = fn     # serial at any thread count
        return fn

    def _zero_data(self):
        """One all-zero row of each input and of the target (for compile)."""
        xs = tuple(np.zeros((1, w), self.dtype) for w in self._in_widths)
        return self._as_inputs(xs), np.zeros((1, self._y_width), self.dtype)

    def _as_inputs(self, xs):
        """The caller's form of the input arrays ``xs`` (X for an MLP)."""
        return xs[0]

    def compile(self):
        """Compile every entry point now (Numba compiles lazily, on the first call); returns self.
        A second process loads the compiled code from Numba's cache next to the generated file."""
        params = self.init_params(0)
        X, Y = self._zero_data()
        self.forward(params, X)
        # A loss allowed after any output (bce after ReLU: allow_any_output) is undefined at this
        # all-zero point (a = 0); each entry point is compiled before it fails there.
        for call in self._compile_calls():
            try:
                call(params, X, Y)
            except InputError as e:
                if not isinstance(e.__cause__, (ArithmeticError, ValueError)):
                    raise
        return self

    def _compile_calls(self):
        return (self.loss_and_grad, lambda *a: self.sgd_step(*a, 0.0))

    def _run(self, where, fn, *args):
        """fn(*args). The generated code follows NumPy's error model (inf and NaN, see the
        module contract), so no arithmetic exception is expected; should one escape (a file
        generated before that model), it is one InputError line naming the call, not a
        traceback from generated code."""
        try:
            return fn(*args)
        except (ArithmeticError, ValueError) as e:
            raise self._domain_error(where, e) from e

    def _domain_error(self, where, e):
        return InputError(f"{where}: the generated code raised {type(e).__name__} ({e}) at these "
                          f"values (is an output outside the domain of loss {self._loss_name!r}?)")

    # calls --------------------------------------------------------------------------------
    def forward(self, params, X):
        """The output the loss reads (MLP: a^L), shape (B, width), for the rows of the inputs."""
        ps, xs, _ = self._check_data(params, X)
        return self.module.forward_split(*xs, *ps, self._buffers(xs[0].shape[0])[4]).copy()

    def loss_and_grad(self, params, X, Y, copy=True, out=None):
        """(loss, {"W1": dL/dW1, ...} keyed like params). copy=False returns the calling
        thread's work buffers (overwritten by its next call); ``out`` (a dict keyed like params
        of C-contiguous, writable arrays of the parameters' shapes and the kernel's dtype)
        receives the gradients instead and is returned."""
        ps, xs, Y = self._check_data(params, X, Y)
        B = xs[0].shape[0]
        try:
            fwd, bwd, grads, _, work, gtheta = self._local.work[B]    # the common case
        except (AttributeError, KeyError):
            fwd, bwd, grads, _, work, gtheta = self._buffers(B)
        if out is not None:
            outs = self._out(out)
            loss = self._run("loss_and_grad", self.module.loss_and_grad, *xs, Y, *ps, *fwd, *bwd, *outs)
            return float(loss), out
        variant = self._step_fn(B)
        if variant is not self.module.loss_and_grad:     # parallel, or on one BLAS thread
            loss = self._run("loss_and_grad", variant, *xs, Y, *ps, *fwd, *bwd, *grads)
        else:
            try:
                loss = self.module.loss_and_grad_split(*xs, Y, *ps, gtheta, work)
            except (ArithmeticError, ValueError) as e:
                raise self._domain_error("loss_and_grad", e) from e
        if copy:
            return float(loss), {k: g.copy() for k, g in zip(self._params, grads)}
        return float(loss), dict(zip(self._params, grads))

    def _out(self, out):
        """The arrays of ``out`` (loss_and_grad), checked as parameters are, and writable."""
        if type(out) is dict and len(out) == len(self._params):
            try:
                outs = self._getter(out)
            except KeyError:
                outs = None
            if outs is not None and all(map(self._fast, outs, self._shapes)) \
                    and all(o.flags.writeable for o in outs):
                return outs
        outs = self._keyed("out", out)
        for k, o in zip(self._params, outs):
            if out[k] is not o or not o.flags.writeable:
                raise InputError(f"out[{k!r}]: loss_and_grad writes the gradients into it and needs a "
                                 f"writable C-contiguous array of dtype {self.dtype}")
        return outs

    def bind(self, params, X, Y, optimizer=None):
        """A BoundStep: the parameters copied into one packed array and the batch fixed, so that
        each call of the step is a single call into compiled code (for training loops and
        benchmarks where the per-call cost matters). With ``optimizer`` (symbp.SGD, Adam, AdamW,
        see symbp.optim) each call is one fused training step: forward, backward and update of
        the packed parameters, the optimizer's state kept in ``step.state``."""
        return BoundStep(self, params, X, Y, optimizer)

    def loss(self, params, X, Y):
        return self.loss_and_grad(params, X, Y, copy=False)[0]

    def sgd_step(self, params, X, Y, lr):
        """theta <- theta - lr dL/dtheta for every parameter, in place; returns the loss before."""
        lr = check_lr(lr, self.dtype)
        ps, xs, Y = self._check_data(params, X, Y)
        check_writable(params, self._params, ps, self.dtype)
        b = self._buffers(xs[0].shape[0])
        return float(self._run("sgd_step", self.module.sgd_step_split, *xs, Y, *ps, b[5], b[4], lr))

    def _with_input_grads(self, where, params, inputs, Y):
        """(loss, fresh gradients keyed like params, the buffers of ``_buffers``) of one call of
        the module's loss_and_input_grad, the entry point that also computes the input
        gradients (into the backward buffers)."""
        ps, xs, Y = self._check_data(params, inputs, Y)
        b = self._buffers(xs[0].shape[0])
        loss = self._run(where, self.module.loss_and_input_grad, *xs, Y, *ps, *b[0], *b[1], *b[2])
        return float(loss), {k: g.copy() for k, g in zip(self._params, b[2])}, b

    # interop (symbp.codegen.interop) ----------------------------------------------------
    def torch_function(self):
        """A torch.autograd.Function: ``F.apply(*params, *data)`` is the loss, with gradients
        for the parameters and the data the kernel differentiates (see symbp.codegen.interop)."""
        from .interop import torch_function
        return torch_function(self)

    def jax_function(self):
        """A jax.custom_vjp function ``f(*params, *data)`` -> loss (through pure_callback)."""
        from .interop import jax_function
        return jax_function(self)


class Kernel(BaseKernel):
    """The kernel of an MLP: data X (B, n0) and Y (B, nL)."""

    def __init__(self, derivation, module, path, target, dtype, jit, rename=None):
        super().__init__(derivation, module, path, target, dtype, jit, rename)
        self.network = derivation.network
        self._n0, self._nL = self.network.sizes[0], self.network.sizes[-1]
        self._in_widths, self._y_width = (self._n0,), self._nL
        self._loss_name = self.network.loss.name

    def __repr__(self):
        return f"<Kernel {self.network.name} {self.target} {self.dtype} jit={self.jit} at {self.path}>"

    def _check(self, params, X, Y=_ABSENT):
        """(parameter arrays in order, X, Y), all checked (see BaseKernel._check_data)."""
        ps, xs, Y = self._check_data(params, X, Y)
        return ps, xs[0], Y

    def _compile_calls(self):
        return (self.loss_and_grad, self.input_grad, lambda *a: self.sgd_step(*a, 0.0))

    def input_grad(self, params, X, Y):
        """dL/dX, shape (B, n0): backpropagation to the data (chapter 14 "Backpropagation", 14.9)."""
        return self._with_input_grads("input_grad", params, X, Y)[2][3].copy()

    def loss_and_grads(self, params, X, Y):
        """(loss, {"W1": dL/dW1, ...}, dL/dX) from one call of the kernel, fresh arrays."""
        loss, grads, buffers = self._with_input_grads("loss_and_grads", params, X, Y)
        return loss, grads, buffers[3].copy()


class GraphKernel(BaseKernel):
    """The kernel of a graph: ``inputs`` a dict {input name: (B, width)} of the graph's input
    nodes (the loss's target excluded), or one array when the graph has exactly one such input;
    ``target`` (B, target width). Gradients of the inputs marked grad come from ``input_grads``;
    ``values`` gives every node's value after the forward pass."""

    _yname = "target"

    def __init__(self, derivation, module, path, target, dtype, jit):
        super().__init__(derivation, module, path, target, dtype, jit)
        self.graph = derivation.graph
        self.network = self.graph
        self.inputs = dict(module.INPUTS)
        self.target_name, self.target_width = module.TARGET
        self._names = tuple(self.inputs)
        self._labels = tuple(f"inputs[{k!r}]" for k in self._names)
        self._in_widths, self._y_width = tuple(self.inputs.values()), self.target_width
        self._in_getter = _getter(self._names)
        self._loss_name = self.graph.loss_node.loss.name
        # the normalization family: a batch-coupled node (batchnorm in training mode) needs two
        # samples at least; running statistics start as PyTorch's (mean 0, variance 1)
        self._coupled = next((n.name for n in self.graph.nodes if n.op.couples_samples), None)
        self.running = {node: {"mean": np.zeros(self.graph.node(node).width, self.dtype),
                               "var": np.ones(self.graph.node(node).width, self.dtype)}
                        for node in getattr(module, "RUNNING", {})}
        self._running_arrays = tuple(a for r in self.running.values() for a in (r["mean"], r["var"]))

    # the normalization family ---------------------------------------------------------------
    def init_params(self, seed=0):
        """As ``BaseKernel.init_params``, with the normalizations' scales gamma one (PyTorch's
        initialization of BatchNorm1d and LayerNorm: the identity map before training)."""
        params = super().init_params(seed)
        for p in self.graph.params:
            if p.role == "scale":
                params[p.name][...] = 1
        return params

    def _work_size(self, B):
        if self._coupled is not None and B < 2:
            raise InputError(f"node {self._coupled!r}: batchnorm in training mode needs a batch of at least 2 "
                             f"samples (the variance of one sample is 0), got {B}; "
                             f"forward(..., mode=\"inference\") normalizes with the running statistics")
        return super()._work_size(B)

    def _zero_data(self):
        if self._coupled is None:
            return super()._zero_data()
        xs = tuple(np.zeros((2, w), self.dtype) for w in self._in_widths)
        return self._as_inputs(xs), np.zeros((2, self._y_width), self.dtype)

    def _after_training(self, xs, work):
        """The running statistics moved toward this training pass's batch statistics."""
        if self._running_arrays:
            self.module.update_running(*xs, work, *self._running_arrays)

    def _updated(self, params, inputs):
        if self._running_arrays:
            _, xs, _ = self._check_data(params, inputs)
            self._after_training(xs, self._buffers(xs[0].shape[0])[4])

    def loss_and_grad(self, params, X, Y, copy=True, out=None):
        result = super().loss_and_grad(params, X, Y, copy, out)
        self._updated(params, X)
        return result

    def sgd_step(self, params, X, Y, lr):
        loss = super().sgd_step(params, X, Y, lr)
        self._updated(params, X)
        return loss

    def forward(self, params, X, mode="train"):
        """The output the loss reads, shape (B, width). ``mode``: "train" (batch statistics,
        dropout masks applied; the running statistics updated, as a PyTorch module in train())
        or "inference" (running statistics, dropout left out; nothing updated)."""
        if mode not in ("train", "inference"):
            raise InputError(f"mode: expected \"train\" or \"inference\", got {mode!r}")
        if mode == "train":
            out = super().forward(params, X)
            self._updated(params, X)
            return out
        ps, xs, _ = self._check_data(params, X)
        if not hasattr(self.module, "forward_inference"):      # no op that has modes
            return super().forward(params, X)
        work = np.empty(xs[0].shape[0] * self.module.WORK_WIDTH + getattr(self.module, "USE_SIZE", 0), self.dtype)
        return self.module.forward_inference(*xs, *ps, work, *self._running_arrays).copy()

    def __repr__(self):
        return f"<GraphKernel {self.graph.name} {self.target} {self.dtype} jit={self.jit} at {self.path}>"

    def _inputs_tuple(self, inputs):
        if type(inputs) is dict and len(inputs) == len(self._names):
            try:
                return self._in_getter(inputs)
            except KeyError:
                return None
        if isinstance(inputs, np.ndarray) and len(self._names) == 1:
            return (inputs,)
        return None

    def _check_slow(self, params, inputs, Y):
        names = self._names
        if isinstance(inputs, np.ndarray) and len(names) == 1:
            inputs = {names[0]: inputs}
        if not isinstance(inputs, dict):
            raise InputError(f"inputs: expected a dict with keys {', '.join(names)}"
                             + (" (or one array)" if len(names) == 1 else "")
                             + f", got {type(inputs).__name__}")
        check_keys("inputs", inputs, names)
        # a tensor input (shape = [C, H, W]) may come as (B, C, H, W): its C-order rows are the
        # (B, C*H*W) the module reads (a view when the array is C-contiguous)
        shaped = {n.name: n.shape for n in self.graph.inputs if n.shape is not None}
        inputs = {k: (np.ascontiguousarray(x).reshape(len(x), -1)
                      if k in shaped and isinstance(x, np.ndarray) and x.shape[1:] == shaped[k] else x)
                  for k, x in inputs.items()}
        return super()._check_slow(params, inputs, Y)

    def _as_inputs(self, xs):
        return dict(zip(self._names, xs))

    def _check(self, params, inputs, target=_ABSENT):
        """(parameter arrays, input arrays in INPUTS order, target), all checked."""
        return self._check_data(params, inputs, target)

    def values(self, params, inputs):
        """{node name: value} of every node after the forward pass (inputs included)."""
        ps, xs, _ = self._check_data(params, inputs)
        B = xs[0].shape[0]
        self.module.forward_split(*xs, *ps, self._buffers(B)[4])
        out = {k: x.copy() for k, x in zip(self._names, xs)}
        out.update({k: v.copy() for k, v in zip(self.module.FORWARD_BUFFERS, self._buffers(B)[0])})
        return out

    def input_grads(self, params, inputs, target):
        """{input: dL/dinput} for the inputs marked grad (backpropagation to the data, chapter 14
        "Backpropagation", section 14.9); shape (B, width) each."""
        if not self.module.INPUT_GRADS:
            raise InputError(f"input_grads: no input of graph {self.graph.name!r} is marked grad = true")
        return self.loss_and_input_grads(params, inputs, target)[2]

    def loss_and_input_grads(self, params, inputs, target):
        """(loss, {param: grad}, {input: grad}) from one pass (loss_and_input_grad: the input
        gradients are computed only here, not in loss_and_grad)."""
        loss, grads, buffers = self._with_input_grads("loss_and_input_grads", params, inputs, target)
        self._updated(params, inputs)
        named = dict(zip(self.module.BACKWARD_BUFFERS, buffers[1]))
        return loss, grads, {k: named[label].copy() for k, label in self.module.INPUT_GRADS.items()}


class BoundStep:
    """One training-gradient step bound to packed arrays (``Kernel.bind``).

    ``step()`` returns the loss and leaves the gradients in ``step.grads`` (views into one
    packed array, keyed like params); ``step.params`` are views into the packed parameters
    (a copy made at bind time: update them in place, e.g. ``step.theta -= lr * step.gtheta``).

    With an optimizer, ``step()`` also updates ``step.theta`` (one compiled call,
    ``train_step_<kind>`` of the generated module); ``step.state`` holds the optimizer's buffers
    (m, v or the momentum buffer, each of theta's size, back to back), ``step.hyper`` its
    hyperparameters and, last, the number of steps taken; ``step.grads`` are the gradients of
    the last step (after clipping). ``rebatch(X, Y)`` binds another batch (checked);
    ``write_back(params)`` copies the packed parameters into the caller's arrays.
    """

    def __init__(self, kernel, params, X, Y, optimizer=None):
        opt = None
        if optimizer is not None:
            from ..model.optim import optimizer as make_optimizer
            opt = make_optimizer(optimizer)
        ps, xs, Y = kernel._check_data(params, X, Y)
        keys = kernel._params
        self._kernel = kernel
        self.theta = np.concatenate([a.ravel() for a in ps]) if ps else np.zeros(0, kernel.dtype)
        self.gtheta = np.zeros_like(self.theta)
        self.work = np.empty(0, kernel.dtype)      # sized by _set_batch
        self.params = dict(zip(keys, _views(self.theta, kernel._shapes)))
        self.grads = dict(zip(keys, _views(self.gtheta, kernel._shapes)))
        self.optimizer = opt
        if opt is None:
            self._fn = kernel._step_fn(xs[0].shape[0], packed=True)
            self._tail = ()
        else:
            self._fn = getattr(kernel.module, f"train_step_{opt.kind}")
            self.state = np.zeros(len(opt.rule.state) * self.theta.size, kernel.dtype)
            self.hyper = opt.hyper_array()
            self._tail = (self.state, self.hyper)
        self._set_batch(*xs, Y)
        self._after = getattr(kernel, "_after_training", None) if getattr(kernel, "_running_arrays", ()) else None

    @property
    def steps(self):
        """Number of optimizer steps taken (0 without an optimizer)."""
        return 0 if self.optimizer is None else int(self.hyper[-1])

    def rebatch(self, X, Y):
        """Bind the batch (X, Y; for a graph kernel: inputs, target) instead (checked as by the
        kernel; the work array grows when the batch is larger than any bound before)."""
        _, xs, Y = self._kernel._check_data(self.params, X, Y)
        self._set_batch(*xs, Y)

    def _set_batch(self, *data):
        # the input arrays and the target, already checked (C-contiguous, dtype, widths)
        need = self._kernel._work_size(data[0].shape[0])
        if self.work.size < need:
            self.work = np.empty(need, self._kernel.dtype)
        self._data = data
        self._args = data + (self.theta, self.gtheta, self.work) + self._tail

    def write_back(self, params):
        """Copy the packed parameters into the arrays of ``params`` (in place)."""
        for key, a in self.params.items():
            params[key][...] = a

    def __call__(self):
        loss = self._fn(*self._args)
        if self._after is not None:     # running statistics (batch normalization)
            self._after(self._data[:-1], self.work)
        return loss

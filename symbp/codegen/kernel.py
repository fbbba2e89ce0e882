"""Kernel: the Python face of a generated module.

Contract: a Kernel checks every array it is given before any compiled code runs (keys, shapes,
dtype, finiteness is not checked), keeps one set of work buffers per batch size, and returns
fresh arrays unless ``copy=False`` is asked for. Parameters are a dict {"W1": (n1, n0),
"b1": (n1,), ...} in the kernel's dtype; X is (B, n0) and Y is (B, nL), batch rows.
"""
import numpy as np

from ..errors import InputError


def glorot_params(shapes, dtype, seed=0):
    """Parameters for ``shapes`` ({name: shape}): matrices W ~ U(-r, r) with
    r = sqrt(6 / (rows + columns)) (Glorot), vectors zero."""
    rng = np.random.default_rng(seed)
    params = {}
    for key, shape in shapes.items():
        if len(shape) == 2:
            r = np.sqrt(6.0 / (shape[0] + shape[1]))
            params[key] = rng.uniform(-r, r, size=shape).astype(dtype)
        else:
            params[key] = np.zeros(shape, dtype=dtype)
    return params


def check_array(name, a, shape, dtype):
    """``a`` as a C-contiguous array of ``shape`` and ``dtype``, or an InputError naming ``name``."""
    if not isinstance(a, np.ndarray):
        raise InputError(f"{name}: expected a numpy array of dtype {dtype}, got {type(a).__name__}")
    if a.dtype != dtype:
        raise InputError(f"{name}: expected dtype {dtype} (this kernel's dtype), got {a.dtype}; "
                         f"convert with .astype(np.{dtype})")
    if a.shape != shape:
        raise InputError(f"{name}: expected shape {shape}, got {a.shape}")
    return np.ascontiguousarray(a)


class Kernel:
    def __init__(self, derivation, module, path, target, dtype, jit):
        self.derivation = derivation
        self.network = derivation.network
        self.module = module
        self.path = path
        self.target = target
        self.dtype = np.dtype(dtype)
        self.jit = jit
        self.param_shapes = dict(module.PARAM_SHAPES)
        self._params = tuple(module.PARAMS)
        self._shapes = tuple(tuple(self.param_shapes[k]) for k in self._params)
        self._n0, self._nL = self.network.sizes[0], self.network.sizes[-1]
        self._work = {}

    def __repr__(self):
        return f"<Kernel {self.network.name} {self.target} {self.dtype} jit={self.jit} at {self.path}>"

    # parameters ---------------------------------------------------------------------------
    def init_params(self, seed=0):
        """Glorot-uniform weights, zero biases (see glorot_params)."""
        return glorot_params(self.param_shapes, self.dtype, seed)

    # checks -------------------------------------------------------------------------------
    def _array(self, name, a, shape):
        return check_array(name, a, shape, self.dtype)

    def _fast(self, a, shape):
        return type(a) is np.ndarray and a.dtype == self.dtype and a.shape == shape and a.flags.c_contiguous

    def _check(self, params, X, Y=None):
        """(parameter arrays in order, X, Y), all checked; the common case costs a few
        attribute reads per array, the messages are built only on failure."""
        dt, n0, nL = self.dtype, self._n0, self._nL
        if type(X) is np.ndarray and X.ndim == 2 and X.shape[0] >= 1 and X.shape[1] == n0 \
                and X.dtype == dt and X.flags.c_contiguous \
                and (Y is None or self._fast(Y, (X.shape[0], nL))) and type(params) is dict:
            try:
                ps = [params[k] for k in self._params]
            except KeyError:
                ps = None
            if ps is not None and len(params) == len(ps) and all(map(self._fast, ps, self._shapes)):
                return ps, X, Y
        return self._check_slow(params, X, Y)

    def _check_slow(self, params, X, Y):
        n0, nL = self._n0, self._nL
        if not isinstance(X, np.ndarray) or X.ndim != 2:
            got = X.shape if isinstance(X, np.ndarray) else type(X).__name__
            raise InputError(f"X: expected an array of shape (batch, {n0}), got {got}")
        B = X.shape[0]
        if B < 1:
            raise InputError("X: expected at least one row (sample)")
        X = self._array("X", X, (B, n0))
        if Y is not None:
            Y = self._array("Y", Y, (B, nL))
        if not isinstance(params, dict):
            raise InputError(f"params: expected a dict with keys {', '.join(self._params)}")
        missing = [k for k in self._params if k not in params]
        extra = sorted(k for k in params if k not in self.param_shapes)
        if missing or extra:
            raise InputError(f"params: missing {missing or 'nothing'}, unexpected {extra or 'nothing'}")
        ps = [self._array(f"params[{k!r}]", params[k], shape) for k, shape in zip(self._params, self._shapes)]
        return ps, X, Y

    def _buffers(self, B):
        w = self._work.get(B)
        if w is None:
            m = self.module
            widths = m.BUFFER_WIDTHS
            fwd = [np.empty((B, widths[n]), self.dtype) for n in m.FORWARD_BUFFERS]
            bwd = [np.empty((B, widths[n]), self.dtype) for n in m.BACKWARD_BUFFERS]
            grads = [np.empty(self.param_shapes[k], self.dtype) for k in self._params]
            gx = np.empty((B, self.network.sizes[0]), self.dtype)
            if len(self._work) >= 4:   # a few batch sizes (train and test) stay allocated
                self._work.pop(next(iter(self._work)))
            w = self._work[B] = (fwd, bwd, grads, gx)
        return w

    def compile(self):
        """Compile every entry point now (Numba compiles lazily, on the first call); returns self.
        A second process loads the compiled code from Numba's cache next to the generated file."""
        params = self.init_params(0)
        X = np.zeros((1, self.network.sizes[0]), self.dtype)
        Y = np.zeros((1, self.network.sizes[-1]), self.dtype)
        self.forward(params, X)
        self.loss_and_grad(params, X, Y)
        self.input_grad(params, X, Y)
        self.sgd_step(params, X, Y, 0.0)
        return self

    # calls --------------------------------------------------------------------------------
    def forward(self, params, X):
        """Network output a^L for the rows of X, shape (B, nL)."""
        ps, X, _ = self._check(params, X)
        fwd, _, _, _ = self._buffers(X.shape[0])
        return self.module.forward(X, *ps, *fwd).copy()

    def loss_and_grad(self, params, X, Y, copy=True):
        """(loss, {"gW1": ..., ...} keyed like params). copy=False returns the work buffers."""
        ps, X, Y = self._check(params, X, Y)
        fwd, bwd, grads, _ = self._buffers(X.shape[0])
        loss = self.module.loss_and_grad(X, Y, *ps, *fwd, *bwd, *grads)
        return float(loss), {k: (g.copy() if copy else g) for k, g in zip(self._params, grads)}

    def bind(self, params, X, Y):
        """A BoundStep: the parameters copied into one packed array and the batch fixed, so that
        each call of the step is a single five-array call into compiled code (for training loops
        and benchmarks where the per-call cost matters)."""
        return BoundStep(self, params, X, Y)

    def loss(self, params, X, Y):
        return self.loss_and_grad(params, X, Y, copy=False)[0]

    def input_grad(self, params, X, Y):
        """dL/dX, shape (B, n0): backpropagation to the data (chapter 14 "Backpropagation", 14.9)."""
        ps, X, Y = self._check(params, X, Y)
        fwd, bwd, grads, gx = self._buffers(X.shape[0])
        self.module.loss_and_input_grad(X, Y, *ps, *fwd, *bwd, *grads, gx)
        return gx.copy()

    def sgd_step(self, params, X, Y, lr):
        """theta <- theta - lr dL/dtheta for every parameter, in place; returns the loss before."""
        ps, X, Y = self._check(params, X, Y)
        for k, a in zip(self._params, ps):
            if params[k] is not a:
                raise InputError(f"params[{k!r}]: sgd_step updates in place and needs a C-contiguous "
                                 f"array of dtype {self.dtype}")
        fwd, bwd, grads, _ = self._buffers(X.shape[0])
        return float(self.module.sgd_step(X, Y, *ps, *fwd, *bwd, *grads, float(lr)))


class BoundStep:
    """One training-gradient step bound to packed arrays (``Kernel.bind``).

    ``step()`` returns the loss and leaves the gradients in ``step.grads`` (views into one
    packed array, keyed like params); ``step.params`` are views into the packed parameters
    (a copy made at bind time: update them in place, e.g. ``step.theta -= lr * step.gtheta``).
    """

    def __init__(self, kernel, params, X, Y):
        ps, X, Y = kernel._check(params, X, Y)
        keys = kernel._params
        self.theta = np.concatenate([a.ravel() for a in ps])
        self.gtheta = np.zeros_like(self.theta)
        self.work = np.empty(X.shape[0] * kernel.module.WORK_WIDTH, kernel.dtype)
        self.params, self.grads, off = {}, {}, 0
        for key, a in zip(keys, ps):
            self.params[key] = self.theta[off:off + a.size].reshape(a.shape)
            self.grads[key] = self.gtheta[off:off + a.size].reshape(a.shape)
            off += a.size
        self._fn = kernel.module.loss_and_grad_packed
        self._args = (X, Y, self.theta, self.gtheta, self.work)

    def __call__(self):
        return self._fn(*self._args)

"""Finite-difference gradcheck of a generated kernel of either kind (MLP or graph).

Contract: ``gradcheck(kernel, params, X, Y)`` compares a kernel's analytic gradients (parameters
and checked inputs) with central finite differences of its loss computed in float64 and
returns a ``GradcheckReport``; one error definition, one noise floor (``noise_floor``), one
selection of entries and directions (``check_entries``) and one option check (``check_options``,
``check_tol``) serve both kinds. It reads only a kernel's numbers, never the derivation.
``arrays`` checks the (params, inputs, target) of every verification function, either kind.
"""
import math
from dataclasses import dataclass

import numpy as np

from ..errors import InputError

# Default tolerances on the error defined in ``gradcheck``. float64: the analytic gradient and a
# float64 central difference agree to ~1e-9 relative on ordinary entries, so 1e-6 leaves three
# digits of margin and still sees a gradient off by 1e-5 relative. float32: the analytic
# gradient carries float32 rounding (unit roundoff 6e-8, times the accumulation over units and
# samples), typically 1e-6..1e-5 relative; 1e-3 leaves margin and still sees a 1 % error
# (a wrong factor or a missing term is typically off by far more).
DEFAULT_TOL = {"float64": 1e-6, "float32": 1e-3}
# Rounding units (2^-53, 2^-24) and the multiple of them counted as noise (see gradcheck).
_UNIT = {"float64": 2.0 ** -53, "float32": 2.0 ** -24}
_NOISE_ULPS = 64


@dataclass(frozen=True)
class GradcheckRow:
    """One parameter (or ``"X"``): what was checked and the largest error found."""

    name: str
    shape: tuple
    entries: int          # entries differenced one at a time
    directions: int       # random directions differenced (large parameters)
    max_error: float
    worst: object         # index of the worst entry, or "dir<k>" for a direction
    analytic: float       # analytic value at the worst check
    numeric: float        # finite-difference value at the worst check


@dataclass(frozen=True)
class GradcheckReport:
    """Result of ``gradcheck``; ``str(report)`` is a small aligned table."""

    network: str
    dtype: str
    eps: float
    tol: float
    floor: float          # denominators below this are replaced by it (absolute comparison)
    loss: float
    rows: tuple

    @property
    def max_error(self):
        """Largest error over all parameters and X (NaN counts as infinite)."""
        return max((r.max_error for r in self.rows), default=0.0)

    @property
    def errors(self):
        """{"W1": max error, ..., "X": max error}."""
        return {r.name: r.max_error for r in self.rows}

    @property
    def ok(self):
        """True when every checked error is at most ``tol``."""
        return all(r.max_error <= self.tol for r in self.rows)

    def __str__(self):
        head = ("name", "shape", "entries", "dirs", "max error", "worst", "analytic", "numeric")
        body = [(r.name, str(tuple(r.shape)), str(r.entries), str(r.directions), f"{r.max_error:.2e}",
                 str(r.worst), f"{r.analytic:.10g}", f"{r.numeric:.10g}") for r in self.rows]
        widths = [max(len(row[c]) for row in [head] + body) for c in range(len(head))]
        left = (0, 1, 5)      # text columns left-aligned, numbers right-aligned

        def fmt(row):
            return "  ".join(cell.ljust(w) if c in left else cell.rjust(w)
                             for c, (cell, w) in enumerate(zip(row, widths))).rstrip()

        status = "ok" if self.ok else "FAILED"
        lines = [f"gradcheck {self.network} ({self.dtype}): {status}, max error {self.max_error:.2e} "
                 f"(tol {self.tol:.0e}, eps {self.eps:.0e}, floor {self.floor:.1e}, loss {self.loss:.10g})",
                 fmt(head)]
        lines += [fmt(row) for row in body]
        return "\n".join(lines)


def _error(g, fd, floor):
    """|g - fd| / max(|g|, |fd|, floor); NaN (a NaN anywhere) counts as infinite."""
    e = abs(g - fd) / max(abs(g), abs(fd), floor)
    return math.inf if e != e else float(e)


def _float64_twin(kernel):
    """The kernel itself if float64, else a float64 kernel generated from the same derivation
    (``symbp.generate`` takes a Derivation or a GraphDerivation)."""
    if np.dtype(kernel.dtype) == np.float64:
        return kernel
    from ..codegen import generate
    return generate(kernel.derivation, target=kernel.target, dtype="float64",
                    out_dir=kernel.path.parent.parent, jit=kernel.jit)


def gradcheck(kernel, params, X, Y, eps=1e-6, tol=None, max_entries=64, seed=0, directions=2):
    """Check a kernel's gradients against central finite differences of its loss, in float64.

    The kernel is of either kind: an MLP kernel (``kernel.network``) takes X (B, n0) and Y, and
    the input X is checked with ``kernel.input_grad``; a graph kernel (``kernel.graph``) takes
    X = the inputs {name: (B, width)} (one array for a graph with one input) and Y = the target,
    and the inputs marked grad are checked with ``kernel.input_grads``.

    For each parameter p (in the model's order) and each checked input, with the loss L
    computed by a float64 kernel (the kernel itself, or its float64 twin for a float32 kernel)
    at the float64 values of the given arrays (float32 values convert exactly):

    - per entry e, for up to ``max_entries`` entries (all when the array has at most that many,
      else a sample drawn without replacement by ``numpy.random.default_rng(seed)``):
      fd_e = (L(p + eps e) - L(p - eps e)) / (2 eps), compared with the analytic g_e;
    - for arrays with more than ``max_entries`` entries, also ``directions`` random unit
      directions v (same generator): fd_v = (L(p + eps v) - L(p - eps v)) / (2 eps), compared
      with the directional derivative g . v.

    The error of one comparison is ``|g - fd| / max(|g|, |fd|, floor)``: the relative error,
    except that values below ``floor`` are compared absolutely, so that an error <= tol means
    ``|g - fd| <= tol * max(|g|, |fd|)`` or ``|g - fd| <= tol * floor``. The floor is the
    magnitude at which the noise the comparison cannot resolve reaches the dtype's default
    tolerance: ``floor = 64 * scale * max(u64 / eps, u) / DEFAULT_TOL[dtype]`` with u64 = 2^-53
    (rounding of the float64 loss, amplified by 1/eps in the difference), u the kernel's unit
    roundoff (2^-53 or 2^-24: rounding of the analytic gradient) and
    ``scale = max(1, |L|, max |g|)``. It never depends on ``tol``: the errors are the same
    numbers whatever ``tol`` is, and ``tol`` is only the threshold, so a tighter tolerance is a
    harder check (one tighter than the noise fails an honest kernel, as it should).
    ``tol`` is a relative error bound in (0, 1) (``check_tol``): at 1 or more a gradient off by
    its own size would pass. Default: 1e-6 for float64 kernels, 1e-3 for float32
    (``DEFAULT_TOL``). A point where a ReLU-like kink lies within eps of some pre-activation is
    not differentiable there and can fail legitimately.

    Returns a ``GradcheckReport``: ``.ok``, ``.max_error``, ``.errors`` and a table as ``str``.
    """
    dtype, tol = check_options("gradcheck", kernel, eps, tol, max_entries)
    loss, grads = kernel.loss_and_grad(params, X, Y)
    graph = getattr(kernel, "graph", None)
    p64, inputs, target = arrays("gradcheck", kernel.network if graph is None else graph, params, X, Y)
    if graph is None:
        input_grads = {"X": kernel.input_grad(params, X, Y)}
    else:
        input_grads = kernel.input_grads(params, X, Y) if graph.grad_inputs else {}

    def L(p, x):
        return float(ref.loss_and_grad(p, x["X"] if graph is None else x, target)[0])
    analytic = {k: np.asarray(v, dtype=np.float64) for k, v in {**grads, **input_grads}.items()}
    ref = _float64_twin(kernel)
    floor = noise_floor(L(p64, inputs), analytic, eps, dtype)

    rng = np.random.default_rng(seed)
    rows = []
    for name in list(p64) + list(input_grads):
        is_input = name not in p64      # parameters and nodes share one namespace
        arr = inputs[name] if is_input else p64[name]
        g = analytic[name]
        if g.shape != arr.shape:
            raise InputError(f"gradcheck: gradient {name}: expected shape {arr.shape}, got {g.shape}")

        def at(delta):
            """L with the checked array replaced by arr + delta (others unchanged)."""
            if is_input:
                return L(p64, {**inputs, name: arr + delta})
            return L({**p64, name: arr + delta}, inputs)

        rows.append(check_entries(name, arr, g, at, eps, floor, rng, max_entries, directions))
    return GradcheckReport((graph or kernel.network).name, dtype, float(eps), tol, floor, float(loss),
                           tuple(rows))


def arrays(where, model, params, X, Y):
    """float64 copies ``(params, inputs, target)`` after checking keys, shapes and finiteness,
    for every verification function: ``inputs`` is {"X": X} for a Network, {name: array} for a
    Graph (X a dict, or one array for a graph with one input); an InputError names the array."""
    shapes = model.param_shapes()
    if is_graph(model):
        widths = {n.name: n.width for n in model.inputs}
        target, width = "target", model.node(model.target).width
        X = {next(iter(widths)): X} if len(widths) == 1 and not isinstance(X, dict) else X
    else:
        widths, target, width, X = {"X": model.inputs}, "Y", model.sizes[-1], {"X": X}
    for what, given, keys in (("params", params, shapes), ("inputs", X, widths)):
        if not isinstance(given, dict):
            raise InputError(f"{where}: {what}: expected a dict of arrays keyed {', '.join(keys)}")
        missing, extra = [k for k in keys if k not in given], [k for k in given if k not in keys]
        if missing or extra:
            raise InputError(f"{where}: {what}: expected keys {', '.join(keys)}; "
                             f"missing {missing or 'none'}, unexpected {extra or 'none'}")
    first = np.asarray(X[next(iter(widths))])
    batch = first.shape[0] if first.ndim == 2 and first.shape[0] else None
    named = ([(k, params[k], tuple(s)) for k, s in shapes.items()] + [(k, X[k], (batch, w)) for k, w in widths.items()]
             + [(target, Y, (batch, width))])
    out, n = [], len(shapes)
    for i, (k, v, shape) in enumerate(named):
        v = np.asarray(v)
        is_input = n <= i < n + len(widths)
        if v.dtype.kind not in "fiu":
            raise InputError(f"{where}: {k}: expected a real array, got dtype {v.dtype}")
        if v.shape != shape or (is_input and batch is None):
            want = f"(B, {shape[1]}) with B >= 1" if is_input else str(shape)
            raise InputError(f"{where}: {k}: expected shape {want}, got {v.shape}")
        if not np.all(np.isfinite(v)):
            raise InputError(f"{where}: {k}: expected finite values")
        out.append(v.astype(np.float64))
    return dict(zip(shapes, out[:n])), dict(zip(widths, out[n:-1])), out[-1]


def checked_arrays(where, model, params, X, Y, input_grad=False):
    """``arrays`` of a model read as a graph: ``(graph, params, inputs, target, checked)`` with
    ``checked`` {input node: key of its gradient}. A Network is its chain graph
    (``network.graph``): its input is keyed "X" and checked only with ``input_grad``; a Graph
    checks its inputs marked grad, keyed by name."""
    p64, x64, t64 = arrays(where, model, params, X, Y)
    if is_graph(model):
        return model, p64, x64, t64, {n.name: n.name for n in model.grad_inputs}
    x = model.graph.inputs[0].name
    return model.graph, p64, {x: x64["X"]}, t64, ({x: "X"} if input_grad else {})


def check_options(where, kernel, eps, tol, max_entries):
    """(dtype name, tol) after checking gradcheck's options; an InputError naming the option."""
    dtype = np.dtype(kernel.dtype).name
    if dtype not in DEFAULT_TOL:
        raise InputError(f"{where}: kernel dtype: expected float32 or float64, got {dtype}")
    if isinstance(eps, bool) or not (isinstance(eps, (int, float)) and 0 < eps < math.inf):
        raise InputError(f"{where}: eps: expected a positive number, got {eps!r}")
    if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 1:
        raise InputError(f"{where}: max_entries: expected an integer >= 1, got {max_entries!r}")
    return dtype, DEFAULT_TOL[dtype] if tol is None else check_tol(tol, f"{where}: tol")


def check_tol(tol, where="tol"):
    """``tol`` as a float when it is a relative error bound a check can fail, in (0, 1):
    positive (0 fails everything, a negative or NaN bound nothing is within), finite and below 1
    (the relative error of a gradient off by its own size is 1, of a sign flip 2); else an
    InputError naming ``where``."""
    ok = isinstance(tol, (int, float, np.floating)) and not isinstance(tol, bool)
    if not (ok and 0 < float(tol) < 1):
        raise InputError(f"{where}: expected a relative tolerance in (0, 1), e.g. 1e-6, got {tol!r}")
    return float(tol)


def noise_floor(loss64, analytic, eps, dtype):
    """The magnitude below which a gradient entry is compared absolutely (see gradcheck):
    64 rounding units of the loss scale, of the float64 difference or the kernel's dtype, over
    the dtype's default tolerance. Independent of the tolerance asked for: dividing by that one
    made every tighter check easier (at tol 1e-16 every entry fell below the floor)."""
    gmax = max((float(np.max(np.abs(g))) for g in analytic.values() if g.size), default=0.0)
    scale = max(1.0, abs(loss64), gmax if gmax == gmax else 0.0)
    return _NOISE_ULPS * scale * max(_UNIT["float64"] / eps, _UNIT[dtype]) / DEFAULT_TOL[dtype]


def check_entries(name, arr, g, at, eps, floor, rng, max_entries, directions):
    """Central differences of ``at(delta)`` (the loss with ``arr + delta``) against the analytic
    gradient ``g``: every entry, or ``max_entries`` drawn with ``rng`` plus ``directions``
    random directions when ``arr`` is larger. Returns the GradcheckRow of the worst check."""
    n = arr.size
    flat = np.arange(n) if n <= max_entries else np.sort(rng.choice(n, size=max_entries, replace=False))
    worst = (-1.0, None, 0.0, 0.0)
    for f in flat:
        idx = np.unravel_index(int(f), arr.shape)
        step = np.zeros_like(arr)
        step[idx] = eps
        fd = (at(step) - at(-step)) / (2 * eps)
        e = _error(g[idx], fd, floor)
        if e > worst[0]:
            worst = (e, tuple(int(i) for i in idx), float(g[idx]), float(fd))
    ndir = directions if n > max_entries else 0
    for d in range(ndir):
        v = rng.standard_normal(arr.shape)
        v /= np.linalg.norm(v)
        fd = (at(eps * v) - at(-eps * v)) / (2 * eps)
        gv = float(np.sum(g * v))
        e = _error(gv, fd, floor)
        if e > worst[0]:
            worst = (e, f"dir{d}", gv, float(fd))
    return GradcheckRow(name, arr.shape, len(flat), ndir, max(worst[0], 0.0), worst[1], worst[2], worst[3])


def model_of(obj):
    """The Network or Graph of ``obj`` (itself when it is one; a kernel's otherwise)."""
    from ..model.graph import Graph
    from ..model.network import Network
    if isinstance(obj, (Graph, Network)):
        return obj
    graph = getattr(obj, "graph", None)     # a graph kernel (its .network is the graph too)
    return graph if graph is not None else obj.network


def is_graph(obj):
    """True for a Graph or a graph kernel, False for a Network or an MLP kernel."""
    from ..model.graph import Graph
    return isinstance(model_of(obj), Graph)

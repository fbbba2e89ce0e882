"""Verification of generated kernels, three independent ways.

Contract:

- ``gradcheck(kernel, params, X, Y)`` compares a kernel's analytic gradients (``loss_and_grad``
  and ``input_grad``) with central finite differences of its loss computed in float64, and
  returns a ``GradcheckReport`` (per parameter and for the input ``X``: the largest error, and
  whether all are within tolerance). A float32 kernel is differenced through a float64 kernel
  generated from the same derivation, so the differences measure the derivation and the float32
  rounding, not float32 finite-difference noise.
- ``oracle_gradients(network, params, X, Y)`` is the certificate that does not trust
  ``symbp.derive``: the loss of the concrete network, fully expanded (one SymPy symbol per
  parameter entry, every unit written out from the forward definitions in ``symbp.functions``),
  is differentiated with ``sympy.diff`` directly and evaluated at the given values, converted
  exactly to Rationals, so ReLU/identity networks give exact Rational gradients. Only for small
  sizes (``ORACLE_MAX_PARAMS``, ``ORACLE_MAX_BATCH``). ``oracle_loss_expression`` returns the
  whole batch loss as one expression.
- ``torch_gradients(network, params, X, Y)`` is a PyTorch autograd reference in float64, when
  torch is importable (``ImportError`` otherwise).

None of these imports ``symbp.derive``: the oracle and the torch reference read only the
``Network`` (sizes, forward definitions, loss, reduction), and gradcheck reads only a kernel's
numbers. Loss conventions everywhere: per sample, the sum over output units of
``network.loss.per_unit``; over the batch, the mean (reduction "mean") or the sum ("sum").
"""
import math
from dataclasses import dataclass

import numpy as np
import sympy as sp

from .. import naming
from ..errors import InputError, SymbpError

# ----------------------------------------------------------------------------------------------
# gradcheck
# ----------------------------------------------------------------------------------------------

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
    """The kernel itself if float64, else a float64 kernel generated from the same derivation."""
    if np.dtype(kernel.dtype) == np.float64:
        return kernel
    from ..codegen import generate
    return generate(kernel.derivation, target=kernel.target, dtype="float64",
                    out_dir=kernel.path.parent.parent, jit=kernel.jit)


def gradcheck(kernel, params, X, Y, eps=1e-6, tol=None, max_entries=64, seed=0, directions=2):
    """Check a kernel's gradients against central finite differences of its loss, in float64.

    For each parameter p (in the network's order) and for the input X, with the loss L computed
    by a float64 kernel (the kernel itself, or its float64 twin for a float32 kernel) at the
    float64 values of the given arrays (float32 values convert exactly):

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
    gx = kernel.input_grad(params, X, Y)
    analytic = {k: np.asarray(grads[k], dtype=np.float64) for k in kernel.network.param_shapes()}
    analytic["X"] = np.asarray(gx, dtype=np.float64)

    ref = _float64_twin(kernel)
    p64 = {k: np.array(params[k], dtype=np.float64) for k in kernel.network.param_shapes()}
    X64 = np.array(X, dtype=np.float64)
    Y64 = np.asarray(Y, dtype=np.float64)

    def L(p, x):
        return float(ref.loss_and_grad(p, x, Y64)[0])

    floor = noise_floor(L(p64, X64), analytic, eps, dtype)

    rng = np.random.default_rng(seed)
    rows = []
    for name in list(p64) + ["X"]:
        arr = X64 if name == "X" else p64[name]
        g = analytic[name]
        if g.shape != arr.shape:
            raise InputError(f"gradcheck: gradient {name}: expected shape {arr.shape}, got {g.shape}")

        def at(delta):
            """L with the checked array replaced by arr + delta (others unchanged)."""
            moved = arr + delta
            if name == "X":
                return L(p64, moved)
            return L({**p64, name: moved}, X64)

        rows.append(check_entries(name, arr, g, at, eps, floor, rng, max_entries, directions))
    return GradcheckReport(kernel.network.name, dtype, float(eps), tol, floor, float(loss), tuple(rows))


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


# ----------------------------------------------------------------------------------------------
# shared checks of (network, params, X, Y)
# ----------------------------------------------------------------------------------------------

def _arrays(where, network, params, X, Y):
    """float64 copies of params, X, Y after checking keys, shapes and finiteness."""
    shapes = network.param_shapes()
    if not isinstance(params, dict):
        raise InputError(f"{where}: params: expected a dict of arrays keyed {', '.join(shapes)}")
    missing = [k for k in shapes if k not in params]
    extra = [k for k in params if k not in shapes]
    if missing or extra:
        raise InputError(f"{where}: params: expected keys {', '.join(shapes)}; "
                         f"missing {missing or 'none'}, unexpected {extra or 'none'}")
    out = {}
    named = [(k, params[k], shapes[k]) for k in shapes]
    X = np.asarray(X)
    batch = X.shape[0] if X.ndim == 2 else None
    named += [("X", X, (batch, network.inputs)), ("Y", Y, (batch, network.sizes[-1]))]
    for k, v, shape in named:
        v = np.asarray(v)
        if v.dtype.kind not in "fiu":
            raise InputError(f"{where}: {k}: expected a real array, got dtype {v.dtype}")
        v = v.astype(np.float64)
        if v.shape != tuple(shape) or (k == "X" and batch in (None, 0)):
            want = "(B, %d) with B >= 1" % network.inputs if k == "X" else str(tuple(shape))
            raise InputError(f"{where}: {k}: expected shape {want}, got {v.shape}")
        if not np.all(np.isfinite(v)):
            raise InputError(f"{where}: {k}: expected finite values")
        out[k] = v
    return {k: out[k] for k in shapes}, out["X"], out["Y"]


# ----------------------------------------------------------------------------------------------
# the full-expansion SymPy oracle
# ----------------------------------------------------------------------------------------------

ORACLE_MAX_PARAMS = 300
ORACLE_MAX_BATCH = 16
ORACLE_DIGITS = 30       # digits of the evaluated transcendental results
_FOLD_DIGITS = 60        # digits of transcendental intermediate values (well beyond the 30 reported)


def _rational(v):
    """The exact value of a float as a SymPy Rational (a binary float is a dyadic rational)."""
    return sp.Rational(float(v))


def _fold(e):
    """A constant that is not rational becomes a 60-digit Float; everything else is kept.

    Applied to every value while an expression is evaluated (``_evaluate``), so that exact
    transcendental constants do not nest layer after layer, while Rationals (ReLU, leaky ReLU,
    identity networks) stay exact.
    """
    # is_number stops at the first symbol it meets; free_symbols would walk every path
    if not isinstance(e, sp.Expr) or e.is_Rational or not e.is_number:
        return e
    return e.evalf(_FOLD_DIGITS)


_RELATIONS = (sp.StrictGreaterThan, sp.GreaterThan, sp.StrictLessThan, sp.LessThan)


def _at_kinks(definition, at_zero):
    """The forward definition with each Piecewise boundary owned by the side whose derivative
    the network's relu_at_zero asks for (1: right, 0: left): the value is unchanged (the pieces
    meet there), but ``sympy.diff`` then gives that side's derivative at the boundary (leaky
    ReLU: z > 0 becomes z >= 0 for 1). Max(0, u) needs nothing here: its derivative is
    Heaviside(u), valued ``at_zero`` at 0 by ``_evaluate``. Written here, not taken from the
    kink pass of ``symbp.simplify``, so that the oracle stays independent of the derivation."""
    z = naming.Z

    def owned(cond):
        if not isinstance(cond, _RELATIONS):
            return cond
        e = cond.lhs - cond.rhs
        if e.free_symbols != {z} or not e.is_polynomial(z) or sp.degree(e, z) != 1:
            return cond
        c = sp.solve(e, z)[0]
        right = bool(cond.xreplace({z: c + 1}))     # the branch lies right of its boundary
        less = isinstance(cond, (sp.StrictLessThan, sp.LessThan))
        op = ("<=" if less else ">=") if right == bool(at_zero) else ("<" if less else ">")
        return sp.Rel(cond.lhs, cond.rhs, op)

    return definition.replace(lambda e: isinstance(e, sp.Piecewise),
                              lambda pw: sp.Piecewise(*[(v, owned(c)) for v, c in pw.args]))


def _layer(network, P, l, a, fold):
    """Activations of layer l (SymPy entries) from those of layer l - 1, by the definitions:
    z_j = sum_k W[j][k] a_k + b_j (no b_j for a layer without bias), then f(z_j) by the
    activation's definition (``_at_kinks``) or the explicit softmax."""
    W, b = P[naming.param_key("W", l)], P.get(naming.param_key("b", l))
    act = network.layers[l - 1].activation
    n_out = network.sizes[l]
    z = [fold(sp.Add(*[W[j][k] * a[k] for k in range(len(a))]) + (b[j] if b is not None else 0))
         for j in range(n_out)]
    if act.elementwise:
        f = _at_kinks(act.definition, network.relu_at_zero)
        return [fold(f.xreplace({naming.Z: zj})) for zj in z]
    if act.name == "softmax":
        e = [sp.exp(zj) for zj in z]
        den = sp.Add(*e)
        return [fold(ei / den) for ei in e]
    # the table has no other vector activation; refuse rather than guess
    raise SymbpError(f"oracle: layer[{l}].activation: unsupported vector activation {act.name!r}")


def _forward_sample(network, P, x, fold=lambda e: e):
    """Output activations of one sample; P maps param keys to nested lists of SymPy entries."""
    a = list(x)
    for l in range(1, network.depth + 1):
        a = _layer(network, P, l, a, fold)
    return a


def _sample_loss(network, out, y):
    """sum_i per_unit(a_L[i], y[i]) for one sample."""
    per_unit = network.loss.per_unit
    terms = []
    for ai, yi in zip(out, y):
        # y first: a term that vanishes for a numeric target (ce with y_i = 0) is never built
        t = per_unit.xreplace({naming.Y: yi})
        if t != 0:
            terms.append(t.xreplace({naming.A: ai}))
    return sp.Add(*terms)


def _loss_expression(network, P, Xr, Yr, fold=lambda e: e):
    """The whole scalar loss: c * sum_s sum_i per_unit(a_L[s, i], y[s, i]), c = 1/B or 1."""
    total = [_sample_loss(network, _forward_sample(network, P, x, fold), y) for x, y in zip(Xr, Yr)]
    return _batch_factor(network, len(Xr)) * sp.Add(*total)


def _batch_factor(network, batch):
    return sp.Rational(1, batch) if network.reduction == "mean" else sp.Integer(1)


def _symbol(name, idx):
    return sp.Symbol(f"{name}[{','.join(map(str, idx))}]", real=True)


def _nested(arr, fn):
    """Nested lists of fn(index, value) with the shape of a 1-d or 2-d array."""
    if arr.ndim == 1:
        return [fn((i,), arr[i]) for i in range(arr.shape[0])]
    return [[fn((i, j), arr[i, j]) for j in range(arr.shape[1])] for i in range(arr.shape[0])]


def _kink_convention(d):
    """Derivative of Max(0, u) is Heaviside(u): take Heaviside(0) = 0, as relu'(0) = 0 does.
    (``_evaluate`` applies the same convention while it evaluates.)"""
    return d.replace(lambda e: isinstance(e, sp.Heaviside), lambda e: sp.Heaviside(e.args[0], 0))


def _evaluate(expr, env, memo=None, at_zero=0):
    """expr with its symbols replaced by the numbers in env, evaluated node by node.

    Each distinct subexpression is rebuilt once from its evaluated arguments (so the cost is
    linear in the expression's size counted as a DAG, where ``xreplace`` walks every path) and
    folded by ``_fold``: rational operations on Rationals stay exact. Heaviside(0) is
    ``at_zero``, the network's relu'(0) (0 unless relu_at_zero = 1; SymPy's default is 1/2).
    ``memo`` may be shared between expressions
    evaluated at the same point (it must then hold ``env``).
    """
    memo = dict(env) if memo is None else memo

    def ev(e):
        v = memo.get(e)
        if v is None:
            if not e.args:
                v = e
            elif isinstance(e, (sp.Derivative, sp.Subs)):
                raise SymbpError(f"oracle: sympy.diff left an unevaluated {e.func.__name__} "
                                 f"({str(e)[:80]}); this activation cannot be certified")
            elif isinstance(e, sp.Heaviside):
                u = ev(e.args[0])
                v = sp.Integer(at_zero) if u == 0 else sp.Heaviside(u)
            else:
                args = [ev(arg) for arg in e.args]
                try:
                    v = _fold(e.func(*args))
                except (TypeError, ValueError) as err:   # Max/Min/Heaviside of a non-real value
                    raise SymbpError(f"oracle: {e.func.__name__} of a value that is not real at this "
                                     f"point ({str(err)[:80]})") from None
            memo[e] = v
        return v

    return ev(expr)


def _value(e):
    """Exact Rational when the result is rational, else a Float to ORACLE_DIGITS digits."""
    if e.is_Rational:
        return e
    v = e.evalf(ORACLE_DIGITS)
    if not v.is_number or not v.is_real:
        raise SymbpError(f"oracle: the loss or a gradient does not evaluate to a real number ({v})")
    return sp.Float(v, ORACLE_DIGITS)


def _check_oracle_size(where, p64, X64):
    nparams = sum(v.size for v in p64.values())
    if nparams > ORACLE_MAX_PARAMS or X64.shape[0] > ORACLE_MAX_BATCH:
        raise SymbpError(
            f"{where}: the full-expansion oracle is for small sizes (at most {ORACLE_MAX_PARAMS} "
            f"parameters and batch {ORACLE_MAX_BATCH}); got {nparams} parameters and batch "
            f"{X64.shape[0]}: use gradcheck or torch_gradients for this network")


def oracle_loss_expression(network, X, Y, params=None):
    """The whole batch loss as one SymPy expression with one symbol per parameter entry.

    Returns ``(expr, symbols)`` where ``symbols`` maps each param key to nested lists of the
    symbols ``W1[i,j]``, ``b1[i]``, ...; X and Y enter as exact Rationals. With ``params``
    given, the entries are their exact values instead (the symbols dict is then empty). Nothing
    is evaluated or folded. Meant for tiny networks: teaching, and showing that the per-sample
    route of ``oracle_gradients`` differentiates the same function.
    """
    shapes = network.param_shapes()
    if params is None:
        zeros = {k: np.zeros(s) for k, s in shapes.items()}
        _, X64, Y64 = _arrays("oracle_loss_expression", network, zeros, X, Y)
        P = {k: _nested(zeros[k], lambda idx, v, k=k: _symbol(k, idx)) for k in shapes}
        symbols = P
    else:
        p64, X64, Y64 = _arrays("oracle_loss_expression", network, params, X, Y)
        P = {k: _nested(p64[k], lambda idx, v: _rational(v)) for k in shapes}
        symbols = {}
    _check_oracle_size("oracle_loss_expression", {k: np.zeros(s) for k, s in shapes.items()}, X64)
    Xr = [[_rational(v) for v in row] for row in X64]
    Yr = [[_rational(v) for v in row] for row in Y64]
    return _loss_expression(network, P, Xr, Yr), symbols


def oracle_gradients(network, params, X, Y, exact=False, input_grad=False, entries=None):
    """Gradients of the loss by differentiating its full expansion with ``sympy.diff``.

    The loss of one sample is one SymPy expression in every parameter entry (a symbol
    ``W1[i,j]``, ``b1[i]``, ...), the sample's inputs ``X[t]`` and targets ``Y[i]``, built from
    the forward definitions alone: z_l[j] = sum_k W_l[j, k] a_{l-1}[k] + b_l[j]; a_l = f_l(z_l)
    through ``layer.activation.at`` for elementwise activations and
    a_l[i] = exp(z_i) / sum_k exp(z_k) for softmax; l(theta; x, y) = sum_i per_unit(a_L[i], y[i])
    with ``network.loss.per_unit``. The batch loss is L = c * sum_s l(theta; x_s, y_s) with
    c = 1/B for the mean and 1 for the sum, so (diff being linear)
    dL/dtheta = c * sum_s diff(l, theta) evaluated at (theta, x_s, y_s): each derivative is taken
    once, symbolically, and evaluated per sample (``oracle_loss_expression`` builds the whole
    batch expression instead; the tests show both give the same numbers). dL/dX[s, t] is
    c * diff(l, X[t]) at sample s.

    Values enter as exact Rationals (a float converts exactly) and are evaluated node by node
    (``_evaluate``): rational operations stay exact, so ReLU / leaky ReLU / identity networks
    with mse or sse give exact Rationals; transcendental intermediate values are carried as
    60-digit Floats and results reported to 30 digits. At a kink the derivative is the one the
    network's ``relu_at_zero`` names, as the kernels take it: Heaviside(0) = relu_at_zero for
    Max(0, u), and each Piecewise boundary owned by that side (``_at_kinks``): relu'(0) = 0 and
    leaky relu'(0) = slope by default, both 1 with relu_at_zero = 1.

    Returns ``(loss, grads)``: float and float64 arrays keyed like ``params`` (plus ``"X"``,
    dL/dX, when ``input_grad``). With ``exact=True`` the loss and the arrays' entries are SymPy
    numbers (Rationals where the network is rational, else 30-digit Floats; object arrays).
    ``entries`` ({key: [index tuple, ...]}, keys as in grads) restricts the work to those
    entries; the others are NaN (None with ``exact``). Refuses networks with more than
    ``ORACLE_MAX_PARAMS`` parameters or batches larger than ``ORACLE_MAX_BATCH``: the
    expansion, and SymPy's work on it, grow quickly with width and depth.
    """
    p64, X64, Y64 = _arrays("oracle_gradients", network, params, X, Y)
    _check_oracle_size("oracle_gradients", p64, X64)
    wanted = _wanted_entries(entries, {**p64, **({"X": X64} if input_grad else {})})
    B = X64.shape[0]
    c = _batch_factor(network, B)

    P = {k: _nested(v, lambda idx, val, k=k: _symbol(k, idx)) for k, v in p64.items()}
    xs = [_symbol("X", (t,)) for t in range(network.inputs)]
    ys = [_symbol("Y", (i,)) for i in range(network.sizes[-1])]
    ell = _sample_loss(network, _forward_sample(network, P, xs), ys)

    def sym(key, idx):
        return P[key][idx[0]][idx[1]] if len(idx) == 2 else P[key][idx[0]]

    derivs = {}
    for key, idxs in wanted.items():
        for idx in idxs:
            s = xs[idx[1]] if key == "X" else sym(key, idx)
            if s not in derivs:
                derivs[s] = sp.diff(ell, s)

    pvals = {}
    for key, arr in p64.items():
        for idx in np.ndindex(arr.shape):
            pvals[sym(key, idx)] = _rational(arr[idx])
    total = sp.Integer(0)
    sums = {s: sp.Integer(0) for s in derivs}
    xgrads = {}
    for b in range(B):
        memo = {**pvals, **{x: _rational(v) for x, v in zip(xs, X64[b])},
                **{y: _rational(v) for y, v in zip(ys, Y64[b])}}
        total += _evaluate(ell, None, memo, network.relu_at_zero)
        for s, d in derivs.items():
            v = _evaluate(d, None, memo, network.relu_at_zero)
            sums[s] += v
            xgrads[b, s] = v

    loss = _value(c * total)
    grads = {}
    for key, arr in p64.items():
        out = np.full(arr.shape, None, dtype=object)
        for idx in wanted[key]:
            out[idx] = _value(c * sums[sym(key, idx)])
        grads[key] = out
    if input_grad:
        out = np.full(X64.shape, None, dtype=object)
        for b, t in wanted["X"]:
            out[b, t] = _value(c * xgrads[b, xs[t]])
        grads["X"] = out
    if exact:
        return loss, grads
    return float(loss), {k: np.where(v == None, np.nan, v).astype(np.float64)  # noqa: E711
                         for k, v in grads.items()}


def _wanted_entries(entries, arrays):
    """{key: sorted index tuples to compute}: every entry, or those listed in ``entries``."""
    if entries is None:
        return {k: list(np.ndindex(a.shape)) for k, a in arrays.items()}
    if not isinstance(entries, dict) or any(k not in arrays for k in entries):
        raise InputError(f"oracle_gradients: entries: expected a dict with keys among {', '.join(arrays)}")
    wanted = {k: [] for k in arrays}
    for k, idxs in entries.items():
        shape = arrays[k].shape
        for idx in idxs:
            idx = tuple(int(i) for i in np.atleast_1d(idx))
            if len(idx) != len(shape) or any(not 0 <= i < n for i, n in zip(idx, shape)):
                raise InputError(f"oracle_gradients: entries[{k!r}]: index {idx} outside shape {shape}")
            wanted[k].append(idx)
        wanted[k] = sorted(set(wanted[k]))
    return wanted


# ----------------------------------------------------------------------------------------------
# PyTorch reference
# ----------------------------------------------------------------------------------------------

def _torch_expr(expr, env, torch):
    """Evaluate a SymPy expression on tensors (forward only; autograd differentiates it).

    Covers what the safe expression parser can build: + * ** numbers, exp log sqrt tanh sinh
    cosh sin cos atan Abs Max Min sign, Piecewise with comparisons. Anything else raises
    NotImplementedError naming it.
    """
    ref = next(iter(env.values()))

    def ev(e):
        if e in env:
            return env[e]
        if e.is_Number or e in (sp.pi, sp.E):
            return torch.full_like(ref, float(e))
        if isinstance(e, sp.Add):
            out = ev(e.args[0])
            for t in e.args[1:]:
                out = out + ev(t)
            return out
        if isinstance(e, sp.Mul):
            out = ev(e.args[0])
            for t in e.args[1:]:
                out = out * ev(t)
            return out
        if isinstance(e, sp.Pow):
            base, ex = e.args
            if ex.is_Integer or ex.is_Rational:
                return ev(base) ** float(ex)
            return torch.pow(ev(base), ev(ex))
        unary = {sp.exp: torch.exp, sp.log: torch.log, sp.tanh: torch.tanh, sp.sinh: torch.sinh,
                 sp.cosh: torch.cosh, sp.sin: torch.sin, sp.cos: torch.cos, sp.atan: torch.atan,
                 sp.Abs: torch.abs, sp.sign: torch.sign}
        if e.func in unary:
            return unary[e.func](ev(e.args[0]))
        if isinstance(e, (sp.Max, sp.Min)):
            pick = torch.maximum if isinstance(e, sp.Max) else torch.minimum
            out = ev(e.args[0])
            for t in e.args[1:]:
                out = pick(out, ev(t))
            return out
        if isinstance(e, sp.Piecewise):
            # undefined where no condition holds (a Piecewise without an otherwise branch): NaN
            out = torch.full_like(ref, math.nan)
            for value, cond in reversed(e.args):
                out = ev(value) if cond == sp.true else torch.where(ev(cond), ev(value), out)
            return out
        rel = {sp.StrictGreaterThan: torch.gt, sp.GreaterThan: torch.ge,
               sp.StrictLessThan: torch.lt, sp.LessThan: torch.le}
        if type(e) in rel:
            return rel[type(e)](ev(e.args[0]), ev(e.args[1]))
        raise NotImplementedError(f"torch_gradients: no torch translation of {e.func.__name__} in {expr}")

    return ev(expr)


def _torch_activation(act, z, torch, at_zero=0):
    """a = f(z) for one layer: built-ins through torch's own functions, user ones translated.
    torch's relu'(0) is 0 and leaky_relu'(0) the slope; with ``at_zero`` = 1 both are written
    as torch.where(z >= 0, z, ...), whose derivative at 0 is that of the z branch, 1."""
    F = torch.nn.functional
    if act.user:
        return _torch_expr(act.definition, {naming.Z: z}, torch)
    name = act.name
    if name == "sigmoid":
        return torch.sigmoid(z)
    if name == "tanh":
        return torch.tanh(z)
    if name in ("relu", "leaky_relu") and at_zero:
        slope = float(dict(act.values)["slope"]) if name == "leaky_relu" else 0.0
        return torch.where(z >= 0, z, slope * z)
    if name == "relu":
        return torch.relu(z)
    if name == "leaky_relu":
        return F.leaky_relu(z, negative_slope=float(dict(act.values)["slope"]))
    if name == "softplus":
        return torch.logaddexp(z, torch.zeros_like(z))   # exact log(1 + e^z), no threshold
    if name == "identity":
        return z
    if name == "exp":
        return torch.exp(z)
    if name == "softmax":
        return torch.softmax(z, dim=1)
    raise NotImplementedError(f"torch_gradients: no torch translation of activation {name!r}")


def torch_gradients(network, params, X, Y, input_grad=False):
    """Loss and gradients by PyTorch autograd in float64 (an independent reference).

    Forward: z_l = a_{l-1} W_l^T + b_l (rows are samples; no b_l without bias), a_l = f_l(z_l)
    with torch's own sigmoid, tanh, relu, leaky_relu(slope), softplus (as logaddexp(z, 0)),
    identity, exp and softmax over units (relu and leaky_relu as torch.where(z >= 0, ...) when
    the network's relu_at_zero is 1); user-defined activations are translated from their SymPy
    definition. Loss per sample summed over units: mse 1/2 (a - y)^2, sse (a - y)^2, bce
    -(y log a + (1 - y) log(1 - a)) computed from the logits (binary_cross_entropy_with_logits)
    after a sigmoid and from a otherwise (allow_any_output), ce -sum y log a computed as
    -sum y log_softmax(z) after a softmax and from a otherwise; then the mean or the sum over
    the batch.

    Returns ``(loss, grads)`` like ``oracle_gradients`` (float64 arrays; ``"X"`` when
    ``input_grad``). Raises ImportError without torch, NotImplementedError for an activation
    it cannot translate.
    """
    import torch
    p64, X64, Y64 = _arrays("torch_gradients", network, params, X, Y)
    F = torch.nn.functional
    tp = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in p64.items()}
    x = torch.tensor(X64, dtype=torch.float64, requires_grad=input_grad)
    y = torch.tensor(Y64, dtype=torch.float64)
    a, z = x, None
    for l, layer in enumerate(network.layers, start=1):
        z = a @ tp[naming.param_key("W", l)].T
        if layer.bias:
            z = z + tp[naming.param_key("b", l)]
        a = _torch_activation(layer.activation, z, torch, network.relu_at_zero)
    name = network.loss.name
    out = network.layers[-1].activation.name
    if name == "mse":
        per = 0.5 * (a - y) ** 2
    elif name == "sse":
        per = (a - y) ** 2
    elif name == "bce" and out == "sigmoid":
        per = F.binary_cross_entropy_with_logits(z, y, reduction="none")
    elif name == "bce":     # after another output (allow_any_output): from a, NaN outside (0, 1)
        per = -(y * torch.log(a) + (1 - y) * torch.log(1 - a))
    elif name == "ce" and out == "softmax":
        per = -y * torch.log_softmax(z, dim=1)
    elif name == "ce":
        per = -y * torch.log(a)
    else:
        raise NotImplementedError(f"torch_gradients: no torch translation of loss {name!r}")
    total = per.sum()
    loss = total / X64.shape[0] if network.reduction == "mean" else total
    loss.backward()
    grads = {k: t.grad.detach().numpy().copy() for k, t in tp.items()}
    if input_grad:
        grads["X"] = x.grad.detach().numpy().copy()
    return float(loss.detach()), grads

"""The full-expansion SymPy oracle of an MLP ``Network`` (``symbp.verify.oracle_gradients``
serves both kinds and calls this body for a Network; ``symbp.verify.graph`` has the graph's).

Contract:

- ``oracle_gradients(network, params, X, Y)`` is the certificate that does not trust
  ``symbp.derive``: the loss of the concrete network, fully expanded (one SymPy symbol per
  parameter entry, every unit written out from the forward definitions in ``symbp.functions``),
  is differentiated with ``sympy.diff`` directly and evaluated at the given values, converted
  exactly to Rationals, so ReLU/identity networks give exact Rational gradients, at kinks the
  derivative the network's ``relu_at_zero`` names. Only for small sizes (``ORACLE_MAX_PARAMS``,
  ``ORACLE_MAX_BATCH``). ``oracle_loss_expression`` returns the whole batch loss as one
  expression.
- The SymPy helpers both oracles share: exact values (``_rational``), folding of constants
  (``_fold``), reporting (``_value``), the size limit and the selection of entries.
- ``gradcheck`` and ``torch_gradients`` are the old names of ``symbp.verify``'s functions.

Nothing here imports ``symbp.derive``: the oracle reads only the ``Network`` (sizes, forward
definitions, loss, reduction). Loss conventions: per sample, the sum over output units of
``network.loss.per_unit``; over the batch, the mean (reduction "mean") or the sum ("sum").
"""
import numpy as np
import sympy as sp

from .. import naming
from ..errors import InputError, SymbpError
from .fd import DEFAULT_TOL, GradcheckReport, arrays, check_tol, gradcheck  # noqa: F401 (the old names)
from .torch_ref import torch_gradients  # noqa: F401 (the old name; it takes either kind of model)

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


def _check_oracle_size(where, entries, batch, what="parameters"):
    """Refuse sizes whose expansion, and SymPy's work on it, would take too long."""
    if entries > ORACLE_MAX_PARAMS or batch > ORACLE_MAX_BATCH:
        raise SymbpError(
            f"{where}: the full-expansion oracle is for small sizes (at most {ORACLE_MAX_PARAMS} "
            f"{what} and batch {ORACLE_MAX_BATCH}); got {entries} {what} and batch "
            f"{batch}: use gradcheck or torch_gradients for this network")


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
        _, x64, Y64 = arrays("oracle_loss_expression", network, zeros, X, Y)
        P = {k: _nested(zeros[k], lambda idx, v, k=k: _symbol(k, idx)) for k in shapes}
        symbols = P
    else:
        p64, x64, Y64 = arrays("oracle_loss_expression", network, params, X, Y)
        P = {k: _nested(p64[k], lambda idx, v: _rational(v)) for k in shapes}
        symbols = {}
    _check_oracle_size("oracle_loss_expression", sum(int(np.prod(s)) for s in shapes.values()), Y64.shape[0])
    Xr = [[_rational(v) for v in row] for row in x64["X"]]
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
    p64, x64, Y64 = arrays("oracle_gradients", network, params, X, Y)
    X64 = x64["X"]
    _check_oracle_size("oracle_gradients", sum(v.size for v in p64.values()), X64.shape[0])
    wanted = _wanted_entries("oracle_gradients", entries, {**p64, **({"X": X64} if input_grad else {})})
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


def _wanted_entries(where, entries, arrays):
    """{key: sorted index tuples to compute}: every entry, or those listed in ``entries``."""
    if entries is None:
        return {k: list(np.ndindex(a.shape)) for k, a in arrays.items()}
    if not isinstance(entries, dict) or any(k not in arrays for k in entries):
        raise InputError(f"{where}: entries: expected a dict with keys among {', '.join(arrays)}")
    wanted = {k: [] for k in arrays}
    for k, idxs in entries.items():
        shape = arrays[k].shape
        for idx in idxs:
            idx = tuple(int(i) for i in np.atleast_1d(idx))
            if len(idx) != len(shape) or any(not 0 <= i < n for i, n in zip(idx, shape)):
                raise InputError(f"{where}: entries[{k!r}]: index {idx} outside shape {shape}")
            wanted[k].append(idx)
        wanted[k] = sorted(set(wanted[k]))
    return wanted

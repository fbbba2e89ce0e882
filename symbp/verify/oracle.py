"""The full-expansion SymPy oracle, one body for both kinds of model (a ``Network`` is its chain
Graph, ``network.graph``: parameters W1, b1, ..., input x, read as the MLP's "X").

Contract:

- ``oracle_gradients(model, params, X, Y)`` is the certificate that does not trust
  ``symbp.derive``: the loss of the concrete model, fully expanded (one SymPy symbol per
  parameter entry, input entry and target entry, every unit written out from its op's forward
  definition in the registry, ``symbp.model.ops``), is differentiated with ``sympy.diff``
  directly and evaluated at the given values, converted exactly to Rationals, so ReLU/identity
  models give exact Rational gradients, at kinks the derivative the model's ``relu_at_zero``
  names. Only for small sizes (``ORACLE_MAX_PARAMS``, ``ORACLE_MAX_BATCH``).
  ``oracle_loss_expression`` returns the whole batch loss as one expression.
- A new op needs no edit here: each node's value is its op's forward definition with the sizes,
  the unit and the sample made concrete and its sums written out; an op whose definition sums
  over the batch (``couples_samples``) makes the whole batch one expression.

Nothing here imports ``symbp.derive``: the oracle reads only the model (nodes, the registry's
forward definitions, loss, reduction). Loss conventions: per sample, the sum over output units
of the loss's ``per_unit``; over the batch, the mean (reduction "mean") or the sum ("sum").
"""
import numpy as np
import sympy as sp

from .. import naming
from ..errors import InputError, SymbpError
from ..model import ops
from .conv import TENSOR_KINDS, oracle_sample
from .fd import checked_arrays
from .norm import FAMILY as NORM_FAMILY

ORACLE_MAX_PARAMS = 300
ORACLE_MAX_BATCH = 16
ORACLE_DIGITS = 30       # digits of the evaluated transcendental results
_FOLD_DIGITS = 60        # digits of transcendental intermediate values (well beyond the 30 reported)


def _rational(v):
    """The exact value of a float as a SymPy Rational (a binary float is a dyadic rational)."""
    return sp.Rational(float(v))


def _exact(arr):
    """An object array of the Rationals of a float array."""
    return np.array([_rational(v) for v in arr.ravel()], dtype=object).reshape(arr.shape)


def _symbols(name, shape):
    """An object array of real symbols ``name[i,j]``."""
    out = np.empty(shape, dtype=object)
    for idx in np.ndindex(shape):
        out[idx] = sp.Symbol(f"{name}[{','.join(map(str, idx))}]", real=True)
    return out


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
    """The definition with each Piecewise boundary owned by the side whose derivative the
    model's relu_at_zero asks for (1: right, 0: left): the value is unchanged (the pieces meet
    there), but ``sympy.diff`` then gives that side's derivative at the boundary (leaky ReLU:
    in > 0 becomes in >= 0 for 1). A boundary is a condition linear in one entry (in0[s, j]).
    Max(0, u) needs nothing here: its derivative is Heaviside(u), valued ``at_zero`` at 0 by
    ``_evaluate``. Written here, not taken from the kink pass of ``symbp.simplify``, so that the
    oracle stays independent of the derivation."""
    z = sp.Dummy("z", real=True)

    def owned(cond):
        if not isinstance(cond, _RELATIONS):
            return cond
        atoms = (cond.lhs - cond.rhs).atoms(sp.Indexed)
        if len(atoms) != 1:
            return cond
        at_z = cond.xreplace({atoms.pop(): z})
        e = at_z.lhs - at_z.rhs
        if e.free_symbols != {z} or not e.is_polynomial(z) or sp.degree(e, z) != 1:
            return cond
        c = sp.solve(e, z)[0]
        right = bool(at_z.xreplace({z: c + 1}))     # the branch lies right of its boundary
        less = isinstance(cond, (sp.StrictLessThan, sp.LessThan))
        op = ("<=" if less else ">=") if right == bool(at_zero) else ("<" if less else ">")
        return sp.Rel(cond.lhs, cond.rhs, op)

    return definition.replace(lambda e: isinstance(e, sp.Piecewise),
                              lambda pw: sp.Piecewise(*[(v, owned(c)) for v, c in pw.args]))


def _plain(e):
    return e


def _written_out(e):
    """e with every Sum (concrete limits) written out as an Add of its terms."""
    def add(s):
        terms = [s.function]
        for v, lo, hi in s.limits:
            terms = [t.xreplace({v: k}) for t in terms for k in range(int(lo), int(hi) + 1)]
        return sp.Add(*terms)
    return e.replace(lambda x: isinstance(x, sp.Sum), add)


def _entry(table, indices, s):
    """table[indices] with the sample index at s; 0 outside the table (a padded input)."""
    idx = tuple(int(i.xreplace({naming.S: s})) for i in indices)
    inside = len(idx) == table.ndim and all(0 <= i < n for i, n in zip(idx, table.shape))
    return table[idx] if inside else sp.Integer(0)


def _output(graph, P, X, group):
    """Values out[s, j] (an object array (group, width)) of the node the loss reads, for a group
    of samples whose inputs are X ({input: (group, width)}), parameters P ({name: array}): each
    node's unit j is its op's forward definition (``op.forward``) at the node's sizes, j and the
    group's batch size, its sums written out and its kinks owned (``_at_kinks``), with each
    generic entry (in<m>[s, k], the parameters' _W[p, q], _b[p]) replaced by the value it names."""
    vals = dict(X)
    for n in graph.nodes:
        if n.op.realize in ("source", "loss"):
            continue
        ins = [vals[i] for i in n.inputs]
        if n.kind in NORM_FAMILY:       # batchnorm, layernorm, dropout (verify/norm.py): the group at once
            vals[n.name] = np.array(NORM_FAMILY[n.kind](n, ins, P, _plain), dtype=object)
            continue
        if n.kind in TENSOR_KINDS:      # conv2d, pooling, flatten (verify/conv.py): each sample's C-order entries
            vals[n.name] = np.array([oracle_sample(n, graph, row, P, _plain) for row in ins[0]], dtype=object)
            continue
        sizes = {**ops._sizes(n.width, [graph.node(i).width for i in n.inputs]), naming.BATCH: group}
        fwd = n.op.forward(n.op.key(n), graph.relu_at_zero).expr.xreplace(sizes)
        bound = n.op.bind(n)
        tables = {ops._in(m): vals[i] for m, i in enumerate(n.inputs)}
        tables.update({spec.generic: P[bound[spec.role]] for spec in n.op.params if spec.role in bound})
        out = np.empty((group, n.width), dtype=object)
        for j in range(n.width):
            unit = _at_kinks(_written_out(fwd.xreplace({naming.J: j})), graph.relu_at_zero)
            atoms = unit.atoms(sp.Indexed)
            for s in range(group):
                out[s, j] = unit.xreplace({a: _entry(tables[a.base], a.indices, s) for a in atoms})
        vals[n.name] = out
    return vals[graph.output]


def _loss(graph, out, Y):
    """sum_s sum_i per_unit(out[s, i], y[s, i]) over the group (before the batch factor)."""
    per_unit = graph.loss_node.loss.per_unit
    terms = []
    for a, y in zip(out.ravel(), Y.ravel()):
        # y first: a term that vanishes for a numeric target (ce with y_i = 0) is never built
        t = per_unit.xreplace({naming.Y: y})
        if t != 0:
            terms.append(t.xreplace({naming.A: a}))
    return sp.Add(*terms)


def _batch_factor(graph, batch):
    return sp.Rational(1, batch) if graph.reduction == "mean" else sp.Integer(1)


def _evaluate(expr, memo, at_zero):
    """expr with its symbols replaced by the numbers in ``memo``, evaluated node by node.

    Each distinct subexpression is rebuilt once from its evaluated arguments (so the cost is
    linear in the expression's size counted as a DAG, where ``xreplace`` walks every path) and
    folded by ``_fold``: rational operations on Rationals stay exact. Heaviside(0) is
    ``at_zero``, the model's relu'(0) (0 unless relu_at_zero = 1; SymPy's default is 1/2).
    ``memo`` is shared between the expressions evaluated at the same point and grows with the
    values of their subexpressions.
    """
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


def oracle_loss_expression(model, X, Y, params=None):
    """The whole batch loss as one SymPy expression with one symbol per parameter entry.

    Returns ``(expr, symbols)`` where ``symbols`` maps each parameter to nested lists of the
    symbols ``W1[i,j]``, ``b1[i]``, ...; X and Y enter as exact Rationals. With ``params``
    given, the entries are their exact values instead (the symbols dict is then empty). Nothing
    is evaluated or folded. Meant for tiny models: teaching, and showing that the per-sample
    route of ``oracle_gradients`` differentiates the same function.
    """
    given = {k: np.zeros(s) for k, s in model.param_shapes().items()} if params is None else params
    graph, p64, x64, t64, _ = checked_arrays("oracle_loss_expression", model, given, X, Y)
    B = t64.shape[0]
    _check_oracle_size("oracle_loss_expression", sum(v.size for v in p64.values()), B)
    P = {k: _symbols(k, v.shape) if params is None else _exact(v) for k, v in p64.items()}
    out = _output(graph, P, {k: _exact(v) for k, v in x64.items()}, B)
    expr = _batch_factor(graph, B) * _loss(graph, out, _exact(t64))
    return expr, ({k: v.tolist() for k, v in P.items()} if params is None else {})


def oracle_gradients(model, params, X, Y, exact=False, input_grad=False, entries=None):
    """Loss and gradients by differentiating the loss's full expansion with ``sympy.diff``.

    The loss of one sample is one SymPy expression in every parameter entry (a symbol
    ``W1[i,j]``, ``b1[i]``, ...), the sample's input entries and targets, built from the
    forward definitions alone (``_output``: for an MLP z_l[j] = sum_k W_l[j, k] a_{l-1}[k] +
    b_l[j], a_l = f_l(z_l), a_l[i] = exp(z_i) / sum_k exp(z_k) for softmax; a graph's nodes
    likewise); l(theta; x, y) = sum_i per_unit(out[i], y[i]). The batch loss is
    L = c * sum_s l(theta; x_s, y_s) with c = 1/B for the mean and 1 for the sum, so (diff
    being linear) dL/dtheta = c * sum_s diff(l, theta) evaluated at (theta, x_s, y_s): each
    derivative is taken once, symbolically, and evaluated per sample (``oracle_loss_expression``
    builds the whole batch expression instead; the tests show both give the same numbers).
    dL/dx[s, t] is c * diff(l, x[t]) at sample s. A model with an op that sums over the batch
    (``couples_samples``) is differentiated as one expression of the whole batch.

    Values enter as exact Rationals (a float converts exactly) and are evaluated node by node
    (``_evaluate``): rational operations stay exact, so ReLU / leaky ReLU / identity models
    with mse or sse give exact Rationals; transcendental intermediate values are carried as
    60-digit Floats and results reported to 30 digits. At a kink the derivative is the one the
    model's ``relu_at_zero`` names, as the kernels take it: Heaviside(0) = relu_at_zero for
    Max(0, u), and each Piecewise boundary owned by that side (``_at_kinks``): relu'(0) = 0 and
    leaky relu'(0) = slope by default, both 1 with relu_at_zero = 1.

    Returns ``(loss, grads)``: float and float64 arrays keyed by parameter and by each checked
    input (an MLP's ``"X"``, dL/dX, when ``input_grad``; a graph's inputs marked grad). With
    ``exact=True`` the loss and the arrays' entries are SymPy numbers (Rationals where the
    model is rational, else 30-digit Floats; object arrays). ``entries`` ({key: [index tuple,
    ...]}, keys as in grads) restricts the work to those entries; the others are NaN (None with
    ``exact``). Refuses models with more than ``ORACLE_MAX_PARAMS`` parameters (a graph:
    differentiated entries) or batches larger than ``ORACLE_MAX_BATCH``: the expansion, and
    SymPy's work on it, grow quickly with width and depth.
    """
    where = "oracle_gradients"
    graph, p64, x64, t64, checked = checked_arrays(where, model, params, X, Y, input_grad)
    B = t64.shape[0]
    # an MLP counts its parameters, a graph every differentiated entry (its inputs marked grad too)
    inputs = sum(x64[k].size for k in checked) if graph is model else 0
    _check_oracle_size(where, sum(v.size for v in p64.values()) + inputs, B,
                       "differentiated entries" if graph is model else "parameters")
    wanted = _wanted_entries(where, entries, {**p64, **{key: x64[k] for k, key in checked.items()}})
    group = B if any(n.op.couples_samples for n in graph.nodes) else 1
    P = {k: _symbols(k, v.shape) for k, v in p64.items()}
    Xs = {k: _symbols(k, (group, v.shape[1])) for k, v in x64.items()}
    Ys = _symbols(graph.target, (group, t64.shape[1]))
    ell = _loss(graph, _output(graph, P, Xs, group), Ys)
    syms = {**P, **{key: Xs[k] for k, key in checked.items()}}

    def sym(key, idx):
        return syms[key][idx] if key in P else syms[key][idx[0] % group, idx[1]]

    derivs = {}
    for key, idxs in wanted.items():
        for idx in idxs:
            s = sym(key, idx)
            if s not in derivs:
                derivs[s] = sp.diff(ell, s)

    pvals = {s: _rational(v) for k, arr in p64.items() for s, v in zip(P[k].ravel(), arr.ravel())}
    total = sp.Integer(0)
    sums = {s: sp.Integer(0) for s in derivs}
    at = {}
    for first in range(0, B, group):
        memo = dict(pvals)
        for k, arr in x64.items():
            memo.update(zip(Xs[k].ravel(), _exact(arr[first:first + group]).ravel()))
        memo.update(zip(Ys.ravel(), _exact(t64[first:first + group]).ravel()))
        total += _evaluate(ell, memo, graph.relu_at_zero)
        for s, d in derivs.items():
            at[first, s] = _evaluate(d, memo, graph.relu_at_zero)
            sums[s] += at[first, s]

    c = _batch_factor(graph, B)
    grads = {}
    for key, idxs in wanted.items():
        arr = np.full(p64[key].shape if key in p64 else (B, syms[key].shape[1]), None, dtype=object)
        for idx in idxs:
            s = sym(key, idx)
            arr[idx] = _value(c * (sums[s] if key in p64 else at[idx[0] - idx[0] % group, s]))
        grads[key] = arr
    loss = _value(c * total)
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

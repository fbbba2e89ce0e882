"""The full-expansion SymPy oracle of a ``Graph`` (``symbp.verify.oracle_gradients`` serves
both kinds and calls this body for a Graph).

Contract:

- ``graph_oracle_gradients(graph, params, inputs, target)``: the whole scalar loss of the
  concrete graph on the concrete batch built as SymPy expressions from the forward definitions
  (``Graph`` nodes, ``symbp.functions``) and differentiated with ``sympy.diff`` per entry; it
  does not import ``symbp.derive``. Exact where the graph is rational. Returns
  ``(loss, {param: grad}, {input marked grad: grad})``; ``inputs`` is a dict {input name: (B, width)} or one array when the graph has one input.
- ``graph_gradcheck`` and ``graph_torch_gradients`` are the old names of ``symbp.verify``'s
  ``gradcheck`` and ``torch_gradients`` (the latter returning the three-part tuple above).
"""
import numpy as np
import sympy as sp

from .. import naming
from ..errors import SymbpError
from .chain import (_batch_factor, _check_oracle_size, _fold, _kink_convention, _nested, _rational,
                    _symbol, _value, _wanted_entries)
from .conv import TENSOR_KINDS, oracle_sample
from .fd import arrays, gradcheck

graph_gradcheck = gradcheck     # the old name


def graph_torch_gradients(graph, params, inputs, target):
    """``symbp.verify.torch_gradients`` of a graph as (loss, {param: grad}, {input: grad})."""
    from .torch_ref import torch_gradients
    loss, grads = torch_gradients(graph, params, inputs, target)
    return split(graph, loss, grads)


def split(graph, loss, grads):
    """(loss, {param: grad}, {input: grad}) of one gradient dict keyed by params and inputs."""
    shapes = graph.param_shapes()
    return (loss, {k: v for k, v in grads.items() if k in shapes},
            {k: v for k, v in grads.items() if k not in shapes})


# ----------------------------------------------------------------------------------------------
# the full-expansion SymPy oracle
# ----------------------------------------------------------------------------------------------

def _forward_sample(graph, P, x, fold, cache=None, dirty=None):
    """Values of every node for one sample: {name: [SymPy entries]}; x maps inputs to lists.
    Nodes not in ``dirty`` are taken from ``cache`` (the values of the same sample with nothing
    symbolic), so only what depends on the differentiated entry is rebuilt."""
    vals = dict(x)
    for n in graph.nodes:
        if n.kind in ("input", "loss"):
            continue
        if cache is not None and n.name not in dirty:
            vals[n.name] = cache[n.name]
            continue
        ins = [vals[i] for i in n.inputs]
        if n.kind in TENSOR_KINDS:      # conv2d, pooling, flatten (verify/conv.py)
            vals[n.name] = oracle_sample(n, graph, ins[0], P, fold)
            continue
        if n.kind == "dense":
            W, a = P[n.weight], ins[0]
            b = P[n.bias] if n.bias is not None else None
            out = []
            for j in range(n.width):
                row = [W[k][j] if n.transpose else W[j][k] for k in range(len(a))]
                zj = sp.Add(*[w * ak for w, ak in zip(row, a)]) + (b[j] if b is not None else 0)
                out.append(fold(zj))
        elif n.kind == "activation":
            act = n.activation
            if act.elementwise:
                out = [fold(act.at(v)) for v in ins[0]]
            elif act.name == "softmax":
                e = [sp.exp(v) for v in ins[0]]
                den = sp.Add(*e)
                out = [fold(ei / den) for ei in e]
            else:
                raise SymbpError(f"oracle: node {n.name}: unsupported vector activation {act.name!r}")
        elif n.kind == "add":
            out = [fold(sp.Add(*col)) for col in zip(*ins)]
        elif n.kind == "multiply":
            out = [fold(sp.Mul(*col)) for col in zip(*ins)]
        elif n.kind == "concat":
            out = [v for part in ins for v in part]
        elif n.kind == "expression":
            syms = [n.symbol(i) for i in n.inputs]
            out = [fold(n.expression.xreplace(dict(zip(syms, col)))) for col in zip(*ins)]
        else:
            raise SymbpError(f"oracle: node {n.name}: unknown kind {n.kind!r}")
        vals[n.name] = out
    return vals


def _nested_nd(arr):
    """Nested lists of exact Rationals with the shape of an n-d array (a convolution kernel)."""
    if arr.ndim == 1:
        return [_rational(v) for v in arr]
    return [_nested_nd(a) for a in arr]


def _sample_loss(graph, P, X, Y, s, fold=_fold, cache=None, dirty=None):
    """sum_i loss(out[s, i], y[s, i]) of sample s (before the batch factor)."""
    vals = _forward_sample(graph, P, {k: rows[s] for k, rows in X.items()}, fold, cache, dirty)
    per_unit = graph.loss_node.loss.per_unit
    return sp.Add(*[per_unit.xreplace({naming.A: a, naming.Y: y}) for a, y in zip(vals[graph.output], Y[s])])


def _downstream(graph, start):
    """Names of the nodes that depend on any node in ``start`` (``start`` included)."""
    out = set(start)
    for n in graph.nodes:
        if any(i in out for i in n.inputs):
            out.add(n.name)
    return out


def _evaluate(expr, theta, value):
    """expr at theta = value: exact when that is rational (ReLU, identity graphs), else 30
    digits through mpmath at 45 digits (much faster than evalf on long expressions; evalf when
    mpmath cannot take the expression)."""
    exact = expr.xreplace({theta: value})
    if exact.is_Rational:
        return exact
    try:
        import mpmath
        fn = sp.lambdify(theta, expr, modules=["mpmath"])
        with mpmath.workdps(45):
            v = fn(mpmath.mpf(value.p) / value.q)
        if not isinstance(v, mpmath.mpf):
            raise TypeError(type(v))
        return sp.Float(v, 30)
    except Exception:       # any expression mpmath's printer or functions do not cover
        return _value(exact)


def graph_oracle_gradients(graph, params, inputs, target, exact=False, entries=None):
    """(loss, {param: grad}, {input marked grad: grad}) by differentiating the fully expanded
    loss L = c sum_s sum_i loss(out[s, i], y[s, i]), built from the nodes' forward definitions:
    for each entry theta, L with theta a symbol and all else exact Rationals (non-rational
    constants folded to 60 digits, as ``symbp.verify.oracle_gradients`` does; values that do not
    depend on theta are built once), then ``sympy.diff`` and evaluation at theta's value
    (Heaviside(0) = 0 at kinks). Terms that cannot depend on theta (other samples, for an input
    entry) have derivative 0 and are left out. ``exact`` and ``entries`` as for an MLP's
    ``oracle_gradients`` (entries keyed by parameter or input name). Small graphs only."""
    where = "graph_oracle_gradients"
    p64, x64, t64 = arrays(where, graph, params, inputs, target)
    differentiated = {**p64, **{n.name: x64[n.name] for n in graph.grad_inputs}}
    B = t64.shape[0]
    _check_oracle_size(where, sum(v.size for v in differentiated.values()), B, "differentiated entries")
    wanted = _wanted_entries(where, entries, differentiated)
    P = {k: _nested(v, lambda idx, val: _rational(val)) if v.ndim <= 2 else _nested_nd(v) for k, v in p64.items()}
    X = {k: _nested(v, lambda idx, val: _rational(val)) for k, v in x64.items()}
    Y = _nested(t64, lambda idx, val: _rational(val))
    c = _batch_factor(graph, B)
    caches = [_forward_sample(graph, P, {k: rows[s] for k, rows in X.items()}, _fold) for s in range(B)]
    loss = _value(c * sp.Add(*[_sample_loss(graph, P, X, Y, s, cache=caches[s], dirty=set()) for s in range(B)]))

    def derivative(holder, pos, name, idx, samples, dirty):
        theta = _symbol(name, idx)
        saved = holder[pos]
        holder[pos] = theta
        try:
            L = c * sp.Add(*[_sample_loss(graph, P, X, Y, s, cache=caches[s], dirty=dirty) for s in samples])
        finally:
            holder[pos] = saved
        return _evaluate(_kink_convention(sp.diff(L, theta)), theta, saved)

    grads = {}
    for k, arr in differentiated.items():
        out = np.full(arr.shape, None, dtype=object)
        if k in p64:
            dirty = _downstream(graph, [p.name for p in graph.nodes if k in p.op.bind(p).values()])
            for idx in wanted[k]:
                holder = P[k]
                for i in idx[:-1]:      # a matrix's row, a convolution kernel's innermost list
                    holder = holder[i]
                out[idx] = derivative(holder, idx[-1], k, idx, range(B), dirty)
        else:       # an input entry (s, j) reaches the loss of sample s only
            dirty = _downstream(graph, [k])
            for s, j in wanted[k]:
                out[s, j] = derivative(X[k][s], j, k, (s, j), [s], dirty)
        grads[k] = out
    if not exact:
        loss = float(loss)
        grads = {k: np.where(v == None, np.nan, v).astype(np.float64) for k, v in grads.items()}  # noqa: E711
    return split(graph, loss, grads)

"""References for the normalization family (batchnorm, layernorm, dropout), independent of the
derivation: the full-expansion oracle of a graph holding them, and their PyTorch translations.

Contract:

- ``has_norm(graph)``: whether the graph holds a node of the family;
- ``norm_oracle_gradients(graph, params, inputs, target, exact, entries)``: as
  ``verify.graph.graph_oracle_gradients`` (same arguments and result), for any graph: the whole
  batch is expanded at once (batchnorm couples the samples: every output of a batch depends on
  every input of its column), node by node in topological order; the family's nodes from their
  definitions (Ioffe and Szegedy 2015, Algorithm 1; Ba, Kiros and Hinton 2016, eq. 4; inverted
  dropout x m / (1 - p)), written out here entry by entry, every other node by the graph oracle's
  per-sample forward; then ``sympy.diff`` of the scalar loss per entry, as the graph oracle does;

The PyTorch translations of the family are in ``verify.norm_torch``.
"""
import numpy as np
import sympy as sp

from .. import naming
from .chain import (_batch_factor, _check_oracle_size, _fold, _kink_convention, _nested, _rational,
                    _symbol, _value, _wanted_entries)
from .fd import arrays
from .graph import _evaluate, _forward_sample, split


def has_norm(graph):
    return any(n.kind in FAMILY for n in graph.nodes)


def _eps(node):
    return sp.Rational(repr(node.option("eps")))


def _affine(node, P, xhat, j):
    if not node.option("affine"):
        return xhat
    return P[node.option("scale")][j] * xhat + P[node.option("shift")][j]


def _batchnorm(node, ins, P, fold):
    x = ins[0]                      # x[s][j]
    B, n = len(x), len(x[0])
    out = [[None] * n for _ in range(B)]
    for j in range(n):
        col = [x[s][j] for s in range(B)]
        mu = sp.Add(*col) / B
        var = sp.Add(*[(v - mu) ** 2 for v in col]) / B
        sigma = sp.sqrt(var + _eps(node))
        for s in range(B):
            out[s][j] = fold(_affine(node, P, (col[s] - mu) / sigma, j))
    return out


def _layernorm(node, ins, P, fold):
    out = []
    for row in ins[0]:
        n = len(row)
        mu = sp.Add(*row) / n
        var = sp.Add(*[(v - mu) ** 2 for v in row]) / n
        sigma = sp.sqrt(var + _eps(node))
        out.append([fold(_affine(node, P, (v - mu) / sigma, j)) for j, v in enumerate(row)])
    return out


def _dropout(node, ins, P, fold):
    keep = 1 - sp.Rational(repr(node.option("p")))
    return [[fold(v * m / keep) for v, m in zip(rx, rm)] for rx, rm in zip(*ins)]


FAMILY = {"batchnorm": _batchnorm, "layernorm": _layernorm, "dropout": _dropout}


def _batch_values(graph, P, X, fold):
    """{node: [[entry per unit] per sample]} of every node for the whole batch."""
    B = len(next(iter(X.values())))
    vals = {k: rows for k, rows in X.items()}
    # the graph oracle's per-sample forward computes one node at a time: every other node is
    # taken from ``cache`` (the values so far; the later ones are not read)
    caches = [{k: rows[s] for k, rows in X.items()} for s in range(B)]
    for n in graph.nodes:
        if n.kind in ("input", "loss"):
            continue
        if n.kind in FAMILY:
            out = FAMILY[n.kind](n, [vals[i] for i in n.inputs], P, fold)
        else:
            out = []
            for s in range(B):
                cache = {m.name: caches[s].get(m.name) for m in graph.nodes}
                x = {k: rows[s] for k, rows in X.items()}
                out.append(_forward_sample(graph, P, x, fold, cache=cache, dirty={n.name})[n.name])
        vals[n.name] = out
        for s in range(B):
            caches[s][n.name] = out[s]
    return vals


def _loss(graph, P, X, Y, c, fold=_fold):
    vals = _batch_values(graph, P, X, fold)
    per_unit = graph.loss_node.loss.per_unit
    return c * sp.Add(*[per_unit.xreplace({naming.A: a, naming.Y: y})
                        for row, yrow in zip(vals[graph.output], Y) for a, y in zip(row, yrow)])


def norm_oracle_gradients(graph, params, inputs, target, exact=False, entries=None):
    """(loss, {param: grad}, {input marked grad: grad}) of the fully expanded loss of the whole
    batch (see the module docstring). Small graphs only (the graph oracle's bounds)."""
    where = "graph_oracle_gradients"
    p64, x64, t64 = arrays(where, graph, params, inputs, target)
    differentiated = {**p64, **{n.name: x64[n.name] for n in graph.grad_inputs}}
    B = t64.shape[0]
    _check_oracle_size(where, sum(v.size for v in differentiated.values()), B, "differentiated entries")
    wanted = _wanted_entries(where, entries, differentiated)
    P = {k: _nested(v, lambda idx, val: _rational(val)) for k, v in p64.items()}
    X = {k: _nested(v, lambda idx, val: _rational(val)) for k, v in x64.items()}
    Y = _nested(t64, lambda idx, val: _rational(val))
    c = _batch_factor(graph, B)
    loss = _value(_loss(graph, P, X, Y, c))
    grads = {}
    for k, arr in differentiated.items():
        out = np.full(arr.shape, None, dtype=object)
        holder = P if k in p64 else X
        for idx in wanted[k]:
            row = holder[k][idx[0]] if arr.ndim == 2 else holder[k]
            theta, saved = _symbol(k, idx), row[idx[-1]]
            row[idx[-1]] = theta
            try:
                L = _loss(graph, P, X, Y, c)
            finally:
                row[idx[-1]] = saved
            out[idx] = _evaluate(_kink_convention(sp.diff(L, theta)), theta, saved)
        grads[k] = out
    if not exact:
        loss = float(loss)
        grads = {k: np.where(v == None, np.nan, v).astype(np.float64) for k, v in grads.items()}  # noqa: E711
    return split(graph, loss, grads)

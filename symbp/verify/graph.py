"""Verification of graph kernels, three independent ways (as ``symbp.verify`` does for MLPs).

Contract:

- ``graph_gradcheck(kernel, params, inputs, target)``: a GraphKernel's gradients (parameters and
  the inputs marked grad) against central finite differences of its own loss in float64; returns
  ``symbp.verify.GradcheckReport`` with the same error definition, tolerances and noise floor
  as ``symbp.verify.gradcheck`` (a float32 kernel is differenced through a float64 twin).
- ``graph_oracle_gradients(graph, params, inputs, target)``: the whole scalar loss of the
  concrete graph on the concrete batch built as one SymPy expression from the forward
  definitions (``Graph`` nodes, ``symbp.functions``) and differentiated with ``sympy.diff``
  per entry; it does not import ``symbp.graph_derive``. Exact where the graph is rational.
- ``graph_torch_gradients(graph, params, inputs, target)``: PyTorch autograd in float64.

Each returns ``(loss, {param: grad}, {input marked grad: grad})`` (the report for gradcheck).
``inputs`` is a dict {input name: (B, width)} or one array when the graph has one input.
"""
import numpy as np
import sympy as sp

from .. import naming
from ..errors import InputError, SymbpError
from .chain import (ORACLE_MAX_BATCH, ORACLE_MAX_PARAMS, GradcheckReport, _fold,
                     _kink_convention, _rational, _symbol, _torch_activation, _torch_expr, _value,
                     check_entries, check_options, check_tol, noise_floor)  # noqa: F401 (check_tol: for graph_cli)


def _arrays(where, graph, params, inputs, target):
    """float64 copies of params, inputs (dict) and target after checking keys and shapes."""
    shapes = graph.param_shapes()
    names = [n.name for n in graph.inputs]
    if isinstance(inputs, np.ndarray) and len(names) == 1:
        inputs = {names[0]: inputs}
    if not isinstance(params, dict) or not isinstance(inputs, dict):
        raise InputError(f"{where}: expected params and inputs as dicts")
    # compared as sets and shown in the caller's order: keys of mixed types do not sort
    if set(params) != set(shapes) or set(inputs) != set(names):
        raise InputError(f"{where}: expected params {sorted(shapes)} and inputs {sorted(names)}, "
                         f"got {list(params)} and {list(inputs)}")
    p = {k: np.asarray(params[k], dtype=np.float64) for k in shapes}
    for k, s in shapes.items():
        if p[k].shape != tuple(s):
            raise InputError(f"{where}: params[{k!r}]: expected shape {tuple(s)}, got {p[k].shape}")
    x = {k: np.asarray(inputs[k], dtype=np.float64) for k in names}
    B = x[names[0]].shape[0] if x[names[0]].ndim == 2 else 0
    for k in names:
        if x[k].shape != (B, graph.node(k).width) or B < 1:
            raise InputError(f"{where}: inputs[{k!r}]: expected shape (B, {graph.node(k).width}), got {x[k].shape}")
    t = np.asarray(target, dtype=np.float64)
    if t.shape != (B, graph.node(graph.target).width):
        raise InputError(f"{where}: target: expected shape {(B, graph.node(graph.target).width)}, got {t.shape}")
    for k, v in list(p.items()) + list(x.items()) + [("target", t)]:
        if not np.all(np.isfinite(v)):
            raise InputError(f"{where}: {k}: expected finite values")
    return p, x, t


# ----------------------------------------------------------------------------------------------
# finite differences
# ----------------------------------------------------------------------------------------------

def _float64_twin(kernel):
    if np.dtype(kernel.dtype) == np.float64:
        return kernel
    from ..codegen.graph_emit import generate_graph
    return generate_graph(kernel.derivation, target=kernel.target, dtype="float64",
                          out_dir=kernel.path.parent.parent, jit=kernel.jit)


def graph_gradcheck(kernel, params, inputs, target, eps=1e-6, tol=None, max_entries=64, seed=0, directions=2):
    """Central finite differences against a GraphKernel's gradients (see ``symbp.verify.gradcheck``
    for the error, the floor and the sampling of entries); inputs marked grad are checked too."""
    dtype, tol = check_options("graph_gradcheck", kernel, eps, tol, max_entries)
    graph = kernel.graph
    loss, grads = kernel.loss_and_grad(params, inputs, target)
    analytic = {k: np.asarray(v, dtype=np.float64) for k, v in grads.items()}
    if graph.grad_inputs:
        for k, v in kernel.input_grads(params, inputs, target).items():
            analytic[k] = np.asarray(v, dtype=np.float64)
    ref = _float64_twin(kernel)
    p64, x64, t64 = _arrays("graph_gradcheck", graph, params, inputs, target)

    def L(p, x):
        return float(ref.loss_and_grad(p, x, t64)[0])

    floor = noise_floor(L(p64, x64), analytic, eps, dtype)
    rng = np.random.default_rng(seed)
    rows = []
    for name in list(p64) + [x.name for x in graph.grad_inputs]:
        is_input = name not in p64
        arr = x64[name] if is_input else p64[name]
        g = analytic[name]

        def at(delta):
            if is_input:
                return L(p64, {**x64, name: arr + delta})
            return L({**p64, name: arr + delta}, x64)

        rows.append(check_entries(name, arr, g, at, eps, floor, rng, max_entries, directions))
    return GradcheckReport(graph.name, dtype, float(eps), tol, floor, float(loss), tuple(rows))


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


def _sample_loss(graph, P, X, Y, s, fold=_fold, cache=None, dirty=None):
    """sum_i loss(out[s, i], y[s, i]) of sample s (before the batch factor)."""
    vals = _forward_sample(graph, P, {k: rows[s] for k, rows in X.items()}, fold, cache, dirty)
    per_unit = graph.loss_node.loss.per_unit
    return sp.Add(*[per_unit.xreplace({naming.A: a, naming.Y: y}) for a, y in zip(vals[graph.output], Y[s])])


def _batch_factor(graph, B):
    return sp.Rational(1, B) if graph.reduction == "mean" else sp.Integer(1)


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


def _nested(arr):
    if arr.ndim == 1:
        return [_rational(v) for v in arr]
    return [[_rational(v) for v in row] for row in arr]


def graph_oracle_gradients(graph, params, inputs, target, exact=False):
    """(loss, {param: grad}, {input marked grad: grad}) by differentiating the fully expanded
    loss L = c sum_s sum_i loss(out[s, i], y[s, i]), built from the nodes' forward definitions:
    for each entry theta, L with theta a symbol and all else exact Rationals (non-rational
    constants folded to 60 digits, as ``symbp.verify.oracle_gradients`` does; values that do not
    depend on theta are built once), then ``sympy.diff`` and evaluation at theta's value
    (Heaviside(0) = 0 at kinks). Terms that cannot depend on theta (other samples, for an input
    entry) have derivative 0 and are left out. Small graphs only."""
    p64, x64, t64 = _arrays("graph_oracle_gradients", graph, params, inputs, target)
    nparams = sum(v.size for v in p64.values()) + sum(x64[n.name].size for n in graph.grad_inputs)
    B = t64.shape[0]
    if nparams > ORACLE_MAX_PARAMS or B > ORACLE_MAX_BATCH:
        raise SymbpError(f"graph_oracle_gradients: the full-expansion oracle is for small sizes (at most "
                         f"{ORACLE_MAX_PARAMS} differentiated entries and batch {ORACLE_MAX_BATCH}); got "
                         f"{nparams} entries and batch {B}")
    P = {k: _nested(v) for k, v in p64.items()}
    X = {k: _nested(v) for k, v in x64.items()}
    Y = _nested(t64)
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
    for k, arr in p64.items():
        dirty = _downstream(graph, [p.name for p in graph.nodes if p.kind == "dense" and k in (p.weight, p.bias)])
        out = np.empty(arr.shape, dtype=object)
        for idx in np.ndindex(arr.shape):
            holder = P[k][idx[0]] if arr.ndim == 2 else P[k]
            out[idx] = derivative(holder, idx[-1], k, idx, range(B), dirty)
        grads[k] = out
    igrads = {}
    for n in graph.grad_inputs:
        arr = x64[n.name]
        dirty = _downstream(graph, [n.name])
        out = np.empty(arr.shape, dtype=object)
        for s, j in np.ndindex(arr.shape):
            out[s, j] = derivative(X[n.name][s], j, n.name, (s, j), [s], dirty)
        igrads[n.name] = out
    if exact:
        return loss, grads, igrads
    return (float(loss), {k: v.astype(np.float64) for k, v in grads.items()},
            {k: v.astype(np.float64) for k, v in igrads.items()})


# ----------------------------------------------------------------------------------------------
# PyTorch reference
# ----------------------------------------------------------------------------------------------

def graph_torch_gradients(graph, params, inputs, target):
    """(loss, {param: grad}, {input marked grad: grad}) by PyTorch autograd in float64: dense as
    in @ W^T + b (in @ W transposed), activations through ``symbp.verify``'s translations,
    expressions translated from their SymPy form; bce and ce from the logits as in
    ``symbp.verify.torch_gradients``. ImportError without torch."""
    import torch
    p64, x64, t64 = _arrays("graph_torch_gradients", graph, params, inputs, target)
    F = torch.nn.functional
    tp = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in p64.items()}
    grad_names = {n.name for n in graph.grad_inputs}
    vals = {k: torch.tensor(v, dtype=torch.float64, requires_grad=k in grad_names) for k, v in x64.items()}
    leaves = dict(vals)
    y = torch.tensor(t64, dtype=torch.float64)
    for n in graph.nodes:
        if n.kind in ("input", "loss"):
            continue
        ins = [vals[i] for i in n.inputs]
        if n.kind == "dense":
            W = tp[n.weight]
            out = ins[0] @ (W if n.transpose else W.T)
            if n.bias is not None:
                out = out + tp[n.bias]
        elif n.kind == "activation":
            out = _torch_activation(n.activation, ins[0], torch)
        elif n.kind == "add":
            out = ins[0]
            for v in ins[1:]:
                out = out + v
        elif n.kind == "multiply":
            out = ins[0]
            for v in ins[1:]:
                out = out * v
        elif n.kind == "concat":
            out = torch.cat(ins, dim=1)
        else:
            out = _torch_expr(n.expression, {n.symbol(i): v for i, v in zip(n.inputs, ins)}, torch)
        vals[n.name] = out
    lossn, outn = graph.loss_node, graph.node(graph.output)
    a = vals[outn.name]
    name = lossn.loss.name
    if name == "mse":
        per = 0.5 * (a - y) ** 2
    elif name == "sse":
        per = (a - y) ** 2
    elif name == "bce":     # validated: the loss reads a sigmoid activation node
        per = F.binary_cross_entropy_with_logits(vals[outn.inputs[0]], y, reduction="none")
    elif name == "ce":      # and a softmax node
        per = -y * torch.log_softmax(vals[outn.inputs[0]], dim=1)
    else:
        raise NotImplementedError(f"graph_torch_gradients: no torch translation of loss {name!r}")
    total = per.sum()
    loss = total / t64.shape[0] if lossn.reduction == "mean" else total
    loss.backward()
    grads = {k: t.grad.detach().numpy().copy() for k, t in tp.items()}
    igrads = {k: leaves[k].grad.detach().numpy().copy() for k in sorted(grad_names, key=list(x64).index)}
    return float(loss.detach()), grads, igrads

"""Emit, write and load the CPU kernel of a GraphDerivation (a DAG), through templates/cpu/graph.py.j2.

Contract: ``emit_graph(derivation, target, dtype) -> str`` is deterministic (same graph, same
bytes) and prints every statement from the derivation's equations (the template holds no math).
Per dense node the emitter makes the MLP emitter's measured choice (``emit.layer_strategy``: at
most LOOPS_MAX weights -> "loops", else "blas"): a loops node prints its contractions (out = W
in + b, g_in = W^T g_out) as fused per-sample loops, and accumulates dL/dW sample by sample in the
pass that computes its g_out; a BLAS node uses ``np.dot`` into preallocated buffers (out = in
W^T, g_in = g_out W, dL/dW = g_out^T in). For every dense node with a bias, dL/db is accumulated
row by row in the pass that computes g_out. Everything elementwise (bias add, activations, add,
multiply, concat slices, expression nodes, backprop through them, branch sums, softmax's row
sums) is printed per row; consecutive row passes share one loop over the samples, and
consecutive elementwise rows of one width share one loop over j (the bias add and its
activation are one pass). Big transcendental activations (batch x width >= VECTOR_MIN) are
computed by NumPy's ufuncs in objmode. The loss is computed per sample from
``derivation.loss_sample`` (from the logits for cross-entropies), row reductions of exp(...)
shifted by the row maximum as in ``codegen.emit``. Emission is dispatched by tables keyed by node
kind (``_FORWARD``) and by parameter-gradient kind (``_PARAM_BACKWARD``).

This is the one CPU code generator: an MLP's module is the module of its chain graph
(``emit_mlp``: the derivation of ``network.graph`` that ``derive`` kept on the MLP Derivation
as ``graph_derivation``), headed by the MLP's spec digest. Every module has the packed entry points
(``loss_and_grad_packed``, ``*_split``, ``train_step_<optimizer>``) that one kernel class
(``kernel.BaseKernel``) calls; ``loss_and_grad`` leaves the gradients of the inputs marked grad
unwritten (a training step does not need them) and ``loss_and_input_grad`` computes them after
it. A module whose every pass is per-sample rows (every dense node fused loops, no shared
parameter) also holds the parallel variant ``loss_and_grad_parallel`` (and its packed form):
numba.prange over chunks of ``emit.CHUNK_ROWS`` rows with partial gradients added in chunk
order (see ``emit.PARALLEL_MIN``).

``generate_graph(derivation, target, dtype, out_dir, jit)`` writes
``<out_dir>/<graph>/graph_<target>_<dtype>.py`` atomically (``load.write``), only after the
whole source was rendered, imports it (``load.import_module``; ``jit=False`` runs it as plain
Python) and returns a ``GraphKernel``.
"""
import numpy as np
import sympy as sp

from .. import naming
from .._version import __version__
from ..derivation.simplify import sigmoid_forms
from ..derivation.equations import ColumnSum, Product, batch_form
from ..errors import SymbpError
from . import norm_emit
from .emit import (BF, BLAS_THREADS_MIN, CHUNK_ROWS, LOOPS_MAX, PARALLEL_MIN, VECTOR_MIN, _Block,
                   layer_strategy, optimizer_steps, text)
from .printer import (ArrayPrinter, NumbaPrinter, _sigmoid, helper_source, helpers_used, is_transcendental,
                      stable_forms)
from ..output import environment
from . import conv_emit

TARGETS = ("cpu",)
DTYPES = ("float64", "float32")


def identifiers(derivation):
    """label -> identifier in generated code: v_<node>, p_<param>; gradients keep their g_ label
    (user names cannot contain __ and g_<name> is reserved, so these never collide)."""
    out = {}
    for label, q in derivation.quantities.items():
        if q.role in ("value", "target"):
            out[label] = f"v_{label}"
        elif q.role == "param":
            out[label] = f"p_{label}"
        else:
            out[label] = label
    return out


class GraphPrinter(NumbaPrinter):
    """NumbaPrinter whose indexed quantities print as the graph's identifiers."""

    def __init__(self, dtype, idents, names=None):
        super().__init__(dtype, names)
        self.idents = idents

    def _print_Indexed(self, e):
        # indices are integer expressions (j + 4 for a concat slice): print them as integers
        idx = ", ".join(sp.sstr(i) for i in e.indices)
        return f"{self.idents[str(e.base.label)]}[{idx}]"

    def _print_Pow(self, e, rational=False):
        # x**2 -> (x*x): NumbaPrinter's bare x*x is wrong in a denominator (y/x*x is y)
        text = super()._print_Pow(e, rational)
        if e.exp.is_Integer and 2 <= int(e.exp) <= 4:
            return f"({text})"
        return text


def kernel_path(graph, target, dtype, out_dir=None):
    from .load import default_out_dir
    from pathlib import Path
    base = Path(out_dir) if out_dir is not None else default_out_dir()
    return base / graph.name / f"graph_{target}_{dtype}.py"


def _label(base):
    return str(base.label)


# ----------------------------------------------------------------------------------------------
# items and passes
#
# The emitter first lists what the kernel computes, in the derivation's order, as items:
# - "stmt": statements outside any loop over the samples (np.dot, a shared parameter's sum);
# - "rows": assignments OUT[s, j] = expr over the j < width entries of one row, plus statements
#   fused into the same loop over j (``then``: gradient accumulations) and statements to run
#   once before the loop over the samples that holds them (``pre``: zeroing an accumulator);
# - "raw": per-sample lines printed as they are (concat's slices).
# ``_layout`` then prints consecutive row items in one loop over the samples (one pass), and
# consecutive row items of the same width in one loop over j when the later ones are elementwise
# (no sum) and read what the loop already wrote only at [s, j]: the bias add and its activation,
# an activation's backward and the gradient that feeds it, are one pass over each row.
# ----------------------------------------------------------------------------------------------

def _rows(width, assign, fuse, writes=(), vector=None):
    return {"kind": "rows", "width": width, "assign": list(assign), "fuse": fuse, "then": [], "pre": [],
            "writes": set(writes), "vector": vector}


def _stmt(lines):
    return {"kind": "stmt", "lines": list(lines)}


def _raw(lines, writes=()):
    return {"kind": "raw", "lines": list(lines), "pre": [], "writes": set(writes), "vector": None}


def _reads_only_here(assign, written):
    """True if every quantity of ``written`` that ``assign`` reads is read at [s, j]."""
    here = (naming.S, naming.J)
    for _, rhs, _ in assign:
        for e in rhs.atoms(sp.Indexed):
            if _label(e.base) in written and tuple(e.indices) != here:
                return False
    return True


def _pass_body(items, p, sizes):
    """Lines of one loop over the samples (the body of ``for s in range(B):``)."""
    groups = []
    for it in items:
        last = groups[-1] if groups else None
        if it["kind"] == "raw":
            groups.append(it)
        elif (last is not None and last["kind"] == "rows" and it["fuse"] and last["width"] == it["width"]
              and _reads_only_here(it["assign"], last["writes"])):
            last["assign"] += it["assign"]
            last["then"] += it["then"]
            last["writes"] |= it["writes"]
        else:
            groups.append({"kind": "rows", "width": it["width"], "assign": list(it["assign"]),
                           "then": list(it["then"]), "writes": set(it["writes"])})
    lines = []
    for g in groups:
        if g["kind"] == "raw":
            lines += g["lines"]
        else:
            lines += _Block(p, sizes).rows(g["assign"], "j", g["width"], then=g["then"])
    return lines


def _indent(lines, n):
    return [" " * n + ln for ln in lines]


def _layout(items, p, sizes):
    """The function body (at indentation 0) of a list of items; see the comment above. A row
    item with ``vector`` (a big transcendental activation) ends its pass, which is printed twice:
    fused, for B x width < VECTOR_MIN entries, and else without that item, which is computed by
    the vector function (NumPy's ufuncs in objmode) after the pass."""
    passes, cur = [], None
    for it in items:
        if it["kind"] == "stmt":
            if cur:
                passes.append(cur)
                cur = None
            passes.append(it)
            continue
        cur = cur or []
        cur.append(it)
        if it["vector"] is not None:
            passes.append(cur)
            cur = None
    if cur:
        passes.append(cur)
    out = []
    for ps in passes:
        if isinstance(ps, dict):
            out += ps["lines"]
            continue
        out += [ln for it in ps for ln in it["pre"]]
        v = ps[-1]["vector"]
        if v is None:
            out += ["for s in range(B):"] + _indent(_pass_body(ps, p, sizes), 4)
            continue
        out += [f"if B * {v['width']} < VECTOR_MIN:", "    for s in range(B):"]
        out += _indent(_pass_body(ps, p, sizes), 8)
        out.append("else:")
        if len(ps) > 1:
            out += ["    for s in range(B):"] + _indent(_pass_body(ps[:-1], p, sizes), 8)
        out.append(f"    {v['fn']}({v['args']})   # {v['comment']}")
    return out


class GraphArrayPrinter(ArrayPrinter):
    """ArrayPrinter whose indexed quantities print as the graph's whole arrays."""

    def __init__(self, idents):
        super().__init__()
        self.idents = idents

    def _print_Indexed(self, e):
        return self.idents[_label(e.base)]


def strategies(graph):
    """{dense node: "loops" | "blas"}: the MLP emitter's measured choice per layer
    (``emit.layer_strategy``, LOOPS_MAX weights), applied to each dense node's weights."""
    return {n.name: layer_strategy(graph.node(n.inputs[0]).width, n.width)
            for n in graph.nodes if n.kind == "dense"}


def _why(strategy, n_in, n_out):
    if strategy == "loops":
        return (f"loops: {n_out}x{n_in} = {n_in * n_out} weights <= LOOPS_MAX {LOOPS_MAX}, fused per-sample "
                f"loops beat a BLAS call at this size")
    return (f"blas: {n_out}x{n_in} = {n_in * n_out} weights > LOOPS_MAX {LOOPS_MAX}, np.dot into the "
            f"preallocated buffer (BLAS gemm) beats scalar loops at this size")



class _Emission:
    """What the per-kind emitters share while one graph is emitted: the printer, identifiers,
    the loops/BLAS choice per dense node, and what they record (expressions printed, for the
    helpers; whether SciPy is used; the FLOPs of the BLAS products per sample)."""

    def __init__(self, derivation, printer, ids, strategy, sizes):
        self.d, self.g, self.p, self.ids = derivation, derivation.graph, printer, ids
        self.strategy, self.sizes = strategy, sizes
        self.printed, self.uses_scipy, self.blas_flops = [], False, 0

    def ident(self, base):
        return self.ids[_label(base)]

    def dot(self, eq, out):
        """(Product, "np.dot(left, right, out)") of a contraction ``batch_form`` recognises, or (None, None)."""
        f = batch_form(eq.lhs, eq.rhs)
        if not isinstance(f, Product):
            return None, None
        left = self.ident(f.left) + (".T" if f.left_t else "")
        right = self.ident(f.right) + (".T" if f.right_t else "")
        return f, f"np.dot({left}, {right}, {out})"

    def row_item(self, eq, comment, width, vector=None):
        """The row item of ``eq`` (per sample, over j < width), printed in its stable form."""
        rhs = sigmoid_forms(stable_forms(eq.rhs))
        self.printed.append(rhs)
        return _rows(width, [(eq.lhs, rhs, comment)], fuse=not rhs.has(sp.Sum), writes=[_label(eq.lhs.base)],
                     vector=vector)


# Forward emission per node kind (a contraction, slices, an elementwise map): each returns the
# node's items. Keyed by node kind, so that the op registry's ``realize`` can key it.

def _dense_forward(c, n, eq):
    """out = W in + b: fused per-sample loops (the sum printed inside the loop over j, with the
    bias) for a loops node; np.dot into the node's buffer, then the bias row by row, for BLAS."""
    n_in = c.g.node(n.inputs[0]).width
    comment = text(eq.lhs, eq.rhs) + ("   [W transposed]" if n.transpose else "")
    why = f"# {n.name} ({_why(c.strategy[n.name], n_in, n.width)})"
    if c.strategy[n.name] == "loops":
        return [_raw([why]), c.row_item(eq, comment, n.width)]
    f, line = c.dot(eq, c.ids[n.name])
    c.blas_flops += 2 * n_in * n.width
    items = [_stmt([why, f"# {comment}", line])]
    if f.bias is not None:
        # the bias add is elementwise: the following activation joins its loop over j
        items.append(_rows(n.width, [(eq.lhs, eq.lhs + f.bias[naming.J], f"{n.name} += {_label(f.bias)}   [bias]")],
                           fuse=True, writes=[n.name]))
    return items


def _concat_forward(c, n, eq):
    """out = [in_0, in_1, ...]: each input copied into its slice of the row."""
    out = c.ids[n.name]
    lines, offset = [f"# {n.name} = [{', '.join(n.inputs)}]   (concat: each input's slice)"], 0
    for src in n.inputs:
        w = c.g.node(src).width
        at = f"j + {offset}" if offset else "j"
        lines += [f"for j in range({w}):", f"    {out}[s, {at}] = {c.ids[src]}[s, j]"]
        offset += w
    return [_raw(lines, writes=[n.name])]


def _elementwise_forward(c, n, eq):
    """out[s, j] = f(in[s, j], ...) row by row; an activation whose printed form calls a
    transcendental function also gets a vector function (NumPy's SIMD ufuncs in objmode), which
    the kernel runs instead of the scalar loop from VECTOR_MIN entries (batch x width) on."""
    what = n.activation.name if n.kind == "activation" else n.kind
    comment = f"{text(eq.lhs, eq.rhs)}   [{what}]"
    rhs = sigmoid_forms(stable_forms(eq.rhs))
    vector = None
    if n.kind in _VECTOR_KINDS and not rhs.has(sp.Sum) and is_transcendental(rhs):
        out = c.ids[n.name]
        stmt = f"{out}[...] = {GraphArrayPrinter(c.ids).doprint(rhs)}".replace("numpy.", "np.")
        c.uses_scipy = c.uses_scipy or "scipy." in stmt
        args = [c.ids[lab] for lab in sorted({_label(e.base) for e in rhs.atoms(sp.Indexed)})] + [out]
        vector = {"fn": f"_vector_{n.name}", "args": ", ".join(args), "stmt": stmt,
                  "comment": text(eq.lhs, eq.rhs), "width": n.width}
    return [c.row_item(eq, comment, n.width, vector)]


_FORWARD = {"dense": _dense_forward, "concat": _concat_forward, "activation": _elementwise_forward,
            "add": _elementwise_forward, "multiply": _elementwise_forward, "expression": _elementwise_forward}
# op families of their own modules, keyed by the op registry's ``realize``
_FORWARD_REALIZE = {"normalization": norm_emit.forward, "mask": _elementwise_forward}
# node kinds whose big transcendental maps go to NumPy's ufuncs (as emit.py does for activations)
_VECTOR_KINDS = ("activation",)



# Backward emission. A per-sample gradient (g_v[s, j]) is a BLAS product when it comes through a
# BLAS dense node, else a row item; parameter gradients are keyed by equation kind.

def _accumulate(c, node, lines, pre):
    """Fuse ``lines`` (a parameter gradient's per-sample term, over the entries j of g_<node>)
    into the pass that computes g_<node>, or into a pass of their own when BLAS computed it;
    ``pre`` (zeroing the accumulator) runs before that pass."""
    item = c.writer.get(f"g_{node}")
    if item is None:
        item = _rows(c.g.node(node).width, [], fuse=True)
        c.bwd.append(item)
        c.writer[f"g_{node}"] = item
    item["then"] += lines
    item["pre"] += pre


def _per_sample_backward(c, eq, comment):
    if eq.source and c.g.node(eq.source).op.realize == "normalization":     # batch- or unit-coupled (norm_emit)
        return norm_emit.backward(c, eq, comment)
    label = eq.name
    w = c.g.node(eq.node).width
    c.bwd_buffers[label] = w
    if c.strategy.get(eq.source) == "blas":      # g_in = g_out W through a BLAS dense node
        src = c.g.node(eq.source)
        f, line = c.dot(eq, c.ids[label])
        assert f is not None, eq
        c.bwd.append(_stmt([f"# {comment}   (blas)", line]))
        c.blas_flops += 2 * c.g.node(src.inputs[0]).width * src.width
        return
    item = c.row_item(eq, comment, w)
    c.bwd.append(item)
    c.writer[label] = item


def _grad_w(c, eq, comment, shape):
    """dL/dW = sum_s g_out in^T: one np.dot for a BLAS node; for a loops node, each sample's
    term accumulated in the pass that computes g_out, over the entries j of its row."""
    label, node = eq.name, c.g.node(eq.source)
    n_in = c.g.node(node.inputs[0]).width
    if c.strategy[node.name] == "blas":
        f, line = c.dot(eq, c.ids[label])
        c.bwd.append(_stmt([f"# {comment}   (blas)", line]))
        c.blas_flops += 2 * n_in * node.width
        return
    P, Q, J = naming.P, naming.Q, naming.J
    (_, _, _), = eq.rhs.limits          # the sum over the samples s
    term = eq.rhs.function
    gidx, = {ix for e in term.atoms(sp.Indexed) if _label(e.base) == f"g_{node.name}"
             for ix in e.indices if ix in (P, Q)}
    other = Q if gidx == P else P       # W[j, q] (or W[p, j] when transposed)
    n_other = shape[list(eq.lhs.indices).index(other)]
    p = c.p
    _accumulate(c, node.name, [f"for {other} in range({n_other}):   # {comment}",
                               f"    {p.doprint(eq.lhs.xreplace({gidx: J}))} += {p.doprint(term.xreplace({gidx: J}))}"],
                [f"{c.ids[label]}[:, :] = {p.doprint(sp.Integer(0))}"])


def _grad_b(c, eq, comment, shape):
    """dL/db = sum_s g_out[s, :], accumulated row by row (contiguous) in the pass that computes
    g_out, instead of a strided pass over the columns afterwards."""
    form = batch_form(eq.lhs, eq.rhs)
    assert isinstance(form, ColumnSum) and _label(form.arg) == f"g_{eq.source}", eq
    _accumulate(c, eq.source, [f"{c.ids[eq.name]}[j] += {c.ident(form.arg)}[s, j]   # {comment}"],
                [f"{c.ids[eq.name]}[:] = {c.p.doprint(sp.Integer(0))}"])


def _param_elementwise(c, eq, comment, shape):
    """A parameter gradient elementwise over its entries (shared_sum: the uses add up)."""
    idx = [str(i) for i in eq.lhs.indices]
    lines = [f"# {comment}"]
    for depth, (i, n) in enumerate(zip(idx, shape)):
        lines.append("    " * depth + f"for {i} in range({n}):")
    lines.append("    " * len(shape) + f"{c.p.doprint(eq.lhs)} = {c.p.doprint(eq.rhs)}")
    c.bwd.append(_stmt(lines))


_PARAM_BACKWARD = {"grad_W": _grad_w, "grad_b": _grad_b, "shared_sum": _param_elementwise,
                   "grad_gamma": norm_emit.param_grad, "grad_beta": norm_emit.param_grad}


def _parallel(c, fwd, bwd, loss_lines, grads, shapes, sizes):
    """The parallel variant's pieces (see ``emit.PARALLEL_MIN``), or None: only a graph whose
    every pass is per-sample rows (every dense node fused loops, no shared parameter) splits
    over the batch. The body does forward, loss and backward of one sample s (the input
    gradients excluded, as in loss_and_grad), each parameter gradient accumulated into chunk
    c's partial P<g>[c, ...] instead of <g>; the accumulators' zeroing is left out (the partials
    start at zero). PARALLEL_COST: per-sample multiply-adds and elementwise entries."""
    if any(it["kind"] == "stmt" for it in fwd + bwd) or c.use_buffers:
        return None
    body = _pass_body(fwd, c.p, sizes) + [ln.replace("loss += ", "lossc += ", 1) for ln in loss_lines]
    body += _pass_body(bwd, c.p, sizes)

    def partial(line):
        for g in grads:
            if line.lstrip().startswith(f"{g}["):
                return line.replace(f"{g}[", f"P{g}[c, ", 1)
        return line

    cost = 0
    for n in c.g.nodes:
        if n.kind == "dense":
            cost += 3 * c.g.node(n.inputs[0]).width * n.width
        elif n.kind not in ("input", "loss"):
            cost += 2 * n.width
    return {"body": [partial(ln) for ln in body], "cost": cost, "chunk_rows": CHUNK_ROWS,
            "min": PARALLEL_MIN, "partials": [(f"P{g}", g, shape, int(np.prod(shape))) for g, shape in zip(grads, shapes)],
            "args": ", ".join(f"P{g}" for g in grads)}


def emit_graph(derivation, target="cpu", dtype="float64", *, network=None):
    """Source text of the kernel module of a GraphDerivation. ``network``: the MLP whose chain
    graph this is (``emit_mlp``): its spec digest, description and CLI command head the module."""
    if target not in TARGETS:
        raise SymbpError(f"target: expected one of {', '.join(TARGETS)} for a graph, got {target!r}")
    if dtype not in DTYPES:
        raise SymbpError(f"dtype: expected one of {', '.join(DTYPES)}, got {dtype!r}")
    d, g = derivation, derivation.graph
    ids = identifiers(d)
    sizes = dict(d.sizes)
    sizes[naming.BATCH] = BF
    p = GraphPrinter(dtype, ids, {BF: "Bf"})
    S = naming.S
    zero = p.doprint(sp.Integer(0))
    strategy = strategies(g)

    c = _Emission(d, p, ids, strategy, sizes)
    fwd = []
    for n in g.nodes:
        if n.kind in ("input", "loss"):
            continue
        if n.op.realize in conv_emit.FORWARD:
            # tensor ops (conv2d, pooling, flatten): direct loops, keyed by the op's realize
            fwd += conv_emit.FORWARD[n.op.realize](c, n, d[n.name])
            continue
        emit = _FORWARD.get(n.kind) or _FORWARD_REALIZE.get(n.op.realize)
        if emit is None:
            raise SymbpError(f"{g.name}: node {n.name}: no CPU emission for node kind {n.kind!r}")
        fwd += emit(c, n, d[n.name])
    printed = c.printed

    # loss ---------------------------------------------------------------------------------
    loss_expr, loss_reads = d.loss_sample
    blk = _Block(p, sizes)
    lexpr, lred, _ = blk.reductions(stable_forms(loss_expr.xreplace(sizes)))
    loss_lines = lred + [f"loss += {p.doprint(lexpr)}"]
    printed.append(stable_forms(loss_expr))

    # backward -----------------------------------------------------------------------------
    c.bwd, c.bwd_buffers, c.use_buffers, c.writer, c.igrad = [], {}, {}, {}, []
    input_names = {n.name for n in g.inputs}
    grads = set(d.param_grads.values())
    shapes = {}
    for prm in g.params:
        shapes[f"g_{prm.name}"] = prm.shape
        for node, _ in prm.uses:
            shapes[f"g_{prm.name}__{node}"] = prm.shape
    started = False
    for eq in d.equations:
        if eq.kind == "loss":
            started = True
            continue
        if not started or eq.name in d.inlined:
            continue
        label = eq.name
        tag = f"[{eq.kind}{' from ' + eq.source if eq.source else ''}]"
        if eq.terms:
            comment = f"{label} = {' + '.join(eq.terms)}   [{eq.kind}: {eq.doc}]"
        else:
            comment = f"{text(eq.lhs, eq.rhs)}   {tag}"
        if conv_emit.is_tensor_source(g, eq):
            # a gradient through a tensor op: direct loops (an input's only in loss_and_input_grad)
            if S not in eq.lhs.indices and label not in grads:
                c.use_buffers[label] = shapes[label]
            swap = S in eq.lhs.indices and eq.node in input_names
            if swap:
                c.bwd, c.igrad = c.igrad, c.bwd
            conv_emit.backward(c, eq, comment)
            if swap:
                c.bwd, c.igrad = c.igrad, c.bwd
            continue
        if S in eq.lhs.indices:
            if eq.node in input_names:
                # dL/d(input) only in loss_and_input_grad: a training step does not pay for it
                c.bwd, c.igrad = c.igrad, c.bwd
                _per_sample_backward(c, eq, comment)
                c.bwd, c.igrad = c.igrad, c.bwd
            else:
                _per_sample_backward(c, eq, comment)
            continue
        if label not in grads:
            c.use_buffers[label] = shapes[label]
        _PARAM_BACKWARD.get(eq.kind, _param_elementwise)(c, eq, comment, shapes[label])
    bwd, bwd_buffers, use_buffers = c.bwd, c.bwd_buffers, c.use_buffers

    params = [prm.name for prm in g.params]
    grad_labels = [d.param_grads[k] for k in params]
    inputs = {n.name: n.width for n in g.inputs}
    tnode = g.node(g.target)
    fwd_buffers = {n.name: n.width for n in g.nodes if n.kind not in ("input", "loss")}
    data_args = [ids[k] for k in inputs] + [ids[tnode.name]]
    fwd_args = [ids[k] for k in inputs] + [f"p_{k}" for k in params] + [ids[k] for k in fwd_buffers]
    all_args = (data_args + [f"p_{k}" for k in params]
                + [ids[k] for k in fwd_buffers] + [ids[k] for k in bwd_buffers]
                + [ids[k] for k in use_buffers] + [ids[k] for k in grad_labels])
    # packed entry points: parameters (gradients) back to back in PARAMS order in theta
    # (gtheta); node values, node gradients (B rows each) and then the per-use parameter
    # gradients back to back in work
    pshapes = g.param_shapes()
    theta_views, grad_views, off = [], [], 0
    for k, gl in zip(params, grad_labels):
        shape = tuple(pshapes[k])
        size = int(np.prod(shape))
        view = f"[{off}:{off + size}]" + (f".reshape({shape})" if len(shape) >= 2 else "")
        theta_views.append(f"p_{k} = theta{view}")
        grad_views.append(f"{ids[gl]} = gtheta{view}")
        off += size
    work_views, off = [], 0
    for name, w in list(fwd_buffers.items()) + list(bwd_buffers.items()):
        work_views.append(f"{ids[name]} = work[B * {off}:B * {off + w}].reshape((B, {w}))")
        off += w
    work_width, use_off = off, 0
    for label, shape in use_buffers.items():
        size = int(np.prod(shape))
        view = f"work[B * {work_width} + {use_off}:B * {work_width} + {use_off + size}]"
        work_views.append(f"{ids[label]} = {view}" + (f".reshape({tuple(shape)})" if len(shape) >= 2 else ""))
        use_off += size
    # the normalization family's inference forward and running statistics (codegen.norm_emit)
    norm = norm_emit.modes(c, lambda n: _FORWARD.get(n.kind) or _FORWARD_REALIZE.get(n.op.realize), _layout,
                           sizes, [ids[k] for k in inputs], [f"p_{k}" for k in params])
    used = helpers_used(printed)
    parallel = _parallel(c, fwd, bwd, loss_lines, [ids[gl] for gl in grad_labels],
                         [tuple(pshapes[k]) for k in params], sizes)
    equations = []
    for e in d.equations:
        if e.kind == "forward_concat":
            equations.append(f"{e.name} = [{', '.join(g.node(e.node).inputs)}]   [concat]")
        elif e.kind == "loss":
            equations.append(f"L = {e.rhs}")
        elif e.kind in ("branch_sum", "shared_sum"):
            equations.append(f"{e.name} = {' + '.join(e.terms)}   [{e.kind}]")
        else:
            extra = ", inlined into the next step" if e.name in d.inlined else ""
            equations.append(f"{text(e.lhs, e.rhs)}   [{e.kind}{extra}]")
    ctx = {
        "version": __version__, "digest": (network or g).digest, "name": g.name, "target": target, "dtype": dtype,
        "description": str(network or g), "equations": equations,
        "kind": "kernel" if network is not None else "graph kernel",
        "spec": "spec" if network is not None else "graph spec",
        "command": "symbp generate" if network is not None else "symbp graph generate",
        "inputs": inputs, "target_spec": repr((tnode.name, tnode.width)), "output": g.output,
        "output_ident": ids[g.output], "params": params, "param_shapes": pshapes,
        "fwd_buffers": list(fwd_buffers), "bwd_buffers": list(bwd_buffers),
        "buffer_widths": {**fwd_buffers, **bwd_buffers}, "use_buffers": use_buffers,
        "work_width": work_width, "use_size": use_off,
        "grads": grad_labels, "input_grads": dict(d.input_grads),
        "helpers": [helper_source(h, p) for h in used],
        "vectors": [it["vector"] for it in fwd if it.get("vector")], "uses_scipy": c.uses_scipy,
        "vector_min": VECTOR_MIN, "strategies": strategy, "loops_max": LOOPS_MAX,
        "blas_flops": c.blas_flops, "blas_threads_min": f"{BLAS_THREADS_MIN:g}",
        "data_args": ", ".join(data_args),
        "split_args": ", ".join(data_args + [f"p_{k}" for k in params] + ["gtheta", "work"]),
        "fwd_split_args": ", ".join([ids[k] for k in inputs] + [f"p_{k}" for k in params] + ["work"]),
        "fwd_args": ", ".join(fwd_args), "all_args": ", ".join(all_args),
        "theta_views": theta_views, "grad_views": grad_views, "work_views": work_views,
        "fwd_views": work_views[:len(fwd_buffers)],
        "batch_from": ids[next(iter(inputs))],
        "forward": _layout(fwd, p, sizes), "backward": _layout(bwd, p, sizes),
        "input_backward": _layout(c.igrad, p, sizes), "parallel": parallel,
        "loss": g.loss_node.loss.name, "reduction": g.reduction, "loss_lines": loss_lines,
        "loss_scale": p.doprint(d.batch_factor.xreplace(sizes)), "loss_reads": loss_reads,
        "zero": zero, "optimizers": optimizer_steps(dtype),
        "updates": [(f"p_{k}", ids[gl]) for k, gl in zip(params, grad_labels)],
        "norm": norm,
    }
    return environment().get_template(f"{target}/graph.py.j2").render(**ctx)


def emit_mlp(derivation, target="cpu", dtype="float64"):
    """Source text of the CPU kernel module of an MLP Derivation: the graph generator's module
    of its chain graph, headed by the MLP's spec digest and description."""
    return emit_graph(derivation.graph_derivation, target, dtype, network=derivation.network)


def generate_graph(derivation, target="cpu", dtype="float64", out_dir=None, jit=True):
    """Emit the kernel of a GraphDerivation, write it atomically, import it; a GraphKernel."""
    from .kernel import GraphKernel
    from .load import import_module, write
    g = derivation.graph
    source = emit_graph(derivation, target, dtype)
    path = kernel_path(g, target, dtype, out_dir)
    write(path, source)
    module = import_module(path, naming.import_name(g.name, f"graph_{target}", dtype, g.digest), jit=jit,
                           digest=g.digest)
    return GraphKernel(derivation, module, path, target, dtype, jit)

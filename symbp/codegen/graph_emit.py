"""Emit, write and load the CPU kernel of a GraphDerivation (a DAG), through templates/cpu/graph.py.j2.

Contract: ``emit_graph(derivation, target, dtype) -> str`` is deterministic (same graph, same
bytes) and prints every statement from the derivation's equations (the template holds no math).
Dense contractions that ``batch_form`` recognises (out = in W^T, g_in = g_out W, dL/dW =
g_out^T in) are BLAS ``np.dot`` calls into preallocated buffers; everything elementwise (bias,
activations, add, multiply, concat slices, expression layers, backprop through them, branch
sums, softmax's row sums) is printed per row, and consecutive row passes share one loop over the
samples. The loss is computed per sample from ``derivation.loss_sample`` (from the logits for
cross-entropies), row reductions of exp(...) shifted by the row maximum as in ``codegen.emit``.

``generate_graph(derivation, target, dtype, out_dir, jit)`` writes
``<out_dir>/<graph>/graph_<target>_<dtype>.py`` atomically (``load.write``), only after the
whole source was rendered, imports it (``load.import_module``; ``jit=False`` runs it as plain
Python) and returns a ``GraphKernel``.
"""
import sympy as sp

from .. import naming
from .._version import __version__
from ..derivation.simplify import sigmoid_forms
from ..derivation.equations import ColumnSum, Product, batch_form
from ..errors import SymbpError
from .emit import BF, _Block, text
from .printer import NumbaPrinter, helper_source, helpers_used, stable_forms
from ..output import environment

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


def _item(rows, lines):
    return {"rows": rows, "lines": list(lines)}


def _merge(items):
    """Consecutive per-row items share one loop over the samples."""
    out = []
    for it in items:
        if out and it["rows"] and out[-1]["rows"]:
            out[-1]["lines"] += it["lines"]
        else:
            out.append(_item(it["rows"], it["lines"]))
    return out


def _label(base):
    return str(base.label)


def emit_graph(derivation, target="cpu", dtype="float64"):
    """Source text of the kernel module of a GraphDerivation."""
    if target not in TARGETS:
        raise SymbpError(f"target: expected one of {', '.join(TARGETS)} for a graph, got {target!r}")
    if dtype not in DTYPES:
        raise SymbpError(f"dtype: expected one of {', '.join(DTYPES)}, got {dtype!r}")
    d, g = derivation, derivation.graph
    ids = identifiers(d)
    sizes = dict(d.sizes)
    sizes[naming.BATCH] = BF
    p = GraphPrinter(dtype, ids, {BF: "Bf"})
    S, J = naming.S, naming.J

    def ident(base):
        return ids[_label(base)]

    def dot(eq, out):
        f = batch_form(eq.lhs, eq.rhs)
        if not isinstance(f, Product):
            return None, None
        left = ident(f.left) + (".T" if f.left_t else "")
        right = ident(f.right) + (".T" if f.right_t else "")
        return f, f"np.dot({left}, {right}, {out})"

    printed = []     # every expression the kernel evaluates (for the helpers it needs)

    def rows(eq, comment, width):
        rhs = sigmoid_forms(stable_forms(eq.rhs))
        printed.append(rhs)
        return _Block(p, sizes).rows([(eq.lhs, rhs, comment)], "j", width)

    # forward ------------------------------------------------------------------------------
    fwd = []
    for n in g.nodes:
        if n.kind in ("input", "loss"):
            continue
        eq = d[n.name]
        out = ids[n.name]
        if n.kind == "dense":
            f, line = dot(eq, out)
            comment = text(eq.lhs, eq.rhs)
            fwd.append(_item(False, [f"# {n.name}: {comment}" + ("   [W transposed]" if n.transpose else ""), line]))
            if f.bias is not None:
                lhs = eq.lhs
                fwd.append(_item(True, _Block(p, sizes).rows([(lhs, lhs + f.bias[J], comment)], "j", n.width)))
        elif n.kind == "concat":
            lines, offset = [f"# {n.name} = [{', '.join(n.inputs)}]   (concat: each input's slice)"], 0
            for src in n.inputs:
                w = g.node(src).width
                at = f"j + {offset}" if offset else "j"
                lines += [f"for j in range({w}):", f"    {out}[s, {at}] = {ids[src]}[s, j]"]
                offset += w
            fwd.append(_item(True, lines))
        else:
            what = n.activation.name if n.kind == "activation" else n.kind
            fwd.append(_item(True, rows(eq, f"{text(eq.lhs, eq.rhs)}   [{what}]", n.width)))

    # loss ---------------------------------------------------------------------------------
    loss_expr, loss_reads = d.loss_sample
    blk = _Block(p, sizes)
    lexpr, lred, _ = blk.reductions(stable_forms(loss_expr.xreplace(sizes)))
    loss_lines = lred + [f"loss += {p.doprint(lexpr)}"]
    printed.append(stable_forms(loss_expr))

    # backward -----------------------------------------------------------------------------
    bwd, bwd_buffers, use_buffers = [], {}, {}
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
        if eq.kind in ("branch_sum", "shared_sum"):
            comment = f"{label} = {' + '.join(eq.terms)}   [{eq.kind}: {eq.doc}]"
        else:
            comment = f"{text(eq.lhs, eq.rhs)}   {tag}"
        if S in eq.lhs.indices:
            w = g.node(eq.node).width
            bwd_buffers[label] = w
            f, line = dot(eq, ids[label])
            if f is not None:
                bwd.append(_item(False, [f"# {comment}", line]))
            else:
                bwd.append(_item(True, rows(eq, comment, w)))
            continue
        if label not in grads:
            use_buffers[label] = shapes[label]
        shape = shapes[label]
        form = batch_form(eq.lhs, eq.rhs)
        if eq.kind == "grad_W":
            f, line = dot(eq, ids[label])
            bwd.append(_item(False, [f"# {comment}", line]))
        elif isinstance(form, ColumnSum):
            zero = p.doprint(sp.Integer(0))
            bwd.append(_item(False, [f"# {comment}", f"for p in range({shape[0]}):", f"    acc = {zero}",
                                     "    for s in range(B):", f"        acc += {ident(form.arg)}[s, p]",
                                     f"    {ids[label]}[p] = acc"]))
        else:   # elementwise over the parameter's entries (shared_sum)
            idx = [str(i) for i in eq.lhs.indices]
            lines = [f"# {comment}"]
            for depth, (i, n) in enumerate(zip(idx, shape)):
                lines.append("    " * depth + f"for {i} in range({n}):")
            lines.append("    " * len(shape) + f"{p.doprint(eq.lhs)} = {p.doprint(eq.rhs)}")
            bwd.append(_item(False, lines))

    params = [prm.name for prm in g.params]
    grad_labels = [d.param_grads[k] for k in params]
    inputs = {n.name: n.width for n in g.inputs}
    tnode = g.node(g.target)
    fwd_buffers = {n.name: n.width for n in g.nodes if n.kind not in ("input", "loss")}
    fwd_args = [ids[k] for k in inputs] + [f"p_{k}" for k in params] + [ids[k] for k in fwd_buffers]
    all_args = ([ids[k] for k in inputs] + [ids[tnode.name]] + [f"p_{k}" for k in params]
                + [ids[k] for k in fwd_buffers] + [ids[k] for k in bwd_buffers]
                + [ids[k] for k in use_buffers] + [ids[k] for k in grad_labels])
    used = helpers_used(printed)
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
        "version": __version__, "digest": g.digest, "name": g.name, "target": target, "dtype": dtype,
        "description": str(g), "equations": equations,
        "inputs": inputs, "target_spec": repr((tnode.name, tnode.width)), "output": g.output,
        "output_ident": ids[g.output], "params": params, "param_shapes": g.param_shapes(),
        "fwd_buffers": fwd_buffers, "bwd_buffers": bwd_buffers, "use_buffers": use_buffers,
        "grads": grad_labels, "input_grads": dict(d.input_grads),
        "helpers": [helper_source(h, p) for h in used],
        "fwd_args": ", ".join(fwd_args), "all_args": ", ".join(all_args),
        "batch_from": ids[next(iter(inputs))],
        "forward": _merge(fwd), "backward": _merge(bwd),
        "loss": g.loss_node.loss.name, "reduction": g.reduction, "loss_lines": loss_lines,
        "loss_scale": p.doprint(d.batch_factor.xreplace(sizes)), "loss_reads": loss_reads,
        "zero": p.doprint(sp.Integer(0)),
        "updates": [(f"p_{k}", ids[gl]) for k, gl in zip(params, grad_labels)],
    }
    return environment().get_template(f"{target}/graph.py.j2").render(**ctx)


def generate_graph(derivation, target="cpu", dtype="float64", out_dir=None, jit=True):
    """Emit the kernel of a GraphDerivation, write it atomically, import it; a GraphKernel."""
    from .graph_kernel import GraphKernel
    from .load import import_module, write
    g = derivation.graph
    source = emit_graph(derivation, target, dtype)
    path = kernel_path(g, target, dtype, out_dir)
    write(path, source)
    module = import_module(path, naming.import_name(g.name, f"graph_{target}", dtype, g.digest), jit=jit,
                           digest=g.digest)
    return GraphKernel(derivation, module, path, target, dtype, jit)

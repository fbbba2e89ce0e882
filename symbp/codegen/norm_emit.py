"""CPU emission of the normalization family (batchnorm, layernorm; ``realize`` "normalization").

Contract: the graph code generator (``graph_emit``) calls these with its emission state ``c``
(printer ``c.p``, identifiers, the graph) and gets items (whole-batch statements: "stmt"); every
statement is printed from the derivation's equations, nothing here is math:

- ``forward(c, n, eq)``: the node's statistics (the derivation's ``statistic`` equations mu,
  sigma, xhat, in that order) into local arrays, then the node's forward equation
  (out = gamma xhat + beta);
- ``backward(c, eq, comment)``: a gradient that comes through a normalization node (its
  ``<kind>_compact`` form); ``param_grad(c, eq, comment, shape)``: dL/dgamma, dL/dbeta. Before the
  first of them in a function the statistics are computed again from the stored input (one pass
  over it, cheaper to recompute than to keep a (batch, width) buffer of xhat per node).

Each equation is printed as a loop nest: the outer loop over the index a statistic is indexed by
(the unit j for batchnorm, the sample s for layernorm), the inner over the other; a sum that does
not depend on the inner index (sum_t g[t, j], sum_t g[t, j] xhat[t, j]) is reduced once per
outer iteration, before the inner loop, so the coupled backward costs O(B n), not O(B^2 n).
The kernels of a graph with a batchnorm node hold batch-coupled passes, so such a module has no
parallel variant (``graph_emit._parallel`` serves per-sample rows only).

In inference (``inference_rows``) a node is elementwise: batchnorm with the running statistics,
dropout the identity, layernorm as in training.
"""
import sympy as sp

from .. import naming
from ..model.ops_norm import AXES, INFERENCE, RUNNING
from .emit import BF


def _stmt(lines):
    return {"kind": "stmt", "lines": list(lines)}


def _label(base):
    return str(base.label)


def eps_value(node):
    """The node's eps as a SymPy number (printed as a typed constant)."""
    return sp.Float(repr(node.option("eps")))


def _range(c, n):
    """The printed size of a loop over n entries (a width symbol or the batch size)."""
    n = sp.sympify(n).xreplace(c.d.sizes)
    return "B" if n == naming.BATCH else str(int(n))


class _Nest:
    """Printing of one equation lhs[indices] = rhs as a loop nest (see the module docstring)."""

    def __init__(self, c, node):
        self.c, self.node, self.count = c, node, 0
        self.consts = {sp.Symbol(naming.statistic(node.name, "eps"), positive=True): eps_value(node)}

    def _print(self, e):
        e = e.xreplace(self.consts).xreplace({**self.c.d.sizes, naming.BATCH: BF})
        return self.c.p.doprint(e)

    def _reduce(self, sm, out):
        (k, lo, hi), = sm.limits
        r = sp.Symbol(f"r_{self.node.name}_{self.count}", real=True)
        self.count += 1
        self.c.p.names[r] = str(r)
        out += [f"{r} = {self.c.p.doprint(sp.Integer(0))}",
                f"for {k} in range({_range(self.c, hi - lo + 1)}):",
                f"    {r} += {self._print(sm.function)}"]
        return r

    def lines(self, lhs, rhs, comment):
        """Loop nest of lhs = rhs; the outer index the statistic's (j or s), the inner the other."""
        outer = naming.J if AXES[self.node.kind] == ("batch",) else naming.S
        idx = [i for i in lhs.indices]
        if len(idx) == 1:
            loops = [(idx[0], lhs.base)]
        else:
            first = outer if outer in idx else idx[0]
            loops = [(first, None)] + [(i, None) for i in idx if i != first]
        sizes = {naming.S: naming.BATCH}
        width = self.c.g.node(self.node.name).width
        out = [f"# {comment}"]
        depth = 0
        pending = sorted(rhs.atoms(sp.Sum), key=sp.default_sort_key)
        for pos, (i, _) in enumerate(loops):
            inner = {ix for ix, _ in loops[pos + 1:]}
            n = sizes.get(i, width)
            body = []
            for sm in list(pending):
                # a sum is reduced at the outermost loop where all its free indices are bound
                if not (sm.free_symbols & inner):
                    rhs = rhs.xreplace({sm: self._reduce(sm, body)})
                    pending.remove(sm)
            out += ["    " * depth + f"for {i} in range({_range(self.c, n)}):"]
            depth += 1
            out += ["    " * depth + ln for ln in body]
        out.append("    " * depth + f"{self.c.p.doprint(lhs)} = {self._print(rhs)}")
        return out


def _statistics(c, n, allocate=True):
    """Lines computing a node's mu, sigma and xhat (its statistic equations) into local arrays."""
    nest, lines = _Nest(c, n), []
    w = _range(c, n.width)
    at = "B" if AXES[n.kind] == ("units",) else w
    if allocate:
        lines += [f"{c.ids[naming.statistic(n.name, 'mu')]} = np.empty({at}, DTYPE)",
                  f"{c.ids[naming.statistic(n.name, 'sigma')]} = np.empty({at}, DTYPE)",
                  f"{c.ids[naming.statistic(n.name, 'xhat')]} = np.empty((B, {w}), DTYPE)"]
    for what in ("mu", "sigma", "xhat"):
        e = c.d[naming.statistic(n.name, what)]
        lines += nest.lines(e.lhs, e.rhs, f"{e.name}: {e.doc}")
    return lines


def forward(c, n, eq):
    """The node's statistics, then out = gamma xhat + beta, as whole-batch statements."""
    lines = [f"# {n.name}: {n.kind} over the axes {AXES[n.kind]} (statistics, then the affine map)",
             "Bf = DTYPE(B)"]
    lines += _statistics(c, n)
    lines += _Nest(c, n).lines(eq.lhs, eq.rhs, f"{n.name}: {n.kind} node")
    return [_stmt(lines)]


def _recomputed(c, n):
    """The statistics lines, once per generated function (``c.bwd`` is the list being filled)."""
    seen = c.__dict__.setdefault("norm_seen", set())
    key = (id(c.bwd), n.name)
    if key in seen:
        return []
    seen.add(key)
    return [f"# {n.name}: statistics again from its stored input"] + _statistics(c, n)


def backward(c, eq, comment):
    """A gradient through a normalization node (its compact form) as a loop nest."""
    n = c.g.node(eq.source)
    c.bwd_buffers[eq.name] = c.g.node(eq.node).width
    c.bwd.append(_stmt(_recomputed(c, n) + _Nest(c, n).lines(eq.lhs, eq.rhs, comment)))


def param_grad(c, eq, comment, shape):
    """dL/dgamma, dL/dbeta (sums over the batch) as a loop nest."""
    n = c.g.node(eq.source)
    c.bwd.append(_stmt(_recomputed(c, n) + _Nest(c, n).lines(eq.lhs, eq.rhs, comment)))


def inference_rhs(n, mapping):
    """The node's forward definition in inference (``ops_norm.INFERENCE``), renamed by
    ``mapping`` (the derivation's renamer for the node), or None when it is the training one."""
    fn = INFERENCE.get(n.kind)
    if fn is None:
        return None
    return mapping(fn(n.op.key(n)).expr)


def running_names(node):
    """{"mean": identifier, "var": identifier} of a batchnorm node's running statistics."""
    return {what: f"{node.name}__running_{what}" for what in RUNNING}


def _inference_items(c, n, emitters):
    """The node's items in inference: its inference definition as one elementwise row (running
    statistics read, eps a constant), or, where inference is training (layernorm and the other
    kinds), the training emitter's items."""
    from ..derivation.graph import _mapping, renamer
    rename = renamer({**_mapping(c.g, n), **_running_mapping(n)})
    rhs = inference_rhs(n, rename) if n.kind in INFERENCE else None
    if rhs is None:
        flops = c.blas_flops
        items = emitters(n)(c, n, c.d[n.name])
        c.blas_flops = flops        # the training pass's products are the ones counted
        return items
    rhs = rhs.xreplace(_Nest(c, n).consts) if n.op.realize == "normalization" else rhs
    lhs = c.d[n.name].lhs
    c.printed.append(rhs)
    return [{"kind": "rows", "width": n.width, "assign": [(lhs, rhs, f"{n.name}: {n.kind} in inference")],
             "fuse": True, "then": [], "pre": [], "writes": {n.name}, "vector": None}]


def _running_mapping(n):
    if n.kind != "batchnorm":
        return {}
    out = {}
    for what, gen in RUNNING.items():
        actual = sp.IndexedBase(running_names(n)[what], **gen.assumptions0)
        out[gen], out[gen.label] = actual, actual.label
    return out


def _running_lines(c, n):
    """The running statistics' update of batchnorm node n (``ops_norm.running_update``) after
    its statistics are computed from the stored input."""
    from ..derivation.graph import _mapping, renamer
    from ..model.ops_norm import running_update, _MOMENTUM
    rename = renamer({**_mapping(c.g, n), **_running_mapping(n)})
    consts = {**_Nest(c, n).consts, _MOMENTUM: sp.Float(repr(n.option("momentum")))}
    lines = [f"# {n.name}: running statistics, r <- (1 - momentum) r + momentum (batch statistic)"]
    lines += _statistics(c, n)
    lines.append(f"for j in range({_range(c, n.width)}):")
    for lhs, rhs in running_update(n.op.key(n)):
        rhs = rename(rhs).xreplace(consts).xreplace({**c.d.sizes, naming.BATCH: BF})
        lines.append(f"    {c.p.doprint(rename(lhs))} = {c.p.doprint(rhs)}")
    return lines


def modes(c, emitters, layout, sizes, inputs, params):
    """The template's ``norm`` context for a graph with the family (None without): the
    inference forward's lines, the running statistics' update lines and their arguments.
    ``emitters(node)`` gives a node's training emitter, ``layout`` prints items (graph_emit)."""
    nodes = [n for n in c.g.nodes if n.kind in ("batchnorm", "layernorm", "dropout")]
    if not nodes:
        return None
    running = {n.name: running_names(n) for n in nodes if n.kind == "batchnorm"}
    for names in running.values():
        for ident in names.values():
            c.ids[ident] = ident
    items = []
    for n in c.g.nodes:
        if n.kind not in ("input", "loss"):
            items += _inference_items(c, n, emitters)
    update = ["Bf = DTYPE(B)"]
    for n in nodes:
        if n.kind == "batchnorm":
            update += _running_lines(c, n)
    flat = [ident for names in running.values() for ident in names.values()]
    return {"inference_lines": ["Bf = DTYPE(B)"] + layout(items, c.p, sizes), "update_lines": update,
            "running": {k: (v["mean"], v["var"]) for k, v in running.items()},
            "inference_args": ", ".join(inputs + params + ["work"] + flat),
            "update_args": ", ".join(inputs + ["work"] + flat)}

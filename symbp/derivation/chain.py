"""The MLP's derivation: the chain view of the one graph derivation, and the activation and
loss forms both derivations share.

Contract: ``derive(network) -> Derivation`` is ``chain_view(derive_graph(network.graph),
network)``: the MLP is a chain Graph (input x, dense z<l>, activation a<l>, ..., loss) and
``symbp.derivation.graph`` derives it like any graph, from each op's forward definition in
index notation with the sample index s and symbolic widths (the work does not grow with width or
with depth: each kind's rules are derived once and renamed per node). ``chain_view`` renames
the graph's equations into the MLP's names, kinds and order and assembles the ``LayerRules``
the renderers and the MLP emitter read; it derives nothing. The equations, in the MLP's names:

1. forward: z^l[s,j] = sum_k W^l[j,k] a^{l-1}[s,k] + b^l[j] (no b^l for a layer without
   bias: no dz/db, no dL/db); a^l[s,j] = f_l(z^l[s,j])
   (softmax: exp(z[s,j]) / sum_k exp(z[s,k])); L = c sum_t sum_i loss(a^L[t,i], y[t,i]) with
   c = 1/B for the mean and 1 for the sum.
2. local derivatives: f'(z) = diff(f(z), z), rewritten in terms of a = f(z) where that is exact
   (``output_form``); the activation Jacobian J^l[s,i,j] = diff(a^l[s,i], z^l[s,j]) (diagonal for
   elementwise, full for softmax); the affine Jacobians dz/da^{l-1}, dz/dW, dz/db.
3. the general backpropagation algorithm (Algorithm 14.1 of chapter 14 "Backpropagation",
   g_in = g_out L^x):
   delta^L[s,j] = sum_i dL/da^L[s,i] J^L[s,i,j];
   g^{l-1}[s,k] = sum_j delta^l[s,j] dz^l[s,j]/da^{l-1}[s,k]   (= (W^T delta)_k);
   delta^{l-1}[s,j] = sum_i g^{l-1}[s,i] J^{l-1}[s,i,j];
   dL/dW^l[p,q] = sum_s sum_j delta^l[s,j] dz^l[s,j]/dW^l[p,q]  (= sum_s delta_p a_q, i.e. delta a^T);
   dL/db^l[p] = sum_s sum_j delta^l[s,j] dz^l[s,j]/db^l[p]      (= sum_s delta_p).
Each result goes through the ordered passes of ``symbp.simplify`` and keeps its stages. The
network's ``relu_at_zero`` (the graph's) reaches the kink pass through
``simplify.Context.at_zero``. The output's dL/da is derived from the loss in a; when the loss is
not paired with its own activation (``allow_any_output``: bce after ReLU) it stays
(a - y)/(a(1 - a)) up to the batch factor, delta = f'(z) times that (the "chain" stage), and the
kernels compute that loss from a (undefined where a <= 0 or a >= 1: the log of a non-positive
number).
"""
import sympy as sp

from .. import naming
from .equations import Derivation, Equation, LayerRules
from .graph import derive_graph, grad, paused_gc, renamer, value, width

S, T, I, J, K, P, Q = naming.S, naming.T, naming.I, naming.J, naming.K, naming.P, naming.Q


def derive(network):
    """Derive the backpropagation of ``network`` (see the module docstring): the chain view of
    the one graph derivation of its chain Graph (``network.graph``)."""
    with paused_gc():
        return chain_view(derive_graph(network.graph), network)


# The one-line doc of each MLP equation kind (as the MLP derivation always wrote them).
_DOCS = {"forward_z": "affine map", "forward_a": "activation", "loss": "loss",
         "loss_grad": "dL/da at the output", "output_delta": "dL/dz = sum_i dL/da_i da_i/dz_j",
         "delta": "dL/dz = sum_i dL/da_i da_i/dz_j", "backprop": "dL/da_prev = W^T delta",
         "input_grad": "dL/da_prev = W^T delta", "grad_W": "dL/dW = delta a^T", "grad_b": "dL/db = delta"}


def _chain_names(graph):
    """{graph base or symbol: MLP base or symbol} for the chain graph of ``graph.from_network``
    (x -> a0, g_z<l> -> delta<l>, g_a<l> -> ga<l>, g_W<l> -> gW<l>, n_z<l> -> n_l, ...), and
    {node: (MLP kind, layer)}. Values and parameters already carry the MLP's names (z1, a1, W1,
    b1, y); the labels of renamed bases are renamed too, as in the graph's own renaming."""
    pairs, widths, what = [], {}, {}
    layer = 0
    for n in graph.nodes:
        if n.op.target:
            continue
        if n.name == graph.target:
            continue
        if n.op.realize == "source":
            kind, layer = "a", 0
            pairs.append((value(n.name), naming.quantity("a", 0)))
        elif n.op.realize == "contraction":
            layer += 1
            kind = "z"
        else:
            kind = "a"
        what[n.name] = (kind, layer)
        widths[width(n.name)] = naming.width(layer)
        pairs.append((grad(n.name), naming.quantity("delta" if kind == "z" else "ga", layer)))
    for p in graph.params:
        kind, layer = naming.parse(p.name)
        pairs.append((grad(p.name), naming.quantity(naming.grad_kind(kind), layer)))
    mapping = dict(widths)
    for gen, actual in pairs:
        mapping[gen] = actual
        mapping[gen.label] = actual.label
    return mapping, what


def chain_view(graph_derivation, network):
    """The Derivation of an MLP from the derivation of its chain Graph (``network.graph``):
    the graph's equations renamed into the MLP's names and kinds (z<l>, a<l> forward_z /
    forward_a; loss; ga<L> loss_grad; delta<L> output_delta; delta<l> delta; ga<l-1> backprop,
    ga0 input_grad; gW<l> grad_W; gb<l> grad_b), in the MLP's order (forward, loss, dL/da and
    the output delta, then per layer from the output: delta<l>, ga<l-1>; then the parameter
    gradients layer by layer), and the ``LayerRules`` assembled from each dense/activation node
    pair's NodeRules. Nothing is derived here: only renamed.

    The graph writes an edge's contribution as g_in[s, j] = sum_i g_out[s, i] J[s, i, j]; the
    MLP writes ga<l-1>[s, i] = sum_j delta<l>[s, j] W<l>[j, i] and dz/da, dz/dW, dz/db with j the
    unit of z: those are the same expressions with i and j swapped, done here.

    The graph derivation itself is kept as ``graph_derivation`` (in the graph's names): the code
    generator reads it, so an MLP is derived once."""
    gd = graph_derivation
    mapping, what = _chain_names(gd.graph)
    # one memo for the whole view: the equations of a deep chain share their subexpressions;
    # the swapped ones are renamed and swapped in one pass (no name maps to an index)
    names, swapped_names = renamer(mapping), renamer({**mapping, I: J, J: I})

    def rename(e, swapped=False):
        return swapped_names(e) if swapped else names(e)

    def stages(st, swapped=False):
        return None if st is None else tuple((name, rename(e, swapped)) for name, e in st)

    L = network.depth
    by_name = {}
    for e in gd.equations:
        if e.kind == "loss":
            mlp = ("loss", "loss", L, False)
        elif e.kind.startswith("forward_"):
            kind, layer = what[e.node]
            mlp = (f"{kind}{layer}", f"forward_{kind}", layer, False)
        elif e.kind in ("grad_W", "grad_b"):
            kind, layer = naming.parse(rename(e.lhs).base)
            mlp = (f"{kind}{layer}", e.kind, layer, True)     # its summed unit index: j
        else:       # a gradient of a node: dL/da (ga) or dL/dz (delta)
            kind, layer = what[e.node]
            if kind == "z":
                mlp = (f"delta{layer}", "output_delta" if e.kind == "output_delta" else "delta", layer, False)
            elif e.kind == "loss_grad":
                mlp = (f"ga{layer}", "loss_grad", layer, False)
            else:
                mlp = (f"ga{layer}", "backprop" if layer > 0 else "input_grad", layer, True)
        name, kind, layer, swapped = mlp
        st = stages(e.stages, swapped)
        lhs = rename(e.lhs, swapped)
        by_name[name] = Equation(name, kind, layer, lhs, st[-1][1], st, _DOCS[kind])

    order = [f"{q}{l}" for l in range(1, L + 1) for q in ("z", "a")] + ["loss", f"ga{L}", f"delta{L}"]
    for l in range(L, 0, -1):
        order += ([f"delta{l}"] if l < L else []) + [f"ga{l - 1}"]
    for l in range(1, L + 1):
        order += [f"gW{l}"] + ([f"gb{l}"] if network.layers[l - 1].bias else [])
    equations = tuple(by_name[name] for name in order)

    rules = {nr.node: nr for nr in gd.nodes}
    layers = []
    for l, layer in enumerate(network.layers, start=1):
        dense, act = rules[f"z{l}"], rules[f"a{l}"]
        layers.append(LayerRules(l, layer.activation, act.rule, stages(act.jacobians[0]),
                                 stages(dense.jacobians[0], True), stages(dense.dW, True),
                                 stages(dense.db, True) if layer.bias else None))
    expr, reads = gd.loss_sample
    loss_sample = (rename(expr), what[reads][0])
    return Derivation(network, equations, tuple(layers), loss_sample, gd.batch_factor, gd)

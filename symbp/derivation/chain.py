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
from functools import lru_cache

import mpmath
import sympy as sp

from .. import naming
from . import simplify as simp
from .equations import Derivation, Equation, LayerRules

S, T, I, J, K, P, Q = naming.S, naming.T, naming.I, naming.J, naming.K, naming.P, naming.Q
Zs, As, Ys = naming.Z, naming.A, naming.Y

# Points where a candidate rewrite of f'(z) in terms of a = f(z) is checked; exact rationals so
# that kinks (z = 0) are hit exactly.
CHECK_POINTS = tuple(sp.Rational(v) for v in ("-3", "-1", "-1/2", "0", "1/3", "1", "5/2"))


def _values(expr, points, f=None):
    """30-digit values of an expression in naming.Z (and naming.A = f(z) when ``f`` is given)
    at ``points`` (mpmath: a huge power or exp(exp(exp(z))) evaluates or fails fast, where exact
    SymPy arithmetic can take minutes or overflow); None where it cannot be evaluated. a is
    computed as a number first: substituting f into the expression symbolically makes SymPy
    evaluate Heaviside and Abs of the compound argument, which took seconds."""
    try:
        fn = simp.mpmath_function([Zs, As], expr)
        fa = simp.mpmath_function([Zs], f) if f is not None else None
    except simp._EVAL_ERRORS:
        return [None] * len(points)
    out = []
    with mpmath.workdps(30):
        for z0 in points:
            try:
                zv = mpmath.mpf(z0.p) / z0.q
                out.append(complex(fn(zv, fa(zv) if fa is not None else mpmath.nan)))
            except simp._EVAL_ERRORS:
                out.append(None)
    return out


def _agrees(candidate, fprime, f):
    want = _values(fprime, CHECK_POINTS)
    got = _values(candidate, CHECK_POINTS, f)
    for w, g in zip(want, got):
        # written as "not <=" so that a NaN never passes
        if w is None or g is None or not abs(w - g) <= 1e-12 * max(1.0, abs(w)):
            return False
    return True


def _exp_route(f, fprime):
    """Candidates from solving a = f(u) for u = exp(z) > 0 (sigmoid, tanh, softplus, ...)."""
    u = sp.Symbol("u", positive=True)
    fu = f.rewrite(sp.exp).subs(sp.exp(Zs), u)
    fpu = fprime.rewrite(sp.exp).subs(sp.exp(Zs), u)
    if fu.has(Zs) or fpu.has(Zs) or not fu.has(u):
        return []
    try:
        # a = f(u) is usually polynomial in u once cleared of fractions (sigmoid: degree 1,
        # tanh: 2): its roots come fast; otherwise the general solver. Every candidate is
        # checked numerically afterwards, so SymPy's own checks are skipped.
        num = sp.numer(sp.together(fu - As))
        if num.is_polynomial(u):
            poly = sp.Poly(num, u)
            # cubic and higher roots are radicals no reader wants, and cancelling the derivative
            # at them took minutes (tanh(2 z) / cosh(z))
            sols = list(sp.roots(poly)) if poly.degree() <= 2 else []
        else:
            sols = sp.solve(sp.Eq(As, fu), u, check=False, simplify=False)
    except (NotImplementedError, ValueError, TypeError, sp.PolynomialError):
        return []
    out = []
    for sol in sols:
        if simp.too_big(sol):
            continue
        c = sp.cancel(fpu.subs(u, sol))
        out += [c, sp.factor(c), sp.expand(c)]
    return out


def _exp_route_applies(f):
    """The exp route only makes sense (and is only cheap) when every exponential in f is
    exp(c z) for a rational c and f is small: tanh(tanh(z)) rewritten in exp nests
    exponentials whose a = f(u) cannot be solved, and trying took minutes. The rates c are
    bounded too: exp(1003 z) = u^1003, and factoring a polynomial of that degree takes minutes."""
    try:
        e = f.rewrite(sp.exp)
    except (ValueError, TypeError):     # Max(z, sqrt(cos(2/5))) in exp: a "complex" constant
        return False
    if not e.has(sp.exp) or simp.too_big(e):
        return False
    rates = [x.args[0] / Zs for x in e.atoms(sp.exp)]
    return all(c.is_Rational and abs(c) <= simp.MAX_DEGREE and c.q <= simp.MAX_DEGREE for c in rates)


def _sigmoid_rewrite(expr):
    """The derivative with exp(x) written through u = 1/(1 + exp(-x)) where exp(x) also sits in
    a denominator (swish' = z exp(-z)/(1 + exp(-z))^2 + ... -> z u (1 - u) + u): the printer
    turns u into its stable helper, where the original gives inf/inf for large |z|."""
    out = simp.sigmoid_forms(expr)
    return out.replace(lambda e: isinstance(e, simp._sigmoid), lambda e: 1 / (1 + sp.exp(-e.args[0])))


def _fewest(forms):
    # fewest operations; on a tie the factored form (a product) reads better: a(1 - a)
    return min(forms, key=lambda e: (sp.count_ops(e), not isinstance(e, sp.Mul), len(str(e)), str(e)))


@lru_cache(maxsize=None)
def output_form(f, at_zero=0):
    """f'(z) for an elementwise forward definition f(z), and its form in terms of a = f(z).

    Returns (stages, form, uses) where ``uses`` is "a" when the form reads only the layer
    output (sigmoid -> a(1-a), tanh -> 1-a^2, exp -> a, softplus -> 1-exp(-a), relu ->
    Heaviside(a, 0)) and "z" when no exact and stable rewrite exists (swish keeps z; so does
    relu with ``at_zero`` = 1: Heaviside(z, 1) is 1 at z = 0, where a = max(0, z) = 0 as for
    z < 0). ``at_zero`` is the network's relu_at_zero, given to the kink pass.
    Candidates come from substituting f(z) -> a and z -> a (piecewise linear functions), and
    only if neither is exact, from solving a = f(u) for u = exp(z); each is checked to be exact
    at CHECK_POINTS and numerically stable (``simplify.stable``: finite and accurate in float32
    and float64 for |z| up to 1e4, with a computed by the printed forward), and the one with
    the fewest operations is kept. In z, the stable one of the derivative as ``diff`` gives it
    and its rewrite through the sigmoid (``_sigmoid_rewrite``); ``diff``'s form if neither is.
    """
    derived = sp.diff(f, Zs)
    stages = [("derived", derived)]
    fprime = simp.kink(derived, simp.Context(at_zero=at_zero))
    stages.append(("kink", fprime))
    if not fprime.has(Zs):
        return tuple(stages), fprime, "a"
    ctx = simp.Context(links=[(As, Zs, f)])

    def checked(cands):
        out = []
        for c in cands:
            if c.has(Zs) or c.has(sp.Symbol("u", positive=True)) or c.has(sp.nan, sp.zoo, sp.oo):
                continue
            c = simp.sign(c)
            if _agrees(c, fprime, f):
                out.append(c)
        return out

    # cheap candidates first; solving a = f(u) (the expensive one) only when they all fail
    good = checked([fprime.subs(f, As), fprime.xreplace({Zs: As})])
    if not good and _exp_route_applies(f):
        good = checked(_exp_route(f, fprime))
    good = [c for c in good if simp.stable(c, fprime, ctx)]
    if good:
        form = _fewest(good)
        stages.append(("forward_outputs", form))
        return tuple(stages), form, "a"
    zforms = [fprime]
    if not simp.too_big(fprime):
        zforms.append(_sigmoid_rewrite(fprime))
    zforms = list(dict.fromkeys(zforms))
    form = _fewest([c for c in zforms if simp.stable(c, fprime, ctx)] or [fprime])
    if form != fprime:
        stages.append(("forward_outputs", form))   # the form that pass substitutes
    return tuple(stages), form, "z"


def _forward_rule(layer, act, a_base, z_base, size, at_zero=0):
    """Rewrite rule of simp.FORWARD for layer l: f(z^l) -> a^l and f'(z^l) -> its output form."""
    if act.elementwise:
        _, form, uses = output_form(act.definition, at_zero)
        fprime = simp.kink(sp.diff(act.definition, Zs), simp.Context(at_zero=at_zero))

        def rule(expr):
            # a Jacobian's derivative comes distributed over its Kronecker delta
            # (d f'(z) + d g(z)); gathered, f'(z) appears whole and is replaced by its form
            kds = sorted(expr.atoms(sp.KroneckerDelta), key=str)
            if kds and uses == "z":
                expr = sp.collect(expr, kds, evaluate=True)
            for zi in sorted((x for x in expr.atoms(sp.Indexed) if x.base == z_base), key=str):
                ai = a_base[zi.indices]
                target = form.xreplace({As: ai, Zs: zi})
                expr = expr.subs(fprime.xreplace({Zs: zi}), target)
                expr = expr.subs(act.definition.xreplace({Zs: zi}), ai)
            return expr
        return rule

    denom = sp.Sum(sp.exp(z_base[S, K]), (K, 0, size - 1))
    sigma = sp.Dummy("Sigma", positive=True)

    def rule(expr):
        expr = expr.xreplace({denom: sigma})
        expr = expr.replace(lambda e: isinstance(e, sp.exp) and isinstance(e.args[0], sp.Indexed)
                            and e.args[0].base == z_base,
                            lambda e: a_base[e.args[0].indices] * sigma)
        expr = sp.expand(sp.cancel(expr))
        return expr.xreplace({sigma: denom})
    return rule


def _softmax_z(z_base, size):
    return sp.exp(z_base[S, I]) / sp.Sum(sp.exp(z_base[S, K]), (K, 0, size - 1))


def derive(network):
    """Derive the backpropagation of ``network`` (see the module docstring): the chain view of
    the one graph derivation of its chain Graph (``network.graph``)."""
    from .graph import derive_graph, paused_gc
    graph = network.graph
    # the graph derivation writes its expressions in the MLP's names at once (one renaming of
    # a deep chain, not two); chain_view then finds them renamed
    with paused_gc():
        return chain_view(derive_graph(graph, names=_chain_names(graph)[0]), network)


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
    from .graph import grad, value, width
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
    unit of z: those are the same expressions with i and j swapped, done here."""
    from .graph import renamer
    gd, graph = graph_derivation, graph_derivation.graph
    mapping, what = _chain_names(graph)
    # one memo for the whole view: the equations of a deep chain share their subexpressions.
    # A derivation that derive_graph wrote in these names already (``derive``) is not renamed
    # twice.
    names = (lambda e: e) if gd.names == mapping else renamer(mapping)
    swap = renamer({I: J, J: I})

    def rename(e, swapped=False):
        return swap(names(e)) if swapped else names(e)

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
    return Derivation(network, equations, tuple(layers), loss_sample, gd.batch_factor)


@lru_cache(maxsize=None)
def _unit_loss_from_logits(per_unit, f):
    """loss(f(z), y) with the logs expanded: each log's argument cancelled to one fraction,
    then split (sigmoid + bce: y log(1 + exp(-z)) + (1 - y) log(1 + exp(z)), two softplus)."""
    e = per_unit.xreplace({As: f})
    e = e.replace(lambda x: isinstance(x, sp.log), lambda x: sp.log(sp.cancel(x.args[0])))
    return sp.expand(sp.expand_log(e, force=True))


def _loss_from_logits(network, aL, zL, y, size, ctx):
    """Per-sample loss for the kernels. Cross-entropies are written in the pre-activation z
    (a = f(z) substituted, logs expanded: sigmoid + bce -> log(1 + exp(z)) - y z,
    softmax + ce -> log(sum_k exp(z_k)) - sum_i y_i z_i), so no log(0) occurs for large |z|.
    Other losses stay in a, and so does a cross-entropy after an activation it is not paired
    with (``allow_any_output``: bce after ReLU has no logit form; it is NaN where a <= 0 or
    a >= 1). Returns (expression per sample s, "z" or "a")."""
    loss, act = network.loss, network.layers[-1].activation
    if loss.per_unit.has(sp.log) and act.name in loss.outputs:
        if act.elementwise:
            unit = _unit_loss_from_logits(loss.per_unit, act.definition)
            return sp.Sum(unit.xreplace({Zs: zL[S, I], Ys: y[S, I]}), (I, 0, size - 1)), "z"
        a_si = _softmax_z(zL, size)
        expr = sp.Sum(sp.expand(sp.expand_log(loss.per_unit.xreplace({As: a_si, Ys: y[S, I]}), force=True)),
                      (I, 0, size - 1))
        expr = simp.onehot(simp.collapse(expr), ctx)
        return expr, "z"
    return sp.Sum(loss.per_unit.xreplace({As: aL[S, I], Ys: y[S, I]}), (I, 0, size - 1)), "a"

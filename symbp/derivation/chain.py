"""Derive backpropagation with SymPy: local derivatives, Jacobians, the delta recursion and
the parameter gradients of a Network, with symbolic sizes.

Contract: ``derive(network) -> Derivation``. Every derivative comes from ``sympy.diff``; the
function table holds forward definitions only. The steps, in index notation with the sample
index s (rows of a batch) and symbolic widths n_l, so that the work does not grow with width:

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
network's ``relu_at_zero`` reaches the kink pass through ``simplify.Context.at_zero``.
The output's dL/da is derived from the loss in a; when the loss is not paired with its own
activation (``allow_any_output``: bce after ReLU) it stays (a - y)/(a(1 - a)) up to the batch
factor, delta = f'(z) times that, and the kernels compute that loss from a (undefined where
a <= 0 or a >= 1: the log of a non-positive number).
"""
from functools import lru_cache

import mpmath
import sympy as sp

from .. import naming
from . import simplify as simp
from .equations import ActivationRule, Derivation, Equation, LayerRules
from ..errors import DerivationError

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


# Generic names of one dense layer; the layer's rules are derived once per activation with
# these and then renamed for each layer (deriving does not grow with depth or width).
_G = {k: sp.IndexedBase(f"_{k}", real=True) for k in ("a_in", "z", "a", "W", "b", "delta", "g", "g_in", "gW", "gb")}
_N_IN, _N_OUT = sp.Symbol("_n_in", integer=True, positive=True), sp.Symbol("_n_out", integer=True, positive=True)


def _layer_names(l):
    q = naming.quantity
    names = {"a_in": q("a", l - 1), "z": q("z", l), "a": q("a", l), "W": q("W", l), "b": q("b", l),
             "delta": q("delta", l), "g": q("ga", l), "g_in": q("ga", l - 1), "gW": q("gW", l), "gb": q("gb", l)}
    mapping = {_G[k]: v for k, v in names.items()}
    mapping.update({_G[k].label: v.label for k, v in names.items()})
    mapping.update({_N_IN: naming.width(l - 1), _N_OUT: naming.width(l)})
    return mapping


@lru_cache(maxsize=None)
def _layer_template(act, bias=True, at_zero=0):
    """All rules of one dense layer with activation ``act``, in the generic names _G (without
    bias: z = W a, and no dz/db or dL/db rules)."""
    g = _G
    ctx = simp.Context(forward=[_forward_rule(0, act, g["a"], g["z"], _N_OUT, at_zero)], at_zero=at_zero)
    if act.elementwise:
        ctx.links.append((g["a"], g["z"], act.definition))
    zj = sp.Sum(g["W"][J, K] * g["a_in"][S, K], (K, 0, _N_IN - 1)) + (g["b"][J] if bias else 0)
    if act.elementwise:
        stages, form, uses = output_form(act.definition, at_zero)
        rule = ActivationRule(act, stages[0][1], stages, form, uses)
        a_si, a_sj = act.at(g["z"][S, I]), act.at(g["z"][S, J])
    else:
        rule = None
        a_si = _softmax_z(g["z"], _N_OUT)
        a_sj = a_si.xreplace({I: J})
    t = {"rule": rule, "z": zj, "a": a_sj}
    t["jacobian"] = simp.run(sp.diff(a_si, g["z"][S, J]), ctx)
    t["dz_da"] = simp.run(sp.diff(zj, g["a_in"][S, I]), ctx)
    t["dz_dW"] = simp.run(sp.diff(zj, g["W"][P, Q]), ctx)
    t["dz_db"] = simp.run(sp.diff(zj, g["b"][P]), ctx) if bias else None
    jac = t["jacobian"][-1][1]
    t["delta"] = simp.run(sp.Sum(g["g"][S, I] * jac, (I, 0, _N_OUT - 1)), ctx)
    t["g_in"] = simp.run(sp.Sum(g["delta"][S, J] * t["dz_da"][-1][1], (J, 0, _N_OUT - 1)), ctx)
    t["gW"] = simp.run(sp.Sum(g["delta"][S, J] * t["dz_dW"][-1][1], (J, 0, _N_OUT - 1),
                              (S, 0, naming.BATCH - 1)), ctx)
    t["gb"] = simp.run(sp.Sum(g["delta"][S, J] * t["dz_db"][-1][1], (J, 0, _N_OUT - 1),
                              (S, 0, naming.BATCH - 1)), ctx) if bias else None
    return t


def _rename(stages, mapping, cache=None):
    """Stages in a layer's names; ``cache`` (one per layer) renames each distinct expression
    once: consecutive stages are often equal, and renaming is most of a deep network's
    derivation time (xreplace rebuilds every node)."""
    if stages is None:
        return None
    cache = {} if cache is None else cache
    out = []
    for name, e in stages:
        if e not in cache:
            cache[e] = e.xreplace(mapping)
        out.append((name, cache[e]))
    return tuple(out)


def derive(network):
    """Derive the backpropagation of ``network`` (see the module docstring)."""
    L = network.depth
    n = [naming.width(l) for l in range(L + 1)]
    a = [naming.quantity("a", l) for l in range(L + 1)]
    z = [None] + [naming.quantity("z", l) for l in range(1, L + 1)]
    delta = [None] + [naming.quantity("delta", l) for l in range(1, L + 1)]
    ga = [naming.quantity("ga", l) for l in range(L + 1)]
    y = naming.quantity("y")
    c = 1 / naming.BATCH if network.reduction == "mean" else sp.Integer(1)

    at_zero = network.relu_at_zero
    ctx = simp.Context(at_zero=at_zero)
    for l, layer in enumerate(network.layers, start=1):
        ctx.forward.append(_forward_rule(l, layer.activation, a[l], z[l], n[l], at_zero))
        if layer.activation.elementwise:
            ctx.links.append((a[l], z[l], layer.activation.definition))
    if network.loss.onehot:
        ctx.onehot.append((y, n[L]))

    templates = [_layer_template(layer.activation, layer.bias, at_zero) for layer in network.layers]
    names = [_layer_names(l) for l in range(1, L + 1)]
    caches = [{} for _ in range(L)]
    equations = []

    def eq(name, kind, layer, lhs, stages, doc):
        e = Equation(name, kind, layer, lhs, stages[-1][1], tuple(stages), doc)
        equations.append(e)
        return e

    # 1. forward
    for l in range(1, L + 1):
        t, m = templates[l - 1], names[l - 1]
        eq(f"z{l}", "forward_z", l, z[l][S, J], [("definition", t["z"].xreplace(m))], "affine map")
        eq(f"a{l}", "forward_a", l, a[l][S, J], [("definition", t["a"].xreplace(m))], "activation")
    per_unit = network.loss.per_unit.xreplace({As: a[L][T, I], Ys: y[T, I]})
    loss_expr = c * sp.Sum(sp.Sum(per_unit, (I, 0, n[L] - 1)), (T, 0, naming.BATCH - 1))
    eq("loss", "loss", L, sp.Symbol("L"), [("definition", loss_expr)], "loss")
    loss_sample = _loss_from_logits(network, a[L], z[L], y, n[L], ctx)

    # 2. local derivatives, renamed from the per-activation templates
    layers = tuple(
        LayerRules(l, network.layers[l - 1].activation, templates[l - 1]["rule"],
                   *(_rename(templates[l - 1][k], names[l - 1], caches[l - 1])
                     for k in ("jacobian", "dz_da", "dz_dW", "dz_db")))
        for l in range(1, L + 1))

    # 3. backward by the general algorithm: the output delta is derived from the loss as one
    # expression; each further step is the layer's rule instantiated.
    dL_da = eq(f"ga{L}", "loss_grad", L, ga[L][S, J],
               simp.run(sp.diff(loss_expr, a[L][S, J]), ctx), "dL/da at the output")
    jac = layers[-1].jacobian[-1][1]
    stages = simp.run(sp.Sum(dL_da.rhs.xreplace({J: I}) * jac, (I, 0, n[L] - 1)), ctx)
    out_rule, out_act = layers[-1].rule, network.layers[-1].activation
    if out_rule is not None and network.loss.outputs and out_act.name not in network.loss.outputs:
        # a loss after an activation it is not paired with (allow_any_output): nothing cancels
        # between them, so delta keeps the chain-rule product f'(z) * dL/da (the UDL toy example:
        # I[f > 0] (h - y)/(h (1 - h)))
        fprime = out_rule.form.xreplace({As: a[L][S, J], Zs: z[L][S, J]})
        stages.append(("chain", fprime * dL_da.rhs))
    eq(f"delta{L}", "output_delta", L, delta[L][S, J], stages, "dL/dz = sum_i dL/da_i da_i/dz_j")
    for l in range(L, 0, -1):
        t, m = templates[l - 1], names[l - 1]
        if l < L:
            eq(f"delta{l}", "delta", l, delta[l][S, J], _rename(t["delta"], m, caches[l - 1]),
               "dL/dz = sum_i dL/da_i da_i/dz_j")
        eq(f"ga{l - 1}", "backprop" if l > 1 else "input_grad", l - 1, ga[l - 1][S, I],
           _rename(t["g_in"], m, caches[l - 1]), "dL/da_prev = W^T delta")
    for l in range(1, L + 1):
        t, m = templates[l - 1], names[l - 1]
        eq(f"gW{l}", "grad_W", l, naming.quantity("gW", l)[P, Q], _rename(t["gW"], m, caches[l - 1]),
           "dL/dW = delta a^T")
        if network.layers[l - 1].bias:
            eq(f"gb{l}", "grad_b", l, naming.quantity("gb", l)[P], _rename(t["gb"], m, caches[l - 1]),
               "dL/db = delta")

    for e in equations:
        if e.rhs.has(sp.KroneckerDelta) or e.rhs.has(sp.Derivative):
            raise DerivationError(f"{network.name}: could not collapse {e.name} = {e.rhs}")
    return Derivation(network, tuple(equations), layers, loss_sample, c)


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

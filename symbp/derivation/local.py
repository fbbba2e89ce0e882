"""The local forms both derivations read: an activation's derivative f'(z) and its rewrite in
terms of its output (``output_form``: sigmoid' -> a (1 - a)), the rewrite rule that puts those
forms into a derivative (``_forward_rule``), and the per-sample loss the kernels compute, from
the logits where a cross-entropy allows it (``_loss_from_logits``)."""
from functools import lru_cache

import mpmath
import sympy as sp

from .. import naming
from ..model import ops
from . import simplify as simp

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


_softmax_z = ops.softmax_z


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

"""Simplification passes: named values, applied in the order of ``PASSES``.

Contract: each pass is a ``Pass(name, doc, fn)`` with ``fn(expr, ctx) -> expr``, exact (never
changing the value of an expression where the network is defined). ``run(expr, ctx)`` applies
the passes in order and returns every stage, so ``symbp derive --dump`` can show what each pass
did. The order is:

1. ``collapse``: evaluate sums of Kronecker deltas (``doit``) and take the in-range branch of the
   ``Piecewise`` that SymPy leaves on an index range (indices are always in range here);
2. ``kink``: the network's ``relu_at_zero`` convention (``Context.at_zero``) at a kink:
   ``Heaviside(x)`` -> ``Heaviside(x, h0)`` with h0 = relu_at_zero, and each branch condition of
   a ``Piecewise`` derivative made to own (or not own) its boundary point (``one_sided``):
   0 takes the derivative from the left (ReLU'(0) = 0, leaky ReLU'(0) = slope: PyTorch, JAX),
   1 from the right (ReLU'(0) = 1, leaky ReLU'(0) = 1: the CS231n-style slides and the book
   chapter "Backpropagation" take ReLU'(0) = 1);
3. ``forward_outputs``: rewrite in terms of forward values (f'(z) as a function of a = f(z)
   where exact, ``derive.output_form``), so the backward pass reuses stored outputs;
4. ``onehot``: substitute sum_i y_i = 1 for one-hot targets (categorical cross-entropy);
5. ``cancel``: rational cancellation, keeping the form with the fewest operations; this is
   where sigmoid + bce and softmax + ce become a - y;
6. ``sign``: sign normalisation, -a (a - 1) -> a (1 - a).
Common subexpression elimination happens when code is printed (``codegen.printer``).
"""
from dataclasses import dataclass, field
from typing import Callable

import sympy as sp


@dataclass(frozen=True)
class Pass:
    name: str
    doc: str
    fn: Callable


@dataclass
class Context:
    """What passes need to know about the network: forward rewrites, one-hot targets and the
    derivative taken at a kink (``at_zero``: the network's relu_at_zero, 0 or 1)."""

    forward: list = field(default_factory=list)   # callables expr -> expr
    onehot: list = field(default_factory=list)    # (y IndexedBase, unit-size symbol)
    at_zero: int = 0


def _is_index_condition(cond):
    return all(getattr(s, "is_integer", False) for s in cond.free_symbols)


def _in_range(expr):
    """Piecewise((e, index range), (0, True)) -> e."""
    def take(pw):
        (first, cond), rest = pw.args[0], pw.args[1:]
        if _is_index_condition(cond) and all(c == sp.true or _is_index_condition(c) for _, c in rest):
            return first
        return pw
    return expr.replace(lambda e: isinstance(e, sp.Piecewise), take)


def _hoist_deltas(expr):
    """Piecewise((d*x, c), (d*y, True)) -> d*Piecewise((x, c), (y, True)) for a Kronecker delta d,
    so that the sum over the delta's index can collapse."""
    def hoist(pw):
        common = None
        for e, _ in pw.args:
            ds = {f for f in sp.Mul.make_args(sp.factor_terms(e)) if isinstance(f, sp.KroneckerDelta)}
            common = ds if common is None else common & ds
        if not common:
            return pw
        d = sp.Mul(*sorted(common, key=str))
        return d * sp.Piecewise(*[(sp.factor_terms(e) / d, c) for e, c in pw.args])
    return expr.replace(lambda e: isinstance(e, sp.Piecewise) and e.has(sp.KroneckerDelta), hoist)


def _split_sums(expr):
    """Sum(f + g) -> Sum(f) + Sum(g), factors free of the summation index pulled out, and
    Sum_k delta(k, x) f(k) -> f(x) done here when SymPy's Sum would fold the delta back into a
    Piecewise (leaky ReLU's derivative)."""
    def split(e):
        body = sp.expand(e.function)
        out = []
        for t in sp.Add.make_args(body):
            t = _hoist_deltas(t)
            if len(e.limits) == 1 and t.has(sp.Piecewise):
                k = e.limits[0][0]
                ds = [f for f in sp.Mul.make_args(t) if isinstance(f, sp.KroneckerDelta) and k in f.args]
                if ds and k not in (ds[0].args[0] + ds[0].args[1] - k).free_symbols:
                    other = ds[0].args[0] + ds[0].args[1] - k
                    out.append((t / ds[0]).xreplace({k: other}))
                    continue
            out.append(sp.factor_terms(sp.Sum(t, *e.limits)))
        return sp.Add(*out)
    return expr.replace(lambda e: isinstance(e, sp.Sum), split)


def collapse(expr, ctx=None):
    for _ in range(8):
        new = _hoist_deltas(_in_range(_split_sums(expr).doit(deep=True)))
        if new == expr:
            break
        expr = new
    return expr


_STRICTER = {sp.GreaterThan: sp.StrictGreaterThan, sp.LessThan: sp.StrictLessThan}
_LOOSER = {sp.StrictGreaterThan: sp.GreaterThan, sp.StrictLessThan: sp.LessThan}


def _one_sided_condition(cond, at_zero):
    """``cond`` with its boundary point given to the side ``at_zero`` asks for.

    A condition ``e > 0`` (or ``<``, ``>=``, ``<=``, any two sides) linear in one real variable
    x selects the points right of its boundary when it grows with x (``e > 0``, slope > 0)
    and left of it otherwise. With at_zero = 1 (derivative from the right) a right-side
    condition includes its boundary and a left-side one excludes it; with 0 the reverse.
    Conditions on integer indices, or not linear in one variable, are left as they are."""
    if type(cond) not in _STRICTER and type(cond) not in _LOOSER:
        return cond
    e = cond.lhs - cond.rhs
    indexed = e.atoms(sp.Indexed)
    labels = {x.base.label for x in indexed}
    xs = sorted(indexed | {x for x in e.atoms(sp.Symbol) if not x.is_integer and x not in labels}, key=str)
    if len(xs) != 1:
        return cond
    slope = sp.diff(e, xs[0])
    if not slope.is_number or slope == 0 or sp.diff(slope, xs[0]) != 0:
        return cond
    greater = isinstance(cond, (sp.StrictGreaterThan, sp.GreaterThan))
    right = greater == bool(slope > 0)
    include = right == bool(at_zero)
    table = _LOOSER if include else _STRICTER
    new = table.get(type(cond))
    return new(cond.lhs, cond.rhs) if new is not None else cond


def one_sided(expr, at_zero):
    """Every Piecewise condition of ``expr`` through ``_one_sided_condition`` (see ``kink``)."""
    def fix(pw):
        return sp.Piecewise(*[(e, _one_sided_condition(c, at_zero)) for e, c in pw.args])
    return expr.replace(lambda e: isinstance(e, sp.Piecewise), fix)


def kink(expr, ctx=None):
    """The derivative at a kink: Heaviside(0) = h0 and Piecewise boundaries owned by the side
    that ``ctx.at_zero`` (the network's relu_at_zero, 0 by default) names."""
    h0 = sp.Integer(ctx.at_zero if ctx is not None else 0)
    expr = expr.replace(lambda e: isinstance(e, sp.Heaviside) and (len(e.args) == 1 or e.args[1] != h0),
                        lambda e: sp.Heaviside(e.args[0], h0))
    return one_sided(expr, h0)


def forward_outputs(expr, ctx):
    for rule in ctx.forward:
        expr = rule(expr)
    return expr


def onehot(expr, ctx):
    for ybase, size in ctx.onehot:
        expr = expr.replace(
            lambda e: (isinstance(e, sp.Sum) and isinstance(e.function, sp.Indexed)
                       and e.function.base == ybase and len(e.limits) == 1
                       and e.function.indices[-1] == e.limits[0][0]
                       and e.limits[0][1] == 0 and e.limits[0][2] == size - 1),
            lambda e: sp.Integer(1))
    return expr


def _ops(e):
    return sp.count_ops(e, visual=False)


def cancel(expr, ctx=None):
    if expr.has(sp.Sum):
        # Sums stay as they are; simplify the coefficients around them.
        return sp.collect(sp.expand(expr), sorted(expr.atoms(sp.Sum), key=str), evaluate=True)
    candidates = [expr]
    try:
        c = sp.cancel(expr)
        candidates += [sp.factor_terms(expr), c, sp.factor(c)]
    except (sp.PolynomialError, TypeError):
        candidates = [expr]   # not a rational function (e.g. Piecewise): keep it as it is
    return min(candidates, key=lambda e: (_ops(e), len(str(e))))


def _flip(mul):
    coeff, rest = mul.as_coeff_mul()
    if coeff != -1:
        return mul
    for idx, f in enumerate(rest):
        if isinstance(f, sp.Add):
            flipped = list(rest)
            flipped[idx] = sp.Add(*[-t for t in f.args])
            return sp.Mul(*flipped)
    return mul


def sign(expr, ctx=None):
    return expr.replace(lambda e: isinstance(e, sp.Mul), _flip)


COLLAPSE = Pass("collapse", "sum Kronecker deltas, take the in-range branch", collapse)
KINK = Pass("kink", "Heaviside(x) -> Heaviside(x, relu_at_zero): one-sided derivative at a kink", kink)
FORWARD = Pass("forward_outputs", "rewrite in terms of forward outputs a = f(z)", forward_outputs)
ONEHOT = Pass("onehot", "one-hot targets: sum_i y_i = 1", onehot)
CANCEL = Pass("cancel", "rational cancellation, fewest operations", cancel)
SIGN = Pass("sign", "sign normalisation: -a(a - 1) -> a(1 - a)", sign)

PASSES = (COLLAPSE, KINK, FORWARD, ONEHOT, CANCEL, SIGN)


def run(expr, ctx, passes=PASSES):
    """Apply ``passes`` in order; return [(stage name, expression), ...] starting at "derived"."""
    stages = [("derived", expr)]
    for p in passes:
        expr = p.fn(expr, ctx)
        stages.append((p.name, expr))
    return stages

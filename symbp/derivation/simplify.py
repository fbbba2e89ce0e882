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
5. ``cancel``: rational cancellation, keeping among the numerically stable forms (``stable``)
   the one with the fewest operations; this is where sigmoid + bce and softmax + ce become
   a - y;
6. ``sign``: sign normalisation, -a (a - 1) -> a (1 - a).
Common subexpression elimination happens when code is printed (``codegen.printer``).

Every choice among equal forms (here and in ``derive.output_form``) is made by ``choose``:
stable forms first (``stable``: evaluated as the kernel evaluates them, in float32 and float64,
for |z| up to 1e4, against a 50-digit reference), then the fewest operations. SymPy has no
timeout: expensive routines run only on expressions within MAX_OPS operations and MAX_DEGREE
(``too_big``); larger ones keep their unsimplified, exact form.
"""
import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable

import mpmath
from sympy.printing.pycode import MpmathPrinter
import numpy as np
import sympy as sp
from sympy.printing.numpy import NumPyPrinter

from .. import naming

_Z = naming.Z


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
    # (a, z, f): a = f(z) for the numerical check (``stable``); a and z are IndexedBases (one
    # layer) or the scalar symbols naming.A and naming.Z (an activation on its own)
    links: list = field(default_factory=list)


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
            if e == 0:
                continue        # 0 = d * 0 for any d (leaky ReLU with slope 0 is ReLU)
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
        body = e.function
        if not (isinstance(body, sp.Mul) and any(isinstance(f, sp.KroneckerDelta) for f in body.args)):
            # a delta times one factor needs no splitting: multiplying out (GELU's derivative)
            # would only make a form whose large terms cancel (see ``stable``)
            body = sp.expand(body)
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


# Work budget: SymPy has no timeout, so expensive routines (cancel, factor, expand, solve) are
# only called on expressions of at most this many operations (count_ops); larger ones keep
# their unsimplified, still exact, form. Measured (count_ops of the cancel pass's inputs): at
# most 8 for networks of built-in activations, 13 swish, 20 mish, 30 the tanh GELU; the
# limit leaves those their simplification. Nested exponentials grow past it quickly.
MAX_OPS = 40
# ... and only on polynomials of at most this degree in any one power: cancel/factor of
# (z + 1)**100000000 expands it (24 GB, then killed).
MAX_DEGREE = 16


def too_big(expr):
    """True where expensive routines are skipped (see MAX_OPS, MAX_DEGREE)."""
    if _ops(expr) > MAX_OPS:
        return True
    return any(p.exp.is_Number and abs(p.exp) > MAX_DEGREE for p in expr.atoms(sp.Pow))


def cancel(expr, ctx=None):
    if expr.has(sp.Sum):
        # Sums stay as they are; simplify the coefficients around them.
        if too_big(expr):
            return expr
        return sp.collect(sp.expand(expr), sorted(expr.atoms(sp.Sum), key=str), evaluate=True)
    candidates = [expr]
    if not too_big(expr):
        try:
            c = sp.cancel(expr)
            candidates += [sp.factor_terms(expr), c, sp.factor(c)]
        except (sp.PolynomialError, TypeError):
            candidates = [expr]   # not a rational function (e.g. Piecewise): keep it as it is
    return choose(candidates, expr, ctx)


def choose(candidates, exact, ctx=None):
    """The candidate to keep among forms equal to ``exact``: the stable ones (``stable``) first,
    then the fewest operations; ``exact`` itself when no candidate is stable."""
    candidates = list(dict.fromkeys(candidates))
    if ctx is not None and ctx.links and len(candidates) > 1:
        # where no form is stable (BCE's dL/da = (a - y)/(a (1 - a)) divides by 1 - a = 0 once
        # a rounds to 1, in every form), the one failing at the fewest points
        fails = {c: failures(c, exact, ctx) for c in candidates}
        least = min(fails.values())
        candidates = [c for c in candidates if fails[c] == least]
    return min(candidates, key=lambda e: (_ops(e), len(str(e)), str(e)))


# --- numerical stability: a stated criterion of every choice among equal forms ----------------
# Forms that are equal in exact arithmetic are not equal in floating point: GELU's derivative
# multiplied out, (1 + t)(c t z^3 - c z^3 + ...) with t = tanh(...), cancels large terms and is
# wrong by units at z = 1000 in float32; softplus + MSE written as (exp(a) - 1)(a - y) exp(-a)
# overflows to inf/NaN for a > 88 (float32) although the value is finite. A candidate is
# *stable* when, evaluated as a kernel evaluates it (each output a computed from z by the
# printed forward, ``codegen.printer.stable_forms``, then the candidate, all in float32 and in
# float64 NumPy arithmetic), it is finite and within STABILITY_TOLERANCE * max(1, |exact|) of a
# 50-digit mpmath evaluation of the exact expression at every z in STABILITY_POINTS where that
# exact value is real and representable in the dtype (exp(z) overflowing is legitimate).
# Quantities other than z and a (upstream gradients, targets, weights, the batch size) take
# the fixed moderate values OTHER_VALUES: stability here is about large pre-activations.
STABILITY_POINTS = (0.0, 0.5, -0.5, 3.0, -3.0, 30.0, -30.0, 100.0, -100.0, 1e3, -1e3, 1e4, -1e4)
STABILITY_TOLERANCE = {"float32": 1e-3, "float64": 1e-9}
OTHER_VALUES = (0.375, -0.625, 0.8125, 1.25, -1.5, 0.6875)
# expressions larger than this are not evaluated (lambdify of a huge tree is itself slow)
EVAL_MAX_OPS = 400


class UfuncMaxMin:
    """Max/Min as nested two-argument ufuncs: NumPyPrinter prints them as
    functools.reduce(numpy.amax, ...), and neither a generated module (nor njit's objmode block)
    nor the stability check imports functools."""

    def _print_Max(self, e):
        return self._fold("numpy.maximum", e.args)

    def _print_Min(self, e):
        return self._fold("numpy.minimum", e.args)

    def _fold(self, fn, args):
        out = self._print(args[0])
        for a in args[1:]:
            out = f"{fn}({out}, {self._print(a)})"
        return out


class _CheckPrinter(UfuncMaxMin, NumPyPrinter):
    """NumPy source that keeps a float32 array float32 (SymPy's Heaviside prints as an integer
    select, which promotes), with the kernels' helpers _sigmoid/_softplus as NumPy functions."""

    def _print_Heaviside(self, e):
        h0 = e.args[1] if len(e.args) > 1 else sp.Rational(1, 2)
        return f"numpy.heaviside({self._print(e.args[0])}, {float(h0)!r})"

    def _print_Mul(self, e):
        # as codegen.printer.NumbaPrinter: x * Heaviside(c, 0) is 0 where c <= 0, whatever x is
        steps = [f for f in e.args if isinstance(f, sp.Heaviside) and len(f.args) == 2 and f.args[1] == 0]
        if not steps:
            return super()._print_Mul(e)
        rest = sp.Mul(*[f for f in e.args if f not in steps])
        conds = " & ".join(f"({self._print(h.args[0])} > 0)" for h in steps)
        return f"numpy.where({conds}, {self._print(rest)}, 0.0)"

    def _print__sigmoid(self, e):
        return f"_np_sigmoid({self._print(e.args[0])})"

    def _print__softplus(self, e):
        return f"numpy.logaddexp(0, {self._print(e.args[0])})"


def _np_sigmoid(x):
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


def _substituted(expr, links, printed):
    """(expr with each linked output a replaced by f(z), the z symbols); ``printed`` uses the
    forward as the kernel prints it (stable helpers)."""
    rep, zs = {}, set()
    for a, z, f in links:
        g = stable_forms(f) if printed else f
        if isinstance(a, sp.Symbol):
            if expr.has(a):
                rep[a] = g
            zs.add(z)
            continue
        for x in expr.atoms(sp.Indexed):
            if x.base == a:
                rep[x] = g.xreplace({_Z: z[x.indices]})
        zs |= {x for x in expr.atoms(sp.Indexed) if x.base == z}
        zs |= {z[x.indices] for x in rep if isinstance(x, sp.Indexed) and x.base == a}
    return expr.xreplace(rep), zs


def _arguments(expr, zs):
    """(z dummies, other dummies, expr over dummies) or None when expr cannot be evaluated (a
    sum: index structure, not values). Index symbols only occur inside
    quantities; the batch size and widths (positive integers) are values like the others."""
    if expr.has(sp.Sum, sp.Derivative):
        return None
    # a Jacobian's entries: every form is 0 off the diagonal; compare the diagonal
    expr = expr.replace(lambda e: isinstance(e, sp.KroneckerDelta), lambda e: sp.Integer(1))
    zs = sorted((z for z in zs if expr.has(z)), key=str)
    others = sorted((x for x in expr.atoms(sp.Indexed) if x not in zs), key=str)
    dz = [sp.Symbol(f"_zarg{i}", real=True) for i in range(len(zs))]   # Symbols, not
    # Dummies: lambdify rebuilds an expression over Dummies (seconds for nested tanh)
    do = [sp.Symbol(f"_oarg{i}", real=True) for i in range(len(others))]
    e = expr.xreplace(dict(zip(zs + others, dz + do)))
    rest = sorted(e.free_symbols - set(dz) - set(do), key=str)
    if any(x.is_integer and not x.is_positive for x in rest):
        return None         # a free index outside any quantity: not a value
    do += rest
    return dz, do, e


def _guarded(fn):
    """An mpmath function refused (OverflowError) for |x| > 1e6: mpmath computes exp(exp(30))
    exactly, which takes minutes (exp(1e6) is far beyond any dtype anyway)."""
    def call(x):
        if abs(x) > 1e6:
            raise OverflowError("argument too large to evaluate")
        return fn(x)
    return call


def _heaviside(x, h0):
    return mpmath.mpf(1) if x > 0 else (mpmath.mpf(0) if x < 0 else mpmath.mpf(h0))


class _MpmathPrinter(MpmathPrinter):
    """mpmath source with Heaviside as a plain step (SymPy's printer rewrites it as a Piecewise
    and simplifies that: half a minute for a derivative of max/min of a few functions)."""

    def _print_Heaviside(self, e):
        h0 = e.args[1] if len(e.args) > 1 else sp.Rational(1, 2)
        return f"_heaviside({self._print(e.args[0])}, {self._print(h0)})"

    # abs' of an argument SymPy cannot prove real is written with re, im and arg
    def _print_re(self, e):
        return f"re({self._print(e.args[0])})"

    def _print_im(self, e):
        return f"im({self._print(e.args[0])})"

    def _print_arg(self, e):
        return f"arg({self._print(e.args[0])})"

    def _print_Pow(self, e, rational=False):
        if e.exp.is_Integer and abs(e.exp) <= 64:
            return super()._print_Pow(e, rational)
        return f"_pow({self._print(e.base)}, {self._print(e.exp)})"


def _pow(base, exp):
    """base**exp refused (OverflowError) where its logarithm exceeds 1e6, as _guarded does for
    exp: mpmath would compute cosh(z)**exp(z) at z = 1e4 exactly, for minutes."""
    if base != 0 and abs(exp * mpmath.log(abs(base))) > 1e6:
        raise OverflowError("power too large to evaluate")
    return base ** exp


# the mpmath namespace of every high-precision evaluation here and in derive
MPMATH = [{"exp": _guarded(mpmath.exp), "sinh": _guarded(mpmath.sinh), "cosh": _guarded(mpmath.cosh),
           "_heaviside": _heaviside, "_pow": _pow}, "mpmath"]


def mpmath_function(args, expr):
    """lambdify(args, expr) evaluated with mpmath (see MPMATH, _MpmathPrinter)."""
    return sp.lambdify(args, expr, MPMATH, printer=_MpmathPrinter({"fully_qualified_modules": False}),
                       docstring_limit=0)

_EVAL_ERRORS = (OverflowError, RecursionError, ZeroDivisionError, ValueError, TypeError,
                ArithmeticError, NameError, KeyError, AttributeError, NotImplementedError)


@lru_cache(maxsize=4096)
def _reference(exact, links):
    """50-digit values of ``exact`` at STABILITY_POINTS (None where not real or not finite)."""
    e, zs = _substituted(exact, links, printed=False)
    args = _arguments(e, zs)
    if args is None:
        return None
    dz, do, e = args
    try:
        fn = mpmath_function(dz + do, e)
    except _EVAL_ERRORS:
        return None
    out = []
    with mpmath.workdps(50):
        for z0 in STABILITY_POINTS:
            try:
                v = fn(*[mpmath.mpf(z0)] * len(dz), *[mpmath.mpf(OTHER_VALUES[i % len(OTHER_VALUES)])
                                                       for i in range(len(do))])
                v = complex(v)
            except _EVAL_ERRORS:
                out.append(None)
                continue
            ok = v.imag == 0 and math.isfinite(v.real)
            out.append(v.real if ok else None)
    return tuple(out)


def _evaluate(candidate, links, dtype):
    """The candidate at STABILITY_POINTS in ``dtype`` arithmetic (None if it cannot be)."""
    e, zs = _substituted(candidate, links, printed=True)
    e = stable_forms(e)        # the candidate as printed (its sigmoids through the helper)
    args = _arguments(e, zs)
    if args is None:
        return None
    dz, do, e = args
    n = len(STABILITY_POINTS)
    vals = [np.array(STABILITY_POINTS, dtype=dtype)] * len(dz)
    vals += [np.full(n, OTHER_VALUES[i % len(OTHER_VALUES)], dtype=dtype) for i in range(len(do))]
    try:
        fn = sp.lambdify(dz + do, e, modules=[{"_np_sigmoid": _np_sigmoid}, "numpy"],
                         printer=_CheckPrinter({"fully_qualified_modules": False}), docstring_limit=0)
        with np.errstate(all="ignore"):
            out = np.broadcast_to(np.asarray(fn(*vals)), (n,))
    except _EVAL_ERRORS:
        return None
    if out.dtype.kind == "c":
        return None
    return out


def failures(candidate, exact, ctx):
    """How many (dtype, point) pairs break the stability criterion (see above): the candidate is
    not finite or not within tolerance of ``exact`` in float32 or float64 at a point of
    STABILITY_POINTS where ``exact`` is representable. 0 also when there is nothing to evaluate
    (no linked quantity, sums) or the expressions are too large to evaluate (the unsimplified
    form is kept there anyway); every pair when the candidate cannot be evaluated at all."""
    # only the layers this expression reads (a deep network's context links every layer)
    links = tuple(tuple(x) for x in ctx.links if exact.has(x[0]) or exact.has(x[1])
                  or candidate.has(x[0]) or candidate.has(x[1]))
    if not links:
        return 0
    if _ops(exact) > EVAL_MAX_OPS or _ops(candidate) > EVAL_MAX_OPS:
        return 0
    want = _reference(exact, links)
    if want is None:
        return 0
    count = 0
    for dtype, tol in STABILITY_TOLERANCE.items():
        got = _evaluate(candidate, links, dtype)
        if got is None:
            count += len(want)
            continue
        biggest = float(np.finfo(dtype).max)
        for w, g in zip(want, got):
            if w is None or abs(w) > biggest:
                continue
            # written as "not <=" so that a NaN never passes
            if not abs(float(g) - w) <= tol * max(1.0, abs(w)):
                count += 1
    return count


def stable(candidate, exact, ctx):
    """The stability criterion: no failures (``failures``)."""
    return failures(candidate, exact, ctx) == 0


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


# ---------------------------------------------------------------------------------------------
# exact rewrites into stable forms, for the code generator's printer (which prints _sigmoid and
# _softplus as calls of overflow-free helpers) and for this module's stability pass (which
# evaluates a candidate as the kernel will print it)
# ---------------------------------------------------------------------------------------------

class _sigmoid(sp.Function):
    """Stable logistic function (printing only: never evaluated or differentiated)."""


class _softplus(sp.Function):
    """Stable log(1 + exp(x)) (printing only)."""


def _is_exp(e):
    return isinstance(e, sp.exp)


def stable_forms(expr):
    """1/(1 + exp(-x))**n -> _sigmoid(x)**n; exp(-x) _sigmoid(x) -> _sigmoid(-x) (each factor
    overflows alone, the product does not); log(1 + exp(x)) -> _softplus(x).

    The sigmoids are substituted before any distribution, so that a factor 1/B next to
    1/(1 + exp(x)) is not multiplied into one denominator B exp(x) + B that no longer reads as
    a sigmoid (swish's delta); products are only distributed when a pair exp(-x) _sigmoid(x)
    can then form."""
    def sig(e):
        if (isinstance(e, sp.Pow) and e.exp.is_Integer and e.exp < 0 and isinstance(e.base, sp.Add)
                and len(e.base.args) == 2):
            one, ex = sorted(e.base.args, key=lambda t: not t.is_Number)
            # a constant is printed as a number (and _sigmoid(5/2) inside Max cannot be compared)
            if one == 1 and _is_exp(ex) and not ex.args[0].is_number:
                return _sigmoid(-ex.args[0]) ** (-e.exp)
        return None

    def soft(e):
        if isinstance(e, sp.log) and isinstance(e.args[0], sp.Add) and len(e.args[0].args) == 2:
            one, ex = sorted(e.args[0].args, key=lambda t: not t.is_Number)
            if one == 1 and _is_exp(ex) and not ex.args[0].is_number:
                return _softplus(ex.args[0])
        return None

    def pair(e):
        if not isinstance(e, sp.Mul):
            return None
        args = list(e.args)
        for idx, f in enumerate(args):
            base, n = (f.base, f.exp) if isinstance(f, sp.Pow) else (f, 1)
            if isinstance(base, _sigmoid) and sp.exp(-base.args[0]) in args:
                rest = [x for i, x in enumerate(args) if i != idx]
                rest.remove(sp.exp(-base.args[0]))
                return sp.Mul(_sigmoid(-base.args[0]), base ** (n - 1), *rest)
        return None

    expr = expr.replace(lambda e: sig(e) is not None, sig)
    sigmoids = [f for f in expr.atoms(_sigmoid) if expr.has(sp.exp(-f.args[0]))]
    if sigmoids:
        expr = sp.expand(expr, power_exp=False, power_base=False, log=False, multinomial=False)
        expr = expr.replace(lambda e: pair(e) is not None, pair)
    expr = expr.replace(lambda e: soft(e) is not None, soft)
    return expr


def sigmoid_forms(expr):
    """Exact rewrite for printing: where exp(x) also sits in a denominator (1 + exp(x)), as the
    derivative of an expression layer's sigmoid(x) does (exp(x)/(exp(x) + 1)**2), write exp(x) =
    u/(1 - u) with u = sigmoid(x) and cancel; kept only when the result no longer has exp(k x)
    and its denominator does not vanish at u = 0 or u = 1 (x -> -inf, +inf). Then
    exp(x)/(exp(x) + 1)**2 -> u (1 - u), evaluated by the stable _sigmoid helper: finite for any
    x, where the original overflows (inf/inf) beyond x ~ 44 (float32) or ~ 354 (float64).
    Skipped beyond the work budget (``too_big``: cancelling a 100th power took minutes) and for
    exp of a constant (nothing to overflow; _sigmoid(-1/1000) is no number SymPy compares)."""
    if too_big(expr):
        return expr
    for e in sorted(expr.atoms(sp.exp), key=sp.default_sort_key):
        if e not in expr.atoms(sp.exp):
            continue        # consumed by an earlier rewrite
        x = e.args[0]
        # the quantities x is made of (not the integer indices)
        core = x.atoms(sp.Indexed) | {a for a in x.atoms(sp.Symbol) if not a.is_integer}
        if not core:
            continue
        in_denominator = any(isinstance(p, sp.Pow) and p.exp.is_negative and isinstance(p.base, sp.Add)
                             and p.base.has(e) for p in expr.atoms(sp.Pow))
        if not in_denominator:
            continue
        u = sp.Dummy("u", positive=True)
        cand = sp.factor(sp.cancel(expr.xreplace({e: u / (1 - u), sp.exp(-x): (1 - u) / u})))
        # no exp of x's quantities may remain
        if any(a.args[0].has(*core) for a in cand.atoms(sp.exp)):
            continue
        den = sp.fraction(cand)[1]
        if den.has(u) and (den.xreplace({u: 0}) == 0 or den.xreplace({u: 1}) == 0):
            continue
        expr = sign(cand).xreplace({u: _sigmoid(x)})     # -u (u - 1) -> u (1 - u)
    return expr

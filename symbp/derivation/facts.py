"""Facts about a derivation that the renderers state in words, found here, not by the renderers.

Contract (every function is cached on its arguments, which are the Derivation's frozen parts):

- ``kinks(rule) -> tuple of Kink``: for an elementwise activation's ``ActivationRule``, every
  real point z0 where the derived f'(z) (its first stage, before the kink convention) switches
  (a Heaviside or sign argument, or a Piecewise condition, is zero; points ``sympy.solve``
  cannot find are left out), in SymPy's sort order. Each Kink holds the one-sided limits of the
  derivative the kernels use (the ``kink`` stage; None where ``sympy.limit`` cannot tell), the
  value used at z0, and which side that value is ("left", "right" or "neither"). A point where
  both limits agree is not a kink (``jump`` False).
- ``output_cancellation(delta, ga, batch_factor, has_rule) -> Cancellation or None``: whether
  the output layer's dL/dz (``delta``) is exactly c (a - y) (c the batch factor) although dL/da
  (``ga``) is not free of a in its denominator (so the activation's derivative cancelled
  against the loss's), and whether the one-hot pass took part (``onehot``).
- ``one_fraction(expr)``: ``expr`` as one factored fraction (``sympy.cancel`` then ``factor``)
  when that is exact (checked: the difference cancels to 0) and at most two operations longer,
  else ``expr`` unchanged (also for sums over indices and Piecewise). The LaTeX handout prints
  the output layer's dL/da and dL/dz so, which reads (a - y) / (a (1 - a)) for every loss.
- ``diagonal(jacobian)``: d where a local Jacobian entry J[s, i, j] is exactly d KroneckerDelta(i,
  j) (an elementwise node), else None. ``is_prediction_error(rhs, batch_factor, a, y)``: whether
  ``rhs`` is exactly c (a - y). The graph handout says so in words.
"""
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional

import sympy as sp

from .. import naming


@dataclass(frozen=True)
class Kink:
    point: sp.Expr
    left: Optional[sp.Expr]     # lim from below of the derivative the kernels use (None: unknown)
    right: Optional[sp.Expr]    # lim from above
    value: sp.Expr              # the derivative used at the point
    side: str                   # "left", "right" or "neither": which limit the value is

    @property
    def jump(self):
        return self.left is not None and self.right is not None and self.left != self.right


@dataclass(frozen=True)
class Cancellation:
    onehot: bool                # the one-hot pass (sum_i y_i = 1) changed dL/dz


def _switches(derived):
    args = [f.args[0] for f in derived.atoms(sp.Heaviside, sp.sign)]
    for pw in derived.atoms(sp.Piecewise):
        args += [c.lhs - c.rhs for _, c in pw.args if isinstance(c, sp.core.relational.Relational)]
    return args


def _limit(expr, z, point, direction):
    try:
        return sp.limit(expr, z, point, direction)
    except (NotImplementedError, ValueError, TypeError):
        return None


@lru_cache(maxsize=256)
def kinks(rule):
    """The kinks of an activation's derivative (see the module's contract)."""
    if rule is None:
        return ()
    z = naming.Z
    derived = rule.stages[0][1]
    used = dict(rule.stages).get("kink", derived)
    points = set()
    for u in _switches(derived):
        try:
            points.update(p for p in sp.solve(u, z) if p.is_real)
        except (NotImplementedError, ValueError, TypeError):
            continue
    out = []
    for p0 in sorted(points, key=sp.default_sort_key):
        left, right = _limit(used, z, p0, "-"), _limit(used, z, p0, "+")
        value = used.xreplace({z: p0})
        side = "left" if value == left else "right" if value == right else "neither"
        out.append(Kink(p0, left, right, value, side))
    return tuple(out)


@lru_cache(maxsize=256)
def output_cancellation(delta, ga, batch_factor, has_rule):
    """Cancellation when the output layer's dL/dz is the prediction error (module contract)."""
    L = delta.layer
    a, y = naming.quantity("a", L), naming.quantity("y")
    s, j = naming.S, naming.J
    if sp.expand(delta.rhs - batch_factor * (a[s, j] - y[s, j])) != 0:
        return None
    den = sp.fraction(sp.together(ga.rhs))[1]
    if not den.has(a) and has_rule:
        return None
    changed = [n for (n, e), (_, prev) in zip(delta.stages[1:], delta.stages) if e != prev]
    return Cancellation(onehot="onehot" in changed)


@lru_cache(maxsize=256)
def one_fraction(expr):
    """``expr`` as one factored fraction where exact and not longer (see the module's contract)."""
    if expr.has(sp.Sum, sp.Piecewise):
        return expr
    try:
        f = sp.factor(sp.cancel(expr))
    except (sp.PolynomialError, TypeError, ValueError):
        return expr
    if sp.cancel(f - expr) != 0 or sp.count_ops(f) > sp.count_ops(expr) + 2:
        return expr
    return f


@lru_cache(maxsize=256)
def diagonal(jacobian):
    """d when ``jacobian`` is d KroneckerDelta(i, j), else None (see the module's contract)."""
    delta = sp.KroneckerDelta(naming.I, naming.J)
    d = jacobian.coeff(delta)
    if d == 0 or sp.expand(jacobian - d * delta) != 0:
        return None
    return d


@lru_cache(maxsize=256)
def is_prediction_error(rhs, batch_factor, a, y):
    """True when ``rhs`` is exactly batch_factor (a - y) (see the module's contract)."""
    return sp.expand(rhs - batch_factor * (a - y)) == 0

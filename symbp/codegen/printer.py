"""Print SymPy expressions as Numba-compatible Python source.

Contract: ``NumbaPrinter(dtype)`` prints an expression of indexed quantities and the batch size
as one Python expression: ``Indexed`` as ``<ident>[<indices>]`` (identifiers from
``symbp.naming``), math functions as ``math.*`` (the CUDA compiler accepts those, NumPy calls it
does not), numbers as typed constants for float32 (a bare Python float would silently promote
float32 work to float64), integer powers as products, ``Heaviside(x, 0)`` and ``Piecewise`` as
conditional expressions, a product with ``Heaviside(c, 0)`` as ``(x if c > 0 else 0)`` (x is
not used where the step is 0: no inf * 0). Before printing, ``stable_forms`` (an exact
rewrite of the derivation stage, ``symbp.derivation.simplify``) turns 1/(1 + exp(-x))**n and
log(1 + exp(x)) into the functions ``_sigmoid`` and ``_softplus``, printed as calls of the
helpers whose source is in ``HELPERS``: stable for |x| up to 1e4 in float32 and float64. ``ArrayPrinter``
prints Max/Min as nested ``np.maximum``/``np.minimum`` (the module imports no functools).
"""
import sympy as sp
from sympy.printing.numpy import NumPyPrinter
from sympy.printing.pycode import PythonCodePrinter

from .. import naming
from ..derivation.simplify import UfuncMaxMin, _sigmoid, _softplus, stable_forms  # noqa: F401  (the printer's forms)
from ..errors import DerivationError


# Source of the helpers, emitted into a generated module when its expressions use them;
# {one} and {zero} become constants of the kernel's dtype.
HELPERS = {
    "_sigmoid": '''def _sigmoid(x):
    # 1/(1+exp(-x)) without overflow: exp of a non-positive number only.
    if x >= {zero}:
        return {one} / ({one} + math.exp(-x))
    e = math.exp(x)
    return e / ({one} + e)''',
    "_softplus": '''def _softplus(x):
    # log(1+exp(x)) = max(x, 0) + log1p(exp(-|x|)), finite for any finite x.
    return max(x, {zero}) + math.log1p(math.exp(-abs(x)))''',
}


def helpers_used(exprs):
    """Names of HELPERS an iterable of (stable-form) expressions calls, in HELPERS order."""
    used = set()
    for e in exprs:
        for f in e.atoms(sp.Function):
            used.add(type(f).__name__)
    return [name for name in HELPERS if name in used]


def helper_source(name, printer):
    """Source of helper ``name`` with constants typed for ``printer``'s dtype."""
    return HELPERS[name].format(one=printer._print(sp.Integer(1)), zero=printer._print(sp.Integer(0)))


class NumbaPrinter(PythonCodePrinter):
    """Python/Numba source for symbp's expressions, in one dtype."""

    printmethod = "_numbacode"

    def __init__(self, dtype="float64", names=None, settings=None):
        super().__init__(settings or {"fully_qualified_modules": True, "standard": "python3"})
        self.dtype = dtype
        self.names = names or {}    # extra Symbol -> identifier (loop temporaries, batch size)

    # numbers -------------------------------------------------------------------------------
    def _const(self, text):
        return f"np.float32({text})" if self.dtype == "float32" else text

    def _print_Integer(self, e):
        return self._const(f"{int(e)}.0")

    def _print_Rational(self, e):
        return self._const(repr(float(e)))

    def _print_Float(self, e):
        return self._const(repr(float(e)))

    def _print_Half(self, e):
        return self._const("0.5")

    _print_One = _print_Integer
    _print_Zero = _print_Integer
    _print_NegativeOne = _print_Integer

    def _print_Exp1(self, e):
        return self._const("math.e")

    def _print_Pi(self, e):
        return self._const("math.pi")

    # names ---------------------------------------------------------------------------------
    def _print_Symbol(self, e):
        if e in self.names:
            return self.names[e]
        return super()._print_Symbol(e)

    def _print_Indexed(self, e):
        idx = ", ".join(str(int(i)) if i.is_Integer else self._print(i) for i in e.indices)
        return f"{naming.ident(e.base)}[{idx}]"

    # operators -----------------------------------------------------------------------------
    def _print_Pow(self, e, rational=False):
        b, x = e.base, e.exp
        if x.is_Integer and 1 <= abs(int(x)) <= 4:
            base = self.parenthesize(b, 100)  # always parenthesize non-atoms
            prod = "*".join([base] * abs(int(x)))
            if abs(int(x)) > 1:
                prod = f"({prod})"   # y/x**2 must not print as y/x*x
            return prod if x > 0 else f"{self._const('1.0')}/{prod}"
        if x == sp.Rational(1, 2):
            return f"math.sqrt({self._print(b)})"
        return f"{self.parenthesize(b, 100)}**{self.parenthesize(x, 100)}"

    def _print_Heaviside(self, e):
        x = self._print(e.args[0])
        h0 = e.args[1] if len(e.args) > 1 else sp.Rational(1, 2)
        if h0 == 0:
            return f"({self._const('1.0')} if {x} > 0 else {self._const('0.0')})"
        return (f"({self._const('1.0')} if {x} > 0 else ({self._print(h0)} if {x} == 0 "
                f"else {self._const('0.0')}))")

    def _print_Mul(self, e):
        # x * Heaviside(c, 0) as a conditional: x is not used where the step is 0, so an x
        # that overflows there (elu's exp(z) H(1 - exp(z)) at large z) gives 0, not inf * 0 = nan
        steps = [f for f in e.args if isinstance(f, sp.Heaviside) and len(f.args) == 2 and f.args[1] == 0]
        if not steps:
            return super()._print_Mul(e)
        rest = sp.Mul(*[f for f in e.args if f not in steps])
        conds = " and ".join(f"{self._print(h.args[0])} > 0" for h in steps)
        return f"({self._print(rest)} if {conds} else {self._const('0.0')})"

    def _print_Max(self, e):
        return "max(" + ", ".join(self._print(a) for a in e.args) + ")"

    def _print_Min(self, e):
        return "min(" + ", ".join(self._print(a) for a in e.args) + ")"

    def _print_Abs(self, e):
        return f"abs({self._print(e.args[0])})"

    def _print_Piecewise(self, e):
        last_expr, last_cond = e.args[-1]
        if last_cond != sp.true:
            raise ValueError(f"Piecewise without a default branch: {e}")
        out = self._print(last_expr)
        for expr, cond in reversed(e.args[:-1]):
            out = f"({self._print(expr)} if {self._print(cond)} else {out})"
        return out

    def _print_Relational(self, e):
        return f"{self._print(e.lhs)} {e.rel_op} {self._print(e.rhs)}"

    def _print__sigmoid(self, e):
        return f"_sigmoid({self._print(e.args[0])})"

    def _print__softplus(self, e):
        return f"_softplus({self._print(e.args[0])})"

    # abs' of an argument SymPy cannot prove real comes with re, im and arg. The kernel computes
    # in real arithmetic: where the argument is real these are x, 0 and 0 or pi; where it is not
    # (z**0.5 of a negative z) the kernel's value is already NaN, and stays NaN.
    def _print_re(self, e):
        return self._print(e.args[0])

    def _print_im(self, e):
        return self._print(sp.Float(0.0))

    def _print_arg(self, e):
        x = self._print(e.args[0])
        return f"({self._print(sp.Float(0.0))} if {x} >= 0 else {self._print(sp.pi)})"

    def _print_Function(self, e):
        name = type(e).__name__
        if name in ("exp", "log", "tanh", "sinh", "cosh", "sin", "cos", "atan", "sqrt"):
            return f"math.{name}({', '.join(self._print(a) for a in e.args)})"
        raise DerivationError(f"the derivative contains the function {name}, which symbp cannot "
                              f"print for Numba: {str(e)[:80]}")

    _print_exp = _print_log = _print_tanh = _print_sinh = _print_cosh = _print_Function
    _print_sin = _print_cos = _print_atan = _print_Function


def is_transcendental(expr):
    """True if printing ``expr`` calls a transcendental function (a scalar libm call per
    element, which Numba cannot vectorize without SVML)."""
    return any(isinstance(f, sp.Function) and not isinstance(f, (sp.Max, sp.Min, sp.Heaviside,
                                                                   sp.Piecewise, sp.Abs))
               for f in expr.atoms(sp.Function)) or any(
        not e.exp.is_Integer for e in expr.atoms(sp.Pow))


class ArrayPrinter(UfuncMaxMin, NumPyPrinter):
    """Whole-array NumPy source: an Indexed quantity prints as its whole array, so the
    expression of one entry becomes the vectorized expression of all entries."""

    def __init__(self):
        super().__init__({"fully_qualified_modules": True})

    def _print_Indexed(self, e):
        return naming.ident(e.base)

    def _print__sigmoid(self, e):
        return f"scipy.special.expit({self._print(e.args[0])})"

    def _print__softplus(self, e):
        return f"numpy.logaddexp(0, {self._print(e.args[0])})"


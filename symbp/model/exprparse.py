"""Safe parser: expression text -> SymPy expression, never evaluating the text.

Contract: ``parse_expression(text, variables, functions, where)`` parses ``text`` with
Python's ``ast`` and accepts only numbers, the names in ``variables`` (mapped to SymPy
symbols), calls of the names in ``functions`` (mapped to callables that build SymPy
expressions) with positional arguments, the operators + - * / ** and unary +/-. Anything else
(attribute access, subscripts, keywords, lambdas, comprehensions, imports, dunder names,
strings, comparisons) raises ``ExpressionError`` naming the construct and its column. No
``eval``, ``exec``, ``sympify`` or ``parse_expr`` is used on the text: the result is built
node by node from SymPy constructors.

The work is bounded, so that any text answers within a fraction of a second: at most
``MAX_LENGTH`` characters and ``MAX_DEPTH`` levels of nesting; every numeric exponent, and the
exponent of every power SymPy forms while building (``(z**10)**20`` is ``z**200``), at most
``MAX_EXPONENT`` in magnitude; every constant, and every constant subexpression as it is built
(``10**100`` is refused before ``(10**100)**100`` is computed), finite with an exact numerator
and denominator at most ``MAX_CONSTANT`` (``1e308*1e308`` and ``1e-300`` are refused: they
would become a 300-digit literal in a kernel, or overflow float32/float64).
"""
import ast
from fractions import Fraction

import sympy as sp

from ..errors import ExpressionError, shown

MAX_LENGTH = 2000
MAX_DEPTH = 60
MAX_EXPONENT = 100   # a numeric exponent beyond this is refused (9**9**9 would take minutes)
MAX_CONSTANT = 10 ** 30   # bound of a constant's magnitude and of its exact numerator/denominator

_BINOPS = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
    ast.Pow: lambda a, b: a ** b,
}
_UNARY = {ast.USub: lambda a: -a, ast.UAdd: lambda a: a}
_CONSTANTS = {"pi": sp.pi, "E": sp.E}


def number(value, where="", key=""):
    """An exact SymPy number from a Python int or float (0.1 -> 1/10, by its shortest repr)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ExpressionError(where, key, f"expected a number, got {type(value).__name__}")
    if isinstance(value, int):
        return sp.Integer(value)
    if value != value or value in (float("inf"), float("-inf")):
        raise ExpressionError(where, key, f"expected a finite number, got {value}")
    f = Fraction(repr(value))
    return sp.Rational(f.numerator, f.denominator)


def _constant_problem(value):
    """Why a SymPy number built from user text is refused (None when it is acceptable).

    Exact rationals are judged by their numerator and denominator (cheap, exact); other
    constant expressions (``exp(100)``, ``pi**50``) by a 15-digit numerical value."""
    if value.is_Rational:
        if abs(value.p) > MAX_CONSTANT or value.q > MAX_CONSTANT:
            return "a constant beyond 1e30 in magnitude or precision"
        return None
    # Infinite or undefined values (log(0), zoo) are left to the callers' finiteness checks,
    # which say so in their own words; here only finite magnitudes are bounded.
    try:
        size = abs(value.evalf(15))
    except (TypeError, ValueError, ArithmeticError):
        return None      # not a plain number (e.g. a symbolic Max of constants): leave it
    if size.is_Number and size.is_finite and size > MAX_CONSTANT:
        return "a constant beyond 1e30 in magnitude"
    return None


def parse_expression(text, variables, functions, where="", key=""):
    """Build the SymPy expression written in ``text`` (see the module contract)."""
    if not isinstance(text, str):
        raise ExpressionError(where, key, f"expected an expression string, got {type(text).__name__}")
    if len(text) > MAX_LENGTH:
        raise ExpressionError(where, key, f"expression longer than {MAX_LENGTH} characters")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as e:
        raise ExpressionError(where, key, f"not a valid expression ({e.msg} at column {e.offset})") from None

    def fail(node, what):
        col = getattr(node, "col_offset", None)
        at = f" at column {col + 1}" if col is not None else ""
        raise ExpressionError(where, key, f"{what}{at} is not allowed in {shown(text)}")

    def bounded(node, expr):
        # Checked on every intermediate result, so no step can start from an already huge one.
        if expr.is_Pow and expr.exp.is_Number and abs(expr.exp) > MAX_EXPONENT:
            fail(node, f"a power with exponent above {MAX_EXPONENT} (it becomes {shown(expr)})")
        if expr.is_number:
            why = _constant_problem(expr)
            if why:
                fail(node, why)
        return expr

    def build(node, depth):
        if depth > MAX_DEPTH:
            fail(node, "nesting deeper than %d" % MAX_DEPTH)
        if isinstance(node, ast.Expression):
            return build(node.body, depth + 1)
        if isinstance(node, ast.Constant):
            if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
                fail(node, f"the constant {shown(node.value)}")
            if isinstance(node.value, float) and node.value in (float("inf"), float("-inf")):
                fail(node, f"the constant {shown(node.value)} (beyond float range)")
            value = number(node.value, where, key)
            if _constant_problem(value):
                fail(node, f"the constant {shown(node.value)} (magnitude or precision beyond 1e30)")
            return value
        if isinstance(node, ast.Name):
            if node.id.startswith("_"):
                fail(node, f"the name {node.id!r}")
            if node.id in variables:
                return variables[node.id]
            if node.id in _CONSTANTS:
                return _CONSTANTS[node.id]
            if node.id in functions:
                fail(node, f"the function {node.id!r} used without a call")
            allowed = ", ".join(sorted(variables)) or "none"
            fail(node, f"the unknown name {node.id!r} (variables: {allowed})")
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            left, right = build(node.left, depth + 1), build(node.right, depth + 1)
            if isinstance(node.op, ast.Pow) and right.is_Number and abs(right) > MAX_EXPONENT:
                fail(node, f"a numeric exponent above {MAX_EXPONENT}")
            return bounded(node, _BINOPS[type(node.op)](left, right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            return _UNARY[type(node.op)](build(node.operand, depth + 1))
        if isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name):
                fail(node, "a call of something other than a plain function name")
            name = node.func.id
            if name.startswith("_") or name not in functions:
                allowed = ", ".join(sorted(functions))
                fail(node, f"a call of the unknown function {name!r} (functions: {allowed})")
            if node.keywords or any(isinstance(a, ast.Starred) for a in node.args):
                fail(node, f"keyword or starred arguments to {name!r}")
            return bounded(node, functions[name](*[build(a, depth + 1) for a in node.args]))
        what = {
            ast.Attribute: "attribute access", ast.Subscript: "subscripting", ast.Lambda: "a lambda",
            ast.ListComp: "a comprehension", ast.GeneratorExp: "a comprehension",
            ast.SetComp: "a comprehension", ast.DictComp: "a comprehension",
            ast.Compare: "a comparison", ast.BoolOp: "a boolean operator", ast.IfExp: "a conditional",
            ast.NamedExpr: "an assignment expression",
        }.get(type(node), f"the construct {type(node).__name__}")
        fail(node, what)

    try:
        expr = build(tree, 0)
    except ExpressionError:
        raise
    except (TypeError, ValueError, ZeroDivisionError) as e:  # e.g. wrong number of arguments
        raise ExpressionError(where, key, f"cannot build {shown(text)}: {shown(str(e), quote=False)}") from None
    if expr.has(sp.zoo, sp.oo, -sp.oo, sp.nan, sp.I):
        raise ExpressionError(where, key, f"{shown(text)} is not a finite real expression "
                                          f"(it becomes {shown(expr, quote=False)})")
    return expr

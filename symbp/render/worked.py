"""Worked examples with numbers: the Derivation's own equations evaluated in exact arithmetic.

Contract:
- ``worked_example(derivation, params, x, y, decimals=2, lr=None, notation="cs231n",
  finite_differences=False) -> WorkedExample`` evaluates
  every equation of the Derivation (``Equation.rhs`` in index form) for concrete numbers: the
  widths ``n_l`` and the batch size ``B`` are substituted, the sums expanded with ``doit``, and
  the values of earlier equations substituted, all in exact SymPy arithmetic (inputs become
  Rationals, floats through their shortest decimal repr, ``exprparse.number``). Transcendental
  values (exp, log) stay exact SymPy expressions in ``.values``.
- What the steps print is the calculation by hand at ``decimals`` (``evaluate(rounding=...)``):
  every result and every function value (sigma, exp, log) rounded half up on the exact value
  and used rounded further on, so that every line can be recomputed from the numbers it shows
  ("=" where those numbers give the printed value exactly, "\\approx" where it was rounded; a
  given number that does not fit the decimals is printed exactly, as a fraction if need be).
  ``.hand`` holds these values; a gradient matrix that differs from the exact one says so and
  shows the exact values rounded. Where a rounded activation would land on a singularity of the
  loss (sigma(9) -> 1.00, log(1 - 1.00)), the first precision up to 12 that avoids it is used.
- A Given block (parameters, input(s), target(s), learning rate; exact) precedes step 1. With
  ``finite_differences=True`` every parameter gradient has beside it its central-difference
  estimate (L(theta + h) - L(theta - h)) / (2h), h = 10^-4, from the forward pass in float64.
- ``.values`` maps names to exact values: per-sample quantities (``z1``, ``a1``, ``ga1``,
  ``delta1``, ``x``, ``y``) are ``sympy.Matrix`` (B, n) with samples as rows, ``gW1`` is
  (n_out, n_in), ``gb1`` a column (n, 1), ``loss`` a scalar; the parameters (``W1``, ``b1``)
  and, with a learning rate, the updated ones (``W1_new``, ``b1_new``) too.
- ``.latex(document=False)`` and ``.markdown()`` render the Given block and numbered steps: each
  equation in index form, then per entry the formula, the formula with the numbers substituted,
  and the value ("delta = (a - y)/B = (0.73 - 1)/1 = -0.27"; long sums wrap at + and -); the
  forward pass also as a table of z and a per layer; gradients and the SGD update W - lr dL/dW
  as matrices (wide ones one per line).
- At a kink (ReLU exactly at z = 0) the derivation's own one-sided convention is used (the
  network's relu_at_zero: relu'(0) = 0, Heaviside(0) = 0, as PyTorch and JAX, or 1) and a note
  says so; no error. A layer without bias has no ``b<l>`` in params, values or updates.
- User mistakes raise ``SymbpError`` subclasses with one line: a missing or unexpected params
  key, a wrong shape, a non-number, decimals outside 0..12, a log or reciprocal of zero (or a
  log of a negative number) in the loss or its gradient.
- ``evaluate(...)`` is the engine underneath; with ``rounding=d`` it evaluates as a student
  with a table would: every computed entry rounded to d decimals before it is used further,
  every value of a transcendental function (sigma(z), exp, log) rounded to d decimals and
  recorded (the exam module prints those records as the table of values a question gives).

The CLI subcommand ``symbp worked`` is added by ``add_command`` (module ``symbp.render.worked``).
"""
import itertools
import json
import sys
import tomllib
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import sympy as sp
from sympy.printing.latex import LatexPrinter
from sympy.printing.str import StrPrinter

from .. import naming
from ..derivation import facts
from ..errors import InputError, SymbpError
from .pdf import with_pdf, write_all
from .sources import latex_cite
from ..model.exprparse import number

MAX_DECIMALS = 12
MAX_BATCH = 16
MAX_WIDTH = 32
# Steps with more entries than this show only the resulting matrix, not every entry's line.
MAX_ENTRY_LINES = 16
# LaTeX source length above which an entry's substituted form goes on its own line.
LINE_SPLIT = 110
# Matrices with this many columns or more go one per line.
WIDE = 4
# Visible characters (about 2.3 mm each) of one line of a long sum before it wraps at a + or -.
WRAP = 52

KIND_TITLES = {    # {a}, {z}, ... are the quantities' symbols in the chosen notation
    "forward_z": "Pre-activation of layer {l}: ${z}$",
    "forward_a": "Activation of layer {l} ({act}): ${a}$",
    "loss": "Loss ${L}$ ({loss}, {reduction} over the batch)",
    "loss_grad": "Gradient of the loss with respect to the output: ${ga}$",
    "output_delta": "Output delta ${delta}$",
    "backprop": "Backpropagate to layer {l}: ${ga}$ from ${delta1}$ and ${W1}$",
    "delta": "Delta of layer {l}: ${delta}$, ${ga}$ times the local derivative",
    "input_grad": "Gradient with respect to the input: ${ga}$",
    "grad_W": "Weight gradient ${gW}$",
    "grad_b": "Bias gradient ${gb}$",
}
PHASES = {"forward_z": "forward", "forward_a": "forward", "loss": "forward",
          "loss_grad": "backward", "output_delta": "backward", "backprop": "backward",
          "delta": "backward", "input_grad": "backward", "grad_W": "gradients", "grad_b": "gradients"}


# ------------------------------------------------------------------------------------------
# exact input values
# ------------------------------------------------------------------------------------------

def as_sympy(value):
    """A SymPy number from a SymPy expression, an int, a Fraction or a float; never from text
    (spec and user text is never evaluated)."""
    if isinstance(value, sp.Basic):
        return value
    if isinstance(value, (bool, str)):
        raise TypeError(f"expected a number, got {value!r}")
    if isinstance(value, (int, Fraction)):
        return sp.Rational(value.numerator, value.denominator)
    if isinstance(value, float):
        return sp.Float(value)
    raise TypeError(f"expected a number, got {type(value).__name__}")

def exact(value, where="", key=""):
    """An exact SymPy Rational from an int, float (shortest repr), Fraction or SymPy Rational."""
    if isinstance(value, sp.Basic):
        if value.is_Rational:
            return value
        raise InputError(f"{where}: {key}: expected a rational number, got {value}")
    if isinstance(value, Fraction):
        return sp.Rational(value.numerator, value.denominator)
    if not isinstance(value, bool) and type(value).__module__ == "numpy" and hasattr(value, "item"):
        value = value.item()    # numpy scalars: their Python value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{where}: {key}: expected a number, got {type(value).__name__} {value!r}")
    try:
        return number(value, where, key)
    except SymbpError as e:
        raise InputError(str(e)) from None


def _nested(value):
    """Lists from lists, tuples and numpy arrays (without importing numpy here)."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_nested(v) for v in value]
    return value


def _shape_text(shape):
    if len(shape) == 1:
        return f"a list of {shape[0]} number{'s' if shape[0] != 1 else ''}"
    return f"{shape[0]} rows of {shape[1]} numbers ([[...], ...], shape {shape})"


def exact_matrix(value, shape, where, key):
    """sympy.Matrix of exact entries from nested lists of ``shape`` (a 1-tuple gives a column)."""
    if isinstance(value, sp.MatrixBase) and len(shape) == 1 and 1 in value.shape:
        value = list(value)        # a column (or row) Matrix for a vector, as .values holds them
    value = _nested(value)
    want = _shape_text(shape)
    if len(shape) == 1:
        if not isinstance(value, list) or any(isinstance(v, list) for v in value) or len(value) != shape[0]:
            got = f"{len(value)} entries" if isinstance(value, list) else repr(value)
            raise InputError(f"{where}: {key}: expected {want}, got {got}")
        return sp.Matrix(shape[0], 1, [exact(v, where, f"{key}[{i}]") for i, v in enumerate(value)])
    rows, cols = shape
    if not isinstance(value, list) or len(value) != rows or \
            any(not isinstance(r, list) or len(r) != cols for r in value):
        if isinstance(value, list):
            lens = [len(r) if isinstance(r, list) else "a number" for r in value]
            got = f"{len(value)} rows of lengths {lens}"
        else:
            got = repr(value)
        raise InputError(f"{where}: {key}: expected {want}, got {got}")
    return sp.Matrix(rows, cols, [exact(v, where, f"{key}[{i}][{j}]")
                                  for i, r in enumerate(value) for j, v in enumerate(r)])


def exact_params(network, params, where="params"):
    """{"W1": Matrix, "b1": Matrix column, ...} checked against the network's shapes."""
    if not isinstance(params, dict):
        raise InputError(f"{where}: expected a mapping of {', '.join(network.param_shapes())}")
    shapes = network.param_shapes()
    for k in params:
        if k not in shapes:
            raise InputError(f"{where}: {k}: unexpected key (expected exactly: {', '.join(shapes)})")
    out = {}
    for k, shape in shapes.items():
        if k not in params:
            raise InputError(f"{where}: {k}: missing (expected {_shape_text(shape)})")
        out[k] = exact_matrix(params[k], shape, where, k)
    return out


def exact_batch(network, x, y, where=""):
    """(X (B, n0), Y (B, nL), batched). One sample may be given as flat lists (or a scalar y)."""
    n0, nL = network.sizes[0], network.sizes[-1]
    x, y = _nested(x), _nested(y)
    pre = f"{where}: " if where else ""
    if not isinstance(x, list) or not x:
        raise InputError(f"{pre}x: expected {n0} numbers (one sample) or rows of {n0} numbers (a batch)")
    batched = isinstance(x[0], list)
    rows = x if batched else [x]
    if len(rows) > MAX_BATCH:
        raise InputError(f"{pre}x: at most {MAX_BATCH} samples in a worked example, got {len(rows)}")
    X = exact_matrix(rows, (len(rows), n0), where or "input", "x")
    B = X.rows
    if not isinstance(y, list):
        y = [y]
    if not batched:
        y = [y]
    elif nL == 1 and all(not isinstance(v, list) for v in y):
        y = [[v] for v in y]
    Y = exact_matrix(y, (B, nL), where or "input", "y")
    if network.loss.onehot:
        for s in range(B):
            row = list(Y.row(s))
            if sum(row) != 1 or any(v < 0 or v > 1 for v in row):
                raise InputError(f"{pre}y: row {s + 1}: {network.loss.name} assumes one-hot targets "
                                 f"(entries in [0, 1] summing to 1), got {[str(v) for v in row]}")
    return X, Y, batched


def check_decimals(decimals):
    if isinstance(decimals, bool) or not isinstance(decimals, int) or not 0 <= decimals <= MAX_DECIMALS:
        raise InputError(f"decimals: expected an integer from 0 to {MAX_DECIMALS}, got {decimals!r}")
    return decimals


# ------------------------------------------------------------------------------------------
# display of numbers
# ------------------------------------------------------------------------------------------
APPROX_DIGITS = 60


def rounded(value, decimals, approx=None):
    """The exact Rational shown for ``value`` at ``decimals`` (half away from zero).

    ``approx``: a high-precision Float of an irrational ``value`` (display only), which spares
    evaluating a large exact expression again."""
    value = as_sympy(value)
    scale = sp.Integer(10) ** decimals
    if value.is_Rational:
        r = value * scale
    else:
        if approx is None:
            approx = sp.N(value, APPROX_DIGITS)
        r = sp.Rational(sp.Float(approx, APPROX_DIGITS) * scale)
    n = sp.floor(abs(r) + sp.Rational(1, 2))
    return sp.Rational(int(n) * (1 if r >= 0 else -1), int(scale))


def show(value, decimals, approx=None):
    """(text, exact): the number as displayed, and whether the display equals the value."""
    value = as_sympy(value)
    r = rounded(value, decimals, approx)
    exact_ = bool(value.is_Rational and r == value)
    if r == 0:
        return "0", exact_
    sign = "-" if r < 0 else ""
    n = abs(r) * sp.Integer(10) ** decimals
    digits = str(int(n)).rjust(decimals + 1, "0")
    whole, frac = (digits[:-decimals], digits[-decimals:]) if decimals else (digits, "")
    frac = frac.rstrip("0")
    return f"{sign}{whole}{'.' + frac if frac else ''}", exact_


# ------------------------------------------------------------------------------------------
# printing: quantities by name (symbol mode) or by their numbers (number mode)
# ------------------------------------------------------------------------------------------
PER_SAMPLE = ("a", "z", "y", "delta", "ga")


def _notation(notation):
    from .notation import get
    return get(notation)


def _index_strings(nt, indices):
    return [nt.index(i) if getattr(i, "is_Integer", False) or isinstance(i, int) else sp.latex(i)
            for i in indices]


def entry_name(base, indices, batch_single=False, notation="cs231n"):
    """LaTeX name of an entry in a notation (render.notation): z^{[1]}_{2}, f_{0,1} (udl),
    \\frac{\\partial L}{\\partial W^{[1]}_{12}}, ...

    Concrete indices are counted as the notation counts (from 1, or from 0 in chapter 14 "Backpropagation");
    our 0-based (row, column) become (column, row) for the kinds a notation stores transposed. The
    sample index of per-sample quantities is a superscript (s), or the row index in the batch
    notation; with ``batch_single`` (a batch of one) it is dropped. No indices: the symbol."""
    nt = _notation(notation)
    kind, layer = naming.parse(base)
    flavor = nt.main
    if not indices:
        return nt.symbol(kind, layer, flavor)
    idx, sample = list(indices), None
    if kind in PER_SAMPLE:
        s_ = idx.pop(0)
        if flavor == "batch":
            idx.insert(0, s_)
        elif not batch_single:
            sample = _index_strings(nt, [s_])[0]
    if kind in nt.transposed.get(flavor, ()) and len(idx) == 2:
        idx.reverse()
    return nt.entry(kind, layer, _index_strings(nt, idx), flavor, sample)


def symbol(kind, layer, notation="cs231n"):
    """LaTeX of a whole quantity (vector or matrix) in a notation."""
    nt = _notation(notation)
    return nt.symbol(kind, layer, nt.main)


def transposed(kind, notation="cs231n"):
    """Whether the notation stores this kind as the transpose of the derivation's matrix."""
    nt = _notation(notation)
    return kind in nt.transposed.get(nt.main, ())


class WorkedPrinter(LatexPrinter):
    """LaTeX of an equation's right-hand side for one entry.

    ``values=None``: quantities by name (1-based indices, sums printed from 1 to n).
    ``values={Indexed: exact value}``: every quantity and B printed as its rounded number
    (negative numbers in parentheses); ``self.inexact`` records whether a rounded number was
    printed."""

    def __init__(self, values=None, decimals=2, batch=None, batch_single=False, notation="cs231n",
                 approx=None, exact_inputs=False):
        super().__init__({"mul_symbol": "dot" if values is not None else None})
        self.values, self.decimals, self.batch = values, decimals, batch
        self.approx = approx or {}
        self.batch_single, self.notation = batch_single, notation
        self.exact_inputs = exact_inputs    # a rational that does not fit the decimals: exactly
        self.inexact = False

    def _number(self, v, approx=None):
        text, ok = show(v, self.decimals, approx)
        if not ok and self.exact_inputs and as_sympy(v).is_Rational:
            text, ok = _exact_text(v, self.decimals), True
            if text.startswith("-"):
                return rf"\left({text}\right)"
        self.inexact |= not ok
        return f"({text})" if text.startswith("-") else text

    def _print_Indexed(self, e):
        if self.values is not None:
            if e not in self.values:
                raise KeyError(f"no value for {e}")
            return self._number(self.values[e], self.approx.get(e))
        # braced, so that a power of it is not a double superscript
        return "{" + entry_name(e.base, e.indices, self.batch_single, self.notation) + "}"

    def _print_Symbol(self, e, style="plain"):
        if e == naming.BATCH:
            return self._number(self.batch) if self.values is not None else "B"
        return super()._print_Symbol(e)

    def _print_Heaviside(self, e, exp=None):
        rel = r"\ge" if len(e.args) == 2 and e.args[1] == 1 else ">"    # relu_at_zero = 1 or 0
        return rf"\mathbb{{I}}\left[{self._print(e.args[0])} {rel} 0\right]"

    def _print_Sum(self, e):
        # Counted as the entries are (from 1 in most notations): sum_{k=1}^{n} for k = 0 .. n-1.
        base = _notation(self.notation).index_base
        shifted = sp.Sum(e.function, *[(v, lo + base, hi + base) for v, lo, hi in e.limits])
        return super()._print_Sum(shifted)


def bmatrix(rows):
    """LaTeX bmatrix of rows of printed entries."""
    return r"\begin{bmatrix} " + r" \\ ".join(" & ".join(r) for r in rows) + r" \end{bmatrix}"


def _latex_matrix(m, decimals, approx=None):
    return bmatrix([[show(m[i, j], decimals, None if approx is None else approx[i, j])[0]
                     for j in range(m.cols)] for i in range(m.rows)])


def _visible(tex):
    """Rough count of the characters a LaTeX string prints (commands and braces dropped)."""
    import re
    return len(re.sub(r"\\[a-zA-Z]+|[{}^_ ]", "", tex))


def _split_frac(tex):
    """(numerator, denominator) where ``tex`` is one \\frac{..}{..} and nothing else, else None."""
    if not tex.startswith("\\frac{"):
        return None
    groups, i = [], len("\\frac")
    for _ in range(2):
        if i >= len(tex) or tex[i] != "{":
            return None
        depth, j = 0, i
        while j < len(tex):
            depth += {"{": 1, "}": -1}.get(tex[j], 0)
            if depth == 0:
                break
            j += 1
        groups.append(tex[i + 1:j])
        i = j + 1
    return tuple(groups) if i == len(tex) else None


def _wrap(tex, width=WRAP):
    """A long sum broken into lines of about ``width`` visible characters, at a top-level + or
    - (never inside braces or a \\left ... \\right pair); lines joined for an align cell."""
    if _visible(tex) <= width:
        return tex
    frac = _split_frac(tex)
    if frac is not None:     # a long sum over a short denominator: 1/B times the sum, broken
        num, den = frac
        inner = _wrap(num, width)
        if inner != num:
            return rf"\frac{{1}}{{{den}}} \Bigl( {inner} \Bigr)"
    parts, depth, start, i = [], 0, 0, 0
    while i < len(tex):
        if tex.startswith("\\left", i):
            depth += 1
            i += 5
            continue
        if tex.startswith("\\right", i):
            depth -= 1
            i += 6
            continue
        ch = tex[i]
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        elif depth == 0 and ch in "+-" and i > 0 and tex[i - 1] == " " and tex[i + 1:i + 2] == " ":
            parts.append(tex[start:i - 1])
            start = i
        i += 1
    parts.append(tex[start:])
    lines, cur = [], ""
    for p in parts:
        if cur and _visible(cur) + _visible(p) > width:
            lines.append(cur)
            cur = p
        else:
            cur = f"{cur} {p}" if cur else p
    lines.append(cur)
    return " \\\\ &\\quad ".join(lines)


# ------------------------------------------------------------------------------------------
# the evaluation engine
# ------------------------------------------------------------------------------------------
def _shape_of(lhs, net, B):
    """Concrete index ranges of an equation's left-hand side."""
    if not isinstance(lhs, sp.Indexed):
        return ()
    kind, layer = naming.parse(lhs.base)
    sizes = net.sizes
    if kind in ("a", "z", "delta", "ga", "y"):
        return (B, sizes[layer if layer is not None else -1])
    if kind == "gW":
        return (sizes[layer], sizes[layer - 1])
    if kind == "gb":
        return (sizes[layer],)
    raise SymbpError(f"worked example: cannot size the quantity {lhs}")


def _expand_sums(expr, subs):
    """Sums with their limits made concrete and expanded; B stays symbolic elsewhere (so that a
    factor 1/B is shown, not folded into the numbers)."""
    def expand(e):
        limits = [(v, lo.xreplace(subs), hi.xreplace(subs)) for v, lo, hi in e.limits]
        return sp.Sum(e.function, *limits).doit()
    for _ in range(8):     # nested sums expand from the inside out
        if not expr.has(sp.Sum):
            break
        expr = expr.replace(lambda e: isinstance(e, sp.Sum), expand)
    return expr


@dataclass(frozen=True)
class PlannedEntry:
    index: tuple          # concrete 0-based indices of the left-hand side
    lhs: sp.Expr          # concrete Indexed (or the loss symbol)
    expr: sp.Expr         # rhs with indices, widths and sums made concrete (B symbolic)


@dataclass(frozen=True)
class PlannedEquation:
    equation: object
    shape: tuple
    entries: tuple


_PLANS = {}


def plan(derivation, B):
    """Every equation expanded for batch size B: independent of the numbers, so it is cached
    (by identity, while the derivation lives) and an exam can evaluate many draws cheaply."""
    key = (id(derivation), B)
    hit = _PLANS.get(key)
    if hit is not None and hit[0] is derivation:
        return hit[1]
    net = derivation.network
    subs = {naming.width(l): sp.Integer(n) for l, n in enumerate(net.sizes)}
    subs[naming.BATCH] = sp.Integer(B)
    out = []
    for eq in derivation.equations:
        shape = _shape_of(eq.lhs, net, B)
        entries = [PlannedEntry((), eq.lhs, _expand_sums(eq.rhs, subs))] if not shape else []
        for index in (itertools.product(*[range(n) for n in shape]) if shape else ()):
            m = {sym: sp.Integer(v) for sym, v in zip(eq.lhs.indices, index)}
            lhs = eq.lhs.base[tuple(sp.Integer(v) for v in index)]
            entries.append(PlannedEntry(index, lhs, _expand_sums(eq.rhs.xreplace(m), subs)))
        out.append(PlannedEquation(eq, shape, tuple(entries)))
    if len(_PLANS) > 64:
        _PLANS.clear()
    _PLANS[key] = (derivation, tuple(out))
    return _PLANS[key][1]


_TRANSCENDENTAL = (sp.exp, sp.log, sp.tanh, sp.sinh, sp.cosh, sp.sin, sp.cos, sp.atan)


class _PlainPrinter(StrPrinter):
    """Plain text with 1-based indices, for error messages: a1[1,2]."""

    printmethod = "_symbp_plain"    # not Indexed's own _sympystr

    def _print_Indexed(self, e):
        return f"{e.base}[{','.join(str(int(i) + 1) for i in e.indices)}]"


def _singularity(entry, env, name, approx=None):
    """One line saying which log or reciprocal is singular in an entry, or None. A log of a
    non-positive number is refused even where a zero factor would hide it (y = 1 in (1 - y)
    log(1 - a)): the loss is not defined there, and the kernel would give NaN."""
    expr, pr = entry.expr, _PlainPrinter()
    for atom in sorted(expr.atoms(sp.log), key=sp.default_sort_key):
        if approx is not None and _clearly_positive(atom.args[0].xreplace(approx)):
            continue      # the exact sign test below is costly; most arguments are far from 0
        arg = atom.args[0].xreplace(env)
        if arg.is_zero or arg.is_extended_negative:
            what = "zero" if arg.is_zero else "a negative number"
            return (f"{name}: log of {what}: log({pr.doprint(atom.args[0])}) with "
                    f"{pr.doprint(atom.args[0])} = {pr.doprint(arg)} (indices 1-based); the loss "
                    f"is not defined there (a cross-entropy needs 0 < a < 1)")
    for atom in sorted(expr.atoms(sp.Pow), key=sp.default_sort_key):
        if atom.exp.is_negative and atom.base.xreplace(env).is_zero:
            return (f"{name}: reciprocal of zero: 1/({pr.doprint(atom.base)}) with "
                    f"{pr.doprint(atom.base)} = 0 (indices 1-based)")
    return None


def _clearly_positive(num):
    num = as_sympy(num).evalf(30)
    return bool(num.is_Float and num > sp.Float("1e-25"))


@dataclass(frozen=True)
class Kink:
    layer: int
    sample: int
    unit: int
    z: sp.Expr
    activation: str
    used: sp.Expr         # f'(z) the derivation uses there
    side: str             # "left", "right" or "neither"


@dataclass
class Evaluation:
    """Exact (or, with rounding, student-rounded) values of every entry of every equation."""

    env: dict                 # Indexed -> value (inputs, parameters, every computed entry)
    results: dict             # equation name -> {index tuple: value}
    approx: dict              # Indexed -> 60-digit Float of env's value (for display only)
    approx_results: dict      # equation name -> {index tuple: Float}
    kinks: list
    table: list               # rounding mode: [(latex of the function value, value), ...]


def _entry(key, i, j):
    """The Indexed of entry (i, j) of parameter ``key``: W1[i, j], or b1[i] of a bias column."""
    kind, layer = naming.parse(key)
    base = naming.quantity(kind, layer)
    return base[i] if kind == "b" else base[i, j]


def given_env(P, X, Y, conv=lambda v: v):
    """{Indexed: conv(value)} of the given numbers: inputs a0[s, k], targets y[s, k] and the
    parameters of P (a layer without bias has no b entries)."""
    a0, yb = naming.quantity("a", 0), naming.quantity("y")
    env = {a0[s, k]: conv(X[s, k]) for s in range(X.rows) for k in range(X.cols)}
    env.update({yb[s, k]: conv(Y[s, k]) for s in range(Y.rows) for k in range(Y.cols)})
    for key, m in P.items():
        env.update({_entry(key, i, j): conv(m[i, j]) for i in range(m.rows) for j in range(m.cols)})
    return env


def evaluate(derivation, P, X, Y, rounding=None):
    """Evaluate the derivation's equations in order on exact inputs (see the module contract).

    P: {"W1": Matrix, "b1": column Matrix, ...}; X (B, n0); Y (B, nL)."""
    B = X.rows
    env = given_env(P, X, Y)
    env[naming.BATCH] = sp.Integer(B)
    approx = {k: sp.Float(v, APPROX_DIGITS) for k, v in env.items()}
    approx_results = {}
    kinks, table = [], {}     # table: the function values looked up, first use first
    # the kinks of each layer's activation, found by the derivation stage
    kink_pts = {lr.layer: (lr, facts.kinks(lr.rule)) for lr in derivation.layers}
    results = {}

    record = table.setdefault
    for pe in plan(derivation, B):
        eq = pe.equation
        vals, nums = {}, {}
        for ent in pe.entries:
            name = _PlainPrinter().doprint(ent.lhs)
            if rounding is not None and eq.kind == "forward_a" and _elementwise(derivation, eq.layer):
                act = derivation.layers[eq.layer - 1].activation
                zval = env[naming.quantity("z", eq.layer)[ent.lhs.indices]]
                v = act.at(zval)
                if not v.is_Rational:
                    v = rounded(v, rounding)
                    record(rf"{act.latex}({show(zval, rounding)[0]})", v)
            else:
                if ent.expr.has(sp.log):
                    msg = _singularity(ent, env, name, approx)
                    if msg:
                        raise InputError(f"worked example: {msg}")
                v = ent.expr.xreplace(env)
                if rounding is not None:
                    v = _round_functions(v, rounding, record)
            if v.has(sp.zoo, sp.oo, -sp.oo, sp.nan):
                msg = _singularity(ent, env, name) or f"{name}: the value is not a finite number ({v})"
                raise InputError(f"worked example: {msg}")
            if rounding is not None:
                v = rounded(v, rounding)
            # Display values (and cheap sign tests) from 60-digit Floats: evaluating the growing
            # exact expressions again for every printed number costs far more.
            num = v if v.is_Rational else ent.expr.xreplace(approx).evalf(APPROX_DIGITS)
            if not num.is_Number:
                num = sp.N(v, APPROX_DIGITS)
                if not num.is_Number:       # complex: e.g. a log of a negative number
                    msg = _singularity(ent, env, name) or f"{name}: the value is not a real number ({v})"
                    raise InputError(f"worked example: {msg}")
            env[ent.lhs] = v
            vals[ent.index] = v
            approx[ent.lhs] = sp.Float(num, APPROX_DIGITS)
            nums[ent.index] = approx[ent.lhs]
            if eq.kind == "forward_z" and rounding is None:
                lr, found = kink_pts.get(eq.layer, (None, ()))
                for kink in found:
                    if abs(approx[ent.lhs] - kink.point) < sp.Float("1e-25") and _equal(v, kink.point):
                        kinks.append(Kink(eq.layer, ent.index[0], ent.index[1], v,
                                          lr.activation.name, kink.value, kink.side))
        results[eq.name] = vals
        approx_results[eq.name] = nums
    return Evaluation(env, results, approx, approx_results, kinks, list(table.items()))


def _elementwise(derivation, layer):
    return derivation.layers[layer - 1].rule is not None


def _equal(v, p):
    d = as_sympy(v - p)
    z = d.is_zero
    if z is None:
        z = abs(sp.N(d, 60)) < sp.Float("1e-50")
    return bool(z)


def _function_tex(e, decimals):
    """e^{0.5}, \\ln(0.668), \\tanh(1.2): a function value as a table lists it."""
    arg = e.args[0]
    a = show(arg, decimals)[0] if arg.is_Rational else sp.latex(arg)
    if isinstance(e, sp.exp):
        return f"e^{{{a}}}"
    name = {sp.log: r"\ln"}.get(e.func, "\\" + e.func.__name__)
    return f"{name}({a})"


def _round_functions(v, decimals, record):
    """Rounding mode: each transcendental function value (exp, log, ...) of a number is looked
    up in the table, i.e. rounded to ``decimals``, and recorded."""
    def look(e):
        r = rounded(e, decimals)
        record(_function_tex(e, decimals), r)
        return r
    return v.replace(lambda e: isinstance(e, _TRANSCENDENTAL) and e.is_number and not e.is_Rational, look)


def _matrix(vals, shape):
    if len(shape) == 2:
        return sp.Matrix(shape[0], shape[1], lambda i, j: vals[(i, j)])
    if len(shape) == 1:
        return sp.Matrix(shape[0], 1, lambda i, j: vals[(i,)])
    return vals[()]


# ------------------------------------------------------------------------------------------
# the worked example
# ------------------------------------------------------------------------------------------
@dataclass
class Line:
    lhs: str
    symbolic: str
    substituted: str      # "" when it would repeat the symbolic form
    relation: str         # "=" or "\approx" before the substituted form
    value: str            # "= 0.5" or "\approx 0.73"
    split: bool = False   # long: the substituted form and value go on a second line
    fd: str = ""          # central-difference estimate beside a parameter gradient ("\approx 0.12")


@dataclass
class Step:
    number: int
    phase: str
    name: str
    title: str
    formula: str          # the equation in index form
    lines: list
    matrix: str = ""      # LaTeX of the result as a matrix (gradients, updates)
    omitted: int = 0      # entries not shown line by line (large steps)


@dataclass
class WorkedExample:
    derivation: object
    decimals: int
    batch: int
    lr: object
    steps: list
    table: list           # forward table rows: (layer, unit, [(z text, a text) per sample])
    notes: list
    values: dict = field(default_factory=dict)
    heads: tuple = (("z", "a"), "x")    # the table's column symbols and the input's symbol
    sample_labels: list = field(default_factory=list)
    hand: dict = field(default_factory=dict)     # the rounded values shown, by name like values
    given: list = field(default_factory=list)    # rows of LaTeX items of the Given block
    finite_differences: dict = None              # central differences by gradient name, if asked

    @property
    def network(self):
        return self.derivation.network

    def _context(self):
        net = self.network
        return {
            "network": str(net).replace("_", r"\_"),
            "network_md": str(net),
            "phases": (("forward", "Forward pass"), ("backward", "Backward pass"),
                       ("gradients", "Parameter gradients"), ("update", "One SGD step")),
            "decimals": self.decimals,
            "batch": self.batch,
            "samples": self.sample_labels or list(range(1, self.batch + 1)),
            "zname": self.heads[0][0],
            "aname": self.heads[0][1],
            "input": self.heads[1],
            "steps": self.steps,
            "table": self.table,
            "notes": self.notes,
            "lr": show(self.lr, MAX_DECIMALS)[0] if self.lr is not None else None,
            "given": self.given,
            "fd": self.finite_differences is not None,
        }

    def latex(self, document=False):
        from ..output import environment
        return environment().get_template("latex/worked.tex.j2").render(document=document, **self._context())

    def markdown(self):
        from ..output import environment
        return environment().get_template("markdown/worked.md.j2").render(**self._context())

    def _repr_markdown_(self):
        return self.markdown()

    def __repr__(self):
        return f"<WorkedExample of {self.network.name}: {len(self.steps)} steps, B = {self.batch}>"


def _title(eq, net, notation):
    l = eq.layer
    act = net.layers[l - 1].activation.name if 1 <= l <= net.depth else ""
    sym = {}
    for kind in ("a", "z", "delta", "ga", "gW", "gb", "W"):
        try:
            sym[kind] = symbol(kind, l, notation) if (l >= 1 or kind in ("a", "ga")) else ""
        except KeyError:
            sym[kind] = ""
    nxt = l + 1 <= net.depth
    return KIND_TITLES[eq.kind].format(
        l=l, act=act.replace("_", r"\_"), loss=net.loss.name, reduction=net.reduction,
        L=_notation(notation).loss, delta1=symbol("delta", l + 1, notation) if nxt else "",
        W1=symbol("W", l + 1, notation) if nxt else "", **sym)


FD_STEP = sp.Rational(1, 10 ** 4)      # h of the central differences a handout shows


def _hand_evaluation(derivation, P, X, Y, decimals):
    """(evaluation, precision): the derivation evaluated as by hand (``rounding``), at
    ``decimals`` or, where a rounded value lands on a singularity (sigma(9) rounds to 1.00 and
    log(1 - 1.00) is undefined), at the first precision up to MAX_DECIMALS that has none."""
    for work in range(decimals, MAX_DECIMALS + 1):
        try:
            return evaluate(derivation, P, X, Y, rounding=work), work
        except InputError:
            continue
    raise InputError(f"worked example: no hand calculation up to {MAX_DECIMALS} decimals avoids "
                     "a log or reciprocal of zero")


def _exact_text(v, decimals):
    """A given number exactly: at ``decimals`` where that is exact, else its terminating
    decimal expansion (up to MAX_DECIMALS), else a fraction."""
    for d in (decimals, MAX_DECIMALS):
        text, ok = show(v, d)
        if ok:
            return text
    v = as_sympy(v)
    sign = "-" if v < 0 else ""
    return rf"{sign}\tfrac{{{abs(v.p)}}}{{{v.q}}}"


def _exact_matrix(m, decimals):
    return bmatrix([[_exact_text(v, decimals) for v in row] for row in m.tolist()])


def _forward_loss(derivation, B):
    """A float64 function of {Indexed: float} (inputs and parameters) giving the loss, from the
    Derivation's own forward and loss equations (for the central differences)."""
    steps = []
    for pe in plan(derivation, B):
        if pe.equation.kind not in ("forward_z", "forward_a", "loss"):
            continue
        for ent in pe.entries:
            atoms = sorted(ent.expr.atoms(sp.Indexed), key=sp.default_sort_key)
            dums = [sp.Dummy(f"v{i}") for i in range(len(atoms))]
            expr = ent.expr.xreplace(dict(zip(atoms, dums))).xreplace({naming.BATCH: sp.Integer(B)})
            steps.append((ent.lhs, atoms, sp.lambdify(dums, expr, modules=["math"])))

    def loss(env):
        env = dict(env)
        for lhs, atoms, fn in steps:
            env[lhs] = float(fn(*[env[a] for a in atoms]))
        return env[steps[-1][0]]
    return loss


def central_differences(derivation, P, X, Y, h=FD_STEP):
    """{"gW1": Matrix, "gb1": Matrix column, ...}: (L(theta + h) - L(theta - h)) / (2 h) for every
    parameter entry, the loss computed in float64 from the forward pass (the course slides'
    gradient check); ``h`` is exact, used as a float."""
    loss = _forward_loss(derivation, X.rows)
    env, hf = given_env(P, X, Y, float), float(h)

    def diff(key):
        up, down = dict(env), dict(env)
        up[key] += hf
        down[key] -= hf
        return sp.Float((loss(up) - loss(down)) / (2 * hf), 17)
    return {naming.grad_kind(key[0]) + key[1:]: sp.Matrix(m.rows, m.cols, lambda i, j: diff(_entry(key, i, j)))
            for key, m in P.items()}


def _given(net, P, X, Y, eta, decimals, notation, single):
    """Rows of LaTeX items of the Given block: a row per layer (its weights and biases), then
    the input(s), the target(s) and eta."""
    rows = []
    for l in range(1, net.depth + 1):
        row = []
        for kind in ("W", "b"):
            m = P.get(naming.param_key(kind, l))
            if m is None:       # a layer without bias
                continue
            if transposed(kind, notation):
                m = m.T
            row.append(f"{symbol(kind, l, notation)} = {_exact_matrix(m, decimals)}")
        rows.append(row)
    items = []
    rows.append(items)
    xs = symbol("a", 0, notation)
    if single:
        items.append(f"{xs} = {_exact_matrix(X.T, decimals)}")
        items.append(f"y = {_exact_matrix(Y.T, decimals)}")
    else:
        items.append(f"X = {_exact_matrix(X, decimals)}")
        items.append(f"Y = {_exact_matrix(Y, decimals)}")
    if eta is not None:
        items.append(rf"\eta = {_exact_text(eta, decimals)}")
    return rows


def worked_example(derivation, params, x, y, decimals=2, lr=None, notation="cs231n",
                   finite_differences=False):
    """The worked example of ``derivation`` at ``params``, input(s) ``x``, target(s) ``y``.

    params: {"W1": [[...]], "b1": [...], ...} of numbers (or numpy arrays); x: one sample
    ([x1, x2]) or a batch ([[...], [...]]); y likewise (a scalar for one output unit);
    decimals: 0..12, the precision of the hand calculation shown; lr: learning rate of the one
    SGD step shown (None: no step); notation: one of ``render.notation.NOTATIONS`` (symbols,
    index order and counting); finite_differences: show beside each parameter gradient its
    central-difference estimate (L(theta + h) - L(theta - h)) / (2h), h = FD_STEP, from the
    forward pass in float64.

    The steps show the calculation by hand: every result rounded to the working precision
    (half up, on the exact value) and used rounded in the next step, every function value
    (sigma, exp, log) rounded likewise, so that each line can be recomputed from the numbers
    it shows; "=" where the shown numbers give the shown value exactly, "\approx" where it was
    rounded. ``.values`` holds the exact values, ``.hand`` the rounded ones shown.
    """
    check_decimals(decimals)
    nt = _notation(notation)
    net = derivation.network
    if max(net.sizes) > MAX_WIDTH:
        raise InputError(f"worked example: layers of at most {MAX_WIDTH} units, got {net.sizes}")
    P = exact_params(net, params)
    X, Y, _ = exact_batch(net, x, y)
    eta = None if lr is None else exact(lr, "lr", "learning rate")
    if eta is not None and eta <= 0:
        raise InputError(f"lr: expected a positive learning rate, got {lr!r}")
    ev = evaluate(derivation, P, X, Y)
    hand, work = _hand_evaluation(derivation, P, X, Y, decimals)
    B = X.rows
    single = B == 1
    fd = central_differences(derivation, P, X, Y) if finite_differences else None
    h_tex = r"10^{-4}"
    steps = []
    sym_p = WorkedPrinter(batch_single=single, notation=notation)
    for number_, pe in enumerate(plan(derivation, B), 1):
        eq = pe.equation
        formula = f"{_lhs_text(eq.lhs, False, notation)} = {WorkedPrinter(notation=notation).doprint(eq.rhs)}"
        lines = []
        shown = pe.entries if len(pe.entries) <= MAX_ENTRY_LINES else ()
        kind = {"grad_W": "gW", "grad_b": "gb"}.get(eq.kind)
        for ent in shown:
            num_p = WorkedPrinter(values=hand.env, decimals=work, batch=B, batch_single=single,
                                  notation=notation, exact_inputs=True)
            value = hand.results[eq.name][ent.index]
            # "=" only where the numbers shown give exactly the value shown
            vexact = _equal(ent.expr.xreplace(hand.env), value)
            symbolic = sym_p.doprint(ent.expr)
            # a copy of one number: the value line says it
            substituted = "" if isinstance(ent.expr, sp.Indexed) or ent.expr.is_number else num_p.doprint(ent.expr)
            fd_text = ""
            if fd is not None and kind is not None:
                i, j = (ent.index + (0,))[:2]
                fd_text = r"\approx " + show(fd[eq.name][i, j], work)[0]
            # the central-difference column takes about 20 characters of the line
            split = len(symbolic) + len(substituted) > LINE_SPLIT or \
                _visible(symbolic) + _visible(substituted) + (20 if fd_text else 0) > WRAP
            lines.append(Line(_lhs_text(ent.lhs, single, notation), _wrap(symbolic), _wrap(substituted),
                              ("=" if not num_p.inexact else r"\approx"),
                              ("=" if vexact else r"\approx") + " " + show(value, work)[0], split, fd_text))
        matrix = ""
        if kind is not None:
            m, exact_m = _matrix(hand.results[eq.name], pe.shape), _matrix(ev.results[eq.name], pe.shape)
            fdm = fd[eq.name] if fd is not None else None
            if transposed(kind, notation):
                m, exact_m = m.T, exact_m.T
                fdm = fdm.T if fdm is not None else None
            rel = "=" if m == exact_m else r"\approx"
            # wide matrices one per line (the lines of a gather)
            sep = r" \\ " if m.cols >= WIDE else r"\quad "
            matrix = f"{symbol(kind, eq.layer, notation)} {rel} " + _latex_matrix(m, work)
            ma = exact_m.applyfunc(lambda v: sp.N(v, APPROX_DIGITS))
            if _latex_matrix(exact_m, work, ma) != _latex_matrix(m, work):
                matrix += sep + r"\text{(exact value rounded: }" + _latex_matrix(exact_m, work, ma) + r"\text{)}"
            if fdm is not None and not shown:
                matrix += (sep + rf"\text{{central differences, }} h = {h_tex}\text{{: }} "
                           + _latex_matrix(fdm, work))
        steps.append(Step(number_, PHASES[eq.kind], eq.name, _title(eq, net, notation), formula, lines, matrix,
                          len(pe.entries) - len(shown)))

    values, handv = {"x": X, "y": Y, **P}, {"x": X, "y": Y, **P}
    for pe in plan(derivation, B):
        values[pe.equation.name] = _matrix(ev.results[pe.equation.name], pe.shape)
        handv[pe.equation.name] = _matrix(hand.results[pe.equation.name], pe.shape)

    if eta is not None:
        for number_, key in enumerate(P, number_ + 1):     # W1, b1, W2, ... (no b of a layer without bias)
            kind, l = naming.parse(key)
            gname_ = naming.grad_kind(kind) + str(l)
            values[f"{key}_new"] = P[key] - eta * values[gname_]
            raw = P[key] - eta * handv[gname_]
            new = handv[f"{key}_new"] = raw.applyfunc(lambda v: rounded(v, work))
            sym, gname = symbol(kind, l, notation), symbol(naming.grad_kind(kind), l, notation)
            old, g_, new_ = P[key], handv[gname_], new
            if transposed(kind, notation):
                old, g_, new_ = old.T, g_.T, new_.T
            if transposed(kind, notation) != transposed("g" + kind, notation):
                gname = rf"\left({gname}\right)^{{T}}"      # the book chapter's row gradients
            eta_t = _exact_text(eta, work)
            rel = "=" if new == raw else r"\approx"
            formula = rf"{sym} \leftarrow {sym} - \eta\, {gname}, \quad \eta = {eta_t}"
            sep = r" \\ " if old.cols >= WIDE else " "
            matrix = (f"{{{sym}}}_{{\\text{{new}}}} = {_exact_matrix(old, work)}{sep}- {eta_t} "
                      f"{_latex_matrix(g_, work)}{sep}{rel} {_latex_matrix(new_, work)}")
            steps.append(Step(number_, "update", f"{key}_new", f"SGD update of ${sym}$", formula, [], matrix))

    table = [(l, nt.index(j), [(show(handv[f"z{l}"][s, j], work)[0] if l > 0 else "",
                                _exact_text(X[s, j], work) if l == 0 else show(handv[f"a{l}"][s, j], work)[0])
                               for s in range(B)])
             for l in range(net.depth + 1) for j in range(net.sizes[l])]

    notes = []
    if notation != "cs231n":
        notes.append(f"Notation: {nt.title}. {nt.note}")
    if single and nt.main != "batch":
        notes.append("One sample ($B = 1$): the sample index $s$ is dropped from the entries below.")
    why = "" if work == decimals else (f" ({decimals} decimals would round an activation onto a "
                                       "singularity of the loss)")
    notes.append(f"Worked by hand at {work} decimals{why}: every result, and every value of a "
                 f"function such as $\\sigma$, $\\exp$ or $\\log$, is rounded to {work} decimals "
                 f"(half up) and used rounded in the next step, so each line can be recomputed from "
                 r"the numbers it shows. ``$=$'' means the numbers shown give exactly the value "
                 r"shown, ``$\approx$'' that it was rounded.")
    if fd is not None:
        notes.append(r"Beside each parameter gradient: its central-difference estimate "
                     rf"$\bigl(L(\theta + h) - L(\theta - h)\bigr) / (2h)$ with $h = {h_tex}$, the loss "
                     "computed from the forward pass in double precision (the gradient check of "
                     + latex_cite("it5005", "checking gradients with central differences") + ").")
    for k in ev.kinks:
        zt = show(k.z, work)[0]
        where = "$" + entry_name(naming.quantity("z", k.layer), (sp.Integer(k.sample), sp.Integer(k.unit)),
                                 True, notation) + f" = {zt}$"
        where += "" if single else f" (sample {nt.index(k.sample)})"
        side = {"left": "the derivative from the left, as PyTorch and JAX use",
                "right": "the derivative from the right, relu_at_zero = 1",
                "neither": "neither one-sided derivative"}[k.side]
        f = net.layers[k.layer - 1].activation.latex
        notes.append(f"Kink: {where} is where ${f}$ is not differentiable; the derivation "
                     f"uses ${f}'({zt}) = {show(k.used, work)[0]}$ ({side}).")
    heads = (nt.scalars, symbol("a", 0, notation))
    w = WorkedExample(derivation, work, B, eta, steps, table, notes, values, heads,
                      [nt.index(s_) for s_ in range(B)])
    w.hand = handv
    w.given = _given(net, P, X, Y, eta, work, notation, single)
    w.finite_differences = fd
    return w


def _lhs_text(lhs, single, notation):
    if not isinstance(lhs, sp.Indexed):
        return _notation(notation).loss
    return entry_name(lhs.base, lhs.indices, single, notation)


# ------------------------------------------------------------------------------------------
# PDF and command line
# ------------------------------------------------------------------------------------------
def _numbers(text, what):
    """'1,2;3,4' -> [[1, 2], [3, 4]] of Fractions (no eval: Fraction parses '0.5', '1/3', '-2')."""
    rows = []
    for r, row in enumerate(text.split(";")):
        vals = []
        for c, tok in enumerate(row.split(",")):
            tok = tok.strip()
            try:
                vals.append(Fraction(tok))
            except (ValueError, ZeroDivisionError):
                raise InputError(f"{what}: row {r + 1}, entry {c + 1}: expected a number "
                                 f"(like 2, -0.5 or 1/3), got {tok!r}") from None
        rows.append(vals)
    return rows if len(rows) > 1 else rows[0]


def load_params(path):
    """Parameters from a JSON or TOML file (numbers only; the network checks keys and shapes)."""
    path = Path(path)
    where = str(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise InputError(f"{where}: cannot read the params file ({e.strerror})") from None
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            data = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
        elif suffix == ".toml":
            data = tomllib.loads(raw.decode("utf-8"))
        else:
            raise InputError(f"{where}: expected a .json or .toml params file")
    except UnicodeDecodeError:
        raise InputError(f"{where}: not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{where}: invalid JSON ({e.msg} at line {e.lineno})") from None
    except tomllib.TOMLDecodeError as e:
        raise InputError(f"{where}: invalid TOML ({e})") from None
    if not isinstance(data, dict):
        raise InputError(f"{where}: expected a table/object of W1, b1, ...")
    return data


def _no_constant(name):
    raise InputError(f"params: {name} is not a finite number")


def cmd_worked(args):
    from ..derivation.chain import derive
    from ..model.spec import load
    check_decimals(args.decimals)
    _notation(args.notation)
    net = load(args.spec)
    params = load_params(args.params)
    x, y = _numbers(args.x, "--x"), _numbers(args.y, "--y")
    lr = None
    if args.lr is not None:
        lr = _numbers(args.lr, "--lr")
        if len(lr) != 1 or isinstance(lr[0], list):
            raise InputError(f"--lr: expected one number, got {args.lr!r}")
        lr = lr[0]
    exact_params(net, params, where=str(args.params))   # errors name the file
    d = derive(net)
    w = worked_example(d, params, x, y, decimals=args.decimals, lr=lr, notation=args.notation,
                       finite_differences=args.finite_differences)
    # everything rendered before anything is written
    outputs = ([(args.latex, w.latex(document=True))] if args.latex else []) + \
        ([(args.markdown, w.markdown())] if args.markdown else [])
    if args.pdf and not args.latex:
        raise InputError("--pdf: needs --latex FILE (the PDF is written beside it)")
    for path in write_all(with_pdf(outputs, args.pdf)):
        print(f"wrote {path}")
    if not outputs:
        sys.stdout.write(w.markdown())
    return 0


def add_command(subparsers):
    p = subparsers.add_parser("worked", help="a worked example with numbers (exact arithmetic)")
    p.add_argument("spec", help="network spec (TOML)")
    p.add_argument("--params", required=True, metavar="FILE",
                   help='JSON or TOML file {"W1": [[...]], "b1": [...], ...}')
    p.add_argument("--x", required=True, help="input: 1,2 for one sample, 1,2;3,4 for a batch")
    p.add_argument("--y", required=True, help="target(s): 1 or 1;0 (rows separated by ;)")
    p.add_argument("--decimals", type=int, default=2, help="digits shown (0..12), default 2")
    p.add_argument("--lr", default=None, help="learning rate of the SGD step shown")
    p.add_argument("--notation", default="cs231n", help="cs231n | udl | transposed | rowvector | batch")
    p.add_argument("--finite-differences", action="store_true",
                   help="show each parameter gradient's central-difference estimate beside it")
    p.add_argument("--latex", metavar="FILE", help="write a LaTeX document")
    p.add_argument("--markdown", metavar="FILE", help="write Markdown")
    p.add_argument("--pdf", action="store_true", help="also compile the LaTeX to PDF (needs --latex)")
    p.set_defaults(fn=cmd_worked)

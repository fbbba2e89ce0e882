"""LaTeX of a Derivation: a teaching document in one of five notations, or its summary.

Contract:
- ``render(derivation, notation="cs231n", document=False, stages=False) -> str`` reads the
  Derivation only (never re-derives) and prints every formula with a SymPy printer.
  ``document=False`` gives the summary: one ``align*`` environment (starts with ``\\begin``, so
  Jupyter's ``_repr_latex_`` and a LaTeX document can both take it) with the matrix equations of
  the forward and backward pass and their shapes. ``document=True`` gives the handout
  (templates/latex/derivation.tex.j2): the network, Algorithm 14.1 of the book chapter
  "Backpropagation" in a box (templates/latex/algorithm.tex.j2), forward equations, loss, each
  local derivative and its rewriting in the forward outputs, the Jacobians (explicit matrices
  when both sizes are at most ``SMALL``), the chain rule at the output written as a textbook
  does (local factor, upstream factor, their product, then the simplification as one explained
  step), the delta recursion with the Hadamard product, the parameter and input gradients,
  shapes beside every matrix equation (dimension balancing), the vanishing-gradient bound when
  a layer is a sigmoid, and the works it cites (``render.sources``).
- ``stages=True`` (``symbp derive --latex F --stages``) adds every stage of SymPy's passes,
  labelled with the pass (legend ``PASS_LATEX``); the handout shows none of them.
- Printing rules: a Kronecker delta prints as the indicator ``\\mathbb{I}[i = j]`` (delta is the
  error in three notations); Heaviside(x, 0) as ``\\mathbb{I}[x > 0]``, in z where the derivation
  shows 1[a > 0] = 1[z > 0] (ReLU); products print their factors in a fixed order (indicators,
  weights, the activation's factors, the incoming gradient last); and every product follows one
  sign rule (``Printer._split``): a denominator is a product of positive factors (a - 1 ->
  1 - a), a numerator reads prediction minus target (y - a -> a - y). The output layer's dL/da
  and dL/dz are printed as one factored fraction (``Renderer.printed``, an exact rewrite), so
  binary cross-entropy gives (a - y) / (a (1 - a)) after any output activation.
- Notations (``NOTATIONS``, symbols and conventions in ``render.notation``): the matrix
  equations are read off the index form (``derivation.batch_form``) as SymPy matrix
  expressions in the derivation's convention, then each of the derivation's matrices is
  replaced by the notation's own matrix or its transpose and SymPy moves the transposes; so
  f = W^T a gives dW = a delta^T and the row-vector convention gives g_in = g_out W.
- ``write_document(derivation, path, notation, pdf=False, stages=False)`` writes the .tex
  atomically; with ``pdf=True`` it first compiles it (twice, for the section references) with
  ``render.pdf`` (pdflatex in a temporary directory) and puts the PDF beside the .tex. A
  missing or failing pdflatex raises a SymbpError (the failing run's log is kept beside the
  .tex and named) and writes neither file (``write_tex``, which the graph handout uses too).
- Shared with the graph handout (``render.graph_latex``; an MLP is a chain graph of the same
  registry): the printer base ``TexPrinter``, the matrix form of an equation (``matrix_form``,
  ``to_notation``), the rows of aligned equations and their stages, and ``write_tex``.
Same Derivation, same bytes.
"""
from collections import namedtuple
from pathlib import Path

import sympy as sp
from sympy.core.function import AppliedUndef
from sympy.printing.latex import LatexPrinter

from .. import naming
from ..derivation import facts
from ..derivation import simplify as simp
from ..output import environment
from ..derivation.equations import ColumnSum, Product, batch_form
from ..errors import SymbpError
from . import notation as _notation
from .pdf import PdfError, _first_error, compile_pdf
from . import sources as _sources
from .sources import text_mode as _text

NOTATIONS = tuple(_notation.NOTATIONS)
SMALL = 3            # explicit Jacobian matrices when both of their sizes are at most this
S, T, I, J = naming.S, naming.T, naming.I, naming.J
SAMPLE = (S, T)

# What each stage of SymPy's work did, for the legend of ``stages=True`` (math in math mode;
# a pass added to symbp.simplify without an entry here falls back to its plain doc).
PASS_LATEX = {
    "definition": "the forward definition",
    "derived": r"\texttt{sympy.diff} of the definition ($\theta$ is the unit step)",
    "collapse": r"sum over the indicators $\mathbb{I}[i = j]$, keep the in-range branch",
    "kink": r"at a kink the derivative from the left: $\theta(x) \to \mathbb{I}[x > 0]$",
    "forward_outputs": r"rewrite in terms of the forward outputs $a = f(z)$",
    "onehot": r"one-hot targets: $\sum_i y_i = 1$",
    "cancel": "rational cancellation, the form with the fewest operations",
    "sign": r"sign normalisation: $-a (a - 1) \to a (1 - a)$",
}
STAGE_DOCS = dict([("definition", PASS_LATEX["definition"]), ("derived", PASS_LATEX["derived"])]
                  + [(p.name, PASS_LATEX.get(p.name) or _text(p.doc)) for p in simp.PASSES])


# The losses in prose (name, description with its math in math mode); a loss added to the
# function table without an entry here falls back to its plain name and doc.
LOSS_TEXT = {
    "mse": ("squared-error", r"half the squared error $\tfrac12 \lVert a - y \rVert^2$ per sample"),
    "sse": ("squared-error", r"the squared error $\lVert a - y \rVert^2$ per sample"),
    "bce": ("binary cross-entropy", "binary cross-entropy"),
    "ce": ("cross-entropy", r"categorical cross-entropy (one-hot $y$)"),
}


def _loss_text(loss):
    return LOSS_TEXT.get(loss.name, (_text(loss.name), _text(loss.doc)))


def _call(fn, arg):
    """fn(arg), with growing parentheses only around tall arguments."""
    if any(t in arg for t in ("\\frac", "\\sum", "\\begin")):
        return rf"{fn}\left({arg}\right)"
    return f"{fn}({arg})"


# --------------------------------------------------------------------------------------------
# The printer

class TexPrinter(LatexPrinter):
    """What the printers of both handouts share (``Printer`` here, ``GraphPrinter`` of
    ``render.graph_latex``): concrete indices counted as the notation counts, the batch size B,
    sums with their limits from the notation's first index, dL/dv as a fraction, and vectors
    (``vector=True``) told by their entries."""

    negative_sum_bracketed = True       # sum_i (-x_i), not sum_i - x_i (the graph handout omits them)
    short_powers_of_sums = True         # (a - y) \odot (a - y), not (a - y)^{\odot 2} (likewise)

    def __init__(self, nt, mul_symbol, sample=False, vector=False):
        super().__init__({"mul_symbol": mul_symbol})
        self.nt, self.sample, self.vector = nt, sample, vector

    def _index(self, i):
        if isinstance(i, sp.Integer):
            return self.nt.index(i)
        return self._print(i)

    def _print_Symbol(self, e, style="plain"):
        if e == naming.BATCH:
            return "B"
        return super()._print_Symbol(e)

    def _print_Sum(self, e):
        parts = []
        for var, lo, hi in reversed(e.limits):
            if self.nt.index_base == 1 and lo == 0:
                lo, hi = lo + 1, hi + 1
            parts.append(rf"\sum_{{{self._print(var)}={self._print(lo)}}}^{{{self._print(hi)}}}")
        body = self._print(e.function)
        if isinstance(e.function, sp.Add) or (self.negative_sum_bracketed and body.startswith("-")):
            body = rf"\left({body}\right)"
        return " ".join(parts) + " " + body

    def _print_Derivative(self, e):
        (var, n), = e.variable_count
        return rf"\frac{{\partial {self._print(e.expr)}}}{{\partial {self._print(var)}}}"

    def _is_vec(self, e):
        return self.vector and bool(e.atoms(sp.Indexed))

    def _print_Pow(self, e):
        """A positive integer power of a vector is a Hadamard power: a ⊙ a, up to the cube, then
        a^{⊙ n}."""
        if self._is_vec(e.base) and e.exp.is_Integer and e.exp > 0:
            b = self._print(e.base)
            if not isinstance(e.base, sp.Indexed):
                b = rf"\left({b}\right)"
            short = e.exp <= 3 and (self.short_powers_of_sums or isinstance(e.base, sp.Indexed))
            return r" \odot ".join([b] * int(e.exp)) if short else rf"{b}^{{\odot {e.exp}}}"
        return super()._print_Pow(e)

    def _print_MatAdd(self, e):
        # the bias term last, as the courses write it: x W + 1 b, not 1 b + x W
        args = sorted(e.args, key=lambda a: any("ones" in m.name.split("|") for m in a.atoms(sp.MatrixSymbol)))
        return " + ".join(self._print(a) for a in args)

    def _sample_first(self, e, batch):
        """The indices of an entry without its sample index, which a batch matrix keeps as its
        row, and the sample as printed for a superscript (s) (None where it is not shown)."""
        idx, sample = list(e.indices), None
        if idx and idx[0] in SAMPLE:
            s = idx.pop(0)
            if batch:
                idx.insert(0, s)
            elif self.sample:
                sample = self._print(s)
        return idx, sample


class Printer(TexPrinter):
    """SymPy's LaTeX printer speaking one notation.

    Index form: ``Indexed`` quantities print as the notation's entries (sample index as a
    superscript (s) when ``sample`` is set, dropped otherwise; a row index in the batch
    flavor). ``vector=True`` prints them as whole vectors and products of vectors with the
    Hadamard product. Matrix expressions print the notation's own symbols (``own|kind|layer``
    MatrixSymbols), or explicit ``bmatrix`` entries from ``explicit``.
    """

    def __init__(self, ctx, flavor, sample=False, vector=False, explicit=None, scalars=None):
        super().__init__(ctx.nt, None, sample, vector)
        self.ctx, self.flavor = ctx, flavor
        self.explicit = explicit or {}
        self.scalars = scalars or {}

    def _print_Indexed(self, e):
        kind, layer = naming.parse(e.base)
        if kind == "a" and layer == 0:
            kind = "x"
        idx, sample = self._sample_first(e, self.flavor == "batch")
        if self.vector:
            return self.nt.symbol(kind, layer, self.flavor, sample)
        if kind in ("W", "gW") and "W" in self.nt.transposed[self.flavor]:
            idx = idx[::-1]      # the notation stores W transposed: our W[j,k] is its entry (k, j)
        return self.nt.entry(kind, layer, [self._index(i) for i in idx], self.flavor, sample)

    def _print_Symbol(self, e, style="plain"):
        if e in self.scalars:
            return self.scalars[e]
        return super()._print_Symbol(e)

    def _print_KroneckerDelta(self, e, exp=None):
        # an indicator, never a delta: delta is the error in three of the notations
        i, j = (self._index(a) for a in e.args)
        return _raised(rf"{INDICATOR}[{i} = {j}]", exp)

    def _print_Heaviside(self, e, exp=None):
        if len(e.args) != 2 or e.args[1] not in (0, 1):
            return super()._print_Heaviside(e, exp)
        x = e.args[0]
        if e.args[1] == 0 and isinstance(x, sp.Indexed) and self.ctx.indicator_in_z(x):
            # ReLU-like: 1[a > 0] = 1[z > 0], as the slides write it (the kink stage)
            x = naming.quantity("z", naming.parse(x.base)[1])[x.indices]
        arg = self._print(x)
        if e.args[1] == 1:          # relu_at_zero = 1: the step includes 0
            return _raised(rf"{INDICATOR}\left[{arg} \ge 0\right]", exp)
        return _raised(rf"{INDICATOR}\left[{arg} > 0\right]" if "\\frac" in arg else rf"{INDICATOR}[{arg} > 0]", exp)

    def _print_Function(self, e, exp=None):
        if isinstance(e, AppliedUndef) and e.func.__name__ in self.ctx.functions:
            out = _call(self.ctx.functions[e.func.__name__], self._print(e.args[0]))
            return out if exp is None else rf"{out}^{{{exp}}}"
        return super()._print_Function(e, exp)

    def _print_Pow(self, e):
        if isinstance(e.base, sp.Indexed) and not self.vector:
            return rf"\left({self._print(e.base)}\right)^{{{self._print(e.exp)}}}"
        return super()._print_Pow(e)

    def _split(self, e):
        """(negative, numerator factors, denominator factors) of a product, in the printed form.

        The sign rule of the printed derivatives, for every loss: a denominator is a product of
        positive factors (a - 1 -> 1 - a) and a numerator reads prediction minus target
        (y - a -> a - y); each flip moves a factor -1 to the front, so the value is unchanged; a
        minus left over flips a numerator factor a - 1 -> 1 - a."""
        coeff, rest = e.as_coeff_mul()
        neg = bool(coeff.is_negative)
        coeff = -coeff if neg else coeff
        num, den = [], []
        if coeff.is_Rational:
            num += [sp.Integer(coeff.p)] if coeff.p != 1 else []
            den += [sp.Integer(coeff.q)] if coeff.q != 1 else []
        elif coeff != 1:
            num.append(coeff)
        for f in rest:
            if f.is_Pow and f.exp.is_Rational and f.exp.is_negative:
                den.append(f.base if f.exp == -1 else sp.Pow(f.base, -f.exp))
            else:
                num.append(f)
        for part, flip in ((den, _negative_constant), (num, _target_minus_prediction)):
            for k, f in enumerate(part):
                if isinstance(f, sp.Add) and flip(f):
                    part[k], neg = -f, not neg
        # a minus left over goes into a numerator factor a - 1 -> 1 - a where there is one
        for k, f in enumerate(num):
            if neg and isinstance(f, sp.Add) and _negative_constant(f):
                num[k], neg = -f, False
        return neg, sorted(num, key=_factor_key), sorted(den, key=_factor_key)

    def _join(self, factors, sep=" ", alone=True):
        out = []
        for f in factors:
            s = self._print(f)
            if isinstance(f, sp.Add) and not (alone and len(factors) == 1):
                s = rf"\left({s}\right)"
            if _is_indicator(f) and f is not factors[-1]:
                s += r"\,"                 # 1[i = j]\, a_i: the bracket is not a product
            out.append(s)
        return sep.join(out) or "1"

    def _print_Mul(self, e):
        vector = self.vector and sum(1 for f in sp.Mul.make_args(e) if self._is_vec(f)) >= 2
        if not vector and not e.atoms(sp.Indexed):
            return super()._print_Mul(e)
        neg, num, den = self._split(e)
        if vector:
            def join(factors, sep=r" \odot "):
                scal = [f for f in factors if not self._is_vec(f)]
                vec = [f for f in factors if self._is_vec(f)]
                out = [self._join(scal, " ")] if scal else []
                if vec:
                    out.append(self._join(vec, sep, alone=not scal))
                return " ".join(out) or "1"
        else:
            join = self._join
        if not den:
            out = join(num)
        else:
            # indicators stay in front of the fraction: 1[z > 0] (a - y) / (a (1 - a))
            front = [f for f in num if _is_indicator(f)]
            rest = [f for f in num if not _is_indicator(f)]
            frac = rf"\frac{{{join(rest)}}}{{{join(den, ' ')}}}"
            out = (join(front) + (r" \odot " if vector else " ") + frac) if front else frac
        return f"- {out}" if neg else out

    def _print_Add(self, expr, order=None):
        # the terms print their own sign (the sign rule of _split may put a minus in front)
        out = ""
        for k, term in enumerate(self._as_ordered_terms(expr, order=order)):
            t = self._print(term)
            if self._needs_add_brackets(term):
                t = rf"\left({t}\right)"
            neg = t.startswith("-")
            t = t[1:].lstrip() if neg else t
            out += (("- " if neg else "") + t) if k == 0 else (f" - {t}" if neg else f" + {t}")
        return out

    # -- matrix expressions
    def _bmatrix(self, m):
        rows = [" & ".join(self._print(m[r, c]) for c in range(m.cols)) for r in range(m.rows)]
        return r"\begin{bmatrix} " + r" \\ ".join(rows) + r" \end{bmatrix}"

    def _print_MatrixSymbol(self, e):
        if e.name in self.explicit:
            return self._bmatrix(self.explicit[e.name])
        return self.ctx.own_latex(e.name, self.flavor, self.sample)

    def _print_Transpose(self, e):
        arg = e.arg
        if isinstance(arg, sp.MatrixSymbol) and arg.name in self.explicit:
            return self._bmatrix(self.explicit[arg.name].T)
        s = self._print(arg)
        simple = isinstance(arg, sp.MatrixSymbol) and not any(c in s for c in ("^", "\\frac", "\\left", " "))
        return f"{s}^{{T}}" if simple else rf"\left({s}\right)^{{T}}"

    def _print_MatMul(self, e):
        return " ".join(rf"\left({self._print(a)}\right)" if isinstance(a, (sp.MatAdd, sp.HadamardProduct))
                        else self._print(a) for a in e.args)

    def _print_HadamardProduct(self, e):
        # the activation derivative first, as the seeds write it: f'(z) ⊙ (W^T delta)
        args = sorted(e.args, key=lambda a: (not _is_derivative(a), sp.default_sort_key(a)))
        return r" \odot ".join(rf"\left({self._print(a)}\right)" if isinstance(a, (sp.MatMul, sp.MatAdd))
                               else self._print(a) for a in args)


INDICATOR = r"\mathbb{I}"     # 1[condition]; amssymb has no double-struck one


def _raised(out, exp):
    return out if exp is None else rf"\left({out}\right)^{{{exp}}}"


def _is_indicator(f):
    return isinstance(f, (sp.KroneckerDelta, sp.Heaviside))


def _kind(x):
    try:
        return naming.parse(x.base)[0]
    except KeyError:
        return None


def _negative_constant(f):
    """a - 1: its constant is negative, so 1 - a is the positive factor."""
    c, _ = f.as_coeff_Add()
    return bool(c.is_negative)


def _target_minus_prediction(f):
    """y - a (a target with +, an activation with -): printed as a - y."""
    signs = {}
    for t in f.args:
        c, m = t.as_coeff_Mul()
        if isinstance(m, sp.Indexed):
            signs.setdefault(_kind(m), set()).add(bool(c.is_positive))
    return signs.get("y") == {True} and signs.get("a") == {False}


def _factor_key(f):
    """Print order of a product's factors: numbers and sizes, indicators, weights, the
    activation's factors (a before 1 - a), other quantities, the incoming gradient last (local times
    upstream, as f'(z) * (W^T delta) is written), sums at the end."""
    kinds = {_kind(x) for x in f.atoms(sp.Indexed)}
    if f.is_Number:
        group = 0
    elif not kinds and not f.has(sp.Sum):
        group = 1
    elif _is_indicator(f):
        group = 2
    elif f.has(sp.Sum):
        group = 6
    elif kinds & {"ga", "delta", "gW", "gb"} or isinstance(f, sp.Derivative):
        group = 5
    elif isinstance(f, sp.Function) or (f.is_Pow and isinstance(f.base, sp.Function)):
        group = 4.5              # y log a: functions after the quantities they are weighted by
    elif kinds == {"W"}:
        group = 3                # W x: the weight before what it multiplies
    elif kinds <= {"a", "z"}:
        group = 3.5
    else:
        group = 4
    return group, isinstance(f, sp.Add) or (f.is_Pow and isinstance(f.base, sp.Add)), sp.default_sort_key(f)


def _is_derivative(m):
    m = m.arg if isinstance(m, sp.Transpose) else m
    return isinstance(m, sp.MatrixSymbol) and m.name.split("|")[1] in ("fp", "fpa")


def _shape(m):
    r, c = m.shape
    p = lambda v: "B" if v == naming.BATCH else sp.latex(v)
    return rf"({p(r)} \times {p(c)})"


def shapes(e):
    """Dimension balancing: the shapes of the factors of a matrix expression."""
    if isinstance(e, sp.MatAdd):
        return " + ".join(shapes(a) for a in e.args)
    if isinstance(e, sp.MatMul):
        return "".join(shapes(a) for a in e.args)
    if isinstance(e, sp.HadamardProduct):
        args = sorted(e.args, key=lambda a: (not _is_derivative(a), sp.default_sort_key(a)))
        return r" \odot ".join(shapes(a) for a in args)
    return _shape(e)


# --------------------------------------------------------------------------------------------
# Matrix equations in the derivation's convention, and their form in a notation

# lhs = [sum over the batch] rhs, matrix expressions (of our symbols or the notation's own)
MatEq = namedtuple("MatEq", "lhs rhs summed")


def matrix_form(eq, lhs, mat, ones, batch):
    """The MatEq of a product or column-sum equation in our convention, read off its index form
    (``derivation.batch_form``); ``mat(base)`` is a quantity's matrix, ``ones`` the column of B
    ones. A batch gives the matrix product op(L) op(R) [+ 1 b]; per sample, row s of it as a
    column, op(R)^T l [+ b]; a sum over the samples, of outer products sum_s l r^T. None where
    the equation has no such form."""
    form = batch_form(eq.lhs, eq.rhs)
    if isinstance(form, ColumnSum):
        return MatEq(lhs, ones.T * mat(form.arg), False) if batch else MatEq(lhs, mat(form.arg), True)
    if not isinstance(form, Product):
        return None
    L, R = mat(form.left), mat(form.right)
    opL, opR = (L.T if form.left_t else L), (R.T if form.right_t else R)
    bias = (sp.ZeroMatrix(*lhs.shape) if form.bias is None
            else ones * mat(form.bias) if batch else mat(form.bias))
    if batch:
        return MatEq(lhs, opL * opR + bias, False)
    if naming.S in eq.lhs.indices:
        return None if form.left_t else MatEq(lhs, opR.T * L + bias, False)
    return MatEq(lhs, L * R.T, True) if form.left_t and not form.right_t else None


def to_notation(lhs, rhs, own):
    """An equation between our matrices in a notation: each of ours replaced by ``own(m)`` (the
    notation's own matrix, or its transpose where it stores ours transposed), SymPy moving the
    transposes; own^T = ours is written own = ours^T."""
    def sub(e):
        return e.xreplace({m: own(m) for m in e.atoms(sp.MatrixSymbol)}).doit()
    lhs, rhs = sub(lhs), sub(rhs)
    return (lhs.arg, rhs.T) if isinstance(lhs, sp.Transpose) else (lhs, rhs)


class Context:
    """The network's matrices in one notation: our MatrixSymbols, the notation's own ones and
    the substitution between them."""

    def __init__(self, derivation, nt):
        self.d, self.nt = derivation, nt
        self.net = derivation.network
        self.n = self.net.sizes
        self.L = self.net.depth
        self.functions = {}

    def _shape(self, kind, layer, flavor):
        n = self.n
        if kind in ("W", "gW"):
            return n[layer], n[layer - 1]
        if kind == "Ja":
            return n[layer], n[layer]
        if kind == "Jz":
            return n[layer - 1], n[layer]
        if kind == "ones":
            return naming.BATCH, 1
        if kind == "y":
            layer = self.L
        if flavor == "batch":
            return (1, n[layer]) if kind in ("b", "gb") else (naming.BATCH, n[layer])
        return n[layer], 1

    def ours(self, kind, layer, flavor):
        return sp.MatrixSymbol(f"our|{kind}|{layer}|{flavor}", *self._shape(kind, layer, flavor))

    def own(self, kind, layer, flavor):
        r, c = self._shape(kind, layer, flavor)
        if kind in self.nt.transposed[flavor]:
            r, c = c, r
        return sp.MatrixSymbol(f"own|{kind}|{layer}|{flavor}", r, c)

    def convert(self, lhs, rhs, summed=False):
        """An equation between our matrices, in the notation: own = ours or own^T = ours."""
        def own(m):
            _, kind, layer, flavor = m.name.split("|")
            o = self.own(kind, None if layer == "None" else int(layer), flavor)
            return o.T if kind in self.nt.transposed[flavor] else o
        return MatEq(*to_notation(lhs, rhs, own), summed)

    def indicator_in_z(self, x):
        """True when layer l's derivative 1[a > 0] is the derivation's kink stage 1[z > 0]
        written in a (ReLU, leaky ReLU): the document prints it in z, as the slides do."""
        kind, layer = naming.parse(x.base)
        if kind != "a" or not layer:
            return False
        rule = self.d.layers[layer - 1].rule
        if rule is None or rule.uses != "a" or not rule.form.has(sp.Heaviside):
            return False
        kinked = [e for name, e in rule.stages if name == "kink"]
        return bool(kinked) and kinked[0] == rule.form.xreplace({naming.A: naming.Z})

    def own_latex(self, name, flavor, sample):
        _, kind, layer, _f = name.split("|")
        layer = None if layer == "None" else int(layer)
        s = "s" if sample and flavor != "batch" and kind not in ("W", "b", "gW", "gb", "ones") else None
        if kind == "ones":
            return r"\mathbf{1}"
        if kind in ("fz", "fp", "fpa"):
            act = self.net.layers[layer - 1].activation
            z = self.nt.symbol("z", layer, flavor, s)
            if kind == "fz":
                return _call(act.latex, z)
            if kind == "fp":
                return _call(act.latex + "'", z)
            rule = self.d.layers[layer - 1].rule
            a_l, z_l = naming.quantity("a", layer), naming.quantity("z", layer)
            form = rule.form.xreplace({naming.A: a_l[S, J], naming.Z: z_l[S, J]})
            out = Printer(self, flavor, sample=bool(s), vector=True).doprint(form)
            return rf"\left({out}\right)" if isinstance(form, sp.Add) else out
        return self.nt.symbol(kind, layer, flavor, s)

    # -- the derivation's equations as matrix equations (our convention)
    def product(self, eq, flavor):
        """The matrix form of a product or column sum equation (``matrix_form``), our matrices."""
        def mat(base):
            return self.ours(*naming.parse(base), flavor)
        out = matrix_form(eq, mat(eq.lhs.base), mat, self.ours("ones", None, flavor), flavor == "batch")
        if out is None:
            raise SymbpError(f"latex: no matrix form for {eq.name} = {eq.rhs}")
        return out

    def equation(self, eq, flavor):
        return self.convert(*self.product(eq, flavor))


# --------------------------------------------------------------------------------------------
# Blocks of the document

class Doc:
    """Sections of the document: each a title and blocks ("text", str) or ("align", rows)."""

    def __init__(self):
        self.sections = []

    def section(self, title):
        self.sections.append({"title": title, "blocks": []})

    def text(self, s):
        self.sections[-1]["blocks"].append({"kind": "text", "text": s})

    def algorithm(self):
        self.sections[-1]["blocks"].append({"kind": "algorithm"})

    def align(self, rows):
        if rows:
            self.sections[-1]["blocks"].append({"kind": "align", "rows": rows})


def _row(lhs, rhs, note=""):
    return {"lhs": lhs, "rhs": rhs, "note": note}


def _ends(stages):
    """The first and the last stage: what SymPy derived and what the passes made of it."""
    return [stages[0], stages[-1]] if len(stages) > 1 else list(stages)


def _has_sample_sum(e):
    return any(lim[0] in SAMPLE for s in e.atoms(sp.Sum) for lim in s.limits)


def _sample_sum(nt):
    """The sum over the samples of the batch, counted as the notation counts."""
    lo, hi = (1, "B") if nt.index_base == 1 else (0, "B - 1")
    return rf"\sum_{{s={lo}}}^{{{hi}}}"


def _mat_row(pr, meq, lhs=None, note=""):
    """A MatEq as a row printed by ``pr``, its sum over the samples written out."""
    rhs = pr.doprint(meq.rhs)
    return _row(pr.doprint(meq.lhs) if lhs is None else lhs,
                "= " + (f"{_sample_sum(pr.nt)} " if meq.summed else "") + rhs, note)


def _stage_rows(lhs, stages, note):
    """Aligned rows of an equation's stages, given as (pass name, printed right side): a stage
    that prints as the one before is left out, the left side is written once, ``note(name,
    first)`` labels a row, and a single row (a definition) needs no label."""
    rows = []
    for name, rhs in stages:
        if not rows or rhs != rows[-1]["rhs"]:
            rows.append(_row("" if rows else lhs, rhs, note(name, not rows)))
    if len(rows) == 1:
        rows[0]["note"] = ""
    return rows


class Renderer:
    def __init__(self, derivation, nt, stages=False):
        self.d, self.nt, self.stages = derivation, nt, stages
        self.cited = []
        self.ctx = Context(derivation, nt)
        self.net = derivation.network
        self.L = self.net.depth
        self.n = self.net.sizes
        self.main = nt.main

    # -- printing helpers
    def cite(self, key, at=""):
        """A citation in the text; the work is listed under Sources at the end."""
        self.cited.append(key)
        return _sources.latex_cite(key, at)

    def pr(self, e, flavor="sample", **kw):
        return Printer(self.ctx, flavor, **kw).doprint(e)

    def index_rows(self, eq, flavor=None, why=""):
        """An equation in index form. With ``stages`` every stage SymPy went through, one row
        each, labelled with its pass; otherwise as a textbook writes it: the derived form (the
        upstream gradient times the local derivative) and the result, the step between them
        explained by ``why`` (LaTeX text) instead of expanding and refactoring on the page."""
        flavor = flavor or self.main
        stages = eq.stages if self.stages else _ends(eq.stages)
        # one sample index: t only where a second one is needed beside s
        stages = [(n, e.xreplace({T: S}) if e.has(T) and not e.has(S) else e) for n, e in stages]
        sample = any(_has_sample_sum(e) for _, e in stages)
        pr = Printer(self.ctx, flavor, sample=sample)
        lhs = pr.doprint(eq.lhs) if isinstance(eq.lhs, sp.Indexed) else self.nt.loss
        return _stage_rows(lhs, [(n, "= " + pr.doprint(e)) for n, e in stages], lambda name, first: (
            rf"\text{{{_text(name)}}}" if self.stages else rf"\text{{{why}}}" if why and not first else ""))

    def mat_row(self, meq, flavor=None, lhs=None):
        """A matrix equation with the shapes of its factors beside it (dimension balancing)."""
        return _mat_row(Printer(self.ctx, flavor or self.main, sample=meq.summed), meq, lhs,
                        rf"{_shape(meq.lhs)} = {shapes(meq.rhs)}")

    def eq_row(self, name):
        """The derivation's equation ``name`` as a matrix row in the notation."""
        return self.mat_row(self.ctx.equation(self.d[name], self.main))

    def forward_rows(self):
        """z = W a + b and a = f(z) of every layer, as matrices."""
        fl, ours = self.main, self.ctx.ours
        return [r for l in range(1, self.L + 1)
                for r in (self.eq_row(f"z{l}"), self.mat_row(self.ctx.convert(ours("a", l, fl), ours("fz", l, fl))))]

    def hadamard_row(self, kind, l, ga, lhs=None):
        """delta = f'(z) (Hadamard) dL/da of layer l as a matrix row; ``kind`` fp writes the
        derivative in z, fpa in the outputs."""
        fl = self.main
        had = sp.HadamardProduct(self.ctx.ours(kind, l, fl), ga)
        return self.mat_row(self.ctx.convert(self.ctx.ours("delta", l, fl), had), lhs=lhs)

    def small(self, *dims):
        return all(int(d) <= SMALL for d in dims)

    # -- the explicit matrices (per sample, our orientation: column vectors, denominator layout)
    def explicit_ours(self, kind, layer):
        lr = self.d.layers[layer - 1] if layer else None
        n = self.n
        if kind == "Ja":
            jac = lr.jacobian[-1][1]
            return sp.Matrix(n[layer], n[layer], lambda r, c: jac.xreplace({I: c, J: r}))
        if kind == "Jz":
            dz = lr.dz_da[-1][1]
            return sp.Matrix(n[layer - 1], n[layer], lambda r, c: dz.xreplace({J: c, I: r}))
        if kind == "delta":
            base = naming.quantity("delta", layer)
            return sp.Matrix(n[layer], 1, lambda r, c: base[S, r])
        if kind == "ga":
            rhs = self.printed(self.d[f"ga{layer}"])
            return sp.Matrix(n[layer], 1, lambda r, c: rhs.xreplace({J: r}))
        raise KeyError(kind)

    def explicit(self, *pairs):
        """A per-sample printer writing the notation's own matrices of our (kind, layer) ``pairs``
        as their entries (``explicit_ours``, in the notation's orientation)."""
        return Printer(self.ctx, "sample", explicit={
            self.ctx.own(kind, layer, "sample").name: self.own_vector(kind, self.explicit_ours(kind, layer))
            for kind, layer in pairs})

    def own_vector(self, kind, m):
        return m.T if kind in self.nt.transposed["sample"] else m

    def entries(self, doc, chain, lhs_flavor, res, *pairs):
        """The chain rule ``chain`` entry by entry for one sample: the explicit matrices of
        ``pairs`` and their product, the error vector ``res``."""
        pe = self.explicit(*pairs)
        doc.text(self.one_sample("Entry by entry, for one sample"))
        doc.align([_row(self.pr(chain.lhs, lhs_flavor), "= " + pe.doprint(chain.rhs)),
                   _row("", "= " + self.vec_bmatrix(pe, self.own_vector("delta", res)))])

    # -- sections
    def setup(self, doc):
        doc.section("The network")
        self.table = []
        for l, layer in enumerate(self.net.layers, start=1):
            def member(kind):
                m = self.ctx.own(kind, l, self.main)
                return rf"{self.pr(m, self.main)} \in \mathbb{{R}}^{{{m.shape[0]} \times {m.shape[1]}}}"
            act = layer.activation
            self.table.append({
                "layer": l, "width": layer.units, "activation": _text(act.name),
                "f": self.pr(act.definition, scalars=self.scalar_names()) if act.elementwise else act.latex,
                "params": member("W") + (rf",\ {member('b')}" if layer.bias else r" (no bias)")})
        loss = self.net.loss
        red = f"the {self.net.reduction} over a batch of $B$ samples"      # mean or sum
        doc.text(rf"Input width $n_0 = {self.n[0]}$; loss: {_loss_text(loss)[1]}, summed over the "
                 rf"{self.n[-1]} output unit{'s' if self.n[-1] > 1 else ''} and taken as {red}. "
                 r"Every derivative below was computed by SymPy (\texttt{sympy.diff}) and simplified "
                 r"by symbp's passes; nothing is written by hand.")
        src = self.cite(_sources.NOTATION_SOURCE[self.nt.name])
        doc.text(rf"\textbf{{Notation: {_text(self.nt.name)}}} --- {self.nt.title}, after {src}. "
                 rf"{self.nt.note} " + self.index_note())

    def index_note(self):
        first = self.nt.index_base
        widths = ", ".join(f"n_{{{l}}} = {w}" for l, w in enumerate(self.n))
        smp = (r"In index form the first index of a batch matrix is the sample $s$." if self.main == "batch" else
               r"The equations are those of one sample; where the sum over the batch is written "
               r"out, a superscript $(s)$ names the sample.")
        return (rf"Indices count from {first}; the widths are ${widths}$. {smp} "
                + (rf"Derivatives of ${self.nt.loss}$ include the factor $1/B$ of the mean."
                   if self.net.reduction == "mean" else ""))

    def scalar_names(self):
        pre, post = self.nt.scalars
        return {naming.Z: pre, naming.A: post, naming.Y: "y"}

    def algorithm(self, doc):
        doc.section(r"The algorithm\label{sec:algorithm}")
        doc.text(rf"The derivation follows Algorithm 14.1 of {self.cite('chapter')}, reproduced in the "
                 r"box in the chapter's own notation (gradients $\mathbf{g}_l$ are row vectors, "
                 r"$\mathbf{L}_l^{\mathbf{x}}$ and $\mathbf{L}_l^{\theta}$ the layer's Jacobians with "
                 r"respect to its input and its parameters):")
        doc.algorithm()
        doc.text(r"SymPy derives each layer's $\mathbf{L}_l$ from its forward definition "
                 r"(sections~\ref{sec:local} and~\ref{sec:jacobians}); line~9 is the output layer "
                 r"(section~\ref{sec:output}), line~12 the backward step of each layer "
                 r"(section~\ref{sec:backward}) and line~13 its parameter gradients "
                 r"(section~\ref{sec:gradients}). Here a layer is split into its affine map and its "
                 r"activation, and the error of a layer is the gradient at its pre-activation.")

    def forward(self, doc):
        doc.section("Forward pass")
        doc.text("In matrix form, with the shapes of the factors (dimension balancing):")
        doc.align(self.forward_rows())
        doc.text("Entry by entry, as SymPy holds them:")
        rows = []
        for l in range(1, self.L + 1):
            rows += self.index_rows(self.d[f"z{l}"])
            rows += self.index_rows(self.d[f"a{l}"])
        doc.align(rows)
        doc.text(rf"The loss of the batch ({_text(self.net.loss.name)}, {self.net.reduction}):")
        doc.align(self.index_rows(self.d["loss"]))

    def local(self, doc):
        doc.section(r"Local derivatives\label{sec:local}")
        if self.stages:
            legend = "; ".join(rf"\emph{{{_text(k)}}}: {v}" for k, v in STAGE_DOCS.items())
            doc.text(r"Each line is one stage of SymPy's work, labelled on the right: " + legend + ".")
        else:
            doc.text(r"Each activation's derivative, as SymPy differentiates its definition, then "
                     r"written in terms of the layer's output where that is exact, so that the "
                     r"backward pass reuses the values stored by the forward pass.")
        groups = []          # (activation, layers): elementwise rules once, softmax per layer
        for lr in self.d.layers:
            same = [g for g in groups if lr.rule is not None and g[0] == lr.activation]
            if same:
                same[0][1].append(lr.layer)
            else:
                groups.append((lr.activation, [lr.layer]))
        for _, layers in groups:
            lr = self.d.layers[layers[0] - 1]
            act = lr.activation
            which = ", ".join(str(l) for l in layers)
            if lr.rule is None:
                self.softmax_rule(doc, lr)
                continue
            names = self.scalar_names()
            pre, post = self.nt.scalars
            fname = _call(act.latex + "'", pre)
            doc.text(rf"Layer{'s' if len(layers) > 1 else ''} {which}: {_text(act.name)}, "
                     rf"${_call(act.latex, pre)} = {self.pr(act.definition, scalars=names)}$.")
            rows, prev, first = [], None, True
            stages = lr.rule.stages
            if not self.stages and len(stages) > 1 and stages[1][0] == "kink":
                stages = stages[1:]        # the kink convention is stated below the rows
            for name, e in stages:
                if prev is not None and e == prev:
                    continue
                if name == "forward_outputs" and lr.rule.uses == "a":
                    fn = sp.Function(f"act{lr.layer}")(naming.Z)
                    self.ctx.functions[f"act{lr.layer}"] = act.latex
                    mid = lr.rule.form.xreplace({naming.A: fn})
                    if mid != lr.rule.form and mid != prev:
                        rows.append(_row("", "= " + self.pr(mid, scalars=names),
                                         rf"\text{{in terms of }} {_call(act.latex, pre)}"))
                    label = r"\text{forward\_outputs: }" if self.stages else r"\text{with }"
                    rows.append(_row("", "= " + self.pr(e, scalars=names),
                                     rf"{label}{post} = {_call(act.latex, pre)}"))
                else:
                    label = (rf"\text{{{_text(name)}}}" if self.stages else
                             rf"\text{{derivative of }} {_call(act.latex, pre)}" if first else "")
                    rows.append(_row(fname if first else "", "= " + self.pr(e, scalars=names), label))
                prev, first = e, False
            doc.align(rows)
            note = self.kink_note(lr)
            if note:
                doc.text(note)
            if lr.rule.uses == "z":
                doc.text(rf"No exact rewriting of ${act.latex}'$ in terms of ${post}$ exists: the "
                         rf"backward pass reads the stored ${pre}$.")

    def kink_note(self, lr):
        """The one-sided value used where the activation is not differentiable (the kinks are
        found by the derivation stage, ``symbp.derivation.facts.kinks``)."""
        notes = []
        act = lr.activation
        pre, _ = self.nt.scalars
        for k in facts.kinks(lr.rule):
            if not k.jump:
                continue
            side = {"left": "the derivative from the left", "right": "the derivative from the right"}.get(
                k.side, "a convention")
            notes.append(rf"At ${pre} = {sp.latex(k.point)}$ {_text(act.name)} is not differentiable "
                         rf"(derivative ${sp.latex(k.left)}$ from the left, ${sp.latex(k.right)}$ from the "
                         rf"right); symbp uses ${act.latex}'({sp.latex(k.point)}) = {sp.latex(k.value)}$, {side} "
                         r"(the generated kernels use the same value"
                         + self.at_zero_reason() + ").")
        return " ".join(notes)

    def at_zero_reason(self):
        """Where the network's relu_at_zero convention comes from (part of the kink note)."""
        if self.net.relu_at_zero:
            return (r"; the network sets \texttt{relu\_at\_zero = 1}, as the CS231n-style slides and "
                    r"the book chapter ``Backpropagation'' take ReLU$'(0) = 1$")
        return (r"; \texttt{relu\_at\_zero = 0}, the convention of PyTorch; "
                r"\texttt{relu\_at\_zero = 1} takes the derivative from the right")

    def softmax_rule(self, doc, lr):
        l = lr.layer
        act = lr.activation
        a, z = naming.quantity("a", l), naming.quantity("z", l)
        lhs = sp.Derivative(a[S, I], z[S, J], evaluate=False)
        pr = Printer(self.ctx, "sample")
        fwd = self.d[f"a{l}"]
        doc.text(rf"Layer {l}: {_text(act.name)} is a vector activation, "
                 rf"${pr.doprint(fwd.lhs)} = {pr.doprint(fwd.rhs)}$: every output depends on every "
                 r"input, and SymPy differentiates the quotient:")
        stages = [(n, "= " + pr.doprint(e)) for n, e in (lr.jacobian if self.stages else _ends(lr.jacobian))]
        doc.align(_stage_rows(pr.doprint(lhs), stages, lambda name, first: (
            rf"\text{{{_text(name)}}}" if self.stages else "" if first else r"\text{in terms of the outputs}")))

    def jacobians(self, doc):
        doc.section(r"Jacobians\label{sec:jacobians}")
        lay = ("one row per entry of the variable (denominator layout)" if self.nt.layout == "denominator"
               else "one row per entry of the function (numerator layout)")
        doc.text(rf"Jacobians are written with {lay}; they are shown in full where both sizes are at "
                 rf"most {SMALL}. In index form ${INDICATOR}[i = j]$ is the indicator: 1 if $i = j$, "
                 r"else 0." + ("" if self.main == "sample" else
                              " " + self.one_sample("They are those of one sample")[:-1] + "."))
        pr = Printer(self.ctx, "sample")
        for lr in self.d.layers:
            l = lr.layer
            a, z = naming.quantity("a", l), naming.quantity("z", l)
            ap = naming.quantity("a", l - 1)
            W, b = naming.quantity("W", l), naming.quantity("b", l)
            P, Q = naming.P, naming.Q
            kindtxt = "diagonal (elementwise activation)" if lr.rule is not None else "full (vector activation)"
            doc.text(rf"Layer {l}: the activation Jacobian is {kindtxt}; the affine map "
                     rf"${self.affine(l)}$ gives the others (SymPy's derivatives of the index form).")
            pairs = [(a[S, I], z[S, J], lr.jacobian), (z[S, J], ap[S, I], lr.dz_da), (z[S, J], W[P, Q], lr.dz_dW)]
            if lr.dz_db is not None:    # a layer without bias has no b
                pairs.append((z[S, J], b[P], lr.dz_db))
            doc.align([_row(pr.doprint(sp.Derivative(u, v, evaluate=False)), "= " + pr.doprint(stages[-1][1]))
                       for u, v, stages in pairs])
            rows = []
            if self.small(self.n[l]):
                Ja = self.ctx.own("Ja", l, "sample")
                rows.append(_row(pr.doprint(Ja), "= " + self.explicit(("Ja", l)).doprint(Ja)))
            jz = self.jz_form(lr)
            Jz = self.ctx.own("Jz", l, "sample")
            if jz is not None:
                rows.append(_row(pr.doprint(Jz), "= " + pr.doprint(jz.rhs), rf"{_shape(Jz)}"))
            if self.small(self.n[l], self.n[l - 1]):
                ex = self.explicit(("Jz", l)).doprint(Jz)
                rows.append(_row("" if jz is not None else pr.doprint(Jz), "= " + ex))
            doc.align(rows)

    def affine(self, l):
        """The affine map of layer l for one sample, in the notation (inline math)."""
        eq = self.ctx.equation(self.d[f"z{l}"], "sample")
        pr = Printer(self.ctx, "sample")
        return f"{pr.doprint(eq.lhs)} = {pr.doprint(eq.rhs)}"

    def vec_bmatrix(self, pr, m):
        """A vector's entries; a long row is printed as a transposed column."""
        if m.rows == 1 and m.cols > 1:
            return pr._bmatrix(m.T) + "^{T}"
        return pr._bmatrix(m)

    def jz_form(self, lr):
        """dz/da_prev as a matrix when SymPy's entry is a weight: W^T in our layout."""
        l = lr.layer
        e = lr.dz_da[-1][1]
        W = naming.quantity("W", l)
        ours = self.ctx.ours("W", l, "sample")
        rhs = {W[J, I]: ours.T, W[I, J]: ours}.get(e)
        return None if rhs is None else self.ctx.convert(self.ctx.ours("Jz", l, "sample"), rhs)

    def one_sample(self, text):
        """Lead-in of per-sample equations; in the batch notation they are the lower-case rows of
        its upper-case matrices, said once each time they appear."""
        if self.main == "sample":
            return text + ":"
        if getattr(self, "_rows_said", False):
            return text + r" $s$ (its rows, lower case):"
        self._rows_said = True
        return (text + r" $s$ (lower case: $h_l$, $a_l$ and $\delta_l$ are row $s$ of $H_l$, $A_l$ "
                r"and $\Delta_l$, written as vectors):")

    def output(self, doc):
        L = self.L
        lr = self.d.layers[-1]
        doc.section(r"Output layer: the chain rule\label{sec:output}")
        a, z, ga, delta = (naming.quantity(k, L) for k in ("a", "z", "ga", "delta"))
        pr = Printer(self.ctx, self.main)     # index form: entries of the notation's matrices
        chain = sp.Sum(ga[S, I] * sp.Derivative(a[S, I], z[S, J], evaluate=False), (I, 0, naming.width(L) - 1))
        doc.text(rf"The loss reaches ${self.nt.symbol('z', L, 'sample')}$ (the output layer, {L}) only "
                 r"through the activation, so "
                 r"the error of the output layer is the derivative of the loss times the activation "
                 r"Jacobian:")
        fl = "sample"
        jac = self.ctx.convert(self.ctx.ours("delta", L, fl),
                               self.ctx.ours("Ja", L, fl) * self.ctx.ours("ga", L, fl))
        if self.main == fl:
            doc.align([_row(pr.doprint(delta[S, J]), "= " + pr.doprint(chain)), self.mat_row(jac, flavor=fl)])
        else:
            doc.align([_row(pr.doprint(delta[S, J]), "= " + pr.doprint(chain))])
            doc.text(self.one_sample("With the Jacobians, for one sample"))
            doc.align([self.mat_row(jac, flavor=fl)])
        eq = self.d[f"delta{L}"]
        cancel = self.cancellation()
        if self.stages:
            doc.text("SymPy differentiates the loss with respect to the output activation:")
            doc.align(self.index_rows(self.d[f"ga{L}"]))
            doc.text("and multiplies by the activation Jacobian, summing over $i$:")
            doc.align(self.index_rows(eq))
        else:
            self.output_chain(doc, lr, cancel)
        if cancel:
            doc.text(cancel)
        rows = []
        if lr.rule is not None:
            rows.append(self.hadamard_row("fp", L, self.ctx.ours("ga", L, self.main)))
        lhs = Printer(self.ctx, self.main).doprint(self.ctx.own("delta", L, self.main))
        rows.append(_row(lhs if not rows else "", "= " + self.vector_rhs(eq, self.main), ""))
        doc.text("As vectors (products and quotients of vectors elementwise):")
        doc.align(rows)
        if self.small(self.n[L]):
            out = self.printed(eq)
            res = sp.Matrix(self.n[L], 1, lambda r, c: out.xreplace({J: r}))
            self.entries(doc, jac, self.main, res, ("Ja", L), ("ga", L))

    def output_chain(self, doc, lr, cancel):
        """The output error as a textbook writes it: the upstream factor (SymPy's derivative of
        the loss), the local factor (the activation's Jacobian entry), their product, and the
        simplification as one explained step."""
        L = self.L
        a, z, ga, delta = (naming.quantity(k, L) for k in ("a", "z", "ga", "delta"))
        pr = Printer(self.ctx, self.main)
        up = self.printed(self.d[f"ga{L}"])
        local = lr.jacobian[-1][1]
        act = lr.activation
        doc.text(rf"The local factor is the derivative of the {_text(act.name)} output (its Jacobian "
                 rf"entry, section~\ref{{sec:jacobians}}), the upstream factor SymPy's derivative of the "
                 rf"{_loss_text(self.net.loss)[0]} loss with respect to the output:")
        doc.align([_row(pr.doprint(sp.Derivative(a[S, I], z[S, J], evaluate=False)),
                        "= " + pr.doprint(local), r"\text{local}"),
                   _row(pr.doprint(ga[S, J]), "= " + pr.doprint(up), r"\text{upstream}")])

        def factor(e):
            out = pr.doprint(e)
            return rf"\left({out}\right)" if isinstance(e, sp.Add) or out.startswith("-") else out
        n = pr.doprint(naming.width(L))
        lo = self.nt.index(0)
        total = rf"\sum_{{i={lo}}}^{{{n if self.nt.index_base == 1 else n + ' - 1'}}} "
        # local times upstream, in the order of the matrix form above
        rows = [_row(pr.doprint(delta[S, J]), "= " + total + factor(local) + r" \cdot "
                     + factor(up.xreplace({J: I})), r"\text{local} \times \text{upstream}")]
        if lr.rule is not None:
            # diagonal: the indicator keeps the term i = j
            fp = lr.rule.form.xreplace({naming.A: a[S, J], naming.Z: z[S, J]})
            prod = factor(up) if fp == 1 else factor(fp) + r" \cdot " + factor(up)
            rows.append(_row("", "= " + prod, rf"\text{{only }} i = j \text{{ remains}}"))
            why = ("the activation's derivative cancels" if cancel else "simplified")
        else:
            before = [e for name, e in self.d[f"delta{L}"].stages if name == "onehot"]
            prev = [e for (name, e), (nxt, _) in zip(self.d[f"delta{L}"].stages, self.d[f"delta{L}"].stages[1:])
                    if nxt == "onehot"]
            if prev and before and prev[0] != before[0]:
                rows.append(_row("", "= " + pr.doprint(prev[0]), r"\text{sum over } i"))
                why = r"with } \textstyle\sum_i y_i = 1 \text{ (one-hot targets)"
            else:
                why = "sum over } i \text{"
        final = "= " + pr.doprint(self.printed(self.d[f"delta{L}"]))
        same = lr.rule is not None and final == "= " + pr.doprint(sp.Mul(fp, up))
        if final != rows[-1]["rhs"] and not same:
            rows.append(_row("", final, rf"\text{{{why}}}"))
        doc.align(rows)

    def printed(self, eq):
        """The printed form of the output layer's dL/da and dL/dz: one fraction, factored, so
        that the sign rule of the printer (``Printer._split``) reads (a - y) / (a (1 - a)) for
        every loss and output activation. An exact rewrite found by the derivation stage
        (``facts.one_fraction``); other equations print as derived."""
        if eq.name not in (f"ga{self.L}", f"delta{self.L}"):
            return eq.rhs
        return facts.one_fraction(eq.rhs)

    def vector_rhs(self, eq, flavor):
        """An elementwise equation's right side as whole vectors; transposed to a row where the
        notation's quantity of the left side is a row (the row-vector gradients of the book
        chapter "Backpropagation", eq. 14.4)."""
        out = Printer(self.ctx, flavor, vector=True).doprint(self.printed(eq))
        if naming.parse(eq.lhs.base)[0] in self.nt.transposed[flavor]:
            out = rf"\left({out}\right)^{{T}}"
        return out

    def cancellation(self):
        L = self.L
        delta = self.d[f"delta{L}"]
        found = facts.output_cancellation(delta, self.d[f"ga{L}"], self.d.batch_factor,
                                          self.d.layers[-1].rule is not None)
        if found is None:
            return ""
        how = " with $\\sum_i y_i = 1$ for one-hot targets" if found.onehot else ""
        pr = Printer(self.ctx, self.main, vector=True)
        act = self.d.layers[-1].activation
        return (rf"The derivative of the {_text(act.name)} output cancels against the derivative of "
                rf"the {_loss_text(self.net.loss)[0]} loss{how}: what is left is the prediction error, "
                rf"${pr.doprint(delta.lhs)} = {self.vector_rhs(delta, self.main)}$.")

    def backward(self, doc):
        if self.L < 2:
            return
        doc.section(r"Backward pass: the delta recursion\label{sec:backward}")
        doc.text(r"Each hidden layer receives the error of the layer above through that layer's "
                 r"weights (the backward step of its affine map), then multiplies it elementwise "
                 r"(Hadamard product $\odot$) by the derivative of its own activation, written in terms "
                 r"of the stored forward outputs.")
        for l in range(self.L - 1, 0, -1):
            lr = self.d.layers[l - 1]
            fl = self.main
            doc.text(rf"\textbf{{Layer {l}.}}")
            rows = [self.eq_row(f"ga{l}")]
            if lr.rule is not None:
                ours_ga = self.ctx.product(self.d[f"ga{l}"], fl)[1]
                rows += [self.hadamard_row("fp", l, ours_ga), self.hadamard_row("fpa", l, ours_ga, lhs="")]
            fs = "sample"
            chain = self.ctx.convert(self.ctx.ours("delta", l, fs),
                                     self.ctx.ours("Ja", l, fs) * self.ctx.ours("Jz", l + 1, fs)
                                     * self.ctx.ours("delta", l + 1, fs))
            doc.align(rows)
            doc.text(self.one_sample("With the Jacobians, for one sample"))
            doc.align([self.mat_row(chain, flavor=fs)])
            doc.text("In index form, SymPy's stages:" if self.stages else
                     "In index form, the upstream gradient times the local derivative:")
            why = r"only } i = j \text{ remains" if lr.rule is not None else r"sum over } i \text{"
            doc.align(self.index_rows(self.d[f"ga{l}"]) + self.index_rows(self.d[f"delta{l}"], why=why))
            if self.small(self.n[l], self.n[l + 1]):
                self.entries(doc, chain, "sample", self.hidden_delta_entries(l), ("Ja", l), ("Jz", l + 1),
                             ("delta", l + 1))

    def hidden_delta_entries(self, l):
        """delta^l entries with dL/da^l replaced by its equation, at the network's widths."""
        ga_eq, d_eq = self.d[f"ga{l}"], self.d[f"delta{l}"]
        widths = {naming.width(k): self.n[k] for k in range(len(self.n))}
        ga = naming.quantity("ga", l)

        def entry(r):
            e = d_eq.rhs.xreplace({J: r}).xreplace(widths).doit()
            rep = {x: ga_eq.rhs.xreplace({I: x.indices[1]}).xreplace(widths).doit()
                   for x in e.atoms(sp.Indexed) if x.base == ga}
            return e.xreplace(rep)
        return sp.Matrix(self.n[l], 1, lambda r, c: entry(r))

    def gradients(self, doc):
        doc.section(r"Parameter gradients\label{sec:gradients}")
        doc.text(r"The parameters of a layer enter only through its affine map, so each parameter "
                 r"gradient is the layer's error times the derivative of the affine map, summed over the "
                 r"samples of the batch.")
        for l in range(1, self.L + 1):
            doc.text(rf"\textbf{{Layer {l}.}}")
            grads = [f"gW{l}"] + ([f"gb{l}"] if self.net.layers[l - 1].bias else [])
            doc.align([self.eq_row(g) for g in grads])
            why = r"only } j = p \text{ remains"
            doc.align([r for g in grads for r in self.index_rows(self.d[g], why=why)])
            if self.small(self.n[l], self.n[l - 1]):
                gW = self.d[f"gW{l}"].rhs
                summand = gW.function if isinstance(gW, sp.Sum) else gW
                P, Q = naming.P, naming.Q
                m = sp.Matrix(self.n[l], self.n[l - 1], lambda r, c: summand.xreplace({P: r, Q: c}))
                own = self.ctx.own("gW", l, self.main)
                m = m.T if "gW" in self.nt.transposed[self.main] else m
                doc.align([_row(self.pr(own, self.main), f"= {_sample_sum(self.nt)} "
                                + Printer(self.ctx, self.main, sample=True)._bmatrix(m))])

    def input_grad(self, doc):
        doc.section("Gradient with respect to the input")
        doc.text("The same step as the recursion, without an activation below: backpropagation to "
                 rf"the data ({self.cite('chapter', 'section 14.9')}).")
        doc.align([self.eq_row("ga0")])
        doc.align(self.index_rows(self.d["ga0"]))

    def vanishing(self, doc):
        sig = [lr for lr in self.d.layers if lr.activation.name == "sigmoid"]
        if not sig:
            return
        lr = sig[0]
        bound = sp.maximum(lr.rule.derivative, naming.Z, sp.S.Reals)
        pre, post = self.nt.scalars
        names = self.scalar_names()
        act = lr.activation
        doc.section("Remark: the vanishing gradient")
        text = (rf"SymPy's maximum of the sigmoid's derivative over the real line is "
                rf"${act.latex}'({pre}) = {self.pr(lr.rule.form, scalars=names)} \le {sp.latex(bound)}$ "
                rf"(at ${pre} = 0$, ${post} = \tfrac12$). Every sigmoid layer the error passes on its way "
                r"back multiplies it elementwise by this derivative:")
        doc.text(text)
        fl, pr = self.main, Printer(self.ctx, self.main)
        hidden = [l for l in range(self.L - 1, 0, -1) if self.d.layers[l - 1].activation.name == "sigmoid"]
        doc.align([_row(rf"\lVert {pr.doprint(self.ctx.own('delta', l, fl))} \rVert_{{\infty}}",
                        rf"\le {sp.latex(bound)} \lVert {pr.doprint(self.ctx.equation(self.d[f'ga{l}'], fl).rhs)} "
                        r"\rVert_{\infty}") for l in hidden])
        # the output layer's sigmoid counts where its derivative does not cancel against the loss
        k = len(hidden) + (self.cancellation() == "" and self.d.layers[-1].activation.name == "sigmoid")
        if k:
            doc.text(rf"The gradient that reaches $W$ of the first layer carries {k} such factor"
                     rf"{'s' if k > 1 else ''}, together at most ${sp.latex(bound ** k)}$ (times the "
                     r"weights): with many sigmoid layers the gradients of the early layers vanish "
                     rf"({self.cite('it5005', 'the vanishing gradient problem')}).")
        else:
            doc.text(r"In this network the output's derivative cancels against the loss and no hidden "
                     r"layer is a sigmoid, so no such factor appears; each added sigmoid layer would "
                     rf"bring one, at most ${sp.latex(bound)}$.")

    def summary_rows(self):
        fl = self.main
        rows = self.forward_rows()
        eq = self.d[f"delta{self.L}"]
        lhs = Printer(self.ctx, fl).doprint(self.ctx.own("delta", self.L, fl))
        rows.append(_row(lhs, "= " + self.vector_rhs(eq, fl),
                         rf"{_shape(self.ctx.own('delta', self.L, fl))}"))
        for l in range(self.L - 1, 0, -1):
            rule = self.d.layers[l - 1].rule
            # a derivative that keeps z (swish) is long: the summary names it f'(z)
            kind = "fpa" if rule is not None and rule.uses == "a" else "fp"
            rows.append(self.eq_row(f"ga{l}") if rule is None else
                        self.hadamard_row(kind, l, self.ctx.product(self.d[f"ga{l}"], fl)[1]))
        for l in range(self.L, 0, -1):
            rows += [self.eq_row(f"gW{l}")] + ([self.eq_row(f"gb{l}")] if self.net.layers[l - 1].bias else [])
        return rows + [self.eq_row("ga0")]


def render(derivation, notation="cs231n", document=False, stages=False):
    nt = _notation.get(notation)
    r = Renderer(derivation, nt, stages=stages)
    env = environment()
    if not document:
        return env.get_template("latex/derivation.tex.j2").render(
            document=False, summary=r.summary_rows())
    doc = Doc()
    for section in (r.setup, r.algorithm, r.forward, r.local, r.jacobians, r.output, r.backward,
                    r.gradients, r.input_grad, r.vanishing):
        section(doc)
    net = derivation.network
    arch = "--".join(str(n) for n in net.sizes)
    return env.get_template("latex/derivation.tex.j2").render(
        document=True, name=_text(net.name), arch=arch,
        acts=", ".join(_text(l.activation.name) for l in net.layers),
        loss=_text(net.loss.name), notation=_text(nt.name), table=r.table,
        sections=doc.sections, summary=r.summary_rows(),
        sources=_sources.bibliography(set(r.cited)))


def write_document(derivation, path, notation="cs231n", pdf=False, stages=False):
    """Write the LaTeX document to ``path`` (``write_tex``). Returns the list of paths written."""
    return write_tex(path, render(derivation, notation=notation, document=True, stages=stages), pdf)


def write_tex(path, tex, pdf=False):
    """Write a handout to ``path`` (atomically); with ``pdf=True`` compile it first (twice, for
    the section references) and write the PDF beside it (same stem). A failing run's log is kept
    beside the .tex and named in the error, and nothing else is written. Returns the paths
    written."""
    from ..output import write
    path = Path(path)
    try:
        data = compile_pdf(tex, "document", runs=2)[0] if pdf else None
    except PdfError as e:
        if not e.log:
            raise
        logdst = path.with_suffix(".log")
        write(logdst, e.log)
        raise SymbpError(f"pdf: pdflatex failed on {path.name} ({_first_error(e.log)}); "
                         f"see the log {logdst}; nothing else written") from None
    write(path, tex)
    if data is None:
        return [path]
    write(path.with_suffix(".pdf"), data)
    return [path, path.with_suffix(".pdf")]

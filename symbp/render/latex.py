"""LaTeX of a Derivation: the forward and backward equations, in index and matrix form.

Contract: ``render(derivation, notation="cs231n", document=False) -> str`` reads the
Derivation only (never re-derives). Index form: every equation as SymPy derived it, with
quantities named by ``naming.latex_base``. Matrix form (per sample, column vectors, products of
vectors elementwise): read off ``batch_form``, e.g. z = W a + b, g = W^T delta,
dL/dW = sum_s delta a^T. ``document=True`` wraps the text in templates/latex/derivation.tex.j2.
"""
import sympy as sp
from sympy.printing.latex import LatexPrinter

from .. import naming
from ..codegen.templates import environment
from ..derivation import ColumnSum, Product, batch_form
from ..errors import SymbpError

NOTATIONS = tuple(naming.LATEX_SYMBOLS)


class IndexPrinter(LatexPrinter):
    """LaTeX with quantities named from the naming module; ``vector=True`` drops indices."""

    def __init__(self, notation="cs231n", vector=False):
        super().__init__({"mul_symbol": None})
        self.notation, self.vector = notation, vector

    def _print_Indexed(self, e):
        base = naming.latex_base(e.base, self.notation)
        if self.vector:
            return base
        idx = " ".join(self._print(i) for i in e.indices)
        return f"{{{base}}}_{{{idx}}}"

    def _print_Symbol(self, e, style="plain"):
        if e == naming.BATCH:
            return "B"
        return super()._print_Symbol(e)

    def _print_Heaviside(self, e, exp=None):
        return rf"\mathbb{{1}}\left[{self._print(e.args[0])} > 0\right]"


def _matrix_form(eq, notation):
    p = IndexPrinter(notation, vector=True)
    lhs = naming.latex_base(eq.lhs.base, notation) if isinstance(eq.lhs, sp.Indexed) else "L"
    form = batch_form(eq.lhs, eq.rhs) if isinstance(eq.lhs, sp.Indexed) else None
    name = lambda b: naming.latex_base(b, notation)
    if isinstance(form, Product):
        if naming.S in eq.lhs.indices:
            m = name(form.right) if form.right_t else rf"\left({name(form.right)}\right)^{{T}}"
            out = f"{m} {name(form.left)}"
        else:
            out = rf"\sum_{{s}} {name(form.left)} \left({name(form.right)}\right)^{{T}}"
        if form.bias is not None:
            out += f" + {name(form.bias)}"
        return f"{lhs} = {out}"
    if isinstance(form, ColumnSum):
        return rf"{lhs} = \sum_{{s}} {name(form.arg)}"
    return f"{lhs} = {p.doprint(eq.rhs)}"


def render(derivation, notation="cs231n", document=False):
    if notation not in NOTATIONS:
        raise SymbpError(f"notation: unknown notation {notation!r} (expected one of: {', '.join(NOTATIONS)})")
    ip = IndexPrinter(notation)
    net = derivation.network
    sections = []
    groups = (("Forward pass", ("forward_z", "forward_a", "loss")),
              ("Output layer", ("loss_grad", "output_delta")),
              ("Delta recursion", ("backprop", "delta")),
              ("Parameter gradients", ("grad_W", "grad_b")),
              ("Gradient with respect to the input", ("input_grad",)))
    for title, kinds in groups:
        rows = []
        for e in derivation.of_kind(*kinds):
            lhs = ip.doprint(e.lhs) if isinstance(e.lhs, sp.Indexed) else "L"
            rows.append((f"{lhs} &= {ip.doprint(e.rhs)}", _matrix_form(e, notation)))
        sections.append((title, rows))
    rules = []
    for lr in derivation.layers:
        if lr.rule is not None:
            zs = sp.Symbol("z")
            f = ip.doprint(lr.activation.definition)
            raw = ip.doprint(lr.rule.derivative)
            form = ip.doprint(lr.rule.form)
            rules.append((lr.layer, lr.activation.name, f, raw, form, lr.rule.uses))
        else:
            jac = ip.doprint(lr.jacobian[-1][1])
            rules.append((lr.layer, lr.activation.name, None, None, jac, "a"))
    ctx = {"network": str(net), "sections": sections, "rules": rules, "document": document,
           "sigmoid": any(l.activation.name == "sigmoid" for l in net.layers)}
    return environment().get_template("latex/derivation.tex.j2").render(**ctx)

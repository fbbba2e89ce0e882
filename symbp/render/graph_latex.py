"""LaTeX handout of a DAG's backpropagation (a ``GraphDerivation``), with a TikZ picture.

Contract:
- ``render(derivation, notation="cs231n", document=False) -> str`` reads the GraphDerivation
  only (never derives): ``document=False`` gives one ``align*`` listing every equation;
  ``document=True`` the handout (templates/latex/graph_document.tex.j2): the graph as a TikZ
  picture and a table of its nodes and parameters, the notation, the forward pass, the loss, and
  the backward pass as numbered steps in reverse topological order, each with prose (which rule
  of the book chapter "Backpropagation" it applies), its vector form where one exists in the
  notation, and SymPy's stages in index form. Branch sums (eq. 14.46) and shared-parameter sums
  (eq. 14.47) are named steps of their own, and a summary lists the gradients.
- Node and parameter names print as math symbols (``symbol``): ``b_enc`` is
  b_{\\mathrm{enc}}, ``f1a`` is f_{1a}; a gradient is g_{<symbol>}, one consumer's part of a
  branch g_{<symbol>}^{(<consumer>)}.
- Notations (``GRAPH_NOTATIONS``, the one table of ``render.notation``): cs231n (column
  vectors, g = dL/dv a column), udl (the same conventions, gradients written as dL/dv),
  transposed (stored weight W' = W^T: f = W'^T a), rowvector (gradients are rows, g_in = g_out
  L^x, loss J, indices from 0) and batch (rows are samples, H = X W' with W' = W^T). Matrix
  forms are SymPy matrix expressions in the derivation's convention; each matrix is replaced
  by the notation's own one or its transpose and SymPy moves the transposes, so each notation
  is correct in its convention.
- The picture comes from ``symbp.render.graph_tikz``.
- ``write_document(derivation, path, notation, pdf=False)`` writes the .tex atomically; with
  ``pdf=True`` it compiles it first (pdflatex in a temporary directory) and writes the PDF beside
  it, as the MLP handout does (``latex.write_tex``): a missing or failing pdflatex raises a
  SymbpError and writes nothing but the failing run's log.
Same derivation and notation, same bytes.
"""
import re
from collections import Counter

import sympy as sp

from .. import naming
from ..derivation import facts
from . import notation as _notation
from .graph_tikz import text_mode as _text
from .graph_tikz import tikz
from .latex import MatEq, TexPrinter, matrix_form, to_notation, write_tex
from .latex import _has_sample_sum, _mat_row, _row, _shape, _stage_rows

S = naming.S
BATCH = naming.BATCH
_GREEK = ("alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa",
          "lambda", "mu", "nu", "xi", "rho", "sigma", "tau", "phi", "chi", "psi", "omega")
BOOK = r"the book chapter ``Backpropagation''"
SLIDES = r"the slides ``Multi-Layer Networks \& Back-Propagation''"


# ----------------------------------------------------------------------------------------------
# symbols
# ----------------------------------------------------------------------------------------------

def _word(run):
    if run in _GREEK:
        return "\\" + run
    return run if run.isdigit() or len(run) == 1 else r"\mathrm{" + run + "}"


def symbol(name):
    """A node or parameter name as a math symbol: ``W_in`` -> W_{\\mathrm{in}}, ``f1a`` ->
    f_{1a}, ``W_f1`` -> W_{f_{1}}, ``x_target`` -> x_{\\mathrm{target}}, ``enc`` -> \\mathrm{enc},
    ``alpha2`` -> \\alpha_{2}: one letter (or a Greek name) and what follows as its subscript,
    a word upright."""
    name = name.strip("_") or name
    if "_" in name:
        head, *rest = [r for r in name.split("_") if r]
        # each part after _ as a symbol of its own: W_f2 names node f2's weight, so W_{f_{2}}
        return f"{symbol(head)}_{{{','.join(symbol(r) for r in rest)}}}"
    runs = re.findall(r"[A-Za-z]+|\d+", name)
    head = runs[0]
    if head in _GREEK or len(head) == 1:
        tail = name[len(head):]
        return _word(head) + (f"_{{{tail}}}" if tail else "")
    return _word(head) + ("" if len(runs) == 1 else f"_{{{name[len(head):]}}}")


def symbols(graph):
    """{node or parameter name: LaTeX} for a whole graph. Names whose symbols would coincide
    (``f1`` and ``f_1`` are both f_{1}) are written out upright instead, so no two differ only
    in their name."""
    names = [n.name for n in graph.nodes] + [p.name for p in graph.params]
    table = {n: symbol(n) for n in names}
    count = Counter(table.values())
    for n in names:
        if count[table[n]] > 1:
            table[n] = r"\mathrm{" + n.replace("_", r"\_") + "}"
    return table


GRAPH_NOTATIONS = _notation.NOTATIONS       # one table: each notation words the graph handout too


def get_notation(name):
    return _notation.get(name, " for a graph")


# ----------------------------------------------------------------------------------------------
# printing
# ----------------------------------------------------------------------------------------------

class _Names:
    """Every quantity of a derivation in one notation: its LaTeX, and its matrix in our
    convention (``ours``) and in the notation's (``own``)."""

    def __init__(self, d, nt):
        self.d, self.nt, self.graph = d, nt, d.graph
        table = symbols(d.graph)
        self.sym = lambda name: table.get(name) or symbol(name)
        self.base, self.shapes = {}, {}
        for label, q in d.quantities.items():
            self.base[label] = self._base(q)
            if q.role in ("param", "param_grad", "param_use"):
                shape = d.graph.param(q.of).shape
                self.shapes[label] = shape if len(shape) == 2 else (shape[0], 1)
            else:
                self.shapes[label] = (d.graph.node(q.of).width, 1)

    def grad(self, of, source=""):
        sym = self.sym(of)
        if self.nt.frac:
            out = rf"\frac{{\partial {self.nt.loss}}}{{\partial {sym}}}"
            return out + (rf"\Big|_{{{self.sym(source)}}}" if source else "")
        return f"g_{{{sym}}}" + (f"^{{({self.sym(source)})}}" if source else "")

    def _base(self, q):
        if q.role == "statistic":       # a normalization's mu, sigma, xhat: \mu_{bn}, ...
            node, what = naming.parse_statistic(q.label)
            return f"{naming.STATISTIC_LATEX[what]}_{{{self.sym(node)}}}"
        if q.role in ("value", "target", "param"):
            return self.sym(q.of)
        if q.role in ("grad", "param_grad"):
            return self.grad(q.of)
        return self.grad(q.of, q.source)

    def role(self, label):
        """Kind of a quantity for the notation's transposes: value, grad, W, b, gW, gb."""
        q = self.d.quantities[label]
        if q.role in ("param", "param_grad", "param_use"):
            kind = "W" if self.graph.param(q.of).role == "weight" else "b"
            return kind if q.role == "param" else "g" + kind
        return "grad" if q.role in ("grad", "contribution") else "value"

    def ours(self, label):
        r, c = self.shapes[label]
        role = self.role(label)
        if self.nt.batch and role in ("value", "grad"):
            r, c = BATCH, r
        elif self.nt.batch and role in ("b", "gb"):
            r, c = c, r
        return sp.MatrixSymbol(f"ours|{label}", r, c)

    def own(self, label):
        r, c = self.ours(label).shape
        if self.role(label) in self.nt.graph_transposed:
            r, c = c, r
        return sp.MatrixSymbol(f"own|{label}", r, c)

    def form(self, eq):
        """(lhs, rhs, summed) of an equation as own matrices (``latex.matrix_form``), or None
        (elementwise or other)."""
        label = str(eq.lhs.base.label) if isinstance(eq.lhs, sp.Indexed) else None
        if label not in self.shapes:
            return None
        meq = matrix_form(eq, self.ours(label), lambda base: self.ours(str(base.label)),
                          sp.MatrixSymbol("ones", BATCH, 1), self.nt.batch)

        def own(m):
            if m.name == "ones":
                return m
            label = m.name.split("|", 1)[1]
            return self.own(label).T if self.role(label) in self.nt.graph_transposed else self.own(label)
        return None if meq is None else MatEq(*to_notation(meq.lhs, meq.rhs, own), meq.summed)


def _plain(s):
    """True where an index can be attached directly (x, \\mathrm{code}); False for symbols that
    already carry a sub- or superscript or are fractions (those are parenthesized)."""
    return not any(c in s for c in "_^") and "\\frac" not in s


class GraphPrinter(TexPrinter):
    """SymPy's LaTeX printer for a graph's equations. Index form: an entry is the quantity's
    symbol with its indices (the sample s as a superscript (s) when ``sample``); ``vector=True``
    prints whole vectors and products of vectors as Hadamard products."""

    negative_sum_bracketed = short_powers_of_sums = False

    def __init__(self, names, sample=False, vector=False, width=None):
        # a thin space between factors: \mathrm{B} next to \mathrm{probs} must not read "Bprobs"
        super().__init__(names.nt, r"\,", sample, vector)
        self.n, self.width = names, width

    def _print_Indexed(self, e):
        label = str(e.base.label)
        q = self.n.d.quantities.get(label)
        if self.nt.frac and not self.vector and q is not None and q.role in ("grad", "param_grad"):
            # dL/d(entry), as the slides write it, rather than an entry of dL/dv
            entry = self._print(sp.IndexedBase(q.of)[e.indices])
            return rf"\frac{{\partial {self.nt.loss}}}{{\partial {entry}}}"
        base = self.n.base.get(label, self.n.sym(label))
        idx, sample = self._sample_first(e, self.nt.batch)
        if self.vector:
            return self._slice(base, label, idx)
        role = self.n.role(label) if label in self.n.d.quantities else "value"
        if role in ("W", "gW") and role in self.nt.graph_transposed:
            idx = idx[::-1]      # the notation's matrix is our transpose: our W[j,k] is its entry (k, j)
        parts = [self._index(i) for i in idx]
        sup = f"^{{({sample})}}" if sample else ""
        if not parts and not sup:       # a per-sample statistic (layernorm's sigma) in a sample's row
            return base
        if self.nt.brackets:
            b = base if _plain(base) or sup == "" else rf"\left({base}\right)"
            return f"{b}{sup}[{', '.join(parts)}]"
        sep = "" if all(len(p) == 1 for p in parts) else ","
        if _plain(base):
            return f"{base}_{{{sep.join(parts)}}}{sup}"
        return rf"\left({base}\right)_{{{sep.join(parts)}}}{sup}"

    def _slice(self, base, label, idx):
        """A whole vector, or the entries of a longer one that the equation reads (a concat's
        input gets entries off + 1 ... off + n of the merged gradient), with the widths put in."""
        q = self.n.d.quantities.get(label)
        if not idx or self.width is None or q is None or q.role not in ("value", "grad", "contribution"):
            return base
        i = idx[-1]
        off = i.as_independent(naming.J, naming.I)[0] if not isinstance(i, sp.Symbol) else sp.Integer(0)
        if off == 0 and self.n.graph.node(q.of).width == self.width:
            return base
        lo = (off + self.nt.index_base).xreplace(self.n.d.sizes)
        hi = (off + self.width - 1 + self.nt.index_base).xreplace(self.n.d.sizes)
        b = base if _plain(base) and not self.nt.brackets else rf"\left({base}\right)"
        if self.nt.brackets:
            return rf"{base}[{self._print(lo)} \ldots {self._print(hi)}]"
        cols = r"{:},\, " if self.nt.batch else ""      # a batch matrix: these columns, every row
        return rf"{b}_{{{cols}{self._print(lo)} \ldots {self._print(hi)}}}"

    def _print_Symbol(self, e, style="plain"):
        name = e.name
        if name.startswith("n_") and name[2:] in self.n.d.quantities:
            return f"n_{{{self.n.sym(name[2:])}}}"
        st = naming.parse_statistic(name)
        if st is not None:      # a normalization's eps: \epsilon_{bn}
            return f"{naming.STATISTIC_LATEX[st[1]]}_{{{self.n.sym(st[0])}}}"
        return super()._print_Symbol(e)

    def _print_KroneckerDelta(self, e, exp=None):
        i, j = (self._index(a) for a in e.args)
        out = rf"\delta_{{{i}{j}}}" if len(i) == len(j) == 1 else rf"\delta_{{{i},{j}}}"
        return out if exp is None else rf"{out}^{{{exp}}}"

    def _print_Heaviside(self, e, exp=None):
        arg = self._print(e.args[0])
        # Heaviside(x, 1) includes 0 (max pooling's tie to the first index, ReLU'(0) = 1)
        rel = r"\ge" if len(e.args) == 2 and e.args[1] == 1 else ">"
        out = rf"\mathbb{{I}}\left[{arg} {rel} 0\right]"
        return out if exp is None else rf"{out}^{{{exp}}}"

    def _print_Pow(self, e):
        if isinstance(e.base, sp.Indexed) and not self.vector and e.exp.is_Integer and e.exp > 0:
            b = self._print(e.base)
            if "^{(" in b:      # x_{u}^{(s)} squared (a normalization's variance): one superscript per atom
                b = f"{{{b}}}"
            return rf"{b}^{{{self._print(e.exp)}}}"
        return super()._print_Pow(e)

    def _print_Mul(self, e):
        factors = sp.Mul.make_args(e)
        coeff = [f for f in factors if not f.atoms(sp.Indexed, sp.Sum)]
        rest = [f for f in factors if f.atoms(sp.Indexed, sp.Sum)]
        if coeff and any(isinstance(f, sp.Sum) for f in rest) and sp.Mul(*coeff) != -1:
            # a constant factor before a sum: 1/B sum_t ..., not a fraction with the sum on top
            return f"{self._print(sp.Mul(*coeff))} {self._print(sp.Mul(*rest))}"
        if not self.vector or sum(1 for f in factors if self._is_vec(f)) < 2:
            return super()._print_Mul(e)
        num, den = [], []
        for f in sp.Mul.make_args(e):
            if f.is_Pow and f.exp.is_Integer and f.exp < 0:
                den.append(f.base ** -f.exp)
            else:
                num.append(f)
        neg = False
        if num and num[0].is_Number and num[0] < 0:
            neg, num[0] = True, -num[0]

        def join(factors):
            scal = sp.Mul(*[f for f in factors if not self._is_vec(f)])
            vec = sorted((f for f in factors if self._is_vec(f)), key=lambda f: isinstance(f, sp.Add))
            out = [] if scal == 1 else [self._print(scal)]
            alone = len(vec) == 1 and scal == 1       # a sum alone over a fraction bar needs no parentheses
            vs = [rf"\left({self._print(v)}\right)" if isinstance(v, sp.Add) and not alone else self._print(v)
                  for v in vec]
            if vs:
                out.append(r" \odot ".join(vs))
            return r" \, ".join(out) or "1"
        out = join(num) if not den else rf"\frac{{{join(num)}}}{{{join(den)}}}"
        return f"- {out}" if neg else out

    # matrix expressions (own symbols are MatrixSymbols named "own|<label>" or "ones")
    def _print_MatrixSymbol(self, e):
        if e.name == "ones":
            return r"\mathbf{1}"
        return self.n.base[e.name.split("|", 1)[1]]

    def _print_Transpose(self, e):
        s = self._print(e.arg)
        if "^" not in s and "\\frac" not in s:
            return f"{s}^{{T}}"
        return rf"\left({s}\right)^{{T}}"

    def _print_MatMul(self, e):
        return r" \, ".join(rf"\left({self._print(a)}\right)" if isinstance(a, sp.MatAdd) else self._print(a)
                        for a in e.args)


# ----------------------------------------------------------------------------------------------
# the document
# ----------------------------------------------------------------------------------------------

STAGE_NAMES = {"definition": "definition", "derived": "sympy.diff", "sum": "sum"}


def stage_legend():
    """What the labels beside SymPy's stages mean (from the passes' own docs)."""
    from ..derivation import simplify as simp
    docs = [("sympy.diff", "the derivative as sympy.diff returns it")] + [(p.name, p.doc) for p in simp.PASSES]
    return "; ".join(rf"\emph{{{_text(k)}}}: {_text(v)}" for k, v in docs).replace(
        r"sum\_i y\_i = 1", r"$\sum_i y_i = 1$")


# prose of a backward step through a tensor op: SymPy's derivative with its deltas resolved is
# recognised as the textbook form (derivation/conv.py)
TENSOR_STEPS = {
    "conv2d": (r"SymPy differentiates the convolution's index form; each Kronecker delta is summed "
               r"away (an entry outside the padded input is zero), which leaves for the kernel the "
               r"correlation of the input with the node's gradient, and for the input the full "
               r"convolution of the node's gradient with the kernel rotated by 180 degrees "
               r"(``Deep Learning'', Goodfellow, Bengio and Courville, chapter~9)"),
    "maxpool2d": (r"The derivative of the maximum is 1 at the window's largest entry and 0 elsewhere: "
                  r"the gradient is routed to the arg-max, ties to the first entry of the window in "
                  r"row-major order (as PyTorch)"),
    "avgpool2d": r"Each entry of a window receives its share $1/(k_h k_w)$ of the window's gradient",
    "flatten": r"Flattening only renames entries: the gradient is unflattened back to the tensor's shape",
}


class Renderer:
    """The pieces of the handout (rows of aligned equations, prose) for one derivation in one
    notation; the template lays them out."""

    def __init__(self, d, nt):
        self.d, self.nt, self.g = d, nt, d.graph
        self.names = _Names(d, nt)
        self.sym = self.names.sym

    def pr(self, e, **kw):
        return GraphPrinter(self.names, **kw).doprint(e)

    def index_lhs(self, eq, sample):
        if not isinstance(eq.lhs, sp.Indexed):
            return self.nt.loss
        return self.pr(eq.lhs, sample=sample)

    def index_rows(self, eq, labels=True):
        sample = any(_has_sample_sum(e) for _, e in eq.stages)
        return _stage_rows(self.index_lhs(eq, sample), [(n, "= " + self.pr(e, sample=sample)) for n, e in eq.stages],
                           lambda name, first: rf"\text{{{_text(STAGE_NAMES.get(name, name))}}}" if labels else "")

    def width_of(self, eq):
        label = str(eq.lhs.base.label)
        q = self.d.quantities.get(label)
        if q is None or q.role in ("param", "param_grad", "param_use"):
            return None
        return self.g.node(q.of).width

    def vector_row(self, eq, lhs=None):
        """The equation as whole vectors or matrices, or None where the notation has no such form."""
        m = self.names.form(eq)
        if m is not None:
            return _mat_row(GraphPrinter(self.names), m, lhs, _shape(m.lhs))
        if eq.rhs.has(sp.Sum) or eq.rhs.has(sp.KroneckerDelta):
            return None
        labels = {str(x.base.label) for x in eq.rhs.atoms(sp.Indexed)} | {str(eq.lhs.base.label)}
        roles = {self.names.role(x) in self.nt.graph_transposed for x in labels if x in self.d.quantities}
        if len(roles) > 1:
            return self.diag_row(eq, lhs)      # rows and columns mixed: g_in = g_out diag(...)
        pr = GraphPrinter(self.names, vector=True, width=self.width_of(eq))
        return _row(pr.doprint(eq.lhs) if lhs is None else lhs, "= " + pr.doprint(eq.rhs), "")

    # -- sections
    def graph_table(self):
        rows = []
        for n in self.g.nodes:
            if n.kind == "loss":
                what = self.loss_text(n) + f", {'mean' if n.reduction == 'mean' else 'sum'} over the batch"
                ins = f"${self.sym(n.inputs[0])}$, ${self.sym(n.target)}$"
                rows.append({"name": f"${self.nt.loss}$", "kind": "loss", "inputs": ins, "width": "1",
                             "what": what})
                continue
            ins = ", ".join(f"${self.sym(i)}$" for i in n.inputs)
            if n.kind == "input":
                what = ("the target" if n.name == self.g.target else
                        "data" + ("; its gradient is wanted" if n.grad else ""))
            elif n.kind == "dense":      # as the forward pass writes it in this notation
                what = "$" + self.vector_row(self.d[n.name])["rhs"][2:] + "$"
            elif n.kind == "activation":
                act = n.activation
                what = rf"${act.latex}$ elementwise" if act.elementwise else rf"${act.latex}$ over the vector"
                if act.user:        # the reader has not met it: say what it is
                    what = rf"${act.latex}(z) = {sp.latex(act.definition)}$, elementwise"
            elif n.kind == "expression":
                names = {n.symbol(i): self.sym(i) for i in n.inputs}
                what = "elementwise: $" + sp.latex(n.expression, symbol_names=names, mul_symbol=r"\,") + "$"
            else:
                what = {"add": "elementwise sum", "multiply": "elementwise product",
                        "concat": "the inputs stacked (merge)"}.get(n.kind) or _text(n.op.doc)   # tensor ops: the registry's words
            kind = n.activation.name if n.kind == "activation" else n.kind
            rows.append({"name": f"${self.sym(n.name)}$", "kind": _text(kind),
                         "inputs": ins, "width": str(n.width), "what": what})
        return rows

    def loss_text(self, n):
        """The per-sample loss formula with its a and y named."""
        return (rf"${n.loss.latex}$ with $a = {self.sym(n.inputs[0])}$, $y = {self.sym(n.target)}$")

    def params(self):
        def shape(p):       # the notation's own matrix (stored transposed in some courses); a kernel as it is
            return "$" + r" \times ".join(map(str, p.shape if len(p.shape) > 2 else self.names.own(p.name).shape)) + "$"
        return [{"name": f"${self.sym(p.name)}$", "shape": shape(p),
                 "uses": ", ".join(f"${self.sym(u)}$" + (" (transposed)" if t else "") for u, t in p.uses),
                 "shared": len(p.uses) > 1} for p in self.g.params]

    def forward(self):
        steps = []
        for e in [q for q in self.d.equations if q.kind.startswith("forward_")]:
            n = self.g.node(e.node)
            rows = [v for v in [self.forward_vector(e, n)] if v is not None] + self.index_rows(e, labels=False)
            steps.append({"title": f"${self.sym(n.name)}$", "text": self.forward_text(n), "rows": rows})
        return steps

    def forward_vector(self, e, n):
        v = self.sym(n.name)
        if n.kind == "activation":
            arg = self.sym(n.inputs[0])
            return _row(v, rf"= {n.activation.latex}\left({arg}\right)" if not _plain(arg)
                        else rf"= {n.activation.latex}({arg})", "")
        if n.kind == "concat":      # side by side in a batch (columns), else stacked
            sep = " & " if self.nt.batch else r" \\ "
            return _row(v, r"= \begin{bmatrix} " + sep.join(self.sym(i) for i in n.inputs) + r" \end{bmatrix}")
        return self.vector_row(e)

    def forward_text(self, n):
        ins = ", ".join(f"${self.sym(i)}$" for i in n.inputs)
        if n.kind == "dense":
            t = f" with the weight transposed, ${self.sym(n.weight)}^{{T}}$ (tied weights)" if n.transpose else ""
            return f"A dense (linear) node reads {ins}{t}."
        if n.kind == "activation":
            return f"The activation {_text(n.activation.name)} applied to {ins}."
        return {"add": f"A merge by addition of {ins}.", "multiply": f"The elementwise product of {ins}.",
                "concat": (f"A merge: {ins} stacked into one vector (eq.~14.37 of {BOOK}); "
                           "the Kronecker deltas of the index form pick each input's entries."),
                "expression": f"An elementwise expression of {ins}."}.get(n.kind, "")

    def backward(self):
        back = [e for e in self.d.equations if e.kind != "loss" and not e.kind.startswith("forward_")]
        return [self.step(k, e) for k, e in enumerate(back, 1)]

    def step(self, k, e):
        title, text = self.step_text(e)
        named, v = e.kind in ("branch_sum", "shared_sum"), self.vector_row(e)
        if named:       # a sum of its own: as vectors where it can, else entry by entry
            rows = [v] if v is not None else self.index_rows(e, labels=False)
        else:
            rows = [r for r in [self.jacobian_row(e) if e.kind == "backprop" else None, v] + self.index_rows(e) if r]
        return {"number": k, "title": title, "text": text, "rows": rows, "named": named, "kind": e.kind}

    def jacobian(self, e):
        """The local Jacobian d u[s,i] / d v[s,j] of a backprop step's edge, as SymPy derived it."""
        u = self.g.node(e.source)
        nr = next(r for r in self.d.nodes if r.node == u.name)
        label = str(e.lhs.base.label)
        slots = [m for m, i in enumerate(u.inputs) if i == e.node]
        slot = next((m for m in slots if label == f"g_{e.node}__{u.name}_{m}"), slots[0])
        return nr.jacobians[slot][-1][1]

    def diag_row(self, e, lhs=None):
        """A backprop step through an elementwise node, where gradients are rows and values
        columns (the book's convention): g_in = g_out diag(d), d the diagonal of the Jacobian
        SymPy derived (eq. 14.10 with L^x = diag(d)); None for any other step."""
        if e.kind != "backprop" or self.g.node(e.source).kind in ("dense", "concat"):
            return None
        I, J = naming.I, naming.J
        diag = facts.diagonal(self.jacobian(e))
        if diag is None:
            return None
        pr = GraphPrinter(self.names, vector=True)
        g_out = pr.doprint(sp.IndexedBase(f"g_{e.source}")[S, J])
        d = pr.doprint(diag.xreplace({I: J}))
        return _row(pr.doprint(e.lhs) if lhs is None else lhs,
                    rf"= {g_out} \operatorname{{diag}}\left({d}\right)", "")

    def jacobian_row(self, e):
        """The local Jacobian entry d u_i / d v_j that SymPy derived (from the node's rules)."""
        u = self.g.node(e.source)
        jac = self.jacobian(e)
        pr = GraphPrinter(self.names)
        ui = pr.doprint(sp.IndexedBase(u.name)[S, naming.I])
        vj = pr.doprint(sp.IndexedBase(e.node)[S, naming.J])
        return _row(rf"\frac{{\partial {ui}}}{{\partial {vj}}}", "= " + pr.doprint(jac),
                    r"\text{local Jacobian}")

    def tensor_step_text(self, e):
        """(title, prose) of a gradient through a tensor op (conv2d, pooling, flatten), naming
        the textbook form SymPy's result was recognised as; None for the other ops."""
        u = self.g.node(e.source) if e.source else None
        if u is None or u.kind not in TENSOR_STEPS:
            return None
        v, us = self.sym(e.node), self.sym(u.name)
        step = e.stages[-1][0]
        title = rf"parameter ${v}$" if e.kind.startswith("grad_") else rf"the gradient of ${v}$"
        return title, rf"{TENSOR_STEPS[u.kind]} (through ${us}$; the step \emph{{{_text(step)}}})."

    def step_text(self, e):
        tensor = self.tensor_step_text(e)
        if tensor is not None:
            return tensor
        nt = self.nt
        v = self.sym(e.node)
        if e.kind == "loss_grad":
            return (rf"the gradient at the output ${v}$",
                    rf"SymPy differentiates ${nt.loss}$ with respect to the network's output ${v}$.")
        if e.kind == "output_delta":
            out = self.g.node(self.g.output)
            a = sp.IndexedBase(out.name, real=True)[S, naming.J]
            y = sp.IndexedBase(self.g.target, real=True)[S, naming.J]
            err = facts.is_prediction_error(e.rhs, self.d.batch_factor, a, y)
            return (rf"the gradient of ${v}$ through the output activation ${self.sym(out.name)}$",
                    rf"The output ${self.sym(out.name)} = {out.activation.latex}({v})$ feeds only the loss, "
                    r"so SymPy multiplies the loss derivative by the activation's Jacobian and simplifies "
                    r"the product as one expression"
                    + (r": the derivatives cancel and what is left is the prediction error." if err else "."))
        if e.kind in ("grad_W", "grad_b"):
            u = self.g.node(e.source)
            p = self.sym(e.node)
            shared = len(self.g.param(e.node).uses) > 1
            what = (rf"The part of the gradient of ${p}$ that comes from its use in ${self.sym(u.name)}$"
                    if shared else rf"The gradient of ${p}$")
            body = (rf"{what}: the parameter enters ${self.sym(u.name)}$ only through the dense map, "
                    + ("so the gradient is an outer product of the node's gradient and the node's "
                       "input, summed over the samples of the batch"
                       + (rf"; ${self.sym(u.name)}$ uses ${p}^{{T}}$, so its contribution is transposed."
                          if u.transpose else ".")
                       if e.kind == "grad_W" else
                       "so the gradient is the node's gradient summed over the samples of the batch."))
            return (rf"parameter ${p}$" + (rf" (its use in ${self.sym(u.name)}$)" if shared else ""), body)
        if e.kind in ("grad_gamma", "grad_beta"):       # a normalization's scale and shift
            p, u = self.sym(e.node), self.sym(e.source)
            return (rf"parameter ${p}$",
                    rf"The gradient of ${p}$: it enters ${u}$ only through the affine map after the "
                    r"normalization, so SymPy's sum over the samples collapses to the node's gradient"
                    + (r" times the normalized input, $\sum_s g\,\hat{x}$." if e.kind == "grad_gamma" else "."))
        if e.kind == "backprop" and self.g.node(e.source).op.realize == "normalization":
            u = self.g.node(e.source)
            coupled = "the samples of the batch" if u.op.couples_samples else "the units of a sample"
            return (rf"the gradient of ${v}$ through ${self.sym(u.name)}$",
                    rf"The normalization couples {coupled}: every output depends on every input through "
                    r"the mean and the variance, so the backward step sums over them. SymPy differentiates "
                    r"the forward definition with the statistics written out as sums, names the "
                    r"statistics, writes the input as $\mu + \sigma \hat{x}$ and simplifies; the last "
                    r"step is the compact form of Ioffe and Szegedy, ``Batch Normalization'' (2015), "
                    r"$dx = \frac{\gamma}{N \sigma}\left(N\,dy - \sum dy - \hat{x} \sum dy\,\hat{x}\right)$.")
        if e.kind == "backprop":
            u = self.g.node(e.source)
            us = self.sym(u.name)
            part = e.source if "__" in str(e.lhs.base.label) else ""
            head = rf"the gradient of ${v}$" + (rf" through ${us}$" if part else "")
            if u.kind == "activation":
                act = rf"The activation ${us} = {u.activation.latex}({v})$"
                rule = (act + r" is elementwise, its Jacobian is diagonal: the gradient is multiplied "
                        r"entry by entry by the derivative, written in terms of the stored forward output."
                        if u.activation.elementwise else act + r" couples the entries, its Jacobian is full.")
            else:
                rule = {"dense": (rf"The dense node ${us}$ is linear in ${v}$: its Jacobian is the matrix "
                                  r"that multiplies the input, and the backward step multiplies the upstream "
                                  rf"gradient by it (the linear layer of {BOOK}, Algorithm~14.1)."),
                        "add": (r"An add node distributes: each input receives the upstream gradient "
                                rf"unchanged ({SLIDES})."),
                        "multiply": (r"A multiply node swaps: each input receives the upstream gradient "
                                     rf"times the other input ({SLIDES})."),
                        "concat": (rf"The merge hands ${v}$ its own slice of the upstream gradient "
                                   rf"(eqs.~14.39--14.41 of {BOOK}).")}.get(
                    u.kind, rf"SymPy differentiates the expression of ${us}$ with respect to ${v}$.")
            if part:
                rule += (rf" This is the part of the gradient of ${v}$ that comes back through ${us}$; "
                         r"the branch sum below adds the parts.")
            return head, rule
        if e.kind == "branch_sum":
            cons = [self.sym(c) for c, _ in self.g.consumers(e.node)]
            return (rf"branch sum at ${v}$",
                    rf"The value ${v}$ feeds {len(cons)} nodes (${'$, $'.join(cons)}$): in the forward pass it is "
                    r"copied (a branch), so in the backward pass the gradients that come back along "
                    rf"its outgoing edges add, $g_{{\mathrm{{in}}}} = g^{{a}}_{{\mathrm{{out}}}} + "
                    rf"g^{{b}}_{{\mathrm{{out}}}}$ (eq.~14.46 of {BOOK}; ``copy adds'' in {SLIDES}).")
        if e.kind == "shared_sum":
            uses = [self.sym(u) for u, _ in self.g.param(e.node).uses]
            return (rf"shared parameter ${v}$",
                    rf"The parameter ${v}$ is used by {len(uses)} nodes (${'$, $'.join(uses)}$): "
                    r"sharing a parameter is a branch of the parameter, so its gradient is the sum of "
                    rf"the gradients of its uses, $\partial {nt.loss} / \partial \theta = \sum_i \partial {nt.loss} / "
                    rf"\partial \theta^{{i}}$ (eq.~14.47 of {BOOK}).")
        return e.kind, _text(e.doc)

    def summary(self):
        return [self.vector_row(e) or self.entry_row(e) for e in self.d.equations
                if e.kind in ("grad_W", "grad_b", "backprop", "output_delta", "loss_grad", "branch_sum",
                              "shared_sum") and e.name not in self.d.inlined]

    def entry_row(self, e, note=""):
        """An equation entry by entry; the sample index only where the batch is summed."""
        sample = _has_sample_sum(e.rhs)
        return _row(self.index_lhs(e, sample), "= " + self.pr(e.rhs, sample=sample), note)

    def equation_rows(self):
        return [self.entry_row(e, rf"\text{{{_text(e.kind.replace('_', ' '))}}}") for e in self.d.equations]


def render(derivation, notation="cs231n", document=False):
    from ..output import environment
    nt = get_notation(notation)
    r = Renderer(derivation, nt)
    env = environment()
    if not document:
        return env.get_template("latex/graph_equations.tex.j2").render(rows=r.equation_rows())
    g, steps = derivation.graph, r.backward()
    return env.get_template("latex/graph_document.tex.j2").render(
        name=_text(g.name), notation=nt, nt_title=nt.graph_title, nt_note=nt.graph_note, loss=nt.loss,
        picture=tikz(g, r.sym, nt.loss), table=r.graph_table(), params=r.params(),
        forward=r.forward(), loss_rows=r.index_rows(derivation["L"], labels=False), loss_text=r.loss_text(g.loss_node),
        loss_name=_text(g.loss_node.loss.name),
        backward=steps, summary=r.summary(), book=BOOK, slides=SLIDES,
        branches=[s for s in steps if s["kind"] == "branch_sum"],
        shared=[r.sym(p.name) for p in g.params if len(p.uses) > 1],
        reduction=g.reduction, index_first=nt.index_base, legend=stage_legend(),
        part=(rf"\frac{{\partial {nt.loss}}}{{\partial v}}\Big|_{{u}}" if nt.frac else "g_{v}^{(u)}"))


def write_document(derivation, path, notation="cs231n", pdf=False):
    """Write the handout to ``path`` and with ``pdf=True`` the PDF beside it (``latex.write_tex``).
    Returns the paths written."""
    return write_tex(path, render(derivation, notation=notation, document=True), pdf)

"""The five notations of DESIGN.md, in one place: how each names a Derivation's quantities and
how its own matrices relate to the derivation's convention.

Contract: ``NOTATIONS`` maps a notation name to a ``Notation``; ``get(name)`` returns it or
raises a ``SymbpError`` naming the valid ones. The derivation is written in one convention:
z = W a + b with W of shape (n_out, n_in), per-sample column vectors, Jacobians in the
denominator layout (one row per entry of the variable: dz/da = W^T), rows of a batch are
samples. A notation states

- its symbols: ``symbol(kind, layer, flavor, sample)`` for a vector or matrix and
  ``entry(kind, layer, indices, flavor, sample)`` for one entry, where ``kind`` is one of
  ``x`` (the input, ``a``, ``z``, ``W``, ``b``, ``y``, ``delta`` = dL/dz, ``ga`` = dL/da,
  ``gW``, ``gb``, ``Ja`` = da/dz, ``Jz`` = dz^{l}/da^{l-1}));
- its flavors (``flavors``): ``"sample"`` (the quantities of one sample; the sample is a
  superscript (s) where sums over the batch are written out) and, for ``batch`` only,
  ``"batch"`` (B x n matrices, the sample is the row index); ``main`` is the flavor its matrix
  equations use;
- ``transposed[flavor]``: the kinds whose own matrix is the transpose of the derivation's, e.g.
  the stored weight W^{[l]} of ``f = W^T a`` (the IT5005 slides "Multi-Layer Perceptrons") or
  the row-vector gradients of the book chapter "Backpropagation" (eq. 14.4).
  Renderers substitute own = ours or own^T = ours and let SymPy move the transposes, so each
  notation's equations are correct in its convention, not only renamed;
- index style: subscripts counted from 1, or brackets counted from 0 (the book chapter).
The works themselves are cited from ``render.sources`` (``NOTATION_SOURCE``).

``latex_base(base, notation)`` is the LaTeX of a quantity (``naming.quantity``) in a notation.
"""
from dataclasses import dataclass

from .. import naming
from ..errors import SymbpError

# Gradient kinds and the kind they differentiate the loss with respect to.
GRADIENT_OF = {"delta": "z", "ga": "a", "gW": "W", "gb": "b"}


def _fmt(stem, sub="", sup=""):
    return stem + (f"_{{{sub}}}" if sub else "") + (f"^{{{sup}}}" if sup else "")


@dataclass(frozen=True)
class Notation:
    name: str
    title: str
    loss: str                       # LaTeX of the loss of the batch
    stems: dict                     # flavor -> kind -> (stem, sub, sup), templates of l = layer, m = l - 1
    transposed: dict                # flavor -> frozenset of kinds stored as our transpose
    layout: str                     # "denominator" or "numerator" (Jacobians)
    scalars: tuple                  # names of the scalar pre-activation and activation
    note: str                       # LaTeX prose: the conventions, for the document
    graph_title: str                # the same conventions as the graph handout words them
    graph_note: str
    graph_transposed: frozenset = frozenset()   # graph roles stored as our transpose
    main: str = "sample"            # flavor of the matrix equations
    index_base: int = 1
    brackets: bool = False          # x[j] (the book chapter's style) instead of x_j
    frac: bool = False              # graph gradients written as dL/dv instead of g_v
    flavors: tuple = ("sample",)

    @property
    def batch(self):
        """Rows are samples: the graph handout's values are B x n matrices."""
        return self.main == "batch"

    def _stem(self, kind, layer, flavor, sample=None):
        """(stem, subscript, superscript) of a kind, the sample (s) ending the superscript; None
        where the notation has no symbol of its own for it."""
        parts = self.stems[flavor].get("x" if kind == "a" and layer == 0 else kind)
        if parts is None:
            return None
        stem, sub, sup = (t.format(l=layer, m=None if layer is None else layer - 1) for t in parts)
        return stem, sub, sup + (f"({sample})" if sample else "")

    def symbol(self, kind, layer=None, flavor=None, sample=None):
        """LaTeX of a vector or matrix: ``symbol("W", 2)`` is W^{[2]} in cs231n."""
        flavor = flavor or self.main
        if kind in ("Ja", "Jz"):
            num, den = (("a", layer), ("z", layer)) if kind == "Ja" else (("z", layer), ("a", layer - 1))
            return (rf"\frac{{\partial {self.symbol(num[0], num[1], flavor, sample)}}}"
                    rf"{{\partial {self.symbol(den[0], den[1], flavor, sample)}}}")
        parts = self._stem(kind, layer, flavor, sample)
        if parts is None and kind in GRADIENT_OF:
            var = self.symbol(GRADIENT_OF[kind], layer, flavor, sample)
            return rf"\frac{{\partial {self.loss}}}{{\partial {var}}}"
        if parts is None:
            raise KeyError(kind)
        return _fmt(*parts)

    def entry(self, kind, layer, indices, flavor=None, sample=None):
        """LaTeX of one entry; ``indices`` are printed index strings in this notation's order."""
        flavor = flavor or self.main
        parts = self._stem(kind, layer, flavor, sample)
        if parts is None and kind in GRADIENT_OF:
            var = self.entry(GRADIENT_OF[kind], layer, indices, flavor, sample)
            return rf"\frac{{\partial {self.loss}}}{{\partial {var}}}"
        stem, sub, sup = parts
        if self.brackets:
            return f"{_fmt(stem, sub, sup)}[{', '.join(indices)}]"
        idx = ("" if all(len(i) == 1 for i in indices) else ",").join(indices)
        if sub:
            idx = f"{sub},{idx}" if idx else sub
        return _fmt(stem, idx, sup)

    def index(self, i):
        """A concrete 0-based index as this notation counts."""
        return str(int(i) + self.index_base)


def _layered(sub, sup, x="x", y="y", **stems):
    """A flavor's stems: x and y plain, the other kinds with the layer as subscript ``sub`` or
    superscript ``sup`` (templates of l = layer, m = l - 1)."""
    return {"x": (x, "", ""), "y": (y, "", ""), **{k: (s, sub, sup) for k, s in stems.items()}}


CS231N = Notation(
    name="cs231n",
    title="column vectors and errors $\\delta^{[l]}$, as in CS231n and CMU 11-785",
    loss="L",
    stems={"sample": _layered("", "[{l}]", a="a", z="z", W="W", b="b", delta=r"\delta")},
    transposed={"sample": frozenset()},
    layout="denominator",
    scalars=("z", "a"),
    note=(r"Per sample, column vectors: $z^{[l]} = W^{[l]} a^{[l-1]} + b^{[l]}$, "
          r"$a^{[l]} = f(z^{[l]})$, $a^{[0]} = x$, with $W^{[l]}$ of shape $n_l \times n_{l-1}$ and "
          r"the error $\delta^{[l]} = \partial L / \partial z^{[l]}$. "
          r"A Jacobian $\partial u / \partial v$ has one row per entry of $v$ (so "
          r"$\partial z^{[l]} / \partial a^{[l-1]} = (W^{[l]})^{T}$ and the chain rule multiplies "
          r"the inner derivative first), as in the slides."),
    graph_title=r"the CS231n-style slides ``Multi-Layer Networks \& Back-Propagation''",
    graph_note=(r"Per sample, every node's value $v$ is a column vector; a dense node computes "
                r"$v = W a + b$ with $W$ of shape $n_v \times n_a$. The gradient $g_v = \partial L / \partial v$ "
                r"is a column vector of the shape of $v$ (the shape rule of the slides), and a parameter's "
                r"gradient has the parameter's shape: $\partial L / \partial W = \sum_s g_v\, a^{T}$."),
)

UDL = Notation(
    name="udl",
    title="the notation of Understanding Deep Learning ($\\beta$, $\\Omega$, $h$, $f$)",
    loss="L",
    stems={"sample": {**_layered("{m}", "", z="f", W=r"\Omega", b=r"\beta"), "a": ("h", "{l}", "")}},
    transposed={"sample": frozenset()},
    layout="denominator",
    scalars=("f", "h"),
    note=(r"Per sample, column vectors: $f_k = \beta_k + \Omega_k h_k$ and $h_{k+1} = a[f_k]$ with "
          r"$h_0 = x$, so layer $l$ of this network has pre-activation $f_{l-1}$, weights "
          r"$\Omega_{l-1}$ (shape $n_l \times n_{l-1}$) and output $h_l$. The backward pass carries "
          r"$\partial L / \partial f_k$; then $\partial L / \partial \Omega_k = "
          r"(\partial L / \partial f_k)\, h_k^{T}$. Jacobians have one row per entry of the variable "
          r"($\partial f_k / \partial h_k = \Omega_k^{T}$)."),
    graph_title=r"the slides in the notation of \emph{Understanding Deep Learning}",
    graph_note=(r"Per sample, every node's value is a column vector; a dense node computes $v = b + W a$ "
                r"(the slides' $f_k = \beta_k + \Omega_k h_k$ with the graph's own parameter names). "
                r"Gradients are written out as $\partial L / \partial v$, column vectors of the shape of $v$, "
                r"and $\partial L / \partial W = \sum_s (\partial L / \partial v)\, a^{T}$."),
    frac=True,
)

TRANSPOSED = Notation(
    name="transposed",
    title="stored weights with $f = W^{T} a$ and loss $\\varepsilon$",
    loss=r"\varepsilon",
    stems={"sample": _layered("", "[{l}]", a="a", z="f", W="W", b="b", delta=r"\delta")},
    transposed={"sample": frozenset({"W", "gW"})},
    layout="denominator",
    scalars=("f", "a"),
    note=(r"Per sample, column vectors: $f^{[l]} = (W^{[l]})^{T} a^{[l-1]} + b^{[l]}$, "
          r"$a^{[l]} = g^{[l]}(f^{[l]})$, $a^{[0]} = x$. The stored weight matrix $W^{[l]}$ has shape "
          r"$n_{l-1} \times n_l$: it is the transpose of the weight of $z = W a + b$ (entry "
          r"$W^{[l]}_{kj}$ connects input $k$ to unit $j$), so its gradient is transposed too: "
          r"$\partial \varepsilon / \partial W^{[l]} = a^{[l-1]} (\delta^{[l]})^{T}$, not "
          r"$\delta a^{T}$. Here $\delta^{[l]} = \partial \varepsilon / \partial f^{[l]}$ includes the "
          r"loss (the slides' $\delta$ for a scalar output is $\partial \hat y / \partial f$, multiplied "
          r"by $\partial \varepsilon / \partial \hat y$ at the end). Jacobians have one row per entry "
          r"of the variable ($\partial f^{[l]} / \partial a^{[l-1]} = W^{[l]}$)."),
    graph_title=r"the course slides with $f = W^{T} a$ and loss $\varepsilon$",
    graph_note=(r"Per sample, column vectors; every weight is stored as the slides store it, transposed: "
                r"a dense node computes $v = W^{T} a + b$ with $W$ of shape $n_a \times n_v$ (a node declared "
                r"with the transposed weight then reads $W a$). So $\partial \varepsilon / \partial W = "
                r"\sum_s a\, g_v^{T}$, and $g_v = \partial \varepsilon / \partial v$ is a column."),
    graph_transposed=frozenset({"W", "gW"}),
)

ROWVECTOR = Notation(
    name="rowvector",
    title="row-vector gradients $g$, $L^{x}$ and $L^{\\theta}$",
    loss="J",
    stems={"sample": {**_layered("{l}", "", x="x", a="x", z="z", W="W", b="b", ga="g"),
                      "x": ("x", "0", ""), "delta": ("g", "z_{{{l}}}", "")}},
    transposed={"sample": frozenset({"delta", "ga", "gW", "gb", "Ja", "Jz"})},
    layout="numerator",
    scalars=("z", "x"),
    note=(r"Layer $l$ is a linear module $z_l = W_l x_{l-1} + b_l$ followed by a pointwise module "
          r"$x_l = f(z_l)$; data $x_l, z_l$ and parameters are column vectors, $W_l$ has shape "
          r"$n_l \times n_{l-1}$. Gradients are row vectors: $g_l = \partial J / \partial x_l$ and "
          r"$g_{z_l} = \partial J / \partial z_l$ are $1 \times n_l$ (eq.~14.4). A layer's Jacobian "
          r"$L^{x} = \partial x_{\mathrm{out}} / \partial x_{\mathrm{in}}$ has one row per output "
          r"(eq.~14.6): $W_l$ for the linear module, $\operatorname{diag}(f'(z_l))$ for the pointwise "
          r"one, and the backward pass is $g_{\mathrm{in}} = g_{\mathrm{out}} L^{x}$ (eq.~14.10). "
          r"The parameter gradient $\partial J / \partial W_l = x_{l-1}\, g_{z_l}$ has shape "
          r"$n_{l-1} \times n_l$, the transpose of $W_l$ (eq.~14.29), so the update is "
          r"$W_l \leftarrow W_l - \eta (\partial J / \partial W_l)^{T}$ (eq.~14.9); "
          r"$\partial J / \partial b_l = g_{z_l}$ is a row."),
    index_base=0,
    brackets=True,
    graph_title=r"the book chapter ``Backpropagation'' (row-vector gradients)",
    graph_note=(r"Data and parameters are column vectors, a dense node computes $v = W a + b$ with $W$ of "
                r"shape $n_v \times n_a$. Gradients are row vectors: $g_v = \partial J / \partial v$ is "
                r"$1 \times n_v$ (eq.~14.4); a node's Jacobian $L^{x} = \partial x_{\mathrm{out}} / "
                r"\partial x_{\mathrm{in}}$ has one row per output (eq.~14.6) and the backward step is "
                r"$g_{\mathrm{in}} = g_{\mathrm{out}} L^{x}$ (eq.~14.10). The parameter gradient "
                r"$\partial J / \partial W = \sum_s a\, g_v$ has the shape of $W^{T}$ (eq.~14.29). "
                r"Indices count from 0, as in the book."),
    graph_transposed=frozenset({"grad", "gW", "gb"}),
)

BATCH = Notation(
    name="batch",
    title="row batches $H = X W_1$",
    loss="L",
    stems={"batch": _layered("{l}", "", x="X", y="Y", a="A", z="H", W="W", b="b", delta=r"\Delta"),
           "sample": _layered("{l}", "", a="a", z="h", W="W", b="b", delta=r"\delta")},
    transposed={"batch": frozenset({"W", "gW"}),
                "sample": frozenset({"W", "gW", "b", "gb", "delta", "ga", "Ja", "Jz"})},
    layout="numerator",
    scalars=("h", "a"),
    note=(r"Rows are samples: $X$ is $B \times n_0$, $H_l = A_{l-1} W_l + \mathbf{1} b_l$, "
          r"$A_l = f(H_l)$, $A_0 = X$, where $\mathbf{1}$ is a column of $B$ ones and $b_l$ a row. "
          r"$W_l$ has shape $n_{l-1} \times n_l$: it is the transpose of the weight of $z = W a + b$ "
          r"(entry $W_{l,kj}$ connects input $k$ to unit $j$), so its gradient is the transpose of "
          r"$\sum_s \delta a^{T}$: $\partial L / \partial W_l = A_{l-1}^{T} \Delta_l$ with "
          r"$\Delta_l = \partial L / \partial H_l$ of shape $B \times n_l$ (dimension balancing, "
          r"as in the CS231n slides: $Z = XW$ gives $\partial L / \partial W = X^{T} \delta$ and "
          r"$\partial L / \partial X = \delta W^{T}$). For one sample $s$, $x, h_l, a_l$ are columns "
          r"(row $s$ of $H_l$ is $h_l^{T}$) while $b_l$ and the gradients "
          r"$\delta_l = \partial L / \partial h_l$ are rows (row $s$ of $\Delta_l$), and a Jacobian has "
          r"one row per output, $(\partial u / \partial v)_{ij} = \partial u_i / \partial v_j$, as in "
          r"the notebook."),
    main="batch",
    flavors=("batch", "sample"),
    graph_title=r"the tutorial notebook's row batches $H = X W_1$",
    graph_note=(r"Rows are samples: each node's symbol stands for the $B \times n$ matrix of the batch, "
                r"$\mathbf{1}$ is a column of $B$ ones and a bias $b$ is a row. Weights are stored as in the "
                r"notebook, $n_{\mathrm{in}} \times n_{\mathrm{out}}$, so a dense node computes "
                r"$V = A W + \mathbf{1} b$, and by dimension balancing $\partial L / \partial W = A^{T} G_V$ "
                r"with $G_V = \partial L / \partial V$ of shape $B \times n_V$."),
    graph_transposed=frozenset({"W", "gW"}),
)

NOTATIONS = {n.name: n for n in (CS231N, UDL, TRANSPOSED, ROWVECTOR, BATCH)}


def get(name, what=""):
    """The Notation called ``name``; a SymbpError names the valid ones otherwise (``what``
    says for what, e.g. " for a graph")."""
    try:
        return NOTATIONS[name]
    except (KeyError, TypeError):
        raise SymbpError(f"notation: unknown notation {name!r}{what} (expected one of: "
                         f"{', '.join(NOTATIONS)})") from None


def latex_base(base, notation="cs231n"):
    """LaTeX of a quantity in a notation's main flavor, e.g. z^{[2]} for z2 in cs231n, f_{1} in
    udl, H_{2} in batch. An unknown notation raises a SymbpError naming the valid ones."""
    kind, layer = naming.parse(base)
    return get(notation).symbol(kind, layer)

"""The five notations of DESIGN.md, in one place: how each names a Derivation's quantities and
how its own matrices relate to the derivation's convention.

Contract: ``NOTATIONS`` maps a notation name to a ``Notation``; ``get(name)`` returns it or
raises a ``SymbpError`` naming the valid ones. The derivation is written in one convention:
z = W a + b with W of shape (n_out, n_in), per-sample column vectors, Jacobians in the
denominator layout (one row per entry of the variable: dz/da = W^T), rows of a batch are
samples. A notation states

- its symbols: ``symbol(kind, layer, flavor, sample)`` for a vector or matrix and
  ``entry(kind, layer, indices, flavor, sample)`` for one entry, where ``kind`` is one of
  ``KINDS`` (``x`` the input, ``a``, ``z``, ``W``, ``b``, ``y``, ``delta`` = dL/dz, ``ga`` = dL/da,
  ``gW``, ``gb``, ``Ja`` = da/dz, ``Jz`` = dz^{l}/da^{l-1});
- its flavors: ``"sample"`` (the quantities of one sample; the sample is a superscript (s)
  where sums over the batch are written out) and, for ``batch`` only, ``"batch"`` (B x n
  matrices, the sample is the row index); ``main`` is the flavor its matrix equations use;
- ``transposed[flavor]``: the kinds whose own matrix is the transpose of the derivation's, e.g.
  the stored weight W^{[l]} of ``f = W^T a`` (the IT5005 slides "Multi-Layer Perceptrons") or
  the row-vector gradients of the book chapter "Backpropagation" (eq. 14.4).
  Renderers substitute own = ours or own^T = ours and let SymPy move the transposes, so each
  notation's equations are correct in its convention, not only renamed;
- index style: subscripts counted from 1, or brackets counted from 0 (the book chapter).
The works themselves are cited from ``render.sources`` (``NOTATION_SOURCE``).

``latex_base(base, notation)`` is the LaTeX of a quantity (``naming.quantity``) in a notation.
"""
from dataclasses import dataclass, field

from .. import naming
from ..errors import SymbpError

KINDS = ("x", "a", "z", "W", "b", "y", "delta", "ga", "gW", "gb", "Ja", "Jz")
# Gradient kinds and the kind they differentiate the loss with respect to.
GRADIENT_OF = {"delta": "z", "ga": "a", "gW": "W", "gb": "b"}


def _fmt(stem, sub="", sup=""):
    out = stem
    if sub:
        out += f"_{{{sub}}}"
    if sup:
        out += f"^{{{sup}}}"
    return out


def _bracket(l):
    return f"[{l}]"


@dataclass(frozen=True)
class Notation:
    name: str
    title: str
    loss: str                       # LaTeX of the loss of the batch
    stems: dict                     # flavor -> kind -> callable(layer) -> (stem, sub, sup)
    transposed: dict                # flavor -> frozenset of kinds stored as our transpose
    layout: str                     # "denominator" or "numerator" (Jacobians)
    scalars: tuple                  # names of the scalar pre-activation and activation
    note: str                       # LaTeX prose: the conventions, for the document
    main: str = "sample"            # flavor of the matrix equations
    index_base: int = 1
    brackets: bool = False          # x[j] (the book chapter's style) instead of x_j
    flavors: tuple = field(default=("sample",))

    def _stem(self, kind, layer, flavor):
        table = self.stems[flavor]
        if kind == "a" and layer == 0:
            kind = "x"
        fn = table.get(kind)
        return None if fn is None else fn(layer)

    def _with_sample(self, parts, sample):
        stem, sub, sup = parts
        if sample:
            sup = f"{sup}({sample})"
        return stem, sub, sup

    def symbol(self, kind, layer=None, flavor=None, sample=None):
        """LaTeX of a vector or matrix: ``symbol("W", 2)`` is W^{[2]} in cs231n."""
        flavor = flavor or self.main
        if kind in ("Ja", "Jz"):
            num, den = (("a", layer), ("z", layer)) if kind == "Ja" else (("z", layer), ("a", layer - 1))
            return (rf"\frac{{\partial {self.symbol(num[0], num[1], flavor, sample)}}}"
                    rf"{{\partial {self.symbol(den[0], den[1], flavor, sample)}}}")
        parts = self._stem(kind, layer, flavor)
        if parts is None and kind in GRADIENT_OF:
            var = self.symbol(GRADIENT_OF[kind], layer, flavor, sample)
            return rf"\frac{{\partial {self.loss}}}{{\partial {var}}}"
        if parts is None:
            raise KeyError(kind)
        return _fmt(*self._with_sample(parts, sample))

    def entry(self, kind, layer, indices, flavor=None, sample=None):
        """LaTeX of one entry; ``indices`` are printed index strings in this notation's order."""
        flavor = flavor or self.main
        parts = self._stem(kind, layer, flavor)
        if parts is None and kind in GRADIENT_OF:
            var = self.entry(GRADIENT_OF[kind], layer, indices, flavor, sample)
            return rf"\frac{{\partial {self.loss}}}{{\partial {var}}}"
        stem, sub, sup = self._with_sample(parts, sample)
        if self.brackets:
            return f"{_fmt(stem, sub, sup)}[{', '.join(indices)}]"
        idx = ("" if all(len(i) == 1 for i in indices) else ",").join(indices)
        if sub:
            idx = f"{sub},{idx}" if idx else sub
        return _fmt(stem, idx, sup)

    def index(self, i):
        """A concrete 0-based index as this notation counts."""
        return str(int(i) + self.index_base)


# Per-sample symbols shared by the column notations with superscript layers.
def _layered(a, z, delta, x="x"):
    return {
        "x": lambda l: (x, "", ""),
        "a": lambda l: (a, "", _bracket(l)),
        "z": lambda l: (z, "", _bracket(l)),
        "W": lambda l: ("W", "", _bracket(l)),
        "b": lambda l: ("b", "", _bracket(l)),
        "y": lambda l: ("y", "", ""),
        "delta": lambda l: (delta, "", _bracket(l)),
    }


CS231N = Notation(
    name="cs231n",
    title="column vectors and errors $\\delta^{[l]}$, as in CS231n and CMU 11-785",
    loss="L",
    stems={"sample": _layered("a", "z", r"\delta")},
    transposed={"sample": frozenset()},
    layout="denominator",
    scalars=("z", "a"),
    note=(r"Per sample, column vectors: $z^{[l]} = W^{[l]} a^{[l-1]} + b^{[l]}$, "
          r"$a^{[l]} = f(z^{[l]})$, $a^{[0]} = x$, with $W^{[l]}$ of shape $n_l \times n_{l-1}$ and "
          r"the error $\delta^{[l]} = \partial L / \partial z^{[l]}$. "
          r"A Jacobian $\partial u / \partial v$ has one row per entry of $v$ (so "
          r"$\partial z^{[l]} / \partial a^{[l-1]} = (W^{[l]})^{T}$ and the chain rule multiplies "
          r"the inner derivative first), as in the slides."),
)

UDL = Notation(
    name="udl",
    title="the notation of Understanding Deep Learning ($\\beta$, $\\Omega$, $h$, $f$)",
    loss="L",
    stems={"sample": {
        "x": lambda l: ("x", "", ""),
        "a": lambda l: ("h", str(l), ""),
        "z": lambda l: ("f", str(l - 1), ""),
        "W": lambda l: (r"\Omega", str(l - 1), ""),
        "b": lambda l: (r"\beta", str(l - 1), ""),
        "y": lambda l: ("y", "", ""),
    }},
    transposed={"sample": frozenset()},
    layout="denominator",
    scalars=("f", "h"),
    note=(r"Per sample, column vectors: $f_k = \beta_k + \Omega_k h_k$ and $h_{k+1} = a[f_k]$ with "
          r"$h_0 = x$, so layer $l$ of this network has pre-activation $f_{l-1}$, weights "
          r"$\Omega_{l-1}$ (shape $n_l \times n_{l-1}$) and output $h_l$. The backward pass carries "
          r"$\partial L / \partial f_k$; then $\partial L / \partial \Omega_k = "
          r"(\partial L / \partial f_k)\, h_k^{T}$. Jacobians have one row per entry of the variable "
          r"($\partial f_k / \partial h_k = \Omega_k^{T}$)."),
)

TRANSPOSED = Notation(
    name="transposed",
    title="stored weights with $f = W^{T} a$ and loss $\\varepsilon$",
    loss=r"\varepsilon",
    stems={"sample": _layered("a", "f", r"\delta")},
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
)

ROWVECTOR = Notation(
    name="rowvector",
    title="row-vector gradients $g$, $L^{x}$ and $L^{\\theta}$",
    loss="J",
    stems={"sample": {
        "x": lambda l: ("x", "0", ""),
        "a": lambda l: ("x", str(l), ""),
        "z": lambda l: ("z", str(l), ""),
        "W": lambda l: ("W", str(l), ""),
        "b": lambda l: ("b", str(l), ""),
        "y": lambda l: ("y", "", ""),
        "delta": lambda l: ("g", f"z_{{{l}}}", ""),
        "ga": lambda l: ("g", str(l), ""),
    }},
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
)

BATCH = Notation(
    name="batch",
    title="row batches $H = X W_1$",
    loss="L",
    stems={
        "batch": {
            "x": lambda l: ("X", "", ""),
            "a": lambda l: ("A", str(l), ""),
            "z": lambda l: ("H", str(l), ""),
            "W": lambda l: ("W", str(l), ""),
            "b": lambda l: ("b", str(l), ""),
            "y": lambda l: ("Y", "", ""),
            "delta": lambda l: (r"\Delta", str(l), ""),
        },
        "sample": {
            "x": lambda l: ("x", "", ""),
            "a": lambda l: ("a", str(l), ""),
            "z": lambda l: ("h", str(l), ""),
            "W": lambda l: ("W", str(l), ""),
            "b": lambda l: ("b", str(l), ""),
            "y": lambda l: ("y", "", ""),
            "delta": lambda l: (r"\delta", str(l), ""),
        },
    },
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
)

NOTATIONS = {n.name: n for n in (CS231N, UDL, TRANSPOSED, ROWVECTOR, BATCH)}


def get(name):
    """The Notation called ``name``; a SymbpError names the valid ones otherwise."""
    try:
        return NOTATIONS[name]
    except (KeyError, TypeError):
        raise SymbpError(f"notation: unknown notation {name!r} (expected one of: "
                         f"{', '.join(NOTATIONS)})") from None


def latex_base(base, notation="cs231n"):
    """LaTeX of a quantity in a notation's main flavor, e.g. z^{[2]} for z2 in cs231n, f_{1} in
    udl, H_{2} in batch. An unknown notation raises a SymbpError naming the valid ones."""
    kind, layer = naming.parse(base)
    return get(notation).symbol(kind, layer)

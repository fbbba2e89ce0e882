"""The one naming module: every SymPy symbol, LaTeX name and code identifier comes from here.

Contract:
- quantities are SymPy ``IndexedBase`` objects named ``<kind><layer>`` (``z1``, ``a0``, ``W2``,
  ``delta2``); ``quantity(kind, layer)`` builds them and ``parse(base)`` reads the name back;
- the row index of every batched quantity is the sample index ``s``; unit indices are
  ``i, j, k, p, q``; layer widths are the positive integer symbols ``n_l`` and the batch size ``B``;
- ``ident(base)`` gives the identifier used in generated code, ``param_key`` the key of a
  parameter in the ``params`` / ``grads`` dictionaries; the LaTeX of a quantity in a notation
  is ``symbp.render.notation.latex_base(base, notation)`` (the render stage owns the notations,
  and this module, which every stage imports, imports no stage).
Nothing else in the package invents a name.
"""
import keyword
import re
from functools import lru_cache

import sympy as sp

# Index symbols (integers). s runs over the batch, the others over units.
S = sp.Symbol("s", integer=True)
I, J, K, P, Q = sp.symbols("i j k p q", integer=True)
T = sp.Symbol("t", integer=True)     # a second sample index, summed over in the loss
# Tensor values (batch, channels, height, width): o runs over output channels, c over input
# channels, (i, j) over output positions, (u, v) over input positions, (p, q) over a kernel or
# pooling window; d, m, n are the summation indices of a forward definition (channel, kernel
# row, kernel column) and r a second output channel, summed over in a parameter's gradient.
O, C, U, V = sp.symbols("o c u v", integer=True)
D, M, N, R = sp.symbols("d m n r", integer=True)
BATCH = sp.Symbol("B", integer=True, positive=True)

# The scalar variables of forward definitions in the function table.
Z = sp.Symbol("z", real=True)
A = sp.Symbol("a", real=True)
Y = sp.Symbol("y", real=True)

# Quantity kinds, in the order they are printed. Each kind maps to
# (code identifier prefix, LaTeX symbol in the cs231n notation, description).
KINDS = {
    "a": ("A", "a", "activation (layer output; a0 is the input x)"),
    "z": ("Z", "z", "pre-activation"),
    "W": ("W", "W", "weight matrix, shape (n_out, n_in)"),
    "b": ("b", "b", "bias vector"),
    "y": ("Y", "y", "target"),
    "delta": ("D", r"\delta", "dL/dz"),
    "ga": ("G", r"g", "dL/da"),
    "gW": ("gW", r"\frac{\partial L}{\partial W}", "dL/dW"),
    "gb": ("gb", r"\frac{\partial L}{\partial b}", "dL/db"),
}
_NAME = re.compile(r"(delta|ga|gW|gb|a|z|W|b|y)(\d*)")


@lru_cache(maxsize=None)
def quantity(kind, layer=None):
    """The IndexedBase of a quantity: ``quantity("z", 2)`` is z2 (rows: samples)."""
    if kind not in KINDS:
        raise KeyError(kind)
    return sp.IndexedBase(f"{kind}{'' if layer is None else layer}", real=True)


def parse(base):
    """``parse(IndexedBase('delta2')) == ("delta", 2)``; the target ``y`` gives ("y", None)."""
    m = _NAME.fullmatch(str(base.label if hasattr(base, "label") else base))
    if not m:
        raise KeyError(base)
    return m.group(1), (int(m.group(2)) if m.group(2) else None)


@lru_cache(maxsize=None)
def width(layer):
    """The symbolic width n_l of layer l (layer 0 is the input)."""
    return sp.Symbol(f"n_{layer}", integer=True, positive=True)


def ident(base):
    """Identifier of a quantity in generated code: a0 -> X, a2 -> A2, delta2 -> D2, y -> Y."""
    kind, layer = parse(base)
    if kind == "a" and layer == 0:
        return "X"
    prefix = KINDS[kind][0]
    return prefix if layer is None else f"{prefix}{layer}"


def param_key(kind, layer):
    """Key of a parameter in params and grads dictionaries: W1, b1, ..."""
    return f"{kind}{layer}"


def grad_kind(kind):
    """Kind of the gradient of a parameter kind: W -> gW."""
    return "g" + kind


# Network names become directory names and Python identifiers: keep them boring.
_SAFE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")


def is_safe_name(name):
    """True if ``name`` can be a directory name and part of a Python identifier."""
    return bool(isinstance(name, str) and _SAFE_NAME.fullmatch(name)) and not keyword.iskeyword(name)


def module_name(network_name, target, dtype):
    """Module name of a generated kernel, also its file stem inside generated/<network>/."""
    return f"{target}_{dtype}"


def import_name(network_name, target, dtype, digest):
    """Name under which a generated module is put into sys.modules (unique per spec)."""
    return f"symbp_generated.{network_name}.{target}_{dtype}_{digest[:12]}"


# ----------------------------------------------------------------------------------------------
# normalization ops: the summed index of a statistic and a node's own named quantities
# ----------------------------------------------------------------------------------------------

# the index a normalization statistic sums over (u), and a second one for a sum nested in it (v)
U, V = sp.symbols("u v", integer=True)

# What a normalization node names besides its value: the mean, sigma = sqrt(var + eps), the
# normalized input xhat and the constant eps. "<node>__<what>": a user name never holds "__", so
# these never collide with a node or parameter.
STATISTICS = ("mu", "sigma", "xhat", "eps")


def statistic(node, what):
    """The label of a normalization node's own quantity: statistic("bn", "mu") -> "bn__mu"."""
    if what not in STATISTICS:
        raise KeyError(what)
    return f"{node}__{what}"

# the LaTeX of a normalization node's own quantities (subscripted by the node's symbol)
STATISTIC_LATEX = {"mu": r"\mu", "sigma": r"\sigma", "xhat": r"\hat{x}", "eps": r"\epsilon"}


def parse_statistic(label):
    """(node, what) of a label made by ``statistic``, else None."""
    node, sep, what = str(label).rpartition("__")
    return (node, what) if sep and what in STATISTICS else None

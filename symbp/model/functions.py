"""The forward-definition table: activations and losses, and nothing but forward definitions.

Contract: each entry gives a function's forward definition as a SymPy expression and its printed
names. No derivative is written here or anywhere else in the package: ``symbp.derive`` obtains
every derivative from ``sympy.diff``. Adding an elementwise activation is one entry in
``ACTIVATIONS``: its definition in the scalar ``z`` (``naming.Z``), its LaTeX name and a
one-line description.

- Elementwise activations a = f(z): sigmoid, tanh, relu, leaky_relu (parameter ``slope``),
  softplus, identity, exp. User-defined ones come from an expression string in ``z``
  (``user_activation``), parsed by the safe parser.
- The vector activation softmax, a_i = exp(z_i) / sum_k exp(z_k), defined over indexed z.
- Losses per sample, summed over output units: mse 1/2 (a - y)^2, sse (a - y)^2,
  bce -(y log a + (1 - y) log(1 - a)), ce -y log a (one-hot targets: sum_i y_i = 1).
"""
from dataclasses import dataclass

import sympy as sp

from .. import naming
from ..errors import SpecError
from .exprparse import number, parse_expression

z, a, y = naming.Z, naming.A, naming.Y
SLOPE = sp.Symbol("alpha", positive=True)


@dataclass(frozen=True)
class Activation:
    """One activation. ``definition`` is f(z) in ``naming.Z``; ``None`` for vector activations."""

    name: str
    definition: sp.Expr
    latex: str
    doc: str
    elementwise: bool = True
    params: tuple = ()          # ((name, SymPy symbol, default value), ...)
    values: tuple = ()          # ((name, exact value), ...) once instantiated
    user: bool = False

    def at(self, arg):
        """f(arg): the forward definition applied to any SymPy expression."""
        return self.definition.xreplace({z: arg})

    def instantiate(self, where, prefix="", **values):
        """The activation with its parameters fixed (exact numbers), defaults filled in;
        errors name the key ``prefix + parameter``."""
        known = {p[0] for p in self.params}
        for k in values:
            if k not in known:
                exp = ", ".join(sorted(known)) or "no parameters"
                raise SpecError(where, f"{prefix}{k}", f"unknown parameter of activation {self.name!r} (expected {exp})")
        if not self.params:
            return self
        subs, vals = {}, []
        for pname, sym, default in self.params:
            v = number(values.get(pname, default), where, f"{prefix}{pname}")
            subs[sym] = v
            vals.append((pname, v))
        return Activation(self.name, self.definition.xreplace(subs), self.latex, self.doc,
                          self.elementwise, self.params, tuple(vals), self.user)

    def softmax_entry(self, zbase, s, i, k, size):
        """Vector activations: a[s, i] as an expression of indexed z (softmax only)."""
        return sp.exp(zbase[s, i]) / sp.Sum(sp.exp(zbase[s, k]), (k, 0, size - 1))


ACTIVATIONS = {
    act.name: act
    for act in (
        Activation("sigmoid", 1 / (1 + sp.exp(-z)), r"\sigma", "logistic sigmoid 1/(1+exp(-z))"),
        Activation("tanh", sp.tanh(z), r"\tanh", "hyperbolic tangent"),
        Activation("relu", sp.Max(0, z), r"\operatorname{ReLU}", "rectified linear unit max(0, z)"),
        Activation("leaky_relu", sp.Piecewise((z, z > 0), (SLOPE * z, True)),
                   r"\operatorname{LReLU}", "leaky ReLU: z for z > 0, slope*z otherwise",
                   params=(("slope", SLOPE, 0.01),)),
        Activation("softplus", sp.log(1 + sp.exp(z)), r"\operatorname{softplus}", "log(1 + exp(z))"),
        Activation("identity", z, r"\operatorname{id}", "identity (a linear layer)"),
        Activation("exp", sp.exp(z), r"\exp", "exponential"),
        Activation("softmax", None, r"\operatorname{softmax}",
                   "softmax exp(z_i) / sum_k exp(z_k) over the layer", elementwise=False),
    )
}


@dataclass(frozen=True)
class Loss:
    """A loss per sample, sum over output units of ``per_unit(a, y)``."""

    name: str
    per_unit: sp.Expr
    latex: str
    doc: str
    outputs: tuple = ()        # output activations it needs; empty: any
    onehot: bool = False       # targets are one-hot: sum_i y_i = 1


LOSSES = {
    loss.name: loss
    for loss in (
        Loss("mse", (a - y) ** 2 / 2, r"\tfrac{1}{2}\lVert a - y\rVert^2",
             "half squared error 1/2 ||a - y||^2 per sample"),
        Loss("sse", (a - y) ** 2, r"\lVert a - y\rVert^2", "squared error ||a - y||^2 per sample"),
        Loss("bce", -(y * sp.log(a) + (1 - y) * sp.log(1 - a)),
             r"-\left(y\log a + (1-y)\log(1-a)\right)", "binary cross-entropy", outputs=("sigmoid",)),
        Loss("ce", -y * sp.log(a), r"-\sum_i y_i \log a_i", "categorical cross-entropy (one-hot y)",
             outputs=("softmax",), onehot=True),
    )
}
REDUCTIONS = ("mean", "sum")


def elementwise_functions(extra=None):
    """Functions usable in expression strings: math functions and the elementwise table."""
    fns = {
        "exp": sp.exp, "log": sp.log, "sqrt": sp.sqrt, "tanh": sp.tanh, "sinh": sp.sinh,
        "cosh": sp.cosh, "sin": sp.sin, "cos": sp.cos, "atan": sp.atan, "abs": sp.Abs,
        "max": sp.Max, "min": sp.Min,
    }
    for name, act in ACTIVATIONS.items():
        if act.elementwise and not act.params:
            fns[name] = act.at
    for name, act in (extra or {}).items():
        fns[name] = act.at
    return fns


def user_activation(name, text, where="", known=None):
    """An elementwise activation from an expression string in z, e.g. swish = "z * sigmoid(z)"."""
    if not naming.is_safe_name(name):
        raise SpecError(where, f"activations.{name}", "expected a name of letters, digits and _")
    if name in ACTIVATIONS or name in elementwise_functions():
        raise SpecError(where, f"activations.{name}", "redefines a built-in activation or function")
    expr = parse_expression(text, {"z": z}, elementwise_functions(known), where, f"activations.{name}")
    if z not in expr.free_symbols:
        raise SpecError(where, f"activations.{name}", f"expected an expression in z, got the constant {text!r}")
    return Activation(name, expr, rf"\operatorname{{{name}}}".replace("_", r"\_"),
                      f"user-defined: {text}", user=True)

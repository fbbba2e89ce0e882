"""The Derivation: the one hand-off point between SymPy and every renderer.

Contract: a ``Derivation`` holds the network, the derived equations in index notation (each
with its simplification stages), the per-layer local rules (activation derivative and its
rewriting in terms of a, the activation and affine Jacobians), the per-sample loss used by the
kernels, and the batch factor c (1/B for the mean). Renderers read it and never re-derive.
Its LaTeX (``d.latex(...)``, and the Jupyter display) comes from the render stage, which the
public face (symbp/__init__.py) attaches; this stage never imports the render stage.
``batch_form`` reads an equation's matrix structure off its index form (rows of a batch are
samples): a product of two indexed factors summed over one index is a matrix product with the
transposes its index order demands, a sum over samples alone is a column sum, anything else is
elementwise.
"""
from dataclasses import dataclass
from typing import Optional

import sympy as sp

from .. import naming


@dataclass(frozen=True)
class Equation:
    name: str            # "delta2", "gW1", ...
    kind: str            # forward_z, forward_a, loss, loss_grad, output_delta, delta, backprop,
                         # input_grad, grad_W, grad_b
    layer: int
    lhs: sp.Expr         # an Indexed, e.g. delta2[s, j]
    rhs: sp.Expr         # after all passes
    stages: tuple        # ((stage name, expression), ...)
    doc: str


@dataclass(frozen=True)
class ActivationRule:
    """Local derivative of an elementwise activation: f'(z) by sympy.diff and its chosen form."""

    activation: object
    derivative: sp.Expr   # f'(z) in naming.Z, as diff gave it
    stages: tuple
    form: sp.Expr         # in naming.A when uses == "a", else in naming.Z
    uses: str             # "a" or "z"


@dataclass(frozen=True)
class LayerRules:
    layer: int
    activation: object
    rule: Optional[ActivationRule]   # None for softmax (full Jacobian)
    jacobian: tuple                  # stages of J[s,i,j] = d a[s,i] / d z[s,j]
    dz_da: tuple                     # stages of dz[s,j]/da_prev[s,k]
    dz_dW: tuple                     # stages of dz[s,j]/dW[p,q]
    dz_db: Optional[tuple]           # stages of dz[s,j]/db[p]; None for a layer without bias


@dataclass(frozen=True)
class Product:
    """out = op(left) @ op(right) (+ bias broadcast over rows)."""

    left: sp.IndexedBase
    left_t: bool
    right: sp.IndexedBase
    right_t: bool
    bias: Optional[sp.IndexedBase] = None


@dataclass(frozen=True)
class ColumnSum:
    """out[p] = sum_s arg[s, p]."""

    arg: sp.IndexedBase


def batch_form(lhs, rhs):
    """Product, ColumnSum or None (elementwise) for ``lhs = rhs`` in index notation."""
    terms = sp.Add.make_args(rhs)
    sums = [t for t in terms if isinstance(t, sp.Sum)]
    rest = [t for t in terms if not isinstance(t, sp.Sum)]
    if len(sums) != 1 or len(sums[0].limits) != 1:
        return None
    sm = sums[0]
    c = sm.limits[0][0]
    factors = sp.Mul.make_args(sm.function)
    if not all(isinstance(f, sp.Indexed) for f in factors):
        return None
    out = lhs.indices
    if len(factors) == 1 and not rest and c == naming.S and factors[0].indices == (naming.S,) + out:
        return ColumnSum(factors[0].base)
    if len(factors) != 2 or len(out) != 2:
        return None
    bias = None
    if rest:
        if len(rest) != 1 or not isinstance(rest[0], sp.Indexed) or rest[0].indices != (out[1],):
            return None
        bias = rest[0].base
    o1, o2 = out
    lf = [f for f in factors if o1 in f.indices]
    rf = [f for f in factors if o2 in f.indices]
    if len(lf) != 1 or len(rf) != 1 or lf[0] is rf[0]:
        return None
    lf, rf = lf[0], rf[0]
    if set(lf.indices) != {o1, c} or set(rf.indices) != {o2, c}:
        return None
    return Product(lf.base, lf.indices == (c, o1), rf.base, rf.indices == (o2, c), bias)


class EquationLookup:
    """Access to a derivation's equations by name and kind (``self.equations``, ``self._by_name``)."""

    def __getitem__(self, name):
        return self._by_name[name]

    def equation(self, name):
        return self._by_name[name]

    def of_kind(self, *kinds):
        return [e for e in self.equations if e.kind in kinds]


class Derivation(EquationLookup):
    """Equations of the backpropagation of one network, as SymPy derived them."""

    def __init__(self, network, equations, layers, loss_sample, batch_factor, graph_derivation=None):
        self.network = network
        self.equations = equations
        self.layers = layers
        self.loss_sample = loss_sample      # (per-sample loss expression in [s, i], "z" or "a")
        self.batch_factor = batch_factor    # 1/B (mean) or 1 (sum)
        # the GraphDerivation of network.graph in the graph's own names (``chain_view`` keeps the
        # one it renamed), for the code generator
        self.graph_derivation = graph_derivation
        self._by_name = {e.name: e for e in equations}

    def dump(self):
        """Every stage of every derived rule, as plain text (``symbp derive --dump``)."""
        out = [f"# {self.network}"]
        for lr in self.layers:
            act = lr.activation
            if lr.rule:
                out.append(f"\n## layer {lr.layer}: f = {act.name}, f(z) = {act.definition}")
                for name, e in lr.rule.stages:
                    out.append(f"  f'(z) [{name}]: {e}")
                out.append(f"  f' reads: {lr.rule.uses}")
            else:
                out.append(f"\n## layer {lr.layer}: f = {act.name} (vector activation)")
            for label, stages in (("J[s,i,j]", lr.jacobian), ("dz/da", lr.dz_da),
                                  ("dz/dW", lr.dz_dW), ("dz/db", lr.dz_db)):
                if stages is not None:
                    out += _stages(label, stages)
        out.append("\n## equations")
        for e in self.equations:
            out += _stages(f"{e.lhs}", e.stages)
        out.append(f"\n## per-sample loss used by the kernels (in {self.loss_sample[1]}): {self.loss_sample[0]}")
        return "\n".join(out) + "\n"

    def __repr__(self):
        return f"<Derivation of {self.network}: {len(self.equations)} equations>"


def _stages(label, stages):
    out, prev = [], None
    for name, e in stages:
        if prev is not None and e == prev:
            continue
        out.append(f"  {label} [{name}]: {e}")
        prev = e
    return out

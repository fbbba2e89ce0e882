"""The op registry: one entry per node kind of the graph IR, and nothing dispatches elsewhere.

Contract: ``OPS[kind]`` is an ``Op`` holding everything the pipeline knows about that kind:

- ``keys``: the TOML keys its node table may hold (``extra_keys(table)``: keys that depend on
  the table, such as an activation's parameters);
- ``reads``: how the table names its inputs: "none" (an input), "one" (``input = "..."``) or
  "many" (``inputs = [...]``, at least ``min_inputs``); ``target``: it also reads a target;
- ``validate(table, ins, v)``: the checks of one node given the widths of its inputs
  (``v``: a ``Check`` with the source, the key prefix, the widths so far and the function
  table); returns ``(width, node fields, parameter uses)`` and raises a one-line SpecError;
- ``forward(key, at_zero)``: the forward definition of a node, out[s, j], in index notation in
  the generic names below (inputs ``in<m>[s, k]`` of widths ``_n_in<m>``, the output width
  ``_n_out``, parameters ``_W``, ``_b``, the sample index s and unit index j), with the rewrite
  rules the simplification passes need (``Forward``); the derivation differentiates it with
  ``sympy.diff``, once per key, and renames the result for each node;
- ``params``: the parameters a node of the kind may have (``ParamSpec``: role, the symbol of
  its gradient's equation kind, the generic base, its indices and its shape in generic sizes);
  ``bind(node)``: {role: parameter name} of one node;
- ``realize``: how an emitter may realise the op, as data: "source" (an input: read from the
  caller), "contraction" (dense: a BLAS product or fused loops), "elementwise" (a per-row pass),
  "slices" (concat: copies into column ranges), "loss" (the loss and its gradient);
- ``key(node)``: the template cache key (nodes with equal keys share one derivation);
- ``canonical(node)``: the node's fields in ``Graph.canonical`` (and so in its digest);
  ``describe(node)``: its part of ``str(graph)``.

Adding an op is adding one entry here (plus its tests in tests/test_ops.py): its keys, its
validation, its forward definition with symbolic sizes and its parameters' shapes as tuples.
The next ops fit the same entry:

- convolution: out[s, c, i, j] = sum_{d, p, q} W[c, d, p, q] in0[s, d, i*stride + p - pad,
  j*stride + q - pad] + b[c], with the index arithmetic written as it stands (SymPy
  differentiates through Indexed objects with affine indices; the derivative w.r.t.
  in0[s, d, u, v] is a KroneckerDelta per index, summed by the collapse pass). Shapes are tuples
  (batch, channels, height, width): W has shape (_c_out, _c_in, _k_h, _k_w) in generic sizes;
  ``realize`` "contraction" (im2col + BLAS, or fused loops);
- pooling: out[s, c, i, j] = Max over the window of in0[s, c, i*stride + p, j*stride + q]
  (``sp.Max`` of the window's entries for a fixed window size; its derivative is the Heaviside
  selection of the maximum, whose ties the kink pass settles like ReLU's);
- batch normalization: the forward definition sums over the samples (mu[j] = 1/B sum_t
  in0[t, j]), so its Jacobian couples samples: d out[s, i] / d in0[t, j] carries a second
  sample index; the entry says so (``couples_samples``) and the backward sum runs over t too;
- recurrent layers: the forward definition of one time step h[s, t, j] = f(sum_k W[j, k]
  x[s, t, k] + sum_k U[j, k] h[s, t - 1, k] + b[j]) with a time index, values of shape
  (batch, time, width); the derivation unrolls nothing: the step's Jacobians w.r.t. x, h[t-1]
  and the parameters are derived once and the emitter loops over t backwards ("time_loop").
"""
from dataclasses import dataclass
from functools import lru_cache
from numbers import Integral
from typing import Callable

import sympy as sp

from .. import naming
from ..errors import SpecError, shown as _shown
from .exprparse import parse_expression
from .functions import ACTIVATIONS, LOSSES, REDUCTIONS, Activation
from .limits import MAX_WIDTH, resolve_activation

S, T, I, J, K, P, Q = naming.S, naming.T, naming.I, naming.J, naming.K, naming.P, naming.Q
BATCH = naming.BATCH


# ----------------------------------------------------------------------------------------------
# generic names: every op's forward definition is written in these, then renamed per node
# ----------------------------------------------------------------------------------------------

def _gen(name):
    return sp.IndexedBase(f"_{name}", real=True)


_OUT, _GOUT, _W, _B, _Y = _gen("out"), _gen("gout"), _gen("W"), _gen("b"), _gen("y")
_N_OUT = sp.Symbol("_n_out", integer=True, positive=True)


def _in(m):
    return _gen(f"in{m}")


@lru_cache(maxsize=None)
def _n_in(m):
    return sp.Symbol(f"_n_in{m}", integer=True, positive=True)


def _var(m):
    """The scalar standing for input m in an expression node's generic expression."""
    return sp.Symbol(f"_v{m}", real=True)


# ----------------------------------------------------------------------------------------------
# the entry types
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ParamSpec:
    """A parameter role of an op: ``symbol`` names its gradient's equation kind (grad_W) and
    its local derivative in NodeRules (dW); ``generic`` and ``indices`` are what the forward
    definition reads (_W[p, q]); ``shape(key)`` its shape in generic sizes (_n_out, _n_in0)."""

    role: str
    symbol: str
    generic: sp.IndexedBase
    indices: tuple
    shape: Callable


@dataclass(frozen=True)
class Forward:
    """A forward definition out[s, j] in the generic names, with what simplifying its
    derivatives needs: ``rules`` (simplify.Context.forward rewrites, e.g. an expression node's
    whole expression -> out), ``links`` ((out, in, f) for simplify.stable) and ``activation``,
    the function an activation op applies (the derivation stage adds its rewrite f(in) -> out,
    f'(in) -> its form in out, and its ActivationRule). ``slots``: the number of inputs it
    reads; ``params``: the ParamSpecs it reads."""

    expr: sp.Expr
    slots: int
    params: tuple = ()
    rules: tuple = ()
    links: tuple = ()
    activation: object = None
    # a normalization op's statistics (symbp.model.ops_norm.Statistics): what the derivation
    # names mu, sigma and xhat, and the axes they reduce over
    statistics: object = None


@dataclass
class Check:
    """What a validate function sees: the source and key prefix for errors, the node's name,
    the widths of the nodes validated so far, the elementwise functions an expression may call,
    the spec's own activations and the loss nodes' targets."""

    where: str
    prefix: str
    name: str
    widths: dict
    functions: dict
    defined: dict
    targets: dict
    shapes: dict = None     # tensor values: node name -> (channels, height, width) or None

    def error(self, key, message):
        return SpecError(self.where, f"{self.prefix}{key}", message)


@dataclass(frozen=True)
class Op:
    """One node kind: everything the pipeline knows about it (the fields as in the module
    docstring). ``uses`` returned by ``validate`` are (parameter name, role, concrete shape,
    transposed) for ``build_graph``'s shared-parameter checks."""

    kind: str
    keys: tuple
    reads: str                      # "none" | "one" | "many"
    realize: str                    # "source" | "contraction" | "elementwise" | "slices" | "loss"
    validate: Callable              # (table, ins, Check) -> (width, fields, uses)
    forward: Callable               # (key, at_zero) -> Forward
    key: Callable                   # (node) -> hashable template key
    canonical: Callable             # (node) -> dict of the node's own fields
    describe: Callable              # (node) -> its text in str(graph)
    params: tuple = ()              # ParamSpec
    bind: Callable = lambda node: {}    # (node) -> {role: parameter name}
    min_inputs: int = 1
    target: bool = False            # reads a target input node (the loss)
    couples_samples: bool = False   # its forward definition sums over the batch
    extra_keys: Callable = lambda table: ()
    doc: str = ""

    def allowed_keys(self, table):
        return self.keys + tuple(self.extra_keys(table))


# ----------------------------------------------------------------------------------------------
# shared checks
# ----------------------------------------------------------------------------------------------

def check_int(value, where, key, minimum=1, maximum=None):
    maximum = MAX_WIDTH if maximum is None else maximum
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        raise SpecError(where, key, f"expected an integer >= {minimum}, got {_shown(value)}")
    if value > maximum:
        raise SpecError(where, key, f"expected an integer <= {maximum} (the largest width symbp "
                                    f"accepts), got {_shown(value)}")
    return int(value)


def check_name(value, where, key, what="name"):
    if not naming.is_safe_name(value) or "__" in value:
        raise SpecError(where, key, f"expected a {what} of letters, digits and single _ starting with a "
                                    f"letter (at most 64 characters, not a Python keyword), got {_shown(value)}")
    return value


def check_bool(table, key, where, prefix):
    v = table.get(key, False)
    if not isinstance(v, bool):
        raise SpecError(where, f"{prefix}{key}", f"expected true or false, got {_shown(v)}")
    return v


def check_str(table, key, where, prefix, default=None):
    if key not in table:
        if default is None:
            raise SpecError(where, f"{prefix}{key}", "missing key")
        return default
    v = table[key]
    if not isinstance(v, str):
        raise SpecError(where, f"{prefix}{key}", f"expected a string, got {type(v).__name__} {_shown(v)}")
    return v


def _declared_units(t, v, kind, ins, width, detail=None):
    """A declared ``units`` must equal the width the inputs give."""
    if "units" in t:
        units = check_int(t["units"], v.where, f"{v.prefix}units")
        if units != width:
            raise v.error("units", f"shape mismatch at {kind} node {v.name!r}: declared units {units}, "
                                   f"but its inputs give {detail or width}")


def _same_widths(ins, v, kind):
    ws = [v.widths[i] for i in ins]
    if len(set(ws)) != 1:
        detail = ", ".join(f"{i}={w}" for i, w in zip(ins, ws))
        raise v.error("inputs", f"shape mismatch at {kind} node {v.name!r}: its inputs have "
                                f"different widths ({detail})")
    return ws[0]


def _sizes(node_width, in_widths):
    out = {_N_OUT: node_width}
    out.update({_n_in(m): w for m, w in enumerate(in_widths)})
    return out


# ----------------------------------------------------------------------------------------------
# input
# ----------------------------------------------------------------------------------------------

def _input_validate(t, ins, v):
    if "width" not in t:
        raise v.error("width", "missing key (expected an integer >= 1)")
    width = check_int(t["width"], v.where, f"{v.prefix}width")
    return width, {"grad": check_bool(t, "grad", v.where, v.prefix)}, ()


def _input_forward(key, at_zero=0):
    # an input's value is given by the caller: out[s, j] itself, nothing to differentiate
    return Forward(_OUT[S, J], 0)


# ----------------------------------------------------------------------------------------------
# dense
# ----------------------------------------------------------------------------------------------

def _dense_key(transpose, has_bias):
    return ("dense", bool(transpose), bool(has_bias))


DENSE_PARAMS = (
    ParamSpec("weight", "W", _W, (P, Q), lambda key: (_n_in(0), _N_OUT) if key[1] else (_N_OUT, _n_in(0))),
    ParamSpec("bias", "b", _B, (P,), lambda key: (_N_OUT,)),
)


def _dense_validate(t, ins, v):
    if "units" not in t:
        raise v.error("units", "missing key (expected an integer >= 1)")
    width = check_int(t["units"], v.where, f"{v.prefix}units")
    n_in = v.widths[ins[0]]
    weight = check_str(t, "weight", v.where, v.prefix, default=f"W_{v.name}")
    check_name(weight, v.where, f"{v.prefix}weight", "parameter name")
    bias = t.get("bias", f"b_{v.name}")
    if bias is False:
        bias = None
    elif not isinstance(bias, str):
        raise v.error("bias", f"expected a parameter name or false, got {_shown(bias)}")
    else:
        check_name(bias, v.where, f"{v.prefix}bias", "parameter name")
    transpose = check_bool(t, "transpose", v.where, v.prefix)
    key, sizes = _dense_key(transpose, bias is not None), _sizes(width, [n_in])
    uses = []
    for spec, pname in zip(DENSE_PARAMS, (weight, bias)):
        if pname is not None:
            shape = tuple(int(s.xreplace(sizes)) for s in spec.shape(key))
            uses.append((pname, spec.role, shape, transpose and spec.role == "weight"))
    return width, {"weight": weight, "bias": bias, "transpose": transpose}, tuple(uses)


def _dense_forward(key, at_zero=0):
    transpose, bias = key[1], key[2]
    w = _W[K, J] if transpose else _W[J, K]
    fwd = sp.Sum(w * _in(0)[S, K], (K, 0, _n_in(0) - 1)) + (_B[J] if bias else 0)
    return Forward(fwd, 1, DENSE_PARAMS if bias else DENSE_PARAMS[:1])


def _dense_bind(node):
    return {"weight": node.weight, **({"bias": node.bias} if node.bias is not None else {})}


# ----------------------------------------------------------------------------------------------
# activation
# ----------------------------------------------------------------------------------------------

def _activation_extra_keys(t):
    # an activation's parameters (slope) may be given as keys of the node table
    act = t.get("activation")
    an = act.get("name") if isinstance(act, dict) else getattr(act, "name", act)
    if isinstance(an, str) and an in ACTIVATIONS:
        return tuple(p[0] for p in ACTIVATIONS[an].params)
    return ()


def _activation_validate(t, ins, v):
    if "activation" not in t:
        raise v.error("activation", "missing key")
    spec = t["activation"]
    if isinstance(spec, Activation):
        act = spec
    else:
        extra = {k: t[k] for k in t if k not in OPS["activation"].keys}
        if extra:
            if isinstance(spec, dict):
                raise v.error("activation", "give parameters either in the table or in the node, not both")
            spec = {"name": spec, **extra}
        act = resolve_activation(spec, v.where, f"{v.prefix}activation", v.defined)
    width = v.widths[ins[0]]
    if act.name == "softmax" and width < 2:
        raise v.error("activation", f"softmax needs at least 2 units, but its input {ins[0]!r} has width {width}")
    _declared_units(t, v, "activation", ins, width)
    return width, {"activation": act}, ()


def softmax_z(z_base, size):
    """softmax's forward definition: exp(z[s, i]) / sum_k exp(z[s, k])."""
    return sp.exp(z_base[S, I]) / sp.Sum(sp.exp(z_base[S, K]), (K, 0, size - 1))


def _activation_forward(key, at_zero=0):
    act = key[1]
    if act.elementwise:
        return Forward(act.at(_in(0)[S, J]), 1, links=((_OUT, _in(0), act.definition),), activation=act)
    return Forward(softmax_z(_in(0), _N_OUT).xreplace({I: J}), 1, activation=act)


def _activation_canonical(node):
    act = node.activation
    return {"activation": {"name": act.name, "params": [[k, str(v)] for k, v in act.values],
                           "definition": sp.srepr(act.definition) if act.user else None}}


# ----------------------------------------------------------------------------------------------
# add, multiply, concat, expression
# ----------------------------------------------------------------------------------------------

def _elementwise_validate(kind):
    def validate(t, ins, v):
        width = _same_widths(ins, v, kind)
        _declared_units(t, v, kind, ins, width)
        return width, {}, ()
    return validate


def _add_forward(key, at_zero=0):
    return Forward(sp.Add(*[_in(m)[S, J] for m in range(key[1])]), key[1])


def _multiply_forward(key, at_zero=0):
    return Forward(sp.Mul(*[_in(m)[S, J] for m in range(key[1])]), key[1])


def _concat_validate(t, ins, v):
    width = sum(v.widths[i] for i in ins)
    _declared_units(t, v, "concat", ins, width, " + ".join(f"{i}={v.widths[i]}" for i in ins))
    return width, {}, ()


def _concat_forward(key, at_zero=0):
    # the merge (eq. 14.37): out[s, j] = in_m[s, j - o_m] on input m's slice, as a sum of
    # Kronecker deltas so that diff gives the slice selection
    parts, offset = [], sp.Integer(0)
    for m in range(key[1]):
        parts.append(sp.Sum(sp.KroneckerDelta(J, offset + K) * _in(m)[S, K], (K, 0, _n_in(m) - 1)))
        offset += _n_in(m)
    return Forward(sp.Add(*parts), key[1])


def _expression_validate(t, ins, v):
    width = _same_widths(ins, v, "expression")
    if len(set(ins)) != len(ins):
        dup = next(i for i in ins if ins.count(i) > 1)
        raise v.error("inputs", f"input {dup!r} is listed twice (each input is one variable of the expression)")
    text = check_str(t, "expression", v.where, v.prefix)
    variables = {i: sp.Symbol(i, real=True) for i in ins}
    expr = parse_expression(text, variables, v.functions, v.where, f"{v.prefix}expression")
    for i in ins:
        if variables[i] not in expr.free_symbols:
            raise v.error("expression", f"input {i!r} of node {v.name!r} does not appear in {_shown(text)}")
    _declared_units(t, v, "expression", ins, width)
    return width, {"expression": expr, "text": text}, ()


def _expression_rule(expr, slots):
    """forward_outputs for an expression node: the whole expression -> out (exp(x) -> out)."""
    def rule(e):
        for idx in (I, J):
            at = expr.xreplace({_var(m): _in(m)[S, idx] for m in range(slots)})
            if e.has(at):
                e = e.xreplace({at: _OUT[S, idx]})
        return e
    return rule


def _expression_forward(key, at_zero=0):
    expr, slots = key[1], key[2]
    return Forward(expr.xreplace({_var(m): _in(m)[S, J] for m in range(slots)}), slots,
                   rules=(_expression_rule(expr, slots),))


def _expression_key(node):
    generic = node.expression.xreplace({node.symbol(n): _var(m) for m, n in enumerate(node.inputs)})
    return ("expression", generic, len(node.inputs))


# ----------------------------------------------------------------------------------------------
# loss
# ----------------------------------------------------------------------------------------------

def _loss_validate(t, ins, v):
    lname = check_str(t, "loss", v.where, v.prefix)
    if lname not in LOSSES:
        raise v.error("loss", f"unknown loss {_shown(lname)} (expected one of: {', '.join(LOSSES)})")
    reduction = check_str(t, "reduction", v.where, v.prefix, default="mean")
    if reduction not in REDUCTIONS:
        raise v.error("reduction", f"expected one of {', '.join(REDUCTIONS)}, got {_shown(reduction)}")
    return 1, {"loss": LOSSES[lname], "reduction": reduction, "target": v.targets[v.name]}, ()


def batch_factor(reduction):
    """c of L = c sum_s loss_s: 1/B for the mean, 1 for the sum."""
    return 1 / BATCH if reduction == "mean" else sp.Integer(1)


def _loss_forward(key, at_zero=0):
    # L = c sum_t sum_i loss(out[t, i], y[t, i]): out is what the loss reads (its input), _Y the
    # target; a scalar, so its "slot" is out itself
    loss, reduction = key[1], key[2]
    per_unit = loss.per_unit.xreplace({naming.A: _OUT[T, I], naming.Y: _Y[T, I]})
    L = batch_factor(reduction) * sp.Sum(sp.Sum(per_unit, (I, 0, _N_OUT - 1)), (T, 0, BATCH - 1))
    return Forward(L, 1)


# ----------------------------------------------------------------------------------------------
# the registry
# ----------------------------------------------------------------------------------------------

def _multi_key(node):
    return (node.kind, len(node.inputs))


def _plain(node):
    return f"{node.name}={node.kind}({', '.join(node.inputs)})[{node.width}]"


OPS = {op.kind: op for op in (
    Op("input", ("name", "kind", "width", "grad"), "none", "source",
       _input_validate, _input_forward, key=lambda node: ("input",),
       canonical=lambda node: {"grad": node.grad},
       describe=lambda node: f"{node.name}[{node.width}{', grad' if node.grad else ''}]",
       min_inputs=0, doc="a value fed by the caller; grad = true asks for dL/d(input)"),
    Op("dense", ("name", "kind", "input", "units", "weight", "bias", "transpose"), "one", "contraction",
       _dense_validate, _dense_forward, key=lambda node: _dense_key(node.transpose, node.bias is not None),
       canonical=lambda node: {"weight": node.weight, "bias": node.bias, "transpose": node.transpose},
       describe=_plain, params=DENSE_PARAMS, bind=_dense_bind,
       doc="out = W in + b (transpose: W^T in + b)"),
    Op("activation", ("name", "kind", "input", "activation", "units"), "one", "elementwise",
       _activation_validate, _activation_forward, key=lambda node: ("activation", node.activation),
       canonical=_activation_canonical,
       describe=lambda node: f"{node.name}={node.activation.name}({', '.join(node.inputs)})[{node.width}]",
       extra_keys=_activation_extra_keys, doc="out = f(in), softmax over the units"),
    Op("add", ("name", "kind", "inputs", "units"), "many", "elementwise",
       _elementwise_validate("add"), _add_forward, key=_multi_key, canonical=lambda node: {},
       describe=_plain, min_inputs=2, doc="elementwise sum of inputs of one width"),
    Op("multiply", ("name", "kind", "inputs", "units"), "many", "elementwise",
       _elementwise_validate("multiply"), _multiply_forward, key=_multi_key, canonical=lambda node: {},
       describe=_plain, min_inputs=2, doc="elementwise product of inputs of one width"),
    Op("concat", ("name", "kind", "inputs", "units"), "many", "slices",
       _concat_validate, _concat_forward, key=_multi_key, canonical=lambda node: {},
       describe=_plain, min_inputs=2, doc="the inputs' vectors one after the other"),
    Op("expression", ("name", "kind", "inputs", "expression", "units"), "many", "elementwise",
       _expression_validate, _expression_forward, key=_expression_key,
       canonical=lambda node: {"expression": sp.srepr(node.expression)},
       describe=_plain, min_inputs=1, doc="an elementwise expression of the inputs' names"),
    Op("loss", ("name", "kind", "input", "target", "loss", "reduction"), "one", "loss",
       _loss_validate, _loss_forward, key=lambda node: ("loss", node.loss, node.reduction),
       canonical=lambda node: {"loss": node.loss.name, "reduction": node.reduction, "target": node.target},
       describe=lambda node: f"{node.name}={node.loss.name}({node.inputs[0]}, {node.target})",
       target=True, doc="the loss of its input against a target input node"),
)}
KINDS = tuple(OPS)

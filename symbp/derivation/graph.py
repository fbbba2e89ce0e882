"""Backpropagation over a DAG (chapter 14 "Backpropagation", sections 14.7-14.9), with SymPy.

Contract: ``derive_graph(graph) -> GraphDerivation``. Every local derivative comes from
``sympy.diff`` of a node's forward definition, in index notation with the sample index s and
symbolic widths ``n_<node>`` (as ``symbp.derive`` does for layers), and goes through the ordered
passes of ``symbp.simplify``. Each node kind's rules are derived once in generic names (``_template``,
cached per op key and relu_at_zero) and renamed per node. Forward definitions (out[s, j]) come
from the op registry (``symbp.model.ops``: its ``forward``, ``params`` and ``key``; nothing here
dispatches on the node kind):

- dense: sum_k W[j, k] in[s, k] + b[j]  (transposed: W[k, j]);
- activation: f(in[s, j]), softmax exp(in[s, j]) / sum_k exp(in[s, k]);
- add / multiply: in_0[s, j] + in_1[s, j] + ... / in_0[s, j] in_1[s, j] ...;
- concat: sum_m sum_k delta(j, o_m + k) in_m[s, k] with o_m the widths before input m (merge);
- expression: the node's expression with each input name replaced by in_m[s, j];
- loss: L = c sum_t sum_i loss(out[t, i], y[t, i]), c = 1/B (mean) or 1 (sum).
- conv2d, maxpool2d, avgpool2d, flatten (tensor values out[s, o, i, j]): their templates come
  from ``derivation.conv`` (deltas resolved against the sums, the textbook forms as named steps);
  their equations keep the tensor indices ([s, o, i, j], an input's gradient [s, c, u, v]).

Backward, in reverse topological order, by the general algorithm g_in = g_out L^x: for every edge
v -> u (slot m of u), the contribution sum_i g_u[s, i] J[s, i, j] with the local Jacobian
J[s, i, j] = d u[s, i] / d in_m[s, j] (concat's picks the slice: g_u[s, o_m + j]); a node with one
outgoing edge gets that contribution as its gradient g_v, a node with several (a branch) gets
named contributions g_v__u and the step ``branch_sum`` g_v = sum of them (eq. 14.46). A dense
node's parameters get dL/dW[p, q] = sum_s sum_i g_u[s, i] du[s, i]/dW[p, q] per use; a parameter
used by several nodes gets named uses g_W__u and the step ``shared_sum`` (eq. 14.47). Gradients
are derived only where needed: for inputs marked grad, dense nodes and what lies downstream of
them. When the loss reads an activation node that feeds nothing else, dL/da is substituted into
that node's Jacobian and simplified as one expression (``output_delta``: sigmoid + bce and
softmax + ce become (a - y)/B); its ``loss_grad`` equation stays listed, in ``inlined``.
The graph's options: ``relu_at_zero`` reaches the kink pass (ReLU'(0) = 0 or 1); with
``allow_any_output`` a loss after an activation it is not paired with (bce after ReLU) keeps
f'(in) * dL/dout as the output delta's last stage ("chain") and its per-sample loss reads the
output, not the logits.
Its LaTeX (``d.latex(...)``, the Jupyter display) comes from ``symbp.render.graph_latex``, which
the public face attaches; this stage never imports the render stage.
"""
import gc
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from types import SimpleNamespace
from typing import Optional

import sympy as sp

from .. import naming
from . import norm, simplify as simp
from .equations import ActivationRule, Equation, EquationLookup, _stages
from .local import _forward_rule, _loss_from_logits, output_form
from ..model import ops
from ..model.ops_conv import TENSOR_REALIZE, sizes as tensor_sizes
from . import conv
from ..errors import DerivationError

S, T, I, J, K, P, Q = naming.S, naming.T, naming.I, naming.J, naming.K, naming.P, naming.Q
BATCH = naming.BATCH


@dataclass(frozen=True)
class GraphEquation(Equation):
    """An Equation of a DAG. ``node``: the node or parameter whose quantity ``lhs`` is;
    ``source``: for a contribution, the consumer node it comes through; ``terms``: for
    branch_sum and shared_sum, the names of the summed contribution equations.

    kinds: forward_<node kind>, loss, loss_grad, output_delta, backprop, branch_sum, grad_W,
    grad_b, shared_sum."""

    node: str = ""
    source: str = ""
    terms: tuple = ()


@dataclass(frozen=True)
class NodeRules:
    """Local derivatives of one node: ``jacobians[m]`` the stages of d out[s,i] / d in_m[s,j];
    dense: ``dW`` / ``db`` the stages of d out[s,i] / dW[p,q], d out[s,i] / db[p];
    elementwise activations: ``rule``, f'(z) and its form in terms of the output."""

    node: str
    kind: str
    forward: sp.Expr
    jacobians: tuple
    dW: tuple = ()
    db: tuple = ()
    rule: Optional[ActivationRule] = None


@dataclass(frozen=True)
class Quantity:
    """What an IndexedBase of the derivation stands for. role: value, target, param, grad
    (dL/d node), contribution (one consumer's part of a branch), param_grad, param_use."""

    label: str
    role: str
    of: str                 # the node or parameter
    source: str = ""        # contribution / param_use: the consumer node


# ----------------------------------------------------------------------------------------------
# names
# ----------------------------------------------------------------------------------------------

# cached: building an IndexedBase deduces its assumptions, and a chain of 2000 nodes asks for
# each name many times
@lru_cache(maxsize=None)
def value(name):
    return sp.IndexedBase(name, real=True)


@lru_cache(maxsize=None)
def grad(name):
    return sp.IndexedBase(f"g_{name}", real=True)


@lru_cache(maxsize=None)
def labelled(label):
    """The IndexedBase of an equation's lhs label (g_a__r, g_W, ...)."""
    return sp.IndexedBase(label, real=True)


@lru_cache(maxsize=None)
def contribution(name, consumer, slot=None):
    return sp.IndexedBase(f"g_{name}__{consumer}" + ("" if slot is None else f"_{slot}"), real=True)


@lru_cache(maxsize=None)
def width(name):
    return sp.Symbol(f"n_{name}", integer=True, positive=True)


# Generic names (the op registry's): each node kind's rules are derived once in these, then
# renamed per node.
_OUT, _GOUT, _W, _B, _Y, _N_OUT = ops._OUT, ops._GOUT, ops._W, ops._B, ops._Y, ops._N_OUT
_in, _n_in, _var = ops._in, ops._n_in, ops._var


# ----------------------------------------------------------------------------------------------
# per-kind templates
# ----------------------------------------------------------------------------------------------

@lru_cache(maxsize=None)
def _template(key, at_zero=0):
    """Rules of one node kind in the generic names, from its op's forward definition:
    ``key`` is the op's ``key(node)``; ``at_zero`` the graph's relu_at_zero (the kink pass).
    Returns forward, jacobians and contributions per input slot, the activation rule, and for
    each parameter role its local derivative d<symbol> and gradient g<symbol> (dW, gW, ...)."""
    if ops.OPS[key[0]].realize in TENSOR_REALIZE:
        # tensor values (batch, C, H, W): their own template (derivation/conv.py)
        return conv.template(key, at_zero)
    fw = ops.OPS[key[0]].forward(key, at_zero)
    if fw.statistics is not None:       # a normalization: its statistics named (derivation.norm)
        return norm.template(key, fw, at_zero)
    ctx = simp.Context(forward=list(fw.rules), links=list(fw.links), at_zero=at_zero)
    rule = None
    if fw.activation is not None:
        # f(in) -> out and f'(in) -> its form in out (output_form), so the backward pass reads
        # the stored output (sigmoid: a (1 - a))
        act = fw.activation
        ctx.forward.append(_forward_rule(0, act, _OUT, _in(0), _N_OUT, at_zero))
        if act.elementwise:
            stages, form, uses = output_form(act.definition, at_zero)
            rule = ActivationRule(act, stages[0][1], stages, form, uses)
    fwd = fw.expr
    at_i = fwd.xreplace({J: I})
    jac, contrib = [], []
    for m in range(fw.slots):
        j = simp.run(sp.diff(at_i, _in(m)[S, J]), ctx)
        jac.append(tuple(j))
        contrib.append(tuple(simp.run(sp.Sum(_GOUT[S, I] * j[-1][1], (I, 0, _N_OUT - 1)), ctx)))
    t = {"forward": fwd, "jacobians": tuple(jac), "contributions": tuple(contrib), "rule": rule}
    rows = ((I, 0, _N_OUT - 1), (S, 0, BATCH - 1))
    for spec in fw.params:
        d = simp.run(sp.diff(at_i, spec.generic[spec.indices]), ctx)
        t[f"d{spec.symbol}"] = tuple(d)
        t[f"g{spec.symbol}"] = tuple(simp.run(sp.Sum(_GOUT[S, I] * d[-1][1], *rows), ctx))
    return t


_batch_factor = ops.batch_factor


def _loss_ctx(loss):
    ctx = simp.Context()
    if loss.onehot:
        ctx.onehot.append((_Y, _N_OUT))
    return ctx


@lru_cache(maxsize=None)
def _loss_template(key, act, at_zero=0):
    """L (the loss op's forward definition, ``key`` its op key), dL/dout and, when the loss
    reads an activation node ``act`` (else None), the output delta sum_i dL/dout_i d out_i /
    d in_j simplified as one expression; generic names. When the loss is not paired with ``act``
    (allow_any_output: bce after ReLU) nothing cancels between them, and the delta keeps the
    chain-rule product f'(in) * dL/dout as its last stage ("chain"), as the MLP's always did."""
    loss = key[1]
    L = ops.OPS["loss"].forward(key, at_zero).expr
    ctx = _loss_ctx(loss)
    ctx.at_zero = at_zero
    t = {"L": L, "grad": tuple(simp.run(sp.diff(L, _OUT[S, J]), ctx))}
    if act is not None:
        ctx.forward.append(_forward_rule(0, act, _OUT, _in(0), _N_OUT, at_zero))
        if act.elementwise:
            ctx.links.append((_OUT, _in(0), act.definition))     # for simplify.stable
        at = _template(("activation", act), at_zero)
        dL = t["grad"][-1][1]
        stages = simp.run(sp.Sum(dL.xreplace({J: I}) * at["jacobians"][0][-1][1], (I, 0, _N_OUT - 1)), ctx)
        rule = at["rule"]
        if rule is not None and loss.outputs and act.name not in loss.outputs:
            fprime = rule.form.xreplace({naming.A: _OUT[S, J], naming.Z: _in(0)[S, J]})
            stages.append(("chain", fprime * dL))
        t["delta"] = tuple(stages)
    return t


def _key(node):
    """The template cache key of a node: its op's ``key``."""
    return node.op.key(node)


def _mapping(graph, node):
    """Generic names -> this node's names (bases, their labels and widths)."""
    pairs = [(_OUT, value(node.name)), (_GOUT, grad(node.name))]
    sizes = {_N_OUT: width(node.name)}
    for m, src in enumerate(node.inputs):
        pairs.append((_in(m), value(src)))
        sizes[_n_in(m)] = width(src)
    bound = node.op.bind(node)
    for spec in node.op.params:
        if spec.role in bound:
            pairs.append((spec.generic, value(bound[spec.role])))
    if node.op.target:
        pairs.append((_Y, value(node.target)))
    mapping = dict(sizes)
    if node.op.realize in TENSOR_REALIZE:
        # a tensor op's generic sizes (channels, heights, kernel, stride, padding): this node's
        mapping.update(tensor_sizes(node, graph.node(node.inputs[0]).shape))
    if node.op.realize == "normalization":      # its mu, sigma, xhat and eps (derivation.norm)
        mapping.update(norm.mapping(node))
    for gen, actual in pairs:
        mapping[gen] = actual
        mapping[gen.label] = actual.label
    return mapping


def renamer(mapping):
    """``e.xreplace(mapping)`` with every rebuilt subexpression remembered: the stages of one
    node (and the equations of a whole chain view) share most subexpressions (delta2[s, j],
    the sums), and building an Indexed or a Sum anew (its assumptions deduced) was most of a
    deep network's derivation time. As xreplace: a key of ``mapping`` is replaced whole,
    otherwise the arguments are, and the node is rebuilt only if one changed; unlike xreplace,
    a number times a sum keeps the form a pass chose (2 (a - y), not 2 a - 2 y)."""
    memo = {}
    same = object()     # "unchanged": the object asked about is returned itself, so that an
                        # equal subexpression built elsewhere does not make its parent rebuilt

    def go(e):
        r = memo.get(e)
        if r is None:
            if e in mapping:
                r = mapping[e]
            elif not e.args:
                r = same
            else:
                args = tuple(go(a) for a in e.args)
                if all(a is b for a, b in zip(args, e.args)):
                    r = same
                elif isinstance(e, sp.Mul) and len(args) == 2 and args[0].is_Rational and isinstance(args[1], sp.Add):
                    # a pass's factored form c (x - y) (cancel's choice, fewer operations):
                    # rebuilt with evaluation, Mul would distribute the number again
                    r = sp.Mul(*args, evaluate=False)
                elif type(e) is sp.Sum:
                    r = _renamed_sum(args)
                else:
                    r = e.func(*args)
            memo[e] = r
        return e if r is same else r
    return go


def _renamed_sum(args):
    """Sum(*args) for the renamed arguments of a Sum SymPy built: the summand and limits are
    already in the form Sum's constructor gives them (limits processed, Piecewise folded), and
    renaming keeps that form, so they are set as they are, as the constructor sets them
    (``AddWithLimits.__new__``); running it again was a third of a deep chain's renaming."""
    r = sp.Expr.__new__(sp.Sum)
    r._args = args
    r.is_commutative = args[0].is_commutative
    return r


def _rename(stages, go):
    return tuple((name, go(e)) for name, e in stages)


# ----------------------------------------------------------------------------------------------
# the derivation
# ----------------------------------------------------------------------------------------------

class GraphDerivation(EquationLookup):
    """Equations of the backpropagation of one DAG, as SymPy derived them.

    Renderer-facing like ``symbp.derivation.Derivation``: ``equations`` (GraphEquation, each with
    its stages), ``d[name]``, ``of_kind``, ``dump()``, ``latex()``; ``network`` is the graph.
    Also: ``nodes`` (NodeRules per non-input node), ``quantities`` (label -> Quantity),
    ``sizes`` ({width symbol: int}), ``loss_sample`` ((per-sample loss in [s, i], the node it
    reads) for the kernels), ``batch_factor``, ``inlined`` (equations the kernels do not
    compute), ``input_grads`` ({input: equation name of its gradient}) and ``param_grads``
    ({parameter: equation name of its gradient})."""

    layers = ()     # a DAG has no layer rules; see ``nodes``

    def __init__(self, graph, equations, nodes, quantities, sizes, loss_sample, batch_factor,
                 inlined, input_grads, param_grads):
        self.graph = graph
        self.equations = equations
        self.nodes = nodes
        self.quantities = quantities
        self.sizes = sizes
        self.loss_sample = loss_sample
        self.batch_factor = batch_factor
        self.inlined = inlined
        self.input_grads = input_grads
        self.param_grads = param_grads
        self._by_name = {e.name: e for e in equations}

    @property
    def network(self):
        return self.graph

    def dump(self):
        """Every stage of every derived rule, as plain text."""
        out = [f"# {self.graph}"]
        for nr in self.nodes:
            out.append(f"\n## node {nr.node} ({nr.kind}): {nr.node}[s, j] = {nr.forward}")
            if nr.rule is not None:
                for name, e in nr.rule.stages:
                    out.append(f"  f'(z) [{name}]: {e}")
                out.append(f"  f' reads: {nr.rule.uses}")
            node = self.graph.node(nr.node)
            at = "t" if node.op.couples_samples else "s"      # batchnorm: a second sample index
            for m, stages in enumerate(nr.jacobians):
                out += _stages(f"d{nr.node}[s,i]/d{node.inputs[m]}[{at},j]", stages)
            if nr.dW:
                out += _stages(f"d{nr.node}[s,i]/d{node.weight}[p,q]", nr.dW)
            if nr.db:
                out += _stages(f"d{nr.node}[s,i]/d{node.bias}[p]", nr.db)
        out.append("\n## equations")
        for e in self.equations:
            tag = f" ({e.kind}{', inlined' if e.name in self.inlined else ''}"
            tag += f": {' + '.join(e.terms)})" if e.terms else ")"
            out += _stages(f"{e.lhs}{tag}", e.stages)
        expr, reads = self.loss_sample
        out.append(f"\n## per-sample loss used by the kernels (reads {reads}): {expr}")
        return "\n".join(out) + "\n"

    def __repr__(self):
        return f"<GraphDerivation of {self.graph}: {len(self.equations)} equations>"



@contextmanager
def paused_gc():
    """The cyclic garbage collector paused (and restored as it was): deriving a deep chain builds
    about a million SymPy objects, trees without cycles that reference counting frees, and the
    collector's repeated passes over them took 40% of a 1000-layer derivation."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def derive_graph(graph):
    """Derive the backpropagation of ``graph`` (see the module docstring)."""
    with paused_gc():
        return _derive_graph(graph)


def _derive_graph(graph):
    order = {n.name: idx for idx, n in enumerate(graph.nodes)}
    need = graph.requires_grad()
    loss = graph.loss_node
    out = graph.node(graph.output)
    sizes = {width(n.name): n.width for n in graph.nodes if not n.op.target}
    at_zero = graph.relu_at_zero
    quantities = {}
    equations = []

    def q(base, role, of, source=""):
        quantities.setdefault(str(base.label), Quantity(str(base.label), role, of, source))
        return base

    def eq(name, kind, node, lhs, stages, doc, source="", terms=()):
        e = GraphEquation(name, kind, order.get(node, -1), lhs, stages[-1][1], tuple(stages), doc,
                          node=node, source=source, terms=tuple(terms))
        equations.append(e)
        return e

    for n in graph.nodes:
        if n.op.target:
            continue
        q(value(n.name), "target" if n.name == graph.target else "value", n.name)
    for p in graph.params:
        q(value(p.name), "param", p.name)

    # 1. forward ------------------------------------------------------------------------------
    rules = []
    for n in graph.nodes:
        if n.op.realize in ("source", "loss"):
            continue
        t, m = _template(_key(n), at_zero), renamer(_mapping(graph, n))
        named = ()
        if "statistics" in t:       # a normalization: mu, sigma, xhat defined first (derivation.norm)
            for what, lhs, rhs in t["statistics"]:
                label = naming.statistic(n.name, what)
                q(labelled(label), "statistic", n.name)
                eq(label, "statistic", n.name, m(lhs), [("definition", m(rhs))], f"{what} of {n.kind} node {n.name}")
            named = (("statistics", m(t["forward_named"])),)
        eq(n.name, f"forward_{n.kind}", n.name, value(n.name)[t.get("out", (S, J))], [("definition", m(t["forward"])), *named],
           f"{n.kind} node")
        rules.append(NodeRules(n.name, n.kind, m(t["forward"]),
                               tuple(_rename(j, m) for j in t["jacobians"]),
                               _rename(t.get("dW", ()), m), _rename(t.get("db", ()), m), t["rule"]))
    inline = out.kind == "activation" and graph.consumers(out.name) == ((loss.name, 0),) and out.name in need
    lt = _loss_template(_key(loss), out.activation if inline else None, at_zero)
    lm = _mapping(graph, loss)
    lm.update({_OUT: value(out.name), _OUT.label: value(out.name).label, _N_OUT: width(out.name)})
    if inline:
        lm.update({_in(0): value(out.inputs[0]), _in(0).label: value(out.inputs[0]).label})
    lm_go = renamer(lm)
    eq("L", "loss", loss.name, sp.Symbol("L"), [("definition", lm_go(lt["L"]))], f"loss {loss.loss.name}")

    # 2. backward, in reverse topological order --------------------------------------------------
    edges = {v: graph.consumers(v) for v in need}

    def target_base(v, consumer, slot):
        """lhs base of the contribution of edge v -> consumer (slot): g_v or g_v__consumer."""
        es = edges[v]
        if len(es) == 1:
            return q(grad(v), "grad", v)
        multi = sum(1 for c, _ in es if c == consumer) > 1
        return q(contribution(v, consumer, slot if multi else None), "contribution", v, consumer)

    branch_terms = {v: [] for v in need}
    inlined = set()
    if out.name in need:
        base = target_base(out.name, loss.name, 0)
        e = eq(str(base.label), "loss_grad", out.name, base[S, J], _rename(lt["grad"], lm_go),
               "dL/dout at the loss", source=loss.name)
        if inline:
            inlined.add(e.name)
        if len(edges[out.name]) > 1:
            branch_terms[out.name].append(e.name)

    use_terms = {p.name: [] for p in graph.params}

    def branch_sum(name, what):
        """g_v = the sum of the contributions of the nodes v feeds (eq. 14.46)."""
        terms = branch_terms[name]
        base = q(grad(name), "grad", name)
        eq(str(base.label), "branch_sum", name, base[S, J], [("sum", sp.Add(*[labelled(t)[S, J] for t in terms]))],
           f"branch: {what} feeds {len(terms)} nodes, their gradients add (eq. 14.46)", terms=terms)

    param_grads = {}
    for n in reversed(graph.nodes):
        if n.op.realize in ("source", "loss") or n.name not in need:
            continue
        if len(edges[n.name]) > 1:
            branch_sum(n.name, n.name)
        t, m = _template(_key(n), at_zero), renamer(_mapping(graph, n))
        bound = n.op.bind(n)
        for spec in n.op.params:
            if spec.role in bound:
                p_name, role, key, idx = bound[spec.role], spec.symbol, f"g{spec.symbol}", spec.indices
                p = graph.param(p_name)
                if len(p.uses) == 1:
                    base = q(grad(p_name), "param_grad", p_name)
                    param_grads[p_name] = str(base.label)
                else:
                    base = q(contribution(p_name, n.name), "param_use", p_name, n.name)
                    use_terms[p_name].append(str(base.label))
                pstages = _rename(t[key], m)
                if n.op.realize in TENSOR_REALIZE:
                    pstages = conv.tidy(pstages)
                eq(str(base.label), f"grad_{role}", p_name, base[idx], pstages,
                   f"dL/d{p_name} through node {n.name}" + (" = g a^T" if role == "W" else " = sum_s g"),
                   source=n.name)
        for slot, v in enumerate(n.inputs):
            if v not in need:
                continue
            base = target_base(v, n.name, slot)
            if inline and n.name == out.name:
                stages, kind, doc = _rename(lt["delta"], lm_go), "output_delta", "dL/din = sum_i dL/dout_i dout_i/din_j"
            else:
                stages, kind, doc = _rename(t["contributions"][slot], m), "backprop", "g_in = g_out J (Algorithm 14.1)"
                if n.op.realize in TENSOR_REALIZE:
                    stages = conv.tidy(stages)
            at = t["ins"][slot] if "ins" in t else (S, J)     # a tensor op's input: [s, c, u, v]
            e = eq(str(base.label), kind, v, base[at], stages, doc, source=n.name)
            if len(edges[v]) > 1:
                branch_terms[v].append(e.name)
    input_grads = {}
    for x in graph.grad_inputs:
        if len(edges[x.name]) > 1:
            branch_sum(x.name, f"input {x.name}")
        input_grads[x.name] = f"g_{x.name}"
    for p in graph.params:
        if len(p.uses) > 1:
            base = q(grad(p.name), "param_grad", p.name)
            user = graph.node(p.uses[0][0])
            idx = next(spec.indices for spec in user.op.params if spec.role == p.role)
            terms = use_terms[p.name]
            rhs = sp.Add(*[labelled(t)[idx] for t in terms])
            eq(str(base.label), "shared_sum", p.name, base[idx], [("sum", rhs)],
               f"shared parameter: {p.name} is used by {len(terms)} nodes, its gradients add (eq. 14.47)",
               terms=terms)
            param_grads[p.name] = str(base.label)
    param_grads = {p.name: param_grads[p.name] for p in graph.params}

    for e in equations:
        # concat's forward definition is a sum of Kronecker deltas by design; nothing else keeps one
        if e.kind not in ("forward_concat", "forward_flatten") and (e.rhs.has(sp.KroneckerDelta) or e.rhs.has(sp.Derivative)):
            raise DerivationError(f"{graph.name}: could not collapse {e.name} = {e.rhs}")

    return GraphDerivation(graph, tuple(equations), tuple(rules), quantities, sizes,
                           _graph_loss_sample(graph, out), _batch_factor(loss.reduction), frozenset(inlined),
                           input_grads, param_grads)


def _graph_loss_sample(graph, out):
    """Per-sample loss for the kernels: (expression in [s, i], name of the node it reads).
    Cross-entropies on their activation node are written in the activation's input (logits),
    as ``derive._loss_from_logits`` does for the MLP."""
    loss = graph.loss_node
    act = out.activation if out.kind == "activation" else None
    shim = SimpleNamespace(loss=loss.loss, layers=(SimpleNamespace(activation=act),))
    y = value(graph.target)
    ctx = simp.Context()
    if loss.loss.onehot:
        ctx.onehot.append((y, width(out.name)))
    z = value(out.inputs[0]) if act is not None else None
    expr, reads = _loss_from_logits(shim, value(out.name), z, y, width(out.name), ctx)
    return expr, (out.inputs[0] if reads == "z" else out.name)

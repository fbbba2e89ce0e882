"""DAG networks: named nodes with explicit edges, built in Python or read from TOML, validated.

Contract: ``Graph`` is frozen and already checked; it is built by ``GraphBuilder.build()``
(``graph(name)`` returns a builder), by ``load_graph(path)`` / ``loads_graph(text)`` from TOML,
or by ``from_network(net)`` from an MLP. All routes go through ``build_graph`` with the same node
tables, so equal specs give equal graphs (and equal ``digest``). Every mistake raises a one-line
``SpecError`` naming the source, the key (``node.<name>.<field>``) and the nodes involved:
a cycle (its nodes in order), an edge naming no node, widths that disagree at add, multiply,
expression or a declared ``units`` (concat), a shared parameter used with two shapes, a node with
no path to the loss, a loss that does not fit its input, and more (tests/bad_graphs/).

Node kinds come from the op registry ``symbp.model.ops.OPS`` (keys, validation, forward
definition, parameters): ``build_graph`` reads each table through its kind's entry. The graph-level
options ``relu_at_zero`` (ReLU'(0) = 0 or 1) and ``allow_any_output`` are the MLP's (``network``);
at their defaults they are absent from ``canonical`` (digests unchanged).

Node kinds (``inputs`` lists the nodes a node reads, in slot order; any node may feed several):

- ``input``: ``width``; ``grad = true`` asks for dL/d(input) (backpropagation to the data).
- ``dense``: out = W a + b with W of shape (units, n_in); ``weight`` / ``bias`` name the
  parameters (default ``W_<node>`` / ``b_<node>``; ``bias = false``: none). Two dense nodes naming
  one parameter share it; ``transpose = true`` uses the weight transposed, out = W^T a + b, W of
  shape (n_in, units) (the tied autoencoder's W and W^T).
- ``activation``: out = f(in) with f from ``symbp.functions.ACTIVATIONS`` (softmax included, its
  parameters such as ``slope`` as extra keys) or from the spec's ``[activations]`` expressions.
- ``add`` / ``multiply``: elementwise sum / product of two or more inputs of one width.
- ``concat``: the inputs' vectors one after the other (merge, eq. 14.37 of chapter 14
  "Backpropagation").
- ``expression``: an elementwise expression of its inputs, written with their node names
  (``"x * sigmoid(g)"``), parsed by the safe parser; every input must appear in it.
- ``loss``: ``loss`` (a kind of ``symbp.functions.LOSSES``) of ``input`` against ``target``, an
  input node used by nothing else; ``reduction`` mean (default) or sum over the batch.
- ``conv2d``, ``maxpool2d``, ``avgpool2d``, ``flatten``: ops on tensor values (batch, C, H, W),
  from an input node declaring ``shape = [C, H, W]`` (``symbp.model.ops_conv``); ``Node.shape``
  is a tensor value's (C, H, W), which elementwise nodes keep; a dense node reads vectors only.

Exactly one loss node; every other node has a path to it. bce needs a sigmoid activation node as
the loss input and ce a softmax node (the kernels compute those losses from the logits), unless
``allow_any_output``.
Names are letters, digits and ``_`` (no ``__``); nodes and parameters share one namespace, and
``g_<name>`` is reserved for the gradient of ``<name>``.

``chain_network(graph)`` is the MLP ``Network`` of a graph that is a chain (input -> dense ->
activation -> ... -> loss, nothing shared, branched or transposed), for the code generators that
read an MLP (the CUDA target); any other graph is one ``SpecError`` line naming the first node
that breaks the chain and why (``chain_layers``).

Sizes are bounded before anything is derived: at most ``MAX_NODES`` nodes, every width at most
``network.MAX_WIDTH`` and at most ``network.MAX_PARAMETERS`` weights and biases in all. An MLP
spec ([network] and [[layer]] tables) given to the graph reader is refused with a pointer to
``symbp.load`` / the MLP commands.
"""
import difflib
import hashlib
import heapq
import json
import math
from dataclasses import dataclass
from functools import cached_property
from typing import Optional

import sympy as sp

from .. import naming
from ..errors import SpecError, shown
from .functions import Activation, Loss, elementwise_functions, user_activation
from .limits import MAX_LAYERS, check_parameter_count
from .ops import OPS, Check, check_name as _name, check_str as _str
from .ops_conv import TENSOR_REALIZE
from . import ops_norm  # noqa: F401 (registers batchnorm, layernorm, dropout into OPS)
from .source import SpecKindError, is_mlp_doc, read_text, read_toml, unknown_key

# Keys every node table may hold, per kind (from the op registry; activation parameters such
# as slope are added from the activation's own table).
KEYS = {kind: op.keys for kind, op in OPS.items()}
KINDS = tuple(OPS)      # the registry with the tensor ops (ops_conv) and the normalization family (ops_norm)
TOP_KEYS = ("graph", "node", "activations")
GRAPH_KEYS = ("name", "relu_at_zero", "allow_any_output")
MAX_NODES = 1000


@dataclass(frozen=True)
class Node:
    """One validated node. ``inputs`` are node names in slot order (the loss: its input only)."""

    name: str
    kind: str
    inputs: tuple
    width: int                              # output width (the loss: 1)
    grad: bool = False                      # input: gradient wanted
    weight: Optional[str] = None            # dense
    bias: Optional[str] = None              # dense (None: no bias)
    transpose: bool = False                 # dense: use the weight transposed
    activation: Optional[Activation] = None
    expression: Optional[sp.Expr] = None    # expression: in scalar symbols named like the inputs
    text: Optional[str] = None              # expression: as written
    loss: Optional[Loss] = None
    reduction: str = "mean"
    target: Optional[str] = None            # loss: the target input node
    # tensor values (``ops_conv``): the value's (channels, height, width), None for a vector;
    # conv2d / pooling: kernel or window (k_h, k_w), stride and padding (pad_h, pad_w)
    shape: Optional[tuple] = None
    kernel: Optional[tuple] = None
    stride: int = 1
    padding: tuple = (0, 0)
    options: tuple = ()                     # batchnorm, layernorm, dropout: ((key, value), ...)

    def option(self, key):
        """The value of one of the node's ``options`` (batchnorm's eps, dropout's p, ...)."""
        return dict(self.options)[key]

    def symbol(self, input_name):
        """The scalar symbol standing for ``input_name`` in ``expression``."""
        return sp.Symbol(input_name, real=True)

    @property
    def op(self):
        """The node's entry in the op registry (``symbp.model.ops.OPS``)."""
        return OPS[self.kind]

    def canonical(self):
        d = {"name": self.name, "kind": self.kind, "inputs": list(self.inputs), "width": self.width}
        d.update(self.op.canonical(self))
        return d


@dataclass(frozen=True)
class Param:
    """A named parameter: its role ("weight" or "bias"), shape and uses ((node, transposed), ...)."""

    name: str
    role: str
    shape: tuple
    uses: tuple


def options(model):
    """A Graph's or Network's relu_at_zero and allow_any_output for its canonical form, only where
    not at their defaults (left out there, so that the digests of existing specs stay as they were)."""
    return {k: v for k, v in (("relu_at_zero", model.relu_at_zero), ("allow_any_output", model.allow_any_output)) if v}


@dataclass(frozen=True)
class Graph:
    name: str
    nodes: tuple            # Node, in topological order (ties: declared order)
    params: tuple           # Param, in order of first use (weight before bias)
    declared: tuple         # node names in declared order
    # graph-level options (the MLP's; defaults leave canonical() and the digest as they were):
    relu_at_zero: int = 0           # the derivative at a kink, ReLU'(0): 0 (from the left) or 1
    allow_any_output: bool = False  # the loss need not read the activation it is paired with

    # ---- lookup ---------------------------------------------------------------------------
    # lookups are cached per graph (an MLP's chain graph has 2000 nodes: scanning them per
    # node made deriving quadratic); cached_property writes the instance dict, frozen or not
    @cached_property
    def _by_name(self):
        return {n.name: n for n in self.nodes}

    @cached_property
    def _edges_from(self):
        out = {n.name: [] for n in self.nodes}
        for n in self.nodes:
            for slot, src in enumerate(n.inputs):
                out[src].append((n.name, slot))
            if n.op.target:
                out[n.target].append((n.name, "target"))
        return {k: tuple(v) for k, v in out.items()}

    def node(self, name):
        return self._by_name[name]

    @cached_property
    def loss_node(self):
        return next(n for n in self.nodes if n.op.target)

    @property
    def output(self):
        """The node the loss reads (the network's output)."""
        return self.loss_node.inputs[0]

    @property
    def target(self):
        return self.loss_node.target

    @property
    def reduction(self):
        return self.loss_node.reduction

    @property
    def inputs(self):
        """Input nodes fed by the caller (the target excluded), in declared order."""
        by = {n.name: n for n in self.nodes}
        return tuple(by[k] for k in self.declared if by[k].kind == "input" and k != self.target)

    @property
    def grad_inputs(self):
        return tuple(n for n in self.inputs if n.grad)

    def consumers(self, name):
        """((consumer, slot), ...) of every edge leaving ``name``, in topological order; the
        loss's target edge has slot "target"."""
        return self._edges_from.get(name, ())

    @cached_property
    def _params_by_name(self):
        return {p.name: p for p in self.params}

    def param(self, name):
        return self._params_by_name[name]

    def param_shapes(self):
        return {p.name: p.shape for p in self.params}

    def requires_grad(self):
        """Names of nodes whose gradient the backward pass needs: inputs marked grad, dense
        nodes with parameters (dense) and every node downstream of one."""
        need = set()
        for n in self.nodes:
            if n.op.target:     # the loss: its gradient is 1, never asked for
                continue
            if n.grad or n.op.bind(n) or any(i in need for i in n.inputs):
                need.add(n.name)
        return frozenset(need)

    # ---- identity -------------------------------------------------------------------------
    def canonical(self):
        out = {"name": self.name, "nodes": [n.canonical() for n in self.nodes],
               "params": [[p.name, p.role, list(p.shape)] for p in self.params],
               "declared": list(self.declared)}
        out.update(options(self))
        return out

    @property
    def digest(self):
        text = json.dumps(self.canonical(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(("graph:" + text).encode()).hexdigest()

    def __str__(self):
        opts = (f" relu'(0)={self.relu_at_zero}" if self.relu_at_zero else "") + \
            (" any output" if self.allow_any_output else "")
        return f"{self.name}: " + " ".join(n.op.describe(n) for n in self.nodes) + f" ({self.reduction}){opts}"


# ----------------------------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------------------------

def _find_cycle(edges, order):
    """A cycle as a list of names [a, b, ..., a] or None; ``edges[n]`` are n's inputs."""
    # Depth-first search with an explicit stack (a recursive one would hit Python's recursion
    # limit on a long chain of nodes): frames are (node, iterator over its inputs).
    state = {}
    for root in order:
        if root in state:
            continue
        state[root] = "open"
        path, frames = [root], [(root, iter(edges[root]))]
        while frames:
            n, it = frames[-1]
            m = next(it, None)
            if m is None:
                frames.pop()
                path.pop()
                state[n] = "done"
            elif state.get(m) == "open":
                # edges point from consumer to input: print the cycle in data-flow order
                return list(reversed(path[path.index(m):] + [m]))
            elif m not in state:
                state[m] = "open"
                path.append(m)
                frames.append((m, iter(edges[m])))
    return None


def _topological(edges, order):
    """Kahn's algorithm, ties broken by declared order (deterministic): each step places the
    first node in declared order whose inputs are all placed (a heap of ready nodes keyed by
    declared position, so a graph of MAX_NODES nodes takes milliseconds, not seconds)."""
    position = {n: i for i, n in enumerate(order)}
    waiting = {n: len(set(edges[n])) for n in order}
    consumers = {n: [] for n in order}
    for n in order:
        for m in dict.fromkeys(edges[n]):       # an input listed twice is one dependency
            consumers[m].append(n)
    ready = [position[n] for n in order if waiting[n] == 0]
    heapq.heapify(ready)
    out = []
    while ready:
        n = order[heapq.heappop(ready)]
        out.append(n)
        for c in consumers[n]:
            waiting[c] -= 1
            if waiting[c] == 0:
                heapq.heappush(ready, position[c])
    return out


def _tensor_shape(op, ins, shapes, kw, where, prefix, nname):
    """Tensor values through the other ops: an elementwise node of tensor inputs of one shape
    keeps that shape; a dense node reads (batch, width) values only."""
    if op.realize in TENSOR_REALIZE or "shape" in kw:
        return
    got = [shapes.get(i) for i in ins]
    if op.realize == "contraction" and got and got[0] is not None:
        raise SpecError(where, f"{prefix}input", f"{op.kind} node {nname!r} reads a (batch, width) value, but "
                                                 f"{ins[0]!r} is (batch, {', '.join(map(str, got[0]))}): "
                                                 f"put a flatten node between them")
    if op.realize == "elementwise" and got and got[0] is not None and all(g == got[0] for g in got):
        kw["shape"] = got[0]


def build_graph(name, nodes, activations=None, where="", relu_at_zero=0, allow_any_output=False,
                max_nodes=MAX_NODES):
    """Validate node tables (dicts as in the TOML ``[[node]]`` tables) into a Graph.

    ``relu_at_zero`` (0 or 1) and ``allow_any_output`` are the graph-level options of
    ``symbp.model.network`` (ReLU'(0); a loss after an activation it is not paired with).
    ``max_nodes``: the size bound; an MLP's chain graph (two nodes per layer) passes its own."""
    gkey = "graph.name"
    if not isinstance(name, str):
        raise SpecError(where, gkey, f"expected a string, got {shown(name)}")
    _name(name, where, gkey, "graph name")
    if isinstance(relu_at_zero, bool) or relu_at_zero not in (0, 1):
        raise SpecError(where, "graph.relu_at_zero", f"expected 0 or 1 (ReLU'(0)), got {shown(relu_at_zero)}")
    if not isinstance(allow_any_output, bool):
        raise SpecError(where, "graph.allow_any_output", f"expected true or false, got {shown(allow_any_output)}")
    if activations is not None and not isinstance(activations, dict):
        raise SpecError(where, "activations", f"expected a table of name = expression in z, got {shown(activations)}")
    defined = {}
    for dname, text in (activations or {}).items():
        if not isinstance(text, str):
            raise SpecError(where, f"activations.{dname}", f"expected an expression string in z, got {type(text).__name__}")
        defined[dname] = user_activation(dname, text, where, known=defined)
    if isinstance(nodes, (str, bytes, dict)) or not hasattr(nodes, "__iter__"):
        raise SpecError(where, "node", "expected an array of node tables [[node]]")
    nodes = list(nodes)
    if not nodes:
        raise SpecError(where, "node", "expected at least one [[node]] table")
    if len(nodes) > max_nodes:
        raise SpecError(where, "node", f"{len(nodes)} nodes, more than the {max_nodes} symbp accepts")

    # 1. names and kinds -------------------------------------------------------------------
    tables, order = {}, []
    for idx, t in enumerate(nodes, start=1):
        if not isinstance(t, dict):
            raise SpecError(where, f"node[{idx}]", f"expected a table, got {type(t).__name__}")
        if "name" not in t:
            raise SpecError(where, f"node[{idx}].name", "missing key")
        nname = t["name"]
        if not isinstance(nname, str):
            raise SpecError(where, f"node[{idx}].name", f"expected a string, got {shown(nname)}")
        _name(nname, where, f"node[{idx}].name", "node name")
        if nname in tables:
            raise SpecError(where, f"node.{nname}", f"two nodes are named {nname!r} (node[{order.index(nname) + 1}] and node[{idx}])")
        kind = t.get("kind")
        if "kind" not in t:
            # a misspelled `knd` is named as such, not only reported as a missing kind
            for key in t:
                if difflib.get_close_matches(key, ("kind",), n=1, cutoff=0.6) and len(key) <= 100:
                    raise unknown_key(where, f"node.{nname}.", key, ("kind",), "unknown key and no kind")
            raise SpecError(where, f"node.{nname}.kind", f"missing key (expected one of: {', '.join(KINDS)})")
        if not isinstance(kind, str) or kind not in KINDS:
            raise SpecError(where, f"node.{nname}.kind", f"unknown node kind {shown(kind)} (expected one of: {', '.join(KINDS)})")
        allowed = OPS[kind].allowed_keys(t)
        for key in t:
            if key not in allowed:
                raise unknown_key(where, f"node.{nname}.", key, allowed, f"unknown key for a {kind} node")
        tables[nname] = t
        order.append(nname)

    # 2. edges ------------------------------------------------------------------------------
    edges, targets = {}, {}
    for nname in order:
        t, kind, prefix = tables[nname], tables[nname]["kind"], f"node.{nname}."
        op = OPS[kind]
        if op.reads == "none":
            ins = []
        elif op.reads == "many":
            if "inputs" not in t:
                raise SpecError(where, f"{prefix}inputs", "missing key (expected a list of node names)")
            ins = t["inputs"]
            if isinstance(ins, str) or not isinstance(ins, (list, tuple)) or not all(isinstance(i, str) for i in ins):
                raise SpecError(where, f"{prefix}inputs", f"expected a list of node names, got {shown(ins)}")
            ins = list(ins)
            if len(ins) < op.min_inputs:
                raise SpecError(where, f"{prefix}inputs", f"a {kind} node needs at least {op.min_inputs} inputs, got {len(ins)}")
        else:
            ins = [_str(t, "input", where, prefix)]
        for i in ins:
            if i not in tables:
                raise SpecError(where, f"{prefix}{'inputs' if op.reads == 'many' else 'input'}",
                                f"edge {shown(i)} -> {nname!r} names no node (nodes: {shown(', '.join(order), quote=False)})")
        if op.target:
            tgt = _str(t, "target", where, prefix)
            if tgt not in tables:
                raise SpecError(where, f"{prefix}target", f"edge {shown(tgt)} -> {nname!r} names no node (nodes: {shown(', '.join(order), quote=False)})")
            targets[nname] = tgt
        edges[nname] = ins

    losses = [n for n in order if OPS[tables[n]["kind"]].target]
    if not losses:
        raise SpecError(where, "node", "no loss node (expected exactly one node of kind 'loss')")
    if len(losses) > 1:
        raise SpecError(where, f"node.{losses[1]}", f"more than one loss node: {', '.join(losses)} (expected exactly one)")
    loss_name = losses[0]
    for nname in order:
        if loss_name in edges[nname]:
            raise SpecError(where, f"node.{nname}", f"the loss node {loss_name!r} feeds node {nname!r}: the loss must be the last node")

    cycle = _find_cycle(edges, order)
    if cycle:
        raise SpecError(where, f"node.{cycle[0]}", "cycle " + " -> ".join(cycle) + " (a graph must be acyclic)")
    topo = _topological(edges, order)

    # 3. widths and node contents, in topological order --------------------------------------
    functions = elementwise_functions(defined)
    built, widths, params = {}, {}, {}
    shapes = {}
    for nname in topo:
        t, kind, prefix = tables[nname], tables[nname]["kind"], f"node.{nname}."
        ins = tuple(edges[nname])
        width, kw, uses = OPS[kind].validate(t, ins, Check(where, prefix, nname, widths, functions, defined, targets,
                                                           shapes))
        _tensor_shape(OPS[kind], ins, shapes, kw, where, prefix, nname)
        shapes[nname] = kw.get("shape")
        # parameters: a name used by several nodes is one shared parameter, of one role and shape
        mine = {}
        for pname, role, shape, tr in uses:
            key = f"{prefix}{role}"
            if pname in mine:
                raise SpecError(where, key, f"parameter {pname!r} is both the {mine[pname]} and the {role} of node {nname!r}")
            mine[pname] = role
            if pname in params:
                p = params[pname]
                first = p["uses"][0][0]
                if p["role"] != role:
                    raise SpecError(where, key, f"parameter {pname!r} is a {p['role']} of node {first!r} "
                                                f"and a {role} of node {nname!r}")
                if p["shape"] != shape:
                    raise SpecError(where, key, f"shared parameter {pname!r} used with incompatible shapes: "
                                                f"node {first!r} needs {p['shape']}, node {nname!r} needs {shape}"
                                                f"{' (transposed)' if tr else ''}")
                p["uses"].append((nname, tr))
            else:
                params[pname] = {"role": role, "shape": shape, "uses": [(nname, tr)]}
        widths[nname] = width
        built[nname] = Node(nname, kind, ins, width, **kw)

    # 4. names: one namespace, g_<name> reserved ----------------------------------------------
    # names[x] = (description, the key an error about x names)
    names = {n: (f"node {n!r}", f"node.{n}") for n in order}
    for pname, p in params.items():
        key = f"node.{p['uses'][0][0]}.{p['role']}"
        if pname in names:
            raise SpecError(where, key, f"parameter {pname!r} has the name of node {pname!r} "
                                        f"(nodes and parameters share one namespace)")
        names[pname] = (f"parameter {pname!r}", key)
    for n, (what, _) in names.items():
        if f"g_{n}" in names:
            holder, key = names[f"g_{n}"]
            raise SpecError(where, key, f"the name 'g_{n}' of {holder} is reserved for the gradient of {what}")

    # 5. the loss: its input, its target, and paths to it -----------------------------------
    loss = built[loss_name]
    prefix = f"node.{loss_name}."
    src, tgt = built[loss.inputs[0]], built[loss.target]
    if tgt.kind != "input":
        raise SpecError(where, f"{prefix}target", f"the target {tgt.name!r} of loss {loss_name!r} is a {tgt.kind} node (expected an input node)")
    if tgt.grad:
        raise SpecError(where, f"node.{tgt.name}.grad", f"input {tgt.name!r} is the target of loss {loss_name!r}: a target takes no gradient")
    others = [n for n in topo if tgt.name in edges[n] and n != loss_name]
    if others or tgt.name == loss.inputs[0]:
        who = others[0] if others else loss_name
        raise SpecError(where, f"{prefix}target", f"target {tgt.name!r} of loss {loss_name!r} also feeds node {who!r} "
                                                  f"(use a separate input node for the target)")
    if tgt.width != src.width:
        raise SpecError(where, f"{prefix}target", f"shape mismatch at loss {loss_name!r}: input {src.name!r} has width "
                                                  f"{src.width}, target {tgt.name!r} has width {tgt.width}")
    need = loss.loss.outputs
    if need and not allow_any_output:
        act = src.activation.name if src.kind == "activation" else None
        if act not in need:
            got = f"a {act} activation node" if act else f"a {src.kind} node"
            raise SpecError(where, f"{prefix}loss", f"loss {loss.loss.name!r} needs a {' or '.join(need)} activation "
                                                    f"node as its input, but {src.name!r} is {got}")
    feeds = {n: [] for n in topo}               # n -> the nodes that read n
    for c in topo:
        for m in edges[c]:
            feeds[m].append(c)
    reaches = {loss_name}
    for n in reversed(topo):
        if any(c in reaches for c in feeds[n]) or n == tgt.name:
            reaches.add(n)
    for n in order:
        if n not in reaches:
            raise SpecError(where, f"node.{n}", f"node {n!r} has no path to the loss {loss_name!r}")

    plist, seen = [], set()
    for n in topo:
        node = built[n]
        for pname in node.op.bind(node).values():
            if pname not in seen:
                seen.add(pname)
                p = params[pname]
                plist.append(Param(pname, p["role"], p["shape"], tuple(p["uses"])))
    check_parameter_count(sum(math.prod(p.shape) for p in plist), where, "node")
    g = Graph(name, tuple(built[n] for n in topo), tuple(plist), tuple(order), relu_at_zero, allow_any_output)
    if not plist and not g.grad_inputs:
        raise SpecError(where, "node", "nothing to differentiate: no dense node (parameters) and no input marked grad = true")
    return g


# ----------------------------------------------------------------------------------------------
# the Python builder
# ----------------------------------------------------------------------------------------------

class GraphBuilder:
    """Collects node tables; ``build()`` validates them (the same checks as the TOML loader).

    Each method returns the node's name, which later calls take as an input::

        g = graph("residual")
        x = g.input("x", 4)
        h = g.activation("h", g.dense("d", x, units=4), "tanh")
        g.loss("loss", g.add("y", x, h), g.input("t", 4), "mse")
        G = g.build()
    """

    def __init__(self, name, activations=None, where="graph()", relu_at_zero=0, allow_any_output=False,
                 max_nodes=MAX_NODES):
        self.name = name
        self.activations = dict(activations or {})
        self.where = where
        self.relu_at_zero = relu_at_zero
        self.allow_any_output = allow_any_output
        self.max_nodes = max_nodes
        self.tables = []

    def _add(self, table):
        self.tables.append(table)
        return table["name"]

    def input(self, name, width=None, grad=False, shape=None):
        """A (batch, width) input, or with ``shape=[C, H, W]`` a (batch, C, H, W) one."""
        t = {"name": name, "kind": "input", "grad": grad}
        if width is not None or shape is None:
            t["width"] = width
        if shape is not None:
            t["shape"] = list(shape) if isinstance(shape, tuple) else shape
        return self._add(t)

    def conv2d(self, name, input, out_channels, kernel, stride=None, padding=None, bias=None, weight=None):
        """out[s,o,i,j] = sum_{c,p,q} W[o,c,p,q] input[s,c,i*stride+p-pad,j*stride+q-pad] + b[o];
        ``bias``: False for none or a parameter name; names default to W_<name>, b_<name>."""
        t = {"name": name, "kind": "conv2d", "input": input, "out_channels": out_channels, "kernel": kernel}
        for key, val in (("stride", stride), ("padding", padding), ("bias", bias), ("weight", weight)):
            if val is not None:
                t[key] = val
        return self._add(t)

    def maxpool2d(self, name, input, window, stride=None):
        return self._add({"name": name, "kind": "maxpool2d", "input": input, "window": window,
                          **({"stride": stride} if stride is not None else {})})

    def avgpool2d(self, name, input, window, stride=None):
        return self._add({"name": name, "kind": "avgpool2d", "input": input, "window": window,
                          **({"stride": stride} if stride is not None else {})})

    def flatten(self, name, input):
        return self._add({"name": name, "kind": "flatten", "input": input})

    def dense(self, name, input, units, weight=None, bias=None, transpose=False):
        """out = W input + b; bias=False for none; names default to W_<name>, b_<name>."""
        t = {"name": name, "kind": "dense", "input": input, "units": units, "transpose": transpose}
        if weight is not None:
            t["weight"] = weight
        if bias is not None:
            t["bias"] = bias
        return self._add(t)

    def activation(self, name, input, activation, **params):
        """activation: a name, {"name": ..., <param>: value}, or an Activation."""
        return self._add({"name": name, "kind": "activation", "input": input, "activation": activation, **params})

    def add(self, name, *inputs, units=None):
        return self._add(self._multi(name, "add", inputs, units))

    def multiply(self, name, *inputs, units=None):
        return self._add(self._multi(name, "multiply", inputs, units))

    def concat(self, name, *inputs, units=None):
        return self._add(self._multi(name, "concat", inputs, units))

    def expression(self, name, expression, inputs, units=None):
        """An elementwise expression of ``inputs`` written with their names: "x * sigmoid(g)"."""
        t = self._multi(name, "expression", inputs, units)
        t["expression"] = expression
        return self._add(t)

    def loss(self, name, input, target, loss, reduction="mean"):
        return self._add({"name": name, "kind": "loss", "input": input, "target": target,
                          "loss": loss, "reduction": reduction})

    # normalization family (symbp.model.ops_norm): keys given only when set, so that the
    # defaults are the registry's
    def batchnorm(self, name, input, **keys):
        """Batch normalization of ``input`` over the batch; keys eps, momentum, affine, mode,
        gamma, beta (see symbp.model.ops_norm)."""
        return self._add({"name": name, "kind": "batchnorm", "input": input, **keys})

    def layernorm(self, name, input, **keys):
        """Layer normalization of ``input`` over its units; keys eps, affine, gamma, beta."""
        return self._add({"name": name, "kind": "layernorm", "input": input, **keys})

    def dropout(self, name, input, mask, p):
        """Inverted dropout input * mask / (1 - p); ``mask`` names the node (an input) of the mask."""
        return self._add({"name": name, "kind": "dropout", "inputs": [input, mask], "p": p})

    @staticmethod
    def _multi(name, kind, inputs, units):
        t = {"name": name, "kind": kind, "inputs": list(inputs) if isinstance(inputs, (list, tuple)) else inputs}
        if units is not None:
            t["units"] = units
        return t

    def build(self):
        return build_graph(self.name, self.tables, self.activations or None, self.where,
                           self.relu_at_zero, self.allow_any_output, self.max_nodes)


def graph(name, activations=None, relu_at_zero=0, allow_any_output=False):
    """A GraphBuilder for a graph called ``name``; ``activations`` maps new elementwise
    activation names to expression strings in z (like a spec's [activations]);
    ``relu_at_zero`` and ``allow_any_output`` as in ``build_graph``."""
    return GraphBuilder(name, activations, relu_at_zero=relu_at_zero, allow_any_output=allow_any_output)


def from_network(net, input_grad=False):
    """The graph of an MLP: input x -> dense z1 (W1, b1) -> activation a1 -> ... -> loss(aL, y).

    Node and parameter names follow the MLP kernels (W1, b1, ...), so one params dict serves
    both. ``input_grad`` marks x grad (dL/dX). A layer without bias gives a dense node with
    ``bias = false``; the network's ``relu_at_zero`` and ``allow_any_output`` become the
    graph's. The size bound is the MLP's (``network.MAX_LAYERS`` layers: two nodes each)."""
    where = f"from_network({net.name})"
    b = GraphBuilder(net.name, where=where, relu_at_zero=net.relu_at_zero, allow_any_output=net.allow_any_output,
                     max_nodes=max(MAX_NODES, 2 * MAX_LAYERS + 3))
    prev = b.input("x", net.inputs, grad=input_grad)
    for l, layer in enumerate(net.layers, start=1):
        z = b.dense(f"z{l}", prev, layer.units, weight=naming.param_key("W", l),
                    bias=naming.param_key("b", l) if layer.bias else False)
        prev = b.activation(f"a{l}", z, layer.activation)
    b.input("y", net.sizes[-1])
    b.loss("loss", prev, "y", net.loss.name, net.reduction)
    return b.build()


CHAIN_KINDS = ("input", "dense", "activation", "loss")
CHAIN_SHAPE = "input -> dense -> activation -> ... -> loss"


def _a(kind):
    return f"{'an' if kind[0] in 'aeiou' else 'a'} {kind}"


def chain_layers(graph, served_by="this target", instead="use target='cpu'"):
    """The dense nodes of a chain graph in order, each with the activation node after it:
    ((dense Node, activation Node), ...); ``SpecError`` (one line, ``graph '<name>': ...``)
    naming the first node that breaks the chain and why, ending with ``instead``.

    A chain: one data input (marked grad or not) -> dense -> activation -> dense -> activation
    ... -> the loss, whose target is the other input; every dense node untransposed, with its
    own weight and bias (or none), used by no other node; every node read by exactly one node.
    Nodes are checked in topological order first for kinds a chain has no room for (add,
    multiply, concat, expression), so that a residual graph is refused at its add node, not at
    the branch before it."""
    def refuse(node, why):
        raise SpecError(f"graph {graph.name!r}", "", f"{served_by} serves chain graphs ({CHAIN_SHAPE}) only; "
                                                      f"node {node!r} {why}: {instead}")
    for n in graph.nodes:
        if n.kind not in CHAIN_KINDS:
            refuse(n.name, f"is {_a(n.kind)} node")
    # With only these kinds no two paths can meet (a merge needs add, multiply, concat or an
    # expression), so a second data input or a node feeding two others cannot pass the loop
    # above in a valid graph; the two checks below keep the walk's assumptions stated anyway.
    if len(graph.inputs) != 1:
        refuse(graph.inputs[1].name, f"is a second data input (after {graph.inputs[0].name!r}); a chain reads one")
    layers, cur, dense = [], graph.inputs[0], None
    while True:
        uses = graph.consumers(cur.name)
        if len(uses) != 1:
            refuse(cur.name, f"feeds {len(uses)} nodes ({', '.join(c for c, _ in uses)}); in a chain each node feeds one")
        nxt = graph.node(uses[0][0])
        if cur.kind == "dense":
            if nxt.kind != "activation":
                refuse(cur.name, f"(dense) feeds {_a(nxt.kind)} node {nxt.name!r}; in a chain an activation node "
                                 f"follows each dense node (an identity activation for none)")
            layers.append((dense, nxt))
        elif nxt.kind == "loss":
            if cur.kind == "input":
                refuse(nxt.name, f"reads input {cur.name!r} directly; a chain has at least one dense node")
            return tuple(layers)
        elif nxt.kind != "dense":
            refuse(nxt.name, f"is {_a(nxt.kind)} node after {_a(cur.kind)} node {cur.name!r}; in a chain a dense "
                             f"node follows the input and each activation")
        else:
            dense = nxt
            if nxt.transpose:
                refuse(nxt.name, f"uses its weight {nxt.weight!r} transposed")
            for pname in (nxt.weight, nxt.bias):
                others = [u for u, _ in graph.param(pname).uses if u != nxt.name] if pname else []
                if others:
                    refuse(nxt.name, f"shares parameter {pname!r} with node {others[0]!r}")
        cur = nxt


# ----------------------------------------------------------------------------------------------
# TOML
# ----------------------------------------------------------------------------------------------

def loads_graph(text, where="<string>"):
    """Parse graph spec text (TOML: [graph] with name and optionally relu_at_zero and
    allow_any_output, [[node]], optional [activations]) into a Graph."""
    doc = read_toml(text, where)
    if is_mlp_doc(doc):
        raise SpecKindError(where, "mlp", "this is an MLP spec ([network] and [[layer]] tables), not a "
                                          "graph spec: read it with symbp.load")
    for key in doc:
        if key not in TOP_KEYS:
            raise unknown_key(where, "", key, TOP_KEYS)
    if "graph" not in doc or not isinstance(doc["graph"], dict):
        raise SpecError(where, "graph", "missing table [graph] (with name = ...)")
    for key in doc["graph"]:
        if key not in GRAPH_KEYS:
            raise unknown_key(where, "graph.", key, GRAPH_KEYS)
    if "name" not in doc["graph"]:
        raise SpecError(where, "graph.name", "missing key")
    nodes = doc.get("node")
    if nodes is None:
        raise SpecError(where, "node", "missing [[node]] tables")
    if not isinstance(nodes, list):
        raise SpecError(where, "node", "expected an array of tables [[node]]")
    acts = doc.get("activations")
    if acts is not None and not isinstance(acts, dict):
        raise SpecError(where, "activations", "expected a table [activations]")
    g = doc["graph"]
    return build_graph(g["name"], nodes, acts, where, g.get("relu_at_zero", 0), g.get("allow_any_output", False))


def load_graph(path):
    """Read a TOML graph spec file into a validated Graph."""
    return loads_graph(*read_text(path))

"""The op registry: every entry is complete (keys, validation, a forward definition that
differentiates, parameters, a realisation strategy) and the graph pipeline reads only it."""
import pytest
import sympy as sp

from symbp import naming
from symbp.errors import SpecError
from symbp.model import ops
from symbp.model.functions import ACTIVATIONS, LOSSES
from symbp.model.graph import KINDS, build_graph, graph
from symbp.derivation.graph import _key, _template, derive_graph

REALIZE = ("source", "contraction", "elementwise", "slices", "loss")
REALIZE += ("convolution", "pooling", "reshape")     # the tensor ops (model/ops_conv.py)
REALIZE += ("normalization", "mask")     # the normalization family (model/ops_norm.py)

# one node of each kind, in a graph that reads every kind (the node of the kind under test is
# looked up by name)
EXAMPLE = {"input": "x", "dense": "d", "activation": "a", "add": "s", "multiply": "m",
           "concat": "c", "expression": "e", "loss": "loss", "batchnorm": "bn", "layernorm": "ln",
           "dropout": "dr"}


def every_kind():
    g = graph("every")
    x = g.input("x", 2, grad=True)
    a = g.activation("a", g.dense("d", x, 2), "tanh")
    s = g.add("s", a, x)
    m = g.multiply("m", s, a)
    e = g.expression("e", "m * sigmoid(s)", ["m", "s"])
    c = g.concat("c", e, m)
    dr = g.dropout("dr", g.layernorm("ln", g.batchnorm("bn", c)), g.input("mk", 4), 0.5)
    g.loss("loss", g.dense("o", dr, 1), g.input("t", 1), "mse")
    return g.build()


# the tensor ops, in a graph of their own: one node of each kind
TENSOR_EXAMPLE = {"conv2d": "cv", "maxpool2d": "mp", "avgpool2d": "ap", "flatten": "fl"}
EXAMPLE.update(TENSOR_EXAMPLE)


def every_tensor_kind():
    g = graph("every_tensor")
    x = g.input("x", shape=[2, 5, 5], grad=True)
    mp = g.maxpool2d("mp", g.conv2d("cv", x, 2, 2), 2, stride=1)
    g.loss("loss", g.dense("o", g.flatten("fl", g.avgpool2d("ap", mp, 2)), 1), g.input("t", 1), "mse")
    return g.build()


def example_graph(kind):
    return every_tensor_kind() if kind in TENSOR_EXAMPLE else every_kind()


def test_registry_covers_the_graph_kinds():
    assert set(ops.OPS) == set(KINDS) == set(EXAMPLE)


@pytest.mark.parametrize("kind", list(ops.OPS))
def test_entry_is_complete(kind):
    op = ops.OPS[kind]
    assert op.kind == kind
    assert {"name", "kind"} <= set(op.keys)
    assert op.reads in ("none", "one", "many")
    assert op.realize in REALIZE
    assert ("input" in op.keys) == (op.reads == "one") and ("inputs" in op.keys) == (op.reads == "many")
    assert callable(op.validate) and callable(op.forward) and callable(op.key)
    assert op.doc


@pytest.mark.parametrize("kind", list(ops.OPS))
def test_forward_definition_differentiates(kind):
    """The op's forward definition for a real node differentiates by sympy.diff w.r.t. each of
    its inputs and parameters, and names nothing outside the generic names."""
    g = example_graph(kind)
    node = g.node(EXAMPLE[kind])
    fw = node.op.forward(node.op.key(node), 0)
    assert isinstance(fw, ops.Forward) and fw.expr is not None
    assert fw.slots == (0 if kind == "input" else len(node.inputs))
    allowed = {ops._OUT, ops._Y} | {ops._in(m) for m in range(fw.slots)} | {p.generic for p in fw.params}
    assert {b for b in fw.expr.atoms(sp.IndexedBase)} <= allowed
    out = ops._OUT[naming.S, naming.J]
    at = (naming.S, naming.C, naming.U, naming.V) if kind in TENSOR_EXAMPLE else (naming.S, naming.K)
    wrt = [ops._in(m)[at] for m in range(fw.slots)] + [p.generic[p.indices] for p in fw.params]
    if kind == "input":
        wrt = [out]
    for x in wrt:
        d = sp.diff(fw.expr, x)
        assert not d.has(sp.Derivative)
    if kind == "loss":
        assert sp.diff(fw.expr, out) != 0
    # bound parameters are exactly the entry's roles the node has
    assert set(node.op.bind(node)) <= {p.role for p in node.op.params}


@pytest.mark.parametrize("kind", [k for k in ops.OPS if k not in ("input", "loss")])
def test_template_of_every_kind(kind):
    """The derivation's template of each kind comes from the registry alone: a Jacobian per
    input, a derivative per parameter role, no Kronecker delta left after the passes."""
    g = example_graph(kind)
    node = g.node(EXAMPLE[kind])
    t = _template(_key(node), 0)
    assert len(t["jacobians"]) == len(node.inputs)
    for spec in node.op.params:
        if spec.role in node.op.bind(node):
            assert t[f"d{spec.symbol}"] and t[f"g{spec.symbol}"]
    for stages in t["contributions"]:
        assert not stages[-1][1].has(sp.KroneckerDelta)


def test_the_whole_graph_of_every_kind_derives():
    d = derive_graph(every_kind())
    assert set(d.param_grads) == {"W_d", "b_d", "W_o", "b_o", "gamma_bn", "beta_bn", "gamma_ln", "beta_ln"}
    assert d.input_grads == {"x": "g_x"}


@pytest.mark.parametrize("kind", list(ops.OPS))
def test_validate_names_the_node_key(kind):
    """Each entry's validate reports a wrong value as a one-line SpecError naming
    node.<name>.<key>."""
    bad = {"input": {"width": 0}, "dense": {"units": 0}, "activation": {"activation": "nope"},
           "add": {"units": 9}, "multiply": {"units": 9}, "concat": {"units": 9},
           "expression": {"expression": "x +"}, "loss": {"loss": "nope"},
           "conv2d": {"out_channels": 0}, "maxpool2d": {"window": 0}, "avgpool2d": {"stride": 0},
           "flatten": {}, "batchnorm": {"eps": 0},
           "layernorm": {"affine": 1}, "dropout": {"p": 1}}[kind]
    v = ops.Check("spec.toml", "node.n.", "n", {"x": 2, "w": 2}, {}, {}, {"n": "w"})
    ins = () if kind == "input" else ("x",) if ops.OPS[kind].reads == "one" else ("x", "w")
    with pytest.raises(SpecError) as err:
        ops.OPS[kind].validate({"name": "n", "kind": kind, **bad}, ins, v)
    assert "node.n." in str(err.value) and "\n" not in str(err.value)


def test_activation_keys_include_its_parameters():
    op = ops.OPS["activation"]
    assert "slope" in op.allowed_keys({"activation": "leaky_relu"})
    assert "slope" not in op.allowed_keys({"activation": "tanh"})
    assert [p[0] for p in ACTIVATIONS["leaky_relu"].params] == ["slope"]


def test_dense_parameter_shapes_come_from_the_entry():
    g = build_graph("t", [{"name": "x", "kind": "input", "width": 3},
                          {"name": "d", "kind": "dense", "input": "x", "units": 2},
                          {"name": "e", "kind": "dense", "input": "d", "units": 3, "weight": "W_d",
                           "transpose": True, "bias": False},
                          {"name": "y", "kind": "input", "width": 3},
                          {"name": "loss", "kind": "loss", "input": "e", "target": "y", "loss": "mse"}])
    assert g.param_shapes() == {"W_d": (2, 3), "b_d": (2,)}
    spec = ops.OPS["dense"].params[0]
    assert spec.shape(("dense", True, False)) == (ops._n_in(0), ops._N_OUT)


def test_loss_forward_is_the_mean_over_the_batch():
    fw = ops.OPS["loss"].forward(("loss", LOSSES["sse"], "mean"))
    assert fw.expr.has(1 / naming.BATCH)
    fw = ops.OPS["loss"].forward(("loss", LOSSES["sse"], "sum"))
    assert not fw.expr.has(1 / naming.BATCH) and isinstance(fw.expr, sp.Sum)

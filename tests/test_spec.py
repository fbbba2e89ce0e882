"""Specs: TOML files and the Python builder give the same immutable, validated Network.

Checks that every shipped example spec loads, that ``symbp.mlp(...)`` and ``symbp.load(...)`` of
equivalent specs give equal Networks with equal digests, that the digest moves when any part of
the spec moves (and is the same in a fresh process), that Networks are frozen, that numbers in
a spec stay exact (slope 0.1 is the rational 1/10) and that parameter shapes follow
z = W a + b with W of shape (n_out, n_in). The options bias (per layer), relu_at_zero and
allow_any_output read the same from TOML and from the builder, move the digest only when set
(existing digests stay), drop b<l> from the parameters, and warn where a loss may leave its
domain.
"""
import warnings
import dataclasses
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import sympy as sp

import symbp
from symbp import naming

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples" / "specs").glob("*.toml"))

XOR_TOML = """
[network]
name = "xor"
inputs = 2

[[layer]]
units = 3
activation = "sigmoid"

[[layer]]
units = 1
activation = "sigmoid"

[loss]
kind = "bce"
reduction = "mean"
"""


def builder_call(doc):
    """The symbp.mlp arguments equivalent to a parsed TOML spec (read generically, no copy)."""
    acts = []
    for t in doc["layer"]:
        extra = {k: v for k, v in t.items() if k not in ("units", "activation")}
        acts.append({"name": t["activation"], **extra} if extra else t["activation"])
    return dict(sizes=[doc["network"]["inputs"]] + [t["units"] for t in doc["layer"]],
                activations=acts, loss=doc["loss"]["kind"],
                reduction=doc["loss"].get("reduction", "mean"), name=doc["network"]["name"],
                define=doc.get("activations") or None)


def test_there_are_examples():
    assert len(EXAMPLES) >= 3


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_loads_and_equals_builder(path):
    net = symbp.load(path)
    assert isinstance(net, symbp.Network)
    doc = tomllib.loads(path.read_text())
    twin = symbp.mlp(**builder_call(doc))
    assert twin == net
    assert twin.digest == net.digest
    assert hash(twin) == hash(net)
    assert net.sizes == (doc["network"]["inputs"],) + tuple(t["units"] for t in doc["layer"])
    assert [l.activation.name for l in net.layers] == [t["activation"] for t in doc["layer"]]
    assert net.loss.name == doc["loss"]["kind"]


def test_xor_builder_and_toml_are_equal(tmp_path):
    path = tmp_path / "xor.toml"
    path.write_text(XOR_TOML)
    from_file = symbp.load(path)
    from_text = symbp.loads(XOR_TOML)
    built = symbp.mlp([2, 3, 1], ["sigmoid", "sigmoid"], "bce", name="xor")
    assert from_file == from_text == built
    assert from_file.digest == from_text.digest == built.digest
    assert built.sizes == (2, 3, 1) and built.depth == 2 and built.reduction == "mean"
    # The default reduction is the mean, in both front ends.
    no_reduction = XOR_TOML.replace('reduction = "mean"\n', "")
    assert symbp.loads(no_reduction) == built


def test_user_activation_builder_and_toml_are_equal():
    text = """
[network]
name = "swish"
inputs = 3
[activations]
swish = "z * sigmoid(z)"
[[layer]]
units = 4
activation = "swish"
[[layer]]
units = 2
activation = "identity"
[loss]
kind = "sse"
reduction = "sum"
"""
    built = symbp.mlp([3, 4, 2], ["swish", "identity"], "sse", reduction="sum", name="swish",
                      define={"swish": "z * sigmoid(z)"})
    net = symbp.loads(text)
    assert net == built and net.digest == built.digest
    z = naming.Z
    act = net.layers[0].activation
    assert act.user and act.name == "swish"
    assert sp.simplify(act.definition - z / (1 + sp.exp(-z))) == 0


def _variants():
    """(label, builder kwargs) pairs: the base xor network and one change per field."""
    base = dict(sizes=[2, 3, 1], activations=["sigmoid", "sigmoid"], loss="bce", reduction="mean",
                name="xor")
    user = dict(base, activations=["act", "sigmoid"])
    return [
        ("base", base),
        ("name", dict(base, name="xor2")),
        ("inputs", dict(base, sizes=[3, 3, 1])),
        ("width", dict(base, sizes=[2, 4, 1])),
        ("depth", dict(base, sizes=[2, 3, 3, 1], activations=["sigmoid"] * 3)),
        ("activation", dict(base, activations=["tanh", "sigmoid"])),
        ("leaky_default", dict(base, activations=["leaky_relu", "sigmoid"])),
        ("leaky_slope", dict(base, activations=[{"name": "leaky_relu", "slope": 0.1}, "sigmoid"])),
        ("leaky_slope2", dict(base, activations=[{"name": "leaky_relu", "slope": 0.2}, "sigmoid"])),
        ("loss", dict(base, activations=["sigmoid", "identity"], loss="mse")),
        ("loss2", dict(base, activations=["sigmoid", "identity"], loss="sse")),
        ("reduction", dict(base, reduction="sum")),
        ("user", dict(user, define={"act": "z * sigmoid(z)"})),
        ("user_text", dict(user, define={"act": "z * tanh(z)"})),
        ("no_bias", dict(base, bias=False)),
        ("no_bias_layer2", dict(base, bias=[True, False])),
        ("relu_at_zero", dict(base, relu_at_zero=1)),
        ("allow_any_output", dict(base, allow_any_output=True)),
    ]


def test_digest_changes_when_anything_changes():
    nets = {label: symbp.mlp(**kw) for label, kw in _variants()}
    digests = {label: n.digest for label, n in nets.items()}
    assert len(set(digests.values())) == len(digests), digests
    for label, n in nets.items():
        assert len(n.digest) == 64 and int(n.digest, 16) >= 0
        for other, m in nets.items():
            assert (n == m) == (label == other)


def test_digest_is_stable_and_value_based():
    kw = dict(_variants()[0][1])
    assert symbp.mlp(**kw).digest == symbp.mlp(**kw).digest
    # An equal slope written differently (0.10 vs 0.1) is the same network.
    a = symbp.mlp([2, 3, 1], [{"name": "leaky_relu", "slope": 0.1}, "sigmoid"], "bce")
    b = symbp.mlp([2, 3, 1], [{"name": "leaky_relu", "slope": 0.10}, "sigmoid"], "bce")
    assert a == b and a.digest == b.digest


def test_digest_is_the_same_in_a_fresh_process():
    code = "import symbp; print(symbp.mlp([2, 3, 1], ['sigmoid', 'sigmoid'], 'bce', name='xor').digest)"
    here = symbp.mlp([2, 3, 1], ["sigmoid", "sigmoid"], "bce", name="xor").digest
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed,
               "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                             timeout=120, check=True).stdout.strip()
        assert out == here


def test_network_is_immutable():
    net = symbp.mlp([2, 3, 1], [{"name": "leaky_relu", "slope": 0.1}, "sigmoid"], "bce")
    assert isinstance(net.layers, tuple)
    with pytest.raises(dataclasses.FrozenInstanceError):
        net.name = "other"
    with pytest.raises(dataclasses.FrozenInstanceError):
        net.inputs = 5
    with pytest.raises(dataclasses.FrozenInstanceError):
        net.layers[0].units = 7
    with pytest.raises(dataclasses.FrozenInstanceError):
        net.layers[0].activation.definition = sp.Integer(0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        net.loss.name = "mse"
    with pytest.raises(TypeError):
        net.layers[0] = net.layers[1]
    assert isinstance(net.layers[0].activation.values, tuple)
    # Frozen all the way down, so a Network can key a cache.
    assert {net: 1}[symbp.mlp([2, 3, 1], [{"name": "leaky_relu", "slope": 0.1}, "sigmoid"], "bce")] == 1


def _leaky_spec(slope_line):
    return f"""
[network]
name = "leaky"
inputs = 2
[[layer]]
units = 3
activation = "leaky_relu"
{slope_line}
[[layer]]
units = 1
activation = "identity"
[loss]
kind = "mse"
"""


def test_leaky_relu_slope_from_toml_is_exact():
    z = naming.Z
    net = symbp.loads(_leaky_spec("slope = 0.1"))
    act = net.layers[0].activation
    assert act.values == (("slope", sp.Rational(1, 10)),)
    assert isinstance(act.values[0][1], sp.Rational) and not isinstance(act.values[0][1], sp.Float)
    assert not act.definition.has(sp.Float)
    assert act.definition == sp.Piecewise((z, z > 0), (sp.Rational(1, 10) * z, True))
    assert net == symbp.mlp([2, 3, 1], [{"name": "leaky_relu", "slope": 0.1}, "identity"], "mse",
                            name="leaky")


@pytest.mark.parametrize("line, value", [
    ("", sp.Rational(1, 100)),               # the default 0.01
    ("slope = 0.2", sp.Rational(1, 5)),
    ("slope = 0.3", sp.Rational(3, 10)),     # 0.3 is not 0.299999999999999988897769753748...
    ("slope = 1e-3", sp.Rational(1, 1000)),
    ("slope = 2", sp.Integer(2)),
    ("slope = -0.5", sp.Rational(-1, 2)),
])
def test_leaky_relu_slope_values(line, value):
    act = symbp.loads(_leaky_spec(line)).layers[0].activation
    assert act.values == (("slope", value),)
    assert act.at(sp.Integer(-1)) == -value


def test_param_shapes():
    net = symbp.mlp([64, 32, 10], ["tanh", "softmax"], "ce")
    shapes = net.param_shapes()
    assert list(shapes) == ["W1", "b1", "W2", "b2"]
    assert shapes == {"W1": (32, 64), "b1": (32,), "W2": (10, 32), "b2": (10,)}
    deep = symbp.mlp([5, 4, 3, 2], ["relu", "tanh", "identity"], "mse")
    assert deep.param_shapes() == {"W1": (4, 5), "b1": (4,), "W2": (3, 4), "b2": (3,),
                                   "W3": (2, 3), "b3": (2,)}
    assert deep.depth == 3 and deep.sizes == (5, 4, 3, 2)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_param_shapes_follow_sizes(path):
    net = symbp.load(path)
    shapes = net.param_shapes()
    assert len(shapes) == 2 * net.depth
    for l in range(1, net.depth + 1):
        assert shapes[f"W{l}"] == (net.sizes[l], net.sizes[l - 1])
        assert shapes[f"b{l}"] == (net.sizes[l],)


def test_user_activation_may_use_an_earlier_one():
    z = naming.Z
    net = symbp.mlp([1, 2, 1], ["twice", "identity"], "mse",
                    define={"swish": "z * sigmoid(z)", "twice": "2 * swish(z)"})
    d = net.layers[0].activation.definition
    assert sp.simplify(d - 2 * z / (1 + sp.exp(-z))) == 0


OPTIONS_TOML = """
[network]
name = "opts"
inputs = 2
relu_at_zero = {at_zero}
[[layer]]
units = 3
activation = "relu"
bias = false
[[layer]]
units = 1
activation = "relu"
[loss]
kind = "bce"
allow_any_output = true
"""


@pytest.mark.parametrize("at_zero", [0, 1])
def test_options_from_toml_equal_the_builder(at_zero):
    with pytest.warns(symbp.OutputRangeWarning, match=r"loss\.allow_any_output: loss 'bce' after a 'relu' output"):
        net = symbp.loads(OPTIONS_TOML.format(at_zero=at_zero), where="opts.toml")
    with pytest.warns(symbp.OutputRangeWarning, match=r"outputs may leave \(0, 1\)"):
        built = symbp.mlp([2, 3, 1], ["relu", "relu"], "bce", name="opts", bias=[False, True],
                          relu_at_zero=at_zero, allow_any_output=True)
    assert net == built and net.digest == built.digest
    assert [layer.bias for layer in net.layers] == [False, True]
    assert net.relu_at_zero == at_zero and net.allow_any_output
    assert net.param_shapes() == {"W1": (3, 2), "W2": (1, 3), "b2": (1,)}
    assert "no bias in layer 1" in str(net)


def test_options_at_their_defaults_leave_the_digest_alone():
    """Generated files carry the spec digest: networks that do not use an option keep theirs."""
    base = symbp.mlp([2, 3, 1], ["sigmoid", "sigmoid"], "bce", name="xor")
    same = symbp.mlp([2, 3, 1], ["sigmoid", "sigmoid"], "bce", name="xor", bias=[True, True],
                     relu_at_zero=0, allow_any_output=False)
    assert same == base and same.digest == base.digest
    assert set(base.canonical()) == {"name", "inputs", "layers", "loss", "reduction"}
    assert all("bias" not in layer for layer in base.canonical()["layers"])
    toml = XOR_TOML.replace('activation = "sigmoid"', 'activation = "sigmoid"\nbias = true')
    toml = toml.replace("inputs = 2", "inputs = 2\nrelu_at_zero = 0")
    assert symbp.loads(toml).digest == base.digest
    # the digest the committed kernels of examples/specs/xor.toml were generated from
    golden = (ROOT / "generated" / "xor" / "cpu_float64.py").read_text()
    assert symbp.load(ROOT / "examples" / "specs" / "xor.toml").digest in golden


def test_no_bias_anywhere_has_weights_only():
    net = symbp.mlp([4, 3, 2], ["tanh", "identity"], "mse", bias=False)
    assert net.param_shapes() == {"W1": (3, 4), "W2": (2, 3)}
    assert str(net).endswith("no bias")


def test_bce_after_relu_needs_the_opt_in_and_warns():
    with pytest.raises(symbp.SpecError, match="allow_any_output = true accepts it"):
        symbp.mlp([2, 1], ["relu"], "bce")
    with warnings.catch_warnings():
        warnings.simplefilter("error")      # a sigmoid output: the option lifts nothing, no warning
        symbp.mlp([2, 1], ["sigmoid"], "bce", allow_any_output=True)
    with pytest.warns(symbp.OutputRangeWarning) as record:
        symbp.mlp([2, 1], ["relu"], "bce", allow_any_output=True)
    assert len(record) == 1 and "loss is undefined" in str(record[0].message)

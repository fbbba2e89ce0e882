"""Spec files: TOML text -> validated Network (through network.build, like the builder).

Contract: ``load(path)`` reads the file with the standard library's ``tomllib`` and checks every
key: unknown or misspelled keys (named, with the closest valid key), wrong types, sizes <= 0 or
above the stated maxima (``network.MAX_WIDTH``, ``MAX_LAYERS``, ``MAX_PARAMETERS``), unknown
activations or losses, a loss that does not fit the output layer and unsafe names each raise
``SpecError`` naming the file, the key and what was expected. A graph spec ([graph] and
[[node]] tables) is recognised and refused with a pointer to ``symbp.load_graph`` /
``symbp graph`` (a ``SpecKindError``, its ``spec_kind`` "graph"). The file is UTF-8, with or without a
byte-order mark; TOML nested too deeply for the reader is a SpecError, not a RecursionError.
Expression strings under [activations] go to the safe parser; spec text is never evaluated.

Format::

    [network]            name = "xor", inputs = 2            (optional relu_at_zero = 0 | 1)
    [[layer]]            units = 3, activation = "sigmoid"   (leaky_relu also takes slope = 0.1;
                                                              optional bias = false: z = W a)
    [loss]               kind = "bce", reduction = "mean"    (mse | sse | bce | ce; mean | sum;
                                                              optional allow_any_output = true)
    [activations]        swish = "z * sigmoid(z)"            (optional, expressions in z)
"""
import difflib
import os
import tomllib

from ..errors import SpecError
from .functions import ACTIVATIONS
from .network import build
from .ops import check_str as _str
from .source import SpecKindError, is_graph_doc, is_mlp_doc, read_text, read_toml, unknown_key  # noqa: F401

TOP_KEYS = ("network", "layer", "loss", "activations")
NETWORK_KEYS = ("name", "inputs", "relu_at_zero")
LOSS_KEYS = ("kind", "reduction", "allow_any_output")


def _check_keys(table, allowed, where, prefix):
    for key in table:
        if key not in allowed:
            raise unknown_key(where, prefix, key, allowed)


def _table(doc, key, where, required=True):
    if key not in doc:
        if required:
            raise SpecError(where, key, f"missing table [{key}]")
        return {}
    if not isinstance(doc[key], dict):
        raise SpecError(where, key, f"expected a table [{key}], got {type(doc[key]).__name__}")
    return doc[key]


def loads(text, where="<string>"):
    """Parse spec text (TOML) into a Network; ``where`` names the source in errors."""
    doc = read_toml(text, where)
    if is_graph_doc(doc):
        raise SpecKindError(where, "graph", "this is a graph spec ([graph] and [[node]] tables), not "
                                            "an MLP spec: read it with symbp.load_graph")
    _check_keys(doc, TOP_KEYS, where, "")
    net = _table(doc, "network", where)
    _check_keys(net, NETWORK_KEYS, where, "network.")
    name = _str(net, "name", where, "network.")
    if "inputs" not in net:
        raise SpecError(where, "network.inputs", "missing key (expected the input width, an integer >= 1)")
    inputs = net["inputs"]

    define = _table(doc, "activations", where, required=False)
    for k, v in define.items():
        if not isinstance(v, str):
            raise SpecError(where, f"activations.{k}", f"expected an expression string in z, got {type(v).__name__}")

    layers_doc = doc.get("layer")
    if layers_doc is None:
        raise SpecError(where, "layer", "missing [[layer]] tables (at least one)")
    if not isinstance(layers_doc, list) or not all(isinstance(t, dict) for t in layers_doc):
        raise SpecError(where, "layer", "expected an array of tables [[layer]]")
    layers = []
    for idx, t in enumerate(layers_doc, start=1):
        prefix = f"layer[{idx}]."
        # unknown keys first: a misspelled `activaton` is named as such, not as a missing key
        named = t.get("activation")
        params = ACTIVATIONS[named].params if isinstance(named, str) and named in ACTIVATIONS else ()
        _check_keys(t, ("units", "activation", "bias") + tuple(p[0] for p in params), where, prefix)
        act_name = _str(t, "activation", where, prefix)
        if "units" not in t:
            raise SpecError(where, f"{prefix}units", "missing key (expected an integer >= 1)")
        act = {"name": act_name, **{p[0]: t[p[0]] for p in params if p[0] in t}} if params else act_name
        layers.append((t["units"], act, t.get("bias", True)))

    loss = _table(doc, "loss", where)
    _check_keys(loss, LOSS_KEYS, where, "loss.")
    kind = _str(loss, "kind", where, "loss.")
    reduction = _str(loss, "reduction", where, "loss.", default="mean")
    return build(name, inputs, layers, kind, reduction, define, where,
                 net.get("relu_at_zero", 0), loss.get("allow_any_output", False))


def load(path):
    """Read a TOML spec file into a validated Network."""
    return loads(*read_text(path))

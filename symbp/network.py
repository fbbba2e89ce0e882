"""The validated, immutable description of a network: what every later stage reads.

Contract: ``Network`` is frozen and already checked (sizes positive, activations and loss
known, the loss fits the output layer, the name safe for files and identifiers). It is built by
``mlp()`` here or by ``spec.load()`` from TOML; both go through ``build()`` so they give equal
objects for equal specs. ``Network.digest`` is a SHA-256 of the canonical description, the
spec hash written into generated files.

Sizes are bounded when the spec is built, before anything is derived or written: every width
(inputs, units) at most ``MAX_WIDTH``, at most ``MAX_LAYERS`` layers, and at most
``MAX_PARAMETERS`` weights and biases in all (a bigger network would fail later, after files were
written, with a MemoryError or an index overflow; the graph specs share these bounds).
"""
import hashlib
import numbers
import json
from dataclasses import dataclass

import sympy as sp

from . import naming
from .errors import SpecError, shown
from .functions import ACTIVATIONS, LOSSES, REDUCTIONS, Activation, Loss, user_activation

MAX_WIDTH = 65536            # units of a layer, width of an input
MAX_LAYERS = 1000            # dense layers of an MLP (nodes of a graph spec: graph.MAX_NODES)
MAX_PARAMETERS = 2 ** 31 - 1  # weights and biases in all: int32 indexing, 16 GB in float64


@dataclass(frozen=True)
class Layer:
    """A dense layer z = W a_prev + b followed by the activation a = f(z)."""

    units: int
    activation: Activation


@dataclass(frozen=True)
class Network:
    name: str
    inputs: int
    layers: tuple
    loss: Loss
    reduction: str = "mean"

    @property
    def sizes(self):
        return (self.inputs,) + tuple(l.units for l in self.layers)

    @property
    def depth(self):
        return len(self.layers)

    def param_shapes(self):
        """{"W1": (n1, n0), "b1": (n1,), ...} in layer order."""
        shapes = {}
        for l, (n_in, n_out) in enumerate(zip(self.sizes, self.sizes[1:]), start=1):
            shapes[naming.param_key("W", l)] = (n_out, n_in)
            shapes[naming.param_key("b", l)] = (n_out,)
        return shapes

    def canonical(self):
        """A JSON-able description; equal networks give equal descriptions."""
        return {
            "name": self.name,
            "inputs": self.inputs,
            "layers": [
                {"units": l.units, "activation": l.activation.name,
                 "params": [[k, str(v)] for k, v in l.activation.values],
                 "definition": sp.srepr(l.activation.definition) if l.activation.user else None}
                for l in self.layers
            ],
            "loss": self.loss.name,
            "reduction": self.reduction,
        }

    @property
    def digest(self):
        text = json.dumps(self.canonical(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    def __str__(self):
        acts = ", ".join(l.activation.name for l in self.layers)
        return (f"{self.name}: {'-'.join(map(str, self.sizes))} [{acts}] "
                f"loss={self.loss.name} ({self.reduction})")


def _int(value, where, key, minimum=1, maximum=MAX_WIDTH):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise SpecError(where, key, f"expected an integer >= {minimum}, got {shown(value)}")
    if value < minimum:
        raise SpecError(where, key, f"expected an integer >= {minimum}, got {shown(value)}")
    if value > maximum:
        raise SpecError(where, key, f"expected an integer <= {maximum} (the largest width symbp "
                                    f"accepts), got {shown(value)}")
    return int(value)


def check_parameter_count(count, where, key):
    """Refuse a network with more than MAX_PARAMETERS weights and biases in all."""
    if count > MAX_PARAMETERS:
        raise SpecError(where, key, f"{count} weights and biases in all, more than the "
                                    f"{MAX_PARAMETERS} symbp accepts")


def resolve_activation(spec, where, key, defined):
    """An activation from a name, or from {"name": ..., <param>: value} for parameters."""
    params = {}
    if isinstance(spec, dict):
        spec = dict(spec)
        name = spec.pop("name", None)
        params = spec
    else:
        name = spec
    if not isinstance(name, str):
        raise SpecError(where, key, f"expected an activation name, got {shown(name)}")
    if name in defined:
        act = defined[name]
    elif name in ACTIVATIONS:
        act = ACTIVATIONS[name]
    else:
        known = ", ".join(list(ACTIVATIONS) + list(defined))
        raise SpecError(where, key, f"unknown activation {shown(name)} (expected one of: {known})")
    return act.instantiate(where, key.rsplit(".", 1)[0] + ".", **params)


def build(name, inputs, layers, loss, reduction="mean", define=None, where=""):
    """Validate and build a Network.

    ``layers`` is a sequence of (units, activation) where activation is a name or a dict
    ``{"name": "leaky_relu", "slope": 0.1}``; ``define`` maps new activation names to
    expression strings in z.
    """
    if not naming.is_safe_name(name):
        raise SpecError(where, "network.name",
                        f"expected a name of letters, digits and _ starting with a letter "
                        f"(at most 64 characters, not a Python keyword), got {shown(name)}")
    inputs = _int(inputs, where, "network.inputs")
    defined = {}
    for dname, text in (define or {}).items():
        defined[dname] = user_activation(dname, text, where, known=defined)
    if not layers:
        raise SpecError(where, "layer", "expected at least one layer")
    if len(layers) > MAX_LAYERS:
        raise SpecError(where, "layer", f"{len(layers)} layers, more than the {MAX_LAYERS} symbp accepts")
    built = []
    for idx, (units, act) in enumerate(layers, start=1):
        key = f"layer[{idx}]"
        units = _int(units, where, f"{key}.units")
        act = resolve_activation(act, where, f"{key}.activation", defined)
        if act.name == "softmax" and units < 2:
            raise SpecError(where, f"{key}.units", "softmax needs at least 2 units")
        built.append(Layer(units, act))
    sizes = [inputs] + [l.units for l in built]
    check_parameter_count(sum(o * (i + 1) for i, o in zip(sizes, sizes[1:])), where, "layer")
    if not isinstance(loss, str) or loss not in LOSSES:
        raise SpecError(where, "loss.kind", f"unknown loss {shown(loss)} (expected one of: {', '.join(LOSSES)})")
    loss_obj = LOSSES[loss]
    out = built[-1].activation.name
    if loss_obj.outputs and out not in loss_obj.outputs:
        need = " or ".join(loss_obj.outputs)
        raise SpecError(where, "loss.kind",
                        f"loss {loss!r} needs a {need} output layer, but layer[{len(built)}] is {out!r}")
    if out == "softmax" and loss == "bce":
        raise SpecError(where, "loss.kind", "bce does not fit a softmax output: use ce")
    if reduction not in REDUCTIONS:
        raise SpecError(where, "loss.reduction", f"expected one of {', '.join(REDUCTIONS)}, got {shown(reduction)}")
    return Network(name, inputs, tuple(built), loss_obj, reduction)


def mlp(sizes, activations, loss, reduction="mean", name="mlp", define=None):
    """Build a multilayer perceptron: ``mlp([2, 3, 1], ["sigmoid", "sigmoid"], "bce")``.

    ``sizes[0]`` is the input width, each further entry a dense layer's width; one activation
    per dense layer. ``define`` adds elementwise activations from expression strings in z.
    """
    where = "mlp()"
    if isinstance(sizes, (str, bytes)) or not hasattr(sizes, "__len__") or len(sizes) < 2:
        raise SpecError(where, "sizes", f"expected a list of at least two widths, got {shown(sizes)}")
    if isinstance(activations, str) or not hasattr(activations, "__len__"):
        raise SpecError(where, "activations", f"expected a list of {len(sizes) - 1} activation names, got {shown(activations)}")
    if len(activations) != len(sizes) - 1:
        raise SpecError(where, "activations",
                        f"expected {len(sizes) - 1} activations (one per layer after the input), got {len(activations)}")
    if define is not None and not isinstance(define, dict):
        raise SpecError(where, "define", f"expected a dict of name -> expression in z, got {shown(define)}")
    if len(sizes) > MAX_LAYERS + 1:
        raise SpecError(where, "sizes", f"{len(sizes) - 1} layers, more than the {MAX_LAYERS} symbp accepts")
    sizes = [_int(s, where, f"sizes[{i}]") for i, s in enumerate(sizes)]
    return build(name, sizes[0], list(zip(sizes[1:], activations)), loss, reduction, define, where)

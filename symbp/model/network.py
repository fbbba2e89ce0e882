"""The validated, immutable description of a network: what every later stage reads.

Contract: ``Network`` is frozen and already checked (sizes positive, activations and loss
known, the loss fits the output layer, the name safe for files and identifiers). It is built by
``mlp()`` here or by ``spec.load()`` from TOML; both go through ``build()`` so they give equal
objects for equal specs. ``Network.digest`` is a SHA-256 of the canonical description, the
spec hash written into generated files.

Options the course texts need (each off by default, and then absent from ``canonical`` so that
existing digests stay as they were):
- ``Layer.bias = False``: z = W a without b (the slides with f = W^T a, the XOR notebook); the
  layer has no ``b<l>`` parameter, no dL/db equation, no bias line in any kernel or handout.
- ``Network.relu_at_zero`` (0 or 1): the derivative taken at a kink, ReLU'(0) = 0 (PyTorch) or
  1 (the CS231n-style slides, the book chapter "Backpropagation"); leaky ReLU'(0) is then the
  slope or 1. One value per network, not per activation: it is a convention of the whole
  derivation (stated once in the handout), it reaches kinks of user-defined activations too,
  and the oracle and the kernels must take the same one (see ``simplify.kink``).
- ``Network.allow_any_output``: the loss's output-activation requirement (bce wants a sigmoid,
  ce a softmax) is lifted, for the Understanding Deep Learning toy example (ReLU then binary
  cross-entropy). The loss is then computed from a, not from the logits, and is undefined where
  an output leaves the loss's domain (bce: a <= 0 or a >= 1, the log of a non-positive number):
  NaN or inf in the kernels (as in NumPy and PyTorch; at a = 0 exactly, a ReLU output that is
  0, log(0) = -inf); an ``OutputRangeWarning`` says so when the network is built.

``Network.graph`` is the same network as a chain Graph of the op registry's nodes (the one IR
every derivation reads); the attributes above stay for the renderers and the MLP emitter.

Sizes are bounded when the spec is built, before anything is derived or written: every width
(inputs, units) at most ``MAX_WIDTH``, at most ``MAX_LAYERS`` layers, and at most
``MAX_PARAMETERS`` weights and biases in all (a bigger network would fail later, after files were
written, with a MemoryError or an index overflow; the graph specs share these bounds).
"""
import hashlib
import numbers
import json
import warnings
from dataclasses import dataclass
from functools import cached_property

import sympy as sp

from .. import naming
from ..errors import SpecError, shown
from .functions import LOSSES, REDUCTIONS, Activation, Loss, user_activation
from .graph import chain_layers, from_network, options
from .limits import (MAX_LAYERS, MAX_PARAMETERS, MAX_WIDTH, _int, check_parameter_count,  # noqa: F401
                     resolve_activation)

@dataclass(frozen=True)
class Layer:
    """A dense layer z = W a_prev + b (z = W a_prev without bias) then the activation a = f(z)."""

    units: int
    activation: Activation
    bias: bool = True


class OutputRangeWarning(UserWarning):
    """A loss was allowed after an output activation whose values can leave its domain."""


@dataclass(frozen=True)
class Network:
    name: str
    inputs: int
    layers: tuple
    loss: Loss
    reduction: str = "mean"
    relu_at_zero: int = 0            # the derivative at a kink: from the left (0) or right (1)
    allow_any_output: bool = False   # the loss's output-activation requirement lifted

    @property
    def sizes(self):
        return (self.inputs,) + tuple(l.units for l in self.layers)

    @property
    def depth(self):
        return len(self.layers)

    @cached_property
    def graph(self):
        """The network as the chain Graph of the one IR (``graph.from_network``): input x, dense
        z<l> (W<l>, b<l>), activation a<l>, ..., input y, loss; x marked grad, since the MLP's
        derivation and kernels give dL/dX (``input_grad``). ``symbp.derive`` derives it."""
        return from_network(self, input_grad=True)

    def param_shapes(self):
        """{"W1": (n1, n0), "b1": (n1,), ...} in layer order (no b<l> for a layer without bias)."""
        shapes = {}
        for l, (n_in, n_out) in enumerate(zip(self.sizes, self.sizes[1:]), start=1):
            shapes[naming.param_key("W", l)] = (n_out, n_in)
            if self.layers[l - 1].bias:
                shapes[naming.param_key("b", l)] = (n_out,)
        return shapes

    def canonical(self):
        """A JSON-able description; equal networks give equal descriptions."""
        out = {
            "name": self.name,
            "inputs": self.inputs,
            "layers": [
                {"units": l.units, "activation": l.activation.name,
                 "params": [[k, str(v)] for k, v in l.activation.values],
                 "definition": sp.srepr(l.activation.definition) if l.activation.user else None,
                 **({} if l.bias else {"bias": False})}
                for l in self.layers
            ],
            "loss": self.loss.name,
            "reduction": self.reduction,
        }
        out.update(options(self))
        return out

    @property
    def digest(self):
        text = json.dumps(self.canonical(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    def __str__(self):
        acts = ", ".join(l.activation.name for l in self.layers)
        nobias = [str(l) for l, layer in enumerate(self.layers, start=1) if not layer.bias]
        opts = ""
        if nobias:
            opts += " no bias" + ("" if len(nobias) == self.depth else f" in layer {','.join(nobias)}")
        if self.relu_at_zero:
            opts += f" relu'(0)={self.relu_at_zero}"
        return (f"{self.name}: {'-'.join(map(str, self.sizes))} [{acts}] "
                f"loss={self.loss.name} ({self.reduction}){opts}")


def _flag(value, where, key):
    if not isinstance(value, bool):
        raise SpecError(where, key, f"expected true or false, got {value!r}")
    return value


def build(name, inputs, layers, loss, reduction="mean", define=None, where="",
          relu_at_zero=0, allow_any_output=False):
    """Validate and build a Network.

    ``layers`` is a sequence of (units, activation) or (units, activation, bias) where
    activation is a name, a dict ``{"name": "leaky_relu", "slope": 0.1}`` or an ``Activation``,
    and bias a bool (default true); ``define`` maps new activation names to expression strings in z;
    ``relu_at_zero`` (0 or 1) and ``allow_any_output`` as in the module docstring.
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
    if isinstance(relu_at_zero, bool) or relu_at_zero not in (0, 1):
        raise SpecError(where, "network.relu_at_zero",
                        f"expected 0 or 1 (ReLU'(0): 0 as PyTorch, 1 as the CS231n-style slides), "
                        f"got {relu_at_zero!r}")
    allow_any_output = _flag(allow_any_output, where, "loss.allow_any_output")
    if len(layers) > MAX_LAYERS:
        raise SpecError(where, "layer", f"{len(layers)} layers, more than the {MAX_LAYERS} symbp accepts")
    built = []
    for idx, entry in enumerate(layers, start=1):
        units, act = entry[0], entry[1]
        key = f"layer[{idx}]"
        bias = _flag(entry[2], where, f"{key}.bias") if len(entry) > 2 else True
        units = _int(units, where, f"{key}.units")
        act = resolve_activation(act, where, f"{key}.activation", defined)
        if act.name == "softmax" and units < 2:
            raise SpecError(where, f"{key}.units", "softmax needs at least 2 units")
        built.append(Layer(units, act, bias))
    sizes = [inputs] + [l.units for l in built]
    check_parameter_count(sum(o * (i + l.bias) for i, o, l in zip(sizes, sizes[1:], built)), where, "layer")
    if not isinstance(loss, str) or loss not in LOSSES:
        raise SpecError(where, "loss.kind", f"unknown loss {shown(loss)} (expected one of: {', '.join(LOSSES)})")
    loss_obj = LOSSES[loss]
    out = built[-1].activation.name
    if out == "softmax" and loss == "bce":
        raise SpecError(where, "loss.kind", "bce does not fit a softmax output: use ce")
    if loss_obj.outputs and out not in loss_obj.outputs:
        need = " or ".join(loss_obj.outputs)
        if not allow_any_output:
            raise SpecError(where, "loss.kind",
                            f"loss {loss!r} needs a {need} output layer, but layer[{len(built)}] is {out!r} "
                            f"(allow_any_output = true accepts it)")
        # asked for explicitly (the UDL toy example: ReLU then bce): allowed, with a warning
        warnings.warn(f"{where}: loss.allow_any_output: loss {loss!r} after a {out!r} output: "
                      f"outputs may leave (0, 1), where the loss is undefined (the log of a non-positive number)",
                      OutputRangeWarning, stacklevel=3)
    if reduction not in REDUCTIONS:
        raise SpecError(where, "loss.reduction", f"expected one of {', '.join(REDUCTIONS)}, got {shown(reduction)}")
    return Network(name, inputs, tuple(built), loss_obj, reduction, relu_at_zero, allow_any_output)


def mlp(sizes, activations, loss, reduction="mean", name="mlp", define=None, bias=True,
        relu_at_zero=0, allow_any_output=False):
    """Build a multilayer perceptron: ``mlp([2, 3, 1], ["sigmoid", "sigmoid"], "bce")``.

    ``sizes[0]`` is the input width, each further entry a dense layer's width; one activation
    per dense layer. ``define`` adds elementwise activations from expression strings in z.
    ``bias``: True or False for every layer, or a list of one bool per layer (False: z = W a).
    ``relu_at_zero``: ReLU'(0), 0 (default, as PyTorch) or 1. ``allow_any_output``: accept a
    loss after any output activation (bce after ReLU), with a warning (module docstring).
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
    # the option checks of build(), under this function's argument names
    if isinstance(relu_at_zero, bool) or relu_at_zero not in (0, 1):
        raise SpecError(where, "relu_at_zero", f"expected 0 or 1, got {relu_at_zero!r}")
    _flag(allow_any_output, where, "allow_any_output")
    if isinstance(bias, (list, tuple)):
        if len(bias) != len(sizes) - 1:
            raise SpecError(where, "bias", f"expected true/false or a list of {len(sizes) - 1} of them "
                                           f"(one per layer after the input), got {len(bias)}")
        biases = list(bias)
    else:
        biases = [_flag(bias, where, "bias")] * (len(sizes) - 1)
    for i, v in enumerate(biases):
        _flag(v, where, f"bias[{i}]")
    return build(name, sizes[0], list(zip(sizes[1:], activations, biases)), loss, reduction, define, where,
                 relu_at_zero, allow_any_output)


def chain_network(graph, served_by="this target", instead="use target='cpu'"):
    """The MLP ``Network`` equal to a chain graph (``chain_layers``): the graph's name, input
    width, dense widths, activations and biases, loss, reduction, ``relu_at_zero`` and
    ``allow_any_output`` (through ``network.build``, the MLP's one validated route). Its
    parameters are W1, b1, ... in layer order: ``chain_layers`` gives the graph's names of
    each layer's weight and bias. A graph that is no chain: the ``SpecError`` of ``chain_layers``."""
    pairs = chain_layers(graph, served_by, instead)
    loss = graph.loss_node
    with warnings.catch_warnings():
        # a loss after an activation it is not paired with was accepted when the graph was
        # built (allow_any_output), silently: the same network built again says nothing new
        warnings.simplefilter("ignore", OutputRangeWarning)
        return build(graph.name, graph.inputs[0].width,
                     [(d.width, a.activation, d.bias is not None) for d, a in pairs],
                     loss.loss.name, loss.reduction, where=f"graph {graph.name!r}",
                     relu_at_zero=graph.relu_at_zero, allow_any_output=graph.allow_any_output)

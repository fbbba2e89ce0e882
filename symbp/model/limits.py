"""Size limits and the checks the two model builders share (the MLP's ``network.build`` and the
graph's ``graph.build_graph``): a width, the parameter count, an activation named in a spec.

Sizes are bounded when a spec is built, before anything is derived or written: every width at
most ``MAX_WIDTH``, at most ``MAX_LAYERS`` dense layers of an MLP (``graph.MAX_NODES`` nodes of a
graph spec) and at most ``MAX_PARAMETERS`` weights and biases in all (a bigger network would
fail later, after files were written, with a MemoryError or an index overflow).
"""
import numbers

from ..errors import SpecError, shown
from .functions import ACTIVATIONS, Activation

MAX_WIDTH = 65536            # units of a layer, width of an input
MAX_LAYERS = 1000            # dense layers of an MLP (nodes of a graph spec: graph.MAX_NODES)
MAX_PARAMETERS = 2 ** 31 - 1  # weights and biases in all: int32 indexing, 16 GB in float64


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
    """An activation from a name, or from {"name": ..., <param>: value} for parameters, or an
    ``Activation`` already built (a graph's activation node, see ``graph.chain_network``),
    taken as it is: its parameters are fixed and a user-defined one carries its definition."""
    if isinstance(spec, Activation):
        return spec
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

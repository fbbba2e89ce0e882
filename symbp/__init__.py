"""symbp: derive backpropagation symbolically with SymPy, render it, and generate kernels.

    import symbp
    net = symbp.mlp([2, 3, 1], ["sigmoid", "sigmoid"], "bce", name="xor")  # or symbp.load("xor.toml")
    d = symbp.derive(net)                       # the Derivation (SymPy did every derivative)
    k = symbp.generate(d, target="cpu", dtype="float64")   # generated/xor/cpu_float64.py
    params = k.init_params(seed=0)
    loss, grads = k.loss_and_grad(params, X, Y)
    symbp.gradcheck(k, params, X, Y)
"""
from ._version import __version__

from .derivation.equations import Derivation
from .derivation.chain import derive as _derive_mlp
from .errors import DerivationError, ExpressionError, InputError, SpecError, SymbpError
from .model.network import Network, OutputRangeWarning, mlp
from .model.spec import load, loads


from .model.circuit import circuit  # noqa: E402  (the function; the module stays importable)
from .model.graph import Graph, from_network, graph, load_graph, loads_graph  # noqa: E402
from .derivation.graph import GraphDerivation, derive_graph  # noqa: E402
from .render.exam import make_exam  # noqa: E402
from .render.worked import worked_example  # noqa: E402
from .model.optim import SGD, Adam, AdamW  # noqa: E402
from .training.loop import train  # noqa: E402  (the function; the module stays importable)


def derive(spec):
    """Derive the backpropagation of a Network (MLP) or a Graph (DAG) with SymPy."""
    if isinstance(spec, Graph):
        return derive_graph(spec)
    return _derive_mlp(spec)


def generate(derivation, target="cpu", dtype="float64", out_dir=None, jit=True):
    """Emit, write and load the kernel of a Derivation; returns a Kernel (see symbp.codegen)."""
    from .codegen import generate as _generate
    return _generate(derivation, target=target, dtype=dtype, out_dir=out_dir, jit=jit)


def gradcheck(kernel, params, X, Y, **kw):
    """Central finite differences against the kernel's gradients (see symbp.verify)."""
    from .codegen.graph_kernel import GraphKernel
    if isinstance(kernel, GraphKernel):
        from .verify.graph import graph_gradcheck
        return graph_gradcheck(kernel, params, X, Y, **kw)
    from .verify.chain import gradcheck as _gradcheck
    return _gradcheck(kernel, params, X, Y, **kw)


__all__ = ["Adam", "AdamW", "SGD", "train", "circuit", "Derivation", "Graph", "GraphDerivation", "derive_graph", "from_network",
           "graph", "load_graph", "loads_graph", "make_exam", "worked_example", "DerivationError", "ExpressionError", "InputError", "Network", "SpecError",
           "SymbpError", "derive", "generate", "gradcheck", "load", "loads", "mlp"]

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
from .derivation.circuit import Circuit, circuit  # noqa: E402  (the function; the module stays importable)
from .derivation.wx_norm import WxNorm, wx_norm  # noqa: E402
from .model.graph import Graph, from_network, graph, load_graph, loads_graph  # noqa: E402
from .derivation.graph import GraphDerivation, derive_graph  # noqa: E402
from .render.exam import make_exam  # noqa: E402
from .render.worked import worked_example  # noqa: E402
from .model.optim import SGD, Adam, AdamW  # noqa: E402
from .training.loop import one_hot, train  # noqa: E402  (the function; the module stays importable)
from .render import circuit as _circuit_views, graph_latex as _graph_latex, latex as _latex, wx_norm as _wx_norm_views  # noqa: E402
from .render.pdf import pdflatex  # noqa: E402


# The public face composes the stages. The derivation stage hands off plain objects and never
# imports the render stage (tests/test_layout.py); here they learn to show themselves, so that
# d.latex(), c.table() and the Jupyter display work on whatever symbp hands back.
def _derivation_latex(self, notation="cs231n", document=False, stages=False):
    """LaTeX in a notation; ``stages=True`` adds every simplification stage, labelled with its
    pass, to the document (the handout shows the textbook's steps only)."""
    return _latex.render(self, notation=notation, document=document, stages=stages)


def _graph_derivation_latex(self, notation="cs231n", document=False):
    """LaTeX of the derivation (``symbp.render.graph_latex``): one align* of every equation, or
    with ``document=True`` the handout with the graph's picture and the steps explained."""
    return _graph_latex.render(self, notation=notation, document=document)


Derivation.latex = _derivation_latex
Derivation._repr_latex_ = lambda self: self.latex()
GraphDerivation.latex = _graph_derivation_latex
GraphDerivation._repr_latex_ = lambda self: "$$" + self.latex().replace("align*", "aligned") + "$$"
for _name in ("table", "latex", "tikz", "document", "write"):
    setattr(Circuit, _name, getattr(_circuit_views, _name))
Circuit.__str__ = _circuit_views.table
del _name
WxNorm.text = _wx_norm_views.text
WxNorm.document = _wx_norm_views.document


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
    """Central finite differences against the gradients of a kernel of either kind (see
    symbp.verify)."""
    from .verify.fd import gradcheck as _gradcheck
    return _gradcheck(kernel, params, X, Y, **kw)


__all__ = ["Adam", "AdamW", "SGD", "train", "one_hot", "circuit", "Circuit", "Derivation", "Graph", "GraphDerivation",
           "derive_graph", "from_network", "graph", "load_graph", "loads_graph", "make_exam", "worked_example",
           "wx_norm", "WxNorm", "pdflatex", "DerivationError", "ExpressionError", "InputError", "Network",
           "OutputRangeWarning", "SpecError", "SymbpError", "derive", "generate", "gradcheck", "load", "loads", "mlp"]

"""The CUDA target for a graph: a chain graph is an MLP, served by the MLP's CUDA generator.

Contract: ``generate_graph_cuda(graph_derivation, dtype, out_dir, jit, ...)`` first checks that
the graph is a chain (``model.graph.chain_network``: input -> dense -> activation -> ... ->
loss, nothing shared, branched or transposed) and raises the one-line ``SpecError`` naming the
first node that breaks it otherwise, before any option or device check and before anything is
written. A chain graph becomes its MLP ``Network`` (same widths, activations, biases, loss,
reduction, ``relu_at_zero``, ``allow_any_output``; the graph's name), derived by
``symbp.derivation.chain.derive`` (the chain view of the one graph derivation) and emitted by
``codegen.cuda`` into ``<out_dir>/<graph>/cuda_<dtype>.py``.

The kernel (``GraphCudaKernel``) is a ``CudaKernel`` that speaks the graph's names, a thin
adapter and no copy: parameters and gradients are keyed by the graph's parameter names (the
module's W1, b1, ... renamed, one to one, in layer order), the data are the graph's one input
(one array, or a dict {input name: array}) and the target; messages name ``inputs['<x>']`` and
``target``. ``derivation`` is the GraphDerivation (``chain_derivation`` the MLP's), ``graph``
the Graph, ``network`` the chain's Network. ``input_grads`` / ``loss_and_input_grads`` give
dL/d(input) when the input is marked grad, as ``GraphKernel`` does; every other call (forward,
loss_and_grad, loss, sgd_step, bind, device arrays, chunks, torch/jax functions) is the
CudaKernel's. ``values`` (every node's value) is not served: the CUDA module keeps no per-node
buffers in the graph's names.
"""
from .. import naming
from ..errors import InputError
from ..model.graph import chain_layers
from ..model.network import chain_network
from .cuda import DEFAULT_GEOMETRY, FUSE_WIDTH
from .cuda_kernel import CudaKernel, load_cuda
from .kernel import _ABSENT, check_keys

SERVED_BY = "the CUDA target"
INSTEAD = "use target='cpu'"


def chain_parameter_names(graph):
    """{graph parameter name: MLP parameter name (W1, b1, ...)} of a chain graph, in layer
    order (``chain_layers`` refuses a graph that is no chain)."""
    names = {}
    for l, (dense, _) in enumerate(chain_layers(graph, SERVED_BY, INSTEAD), start=1):
        names[dense.weight] = naming.param_key("W", l)
        if dense.bias is not None:
            names[dense.bias] = naming.param_key("b", l)
    return names


class GraphCudaKernel(CudaKernel):
    """The CUDA kernel of a chain graph, in the graph's names (see the module docstring)."""

    _yname = "target"

    def __init__(self, graph_derivation, derivation, module, path, dtype, jit, names, max_chunk=None):
        # the module's parameters (W1, b1, ...) renamed to the graph's, one to one
        super().__init__(derivation, module, path, dtype, jit, max_chunk, {mlp: g for g, mlp in names.items()})
        # .derivation is the graph's, as for a GraphKernel: generate(k.derivation, k.target)
        # gives a twin of this kernel (verify's float64 twin); the MLP's is .chain_derivation
        self.chain_derivation, self.derivation = derivation, graph_derivation
        self.graph = graph_derivation.graph
        x = self.graph.inputs[0]
        self._input, self._input_grad = x.name, x.grad
        self.inputs = {x.name: x.width}
        self.target_name = self.graph.target
        self.target_width = self.graph.node(self.graph.target).width
        self._labels = (f"inputs[{x.name!r}]",)

    def __repr__(self):
        return (f"<GraphCudaKernel {self.graph.name} {self.dtype} {self.strategy} "
                f"max_chunk={self.max_chunk} at {self.path}>")

    def _check(self, params, inputs, target=_ABSENT):
        if isinstance(inputs, dict):
            check_keys("inputs", inputs, (self._input,))
            inputs = inputs[self._input]
        return super()._check(params, inputs, target)

    def input_grads(self, params, inputs, target):
        """{input: dL/dinput} for the input marked grad, shape (B, width)."""
        if not self._input_grad:
            raise InputError(f"input_grads: no input of graph {self.graph.name!r} is marked grad = true")
        return {self._input: self.input_grad(params, inputs, target)}

    def loss_and_input_grads(self, params, inputs, target):
        """(loss, {param: grad}, {input: grad}) from one launch sequence."""
        loss, grads, gx = self.loss_and_grads(params, inputs, target)
        return loss, grads, ({self._input: gx} if self._input_grad else {})


def generate_graph_cuda(graph_derivation, dtype="float64", out_dir=None, jit=True, *, fuse_width=FUSE_WIDTH,
                        geometry=DEFAULT_GEOMETRY, max_chunk=None):
    """Emit, write and import the CUDA kernel of a chain graph's derivation; a GraphCudaKernel.
    A graph that is no chain: one ``SpecError`` line, nothing written."""
    from ..derivation.chain import derive
    graph = graph_derivation.graph
    network = chain_network(graph, SERVED_BY, INSTEAD)
    names = chain_parameter_names(graph)
    derivation = derive(network)
    module, path = load_cuda(derivation, dtype, out_dir, jit, fuse_width, geometry)
    return GraphCudaKernel(graph_derivation, derivation, module, path, dtype, jit, names, max_chunk=max_chunk)

"""GraphKernel: the Python face of a generated graph module (defined in symbp.codegen.kernel).

Contract: one kernel class serves MLP and graph modules (``kernel.BaseKernel``: argument checks,
buffers per thread, packed calls, ``bind``, ``init_params``, interop); ``GraphKernel`` only names
the data: ``inputs`` is a dict {input name: (B, width)} of the graph's input nodes (the loss's
target excluded), or one array when the graph has exactly one such input; ``target`` is (B,
target width). Parameters are a dict keyed like ``graph.param_shapes()`` in the kernel's dtype;
gradients come back keyed the same way. A mistake in an argument is one ``InputError`` line
naming it, raised before compiled code runs. This module is kept so that
``symbp.codegen.graph_kernel.GraphKernel`` stays importable.
"""
from .kernel import GraphKernel

__all__ = ["GraphKernel"]

"""Code generation: Derivation -> source (emit) -> file (load.write) -> module -> Kernel.

``generate(derivation, target, dtype, out_dir, jit)`` writes
``<out_dir>/<network>/<target>_<dtype>.py`` (target "cpu" here, "cuda" in codegen.cuda; a
GraphDerivation goes to codegen.graph_emit for "cpu" and to codegen.graph_cuda for "cuda", which
serves chain graphs and refuses any other with one line naming the node) (out_dir defaults to
$SYMBP_GENERATED or ./generated) and returns a Kernel. Nothing is written unless the source was
emitted whole.
"""
from .. import naming
from ..errors import SymbpError
from .kernel import Kernel
from .load import default_out_dir, import_module, kernel_path, write  # noqa: F401  (public here)

TARGETS = ("cpu", "cuda")
DTYPES = ("float64", "float32")


def generate(derivation, target="cpu", dtype="float64", out_dir=None, jit=True):
    """Emit the kernel of ``derivation`` for ``target`` in ``dtype``, write it, import it."""
    from ..derivation.graph import GraphDerivation
    if target not in TARGETS:
        raise SymbpError(f"target: expected one of {', '.join(TARGETS)}, got {target!r}")
    if isinstance(derivation, GraphDerivation):
        if target == "cuda":
            # a chain graph through its MLP's CUDA generator; any other graph is refused
            # (one line naming the node) before anything is written
            from .graph_cuda import generate_graph_cuda
            return generate_graph_cuda(derivation, dtype, out_dir=out_dir, jit=jit)
        from .graph_emit import generate_graph
        return generate_graph(derivation, target=target, dtype=dtype, out_dir=out_dir, jit=jit)
    if dtype not in DTYPES:
        raise SymbpError(f"dtype: expected one of {', '.join(DTYPES)}, got {dtype!r}")
    if target == "cuda":
        from .cuda_kernel import generate_cuda
        return generate_cuda(derivation, dtype, out_dir=out_dir, jit=jit)
    # the CPU module of an MLP comes from the one graph generator, of its chain graph
    from .graph_emit import emit_mlp
    net = derivation.network
    source = emit_mlp(derivation, target, dtype)
    path = kernel_path(net, target, dtype, out_dir)
    write(path, source)
    module = import_module(path, naming.import_name(net.name, target, dtype, net.digest), jit=jit, digest=net.digest)
    return Kernel(derivation, module, path, target, dtype, jit)

"""Code generation: Derivation -> source (emit) -> file (load.write) -> module -> Kernel.

``generate(derivation, target, dtype, out_dir, jit)`` writes
``<out_dir>/<network>/<target>_<dtype>.py`` (target "cpu" here, "cuda" in codegen.cuda; a
GraphDerivation goes to codegen.graph_emit for "cpu" and to codegen.graph_cuda for "cuda", which
serves chain graphs and refuses any other with one line naming the node) (out_dir defaults to
$SYMBP_GENERATED or ./generated) and returns a Kernel. Nothing is written unless the source was
emitted whole.
"""
import os
from pathlib import Path

from .. import naming
from ..errors import SymbpError
from .emit import emit
from .kernel import Kernel
from .load import import_module, write

TARGETS = ("cpu", "cuda")
DTYPES = ("float64", "float32")


def default_out_dir():
    return Path(os.environ.get("SYMBP_GENERATED", "generated"))


def kernel_path(network, target, dtype, out_dir=None):
    base = Path(out_dir) if out_dir is not None else default_out_dir()
    return base / network.name / f"{naming.module_name(network.name, target, dtype)}.py"


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
        from .cuda import generate_cuda
        return generate_cuda(derivation, dtype, out_dir=out_dir, jit=jit)
    net = derivation.network
    source = emit(derivation, target, dtype)
    path = kernel_path(net, target, dtype, out_dir)
    write(path, source)
    module = import_module(path, naming.import_name(net.name, target, dtype, net.digest), jit=jit, digest=net.digest)
    return Kernel(derivation, module, path, target, dtype, jit)

"""symbp: derive backpropagation symbolically with SymPy, render it, and generate kernels.

    import symbp
    net = symbp.mlp([2, 3, 1], ["sigmoid", "sigmoid"], "bce", name="xor")  # or symbp.load("xor.toml")
    d = symbp.derive(net)                       # the Derivation (SymPy did every derivative)
    k = symbp.generate(d, target="cpu", dtype="float64")   # generated/xor/cpu_float64.py
    params = k.init_params(seed=0)
    loss, grads = k.loss_and_grad(params, X, Y)
    symbp.gradcheck(k, params, X, Y)
"""
__version__ = "0.1.0"

from .derivation import Derivation
from .derive import derive
from .errors import DerivationError, ExpressionError, InputError, SpecError, SymbpError
from .network import Network, mlp
from .spec import load, loads


from .circuit import circuit  # noqa: E402  (the function; the module stays importable)


def generate(derivation, target="cpu", dtype="float64", out_dir=None, jit=True):
    """Emit, write and load the kernel of a Derivation; returns a Kernel (see symbp.codegen)."""
    from .codegen import generate as _generate
    return _generate(derivation, target=target, dtype=dtype, out_dir=out_dir, jit=jit)


def gradcheck(kernel, params, X, Y, **kw):
    """Central finite differences against the kernel's gradients (see symbp.verify)."""
    from .verify import gradcheck as _gradcheck
    return _gradcheck(kernel, params, X, Y, **kw)


__all__ = ["circuit", "Derivation", "DerivationError", "ExpressionError", "InputError", "Network", "SpecError",
           "SymbpError", "derive", "generate", "gradcheck", "load", "loads", "mlp"]

"""Generated kernels inside PyTorch and JAX (symbp.codegen.interop): the torch.autograd.Function
passes torch.autograd.gradcheck and the custom_vjp function passes jax.test_util.check_grads
(parameters and X), both agree with the kernel's own loss and gradients, CPU tensors reach the
kernel without a copy, a PyTorch loop with torch.optim trains XOR, and every mistake (a wrong
dtype, a Y that requires grad, float64 without jax_enable_x64, a library not installed) is one
line. Tests of a library skip cleanly when it is absent. Plain-Python kernels (jit=False) keep
the many small calls of the gradient checks fast."""
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

import symbp
from symbp import InputError, SymbpError
from conftest import random_batch

ROOT = Path(__file__).resolve().parent.parent

# name -> (sizes, activations, loss[, options]): sigmoid + bce, softmax + ce, a layer without bias
NETWORKS = {
    "sigmoid_bce": ([2, 3, 1], ["sigmoid", "sigmoid"], "bce"),
    "tanh_softmax_ce": ([3, 4, 3], ["tanh", "softmax"], "ce"),
    "nobias_softplus_mse": ([2, 3, 2], ["softplus", "identity"], "mse", {"bias": [False, True]}),
}


@lru_cache(maxsize=None)
def kernel(name, dtype="float64", out=None):
    sizes, acts, loss, *opts = NETWORKS[name]
    net = symbp.mlp(sizes, activations=acts, loss=loss, name=f"interop_{name}", **(opts[0] if opts else {}))
    return symbp.generate(symbp.derive(net), dtype=dtype, out_dir=out, jit=False)


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    return str(tmp_path_factory.mktemp("gen"))


def batch(k, B=4, seed=0):
    p, X, Y = random_batch(k.network, B, seed=seed, dtype=str(k.dtype))
    return [p[key] for key in k.module.PARAMS], X, Y


# ---------------------------------------------------------------------------------------------
# PyTorch
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(NETWORKS))
def test_torch_function_passes_gradcheck(out, name):
    torch = pytest.importorskip("torch")
    k = kernel(name, out=out)
    ps, X, Y = batch(k)
    F = k.torch_function()
    assert issubclass(F, torch.autograd.Function)
    args = [torch.tensor(a, requires_grad=True) for a in ps] + [torch.tensor(X, requires_grad=True),
                                                                torch.tensor(Y)]
    assert torch.autograd.gradcheck(F.apply, args, eps=1e-6, atol=1e-7, rtol=1e-5)
    # the same numbers as the kernel
    loss = F.apply(*args)
    loss.backward()
    ref, grads, gx = k.loss_and_grads(dict(zip(k.module.PARAMS, ps)), X, Y)
    assert loss.dtype == torch.float64 and loss.shape == ()
    assert abs(loss.item() - ref) <= 1e-14 * max(1.0, abs(ref))
    for key, t in zip(k.module.PARAMS, args):
        np.testing.assert_allclose(t.grad.numpy(), grads[key], rtol=1e-14, atol=0)
    np.testing.assert_allclose(args[len(ps)].grad.numpy(), gx, rtol=1e-14, atol=0)


def test_torch_function_scales_by_the_upstream_gradient(out):
    torch = pytest.importorskip("torch")
    k = kernel("sigmoid_bce", out=out)
    ps, X, Y = batch(k)
    F = k.torch_function()
    a = [torch.tensor(p, requires_grad=True) for p in ps]
    (3.0 * F.apply(*a, torch.tensor(X), torch.tensor(Y))).backward()
    _, grads, _ = k.loss_and_grads(dict(zip(k.module.PARAMS, ps)), X, Y)
    np.testing.assert_allclose(a[0].grad.numpy(), 3.0 * grads["W1"], rtol=1e-14)
    assert all(t.grad is not None for t in a)


def test_torch_cpu_tensors_reach_the_kernel_without_a_copy(out, monkeypatch):
    torch = pytest.importorskip("torch")
    k = kernel("sigmoid_bce", out=out)
    ps, X, Y = batch(k)
    tensors = [torch.tensor(p, requires_grad=True) for p in ps] + [torch.tensor(X), torch.tensor(Y)]
    seen = []
    real = type(k).loss_and_grads

    def spy(self, params, X, Y):
        seen.extend([*params.values(), X, Y])
        return real(self, params, X, Y)

    monkeypatch.setattr(type(k), "loss_and_grads", spy)
    k.torch_function().apply(*tensors)
    assert len(seen) == len(tensors)
    for a, t in zip(seen, tensors):
        assert isinstance(a, np.ndarray) and np.shares_memory(a, t.detach().numpy())


@pytest.mark.parametrize("case,message", [
    ("float32", "X: expected dtype float64"),
    ("Y grad", "Y: the kernel gives no gradient with respect to it"),
    ("arity", "torch_function: expected 6 arguments (W1, b1, W2, b2, X, Y), got 5"),
])
def test_torch_mistakes_are_one_line(out, case, message):
    torch = pytest.importorskip("torch")
    k = kernel("sigmoid_bce", out=out)
    ps, X, Y = batch(k)
    F = k.torch_function()
    args = [torch.tensor(a, requires_grad=True) for a in ps] + [torch.tensor(X), torch.tensor(Y)]
    with pytest.raises(InputError) as e:
        if case == "float32":
            F.apply(*[a.detach().float() for a in args])
        elif case == "Y grad":
            args[-1].requires_grad_(True)
            F.apply(*args).backward()
        else:
            F.apply(*args[1:])
    assert message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.jit
def test_torch_example_trains_xor():
    pytest.importorskip("torch")
    run = subprocess.run([sys.executable, str(ROOT / "examples" / "torch_xor.py")], cwd=ROOT,
                         capture_output=True, text=True, timeout=600,
                         env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "4/4 classified right" in run.stdout


# ---------------------------------------------------------------------------------------------
# JAX
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def jax64():
    jax = pytest.importorskip("jax")
    before = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield jax
    jax.config.update("jax_enable_x64", before)


@pytest.mark.parametrize("name", list(NETWORKS))
def test_jax_function_passes_check_grads(out, jax64, name):
    jax = jax64
    import jax.numpy as jnp
    from jax.test_util import check_grads
    k = kernel(name, out=out)
    ps, X, Y = batch(k)
    f = k.jax_function()
    Yj = jnp.asarray(Y)
    of_params_and_x = lambda *a: f(*a, Yj)       # Y is data: no dL/dY (module docstring)
    check_grads(of_params_and_x, tuple(jnp.asarray(a) for a in ps) + (jnp.asarray(X),), order=1,
                modes=["rev"], eps=1e-6, atol=1e-7, rtol=1e-5)
    # under jit too, and the same numbers as the kernel
    n = len(ps)
    value, grads = jax.jit(jax.value_and_grad(of_params_and_x, argnums=tuple(range(n + 1))))(
        *[jnp.asarray(a) for a in ps], jnp.asarray(X))
    ref, rg, gx = k.loss_and_grads(dict(zip(k.module.PARAMS, ps)), X, Y)
    assert abs(float(value) - ref) <= 1e-14 * max(1.0, abs(ref))
    for key, g in zip(k.module.PARAMS, grads):
        np.testing.assert_allclose(np.asarray(g), rg[key], rtol=1e-14, atol=0)
    np.testing.assert_allclose(np.asarray(grads[n]), gx, rtol=1e-14, atol=0)
    # Y is a constant: its cotangent is zero
    gy = jax.grad(lambda y: f(*[jnp.asarray(a) for a in ps], jnp.asarray(X), y))(Yj)
    assert not np.any(np.asarray(gy))


@pytest.mark.parametrize("case,message", [
    ("X float32", "X: expected dtype float64"),
    ("Y rows", "Y: expected shape (4, 1), got (3, 1)"),
    ("X 1-d", "X: expected an array of shape (batch, 2), got (8,)"),
])
def test_jax_mistakes_are_one_line_at_trace_time(out, jax64, case, message):
    import jax.numpy as jnp
    k = kernel("sigmoid_bce", out=out)
    ps, X, Y = batch(k)
    args = [jnp.asarray(a) for a in ps] + [jnp.asarray(X), jnp.asarray(Y)]
    if case == "X float32":
        args[-2] = args[-2].astype(jnp.float32)
    elif case == "Y rows":
        args[-1] = args[-1][:3]
    else:
        args[-2] = args[-2].ravel()
    with pytest.raises(InputError) as e:
        jax64.grad(k.jax_function())(*args)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_jax_float32_kernel_without_x64(out):
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp
    if jax.config.jax_enable_x64:
        pytest.skip("another test left jax_enable_x64 on")
    k = kernel("sigmoid_bce", "float32", out=out)
    ps, X, Y = batch(k)
    g = jax.grad(k.jax_function())(*[jnp.asarray(a) for a in ps], jnp.asarray(X), jnp.asarray(Y))
    _, rg, _ = k.loss_and_grads(dict(zip(k.module.PARAMS, ps)), X, Y)
    assert g.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(g), rg["W1"], rtol=1e-6)


def test_jax_float64_kernel_without_x64_is_one_line(out):
    jax = pytest.importorskip("jax")
    if jax.config.jax_enable_x64:
        pytest.skip("another test left jax_enable_x64 on")
    with pytest.raises(InputError) as e:
        kernel("sigmoid_bce", out=out).jax_function()
    assert "jax_enable_x64" in str(e.value) and "\n" not in str(e.value)


# ---------------------------------------------------------------------------------------------
# without the library
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method,install", [("torch_function", "pip install torch"),
                                            ("jax_function", "pip install jax")])
def test_missing_library_is_one_line(out, monkeypatch, method, install):
    monkeypatch.setitem(sys.modules, method.split("_")[0], None)   # "import torch" fails
    with pytest.raises(SymbpError) as e:
        getattr(kernel("sigmoid_bce", out=out), method)()
    msg = str(e.value)
    assert msg.startswith(f"{method}: needs ") and install in msg and "\n" not in msg
    assert e.value.__cause__ is None and e.value.__suppress_context__


# ---------------------------------------------------------------------------------------------
# GraphKernel: data are the graph's inputs (INPUTS order), then the target
# ---------------------------------------------------------------------------------------------
@lru_cache(maxsize=None)
def graph_kernel(name, out):
    g = symbp.load_graph(ROOT / "examples" / "specs" / "graphs" / f"{name}.toml")
    return symbp.generate(symbp.derive(g), out_dir=out, jit=False)


def graph_batch(k, B=3, seed=0):
    rng = np.random.default_rng(seed)
    ps = [0.5 * rng.normal(size=k.param_shapes[key]) for key in k.module.PARAMS]
    xs = [rng.normal(size=(B, w)) for w in k.module.INPUTS.values()]
    t = np.eye(k.target_width)[rng.integers(0, k.target_width, B)] if k.target_width > 1 \
        else rng.uniform(0.1, 0.9, size=(B, 1))
    return ps, xs, t


@pytest.mark.parametrize("name", ["gated", "two_tower"])
def test_graph_kernel_torch_and_jax(out, jax64, name):
    torch = pytest.importorskip("torch")
    import jax.numpy as jnp
    from jax.test_util import check_grads
    k = graph_kernel(name, out)
    ps, xs, t = graph_batch(k)
    grad_inputs = [key in k.module.INPUT_GRADS for key in k.module.INPUTS]
    F = k.torch_function()
    args = [torch.tensor(a, requires_grad=True) for a in ps]
    args += [torch.tensor(x, requires_grad=g) for x, g in zip(xs, grad_inputs)] + [torch.tensor(t)]
    assert torch.autograd.gradcheck(F.apply, args, eps=1e-6, atol=1e-7, rtol=1e-5)
    loss, grads, ig = k.loss_and_input_grads(dict(zip(k.module.PARAMS, ps)),
                                             dict(zip(k.module.INPUTS, xs)), t)
    value = F.apply(*args)
    value.backward()
    assert abs(value.item() - loss) <= 1e-14 * max(1.0, abs(loss))
    for key, a in zip(k.module.PARAMS, args):
        np.testing.assert_allclose(a.grad.numpy(), grads[key], rtol=1e-14, atol=0)
    for key, a in zip(k.module.INPUTS, args[len(ps):]):
        if key in ig:
            np.testing.assert_allclose(a.grad.numpy(), ig[key], rtol=1e-14, atol=0)
    # an input not marked grad = true is data: asking torch for its gradient is one line
    plain = [key for key, g in zip(k.module.INPUTS, grad_inputs) if not g]
    if plain:
        i = len(ps) + list(k.module.INPUTS).index(plain[0])
        args[i] = args[i].detach().requires_grad_(True)
        with pytest.raises(InputError, match=rf"inputs\['{plain[0]}'\]: the kernel gives no gradient"):
            F.apply(*args).backward()
    # JAX: the parameters and the inputs marked grad (the others and the target held fixed)
    f = k.jax_function()
    fixed = {i: jnp.asarray(a) for i, a in enumerate(xs + [t]) if i == len(xs) or not grad_inputs[i]}
    free = [jnp.asarray(a) for a in ps] + [jnp.asarray(x) for x, g in zip(xs, grad_inputs) if g]

    def of_free(*a):
        it = iter(a[len(ps):])
        data = [fixed[i] if i in fixed else next(it) for i in range(len(xs) + 1)]
        return f(*a[:len(ps)], *data)
    check_grads(of_free, tuple(free), order=1, modes=["rev"], eps=1e-6, atol=1e-7, rtol=1e-5)
    assert abs(float(of_free(*free)) - loss) <= 1e-14 * max(1.0, abs(loss))

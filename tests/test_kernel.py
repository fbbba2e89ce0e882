"""The Kernel: input checks before compiled code, plain-Python and jitted runs agree, float32
stays float32, the Numba cache serves a second process, stability for large |z|; layers
without bias (loops and BLAS, scalar and vectorized activations) have no b anywhere, and
relu_at_zero is the value the emitted code takes at exactly z = 0."""
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import symbp
from symbp import InputError

ROOT = Path(__file__).resolve().parent.parent


def xor_data(dtype=np.float64):
    X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=dtype)
    Y = np.array([[0], [1], [1], [0]], dtype=dtype)
    return X, Y


@pytest.fixture(scope="module")
def xor_py(tmp_path_factory):
    d = symbp.derive(symbp.load(ROOT / "examples" / "specs" / "xor.toml"))
    return symbp.generate(d, out_dir=tmp_path_factory.mktemp("gen"), jit=False)


BAD_CALLS = [
    ("X", lambda X, Y: (X[:, :1], Y), "X: expected shape (4, 2)"),
    ("X 1-d", lambda X, Y: (X[0], Y), "X: expected an array of shape (batch, 2)"),
    ("X list", lambda X, Y: (X.tolist(), Y), "X: expected an array of shape (batch, 2)"),
    ("X int", lambda X, Y: (X.astype(np.int64), Y), "X: expected dtype float64"),
    ("X float32", lambda X, Y: (X.astype(np.float32), Y), "X: expected dtype float64"),
    ("Y rows", lambda X, Y: (X, Y[:3]), "Y: expected shape (4, 1)"),
    ("Y cols", lambda X, Y: (X, np.hstack([Y, Y])), "Y: expected shape (4, 1)"),
    ("empty", lambda X, Y: (X[:0], Y[:0]), "X: expected at least one row"),
]


@pytest.mark.parametrize("name,mutate,message", BAD_CALLS, ids=[c[0] for c in BAD_CALLS])
def test_bad_arrays_are_refused_before_compiled_code(xor_py, name, mutate, message):
    X, Y = mutate(*xor_data())
    with pytest.raises(InputError) as e:
        xor_py.loss_and_grad(xor_py.init_params(0), X, Y)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_bad_params_are_refused(xor_py):
    X, Y = xor_data()
    p = xor_py.init_params(0)
    del p["b2"]
    with pytest.raises(InputError, match="missing \\['b2'\\]"):
        xor_py.loss_and_grad(p, X, Y)
    p = xor_py.init_params(0)
    p["W1"] = p["W1"].T.copy()
    with pytest.raises(InputError, match=r"params\['W1'\]: expected shape \(3, 2\)"):
        xor_py.loss_and_grad(p, X, Y)


def test_params_and_grads_shapes(xor_py):
    p = xor_py.init_params(seed=3)
    assert {k: v.shape for k, v in p.items()} == {"W1": (3, 2), "b1": (3,), "W2": (1, 3), "b2": (1,)}
    loss, g = xor_py.loss_and_grad(p, *xor_data())
    assert list(g) == list(p) and all(g[k].shape == p[k].shape for k in p)
    assert np.isfinite(loss) and loss > 0
    # same seed, same parameters; another seed, others
    assert all(np.array_equal(p[k], xor_py.init_params(seed=3)[k]) for k in p)
    assert not np.array_equal(p["W1"], xor_py.init_params(seed=4)["W1"])


def test_sgd_step_is_theta_minus_lr_grad(xor_py):
    X, Y = xor_data()
    p = xor_py.init_params(0)
    _, g = xor_py.loss_and_grad(p, X, Y)
    before = {k: v.copy() for k, v in p.items()}
    xor_py.sgd_step(p, X, Y, lr=0.5)
    for k in p:
        np.testing.assert_allclose(p[k], before[k] - 0.5 * g[k], rtol=1e-12, atol=1e-15)


@pytest.mark.jit
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_jit_and_plain_python_agree(tmp_path, dtype):
    net = symbp.mlp([3, 5, 4], ["tanh", "softmax"], "ce", name="agree")
    d = symbp.derive(net)
    kj = symbp.generate(d, dtype=dtype, out_dir=tmp_path, jit=True)
    kp = symbp.generate(d, dtype=dtype, out_dir=tmp_path, jit=False)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(6, 3)).astype(dtype)
    Y = np.eye(4, dtype=dtype)[rng.integers(0, 4, 6)]
    p = kj.init_params(1)
    lj, gj = kj.loss_and_grad(p, X, Y)
    lp, gp = kp.loss_and_grad(p, X, Y)
    tol = 1e-12 if dtype == "float64" else 1e-5
    assert abs(lj - lp) <= tol * max(1, abs(lp))
    for k in gj:
        assert gj[k].dtype == np.dtype(dtype)
        np.testing.assert_allclose(gj[k], gp[k], rtol=tol, atol=tol)
    if dtype == "float32":
        # typed constants keep float32 work in float32: the loss comes back as float32
        sig = kj.module.loss_and_grad.nopython_signatures[0]
        assert str(sig.return_type) == "float32"


@pytest.mark.jit
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("spec", [
    ("sigmoid", "bce"), ("softmax", "ce"), ("tanh", "mse")], ids=lambda s: "-".join(s))
def test_large_pre_activations_stay_finite(tmp_path, dtype, spec):
    act, loss = spec
    net = symbp.mlp([2, 3, 3], ["sigmoid", act], loss, name=f"big_{act}")
    k = symbp.generate(symbp.derive(net), dtype=dtype, out_dir=tmp_path)
    p = k.init_params(0)
    for v in p.values():
        v[...] = 0
    p["W2"][...] = np.array([[1e4, -1e4, 0.0]] * 3, dtype=dtype)   # z2 = +-1e4 (a1 in (0,1))
    p["b2"][...] = np.array([1e4, -1e4, 0.5], dtype=dtype)
    X = np.ones((2, 2), dtype)
    Y = np.array([[1, 0, 0], [0, 1, 0]], dtype)
    loss, g = k.loss_and_grad(p, X, Y)
    assert np.isfinite(loss)
    assert all(np.isfinite(v).all() for v in g.values())


@pytest.mark.jit
def test_second_process_uses_the_numba_cache(tmp_path):
    """The entry points the Kernel calls (compiled by compile()) load from Numba's cache."""
    d = symbp.derive(symbp.mlp([2, 4, 1], ["tanh", "sigmoid"], "bce", name="cached"))
    symbp.generate(d, out_dir=tmp_path).compile()
    script = textwrap.dedent(f"""
        import time, symbp
        d = symbp.derive(symbp.mlp([2, 4, 1], ["tanh", "sigmoid"], "bce", name="cached"))
        k = symbp.generate(d, out_dir={str(tmp_path)!r})
        k.compile()
        fs = [k.module.forward_split, k.module.loss_and_grad_split, k.module.loss_and_input_grad, k.module.sgd_step_split]
        print(sum(len(f.stats.cache_hits) for f in fs), sum(len(f.stats.cache_misses) for f in fs))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    hits, misses = map(int, out.stdout.split())
    assert hits == 4 and misses == 0, out.stdout + out.stderr


def test_unknown_target_and_dtype_are_clear_errors(tmp_path):
    d = symbp.derive(symbp.mlp([2, 2], ["identity"], "mse", name="t"))
    with pytest.raises(symbp.SymbpError, match="target: expected one of cpu"):
        symbp.generate(d, target="tpu", out_dir=tmp_path)
    with pytest.raises(symbp.SymbpError, match="dtype: expected one of float64, float32"):
        symbp.generate(d, dtype="float16", out_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("jit", [pytest.param(True, marks=pytest.mark.jit), False], ids=["jit", "python"])
def test_vectorized_activation_path_matches_the_fused_loops(tmp_path, jit, bias):
    """Layers of at least VECTOR_MIN entries take transcendental activations from NumPy's ufuncs;
    smaller batches use the fused scalar loops. With reduction "sum" the gradients of a batch
    are the sums over its halves, so one batch above the threshold (vector path) and its halves
    below it (scalar path) must agree."""
    from symbp.codegen.emit import VECTOR_MIN
    width = 32
    net = symbp.mlp([3, width, width, 2], ["tanh", "sigmoid", "softplus"], "sse", reduction="sum",
                    name="vecpath" if bias else "vecpath_nobias", define=None, bias=bias)
    k = symbp.generate(symbp.derive(net), out_dir=tmp_path, jit=jit)
    B = 2 * (VECTOR_MIN // width)          # B * width = 2 VECTOR_MIN: vector path
    half = B // 2 - 1                      # below VECTOR_MIN: scalar path
    assert B * width >= VECTOR_MIN and (B - half) * width >= VECTOR_MIN and half * width < VECTOR_MIN
    rng = np.random.default_rng(0)
    X = rng.normal(size=(B, 3))
    Y = rng.normal(size=(B, 2))
    p = k.init_params(0)
    loss, g = k.loss_and_grad(p, X, Y)
    l1, g1 = k.loss_and_grad(p, X[:half], Y[:half])
    l2, g2 = k.loss_and_grad(p, X[half:], Y[half:])   # still vector path
    l3 = sum(k.loss_and_grad(p, X[i:i + 1], Y[i:i + 1])[0] for i in range(half, B))
    assert loss == pytest.approx(l1 + l2, rel=1e-12)
    assert l2 == pytest.approx(l3, rel=1e-12)
    for key in g:
        np.testing.assert_allclose(g[key], g1[key] + g2[key], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(k.forward(p, X)[half:], np.vstack([k.forward(p, X[i:i + 1]) for i in range(half, B)]),
                               rtol=1e-13)


@pytest.mark.parametrize("jit", [pytest.param(True, marks=pytest.mark.jit), False], ids=["jit", "python"])
def test_bound_step_equals_loss_and_grad(tmp_path, jit):
    """Kernel.bind packs parameters, gradients and buffers into three arrays; one call of the
    bound step must give the same loss and gradients as loss_and_grad."""
    net = symbp.mlp([3, 20, 4], ["tanh", "softmax"], "ce", name="bound")   # loops and BLAS layers
    k = symbp.generate(symbp.derive(net), out_dir=tmp_path, jit=jit)
    rng = np.random.default_rng(2)
    X = rng.normal(size=(7, 3))
    Y = np.eye(4)[rng.integers(0, 4, 7)]
    p = k.init_params(5)
    loss, g = k.loss_and_grad(p, X, Y)
    step = k.bind(p, X, Y)
    assert step() == pytest.approx(loss, rel=1e-14)
    for key in g:
        np.testing.assert_allclose(step.grads[key], g[key], rtol=1e-13, atol=1e-15)
        np.testing.assert_array_equal(step.params[key], p[key])
    # the bound parameters are views into theta: a descent step on theta moves them
    step.theta -= 0.1 * step.gtheta
    np.testing.assert_allclose(step.params["W1"], p["W1"] - 0.1 * g["W1"], rtol=1e-13)
    assert step() < loss
    with pytest.raises(InputError, match="X: expected dtype float64"):
        k.bind(p, X.astype(np.float32), Y)


def test_no_bias_kernel_has_weights_only(tmp_path):
    """bias=False in loops layers (3 x 4) and BLAS layers (20 x 20): no b, gb or bias line in the
    emitted source, the parameters and gradients are the weights, and gradcheck passes."""
    net = symbp.mlp([3, 20, 20, 2], ["tanh", "relu", "identity"], "mse", bias=False, name="nobias")
    k = symbp.generate(symbp.derive(net), out_dir=tmp_path, jit=False)
    src = k.path.read_text()
    assert list(k.module.STRATEGIES.values()) == ["loops", "blas", "loops"]
    assert k.module.PARAMS == ("W1", "W2", "W3")
    body = src.split("\n", 1)[1]       # after the seal line, whose hex digests may spell "b3"
    for name in ("b1", "b2", "b3", "gb1", "gb2", "gb3"):
        # as a name: the sha256 hex digits of the seal line may hold "b1" by chance
        assert not re.search(rf"\b{name}\b", src), name
    assert "z1 = W1 x   [forward_dense]\n" in src and "no bias" in src.splitlines()[1]
    p = k.init_params(0)
    assert list(p) == ["W1", "W2", "W3"]
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(5, 3)), rng.normal(size=(5, 2))
    loss, g = k.loss_and_grad(p, X, Y)
    assert list(g) == list(p)
    assert symbp.gradcheck(k, p, X, Y).ok


@pytest.mark.parametrize("at_zero", [0, 1])
def test_relu_at_zero_is_the_value_emitted_at_exactly_zero(tmp_path, at_zero):
    """One sample whose z1 is exactly 0 (zero weights and bias): no gradient reaches W1 with
    ReLU'(0) = 0, the full upstream gradient with 1; the printed step takes the value at 0."""
    net = symbp.mlp([2, 2, 1], ["relu", "identity"], "mse", relu_at_zero=at_zero, name=f"kink{at_zero}")
    k = symbp.generate(symbp.derive(net), out_dir=tmp_path, jit=False)
    src = k.path.read_text()
    assert ("if v_z1[s, j] == 0 else" in src) == bool(at_zero)
    p = {"W1": np.zeros((2, 2)), "b1": np.zeros(2), "W2": np.array([[1.0, -2.0]]), "b2": np.zeros(1)}
    X, Y = np.array([[1.0, 3.0]]), np.array([[1.0]])
    _, g = k.loss_and_grad(p, X, Y)
    # dL/da2 = a2 - y = -1; dL/dz1 = ReLU'(0) * W2^T (-1) = relu_at_zero * (-1, 2)
    np.testing.assert_array_equal(g["b1"], at_zero * np.array([-1.0, 2.0]))
    np.testing.assert_array_equal(g["W1"], at_zero * np.array([[-1.0, -3.0], [2.0, 6.0]]))


def test_loss_and_grad_out_fills_the_callers_arrays(xor_py):
    """out= receives the gradients (no fresh arrays); a bad out is one InputError line."""
    X, Y = xor_data()
    p = xor_py.init_params(0)
    loss, g = xor_py.loss_and_grad(p, X, Y)
    out = {k: np.full_like(v, np.nan) for k, v in p.items()}
    arrays = dict(out)
    loss2, got = xor_py.loss_and_grad(p, X, Y, out=out)
    assert loss2 == loss and got is out and all(out[k] is arrays[k] for k in out)
    assert all(np.array_equal(out[k], g[k]) for k in g)
    # copy=True returns fresh arrays: the next call does not change them
    xor_py.loss_and_grad({k: v * 2 for k, v in p.items()}, X, Y)
    assert all(np.array_equal(out[k], g[k]) for k in g)
    bad = {**out, "W1": out["W1"].astype(np.float32)}
    with pytest.raises(InputError, match=r"^out\['W1'\]: expected dtype float64"):
        xor_py.loss_and_grad(p, X, Y, out=bad)
    with pytest.raises(InputError, match=r"^out: missing \['b2'\]"):
        xor_py.loss_and_grad(p, X, Y, out={k: v for k, v in out.items() if k != "b2"})
    out["b1"].flags.writeable = False
    with pytest.raises(InputError, match=r"^out\['b1'\]: loss_and_grad writes the gradients into it and needs a writable"):
        xor_py.loss_and_grad(p, X, Y, out=out)


def test_remembered_parameters_are_still_checked_for_their_shape(xor_py):
    """The arrays that passed the check last are remembered (a loop pays little); the same
    array reshaped in place, or another array under the same key, is checked again."""
    X, Y = xor_data()
    p = xor_py.init_params(0)
    xor_py.loss_and_grad(p, X, Y)
    xor_py.loss_and_grad(p, X, Y)
    p["W1"].shape = (2, 3)
    with pytest.raises(InputError, match=r"^params\['W1'\]: expected shape \(3, 2\), got \(2, 3\)$"):
        xor_py.loss_and_grad(p, X, Y)
    p["W1"].shape = (3, 2)
    xor_py.forward(p, X)
    xor_py.forward(p, X)
    X.shape = (2, 4)       # the remembered X, reshaped in place
    with pytest.raises(InputError, match=r"^X: expected shape \(2, 2\), got \(2, 4\)$"):
        xor_py.forward(p, X)
    X.shape = (4, 2)
    p["b1"] = p["b1"].astype(np.float32)
    with pytest.raises(InputError, match=r"^params\['b1'\]: expected dtype float64"):
        xor_py.forward(p, X)


def test_bound_step_with_an_optimizer(xor_py):
    """bind(..., optimizer) steps the packed parameters once per call (the step count in
    hyper), takes another batch with rebatch (checked) and copies back with write_back."""
    X, Y = xor_data()
    p = xor_py.init_params(0)
    step = xor_py.bind(p, X, Y, symbp.SGD(lr=0.5, momentum=0.5))
    _, g = xor_py.loss_and_grad(p, X, Y)
    first = step()
    assert first == pytest.approx(xor_py.loss(p, X, Y), rel=1e-14) and step.steps == 1
    for key in p:      # first step: the momentum buffer is the gradient itself
        np.testing.assert_allclose(step.params[key], p[key] - 0.5 * g[key], rtol=1e-13, atol=1e-15)
    step.rebatch(X[:2], Y[:2])
    step()
    assert step.steps == 2
    with pytest.raises(InputError, match=r"^X: expected dtype float64"):
        step.rebatch(X.astype(np.float32), Y)
    q = {k: v.copy() for k, v in p.items()}
    step.write_back(q)
    assert all(np.array_equal(q[k], step.params[k]) for k in q)
    assert not np.array_equal(q["W1"], p["W1"])

"""Numerical stability of the printed derivatives and bounded derivation work.

The generated kernels' gradients at pre-activations around +-1e4, +-1e3, +-100 (and moderate
ones) must be finite and match the exact derivative of the per-sample loss, evaluated by SymPy
at 50 digits, wherever that exact value is representable in the dtype: for every built-in
activation and a list of user expressions, with every loss that fits, on the per-sample loop
path (small layers) and on the BLAS / vectorized-activation path (large layers). Expressions
that pass validation but blow up SymPy (huge powers, nested exponentials) answer in seconds.
"""
import time

import numpy as np
import pytest
import sympy as sp

import symbp
from conftest import quick_sample
from symbp import naming
from symbp.derivation import simplify as simp
from symbp.codegen.emit import LOOPS_MAX, VECTOR_MIN, layer_strategy
from symbp.model.functions import ACTIVATIONS, LOSSES

Z, A, Y = naming.Z, naming.A, naming.Y

USER = {
    "gelu": "0.5*z*(1 + tanh(0.7978845608*(z + 0.044715*z**3)))",
    "swish": "z*sigmoid(z)",
    "elu": "max(z, 0) + min(0, exp(z) - 1)",
    "mish": "z*tanh(softplus(z))",
    "softsign": "z/(1 + abs(z))",
    "relutanh": "relu(z)*tanh(z)",
}
BUILTIN = sorted(n for n, a in ACTIVATIONS.items() if a.elementwise)
POINTS = (1e4, -1e4, 1e3, -1e3, 100.0, -100.0, 3.0, -0.5)
TOL = {"float64": 1e-7, "float32": 2e-3}


def _cases():
    out = []
    for act in BUILTIN + sorted(USER):
        for loss in sorted(LOSSES):
            fits = LOSSES[loss].outputs
            if not fits or act in fits:
                out.append((act, loss))
    return out + [("softmax", "ce")]


CASES = _cases()


def _definition(act):
    if act in USER:
        return symbp.model.functions.user_activation(act, USER[act]).definition
    a = ACTIVATIONS[act]
    return a.instantiate("test").definition if a.params else a.definition


def _net(act, loss, sizes, name):
    """One layer of ``act``, or act -> identity for three sizes (a hidden layer)."""
    define = {act: USER[act]} if act in USER else None
    acts = [act] if len(sizes) == 2 else [act] + ["identity"] * (len(sizes) - 2)
    return symbp.mlp(list(sizes), acts, loss, name=name, define=define)


def _exact_dz(act, loss, z0, y0):
    """dL/dz of one unit's loss(f(z), y) at z0, exactly (50 digits): the reference."""
    if act == "softmax":     # two units, z = (z0, 0), one-hot y = (1, 0)
        per = -sp.log(sp.exp(Z) / (sp.exp(Z) + 1))
    else:
        per = LOSSES[loss].per_unit.xreplace({A: _definition(act), Y: sp.Float(y0, 50)})
    v = sp.N(sp.diff(per, Z).xreplace({Z: sp.Float(z0, 50)}), 50)
    return float(v) if v.is_real else None


def _target(loss):
    return 1.0 if loss in ("bce", "ce") else 0.5


def _representable(want, dtype):
    return want is not None and abs(want) <= float(np.finfo(dtype).max) / 4


def _grads(k, p, X, Yv, wants, dtype):
    """k.loss_and_grad; None where the plain-Python path (jit=False) raises OverflowError from
    math.exp(z > 709) where compiled code gives inf (elu's min(0, exp(z) - 1) = 0 there): a
    limitation of running the kernel as plain Python, not of the printed form."""
    try:
        return k.loss_and_grad(p, X, Yv)[1]
    except OverflowError:
        assert not k.jit and abs(float(X.max())) > 709 or abs(float(X.min())) > 709, wants
        return None


def _check(got, want, dtype, where):
    if not _representable(want, dtype):
        return          # not representable: inf is the right answer in this dtype
    assert np.isfinite(got), where
    assert abs(float(got) - want) <= TOL[dtype] * max(1.0, abs(want)), (where, float(got), want)


_KERNELS = {}


def _kernel(act, loss, sizes, dtype, tmp, jit=False):
    key = (act, loss, sizes, dtype, jit)
    if key not in _KERNELS:
        name = f"st_{act}_{loss}_{len(sizes)}_{sizes[-1]}"
        _KERNELS[key] = symbp.generate(symbp.derive(_net(act, loss, sizes, name)), dtype=dtype,
                                       out_dir=tmp, jit=jit)
    return _KERNELS[key]


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    return tmp_path_factory.mktemp("stab")


def _one_layer(k, act, loss, dtype):
    """Per-sample loop path, one unit (two for softmax): z = x, so dL/db = dL/dz."""
    width = 2 if act == "softmax" else 1
    p = {"W1": np.zeros((width, 1), dtype), "b1": np.zeros(width, dtype)}
    p["W1"][0, 0] = 1
    for z0 in POINTS:
        X = np.array([[z0]], dtype)
        Yv = np.zeros((1, width), dtype)
        Yv[0, 0] = _target(loss)
        want = _exact_dz(act, loss, z0, _target(loss))
        g = _grads(k, p, X, Yv, [want], dtype)
        if g is None:
            continue
        _check(g["b1"][0], want, dtype, (act, loss, dtype, z0, "dL/db"))
        _check(g["W1"][0, 0], None if want is None else want * z0, dtype, (act, loss, dtype, z0, "dL/dW"))


# The quick set: every activation in float32 (where overflow bites first) and every loss in
# float64; the other cases of the full activation x loss x dtype list run under `slow`.
DTYPES = ("float32", "float64")
OUTPUT = [(a, l, d) for d in DTYPES for a, l in CASES]


@pytest.mark.parametrize("act,loss,dtype", quick_sample(OUTPUT, lambda c: c[0], lambda c: c[1:],
                                                        ids=[f"{a}-{l}-{d}" for a, l, d in OUTPUT]))
def test_output_layer_gradients_are_stable_for_large_z(tmp, act, loss, dtype):
    """The output delta (loss and output activation combined) on the per-sample loop path."""
    sizes = (1, 2) if act == "softmax" else (1, 1)
    _one_layer(_kernel(act, loss, sizes, dtype, tmp), act, loss, dtype)


HIDDEN = [a for a in BUILTIN + sorted(USER)]


PER_ACT = [(a, d) for d in DTYPES for a in HIDDEN]


@pytest.mark.parametrize("act,dtype", quick_sample(PER_ACT, lambda c: c[0], lambda c: c[1],
                                                   ids=[f"{a}-{d}" for a, d in PER_ACT]))
def test_hidden_layer_gradients_are_stable_for_large_z(tmp, act, dtype):
    """A hidden layer (the delta recursion's f'(z) form): [1, 1, 1] act -> identity, MSE, with
    W2 = 1: dL/db1 = (f(z) - y) f'(z)."""
    k = _kernel(act, "mse", (1, 1, 1), dtype, tmp)
    p = {"W1": np.ones((1, 1), dtype), "b1": np.zeros(1, dtype), "W2": np.ones((1, 1), dtype),
         "b2": np.zeros(1, dtype)}
    for z0 in POINTS:
        X = np.array([[z0]], dtype)
        Yv = np.full((1, 1), 0.5, dtype)
        want = _exact_dz(act, "mse", z0, 0.5)
        g = _grads(k, p, X, Yv, [want], dtype)
        if g is None:
            continue
        _check(g["b1"][0], want, dtype, (act, dtype, z0))


BLAS_CASES = [c for c in CASES if c[0] != "softmax"]      # softmax: the loop path above


BLAS = [(a, l, d) for d in DTYPES for a, l in BLAS_CASES]


@pytest.mark.parametrize("act,loss,dtype", quick_sample(BLAS, lambda c: c[0], lambda c: c[1:],
                                                        ids=[f"{a}-{l}-{d}" for a, l, d in BLAS]))
def test_blas_and_vectorized_path_gradients_are_stable(tmp, act, loss, dtype, jit=False):
    """Large layer (BLAS contractions, NumPy ufunc activation): [16, 8] with B * 8 >= VECTOR_MIN,
    z[s, j] = x[s, 0] for every unit; with reduction "mean" dL/db_j = mean_s dL/dz(x_s)."""
    n_in, width = 16, 8
    assert layer_strategy(n_in, width) == "blas" and n_in * width > LOOPS_MAX
    B = VECTOR_MIN // width
    k = _kernel(act, loss, (n_in, width), dtype, tmp, jit=jit)
    zs = np.resize(np.array(POINTS), B)
    X = np.zeros((B, n_in), dtype)
    X[:, 0] = zs
    p = {"W1": np.zeros((width, n_in), dtype), "b1": np.zeros(width, dtype)}
    p["W1"][:, 0] = 1
    Yv = np.full((B, width), _target(loss), dtype)
    g = _grads(k, p, X, Yv, [], dtype)
    if g is None:
        pytest.skip("plain Python overflows in math.exp (see _grads)")
    terms = [_exact_dz(act, loss, float(z0), _target(loss)) for z0 in zs]
    if any(t is None or abs(t) > float(np.finfo(dtype).max) / 4 for t in terms):
        pytest.skip("a term is not representable")
    want = sum(terms) / B
    scale = sum(abs(t) for t in terms) / B
    assert np.isfinite(g["b1"]).all() and np.isfinite(g["W1"]).all()
    for j in range(width):
        assert abs(float(g["b1"][j]) - want) <= TOL[dtype] * max(1.0, scale), (j, g["b1"][j], want)


@pytest.mark.jit
def test_compiled_float32_blas_elu_is_stable(tmp):
    """The compiled vectorized path with max/min (plain Python overflows in math.exp there)."""
    test_blas_and_vectorized_path_gradients_are_stable(tmp, "elu", "mse", "float32", jit=True)


@pytest.mark.jit
def test_compiled_float32_gelu_is_stable(tmp):
    """One compiled float32 kernel: the user GELU that gave dL/db = -2.76 at z = 1000."""
    k = _kernel("gelu", "mse", (1, 1), "float32", tmp, jit=True)
    _one_layer(k, "gelu", "mse", "float32")


@pytest.mark.parametrize("act,dtype", quick_sample(PER_ACT, lambda c: c[0], lambda c: c[1],
                                                   ids=[f"{d}-{a}" for a, d in PER_ACT]))
def test_printed_forward_is_finite_where_the_value_is(tmp, act, dtype):
    """The forward a = f(z) (softplus, sigmoid, ...) is finite wherever f(z) is representable
    (exp(1e3) overflowing is the right answer for exp itself)."""
    k = _kernel(act, "mse", (1, 1), dtype, tmp)
    p = {"W1": np.ones((1, 1), dtype), "b1": np.zeros(1, dtype)}
    f = _definition(act)
    for z0 in POINTS:
        want = complex(sp.N(f.xreplace({Z: sp.Float(z0, 50)}), 30))
        if want.imag or abs(want.real) > float(np.finfo(dtype).max) / 4:
            continue
        try:
            out = k.forward(p, np.array([[z0]], dtype))[0, 0]
        except OverflowError:       # plain Python's math.exp (see _grads)
            assert not k.jit and abs(z0) > 709
            continue
        assert np.isfinite(out) and abs(float(out) - want.real) <= TOL[dtype] * max(1, abs(want.real)), (z0, out)


# --- the criterion itself ---------------------------------------------------------------------

def test_stability_criterion_rejects_the_forms_that_failed():
    """GELU's f'(z) as diff gives it passes; softplus + MSE's delta as printed before,
    (exp(a) - 1)(a - y) exp(-a), fails (inf/NaN for a > 88 in float32)."""
    gelu = _definition("gelu")
    fprime = sp.diff(gelu, Z)
    ctx = simp.Context(links=[(A, Z, gelu)])
    assert simp.stable(fprime, fprime, ctx)
    assert simp.stable((A - Y) * fprime, (A - Y) * fprime, ctx)
    soft = ACTIVATIONS["softplus"].definition
    ctx = simp.Context(links=[(A, Z, soft)])
    exact = (A - Y) * (1 - sp.exp(-A))
    assert simp.stable(exact, exact, ctx)
    assert not simp.stable((sp.exp(A) - 1) * (A - Y) * sp.exp(-A), exact, ctx)


def test_derived_forms_pass_the_criterion():
    d = symbp.derive(_net("softplus", "mse", (1, 1), "sp"))
    assert d["delta1"].rhs.count(sp.exp(d["a1"].lhs)) == 0      # no exp(a): overflows
    d = symbp.derive(_net("gelu", "mse", (1, 1), "ge"))
    rhs = d["delta1"].rhs
    assert sp.expand(rhs) != rhs                                 # not multiplied out


# --- bounded work -----------------------------------------------------------------------------

HARD = ["(((((z+1)**100)**100)**100)**100)", "exp(exp(exp(exp(z))))", "tanh(tanh(tanh(tanh(z))))",
        "exp(exp(exp(z)))"]


@pytest.mark.parametrize("text", HARD)
def test_hard_expressions_answer_within_seconds(text):
    t = time.perf_counter()
    try:
        net = symbp.mlp([1, 2, 1], ["u", "identity"], "mse", name="hard", define={"u": text})
        d = symbp.derive(net)
        assert d["delta1"].rhs.has(naming.quantity("ga", 1)[naming.S, naming.J])
    except symbp.SymbpError as e:
        assert "\n" not in str(e)
    assert time.perf_counter() - t < 10


def _derive_and_emit(depth):
    from symbp.codegen.graph_emit import emit_mlp
    t = time.perf_counter()
    net = symbp.mlp([2] + [3] * depth + [1], ["tanh"] * depth + ["sigmoid"], "bce", name="deep")
    assert "def loss_and_grad" in emit_mlp(symbp.derive(net))
    return time.perf_counter() - t


def test_deep_spec_work_is_linear_in_depth():
    """Rules are derived once per activation and renamed per layer: derive + emit grow linearly
    with depth (a 1000-layer spec: about 20 s on a 2-core machine shared with other jobs). A
    wall-clock bound on 1000 layers is at the mercy of the machine's load; the ratio of two
    depths is not: 4x the layers must cost well under 16x (quadratic) the time."""
    _derive_and_emit(2)          # the per-activation templates, cached
    small, big = _derive_and_emit(40), _derive_and_emit(160)
    assert big < 8 * small, (small, big)


# --- vectorized activations with max/min (the generated module imports no functools) -------

@pytest.mark.parametrize("act", ["elu", "relutanh"])
def test_vectorized_max_min_activation_runs(tmp, act):
    """B x width >= VECTOR_MIN takes the activation from NumPy ufuncs: Max/Min must print as
    np.maximum/np.minimum (NumPyPrinter's functools.reduce raised NameError), and agree with the
    per-sample loops on the same rows."""
    k = _kernel(act, "mse", (1, 4, 1), "float64", tmp)
    B = VECTOR_MIN // 4
    rng = np.random.default_rng(0)
    X, Yv = rng.normal(size=(B, 1)), rng.normal(size=(B, 1))
    p = k.init_params(0)
    assert "np.maximum" in k.path.read_text() or "np.minimum" in k.path.read_text()
    out = k.forward(p, X)
    rows = np.vstack([k.forward(p, X[i:i + 1]) for i in range(0, B, 37)])
    np.testing.assert_allclose(out[::37], rows, rtol=1e-13)
    loss, g = k.loss_and_grad(p, X, Yv)
    assert np.isfinite(loss) and all(np.isfinite(v).all() for v in g.values())


# --- undefined derivatives and leaky ReLU with slope 0 ----------------------------------------

@pytest.mark.parametrize("jit", [pytest.param(True, marks=pytest.mark.jit), False], ids=["jit", "python"])
def test_undefined_derivative_gives_non_finite_gradient_not_an_exception(tmp_path, jit):
    """abs(z)**0.5 at z = 0: the derivative is undefined; compiled code follows NumPy
    (error_model="numpy", as the README states) instead of raising ZeroDivisionError."""
    net = symbp.mlp([1, 1], ["root"], "mse", name="root", define={"root": "abs(z)**0.5"})
    k = symbp.generate(symbp.derive(net), out_dir=tmp_path, jit=jit)
    p = {"W1": np.ones((1, 1)), "b1": np.zeros(1)}
    with np.errstate(all="ignore"):
        loss, g = k.loss_and_grad(p, np.array([[0.0]]), np.array([[0.5]]))   # compiled: raised
    assert np.isfinite(loss) and not np.isfinite(g["b1"]).all()
    assert 'error_model="numpy"' in k.path.read_text()
    loss, g = k.loss_and_grad(p, np.array([[4.0]]), np.array([[0.5]]))
    assert g["b1"][0] == pytest.approx((2.0 - 0.5) * 0.25)


@pytest.mark.parametrize("place", ["hidden", "output"])
def test_leaky_relu_with_slope_zero_is_relu(tmp_path, place):
    """slope = 0 used to fail with "could not collapse ... Piecewise"; it is ReLU."""
    acts = {"hidden": ([{"name": "leaky_relu", "slope": 0}, "identity"], ["relu", "identity"]),
            "output": (["tanh", {"name": "leaky_relu", "slope": 0}], ["tanh", "relu"])}[place]
    ks = [symbp.generate(symbp.derive(symbp.mlp([2, 3, 1], a, "mse", name=f"lk{i}_{place}")),
                         out_dir=tmp_path, jit=False) for i, a in enumerate(acts)]
    rng = np.random.default_rng(1)
    X, Yv = rng.normal(size=(9, 2)), rng.normal(size=(9, 1))
    p = ks[0].init_params(3)
    (l0, g0), (l1, g1) = (k.loss_and_grad(p, X, Yv) for k in ks)
    assert l0 == pytest.approx(l1, rel=1e-14)
    for key in g0:
        np.testing.assert_allclose(g0[key], g1[key], rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("printer", ["array", "numba", "cuda", "graph"])
def test_no_printer_emits_functools_for_max_min(printer):
    """The same class of crash in every printer: Max/Min must print as code the generated module
    can run without importing functools (the vectorized path, the graph emitter, CUDA)."""
    from symbp.codegen.cuda import CudaPrinter
    from symbp.codegen.graph_emit import GraphPrinter
    from symbp.codegen.printer import ArrayPrinter, NumbaPrinter
    p = {"array": lambda: ArrayPrinter(), "numba": lambda: NumbaPrinter("float32"),
         "cuda": lambda: CudaPrinter("float32"), "graph": lambda: GraphPrinter("float32", {})}[printer]()
    text = p.doprint(sp.Max(Z, 0, sp.exp(Z)) + sp.Min(0, sp.exp(Z) - 1))
    assert "functools" not in text and "reduce" not in text, text

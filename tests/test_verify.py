"""symbp.verify: the three references agree with the kernels and with each other, and can fail.

- For a representative set of networks (sigmoid + bce, tanh + softmax/ce, ReLU + mse, leaky
  ReLU + sse summed, softplus, exp, softmax + mse, a user-defined swish), the plain-Python kernel
  (float64 and float32) passes ``gradcheck``, and its loss, dL/dtheta and dL/dX match the
  full-expansion SymPy oracle (rtol 1e-9 in float64) and PyTorch autograd (skipped without
  torch). A small set of compiled (Numba) kernels goes through the same checks (``jit`` mark).
- gradcheck fails, with a large error on the right row, when a gradient is wrong: scaled by
  1.01, one entry off by 1e-7, an input gradient off, or an error only the random-direction
  check can see.
- The oracle is exact: a ReLU/identity network gives exact Rationals equal to a hand
  computation, and its per-parameter route equals differentiating the loss written with every
  parameter a symbol; it follows the loss and reduction conventions exactly (sse = 2 mse, sum =
  B mean). It refuses large sizes and bad arrays, reads no derivation (it still works with
  ``symbp.derive`` broken), and user activations translate to torch.
- The network options go through the same checks: layers without bias, relu_at_zero = 1 (on a
  batch with pre-activations exactly 0, where the oracle, torch and the kernel must all take
  ReLU'(0) = 1; finite differences average the two sides there, so gradcheck takes a random
  batch), and bce after a ReLU output (allow_any_output, on a batch whose outputs stay in
  (0, 1)).
"""
import warnings
import ast
import dataclasses
import importlib
from pathlib import Path

import numpy as np
import pytest
import sympy as sp

import symbp
from symbp import InputError, SymbpError
from symbp.verify import (DEFAULT_TOL, GradcheckReport, gradcheck, oracle_gradients, oracle_loss_expression,
                          torch_gradients)

from conftest import random_batch

ROOT = Path(__file__).resolve().parents[1]
BATCH = 3

NETS = {
    "xor_bce": lambda: symbp.mlp([2, 3, 1], ["sigmoid", "sigmoid"], "bce", name="xor_bce"),
    "tanh_softmax_ce": lambda: symbp.mlp([3, 3, 3], ["tanh", "softmax"], "ce", name="tanh_softmax_ce"),
    "relu_mse": lambda: symbp.mlp([2, 4, 2], ["relu", "identity"], "mse", name="relu_mse"),
    "leaky_sse_sum": lambda: symbp.mlp([2, 4, 2], [{"name": "leaky_relu", "slope": 0.1}, "identity"],
                                       "sse", "sum", name="leaky_sse_sum"),
    "softplus_exp": lambda: symbp.mlp([2, 3, 2], ["softplus", "exp"], "mse", name="softplus_exp"),
    "softmax_mse": lambda: symbp.mlp([2, 2, 3], ["tanh", "softmax"], "mse", name="softmax_mse"),
    "swish": lambda: symbp.mlp([3, 4, 2], ["swish", "identity"], "sse", define={"swish": "z * sigmoid(z)"},
                               name="swish"),
    "deep": lambda: symbp.mlp([2, 3, 2, 2], ["tanh", "leaky_relu", "sigmoid"], "bce", name="deep"),
    # the network options
    "nobias_tanh": lambda: symbp.mlp([2, 4, 2], ["tanh", "identity"], "mse", bias=False, name="nobias_tanh"),
    "nobias_xor": lambda: symbp.mlp([2, 3, 1], ["sigmoid", "sigmoid"], "bce", bias=[False, True],
                                    name="nobias_xor"),
    "relu1_mse": lambda: symbp.mlp([2, 4, 2], ["relu", "identity"], "mse", relu_at_zero=1, name="relu1_mse"),
    "leaky1_nobias": lambda: symbp.mlp([3, 4, 2], [{"name": "leaky_relu", "slope": 0.25}, "relu"], "sse", "sum",
                                       bias=[False, True], relu_at_zero=1, name="leaky1_nobias"),
    "relu0_kinks": lambda: symbp.mlp([2, 4, 2], ["relu", "identity"], "mse", name="relu0_kinks"),
    "udl_toy": lambda: _quiet(lambda: symbp.mlp([2, 1], ["relu"], "bce", allow_any_output=True, name="udl_toy")),
}
# Compiled kernels (slow to build): three networks, each in float64 and float32. The float32
# kernel's float64 twin (for gradcheck) is the float64 kernel already compiled in the same dir.
JIT_CASES = ([(n, d) for n in ("xor_bce", "tanh_softmax_ce", "swish") for d in ("float64", "float32")]
             + [("leaky1_nobias", "float64"), ("nobias_xor", "float32")])

_ORACLE = {}


def _quiet(build):
    """Build a network that asks for bce after a ReLU, without its OutputRangeWarning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", symbp.OutputRangeWarning)
        return build()


def _kink_batch(net, dtype):
    """Integer weights and inputs in {-1, 0, 1}: several first-layer pre-activations are exactly
    0, where relu_at_zero decides the gradient (seed chosen so that they are)."""
    rng = np.random.default_rng(11)
    p = {k: rng.integers(-1, 2, size=shape).astype(dtype) for k, shape in net.param_shapes().items()}
    X = rng.integers(-1, 2, size=(BATCH, net.inputs)).astype(dtype)
    Y = rng.integers(-1, 2, size=(BATCH, net.sizes[-1])).astype(dtype)
    return p, X, Y


def _toy_batch(net, dtype):
    """The UDL toy network's numbers: outputs h = 0.4, 0.25, 0.5, inside (0, 1) where bce is
    defined (values rounded through float32, as random_batch does)."""
    p = {"W1": np.array([[0.4, -0.2]]), "b1": np.array([0.1])}
    X = np.array([[1.0, 0.5], [0.5, 0.25], [1.5, 1.0]])
    Y = np.array([[1.0], [0.0], [1.0]])
    cast = lambda a: a.astype(np.float32).astype(dtype)   # noqa: E731
    return {k: cast(v) for k, v in p.items()}, cast(X), cast(Y)


# Batches other than random_batch: (batch function, whether gradcheck uses it too). At an exact
# kink finite differences see the mean of the two one-sided derivatives, not the convention.
SPECIAL = {"relu1_mse": (_kink_batch, False), "leaky1_nobias": (_kink_batch, False),
           "relu0_kinks": (_kink_batch, False), "udl_toy": (_toy_batch, True)}


def case(name, dtype="float64", seed=0, differences=False):
    net = NETS[name]()
    if name in SPECIAL and (SPECIAL[name][1] or not differences):
        return net, SPECIAL[name][0](net, np.dtype(dtype))
    return net, random_batch(net, BATCH, seed=seed, dtype=dtype)


def oracle(name):
    """Oracle results per network, computed once (the slow part); the float32 batch of a case
    holds the same numbers as the float64 one (see conftest.random_batch), so they serve both."""
    if name not in _ORACLE:
        net, (p, X, Y) = case(name)
        _ORACLE[name] = oracle_gradients(net, p, X, Y, input_grad=True)
    return _ORACLE[name]


@pytest.fixture(scope="module")
def gen_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("verify_gen")


def kernel(name, dtype, out_dir, jit=False):
    return symbp.generate(symbp.derive(NETS[name]()), dtype=dtype, out_dir=out_dir, jit=jit)


def assert_matches(kern, name, dtype, ref_loss, ref_grads, rtol):
    """Kernel loss, gradients and input gradient equal to a reference within rtol (relative to
    each array's largest entry, so that tiny entries are held to an absolute standard)."""
    net, (p, X, Y) = case(name, dtype)
    loss, grads = kern.loss_and_grad(p, X, Y)
    got = {**grads, "X": kern.input_grad(p, X, Y)}
    assert abs(loss - ref_loss) <= rtol * max(1.0, abs(ref_loss))
    assert set(got) == set(ref_grads)
    for k, ref in ref_grads.items():
        scale = max(1e-3, float(np.max(np.abs(ref))))
        np.testing.assert_allclose(got[k], ref, rtol=rtol, atol=rtol * scale, err_msg=f"{name} {dtype} {k}")


RTOL = {"float64": 1e-9, "float32": 2e-4}


# ---------------------------------------------------------------------------------------------
# kernels against the three references
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", list(NETS))
def test_plain_python_kernel_passes_gradcheck(gen_dir, name, dtype):
    net, (p, X, Y) = case(name, dtype, differences=True)
    report = gradcheck(kernel(name, dtype, gen_dir), p, X, Y)
    assert report.ok, str(report)
    assert report.tol == DEFAULT_TOL[dtype]
    assert [r.name for r in report.rows] == list(net.param_shapes()) + ["X"]
    assert all(r.entries == int(np.prod(r.shape)) for r in report.rows)   # small: every entry


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", list(NETS))
def test_plain_python_kernel_matches_the_oracle(gen_dir, name, dtype):
    ref_loss, ref = oracle(name)
    assert_matches(kernel(name, dtype, gen_dir), name, dtype, ref_loss, ref, RTOL[dtype])


@pytest.mark.parametrize("name", list(NETS))
def test_plain_python_kernel_matches_torch(gen_dir, name):
    pytest.importorskip("torch")
    net, (p, X, Y) = case(name)
    ref_loss, ref = torch_gradients(net, p, X, Y, input_grad=True)
    assert_matches(kernel(name, "float64", gen_dir), name, "float64", ref_loss, ref, 1e-9)


@pytest.mark.parametrize("name", list(NETS))
def test_torch_and_oracle_agree(name):
    torch = pytest.importorskip("torch")  # noqa: F841
    net, (p, X, Y) = case(name)
    lt, gt = torch_gradients(net, p, X, Y, input_grad=True)
    lo, go = oracle(name)
    assert abs(lt - lo) <= 1e-12 * max(1.0, abs(lo))
    for k in go:
        np.testing.assert_allclose(gt[k], go[k], rtol=1e-10, atol=1e-13 * max(1.0, np.max(np.abs(go[k]))))


@pytest.mark.jit
@pytest.mark.parametrize("name,dtype", JIT_CASES, ids=[f"{n}-{d}" for n, d in JIT_CASES])
def test_compiled_kernel_verified_three_ways(gen_dir, name, dtype):
    k = kernel(name, dtype, gen_dir / "jit", jit=True)
    assert k.jit
    net, (p, X, Y) = case(name, dtype, differences=True)
    report = gradcheck(k, p, X, Y)
    assert report.ok, str(report)
    net, (p, X, Y) = case(name, dtype)
    ref_loss, ref = oracle(name)
    assert_matches(k, name, dtype, ref_loss, ref, RTOL[dtype])
    if dtype == "float64" and importlib.util.find_spec("torch") is not None:
        tl, tg = torch_gradients(net, p, X, Y, input_grad=True)
        assert_matches(k, name, dtype, tl, tg, 1e-9)


# ---------------------------------------------------------------------------------------------
# gradcheck must be able to fail
# ---------------------------------------------------------------------------------------------

class Tampered:
    """A kernel whose gradients are altered by ``grads_fn`` / ``input_fn`` (a wrong kernel)."""

    def __init__(self, k, grads_fn=None, input_fn=None):
        self._k, self._g, self._x = k, grads_fn, input_fn
        for attr in ("network", "derivation", "dtype", "path", "target", "jit"):
            setattr(self, attr, getattr(k, attr))

    def loss_and_grad(self, params, X, Y):
        loss, grads = self._k.loss_and_grad(params, X, Y)
        return loss, (self._g(grads) if self._g else grads)

    def input_grad(self, params, X, Y):
        gx = self._k.input_grad(params, X, Y)
        return self._x(gx) if self._x else gx


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_gradcheck_fails_on_a_scaled_gradient(gen_dir, dtype):
    k = kernel("tanh_softmax_ce", dtype, gen_dir)
    _, (p, X, Y) = case("tanh_softmax_ce", dtype)
    bad = Tampered(k, grads_fn=lambda g: {**g, "W1": g["W1"] * 1.01})
    report = gradcheck(bad, p, X, Y)
    assert not report.ok
    assert report.errors["W1"] > 5 * report.tol       # about 0.01: 1 % off
    assert all(e <= report.tol for key, e in report.errors.items() if key != "W1")
    assert report.max_error == report.errors["W1"]
    assert "FAILED" in str(report)
    assert gradcheck(k, p, X, Y).ok        # the same check on the honest kernel passes


def test_gradcheck_sees_one_entry_off_by_1e_7(gen_dir):
    k = kernel("xor_bce", "float64", gen_dir)
    _, (p, X, Y) = case("xor_bce")

    def nudge(g):
        g = {key: v.copy() for key, v in g.items()}
        g["b1"][1] += 1e-7
        return g

    report = gradcheck(Tampered(k, grads_fn=nudge), p, X, Y)
    assert not report.ok
    row = {r.name: r for r in report.rows}["b1"]
    assert row.worst == (1,) and row.max_error > report.tol
    assert row.analytic - row.numeric == pytest.approx(1e-7, rel=1e-2)


def test_gradcheck_checks_the_input_gradient(gen_dir):
    k = kernel("relu_mse", "float64", gen_dir)
    _, (p, X, Y) = case("relu_mse")
    report = gradcheck(Tampered(k, input_fn=lambda gx: -gx), p, X, Y)
    assert not report.ok
    assert report.errors["X"] > 1.0 - 1e-9          # opposite sign: relative error ~2 where not tiny
    assert all(e <= report.tol for key, e in report.errors.items() if key != "X")


def test_gradcheck_directional_check_sees_an_unsampled_entry(gen_dir):
    k = kernel("tanh_softmax_ce", "float64", gen_dir)
    _, (p, X, Y) = case("tanh_softmax_ce")
    # W1 (4 x 3) is the first array checked: with max_entries=2, gradcheck differences the two
    # entries numpy.random.default_rng(seed).choice(12, 2, replace=False) picks (documented).
    sampled = set(np.random.default_rng(7).choice(12, size=2, replace=False).tolist())
    hidden = next(i for i in range(12) if i not in sampled)
    idx = np.unravel_index(hidden, (4, 3))

    def corrupt(g):
        g = {key: v.copy() for key, v in g.items()}
        g["W1"][idx] += 0.05
        return g

    report = gradcheck(Tampered(k, grads_fn=corrupt), p, X, Y, max_entries=2, seed=7)
    row = {r.name: r for r in report.rows}["W1"]
    assert row.entries == 2 and row.directions == 2
    assert not report.ok and str(row.worst).startswith("dir")
    assert gradcheck(k, p, X, Y, max_entries=2, seed=7).ok


def test_gradcheck_samples_large_parameters_deterministically(gen_dir):
    net = symbp.mlp([9, 12, 5], ["tanh", "sigmoid"], "bce", name="wide")
    k = symbp.generate(symbp.derive(net), out_dir=gen_dir, jit=False)
    p, X, Y = random_batch(net, 3)
    a = gradcheck(k, p, X, Y, max_entries=16, seed=3)
    b = gradcheck(k, p, X, Y, max_entries=16, seed=3)
    assert a.ok, str(a)
    rows = {r.name: r for r in a.rows}
    assert (rows["W1"].entries, rows["W1"].directions) == (16, 2)       # 108 entries: sampled
    assert (rows["b1"].entries, rows["b1"].directions) == (12, 0)       # 12 entries: all
    assert str(a) == str(b)


def test_gradcheck_report_table(gen_dir):
    k = kernel("xor_bce", "float64", gen_dir)
    _, (p, X, Y) = case("xor_bce")
    report = gradcheck(k, p, X, Y)
    assert isinstance(report, GradcheckReport)
    lines = str(report).splitlines()
    assert lines[0].startswith("gradcheck xor_bce (float64): ok, max error")
    assert lines[1].split()[:5] == ["name", "shape", "entries", "dirs", "max"]
    assert [line.split()[0] for line in lines[2:]] == ["W1", "b1", "W2", "b2", "X"]
    # aligned: the "max error" column ends at the same position on every line
    end = lines[1].index("max error") + len("max error")
    assert all(line[end - 1] != " " and line[end] == " " for line in lines[2:])
    assert report.max_error == max(report.errors.values())


@pytest.mark.parametrize("kw,message", [
    ({"eps": 0}, "eps: expected a positive number"),
    ({"tol": -1.0}, r"tol: expected a relative tolerance in \(0, 1\)"),
    ({"max_entries": 0}, "max_entries: expected an integer >= 1"),
])
def test_gradcheck_refuses_bad_arguments(gen_dir, kw, message):
    k = kernel("xor_bce", "float64", gen_dir)
    _, (p, X, Y) = case("xor_bce")
    with pytest.raises(InputError, match=message):
        gradcheck(k, p, X, Y, **kw)


# ---------------------------------------------------------------------------------------------
# the oracle: exactness, independence, limits
# ---------------------------------------------------------------------------------------------

def test_oracle_is_exact_on_a_hand_computed_relu_network():
    # z1 = 2x + 1/2, a1 = relu(z1), out = 3 a1 - 1, L = mean over 2 samples of 1/2 (out - y)^2.
    # sample 1: x = 1, z1 = 5/2, out = 13/2, y = 1, r = 11/2.  sample 2: x = -1, z1 = -3/2 (dead),
    # out = -1, y = 1/2, r = -3/2.  L = (121/4 + 9/4) / 4 = 65/8; dL/dout = r/2 = 11/4, -3/4;
    # dW2 = 11/4 * 5/2 = 55/8, db2 = 11/4 - 3/4 = 2, dW1 = 11/4 * 3 * 1 = 33/4, db1 = 33/4,
    # dX = (11/4 * 3 * 2, 0) = (33/2, 0).
    net = symbp.mlp([1, 1, 1], ["relu", "identity"], "mse", name="hand")
    p = {"W1": np.array([[2.0]]), "b1": np.array([0.5]), "W2": np.array([[3.0]]), "b2": np.array([-1.0])}
    X, Y = np.array([[1.0], [-1.0]]), np.array([[1.0], [0.5]])
    loss, g = oracle_gradients(net, p, X, Y, exact=True, input_grad=True)
    R = sp.Rational
    assert loss == R(65, 8) and isinstance(loss, sp.Rational)
    want = {"W1": R(33, 4), "b1": R(33, 4), "W2": R(55, 8), "b2": R(2)}
    for k, v in want.items():
        assert g[k].ravel()[0] == v and isinstance(g[k].ravel()[0], sp.Rational), k
    assert list(g["X"].ravel()) == [R(33, 2), 0]
    floats = oracle_gradients(net, p, X, Y, input_grad=True)[1]
    assert floats["W2"].dtype == np.float64 and floats["W2"][0, 0] == 6.875


def test_oracle_stays_rational_for_non_dyadic_inputs():
    # 0.1 is not 1/10 in binary; the oracle uses the float's exact value and stays exact
    net = symbp.mlp([2, 3, 2], [{"name": "leaky_relu", "slope": 0.1}, "identity"], "sse", "sum", name="lr")
    p, X, Y = random_batch(net, 3, seed=5)
    X[0, 0] = 0.1
    loss, g = oracle_gradients(net, p, X, Y, exact=True)
    assert isinstance(loss, sp.Rational)
    assert all(isinstance(v, sp.Rational) for arr in g.values() for v in arr.ravel())
    assert sp.Rational(0.1) != sp.Rational(1, 10)   # the exact binary value is what is used


def test_oracle_per_parameter_route_equals_the_all_symbol_expression():
    net = symbp.mlp([1, 2, 1], ["tanh", "sigmoid"], "bce", name="tiny")
    p, X, Y = random_batch(net, 2, seed=2)
    expr, symbols = oracle_loss_expression(net, X, Y)
    values = {}
    for key, arr in p.items():
        flat_syms = np.array(symbols[key], dtype=object).ravel()
        values.update({s: sp.Rational(float(v)) for s, v in zip(flat_syms, arr.ravel())})
    _, g = oracle_gradients(net, p, X, Y, exact=True)
    for key in p:
        for s, got in zip(np.array(symbols[key], dtype=object).ravel(), g[key].ravel()):
            want = sp.diff(expr, s).xreplace(values).evalf(40)
            assert abs(want - got) <= sp.Float("1e-25") * max(1, abs(want)), (key, s)
    value_expr, none = oracle_loss_expression(net, X, Y, params=p)
    assert none == {} and not value_expr.free_symbols


def test_oracle_entries_subset_matches_the_full_result():
    net = NETS["softplus_exp"]()
    p, X, Y = random_batch(net, BATCH)
    _, full = oracle("softplus_exp")
    _, part = oracle_gradients(net, p, X, Y, input_grad=True, entries={"W2": [(1, 2)], "X": [(2, 0)]})
    assert part["W2"][1, 2] == full["W2"][1, 2] and part["X"][2, 0] == full["X"][2, 0]
    assert np.isnan(part["W1"]).all() and np.isnan(part["W2"]).sum() == part["W2"].size - 1
    with pytest.raises(InputError, match=r"entries\['W2'\]: index \(2, 0\) outside shape \(2, 3\)"):
        oracle_gradients(net, p, X, Y, entries={"W2": [(2, 0)]})


def test_oracle_refuses_large_networks_and_batches():
    big = symbp.mlp([20, 20, 1], ["tanh", "sigmoid"], "bce", name="big")
    p, X, Y = random_batch(big, 2)
    with pytest.raises(SymbpError, match="oracle is for small sizes .* got 441 parameters"):
        oracle_gradients(big, p, X, Y)
    small = NETS["xor_bce"]()
    p, X, Y = random_batch(small, 17)
    with pytest.raises(SymbpError, match="batch 17"):
        oracle_gradients(small, p, X, Y)


def test_oracle_refuses_bad_arrays():
    net = NETS["xor_bce"]()
    p, X, Y = random_batch(net, 2)
    with pytest.raises(InputError, match=r"W1: expected shape \(3, 2\), got \(2, 3\)"):
        oracle_gradients(net, {**p, "W1": p["W1"].T}, X, Y)
    with pytest.raises(InputError, match="missing \\['b2'\\]"):
        oracle_gradients(net, {k: v for k, v in p.items() if k != "b2"}, X, Y)
    X[0, 0] = np.nan
    with pytest.raises(InputError, match="X: expected finite values"):
        oracle_gradients(net, p, X, Y)


def test_oracle_and_torch_do_not_read_the_derivation(monkeypatch):
    trees = [ast.parse(path.read_text()) for path in sorted((ROOT / "symbp" / "verify").glob("*.py"))]
    assert len(trees) >= 3
    imported = {(n.module or "") for t in trees for n in ast.walk(t) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for t in trees for n in ast.walk(t) if isinstance(n, (ast.Import, ast.ImportFrom))
                 for a in n.names}
    assert not any("derive" in m or m in ("derivation", "simplify") for m in imported), imported
    derive_mod = importlib.import_module("symbp.derivation.chain")

    def broken(*a, **k):
        raise AssertionError("the oracle must not derive")

    monkeypatch.setattr(derive_mod, "derive", broken)
    monkeypatch.setattr(symbp, "derive", broken)
    net = symbp.mlp([2, 2, 1], ["tanh", "sigmoid"], "bce", name="indep")
    p, X, Y = random_batch(net, 2)
    loss, g = oracle_gradients(net, p, X, Y)
    assert np.isfinite(loss) and set(g) == set(p)


def test_oracle_relu_kink_takes_derivative_zero():
    # z1 = 0 exactly for the one sample: relu'(0) = 0, so no gradient reaches W1, b1
    net = symbp.mlp([1, 1, 1], ["relu", "identity"], "mse", name="kink")
    p = {"W1": np.array([[1.0]]), "b1": np.array([-2.0]), "W2": np.array([[1.0]]), "b2": np.array([0.0])}
    _, g = oracle_gradients(net, p, np.array([[2.0]]), np.array([[1.0]]), exact=True)
    assert g["W1"][0, 0] == 0 and g["b1"][0] == 0 and g["b2"][0] == -1


@pytest.mark.parametrize("text", ["z * sigmoid(z)", "abs(z) + max(z, 0) / 2", "log(1 + z**2) - atan(z)",
                                  "sqrt(1 + z**2) * cosh(z / 3)"])
def test_torch_translates_user_activations(text):
    pytest.importorskip("torch")
    net = symbp.mlp([2, 3, 2], ["user", "identity"], "mse", define={"user": text}, name="user")
    p, X, Y = random_batch(net, 3, seed=4)
    lt, gt = torch_gradients(net, p, X, Y, input_grad=True)
    lo, go = oracle_gradients(net, p, X, Y, input_grad=True)
    assert abs(lt - lo) <= 1e-12 * max(1.0, abs(lo))
    for k in go:
        np.testing.assert_allclose(gt[k], go[k], rtol=1e-9, atol=1e-12 * max(1.0, np.max(np.abs(go[k]))))


def test_torch_reference_mean_is_sum_over_batch():
    # mean vs sum: the same network with reduction "sum" has B times the loss and gradients
    pytest.importorskip("torch")
    mean = symbp.mlp([2, 3, 2], ["sigmoid", "softmax"], "ce", name="m")
    total = symbp.mlp([2, 3, 2], ["sigmoid", "softmax"], "ce", "sum", name="s")
    p, X, Y = random_batch(mean, 5)
    lm, gm = torch_gradients(mean, p, X, Y)
    ls, gs = torch_gradients(total, p, X, Y)
    assert ls == pytest.approx(5 * lm, rel=1e-14)
    for k in gm:
        np.testing.assert_allclose(gs[k], 5 * gm[k], rtol=1e-13, atol=1e-15)


def test_oracle_follows_the_loss_and_reduction_conventions():
    # exact Rationals: sse = 2 * mse per sample, and the sum over a batch of 3 = 3 * the mean
    nets = {(loss, red): symbp.mlp([2, 3, 2], ["relu", "identity"], loss, red, name="conv")
            for loss in ("mse", "sse") for red in ("mean", "sum")}
    p, X, Y = random_batch(nets["mse", "mean"], 3, seed=6)
    res = {key: oracle_gradients(net, p, X, Y, exact=True) for key, net in nets.items()}
    base_loss, base = res["mse", "mean"]
    for (loss, red), (l, g) in res.items():
        factor = (2 if loss == "sse" else 1) * (3 if red == "sum" else 1)
        assert l == factor * base_loss
        assert all((g[k] == factor * base[k]).all() for k in base)
    assert any(v != 0 for v in base["W1"].ravel())


# ---------------------------------------------------------------------------------------------
# relu_at_zero: the batch hits the kink, and the convention changes the answer
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["relu1_mse", "leaky1_nobias", "relu0_kinks"])
def test_kink_batch_hits_zero_and_the_convention_matters(name):
    """The kink batches have first-layer pre-activations exactly 0, and there the other
    relu_at_zero gives other gradients (so the kernel/oracle/torch agreement above is about the
    convention, not a coincidence)."""
    net, (p, X, Y) = case(name)
    z1 = X @ p["W1"].T + (p["b1"] if "b1" in p else 0)
    assert np.sum(z1 == 0) >= 2, z1
    other = dataclasses.replace(net, relu_at_zero=1 - net.relu_at_zero)
    _, g = oracle(name)
    _, g_other = oracle_gradients(other, p, X, Y, input_grad=True)
    assert any(not np.allclose(g[k], g_other[k]) for k in g)


@pytest.mark.parametrize("at_zero", [0, 1])
def test_oracle_relu_kink_takes_the_networks_convention(at_zero):
    # z1 = 0 exactly for the one sample: relu'(0) = relu_at_zero reaches W1 (x = 2) and b1
    net = symbp.mlp([1, 1, 1], ["relu", "identity"], "mse", name="kink", relu_at_zero=at_zero)
    p = {"W1": np.array([[1.0]]), "b1": np.array([-2.0]), "W2": np.array([[1.0]]), "b2": np.array([0.0])}
    _, g = oracle_gradients(net, p, np.array([[2.0]]), np.array([[1.0]]), exact=True)
    # L = (a2 - y)^2 / 2 with a2 = 0, y = 1: dL/da2 = -1, dL/dz1 = -relu'(0)
    assert g["W1"][0, 0] == -2 * at_zero and g["b1"][0] == -at_zero and g["b2"][0] == -1
    if importlib.util.find_spec("torch") is not None:
        _, gt = torch_gradients(net, p, np.array([[2.0]]), np.array([[1.0]]))
        assert gt["W1"][0, 0] == -2 * at_zero and gt["b1"][0] == -at_zero


@pytest.mark.parametrize("jit", [pytest.param(True, marks=pytest.mark.jit), False], ids=["jit", "python"])
def test_udl_toy_outside_0_1_is_not_finite(gen_dir, jit):
    """bce after a ReLU is computed from h: at h = 0 (f <= 0) it is a log of 0 and a division by
    0: the loss and gradients are inf / NaN, as in NumPy and torch (the kernels follow NumPy's
    error model), never an exception; compiling works although compile() warms up at that very
    point; inside (0, 1) it is finite (the tests above)."""
    net, (p, X, Y) = case("udl_toy")
    k = kernel("udl_toy", "float64", gen_dir / ("jit" if jit else "py"), jit=jit).compile()
    assert np.isfinite(k.loss_and_grad(p, X, Y)[0])
    loss, grads = k.loss_and_grad(p, -X, Y)   # f = 0.1 - (0.4 x1 - 0.2 x2) < 0 for these rows: h = 0
    assert not np.isfinite(loss)
    # dL/dx passes through ReLU' = 0 there: masked to 0 (a step-masked factor is 0 even where the
    # value it masks is inf), as the derivative of the network's other side is
    assert np.all(k.input_grad(p, -X, Y) == 0)
    if importlib.util.find_spec("torch") is not None:
        assert not np.isfinite(torch_gradients(net, p, -X, Y)[0])


def test_sample_is_one_batch_for_a_network_its_graph_and_their_kernels(gen_dir):
    # the one random batch of `symbp check`, `symbp bench` and the tests: the same numbers for an
    # MLP and its chain graph (inputs in order, then the target), and for a kernel of either
    from symbp.verify import sample
    for name in ("xor_bce", "tanh_softmax_ce", "relu_mse"):
        net = NETS[name]()
        X, Y = sample(net, 5, seed=7)
        inputs, target = sample(symbp.from_network(net), 5, seed=7)
        assert list(inputs) == ["x"] and np.array_equal(inputs["x"], X) and np.array_equal(target, Y)
        assert X.shape == (5, net.inputs) and Y.shape == (5, net.sizes[-1]) and X.dtype == np.float64
        if net.loss.name in ("bce", "ce"):      # targets the loss accepts: 0/1, one-hot rows for ce
            assert set(np.unique(Y)) <= {0.0, 1.0} and (net.loss.name == "bce" or np.all(Y.sum(axis=1) == 1))
    k = kernel("xor_bce", "float32", gen_dir / "py", jit=False)
    X32, Y32 = sample(k, 3, seed=1, dtype=k.dtype)
    X64, _ = sample(NETS["xor_bce"](), 3, seed=1)
    assert X32.dtype == np.float32 and np.array_equal(X32, X64.astype(np.float32))
    with pytest.raises(InputError, match="sample: batch: expected an integer >= 1, got 0"):
        sample(k, 0)

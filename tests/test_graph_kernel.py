"""Graph kernels: equal to the MLP kernels on MLPs, verified three ways (finite differences, the
full-expansion SymPy oracle, PyTorch) on fixed DAGs, input checks, float32, deterministic and
atomic output, the command line, and a few Numba-compiled kernels."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest

import symbp
from symbp.codegen.graph_emit import emit_graph, generate_graph
from symbp.errors import InputError, SymbpError
from symbp.model.graph import from_network, graph, load_graph
from symbp.verify import gradcheck, oracle_gradients, sample, torch_gradients
from symbp.derivation.graph import derive_graph
from test_graph_spec import run_cli

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "examples" / "specs" / "graphs"
SPEC_NAMES = sorted(p.stem for p in SPECS.glob("*.toml"))


def kernel(g, tmp, dtype="float64", jit=False):
    return generate_graph(derive_graph(g), dtype=dtype, out_dir=tmp, jit=jit)


def perturbed(k, seed=0, scale=0.1):
    """init_params plus noise, so biases are nonzero and every gradient term is exercised."""
    params = k.init_params(seed)
    rng = np.random.default_rng(seed + 100)
    return {key: (v + rng.normal(0, scale, v.shape)).astype(k.dtype) for key, v in params.items()}


def close(a, b, rtol):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(np.maximum(np.abs(a), np.abs(b)), 1e-8))) <= rtol


@pytest.fixture(scope="module")
def gen(tmp_path_factory):
    return tmp_path_factory.mktemp("graph_gen")


@pytest.fixture(scope="module")
def spec_kernels(gen):
    return {name: kernel(load_graph(SPECS / f"{name}.toml"), gen) for name in SPEC_NAMES}


# --- the MLP as a special case ----------------------------------------------------------------

MLPS = [
    ([2, 3, 1], ["sigmoid", "sigmoid"], "bce", "mean", None),
    ([3, 4, 3], ["tanh", "softmax"], "ce", "mean", None),
    ([2, 3, 2, 2], ["relu", {"name": "leaky_relu", "slope": 0.1}, "identity"], "mse", "sum", None),
    ([3, 4, 2], ["swish", "identity"], "sse", "sum", {"swish": "z * sigmoid(z)"}),
    ([2, 2, 2], ["softplus", "exp"], "mse", "mean", None),
    ([2, 3, 2], ["tanh", "identity"], "mse", "mean", None, {"bias": [False, True]}),   # dense without bias
]


@pytest.mark.parametrize("case", MLPS, ids=["xor", "softmax_ce", "relu_leaky", "swish", "softplus_exp", "nobias"])
def test_graph_of_an_mlp_equals_the_mlp_kernel(gen, case):
    sizes, acts, loss, reduction, define, *opts = case
    net = symbp.mlp(sizes, acts, loss, reduction, name="mlp_" + loss + str(len(sizes)) + ("_opts" if opts else ""),
                    define=define, **(opts[0] if opts else {}))
    mk = symbp.generate(symbp.derive(net), out_dir=gen / "mlp", jit=False)
    gk = kernel(from_network(net, input_grad=True), gen)
    params = perturbed(mk, seed=len(sizes))
    rng = np.random.default_rng(1)
    X = rng.normal(size=(5, sizes[0]))
    Y = (np.eye(sizes[-1])[rng.integers(0, sizes[-1], 5)] if loss in ("ce", "bce") and sizes[-1] > 1
         else rng.integers(0, 2, (5, sizes[-1])).astype(float) if loss == "bce" else rng.normal(size=(5, sizes[-1])))
    ml, mg = mk.loss_and_grad(params, X, Y)
    gl, gg, gi = gk.loss_and_input_grads(params, X, Y)
    assert abs(ml - gl) <= 1e-12 * max(1.0, abs(ml))
    assert list(gg) == list(mg)
    for key in mg:
        assert close(gg[key], mg[key], 1e-10), key
    assert close(gi["x"], mk.input_grad(params, X, Y), 1e-10)
    assert close(gk.forward(params, X), mk.forward(params, X), 1e-12)


# --- the MLP emitter's strategies on graphs: loops/BLAS per dense node, vector activations ----

# 4x12 (48 weights) loops, 12x70 and 70x3 BLAS (emit.LOOPS_MAX = 64); B = 40: 40 x 70 entries of
# the tanh layer reach VECTOR_MIN, so it takes NumPy's ufuncs, the sigmoid layer (40 x 12) does not
MIXED = ([4, 12, 70, 3], ["sigmoid", "tanh", "softmax"], "ce")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("batch", [3, 40])
def test_mixed_strategies_equal_the_mlp_kernel(gen, dtype, batch):
    sizes, acts, loss = MIXED
    net = symbp.mlp(sizes, acts, loss, name="mixed")
    mk = symbp.generate(symbp.derive(net), dtype=dtype, out_dir=gen / "mlp", jit=False)
    gk = kernel(from_network(net), gen, dtype=dtype)
    assert gk.module.STRATEGIES == {"z1": "loops", "z2": "blas", "z3": "blas"}
    assert gk.module.STRATEGIES == mk.module.STRATEGIES
    params = perturbed(mk)
    rng = np.random.default_rng(batch)
    X = rng.normal(size=(batch, sizes[0])).astype(dtype)
    Y = np.eye(sizes[-1], dtype=dtype)[rng.integers(0, sizes[-1], batch)]
    ml, mg = mk.loss_and_grad(params, X, Y)
    gl, gg = gk.loss_and_grad(params, X, Y)
    rtol = 1e-12 if dtype == "float64" else 1e-5
    assert abs(ml - gl) <= rtol * max(1.0, abs(ml))
    for key in mg:
        assert close(gg[key], mg[key], 100 * rtol), key


def test_loops_and_blas_nodes_are_emitted_as_chosen():
    net = symbp.mlp(MIXED[0], MIXED[1], MIXED[2], name="mixed")
    src = emit_graph(derive_graph(from_network(net)), "cpu", "float64")
    assert "# z1 (loops: 12x4 = 48 weights <= LOOPS_MAX 64" in src
    assert "# z2 (blas: 70x12 = 840 weights > LOOPS_MAX 64" in src
    assert "np.dot(v_x, p_W1.T" not in src and "np.dot(v_a1, p_W2.T, v_z2)" in src
    # the loops node's weight gradient is accumulated in the pass that computes g_z1, and every
    # bias gradient row by row (no strided column pass)
    assert "g_W1[j, q] += " in src and "np.dot(g_z1.T" not in src
    assert "g_b1[j] += g_z1[s, j]" in src and "g_b3[j] += g_z3[s, j]" in src
    assert "for s in range(B):\n            acc += " not in src
    # the tanh layer: NumPy's ufunc from VECTOR_MIN entries on, the bias add fused with it below
    assert "v_a2[...] = np.tanh(v_z2)" in src and "if B * 70 < VECTOR_MIN:" in src


def test_bound_step_and_fused_optimizers_of_a_graph_kernel(gen):
    """bind(): one packed call per step, as for the MLP Kernel; with an optimizer the same
    fused update as the MLP kernel's, step for step."""
    net = symbp.mlp([3, 5, 2], ["tanh", "softmax"], "ce", name="bound")
    mk = symbp.generate(symbp.derive(net), out_dir=gen / "mlp", jit=False)
    g = graph("bound_dag")            # two inputs: the packed step takes both, then the target
    g.input("u", 2)
    g.input("v", 1)
    c = g.concat("c", "u", "v")
    h = g.dense("h", c, 5, weight="W1", bias="b1")
    a = g.activation("a", h, "tanh")
    z = g.dense("z", a, 2, weight="W2", bias="b2")
    o = g.activation("o", z, "softmax")
    g.input("y", 2)
    g.loss("loss", o, "y", "ce")
    gk = kernel(g.build(), gen)
    params = perturbed(mk)
    rng = np.random.default_rng(3)
    X = rng.normal(size=(6, 3))
    Y = np.eye(2)[rng.integers(0, 2, 6)]
    inputs = {"u": X[:, :2].copy(), "v": X[:, 2:].copy()}
    step = gk.bind(params, inputs, Y)
    loss, grads = gk.loss_and_grad(params, inputs, Y)
    assert step() == pytest.approx(loss, rel=1e-14)
    for key in grads:
        assert np.array_equal(step.grads[key], grads[key]), key
    step.theta -= 0.5 * step.gtheta            # sgd on the packed parameters, in place
    after = {k: v.copy() for k, v in params.items()}
    gk.sgd_step(after, inputs, Y, 0.5)
    for key in params:
        assert np.allclose(step.params[key], after[key], rtol=1e-14, atol=0), key
    ms = mk.bind(params, X, Y, optimizer=symbp.Adam(lr=0.05))
    gs = gk.bind(params, inputs, Y, optimizer=symbp.Adam(lr=0.05))
    for _ in range(3):
        assert gs() == pytest.approx(ms(), rel=1e-12)
    assert np.allclose(gs.theta, ms.theta, rtol=1e-12, atol=1e-15) and gs.steps == 3
    with pytest.raises(InputError, match=r"^inputs\['v'\]: expected shape \(4, 1\), got \(4, 2\)"):
        gs.rebatch({"u": X[:4, :2].copy(), "v": X[:4, :2].copy()}, Y[:4])
    gs.rebatch({"u": X[:4, :2].copy(), "v": X[:4, 2:].copy()}, Y[:4])
    assert np.isfinite(gs())


# --- fixed DAGs, three ways -------------------------------------------------------------------

@pytest.mark.parametrize("name", SPEC_NAMES)
def test_example_graphs_pass_finite_differences(spec_kernels, name):
    k = spec_kernels[name]
    params = perturbed(k)
    inputs, target = sample(k, 4, 0, np.float64)
    report = gradcheck(k, params, inputs, target)
    assert report.ok, str(report)
    checked = {r.name for r in report.rows}
    assert checked == set(k.param_shapes) | {x.name for x in k.graph.grad_inputs}


@pytest.mark.parametrize("name", SPEC_NAMES)
def test_example_graphs_match_torch(spec_kernels, name):
    pytest.importorskip("torch")
    k = spec_kernels[name]
    params = perturbed(k)
    inputs, target = sample(k.graph, 4, 1, np.float64)
    tl, tg = torch_gradients(k.graph, params, inputs, target)
    loss, grads, igrads = k.loss_and_input_grads(params, inputs, target)
    assert abs(tl - loss) <= 1e-12 * max(1.0, abs(tl))
    assert list(tg) == list(grads) + list(igrads)
    for key, v in {**grads, **igrads}.items():
        assert close(v, tg[key], 1e-10), key


def tiny_gated():
    """Branch at x (two dense nodes), an expression layer, a user activation, a multiply whose
    input y branches, softmax + ce; x marked grad."""
    g = graph("tiny_gated", activations={"swish": "z * sigmoid(z)"})
    g.input("x", 2, grad=True)
    h, gg = g.dense("h", "x", 2), g.dense("g", "x", 2)
    y = g.expression("y", "h * sigmoid(g)", ["h", "g"])
    prod = g.multiply("prod", g.activation("s", y, "swish"), y)
    g.activation("probs", g.dense("out", prod, 2), "softmax")
    g.input("onehot", 2)
    g.loss("loss", "probs", "onehot", "ce")
    return g.build()


def tiny_relu():
    """A ReLU residual with one weight used as W and W^T: rational, so the oracle is exact."""
    g = graph("tiny_relu")
    g.input("x", 2, grad=True)
    r = g.activation("r", g.dense("h", "x", 2, weight="W"), "relu")
    o = g.dense("o", g.add("a", "x", r), 2, weight="W", transpose=True, bias=False)
    g.input("t", 2)
    g.loss("loss", o, "t", "sse", "sum")
    return g.build()


def tiny_towers():
    """Two inputs, concat of a tower and a raw input, sigmoid + bce."""
    g = graph("tiny_towers")
    g.input("u", 2)
    g.input("v", 1, grad=True)
    c = g.concat("c", g.activation("tu", g.dense("du", "u", 1), "tanh"), "v")
    g.activation("p", g.dense("z", c, 1), "sigmoid")
    g.input("y", 1)
    g.loss("loss", "p", "y", "bce")
    return g.build()


@pytest.mark.parametrize("build", [tiny_gated, tiny_relu, tiny_towers], ids=lambda f: f.__name__)
def test_tiny_graphs_match_the_oracle(gen, build):
    g = build()
    k = kernel(g, gen)
    params = perturbed(k, scale=0.3)
    inputs, target = sample(g, 2, 3, np.float64)
    ol, og = oracle_gradients(g, params, inputs, target)
    loss, grads, igrads = k.loss_and_input_grads(params, inputs, target)
    assert abs(ol - loss) <= 1e-12 * max(1.0, abs(ol))
    assert list(og) == list(grads) + list(igrads)
    for key, v in {**grads, **igrads}.items():
        assert close(v, og[key], 1e-10), key


def test_oracle_is_exact_for_a_rational_graph(gen):
    g = tiny_relu()
    k = kernel(g, gen)
    params = {k_: np.round(v * 8) / 8 for k_, v in perturbed(k).items()}   # dyadic values
    X = np.array([[0.5, -1.25], [1.0, 0.75]])
    T = np.array([[1.0, 0.0], [-0.5, 2.0]])
    ol, og = oracle_gradients(g, params, X, T, exact=True)
    assert ol.is_Rational and all(v.is_Rational for a in og.values() for v in a.flat)
    loss, grads = k.loss_and_grad(params, X, T)
    assert float(ol) == loss
    for key in grads:
        assert np.array_equal(og[key].astype(np.float64), grads[key]), key


def test_one_face_serves_graphs(gen):
    # symbp.verify's oracle and torch reference take a graph as they take a network: one dict of
    # parameter and input gradients (the inputs marked grad after the parameters); entries
    # restrict the oracle
    g = tiny_towers()
    k = kernel(g, gen)
    params = perturbed(k, scale=0.3)
    inputs, target = sample(g, 2, 3, np.float64)
    loss, grads = oracle_gradients(g, params, inputs, target)
    assert list(grads) == list(g.param_shapes()) + ["v"]
    _, part = oracle_gradients(g, params, inputs, target, entries={"W_z": [(0, 1)], "v": [(1, 0)]})
    assert part["W_z"][0, 1] == grads["W_z"][0, 1] and part["v"][1, 0] == grads["v"][1, 0]
    assert np.isnan(part["W_z"][0, 0]) and np.isnan(part["v"][0, 0]) and np.isnan(part["W_du"]).all()
    with pytest.raises(InputError, match=r"entries\['v'\]: index \(2, 0\) outside shape \(2, 1\)"):
        oracle_gradients(g, params, inputs, target, entries={"v": [(2, 0)]})
    if importlib.util.find_spec("torch"):
        tl, tg = torch_gradients(g, params, inputs, target)
        assert abs(tl - loss) <= 1e-12 * max(1.0, abs(loss)) and list(tg) == list(grads)
        assert all(close(tg[key], grads[key], 1e-10) for key in grads)


def test_oracle_refuses_large_graphs(spec_kernels):
    g = spec_kernels["residual"].graph
    params = spec_kernels["residual"].init_params(0)
    with pytest.raises(SymbpError, match="small sizes"):
        oracle_gradients(g, params, np.zeros((20, 2)), np.zeros((20, 1)))


# --- the kernel's face ------------------------------------------------------------------------

def test_inputs_dict_or_single_array(spec_kernels):
    k = spec_kernels["residual"]
    params = k.init_params(0)
    X = np.random.default_rng(0).normal(size=(3, 2))
    T = np.zeros((3, 1))
    assert k.loss(params, X, T) == k.loss(params, {"x": X}, T)
    values = k.values(params, X)
    assert set(values) == {"x", "h", "a", "f1", "f1a", "f2", "r", "out"}
    assert np.allclose(values["r"], values["a"] + values["f2"])


BAD_CALLS = [
    ("missing input", lambda I, T: ({"u": I["u"]}, T), "inputs: missing ['v']"),
    ("extra input", lambda I, T: ({**I, "w": I["u"]}, T), "unexpected ['w']"),
    ("one array for two inputs", lambda I, T: (I["u"], T), "inputs: expected a dict with keys u, v"),
    ("wrong width", lambda I, T: ({**I, "v": I["v"][:, :1]}, T), "inputs['v']: expected shape (4, 2)"),
    ("rows differ", lambda I, T: ({**I, "v": I["v"][:3]}, T), "inputs['v']: expected shape (4, 2)"),
    ("float32", lambda I, T: ({**I, "u": I["u"].astype(np.float32)}, T), "expected dtype float64"),
    ("target shape", lambda I, T: (I, T[:, :0]), "target: expected shape (4, 1)"),
    ("empty batch", lambda I, T: ({k: v[:0] for k, v in I.items()}, T[:0]), "expected at least one row"),
    ("list", lambda I, T: ({**I, "u": I["u"].tolist()}, T), "expected an array of shape (batch, 3)"),
]


@pytest.mark.parametrize("name,mutate,message", BAD_CALLS, ids=[c[0] for c in BAD_CALLS])
def test_bad_arrays_are_refused(spec_kernels, name, mutate, message):
    k = spec_kernels["two_tower"]
    inputs, target = sample(k.graph, 4, 0, np.float64)
    inputs, target = mutate(inputs, target)
    with pytest.raises(InputError) as e:
        k.loss_and_grad(k.init_params(0), inputs, target)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_bad_params_and_no_input_grads(spec_kernels):
    k = spec_kernels["autoencoder"]
    X = np.zeros((2, 6))
    p = k.init_params(0)
    del p["b_dec"]
    with pytest.raises(InputError, match=r"missing \['b_dec'\]"):
        k.loss_and_grad(p, X, X)
    p = k.init_params(0)
    p["W"] = p["W"].T.copy()
    with pytest.raises(InputError, match=r"params\['W'\]: expected shape \(3, 6\)"):
        k.loss_and_grad(p, X, X)
    with pytest.raises(InputError, match="no input of graph 'autoencoder' is marked grad"):
        k.input_grads(k.init_params(0), X, X)


def test_sgd_step_is_theta_minus_lr_grad(spec_kernels):
    k = spec_kernels["autoencoder"]
    X = np.random.default_rng(0).normal(size=(5, 6))
    p = perturbed(k)
    _, g = k.loss_and_grad(p, X, X)
    before = {key: v.copy() for key, v in p.items()}
    k.sgd_step(p, X, X, 0.25)
    for key in p:
        np.testing.assert_allclose(p[key], before[key] - 0.25 * g[key], rtol=1e-12, atol=1e-15)


def test_shared_gradient_is_the_sum_of_its_uses(spec_kernels):
    """eq. 14.47 numerically: untie W (two copies), the tied gradient is the sum of the two."""
    k = spec_kernels["autoencoder"]
    g = graph("untied")
    g.input("x", 6)
    code = g.activation("code", g.dense("enc", "x", 3, weight="W", bias="b_enc"), "tanh")
    g.dense("dec", code, 6, weight="W2", transpose=True, bias="b_dec")
    g.input("x_target", 6)
    g.loss("loss", "dec", "x_target", "mse")
    ku = kernel(g.build(), k.path.parent.parent)
    p = perturbed(k)
    X = np.random.default_rng(4).normal(size=(4, 6))
    _, tied = k.loss_and_grad(p, X, X)
    _, untied = ku.loss_and_grad({**p, "W2": p["W"].copy()}, X, X)
    assert close(tied["W"], untied["W"] + untied["W2"], 1e-12)


def test_float32_kernel_stays_float32(gen):
    g = tiny_gated()
    k32, k64 = kernel(g, gen, "float32"), kernel(g, gen, "float64")
    params = perturbed(k64)
    inputs, target = sample(g, 3, 0, np.float64)
    p32 = {key: v.astype(np.float32) for key, v in params.items()}
    i32 = {key: v.astype(np.float32) for key, v in inputs.items()}
    loss32, g32, gi32 = k32.loss_and_input_grads(p32, i32, target.astype(np.float32))
    loss64, g64, gi64 = k64.loss_and_input_grads(params, inputs, target)
    assert all(v.dtype == np.float32 for v in list(g32.values()) + list(gi32.values()))
    assert abs(loss32 - loss64) < 1e-5
    for key in g64:
        assert np.allclose(g32[key], g64[key], rtol=1e-4, atol=1e-6), key
    assert gradcheck(k32, p32, i32, target.astype(np.float32)).ok


# --- emitted source ---------------------------------------------------------------------------

def test_emission_is_deterministic_and_readable():
    g = load_graph(SPECS / "autoencoder.toml")
    a = emit_graph(derive_graph(g), "cpu", "float64")
    b = emit_graph(derive_graph(load_graph(SPECS / "autoencoder.toml")), "cpu", "float64")
    assert a == b
    assert g.digest in a and f"symbp {symbp.__version__}" in a
    # decoder: W^T per sample; 6x3 weights are fused per-sample loops (emit.LOOPS_MAX), W read transposed
    assert "acc0 += p_W[k, j]*v_code[s, k]" in a and "# dec (loops: " in a
    assert "# g_W = g_W__dec + g_W__enc   [shared_sum" in a
    assert "@numba.njit(cache=True, error_model=\"numpy\")" in a
    compile(a, "autoencoder.py", "exec")


GOLDENS = [(name, dtype) for name in SPEC_NAMES for dtype in ("float64", "float32")]


@pytest.mark.parametrize("name,dtype", GOLDENS, ids=[f"{n}-{d}" for n, d in GOLDENS])
def test_golden_bytes(name, dtype):
    """The example graphs' kernels are kept under generated/<graph>/graph_cpu_<dtype>.py; a fresh
    emission gives the same bytes. Refresh after an intended emitter change with
    SYMBP_UPDATE_GOLDENS=1 python -m pytest tests/test_graph_kernel.py -k golden"""
    import os
    from symbp.codegen.load import write
    source = emit_graph(derive_graph(load_graph(SPECS / f"{name}.toml")), "cpu", dtype)
    golden = ROOT / "generated" / name / f"graph_cpu_{dtype}.py"
    if os.environ.get("SYMBP_UPDATE_GOLDENS"):
        golden.unlink(missing_ok=True)     # replaced whatever it holds: no .edited backup
        write(golden, source)
    assert golden.exists(), f"missing golden {golden}: run with SYMBP_UPDATE_GOLDENS=1"
    assert golden.read_bytes() == source.encode("utf-8"), f"{golden} differs from a fresh emission"


def test_generate_writes_atomically_and_names_the_file(gen):
    g = tiny_towers()
    k = generate_graph(derive_graph(g), out_dir=gen / "atomic", jit=False)
    assert k.path == gen / "atomic" / "tiny_towers" / "graph_cpu_float64.py"
    assert [p.name for p in k.path.parent.iterdir() if p.suffix == ".tmp"] == []
    stamp = k.path.stat().st_mtime_ns
    generate_graph(derive_graph(g), out_dir=gen / "atomic", jit=False)
    assert k.path.stat().st_mtime_ns == stamp        # equal bytes: the file is left alone


@pytest.mark.parametrize("kw,message", [(dict(dtype="float16"), "dtype"), (dict(target="cuda"), "target")])
def test_bad_generate_arguments_write_nothing(tmp_path, kw, message):
    with pytest.raises(SymbpError, match=message):
        generate_graph(derive_graph(tiny_towers()), out_dir=tmp_path, jit=False, **kw)
    assert list(tmp_path.iterdir()) == []


def test_printer_parenthesises_powers_in_denominators(gen):
    """a / (1 + b*b) prints b**2 in a denominator: (b*b), never /b*b."""
    g = graph("denominator")
    g.input("a", 1, grad=True)
    g.input("b", 1, grad=True)
    e = g.expression("e", "a / (1 + b*b)", ["a", "b"])
    g.input("t", 1)
    g.loss("loss", e, "t", "mse")
    k = kernel(g.build(), gen)
    a, b, t = np.array([[0.7]]), np.array([[1.3]]), np.array([[0.2]])
    _, _, gi = k.loss_and_input_grads({}, {"a": a, "b": b}, t)
    e_val = 0.7 / (1 + 1.3 ** 2)
    assert np.isclose(gi["a"][0, 0], (e_val - 0.2) / (1 + 1.3 ** 2), rtol=1e-12)
    assert np.isclose(gi["b"][0, 0], (e_val - 0.2) * -0.7 * 2 * 1.3 / (1 + 1.3 ** 2) ** 2, rtol=1e-12)


def test_sigmoid_forms_rewrites_only_what_it_makes_stable():
    import sympy as sp
    from symbp.derivation.simplify import _sigmoid, sigmoid_forms
    x, y = sp.symbols("x y", real=True)
    out = sigmoid_forms(sp.exp(x) * y / (sp.exp(x) + 1) ** 2)
    assert out == _sigmoid(x) * (1 - _sigmoid(x)) * y
    swish = sigmoid_forms((sp.exp(x) + x + 1) * sp.exp(x) / (sp.exp(x) + 1) ** 2)
    assert not swish.has(sp.exp)
    sig = lambda v: 1 / (1 + sp.exp(-v))   # noqa: E731
    for v in (-3, 0, sp.Rational(1, 2), 4):
        want = ((sp.exp(x) + x + 1) * sp.exp(x) / (sp.exp(x) + 1) ** 2).subs(x, v)
        got = swish.replace(lambda e: isinstance(e, _sigmoid), lambda e: sig(e.args[0])).subs(x, v)
        assert abs(float(want - got)) < 1e-14
    # kept: no denominator; exp(2x) would remain; u/(1-u) * u blows up at u = 1 anyway
    for keep in (sp.exp(x) * y, sp.exp(x) / (1 + sp.exp(2 * x)), sp.exp(2 * x) / (1 + sp.exp(x))):
        assert sigmoid_forms(keep) == keep


def test_expression_layer_is_stable_for_large_inputs(gen):
    """h * sigmoid(g) at g = +-1000: the plain-Python kernel would raise OverflowError in
    math.exp if the derivative were printed as exp(g)/(exp(g) + 1)**2."""
    g = graph("gate_stable")
    g.input("h", 1, grad=True)
    g.input("g", 1, grad=True)
    g.expression("y", "h * sigmoid(g)", ["h", "g"])
    g.input("t", 1)
    g.loss("loss", "y", "t", "mse", "sum")
    k = kernel(g.build(), gen)
    h, gg, t = np.array([[2.0], [2.0]]), np.array([[1000.0], [-1000.0]]), np.array([[0.5], [0.5]])
    loss, _, gi = k.loss_and_input_grads({}, {"h": h, "g": gg}, t)
    assert np.isclose(loss, 0.5 * 1.5 ** 2 + 0.5 * 0.5 ** 2)
    assert np.allclose(gi["h"][:, 0], [1.5, 0.0]) and np.allclose(gi["g"][:, 0], [0.0, 0.0])


# --- command line -----------------------------------------------------------------------------

def test_cli_derive_generate_check(tmp_path, capsys):
    spec = str(SPECS / "gated.toml")
    assert run_cli(["graph", "derive", spec]) == 0
    out = capsys.readouterr().out
    assert "g_x = g_x__g + g_x__h   [branch_sum]" in out and "[output_delta]" in out
    assert run_cli(["graph", "derive", spec, "--dump"]) == 0
    assert "[collapse]" in capsys.readouterr().out
    tex = tmp_path / "gated.tex"
    assert run_cli(["graph", "derive", spec, "--latex", str(tex)]) == 0
    assert tex.read_text().startswith(r"\documentclass")
    assert run_cli(["graph", "generate", spec, "--out", str(tmp_path), "--no-jit"]) == 0
    assert (tmp_path / "gated" / "graph_cpu_float64.py").exists()
    capsys.readouterr()
    assert run_cli(["graph", "check", spec, "--out", str(tmp_path), "--no-jit"]) == 0
    assert "gradcheck gated (float64): ok" in capsys.readouterr().out


def test_cli_bad_dtype_is_one_line(tmp_path, capsys):
    rc = run_cli(["graph", "generate", str(SPECS / "gated.toml"), "--dtype", "int8", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.splitlines()) == 1 and "dtype" in err
    assert list(tmp_path.iterdir()) == []


# --- compiled with Numba (slow: a few kernels only) -------------------------------------------

@pytest.mark.jit
@pytest.mark.parametrize("name,dtype", [("gated", "float64"), ("autoencoder", "float32")])
def test_jitted_kernel_equals_plain_python(tmp_path, name, dtype):
    g = load_graph(SPECS / f"{name}.toml")
    kj = kernel(g, tmp_path, dtype, jit=True)
    kp = kernel(g, tmp_path, dtype, jit=False)
    params = perturbed(kp)
    inputs, target = sample(g, 6, 2, np.dtype(dtype))
    lj, gj = kj.loss_and_grad(params, inputs, target)
    lp, gp = kp.loss_and_grad(params, inputs, target)
    tol = 1e-12 if dtype == "float64" else 1e-5
    assert abs(lj - lp) <= tol * max(1.0, abs(lp))
    for key in gp:
        assert np.allclose(gj[key], gp[key], rtol=tol, atol=tol), key
        assert gj[key].dtype == np.dtype(dtype)
    if g.grad_inputs:
        assert np.allclose(kj.input_grads(params, inputs, target)["x"],
                           kp.input_grads(params, inputs, target)["x"], rtol=tol, atol=tol)
    assert gradcheck(kj, params, inputs, target).ok


@pytest.mark.jit
def test_jitted_bce_is_stable_for_large_logits(tmp_path):
    """Sigmoid + bce is computed from the logits: no inf or NaN at |z| = 1e4."""
    g = graph("stable")
    g.input("x", 1)
    g.activation("p", g.dense("z", "x", 1), "sigmoid")
    g.input("y", 1)
    g.loss("loss", "p", "y", "bce")
    k = kernel(g.build(), tmp_path, jit=True)
    params = {"W_z": np.array([[1e4]]), "b_z": np.zeros(1)}
    X = np.array([[1.0], [-1.0]])
    loss, grads = k.loss_and_grad(params, X, np.array([[0.0], [1.0]]))
    assert np.isclose(loss, 1e4) and all(np.all(np.isfinite(v)) for v in grads.values())

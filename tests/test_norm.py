"""The normalization family: batchnorm, layernorm, dropout on (batch, width) values.

Registry validation, the derivation's compact backward (structural and numeric), verification
three ways (finite differences, the full-expansion oracle on batch 3 x width 2, PyTorch's
functional batch_norm / layer_norm / dropout with the same mask), the generated CPU kernels in
float32 and float64 (loss_and_grad, forward in both modes, sgd_step, bind, running statistics as
torch.nn.BatchNorm1d keeps them), the CUDA refusal, the handout and the example spec."""
from pathlib import Path

import numpy as np
import pytest
import sympy as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import symbp
from symbp import naming
from symbp.errors import InputError, SpecError
from symbp.verify import gradcheck, oracle_gradients, torch_gradients
from test_graph_spec import run_cli

ROOT = Path(__file__).resolve().parent.parent
S, T, J, I = naming.S, naming.T, naming.J, naming.I
B = naming.BATCH

# (kind, keys) of the op cases; each graph: x (grad) -> op -> dense o -> mse
CASES = [("batchnorm", {}), ("batchnorm", {"affine": False}), ("batchnorm", {"eps": 1e-3, "momentum": 0.3}),
         ("layernorm", {}), ("layernorm", {"affine": False}), ("dropout", {"p": 0.5}), ("dropout", {"p": 0.0})]
IDS = [f"{k}-{'-'.join(f'{a}={b}' for a, b in o.items()) or 'default'}" for k, o in CASES]


def build(kind, keys, width=2, name=None):
    b = symbp.graph(name or f"norm_{kind}")
    x = b.input("x", width, grad=True)
    if kind == "dropout":
        n = b.dropout("n", x, b.input("m", width), keys["p"])
    else:
        n = getattr(b, kind)("n", x, **keys)
    b.loss("L", b.dense("o", n, 1), b.input("y", 1), "mse")
    return b.build()


def data(g, batch=3, seed=0, dtype="float64"):
    rng = np.random.default_rng(seed)
    inputs = {}
    for n in g.inputs:
        if n.name == "m":       # a dropout mask: 0/1 entries drawn by the caller
            inputs["m"] = (rng.random((batch, n.width)) > 0.4).astype(dtype)
        else:
            inputs[n.name] = rng.normal(size=(batch, n.width)).astype(dtype)
    return inputs, rng.normal(size=(batch, 1)).astype(dtype)


def params(k, seed=0):
    rng = np.random.default_rng(seed + 7)
    return {key: (v + rng.normal(0, 0.3, v.shape)).astype(k.dtype) for key, v in k.init_params(seed).items()}


@pytest.fixture(scope="module")
def kernels(tmp_path_factory):
    out = tmp_path_factory.mktemp("norm")
    return {(i, dt): symbp.generate(symbp.derive(build(*case, name=f"norm{i}")), dtype=dt, out_dir=out)
            for i, case in enumerate(CASES) for dt in ("float64", "float32")}


# ---- the derivation ---------------------------------------------------------------------------

def _backprop(d):
    return next(e for e in d.equations if e.kind == "backprop" and e.source == "n")


def test_batchnorm_compact_backward_is_the_textbook_form():
    d = symbp.derive(build("batchnorm", {}))
    e = _backprop(d)
    assert e.stages[-1][0] == "batchnorm_compact"
    assert [name for name, _ in e.stages] == ["derived", "statistics", "collapse", "moments", "normalized",
                                          "batchnorm_compact"]
    g, xh = sp.IndexedBase("g_n", real=True), sp.IndexedBase("n__xhat", real=True)
    gamma, sigma = sp.IndexedBase("gamma_n", real=True), sp.IndexedBase("n__sigma", positive=True)
    textbook = gamma[J] / (B * sigma[J]) * (B * g[S, J] - sp.Sum(g[T, J], (T, 0, B - 1))
                                           - xh[S, J] * sp.Sum(g[T, J] * xh[T, J], (T, 0, B - 1)))
    assert e.rhs == textbook                   # structurally: SymPy's own result, this arrangement
    # numerically: the compact form at concrete numbers equals the collapsed (expanded) form
    rng = np.random.default_rng(3)
    xv, gv, gam, eps = rng.normal(size=(3, 1)), rng.normal(size=(3, 1)), 1.7, 1e-5
    mu, var = xv.mean(0), xv.var(0)
    sig, xhv = np.sqrt(var + eps), (xv - mu) / np.sqrt(var + eps)
    compact = gam / (3 * sig) * (3 * gv - gv.sum(0) - xhv * (gv * xhv).sum(0))
    import torch
    xt = torch.tensor(xv, requires_grad=True)
    out = torch.nn.functional.batch_norm(xt, None, None, torch.tensor([gam], dtype=torch.float64), None,
                                         training=True, eps=eps)
    out.backward(torch.tensor(gv))
    assert np.allclose(compact, xt.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_layernorm_compact_backward():
    d = symbp.derive(build("layernorm", {}, width=3))
    e = _backprop(d)
    assert e.stages[-1][0] == "layernorm_compact"
    g, xh = sp.IndexedBase("g_n", real=True), sp.IndexedBase("n__xhat", real=True)
    gamma, sigma = sp.IndexedBase("gamma_n", real=True), sp.IndexedBase("n__sigma", positive=True)
    n = sp.Symbol("n_x", integer=True, positive=True)
    dy = g[S, I] * gamma[I]
    textbook = (n * g[S, J] * gamma[J] - sp.Sum(dy, (I, 0, sp.Symbol("n_n", integer=True, positive=True) - 1))
                - xh[S, J] * sp.Sum(dy * xh[S, I], (I, 0, sp.Symbol("n_n", integer=True, positive=True) - 1))) / (n * sigma[S])
    assert e.rhs == textbook


def test_batchnorm_couples_samples_and_names_its_statistics():
    g = build("batchnorm", {})
    assert g.node("n").op.couples_samples and not g.node("o").op.couples_samples
    d = symbp.derive(g)
    stats = [e.name for e in d.equations if e.kind == "statistic"]
    assert stats == ["n__mu", "n__sigma", "n__xhat"]
    nr = next(r for r in d.nodes if r.node == "n")
    jac = nr.jacobians[0][-1][1]
    assert jac.has(sp.KroneckerDelta(S, T))         # d n[s, i] / d x[t, j]: a second sample index
    assert "dn[s,i]/dx[t,j]" in d.dump()
    grads = {e.name: e.rhs for e in d.equations if e.kind in ("grad_gamma", "grad_beta")}
    xh, gn = sp.IndexedBase("n__xhat", real=True), sp.IndexedBase("g_n", real=True)
    P = naming.P
    assert grads["g_gamma_n"] == sp.Sum(xh[S, P] * gn[S, P], (S, 0, B - 1))
    assert grads["g_beta_n"] == sp.Sum(gn[S, P], (S, 0, B - 1))


# ---- verification three ways ------------------------------------------------------------------

@pytest.mark.parametrize("case", range(len(CASES)), ids=IDS)
def test_kernel_against_fd_oracle_and_torch(kernels, case):
    k = kernels[(case, "float64")]
    P = params(k)
    X, Y = data(k.graph)
    loss, grads, igrads = k.loss_and_input_grads(P, X, Y)
    report = gradcheck(k, P, X, Y)
    assert report.ok, str(report)
    oloss, ograds = oracle_gradients(k.graph, P, X, Y)
    assert abs(oloss - loss) <= 1e-12 * max(1, abs(loss))
    for key, v in {**grads, **igrads}.items():
        np.testing.assert_allclose(v, ograds[key], rtol=1e-9, atol=1e-12, err_msg=key)
    pytest.importorskip("torch")
    tloss, tgrads = torch_gradients(k.graph, P, X, Y)
    assert abs(tloss - loss) <= 1e-12 * max(1, abs(loss))
    for key, v in {**grads, **igrads}.items():
        np.testing.assert_allclose(v, tgrads[key], rtol=1e-9, atol=1e-12, err_msg=key)


@pytest.mark.parametrize("case", range(len(CASES)), ids=IDS)
def test_forward_matches_torch_functional(kernels, case):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    kind, keys = CASES[case]
    k = kernels[(case, "float64")]
    P = params(k)
    X, Y = data(k.graph, batch=5)
    n = k.values(P, X)["n"]
    x = torch.tensor(X["x"])
    if kind == "batchnorm":
        w = torch.tensor(P["gamma_n"]) if keys.get("affine", True) else None
        b = torch.tensor(P["beta_n"]) if keys.get("affine", True) else None
        ref = F.batch_norm(x, None, None, w, b, training=True, eps=keys.get("eps", 1e-5))
    elif kind == "layernorm":
        w = torch.tensor(P["gamma_n"]) if keys.get("affine", True) else None
        b = torch.tensor(P["beta_n"]) if keys.get("affine", True) else None
        ref = F.layer_norm(x, (2,), w, b, eps=1e-5)
    else:
        # F.dropout's own draw, its mask read back and given to the kernel: the same values
        torch.manual_seed(0)
        ref = F.dropout(x, keys["p"], training=True)
        X["m"] = (ref != 0).numpy().astype(np.float64)
        n = k.values(P, X)["n"]
    np.testing.assert_allclose(n, ref.numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", range(len(CASES)), ids=IDS)
def test_float32_kernel_agrees_with_float64(kernels, case):
    k64, k32 = kernels[(case, "float64")], kernels[(case, "float32")]
    P = params(k64)
    X, Y = data(k64.graph, batch=6)
    l64, g64 = k64.loss_and_grad(P, X, Y)
    P32 = {a: v.astype(np.float32) for a, v in P.items()}
    X32 = {a: v.astype(np.float32) for a, v in X.items()}
    l32, g32 = k32.loss_and_grad(P32, X32, Y.astype(np.float32))
    assert abs(l32 - l64) <= 1e-5 * max(1, abs(l64))
    for key in g64:
        assert g32[key].dtype == np.float32
        np.testing.assert_allclose(g32[key], g64[key], rtol=2e-3, atol=2e-5, err_msg=key)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                HealthCheck.too_slow])
@given(kind=st.sampled_from(["batchnorm", "layernorm"]), width=st.integers(1, 4), batch=st.integers(2, 7),
       affine=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_drawn_shapes_against_torch(tmp_path_factory, kind, width, batch, affine, seed):
    pytest.importorskip("torch")
    g = build(kind, {"affine": affine}, width=width, name=f"drawn_{kind}_{width}_{int(affine)}")
    k = symbp.generate(symbp.derive(g), out_dir=tmp_path_factory.mktemp("drawn"), jit=False)
    P = params(k, seed)
    X, Y = data(g, batch, seed)
    loss, grads, igrads = k.loss_and_input_grads(P, X, Y)
    tloss, tgrads = torch_gradients(g, P, X, Y)
    assert abs(tloss - loss) <= 1e-10 * max(1, abs(loss))
    for key, v in {**grads, **igrads}.items():
        np.testing.assert_allclose(v, tgrads[key], rtol=1e-7, atol=1e-10, err_msg=key)


# ---- modes, running statistics, training ----------------------------------------------------

@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_running_statistics_and_inference_as_torch(kernels, dtype):
    torch = pytest.importorskip("torch")
    case = 2        # batchnorm with eps 1e-3, momentum 0.3
    k = kernels[(case, dtype)]
    P = params(k)
    bn = torch.nn.BatchNorm1d(2, eps=1e-3, momentum=0.3, affine=False).double()
    k.running["n"]["mean"][...] = 0     # earlier tests trained this kernel: start as torch does
    k.running["n"]["var"][...] = 1
    for step in range(4):
        X, Y = data(k.graph, batch=4 + step, seed=step, dtype=dtype)
        if step % 2:
            k.sgd_step(P, X, Y, 0.0)
        else:
            k.loss_and_grad(P, X, Y)
        bn.train()
        bn(torch.tensor(X["x"], dtype=torch.float64))
    tol = 1e-12 if dtype == "float64" else 1e-5
    np.testing.assert_allclose(k.running["n"]["mean"], bn.running_mean.numpy(), rtol=tol, atol=tol)
    np.testing.assert_allclose(k.running["n"]["var"], bn.running_var.numpy(), rtol=tol, atol=tol)
    bn.eval()
    X, _ = data(k.graph, batch=1, seed=9, dtype=dtype)      # inference takes a batch of one
    before = {a: v.copy() for a, v in k.running["n"].items()}
    out = k.forward(P, X, mode="inference")
    xhat = bn(torch.tensor(X["x"], dtype=torch.float64)).detach().numpy()
    ref = (xhat * P["gamma_n"] + P["beta_n"]) @ P["W_o"].T.astype(np.float64) + P["b_o"]
    np.testing.assert_allclose(out, ref, rtol=max(tol, 1e-10) * 100, atol=tol * 100)
    assert all(np.array_equal(before[a], k.running["n"][a]) for a in before)    # inference updates nothing


def test_dropout_is_the_identity_in_inference(kernels):
    k = kernels[(CASES.index(("dropout", {"p": 0.5})), "float64")]
    P = params(k)
    X, _ = data(k.graph, batch=4)
    out = k.forward(P, X, mode="inference")
    np.testing.assert_allclose(out, X["x"] @ P["W_o"].T + P["b_o"], rtol=1e-14)
    X["m"] = np.ones_like(X["m"])
    np.testing.assert_allclose(k.forward(P, X), 2 * X["x"] @ P["W_o"].T + P["b_o"], rtol=1e-14)   # 1/(1-p)


def test_training_with_bind_and_sgd_reduces_the_loss(kernels):
    k = kernels[(0, "float64")]
    P = k.init_params(0)
    assert np.array_equal(P["gamma_n"], np.ones(2)) and np.array_equal(P["beta_n"], np.zeros(2))
    X, Y = data(k.graph, batch=16, seed=4)
    first = k.sgd_step(P, X, Y, 0.1)
    for _ in range(30):
        last = k.sgd_step(P, X, Y, 0.1)
    assert last < first
    step = k.bind(P, X, Y, optimizer=symbp.Adam(lr=0.05))
    mean = k.running["n"]["mean"].copy()
    losses = [step() for _ in range(20)]
    assert losses[-1] < losses[0]
    assert not np.array_equal(mean, k.running["n"]["mean"]) or np.allclose(mean, X["x"].mean(0))


def test_a_batch_of_one_in_training_is_one_line_naming_the_node(kernels):
    k = kernels[(0, "float64")]
    P = params(k)
    X, Y = data(k.graph, batch=1)
    for call in (lambda: k.loss_and_grad(P, X, Y), lambda: k.forward(P, X), lambda: k.bind(P, X, Y),
                 lambda: k.sgd_step(P, X, Y, 0.1)):
        with pytest.raises(InputError) as e:
            call()
        msg = str(e.value)
        assert "'n'" in msg and "batchnorm" in msg and "\n" not in msg
    with pytest.raises(InputError, match="mode"):
        k.forward(P, X, mode="eval")


# ---- bad input: one line naming the node and the key, nothing written ------------------------

BAD = [
    ("batchnorm", {"eps": 0}, "node.n.eps"),
    ("batchnorm", {"eps": "small"}, "node.n.eps"),
    ("batchnorm", {"momentum": 1.5}, "node.n.momentum"),
    ("batchnorm", {"mode": "eval"}, "node.n.mode"),
    ("batchnorm", {"affine": "yes"}, "node.n.affine"),
    ("batchnorm", {"affine": False, "gamma": "g"}, "node.n.gamma"),
    ("layernorm", {"momentum": 0.1}, "node.n.momentum"),
    ("dropout", {"p": 1.0}, "node.n.p"),
    ("dropout", {"p": -0.1}, "node.n.p"),
    ("dropout", {"p": True}, "node.n.p"),
]


@pytest.mark.parametrize("kind, keys, where", BAD, ids=[f"{k}-{w}-{v}" for k, v, w in BAD])
def test_bad_keys_are_one_line_naming_node_and_key(kind, keys, where):
    with pytest.raises(SpecError) as e:
        if kind == "dropout":
            build(kind, keys)
        else:
            b = symbp.graph("bad")
            b.loss("L", b.dense("o", b._add({"name": "n", "kind": kind, "input": b.input("x", 2), **keys}), 1),
                   b.input("y", 1), "mse")
            b.build()
    msg = str(e.value)
    assert where in msg and "\n" not in msg


def test_dropout_mask_must_match(tmp_path):
    b = symbp.graph("bad")
    x = b.input("x", 2)
    b.loss("L", b.dense("o", b.dropout("n", x, b.input("m", 3), 0.5), 1), b.input("y", 1), "mse")
    with pytest.raises(SpecError, match=r"node\.n\.inputs.*shape mismatch at dropout node 'n'"):
        b.build()
    spec = tmp_path / "bad.toml"
    spec.write_text('[graph]\nname = "bad"\n[[node]]\nname = "x"\nkind = "input"\nwidth = 2\n'
                    '[[node]]\nname = "n"\nkind = "dropout"\ninputs = ["x", "x"]\np = 0.5\n'
                    '[[node]]\nname = "y"\nkind = "input"\nwidth = 2\n'
                    '[[node]]\nname = "L"\nkind = "loss"\ninput = "n"\ntarget = "y"\nloss = "mse"\n')
    out = tmp_path / "out"
    assert run_cli(["generate", str(spec), "--out", str(out)]) != 0
    assert not out.exists()


def test_cuda_refuses_the_family_naming_the_node(tmp_path):
    d = symbp.derive(build("batchnorm", {}))
    with pytest.raises(SpecError) as e:
        symbp.generate(d, target="cuda", out_dir=tmp_path / "cuda")
    assert "node 'n' is a batchnorm node" in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "cuda").exists()


# ---- teaching output and the example ----------------------------------------------------------

def test_handout_shows_the_definition_and_the_compact_backward(tmp_path):
    from symbp.render.pdf import compile_pdf
    import shutil
    g = build("batchnorm", {})
    tex = symbp.derive(g).latex(document=True)
    assert r"\text{batchnorm\_compact}" in tex and r"\hat{x}_{n}" in tex and r"\sigma_{n}" in tex
    assert "statistic" in tex
    if shutil.which("pdflatex"):
        assert compile_pdf(tex, "norm")[0][:4] == b"%PDF"


def test_example_spec_passes_symbp_check(tmp_path):
    spec = ROOT / "examples" / "specs" / "graphs" / "mlp_batchnorm.toml"
    assert run_cli(["check", str(spec), "--out", str(tmp_path)]) == 0
    assert run_cli(["check", str(spec), "--out", str(tmp_path), "--dtype", "float32"]) == 0

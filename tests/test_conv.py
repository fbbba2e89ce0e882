"""Tensor values and the ops conv2d, maxpool2d, avgpool2d and flatten.

What is pinned: the derivation reaches the textbook forms (the correlation of the input with
the output's gradient for dL/dW, the full convolution of the gradient with the kernel for
dL/dx, the window sum for average pooling) structurally and numerically; the generated CPU
kernels agree with PyTorch's conv2d / max_pool2d / avg_pool2d (float64 and float32), with
finite differences and with the full-expansion oracle; max pooling routes ties to the first
index of the window as PyTorch does; bad specs are one-line errors naming node and key; the
CUDA target refuses these ops naming the node; the handout renders.
"""
from pathlib import Path

import numpy as np
import pytest
import sympy as sp
from hypothesis import HealthCheck, given, settings, strategies as st

import symbp
from symbp import naming
from symbp.derivation import conv
from symbp.errors import SpecError
from symbp.model import ops_conv as oc
from symbp.model.graph import graph, load_graph, loads_graph
from symbp.verify import gradcheck, oracle_gradients, torch_gradients

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "examples" / "specs" / "cnn" / "tiny_cnn.toml"


def cnn(shape=(2, 5, 5), out_channels=3, kernel=3, stride=1, padding=0, pool="max", window=2,
        pool_stride=None, bias=None, name="cnn", classes=3):
    """input -> conv2d -> relu -> pool -> flatten -> dense -> softmax + ce."""
    g = graph(name)
    x = g.input("x", shape=list(shape), grad=True)
    c = g.conv2d("c1", x, out_channels, kernel, stride=stride, padding=padding, bias=bias)
    r = g.activation("r1", c, "relu")
    p = (g.maxpool2d if pool == "max" else g.avgpool2d)("p1", r, window, stride=pool_stride)
    f = g.flatten("f", p)
    a = g.activation("a", g.dense("d", f, classes), "softmax")
    g.loss("L", a, g.input("y", classes), "ce")
    return g.build()


def data(G, batch, seed=0, dtype="float64"):
    rng = np.random.default_rng(seed)
    params = {k: rng.normal(size=s).astype(dtype) for k, s in G.param_shapes().items()}
    X = rng.normal(size=(batch, G.inputs[0].width)).astype(dtype)
    Y = np.eye(G.node(G.target).width)[rng.integers(0, G.node(G.target).width, size=batch)].astype(dtype)
    return params, X, Y


# ---------------------------------------------------------------------------------------------
# the derivation reaches the textbook forms
# ---------------------------------------------------------------------------------------------

def _eval(e, arrays, env):
    """A tensor expression at integer indices ``env``, reading ``arrays`` with the derivation's
    convention: an entry outside its array or at a fractional index is zero."""
    if isinstance(e, sp.Sum):
        var, lo, hi = e.limits[-1]
        inner = sp.Sum(e.function, *e.limits[:-1]) if len(e.limits) > 1 else e.function
        return sum(_eval(inner, arrays, {**env, var: k}) for k in range(int(lo), int(hi) + 1))
    if isinstance(e, sp.Indexed):
        idx = [sp.Rational(i.xreplace(env)) for i in e.indices]
        arr = arrays[str(e.base.label)]
        if any(not i.is_integer or not 0 <= i < n for i, n in zip(idx, arr.shape)):
            return 0.0
        return float(arr[tuple(int(i) for i in idx)])
    if isinstance(e, sp.Add):
        return sum(_eval(a, arrays, env) for a in e.args)
    if isinstance(e, sp.Mul):
        return float(np.prod([_eval(a, arrays, env) for a in e.args]))
    return float(e.xreplace(env))


@pytest.mark.parametrize("key,what,step", [
    (("conv2d", True), "W", "correlation"),
    (("conv2d", True), "x", "full_convolution"),
    (("conv2d", False), "x", "full_convolution"),
    (("avgpool2d",), "x", "window_sum"),
    (("flatten",), "x", "unflatten"),
])
def test_sympy_reaches_the_textbook_form(key, what, step):
    t = conv.template(key)
    stages = t["gW"] if what == "W" else t["contributions"][0]
    names = [n for n, _ in stages]
    assert names == ["derived", "collapse", step]
    derived = stages[0][1]
    assert derived.has(sp.KroneckerDelta)           # what sympy.diff gave
    collapsed = stages[1][1]
    assert not collapsed.has(sp.KroneckerDelta)
    # structurally the textbook form (for dL/dx of conv2d after p -> k_h - 1 - p, the kernel
    # rotated by 180 degrees), once each index is written as one fraction
    form = conv.textbook(key[0], what)
    assert conv._indices_expanded(conv.reindexed(collapsed, key[0], what)) == conv._indices_expanded(form)
    assert stages[-1][1] == form


def test_max_pool_backward_settles_ties_to_the_first_index():
    t = conv.template(("maxpool2d", 2, 2))
    jac = dict(t["jacobians"][0])
    assert "argmax_routing" in jac
    routed = jac["argmax_routing"]
    # the first entry of the window wins on ties with any later one (>=), never with earlier
    steps = sorted(routed.atoms(sp.Heaviside), key=sp.default_sort_key)
    assert {h.args[1] for h in steps} == {0, 1}
    assert not t["contributions"][0][-1][1].has(sp.KroneckerDelta)


STRIDE_PAD = [(1, 0), (2, 1), (3, 2)]


@pytest.mark.parametrize("stride,pad", STRIDE_PAD)
def test_textbook_forms_numerically_equal_torch(stride, pad):
    """The textbook dL/dW and dL/dx of the template, at concrete sizes, equal torch's
    conv2d_weight / conv2d_input on random values."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(stride * 10 + pad)
    B, ci, co, h, w, kh, kw = 2, 2, 3, 6, 5, 3, 2
    ho, wo = (h + 2 * pad - kh) // stride + 1, (w + 2 * pad - kw) // stride + 1
    x, W, g = rng.normal(size=(B, ci, h, w)), rng.normal(size=(co, ci, kh, kw)), rng.normal(size=(B, co, ho, wo))
    sizes = {oc.C_IN: ci, oc.H_IN: h, oc.W_IN: w, oc.C_OUT: co, oc.H_OUT: ho, oc.W_OUT: wo, oc.K_H: kh,
             oc.K_W: kw, oc.STRIDE: stride, oc.PAD_H: pad, oc.PAD_W: pad, naming.BATCH: B}
    t = conv.template(("conv2d", True))
    arrays = {"_in0": x, "_W": W, "_gout": g}
    dW = t["gW"][-1][1].xreplace(sizes)
    dx = t["contributions"][0][-1][1].xreplace(sizes)
    ours_w = np.array([[[[_eval(dW, arrays, {naming.O: o, naming.C: c, naming.P: p, naming.Q: q})
                          for q in range(kw)] for p in range(kh)] for c in range(ci)] for o in range(co)])
    ours_x = np.array([[[[_eval(dx, arrays, {naming.S: s, naming.C: c, naming.U: u, naming.V: v})
                          for v in range(w)] for u in range(h)] for c in range(ci)] for s in range(B)])
    T = torch.tensor
    ref_w = torch.nn.grad.conv2d_weight(T(x), W.shape, T(g), stride=stride, padding=pad).numpy()
    ref_x = torch.nn.grad.conv2d_input(x.shape, T(W), T(g), stride=stride, padding=pad).numpy()
    np.testing.assert_allclose(ours_w, ref_w, atol=1e-12)
    np.testing.assert_allclose(ours_x, ref_x, atol=1e-12)


def test_graph_equations_name_the_steps():
    d = symbp.derive(cnn())
    gw = d["g_W_c1"]
    assert gw.kind == "grad_W" and [n for n, _ in gw.stages][-1] == "correlation"
    gx = d["g_x"]
    assert [n for n, _ in gx.stages][-1] == "full_convolution"
    assert tuple(gx.lhs.indices) == (naming.S, naming.C, naming.U, naming.V)
    dump = d.dump()
    assert "[full_convolution]" in dump and "[argmax_routing]" in dump


# ---------------------------------------------------------------------------------------------
# kernels against PyTorch, finite differences and the oracle
# ---------------------------------------------------------------------------------------------

CASES = {
    "conv s1 p0 max2": dict(),
    "conv s1 same max2": dict(padding="same", kernel=[3, 2]),
    "conv s2 p1 max2s1": dict(stride=2, padding=1, pool_stride=1),
    "conv valid avg2": dict(padding="valid", pool="avg"),
    "conv s2 avg odd window": dict(shape=(1, 7, 6), stride=2, kernel=2, pool="avg", window=[2, 1], pool_stride=1),
    "no bias, window not dividing": dict(shape=(2, 7, 7), bias=False, window=2),
    "max 3 stride 2": dict(shape=(1, 8, 8), kernel=2, window=3, pool_stride=2),
}


JITTED = {("conv s1 p0 max2", "float64"), ("conv s2 p1 max2s1", "float32")}


@pytest.fixture(scope="module")
def kernels(tmp_path_factory):
    out = tmp_path_factory.mktemp("conv")
    cache = {}

    def get(case, dtype="float64"):
        if (case, dtype) not in cache:
            G = cnn(name="cnn_" + "".join(ch for ch in case if ch.isalnum()), **CASES[case])
            # compiled by Numba for the cases in JITTED; the others run the same module as plain
            # Python (each compile takes seconds; the loops are the same text)
            cache[case, dtype] = symbp.generate(symbp.derive(G), target="cpu", dtype=dtype, out_dir=out,
                                                jit=(case, dtype) in JITTED)
        return cache[case, dtype]
    return get


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow) if c == "max 3 stride 2" else c
                                  for c in CASES])
def test_kernel_equals_torch_and_finite_differences(case, kernels):
    k = kernels(case)
    G = k.derivation.graph
    params, X, Y = data(G, 3, seed=1)
    loss, grads = k.loss_and_grad(params, X, Y)
    _, _, ins = k.loss_and_input_grads(params, X, Y)
    pytest.importorskip("torch")
    tl, tg = torch_gradients(G, params, X, Y)
    assert abs(loss - tl) < 1e-12 * max(1, abs(tl))
    for key in grads:
        np.testing.assert_allclose(grads[key], tg[key], rtol=1e-9, atol=1e-12, err_msg=key)
    np.testing.assert_allclose(ins["x"], tg["x"], rtol=1e-9, atol=1e-12)
    assert gradcheck(k, params, X, Y).ok


@pytest.mark.parametrize("case", ["conv s2 p1 max2s1", "conv valid avg2"])
def test_float32_kernel_equals_torch(case, kernels):
    torch = pytest.importorskip("torch")
    k = kernels(case, "float32")
    G = k.derivation.graph
    params, X, Y = data(G, 4, seed=2, dtype="float32")
    loss, grads = k.loss_and_grad(params, X, Y)
    tl, tg = torch_gradients(G, params, X, Y)
    assert torch is not None and abs(loss - tl) < 1e-5 * max(1, abs(tl))
    for key in grads:
        assert grads[key].dtype == np.float32
        np.testing.assert_allclose(grads[key], tg[key], rtol=1e-4, atol=1e-5, err_msg=key)


def _tiny(pool):
    """The oracle's size: a 1x1x4x4 input, a 2x2 kernel, 2 output channels (batch 2 below)."""
    g = graph(f"tiny_{pool}")
    x = g.input("x", shape=[1, 4, 4], grad=True)
    c = g.conv2d("c1", x, 2, 2)
    if pool == "max":
        c = g.maxpool2d("p1", c, 2, stride=1)
    q = g.avgpool2d("q1", c, 3 if pool == "none" else 2)
    g.loss("L", g.flatten("f", q), g.input("y", 2), "mse")
    return g.build()


@pytest.mark.parametrize("pool", ["none", "max"])
def test_oracle_on_the_tiny_example(pool, tmp_path):
    G = _tiny(pool)
    k = symbp.generate(symbp.derive(G), out_dir=tmp_path, jit=False)
    rng = np.random.default_rng(3)
    params = {key: rng.normal(size=s) for key, s in G.param_shapes().items()}
    X, Y = rng.normal(size=(2, 16)), rng.normal(size=(2, 2))
    # Max's derivative is slow to expand: with max pooling a sample of the entries
    entries = None if pool == "none" else {"W_c1": [(0, 0, 0, 0), (1, 0, 1, 1)], "b_c1": [(1,)],
                                            "x": [(0, 0), (1, 5), (1, 15)]}
    ol, og = oracle_gradients(G, params, X, Y, entries=entries)
    loss, grads = k.loss_and_grad(params, X, Y)
    _, _, ins = k.loss_and_input_grads(params, X, Y)
    assert abs(ol - loss) < 1e-12
    for key, ref in og.items():
        ours = ins[key] if key == "x" else grads[key]
        mask = ~np.isnan(ref)
        assert mask.any()
        np.testing.assert_allclose(ours[mask], ref[mask], rtol=1e-10, atol=1e-13, err_msg=key)


def test_max_pool_ties_go_to_the_first_index_as_in_torch(tmp_path):
    torch = pytest.importorskip("torch")
    g = graph("ties")
    x = g.input("x", shape=[1, 4, 4], grad=True)
    p = g.maxpool2d("p", x, 2, stride=1)
    g.loss("L", g.flatten("f", p), g.input("y", 9), "mse")
    G = g.build()
    k = symbp.generate(symbp.derive(G), out_dir=tmp_path, jit=False)
    X = np.array([[1, 1, 0, 2, 1, 1, 2, 2, 0, 3, 3, 3, 0, 3, 3, 0]], float)     # ties in every window
    Y = np.zeros((1, 9))
    _, _, ins = k.loss_and_input_grads({}, X, Y)
    _, tg = torch_gradients(G, {}, X, Y)
    np.testing.assert_array_equal(ins["x"], tg["x"])
    t = torch.tensor(X.reshape(1, 1, 4, 4), requires_grad=True)
    torch.nn.functional.max_pool2d(t, 2, stride=1).sum().backward()
    assert t.grad.numpy().reshape(1, 16)[0, 0] == 1.0     # the window's first 1 takes it, not the second


def test_training_calls_work(kernels):
    k = kernels("conv s1 p0 max2")
    G = k.derivation.graph
    params = k.init_params(seed=0)
    assert params["W_c1"].shape == (3, 2, 3, 3) and np.abs(params["W_c1"]).max() > 0
    _, X, Y = data(G, 8, seed=4)
    out = k.forward(params, X)
    assert out.shape == (8, 3) and np.allclose(out.sum(axis=1), 1)
    # a (B, C, H, W) array is read as its C-order rows
    l4, g4 = k.loss_and_grad(params, X.reshape(8, 2, 5, 5), Y)
    l2, g2 = k.loss_and_grad(params, X, Y)
    assert l4 == l2 and all(np.array_equal(g4[key], g2[key]) for key in g2)
    before = k.loss_and_grad(params, X, Y)[0]
    for _ in range(20):
        k.sgd_step(params, X, Y, lr=0.1)
    after = k.loss_and_grad(params, X, Y)[0]
    assert after < before
    step = k.bind(params, X, Y, optimizer=symbp.SGD(lr=0.1))
    losses = [step() for _ in range(5)]
    assert losses[-1] < losses[0]


# ---------------------------------------------------------------------------------------------
# hypothesis: drawn shapes, strides, paddings and windows against PyTorch
# ---------------------------------------------------------------------------------------------

@st.composite
def geometries(draw):
    c, h, w = draw(st.integers(1, 2)), draw(st.integers(3, 7)), draw(st.integers(3, 7))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    stride = draw(st.integers(1, 3))
    pad = draw(st.integers(0, 1))
    ho, wo = (h + 2 * pad - kh) // stride + 1, (w + 2 * pad - kw) // stride + 1
    win = draw(st.integers(1, max(1, min(ho, wo, 3))))
    return dict(shape=(c, h, w), out_channels=draw(st.integers(1, 2)), kernel=[kh, kw], stride=stride,
                padding=pad, pool=draw(st.sampled_from(["max", "avg"])), window=win,
                pool_stride=draw(st.integers(1, 2)))


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(geometries(), st.integers(1, 3))
def test_drawn_geometries_equal_torch(tmp_path, geo, batch):
    pytest.importorskip("torch")
    G = cnn(name="drawn", **geo)
    # jit=False: the module as plain Python (the drawn graphs would each compile otherwise)
    k = symbp.generate(symbp.derive(G), out_dir=tmp_path, jit=False)
    params, X, Y = data(G, batch, seed=batch)
    loss, grads = k.loss_and_grad(params, X, Y)
    tl, tg = torch_gradients(G, params, X, Y)
    assert abs(loss - tl) < 1e-10 * max(1, abs(tl))
    for key in grads:
        np.testing.assert_allclose(grads[key], tg[key], rtol=1e-8, atol=1e-11, err_msg=key)


# ---------------------------------------------------------------------------------------------
# bad input, the CUDA target, the handout, the example spec
# ---------------------------------------------------------------------------------------------

def _spec(**conv):
    lines = ['[graph]\nname = "bad"\n', '[[node]]\nname = "x"\nkind = "input"\nshape = [2, 4, 4]\n']
    body = "".join(f"{k} = {v}\n" for k, v in conv.items())
    lines.append(f'[[node]]\nname = "c"\nkind = "conv2d"\ninput = "x"\n{body}')
    lines.append('[[node]]\nname = "f"\nkind = "flatten"\ninput = "c"\n')
    lines.append('[[node]]\nname = "y"\nkind = "input"\nwidth = 8\n')
    lines.append('[[node]]\nname = "L"\nkind = "loss"\ninput = "f"\ntarget = "y"\nloss = "mse"\n')
    return "\n".join(lines)


BAD = {
    "kernel larger than the padded input": (dict(out_channels=1, kernel=7, padding=1), "node.c.kernel", "larger"),
    "stride 0": (dict(out_channels=1, kernel=2, stride=0), "node.c.stride", "stride 0"),
    "channel mismatch": (dict(out_channels=1, kernel=2, in_channels=3), "node.c.in_channels", "channel mismatch"),
    "same with stride 2": (dict(out_channels=1, kernel=3, padding='"same"', stride=2), "node.c.padding", "stride 1"),
    "bad padding": (dict(out_channels=1, kernel=3, padding='"full"'), "node.c.padding", "same"),
    "no out_channels": (dict(kernel=3), "node.c.out_channels", "missing"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_conv_is_one_line_naming_node_and_key(case):
    table, key, words = BAD[case]
    with pytest.raises(SpecError) as e:
        loads_graph(_spec(**table))
    msg = str(e.value)
    assert key in msg and words in msg and "\n" not in msg


def test_flatten_of_a_vector_and_dense_of_a_tensor_are_refused():
    g = graph("flat")
    x = g.input("x", 4)
    g.loss("L", g.flatten("f", x), g.input("y", 4), "mse")
    with pytest.raises(SpecError, match=r"node\.f\.input.*flatten node 'f' reads a \(batch, channels, height, width\)"):
        g.build()
    g = graph("dense")
    x = g.input("x", shape=[1, 2, 2])
    g.loss("L", g.dense("d", x, 2), g.input("y", 2), "mse")
    with pytest.raises(SpecError, match=r"node\.d\.input.*put a flatten node between"):
        g.build()


def test_pool_window_too_large_and_stride_zero():
    for window, stride, key in ((5, None, "window"), (2, 0, "stride")):
        g = graph("pool")
        x = g.input("x", shape=[1, 4, 4], grad=True)
        g.loss("L", g.flatten("f", g.maxpool2d("p", x, window, stride=stride)), g.input("y", 4), "mse")
        with pytest.raises(SpecError, match=rf"node\.p\.{key}"):
            g.build()


def test_cuda_target_refuses_naming_the_op(tmp_path):
    d = symbp.derive(cnn())
    with pytest.raises(SpecError, match=r"node 'c1' is a conv2d node"):
        symbp.generate(d, target="cuda", out_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_handout_shows_forward_and_backward():
    tex = symbp.derive(cnn(stride=2, padding=1)).latex()
    assert "forward conv2d" in tex and "forward maxpool2d" in tex and "forward flatten" in tex
    assert r"\ge 0" in tex                       # max pooling's ties to the first index
    assert "g_{W_{c_{1}}}" in tex and "g_{x}" in tex


def test_example_spec_checks(tmp_path, capsys):
    from symbp.cli import main
    G = load_graph(TINY)
    assert [n.kind for n in G.nodes][:5] == ["input", "conv2d", "activation", "maxpool2d", "flatten"]
    assert G.node("conv").shape == (2, 6, 6) and G.node("pool").shape == (2, 3, 3)
    assert main(["check", str(TINY), "--out", str(tmp_path), "--no-jit"]) == 0
    assert "ok" in capsys.readouterr().out


def test_builder_and_toml_agree_and_shapes_are_canonical():
    G = load_graph(TINY)
    g = graph("tiny_cnn")
    x = g.input("x", shape=[1, 6, 6])
    r = g.activation("relu", g.conv2d("conv", x, 2, 3, padding="same"), "relu")
    f = g.flatten("flat", g.maxpool2d("pool", r, 2))
    g.loss("loss", g.activation("probs", g.dense("logits", f, 3), "softmax"), g.input("y", 3), "ce")
    assert g.build().digest == G.digest
    assert G.node("relu").shape == (2, 6, 6)    # an elementwise node keeps its input's shape

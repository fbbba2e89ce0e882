"""The DAG derivation: branch sums, shared-parameter sums, concat slices, transposed weights,
loss + activation cancellation, expression layers, and what is (not) derived."""
import shutil
import subprocess
from pathlib import Path

import pytest
import sympy as sp

from symbp.derivation.equations import Equation
from symbp.model.graph import graph, load_graph
from symbp.derivation.graph import GraphEquation, derive_graph
from symbp.errors import SpecError

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "examples" / "specs" / "graphs"
S, I, J, K, P, Q = sp.symbols("s i j k p q", integer=True)
B = sp.Symbol("B", integer=True, positive=True)


def ib(name):
    return sp.IndexedBase(name, real=True)


def n(name):
    return sp.Symbol(f"n_{name}", integer=True, positive=True)


@pytest.fixture(scope="module")
def derived():
    return {p.stem: derive_graph(load_graph(p)) for p in sorted(SPECS.glob("*.toml"))}


def test_branch_sum_at_the_residual_branch(derived):
    d = derived["residual"]
    e = d["g_a"]
    assert isinstance(e, GraphEquation) and isinstance(e, Equation)
    assert e.kind == "branch_sum" and e.terms == ("g_a__r", "g_a__f1")
    assert e.rhs == ib("g_a__r")[S, J] + ib("g_a__f1")[S, J]
    assert d["g_a__r"].rhs == ib("g_r")[S, J] and d["g_a__r"].source == "r"
    assert d["g_a__f1"].rhs == sp.Sum(ib("W_f1")[I, J] * ib("g_f1")[S, I], (I, 0, n("f1") - 1))
    # the branch sum comes before the step that reads g_a
    names = [x.name for x in d.equations]
    assert names.index("g_a") < names.index("g_h")


def test_shared_sum_of_the_tied_weight(derived):
    d = derived["autoencoder"]
    e = d["g_W"]
    assert e.kind == "shared_sum" and e.terms == ("g_W__dec", "g_W__enc") and e.node == "W"
    assert e.rhs == ib("g_W__dec")[P, Q] + ib("g_W__enc")[P, Q]
    # decoder uses W^T: dL/dW[p, q] = sum_s code[s, p] g_dec[s, q]; encoder: sum_s g_enc[s, p] x[s, q]
    assert d["g_W__dec"].rhs == sp.Sum(ib("code")[S, P] * ib("g_dec")[S, Q], (S, 0, B - 1))
    assert d["g_W__enc"].rhs == sp.Sum(ib("g_enc")[S, P] * ib("x")[S, Q], (S, 0, B - 1))
    assert d["g_code"].rhs == sp.Sum(ib("W")[J, I] * ib("g_dec")[S, I], (I, 0, n("dec") - 1))
    assert d.param_grads == {"W": "g_W", "b_enc": "g_b_enc", "b_dec": "g_b_dec"}


def test_concat_hands_each_input_its_slice(derived):
    d = derived["two_tower"]
    assert d["g_hu"].rhs == ib("g_merged")[S, J]
    assert d["g_hv"].rhs == ib("g_merged")[S, J + n("hu")]


@pytest.mark.parametrize("act,loss,reduction,expected", [
    ("sigmoid", "bce", "mean", lambda a, y: (a - y) / B),
    ("softmax", "ce", "mean", lambda a, y: (a - y) / B),
    ("identity", "mse", "mean", lambda a, y: (a - y) / B),
    ("identity", "sse", "sum", lambda a, y: 2 * (a - y)),
    ("sigmoid", "bce", "sum", lambda a, y: a - y),
])
def test_output_delta_cancels(act, loss, reduction, expected):
    g = graph("o")
    g.input("x", 2)
    g.activation("a", g.dense("z", "x", 2), act)
    g.input("y", 2)
    g.loss("loss", "a", "y", loss, reduction)
    d = derive_graph(g.build())
    e = d["g_z"]
    assert e.kind == "output_delta"
    assert sp.simplify(e.rhs - expected(ib("a")[S, J], ib("y")[S, J])) == 0, e.rhs
    assert d.inlined == {"g_a"}


def test_loss_grad_is_computed_when_the_output_branches():
    g = graph("b")
    g.input("x", 2)
    a = g.activation("a", g.dense("z", "x", 2), "tanh")
    g.dense("side", a, 2)
    g.add("out", a, "side")
    g.input("y", 2)
    g.loss("loss", "out", "y", "mse")
    d = derive_graph(g.build())
    assert d.inlined == frozenset() and d["g_out"].kind == "loss_grad"
    assert d["g_a"].terms == ("g_a__out", "g_a__side")


def test_expression_layer_derivatives(derived):
    d = derived["gated"]
    h, gg, gy = ib("h")[S, J], ib("g")[S, J], ib("g_y")[S, J]
    sig = 1 / (1 + sp.exp(-gg))
    assert sp.simplify(d["g_h"].rhs - gy * sig) == 0
    assert sp.simplify(d["g_g"].rhs - gy * h * sig * (1 - sig)) == 0
    # multiply: each factor's gradient is the other factor times g_prod
    assert d["g_s"].rhs == ib("g_prod")[S, J] * ib("y")[S, J]
    assert d["g_y"].terms == ("g_y__prod", "g_y__s")


def test_multiply_by_itself_gives_two_contributions():
    g = graph("sq")
    g.input("x", 2)
    h = g.dense("h", "x", 2)
    g.multiply("m", h, h)
    g.dense("out", "m", 1)
    g.input("y", 1)
    g.loss("loss", "out", "y", "mse")
    d = derive_graph(g.build())
    assert d["g_h"].terms == ("g_h__m_0", "g_h__m_1")
    assert d["g_h__m_0"].rhs == d["g_h__m_1"].rhs == ib("g_m")[S, J] * ib("h")[S, J]


def test_only_needed_gradients_are_derived():
    g = graph("need")
    g.input("x", 2)                       # not marked grad
    t = g.activation("t", "x", "tanh")    # upstream of every parameter: no gradient needed
    g.dense("out", t, 1)
    g.input("y", 1)
    g.loss("loss", "out", "y", "mse")
    d = derive_graph(g.build())
    labels = {e.name for e in d.equations}
    assert "g_t" not in labels and "g_x" not in labels and d.input_grads == {}
    assert {"g_out", "g_W_out", "g_b_out"} <= labels


def test_input_grads_marked(derived):
    assert derived["gated"].input_grads == {"x": "g_x"}
    assert derived["gated"]["g_x"].kind == "branch_sum"


def test_every_backward_rule_is_collapsed(derived):
    for name, d in derived.items():
        for e in d.equations:
            if e.kind.startswith("forward") or e.kind == "loss":
                continue
            assert not e.rhs.has(sp.KroneckerDelta, sp.Derivative, sp.Piecewise), (name, e.name, e.rhs)
            assert e.stages[-1][1] == e.rhs


def test_local_jacobians_are_recorded(derived):
    d = derived["residual"]
    rules = {r.node: r for r in d.nodes}
    assert str(rules["a"].rule.form) == "1 - a**2"
    assert rules["r"].jacobians[0][-1][1] == sp.KroneckerDelta(I, J)
    assert rules["h"].jacobians[0][-1][1] == ib("W_in")[I, J]


def test_dump_and_determinism(derived):
    again = derive_graph(load_graph(SPECS / "gated.toml"))
    assert again.dump() == derived["gated"].dump()
    text = derived["gated"].dump()
    for word in ("branch_sum", "output_delta", "inlined", "[collapse]", "f' reads", "per-sample loss"):
        assert word in text


def test_latex_lists_every_equation(derived, tmp_path):
    d = derived["autoencoder"]
    tex = d.latex()
    lines = tex.strip().split("\n")
    assert lines[0] == r"\begin{align*}" and lines[-1] == r"\end{align*}"
    assert len(lines) - 2 == len(d.equations) and all(l.endswith(r"\\") for l in lines[1:-2])
    assert r"g_{W}^{(\mathrm{dec})}" in tex and "shared sum" in tex
    if shutil.which("pdflatex") is None:
        pytest.skip("pdflatex is not installed")
    for name in ("autoencoder", "gated", "two_tower"):
        path = tmp_path / f"{name}.tex"
        path.write_text(derived[name].latex(document=True))
        proc = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", path.name],
                              cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stdout[-2000:]


# --- the graph-level options ---------------------------------------------------------------------

def _relu_graph(at_zero, loss="mse", allow_any_output=False, out="identity"):
    g = graph("kinked", relu_at_zero=at_zero, allow_any_output=allow_any_output)
    h = g.activation("h", g.dense("d", g.input("x", 2), 3), "relu")
    o = g.activation("o", g.dense("e", h, 1), out)
    g.loss("loss", o, g.input("t", 1), loss)
    return g.build()


@pytest.mark.parametrize("at_zero", [0, 1])
def test_relu_at_zero_reaches_the_graph_kink_pass(at_zero):
    """The graph's relu_at_zero is the kink pass's: ReLU'(0) = Heaviside(0) = 0 or 1 in the
    activation node's rule and in the gradient it passes back."""
    d = derive_graph(_relu_graph(at_zero))
    rule = next(nr for nr in d.nodes if nr.node == "h").rule
    assert dict(rule.stages)["kink"] == sp.Heaviside(sp.Symbol("z", real=True), at_zero)
    g_d = d["g_d"].rhs
    assert g_d.has(sp.Heaviside) and all(h.args[1] == at_zero for h in g_d.atoms(sp.Heaviside))


def test_allow_any_output_keeps_the_chain_rule_product():
    """bce after a ReLU: the loss is not paired with its activation, so the output gradient is
    f'(in) times dL/dout (the "chain" stage), and the kernels' loss reads the output, not the
    logits."""
    with pytest.raises(SpecError, match="needs a sigmoid activation node"):
        _relu_graph(0, "bce", out="relu")
    d = derive_graph(_relu_graph(0, "bce", allow_any_output=True, out="relu"))
    delta = d["g_e"]
    assert delta.kind == "output_delta" and delta.stages[-1][0] == "chain"
    o, e = sp.IndexedBase("o", real=True), sp.IndexedBase("e", real=True)
    ga = d["g_o"].rhs
    assert delta.rhs == sp.Heaviside(o[S, J], 0) * ga
    assert d.loss_sample[1] == "o" and not d.loss_sample[0].has(e)
    paired = derive_graph(_relu_graph(0, "bce", out="sigmoid"))
    assert "chain" not in [s for s, _ in paired["g_e"].stages]

"""The derivation as a whole: symbolic sizes, matrix structure, stages, determinism.

- widths are symbols: [2, 3, 1] and [200, 300, 100] give the same equations;
- the index equations have the matrix structure the kernels need (``batch_form``):
  z = A W^T + b, g = D W, gW = D^T A, gb = column sum of D, in exactly the index form
  gW_l[p, q] = Sum_s delta_l[s, p] a_{l-1}[s, q];
- no equation keeps a KroneckerDelta, a Derivative or an index-range Piecewise;
- every rule carries its stages in the order of ``symbp.derivation.simplify.PASSES`` (which is the order
  the module docstring states), and ``Derivation.dump()`` lists them in that order;
- deriving is deterministic (same text twice, after clearing caches, in fresh processes with
  other hash seeds); a 10-layer network derives; a softmax hidden layer gets the full Jacobian
  a_i (delta_ij - a_j).
- the network options: a layer without bias has z = W a and no dz/db or dL/db; relu_at_zero
  reaches the kink pass (ReLU'(0) = Heaviside(0) = 0 or 1, leaky ReLU'(0) = slope or 1) and the
  rule of f' (relu with 1 keeps z: a = 0 cannot tell z = 0 from z < 0); bce after a ReLU
  (allow_any_output) gives dL/da = (a - y)/(a(1 - a)) / B and delta = f'(z) times that.
- one derivation: ``derive(net)`` is the chain view of ``derive_graph(net.graph)``, whether the
  graph derivation was written in the MLP's names at once or in the graph's own.
"""
import warnings
import importlib
import itertools
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import sympy as sp

import symbp
from symbp import naming
from symbp.derivation import simplify as simp
from symbp.derivation.equations import ColumnSum, Product, batch_form

derive_mod = importlib.import_module("symbp.derivation.chain")   # symbp.derive is also the function
ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples" / "specs").glob("*.toml"))
S, I, J, K, P, Q = naming.S, naming.I, naming.J, naming.K, naming.P, naming.Q
B = naming.BATCH
q = naming.quantity
n = naming.width
PASS_NAMES = [p.name for p in simp.PASSES]
# "chain": the output delta of a loss after an activation it is not paired with (derive.py)
STAGE_ORDER = ["definition", "derived"] + PASS_NAMES + ["chain"]

NETS = {
    "xor": ([2, 3, 1], ["sigmoid", "sigmoid"], "bce", "mean"),
    "relu_sse_sum": ([2, 3, 2], ["relu", "identity"], "sse", "sum"),
    "tanh_softmax_ce": ([4, 5, 3], ["tanh", "softmax"], "ce", "mean"),
    "softmax_hidden": ([4, 5, 3], ["softmax", "softmax"], "ce", "mean"),
    "deep_mixed": ([3, 4, 5, 4, 2], ["softplus", "exp", "relu", "identity"], "mse", "mean"),
    "swish": ([3, 4, 2], ["swish", "identity"], "sse", "sum"),
    # the network options (mlp keyword arguments)
    "nobias_relu1": ([2, 3, 2], ["relu", "identity"], "mse", "mean", {"bias": [False, True], "relu_at_zero": 1}),
    "nobias_leaky1": ([2, 3, 1], [{"name": "leaky_relu", "slope": 0.25}, "tanh"], "sse", "sum",
                      {"bias": False, "relu_at_zero": 1}),
    "udl_toy": ([2, 1], ["relu"], "bce", "mean", {"allow_any_output": True}),
}


def make(key, sizes=None):
    s, acts, loss, red, *opts = NETS[key]
    define = {"swish": "z * sigmoid(z)"} if "swish" in acts else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", symbp.OutputRangeWarning)   # udl_toy asks for it
        return symbp.mlp(sizes or s, acts, loss, reduction=red, name=key, define=define, **(opts[0] if opts else {}))


def fingerprint(d):
    return [(e.name, e.kind, e.layer, str(e.lhs), str(e.rhs), tuple((s, str(x)) for s, x in e.stages))
            for e in d.equations]


@pytest.mark.parametrize("key", sorted(NETS))
def test_derivation_does_not_depend_on_widths(key):
    small = symbp.derive(make(key))
    depth = small.network.depth
    big_sizes = [100 * (i + 2) for i in range(depth + 1)]     # 200, 300, ...
    big = symbp.derive(make(key, big_sizes))
    assert big.network.sizes == tuple(big_sizes)
    assert fingerprint(small) == fingerprint(big)
    assert str(small.loss_sample) == str(big.loss_sample)
    for e in big.equations:
        assert not set(big_sizes) & {int(x) for x in e.rhs.atoms(sp.Integer)}, (e.name, e.rhs)


def _check_layer_equations(d, l):
    a_prev, a_l, W, b = q("a", l - 1), q("a", l), q("W", l), q("b", l)
    delta, ga_prev = q("delta", l), q("ga", l - 1)
    bias = d.network.layers[l - 1].bias
    assert d[f"z{l}"].lhs == q("z", l)[S, J]
    assert d[f"z{l}"].rhs == sp.Sum(W[J, K] * a_prev[S, K], (K, 0, n(l - 1) - 1)) + (b[J] if bias else 0)
    assert d[f"ga{l - 1}"].rhs == sp.Sum(W[J, I] * delta[S, J], (J, 0, n(l) - 1))
    assert d[f"gW{l}"].lhs == q("gW", l)[P, Q]
    assert d[f"gW{l}"].rhs == sp.Sum(delta[S, P] * a_prev[S, Q], (S, 0, B - 1))
    if bias:
        assert d[f"gb{l}"].lhs == q("gb", l)[P]
        assert d[f"gb{l}"].rhs == sp.Sum(delta[S, P], (S, 0, B - 1))
        assert batch_form(d[f"gb{l}"].lhs, d[f"gb{l}"].rhs) == ColumnSum(delta)
    else:   # no bias: no b anywhere, no dL/db equation, no dz/db rule
        assert f"gb{l}" not in d._by_name
        assert d.layers[l - 1].dz_db is None
        assert not any(e.rhs.has(b) for e in d.equations)

    assert batch_form(d[f"z{l}"].lhs, d[f"z{l}"].rhs) == Product(a_prev, False, W, True, b if bias else None)  # A W^T + b
    assert batch_form(d[f"ga{l - 1}"].lhs, d[f"ga{l - 1}"].rhs) == Product(delta, False, W, False)  # D W
    assert batch_form(d[f"gW{l}"].lhs, d[f"gW{l}"].rhs) == Product(delta, True, a_prev, False)   # D^T A
    assert batch_form(d[f"a{l}"].lhs, d[f"a{l}"].rhs) is None
    assert batch_form(d[f"delta{l}"].lhs, d[f"delta{l}"].rhs) is None


@pytest.mark.parametrize("key", sorted(NETS))
def test_matrix_structure_of_every_layer(key):
    d = symbp.derive(make(key))
    for l in range(1, d.network.depth + 1):
        _check_layer_equations(d, l)


def test_batch_form_reads_index_notation():
    X, Wb, bb, Db = (sp.IndexedBase(x) for x in ("X", "Wt", "bt", "Dt"))
    out = sp.IndexedBase("O")
    m = sp.Symbol("m", integer=True, positive=True)
    assert batch_form(out[S, J], sp.Sum(X[S, K] * Wb[K, J], (K, 0, m - 1))) == Product(X, False, Wb, False)
    assert batch_form(out[S, J], sp.Sum(Wb[K, S] * X[J, K], (K, 0, m - 1))) == Product(Wb, True, X, True)
    assert batch_form(out[P], sp.Sum(Db[S, P], (S, 0, B - 1))) == ColumnSum(Db)
    # Elementwise or not a single two-factor contraction: None.
    assert batch_form(out[S, J], X[S, J] * Db[S, J]) is None
    assert batch_form(out[S, J], sp.Sum(X[S, K] * Wb[K, J] * Db[S, K], (K, 0, m - 1))) is None
    assert batch_form(out[S, J], sp.Sum(X[S, K] * Wb[K, J], (K, 0, m - 1), (S, 0, B - 1))) is None
    assert batch_form(out[P], sp.Sum(Db[P, S], (S, 0, B - 1))) is None


def _index_piecewise(e):
    return [pw for pw in e.atoms(sp.Piecewise)
            if any(c.free_symbols and all(getattr(x, "is_integer", False) for x in c.free_symbols)
                   for _, c in pw.args)]


@pytest.mark.parametrize("key", sorted(NETS) + [f"example:{p.stem}" for p in EXAMPLES])
def test_no_leftover_deltas_derivatives_or_piecewise(key):
    net = symbp.load(ROOT / "examples" / "specs" / f"{key[8:]}.toml") if key.startswith("example:") else make(key)
    d = symbp.derive(net)
    kinds = {e.kind for e in d.equations}
    assert {"forward_z", "forward_a", "loss", "output_delta", "input_grad", "grad_W"} <= kinds
    assert ("grad_b" in kinds) == any(layer.bias for layer in net.layers)
    for e in d.equations:
        assert not e.rhs.has(sp.KroneckerDelta), (e.name, e.rhs)
        assert not e.rhs.has(sp.Derivative), (e.name, e.rhs)
        if "leaky" not in key:
            assert not e.rhs.has(sp.Piecewise), (e.name, e.rhs)      # no leaky_relu in these nets
        assert not e.rhs.has(sp.Dummy), (e.name, e.rhs)


def test_leaky_relu_hidden_layer_keeps_only_its_own_piecewise():
    d = symbp.derive(symbp.mlp([2, 3, 1], [{"name": "leaky_relu", "slope": 0.1}, "identity"], "mse"))
    for e in d.equations:
        assert not e.rhs.has(sp.KroneckerDelta) and not _index_piecewise(e.rhs), (e.name, e.rhs)
    assert d["delta1"].rhs.has(sp.Piecewise)


def test_leaky_relu_output_layer_derives():
    d = symbp.derive(symbp.mlp([2, 3, 1], ["sigmoid", "leaky_relu"], "mse"))
    assert not d["delta2"].rhs.has(sp.KroneckerDelta)


# --- stages and the dump -------------------------------------------------------------------

def test_passes_are_in_the_order_the_docstring_states():
    stated = re.findall(r"^\d+\. ``(\w+)``", simp.__doc__, flags=re.M)
    assert stated == PASS_NAMES
    assert len(set(PASS_NAMES)) == len(PASS_NAMES) >= 5


def _is_ordered(names):
    pos = [STAGE_ORDER.index(x) for x in names]
    return pos == sorted(pos) and len(set(pos)) == len(pos)


@pytest.mark.parametrize("key", sorted(NETS))
def test_equation_stages_follow_passes(key):
    d = symbp.derive(make(key))
    for e in d.equations:
        names = [s for s, _ in e.stages]
        if e.kind in ("forward_z", "forward_a", "loss"):
            assert names == ["definition"], (e.name, names)
        elif e.kind == "output_delta" and d.network.allow_any_output:
            assert names == ["derived"] + PASS_NAMES + ["chain"], (e.name, names)
        else:
            assert names == ["derived"] + PASS_NAMES, (e.name, names)
        assert e.stages[-1][1] == e.rhs
    for lr in d.layers:
        for stages in (lr.jacobian, lr.dz_da, lr.dz_dW, lr.dz_db):
            if stages is None:       # dz/db of a layer without bias
                assert not d.network.layers[lr.layer - 1].bias
                continue
            assert [s for s, _ in stages] == ["derived"] + PASS_NAMES


DUMP_LINE = re.compile(r"^  (.+?) \[([a-z_]+)\]: ")


def _dump_groups(text):
    """[(label, [stage, ...]), ...] from the dump, consecutive lines of one label grouped."""
    groups = []
    for line in text.splitlines():
        m = DUMP_LINE.match(line)
        if not m:
            continue
        label, stage = m.groups()
        if groups and groups[-1][0] == label and stage not in ("derived", "definition"):
            groups[-1][1].append(stage)
        else:
            groups.append((label, [stage]))
    return groups


def test_dump_lists_stages_in_pass_order():
    seen = set()
    for key in sorted(NETS):
        d = symbp.derive(make(key))
        text = d.dump()
        assert text == d.dump()
        groups = _dump_groups(text)
        assert groups, text
        labels = [g[0] for g in groups]
        for e in d.equations:
            assert str(e.lhs) in labels, e.name
        for label, stages in groups:
            assert stages[0] in ("derived", "definition"), (label, stages)
            assert _is_ordered(stages), (label, stages)
            seen.update(stages)
    # Over these networks every pass changes something, so every pass shows up in a dump.
    assert set(PASS_NAMES) <= seen, set(PASS_NAMES) - seen


def test_dump_shows_the_cancellation_steps():
    text = symbp.derive(make("xor")).dump()
    delta2 = [line for line in text.splitlines() if line.startswith("  delta2[s, j] [")]
    assert delta2[0].startswith("  delta2[s, j] [derived]: ") and "KroneckerDelta" in delta2[0]
    assert delta2[-1] == "  delta2[s, j] [cancel]: (a2[s, j] - y[s, j])/B"
    assert "f'(z) [forward_outputs]: a*(1 - a)" in text


# --- determinism ---------------------------------------------------------------------------

def test_derive_is_deterministic_in_process():
    net = make("deep_mixed")
    first = symbp.derive(net)
    again = symbp.derive(net)
    assert fingerprint(first) == fingerprint(again)
    assert first.dump() == again.dump()
    graph_mod = importlib.import_module("symbp.derivation.graph")
    local_mod = importlib.import_module("symbp.derivation.local")
    for fn in (local_mod.output_form, graph_mod._template, graph_mod._loss_template):
        fn.cache_clear()
    fresh = symbp.derive(make("deep_mixed"))
    assert fingerprint(fresh) == fingerprint(first)
    assert fresh.dump() == first.dump()


def test_derive_is_deterministic_across_processes():
    code = ("import symbp\n"
            "net = symbp.mlp([4, 5, 3, 3], ['swish', 'softmax', 'softmax'], 'ce', name='mix',\n"
            "                define={'swish': 'z * sigmoid(z)'})\n"
            "print(symbp.derive(net).dump(), end='')\n")
    here = symbp.derive(symbp.mlp([4, 5, 3, 3], ["swish", "softmax", "softmax"], "ce", name="mix",
                                  define={"swish": "z * sigmoid(z)"})).dump()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    for seed in ("1", "12345"):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                             env={**env, "PYTHONHASHSEED": seed}, check=True).stdout
        assert out == here


# --- depth and softmax hidden layers -------------------------------------------------------

def test_ten_layer_mlp_derives():
    acts = list(itertools.islice(itertools.cycle(["tanh", "relu", "sigmoid", "softplus", "identity"]), 9))
    net = symbp.mlp([6] + [8] * 9 + [4], acts + ["softmax"], "ce", name="deep10")
    d = symbp.derive(net)
    L = 10
    assert len(d.equations) == 6 * L + 2
    assert d["delta10"].rhs == (q("a", 10)[S, J] - q("y")[S, J]) / B
    for l in range(1, L + 1):
        _check_layer_equations(d, l)
        assert not d[f"delta{l}"].rhs.has(sp.KroneckerDelta)
    assert d["ga0"].kind == "input_grad"


def test_softmax_hidden_layer_has_the_full_jacobian():
    net = symbp.mlp([3, 4, 1], ["softmax", "sigmoid"], "bce")
    d = symbp.derive(net)
    lr = d.layers[0]
    assert lr.rule is None           # a vector activation has no scalar f'
    a1, ga1 = q("a", 1), q("ga", 1)
    jac = lr.jacobian[-1][1]
    assert sp.expand(jac - a1[S, I] * (sp.KroneckerDelta(I, J) - a1[S, J])) == 0, jac
    rhs = d["delta1"].rhs
    expected = a1[S, J] * ga1[S, J] - a1[S, J] * sp.Sum(a1[S, I] * ga1[S, I], (I, 0, n(1) - 1))
    assert sp.simplify(rhs - expected) == 0, rhs

    # Independently: at n_1 = 4, delta_j = sum_i g_i d softmax_i / d z_j with SymPy's own diff.
    w = sp.symbols("w0:4", real=True)
    soft = [sp.exp(x) / sum(sp.exp(v) for v in w) for x in w]
    at = dict(zip(w, [sp.Rational(1, 2), sp.Integer(-1), sp.Rational(1, 3), sp.Integer(2)]))
    g = [sp.Rational(3, 5), sp.Integer(-2), sp.Rational(1, 7), sp.Integer(1)]
    values = {}
    for k in range(4):
        values[a1[S, k]] = soft[k].xreplace(at)
        values[ga1[S, k]] = g[k]
    for j in range(4):
        want = sum(g[i] * sp.diff(soft[i], w[j]) for i in range(4)).xreplace(at)
        got = rhs.xreplace({J: j, n(1): 4}).doit().xreplace(values)
        assert abs(complex(sp.N(got - want, 30))) < 1e-25, (j, got, want)


# --- the network options ---------------------------------------------------------------------

@pytest.mark.parametrize("at_zero", [0, 1])
def test_relu_at_zero_reaches_the_kink_pass(at_zero):
    """Heaviside(0) = relu_at_zero in relu's f' and in the hidden delta; the kink stage of the
    rule says it; with 1, relu's f' keeps z (a = max(0, z) = 0 cannot tell z = 0 from z < 0)."""
    d = symbp.derive(symbp.mlp([2, 3, 2], ["relu", "identity"], "mse", relu_at_zero=at_zero))
    rule = d.layers[0].rule
    assert dict(rule.stages)["kink"] == sp.Heaviside(naming.Z, at_zero)
    assert rule.uses == ("z" if at_zero else "a")
    step = q("z" if at_zero else "a", 1)[S, J]
    assert d["delta1"].rhs == sp.Heaviside(step, at_zero) * q("ga", 1)[S, J]
    assert d.network.relu_at_zero == at_zero


@pytest.mark.parametrize("at_zero,at_0", [(0, sp.Rational(1, 4)), (1, sp.Integer(1))])
def test_relu_at_zero_gives_leaky_relu_its_one_sided_derivative(at_zero, at_0):
    d = symbp.derive(symbp.mlp([2, 3, 1], [{"name": "leaky_relu", "slope": 0.25}, "identity"], "mse",
                               relu_at_zero=at_zero))
    rule = d.layers[0].rule
    assert rule.uses == "a"     # sign(a) = sign(z): the rule reads a in both conventions
    assert rule.form.xreplace({naming.A: 0}) == at_0
    assert rule.form.xreplace({naming.A: sp.Rational(1, 2)}) == 1
    assert rule.form.xreplace({naming.A: -sp.Rational(1, 2)}) == sp.Rational(1, 4)
    delta1 = d["delta1"].rhs.xreplace({q("a", 1)[S, J]: 0, q("ga", 1)[S, J]: 1})
    assert delta1 == at_0


def test_udl_toy_bce_after_relu_gives_the_slide_formulas():
    """The UDL toy example: dL/dh = (h - y)/(h (1 - h)) (over the batch size B), and the output
    delta is I[f > 0] times that, as one product; the kernels' loss reads h (a), not f (z)."""
    d = symbp.derive(make("udl_toy"))
    a, y, z = q("a", 1)[S, J], q("y")[S, J], q("z", 1)[S, J]
    ga = d["ga1"].rhs
    assert sp.simplify(ga - (a - y) / (B * a * (1 - a))) == 0, ga
    delta = d["delta1"].rhs
    assert delta == sp.Heaviside(a, 0) * ga      # f'(z) * dL/da, kept as the product
    assert d["delta1"].stages[-2][0] == "sign" and d["delta1"].stages[-1][0] == "chain"
    loss, reads = d.loss_sample
    assert reads == "a" and not loss.has(q("z", 1)) and loss.has(sp.log)
    assert "chain" not in [s for s, _ in symbp.derive(make("xor"))["delta2"].stages]


# --- one derivation: the chain view of the graph's -------------------------------------------

def test_network_graph_is_the_chain_graph():
    net = make("xor")
    g = net.graph
    assert g is net.graph                       # cached
    assert [n.name for n in g.nodes] == ["x", "z1", "a1", "z2", "a2", "y", "loss"]
    assert g.param_shapes() == net.param_shapes() and [n.name for n in g.grad_inputs] == ["x"]
    assert [n.op.realize for n in g.nodes] == ["source", "contraction", "elementwise", "contraction",
                                               "elementwise", "source", "loss"]


@pytest.mark.parametrize("key", ["xor", "udl_toy"])
def test_derive_keeps_the_one_graph_derivation(key, monkeypatch):
    """derive derives the chain graph once: the MLP Derivation keeps that graph derivation in the
    graph's own names (g_z1, n_z1, x), chain_view of it is derive, and the code generator reads
    it without deriving again."""
    from symbp.codegen.graph_emit import emit_mlp
    graph_mod = importlib.import_module("symbp.derivation.graph")
    net = make(key)
    d = symbp.derive(net)
    gd = d.graph_derivation
    assert gd.graph is net.graph and gd.dump() == graph_mod.derive_graph(net.graph).dump()
    assert str(gd[f"g_z{net.depth}"].lhs) == f"g_z{net.depth}[s, j]"
    again = derive_mod.chain_view(gd, net)
    assert [(e.name, e.kind, e.layer, e.lhs, e.stages) for e in again.equations] == \
        [(e.name, e.kind, e.layer, e.lhs, e.stages) for e in d.equations]
    assert again.layers == d.layers and again.loss_sample == d.loss_sample and again.dump() == d.dump()

    def broken(*a, **k):
        raise AssertionError("generating an MLP's kernel must not derive again")

    monkeypatch.setattr(graph_mod, "_derive_graph", broken)
    assert "def loss_and_grad" in emit_mlp(d, "cpu", "float64")


def test_no_mlp_only_derivation_is_left():
    for name in ("_layer_template", "_layer_names", "_rename", "_G"):
        assert not hasattr(derive_mod, name)

"""The derivation as a whole: symbolic sizes, matrix structure, stages, determinism.

- widths are symbols: [2, 3, 1] and [200, 300, 100] give the same equations;
- the index equations have the matrix structure the kernels need (``batch_form``):
  z = A W^T + b, g = D W, gW = D^T A, gb = column sum of D, in exactly the index form
  gW_l[p, q] = Sum_s delta_l[s, p] a_{l-1}[s, q];
- no equation keeps a KroneckerDelta, a Derivative or an index-range Piecewise;
- every rule carries its stages in the order of ``symbp.simplify.PASSES`` (which is the order
  the module docstring states), and ``Derivation.dump()`` lists them in that order;
- deriving is deterministic (same text twice, after clearing caches, in fresh processes with
  other hash seeds); a 10-layer network derives; a softmax hidden layer gets the full Jacobian
  a_i (delta_ij - a_j).
"""
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
from symbp import simplify as simp
from symbp.derivation import ColumnSum, Product, batch_form

derive_mod = importlib.import_module("symbp.derive")   # symbp.derive is also the function
ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples" / "specs").glob("*.toml"))
S, I, J, K, P, Q = naming.S, naming.I, naming.J, naming.K, naming.P, naming.Q
B = naming.BATCH
q = naming.quantity
n = naming.width
PASS_NAMES = [p.name for p in simp.PASSES]
STAGE_ORDER = ["definition", "derived"] + PASS_NAMES

NETS = {
    "xor": ([2, 3, 1], ["sigmoid", "sigmoid"], "bce", "mean"),
    "relu_sse_sum": ([2, 3, 2], ["relu", "identity"], "sse", "sum"),
    "tanh_softmax_ce": ([4, 5, 3], ["tanh", "softmax"], "ce", "mean"),
    "softmax_hidden": ([4, 5, 3], ["softmax", "softmax"], "ce", "mean"),
    "deep_mixed": ([3, 4, 5, 4, 2], ["softplus", "exp", "relu", "identity"], "mse", "mean"),
    "swish": ([3, 4, 2], ["swish", "identity"], "sse", "sum"),
}


def make(key, sizes=None):
    s, acts, loss, red = NETS[key]
    define = {"swish": "z * sigmoid(z)"} if "swish" in acts else None
    return symbp.mlp(sizes or s, acts, loss, reduction=red, name=key, define=define)


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
    assert d[f"z{l}"].lhs == q("z", l)[S, J]
    assert d[f"z{l}"].rhs == sp.Sum(W[J, K] * a_prev[S, K], (K, 0, n(l - 1) - 1)) + b[J]
    assert d[f"ga{l - 1}"].rhs == sp.Sum(W[J, I] * delta[S, J], (J, 0, n(l) - 1))
    assert d[f"gW{l}"].lhs == q("gW", l)[P, Q]
    assert d[f"gW{l}"].rhs == sp.Sum(delta[S, P] * a_prev[S, Q], (S, 0, B - 1))
    assert d[f"gb{l}"].lhs == q("gb", l)[P]
    assert d[f"gb{l}"].rhs == sp.Sum(delta[S, P], (S, 0, B - 1))

    assert batch_form(d[f"z{l}"].lhs, d[f"z{l}"].rhs) == Product(a_prev, False, W, True, b)      # A W^T + b
    assert batch_form(d[f"ga{l - 1}"].lhs, d[f"ga{l - 1}"].rhs) == Product(delta, False, W, False)  # D W
    assert batch_form(d[f"gW{l}"].lhs, d[f"gW{l}"].rhs) == Product(delta, True, a_prev, False)   # D^T A
    assert batch_form(d[f"gb{l}"].lhs, d[f"gb{l}"].rhs) == ColumnSum(delta)
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
    assert {"forward_z", "forward_a", "loss", "output_delta", "input_grad", "grad_W", "grad_b"} <= kinds
    for e in d.equations:
        assert not e.rhs.has(sp.KroneckerDelta), (e.name, e.rhs)
        assert not e.rhs.has(sp.Derivative), (e.name, e.rhs)
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
        else:
            assert names == ["derived"] + PASS_NAMES, (e.name, names)
        assert e.stages[-1][1] == e.rhs
    for lr in d.layers:
        for stages in (lr.jacobian, lr.dz_da, lr.dz_dW, lr.dz_db):
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
    for fn in (derive_mod.output_form, getattr(derive_mod, "_layer_template", None)):
        if hasattr(fn, "cache_clear"):
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

"""The LaTeX document of a Derivation: it compiles for every valid output activation x loss x
notation, each notation's matrix equations are correct in its own convention (checked with
numbers, not only as text), the explicit Jacobians carry the derived entries, and the output is
deterministic."""
import os
import shutil
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import sympy as sp

import symbp
from conftest import quick_sample
from symbp import naming
from symbp.errors import SpecError, SymbpError
from symbp.model.functions import ACTIVATIONS, LOSSES
from symbp.render import latex, pdf
from symbp.render.latex import NOTATIONS, Context, render, write_document
from symbp.render.notation import get, latex_base

HAVE_PDFLATEX = shutil.which("pdflatex") is not None
needs_pdflatex = pytest.mark.skipif(not HAVE_PDFLATEX, reason="pdflatex not installed")
HIDDEN = [name for name, act in ACTIVATIONS.items() if act.elementwise]


def _valid(out, loss):
    try:
        symbp.mlp([2, 3, 2], ["tanh", out], loss)
    except SpecError:
        return False
    return True


# Every output activation x loss the network validator accepts; the hidden activation walks
# through the elementwise table so that each one is rendered as a hidden layer too.
COMBOS = [(out, loss) for out in ACTIVATIONS for loss in LOSSES if _valid(out, loss)]
CASES = [(HIDDEN[k % len(HIDDEN)], out, loss) for k, (out, loss) in enumerate(COMBOS)]


@lru_cache(maxsize=None)
def derivation(sizes, acts, loss, reduction="mean"):
    return symbp.derive(symbp.mlp(list(sizes), list(acts), loss, reduction=reduction, name="net"))


def _compile(tex, tmp_path):
    (tmp_path / "doc.tex").write_text(tex)
    run = subprocess.run(["pdflatex", "-halt-on-error", "-interaction=nonstopmode", "doc.tex"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-3000:]
    assert (tmp_path / "doc.pdf").stat().st_size > 0


def test_every_valid_combination_is_covered():
    assert {"bce", "ce", "mse", "sse"} <= {loss for _, loss in COMBOS}
    assert ("softmax", "bce") not in COMBOS and ("sigmoid", "ce") not in COMBOS
    assert ("sigmoid", "bce") in COMBOS and ("softmax", "ce") in COMBOS
    assert set(HIDDEN) <= {h for h, _, _ in CASES}


# pdflatex runs take most of this file's time: the quick set compiles every case in one notation
# and every notation once; the full case x notation list runs under `slow`.
DOCUMENTS = [(h, o, l, n) for h, o, l in CASES for n in NOTATIONS]


@needs_pdflatex
@pytest.mark.parametrize("hidden,out,loss,notation", quick_sample(DOCUMENTS, lambda c: c[:3], lambda c: c[3],
                                                                 ids=["-".join(c) for c in DOCUMENTS]))
def test_document_compiles(hidden, out, loss, notation, tmp_path):
    d = derivation((2, 3, 2), (hidden, out), loss)
    _compile(render(d, notation, document=True), tmp_path)


SHAPES = [
    ((3, 2), ("softmax",), "ce", "sum"),                                            # one layer
    ((2, 3, 2, 1), ("relu", "leaky_relu", "sigmoid"), "bce", "mean"),              # deep, kinks
    ((6, 5, 4), ("softplus", "softmax"), "ce", "mean"),                             # too big to show
]
# each shape in one notation, each notation once (quick set); the rest under `slow`. The pairs
# come by diagonals of shape x notation, so the quick ones spread over both.
SHAPE_DOCUMENTS = sorted(((*shape, n) for shape in SHAPES for n in NOTATIONS),
                         key=lambda c: ((NOTATIONS.index(c[4]) - SHAPES.index(c[:4])) % len(NOTATIONS),
                                        SHAPES.index(c[:4])))


@needs_pdflatex
@pytest.mark.parametrize("sizes,acts,loss,reduction,notation",
                         quick_sample(SHAPE_DOCUMENTS, lambda c: c[:4], lambda c: c[4],
                                      ids=[f"sizes{i}-acts{i}-{c[2]}-{c[3]}-{c[4]}"
                                           for c in SHAPE_DOCUMENTS for i in [SHAPES.index(c[:4])]]))
def test_other_shapes_compile(sizes, acts, loss, reduction, notation, tmp_path):
    _compile(render(derivation(sizes, acts, loss, reduction), notation, document=True), tmp_path)


@needs_pdflatex
def test_user_activation_in_z_compiles(tmp_path):
    d = symbp.derive(symbp.load(Path(__file__).parent.parent / "examples/specs/swish.toml"))
    tex = render(d, "cs231n", document=True)
    assert r"in terms of $a$ exists: the backward pass reads the stored $z$" in tex
    _compile(tex, tmp_path)


# ---------------------------------------------------------------------------------------------
# Conventions, checked with numbers: each notation's matrix equations (the SymPy matrix
# expressions the document prints) evaluated with its own matrices must give its own gradients.

RNG = np.random.default_rng(7)
B = 4
SIZES = (2, 3, 2)


def _ours():
    """Batch values in the derivation's convention: rows are samples, W is (n_out, n_in)."""
    n = SIZES
    v = {("a", 0): RNG.normal(size=(B, n[0]))}
    for l in (1, 2):
        v[("W", l)] = RNG.normal(size=(n[l], n[l - 1]))
        v[("b", l)] = RNG.normal(size=n[l])
        v[("a", l)] = RNG.normal(size=(B, n[l]))
        v[("delta", l)] = RNG.normal(size=(B, n[l]))
        v[("Ja", l)] = RNG.normal(size=(B, n[l], n[l]))      # per-sample Jacobians, our layout
    for l in (1, 2):       # the relations that define our convention
        v[("z", l)] = v[("a", l - 1)] @ v[("W", l)].T + v[("b", l)]
        v[("ga", l - 1)] = v[("delta", l)] @ v[("W", l)]
        v[("gW", l)] = v[("delta", l)].T @ v[("a", l - 1)]
        v[("gb", l)] = v[("delta", l)].sum(axis=0)
    v[("Jz", 2)] = v[("W", 2)].T
    return v


OURS = _ours()


def _own(nt, flavor, kind, layer, s):
    if kind == "ones":
        return np.ones((B, 1))
    x = OURS[(kind, layer)]
    if kind in ("W", "gW", "Jz"):
        m = x
    elif kind == "Ja":
        m = x[s]
    elif kind in ("b", "gb"):
        m = x.reshape(-1, 1) if flavor == "sample" else x.reshape(1, -1)
    else:
        m = x[s].reshape(-1, 1) if flavor == "sample" else x
    return m.T if kind in nt.transposed[flavor] else m


def _value(nt, expr, s):
    rep = {}
    for m in expr.atoms(sp.MatrixSymbol):
        _, kind, layer, flavor = m.name.split("|")
        rep[m] = sp.Matrix(_own(nt, flavor, kind, None if layer == "None" else int(layer), s))
    return np.array(expr.xreplace(rep).doit(), dtype=float)


def _check(nt, meq):
    _, kind, layer, flavor = meq.lhs.name.split("|")
    samples = range(B) if flavor == "sample" else [None]
    if meq.summed:
        got = sum(_value(nt, meq.rhs, s) for s in samples)
        want = _own(nt, flavor, kind, int(layer), None)
        np.testing.assert_allclose(got, want, atol=1e-12)
        return
    for s in samples:
        np.testing.assert_allclose(_value(nt, meq.rhs, s), _own(nt, flavor, kind, int(layer), s), atol=1e-12)


@pytest.mark.parametrize("notation", NOTATIONS)
def test_matrix_equations_hold_in_each_convention(notation):
    nt = get(notation)
    d = derivation(SIZES, ("sigmoid", "sigmoid"), "mse")
    ctx = Context(d, nt)
    for flavor in nt.flavors:
        for name in ("z1", "z2", "ga0", "ga1", "gW1", "gW2", "gb1", "gb2"):
            _check(nt, ctx.equation(d[name], flavor))
    # the chain rule with Jacobians, per sample: delta^1 = (da/dz) (dz^2/da^1) delta^2 (ours)
    chain = ctx.convert(ctx.ours("delta", 1, "sample"),
                        ctx.ours("Ja", 1, "sample") * ctx.ours("Jz", 2, "sample") * ctx.ours("delta", 2, "sample"))
    for s in range(B):
        want = OURS[("Ja", 1)][s] @ OURS[("W", 2)].T @ OURS[("delta", 2)][s]
        got = _value(nt, chain.rhs, s).reshape(-1)
        np.testing.assert_allclose(got, want, atol=1e-12)
        assert chain.lhs.shape == ((1, 3) if "delta" in nt.transposed["sample"] else (3, 1))


# ---------------------------------------------------------------------------------------------
# The printed conventions

@pytest.fixture(scope="module")
def xor():
    return {n: render(derivation((2, 3, 1), ("sigmoid", "sigmoid"), "bce"), n, document=True)
            for n in NOTATIONS}


@pytest.mark.parametrize("notation,expected", [
    ("cs231n", [r"z^{[1]} &= W^{[1]} x + b^{[1]} && (3 \times 1) = (3 \times 2)(2 \times 1) + (3 \times 1)",
                r"\frac{\partial L}{\partial W^{[2]}} &= \sum_{s=1}^{B} \delta^{[2](s)} \left(a^{[1](s)}\right)^{T}"
                r" && (1 \times 3) = (1 \times 1)(1 \times 3)",
                r"\delta^{[1]} &= a^{[1]} \odot \left(1 - a^{[1]}\right) \odot \left(\left(W^{[2]}\right)^{T} "
                r"\delta^{[2]}\right) && (3 \times 1) = (3 \times 1) \odot (3 \times 1)(1 \times 1)",
                r"\delta^{[2]} = \frac{a^{[2]} - y}{B}",
                r"W^{[1]} \in \mathbb{R}^{3 \times 2}"]),
    ("udl", [r"f_{0} &= \Omega_{0} x + \beta_{0}",
             r"\frac{\partial L}{\partial \Omega_{1}} &= \sum_{s=1}^{B} \frac{\partial L}{\partial f_{1}^{(s)}} "
             r"\left(h_{1}^{(s)}\right)^{T}",
             r"\odot \left(\Omega_{1}^{T} \frac{\partial L}{\partial f_{1}}\right)",
             r"\frac{\partial L}{\partial x} &= \Omega_{0}^{T} \frac{\partial L}{\partial f_{0}}"]),
    ("transposed", [r"f^{[1]} &= \left(W^{[1]}\right)^{T} x + b^{[1]} && (3 \times 1) = (3 \times 2)(2 \times 1)",
                    r"\frac{\partial \varepsilon}{\partial W^{[2]}} &= \sum_{s=1}^{B} a^{[1](s)} "
                    r"\left(\delta^{[2](s)}\right)^{T} && (3 \times 1) = (3 \times 1)(1 \times 1)",
                    r"\frac{\partial \varepsilon}{\partial a^{[1]}} &= W^{[2]} \delta^{[2]}",
                    r"\frac{\partial \varepsilon}{\partial W_{qp}^{[1]}}",
                    r"W^{[1]} \in \mathbb{R}^{2 \times 3}"]),
    ("rowvector", [r"g_{1} &= g_{z_{2}} W_{2} && (1 \times 3) = (1 \times 1)(1 \times 3)",
                   r"\frac{\partial J}{\partial W_{2}} &= \sum_{s=0}^{B - 1} x_{1}^{(s)} g_{z_{2}}^{(s)} "
                   r"&& (3 \times 1) = (3 \times 1)(1 \times 1)",
                   r"\frac{\partial J}{\partial b_{1}} &= \sum_{s=0}^{B - 1} g_{z_{1}}^{(s)} && (1 \times 3)",
                   r"g_{z_{2}} &= \left(\frac{x_{2} - y}{B}\right)^{T}",
                   r"g_{z_{1}} &= g_{z_{2}} \frac{\partial z_{2}}{\partial x_{1}} \frac{\partial x_{1}}{\partial z_{1}}",
                   r"z_{1}[j] &= b_{1}[j] + \sum_{k=0}^{n_{0} - 1} W_{1}[j, k] x_{0}[k]"]),
    ("batch", [r"H_{1} &= X W_{1} + \mathbf{1} b_{1} && (B \times 3) = (B \times 2)(2 \times 3) + (B \times 1)(1 \times 3)",
               r"\frac{\partial L}{\partial W_{1}} &= X^{T} \Delta_{1} && (2 \times 3) = (2 \times B)(B \times 3)",
               r"\frac{\partial L}{\partial b_{1}} &= \mathbf{1}^{T} \Delta_{1}",
               r"\frac{\partial L}{\partial X} &= \Delta_{1} W_{1}^{T} && (B \times 2) = (B \times 3)(3 \times 2)",
               r"\Delta_{1} &= A_{1} \odot \left(1 - A_{1}\right) \odot \left(\Delta_{2} W_{2}^{T}\right)",
               r"W_{1} \in \mathbb{R}^{2 \times 3}"]),
])
def test_each_notation_prints_its_convention(xor, notation, expected):
    for s in expected:
        assert s in xor[notation], s


def test_notation_notes_say_where_the_weight_is_transposed(xor):
    assert r"$\partial \varepsilon / \partial W^{[l]} = a^{[l-1]} (\delta^{[l]})^{T}$" in xor["transposed"]
    assert r"$\partial L / \partial W_l = A_{l-1}^{T} \Delta_l$" in xor["batch"]
    assert "the transpose of the weight of $z = W a + b$" in xor["batch"]
    assert "Gradients are row vectors" in xor["rowvector"]


def test_local_derivative_and_its_forward_form(xor):
    tex = xor["cs231n"]
    assert r"\sigma'(z) &= \frac{e^{- z}}{\left(1 + e^{- z}\right)^{2}} && \text{derivative of } \sigma(z)" in tex
    assert r"&= \left(1 - \sigma(z)\right) \sigma(z) && \text{in terms of } \sigma(z)" in tex
    assert r"&= a \left(1 - a\right) && \text{with }a = \sigma(z)" in tex
    assert "cancels against the derivative of the binary cross-entropy loss" in tex


def test_stages_only_on_request():
    """SymPy's passes and their stages are behind stages=True; the handout shows none."""
    d = derivation((2, 3, 1), ("sigmoid", "sigmoid"), "bce")
    staged, handout = render(d, "cs231n", document=True, stages=True), render(d, "cs231n", document=True)
    for label in (r"\text{derived}", r"\text{collapse}", r"\text{cancel}", r"\text{forward\_outputs: }"):
        assert label in staged and label not in handout, label
    assert r"&= \frac{a_{j}^{[2]} - y_{j}}{B} && \text{cancel}" in staged
    assert d.latex(document=True, stages=True) == staged


def test_output_error_is_local_times_upstream_then_one_step(xor):
    """No expand-then-refactor detour: the product, the surviving term, the result."""
    tex = xor["cs231n"]
    chain = (r"\delta_{j}^{[2]} &= \sum_{i=1}^{n_{2}} \mathbb{I}[i = j]\, a_{i}^{[2]} \left(1 - a_{i}^{[2]}\right) "
             r"\cdot \frac{a_{i}^{[2]} - y_{i}}{B a_{i}^{[2]} \left(1 - a_{i}^{[2]}\right)} "
             r"&& \text{local} \times \text{upstream} \\" "\n"
             r" &= a_{j}^{[2]} \left(1 - a_{j}^{[2]}\right) \cdot \frac{a_{j}^{[2]} - y_{j}}{B a_{j}^{[2]} "
             r"\left(1 - a_{j}^{[2]}\right)} && \text{only } i = j \text{ remains} \\" "\n"
             r" &= \frac{a_{j}^{[2]} - y_{j}}{B} && \text{the activation's derivative cancels}")
    assert chain in tex
    # the hidden layer: the sum over the indicator, then the surviving term, nothing expanded
    assert (r" &= a_{j}^{[1]} \left(1 - a_{j}^{[1]}\right) \frac{\partial L}{\partial a_{j}^{[1]}} "
            r"&& \text{only } i = j \text{ remains}") in tex
    assert r"\left(a_{j}^{[1]}\right)^{2}" not in tex


def test_softmax_output_states_the_one_hot_step():
    tex = render(derivation((2, 3, 3), ("tanh", "softmax"), "ce"), "cs231n", document=True)
    assert r"&= \frac{a_{j}^{[2]} - y_{j}}{B} && \text{with } \textstyle\sum_i y_i = 1 \text{ (one-hot targets)}" in tex
    assert r"\cdot \left(- \frac{y_{i}}{B a_{i}^{[2]}}\right)" in tex


@pytest.mark.parametrize("loss,expected", [
    ("bce", r"\frac{a_{j}^{[2]} - y_{j}}{B a_{j}^{[2]} \left(1 - a_{j}^{[2]}\right)}"),
    ("mse", r"\frac{a_{j}^{[2]} - y_{j}}{B}"),
])
def test_loss_gradient_reads_prediction_minus_target_over_positive_factors(loss, expected):
    """The printed dL/da: numerator a - y, denominator a product of positive factors."""
    d = derivation((2, 2, 1), ("tanh", "sigmoid"), loss)
    tex = render(d, "cs231n", document=True)
    assert rf"\frac{{\partial L}}{{\partial a_{{j}}^{{[2]}}}} &= {expected} && \text{{upstream}}" in tex
    assert "- a_{j}^{[2]} + y_{j}" not in tex and r"a_{j}^{[2]} - 1\right)" not in tex


def test_sign_rule_is_exact():
    """The printed form of (y - a)/(B (a - 1) a) is the same value."""
    a, y = naming.quantity("a", 2)[naming.S, naming.J], naming.quantity("y")[naming.S, naming.J]
    e = (y - a) / (naming.BATCH * (a - 1) * a)
    pr = latex.Printer(Context(derivation((2, 2, 1), ("tanh", "sigmoid"), "bce"), get("cs231n")), "sample")
    neg, num, den = pr._split(e)
    assert not neg and sp.expand(sp.Mul(*num) / sp.Mul(*den) - e) == 0 or sp.simplify(sp.Mul(*num) / sp.Mul(*den) - e) == 0
    assert num == [a - y] and den == [naming.BATCH, a, 1 - a]
    neg, num, den = pr._split(-e)
    assert neg and sp.simplify(-sp.Mul(*num) / sp.Mul(*den) + e) == 0


def test_relu_kink_is_stated():
    tex = render(derivation((2, 2, 1), ("relu", "identity"), "mse"), "cs231n", document=True)
    assert r"\operatorname{ReLU}'(z) &= \mathbb{I}[z > 0] && \text{derivative of }" in tex
    assert r"\text{kink}" not in tex and r"\theta\left(z\right)" not in tex
    staged = render(derivation((2, 2, 1), ("relu", "identity"), "mse"), "cs231n", document=True, stages=True)
    assert r"\operatorname{ReLU}'(z) &= \theta\left(z\right) && \text{derived}" in staged
    assert r"&= \mathbb{I}[z > 0] && \text{kink}" in staged
    # the hidden error reads 1[z > 0], as the slides write it (exact: 1[a > 0] = 1[z > 0] for ReLU)
    assert r"&= \mathbb{I}[z_{j}^{[1]} > 0]\, \frac{\partial L}{\partial a_{j}^{[1]}}" in tex
    assert r"symbp uses $\operatorname{ReLU}'(0) = 0$, the derivative from the left" in tex
    assert "vanishing" not in tex and "cancels against" not in tex


def test_vanishing_gradient_bound_with_sigmoid(xor):
    tex = xor["cs231n"]
    assert r"\sigma'(z) = a \left(1 - a\right) \le \frac{1}{4}" in tex
    assert (r"\lVert \delta^{[1]} \rVert_{\infty} &\le \frac{1}{4} \lVert \left(W^{[2]}\right)^{T} "
            r"\delta^{[2]} \rVert_{\infty}") in tex
    deep = render(derivation((2, 2, 2, 1), ("sigmoid", "sigmoid", "sigmoid"), "mse"), "cs231n", document=True)
    assert r"carries 3 such factors, together at most $\frac{1}{64}$" in deep


def test_explicit_two_by_two_jacobians():
    d = derivation((2, 2, 2), ("sigmoid", "softmax"), "ce")
    tex = render(d, "cs231n", document=True)
    diag = (r"\frac{\partial a^{[1]}}{\partial z^{[1]}} &= \begin{bmatrix} a_{1}^{[1]} \left(1 - a_{1}^{[1]}\right) "
            r"& 0 \\ 0 & a_{2}^{[1]} \left(1 - a_{2}^{[1]}\right) \end{bmatrix}")
    full = (r"\frac{\partial a^{[2]}}{\partial z^{[2]}} &= \begin{bmatrix} a_{1}^{[2]} \left(1 - a_{1}^{[2]}\right) "
            r"& - a_{1}^{[2]} a_{2}^{[2]} \\ - a_{1}^{[2]} a_{2}^{[2]} & a_{2}^{[2]} \left(1 - a_{2}^{[2]}\right) "
            r"\end{bmatrix}")
    affine = r"&= \begin{bmatrix} W_{11}^{[2]} & W_{21}^{[2]} \\ W_{12}^{[2]} & W_{22}^{[2]} \end{bmatrix}"
    for s in (diag, full, affine):
        assert s in tex, s
    # the transposed notation stores W^T: the same Jacobian is its W, entry for entry
    tr = render(d, "transposed", document=True)
    assert r"&= \begin{bmatrix} W_{11}^{[2]} & W_{12}^{[2]} \\ W_{21}^{[2]} & W_{22}^{[2]} \end{bmatrix}" in tr
    # the softmax entry in general: a_i (delta_ij - a_j)
    assert (r"\frac{\partial a_{i}^{[2]}}{\partial z_{j}^{[2]}} &= a_{i}^{[2]} \left(\mathbb{I}[i = j] - a_{j}^{[2]}\right)"
            in tex)


@pytest.mark.parametrize("sizes,acts,loss", [((2, 2, 2), ("sigmoid", "softmax"), "ce"),
                                             ((3, 3, 3), ("tanh", "sigmoid"), "mse"),
                                             ((2, 3, 2), ("softmax", "identity"), "sse")])
def test_explicit_product_equals_the_printed_result(sizes, acts, loss):
    """The explicit Jacobians multiplied out give the delta entries the document prints."""
    d = derivation(sizes, acts, loss)
    r = latex.Renderer(d, get("cs231n"))
    prod = r.explicit_ours("Ja", 1) * r.explicit_ours("Jz", 2) * r.explicit_ours("delta", 2)
    assert sp.simplify(prod - r.hidden_delta_entries(1)) == sp.zeros(sizes[1], 1)
    L = len(sizes) - 1
    out = r.explicit_ours("Ja", L) * r.explicit_ours("ga", L)
    want = sp.Matrix(sizes[L], 1, lambda i, c: d[f"delta{L}"].rhs.xreplace({naming.J: i}))
    ys = {naming.quantity("y")[naming.S, i]: sp.Rational(1 if i == 0 else 0) for i in range(sizes[L])}
    diff = (out - want).xreplace(ys) if loss == "ce" else out - want   # one-hot targets for ce
    assert sp.simplify(diff) == sp.zeros(sizes[L], 1)


def test_no_explicit_matrices_for_wide_layers():
    tex = render(derivation((6, 5, 4), ("tanh", "softmax"), "ce"), "cs231n", document=True)
    assert "bmatrix" not in tex


# ---------------------------------------------------------------------------------------------
# Summary, Jupyter, determinism, bad input, files

def test_summary_is_one_align_for_jupyter():
    d = derivation((2, 3, 1), ("sigmoid", "sigmoid"), "bce")
    for n in NOTATIONS:
        s = render(d, n)
        assert s.startswith(r"\begin{align*}") and s.rstrip().endswith(r"\end{align*}")
        assert s.count(r"\begin{align*}") == 1 and r"\section" not in s and "documentclass" not in s
    assert d._repr_latex_() == render(d, "cs231n")


def test_same_derivation_same_bytes():
    d = derivation((2, 2, 2), ("relu", "softmax"), "ce")
    assert render(d, "batch", document=True) == render(d, "batch", document=True)


def test_same_bytes_across_processes():
    code = ("import sys, symbp; d = symbp.derive(symbp.mlp([2, 2, 1], ['tanh', 'sigmoid'], 'bce')); "
            "sys.stdout.write(d.latex(notation='udl', document=True))")
    outs = []
    for seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        outs.append(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                   env=env, check=True).stdout)
    assert outs[0] == outs[1] and outs[0].startswith(r"\documentclass")


def test_unknown_notation_names_the_valid_ones():
    d = derivation((2, 2, 1), ("sigmoid", "sigmoid"), "bce")
    with pytest.raises(SymbpError) as e:
        render(d, "klingon")
    msg = str(e.value)
    assert "klingon" in msg and all(n in msg for n in NOTATIONS) and "\n" not in msg
    with pytest.raises(SymbpError):
        latex_base(naming.quantity("W", 1), "klingon")


@pytest.mark.parametrize("notation,expected", [("cs231n", "W^{[2]}"), ("udl", r"\Omega_{1}"),
                                               ("transposed", "W^{[2]}"), ("rowvector", "W_{2}"),
                                               ("batch", "W_{2}")])
def test_naming_reads_the_notation_tables(notation, expected):
    assert latex_base(naming.quantity("W", 2), notation) == expected


def test_write_document_tex_only(tmp_path):
    d = derivation((2, 3, 1), ("sigmoid", "sigmoid"), "bce")
    out = tmp_path / "sub" / "xor.tex"
    assert write_document(d, out, "udl") == [out]
    assert out.read_text() == render(d, "udl", document=True)
    assert not out.with_suffix(".pdf").exists()


@needs_pdflatex
def test_write_document_pdf(tmp_path):
    d = derivation((2, 3, 1), ("sigmoid", "sigmoid"), "bce")
    out = tmp_path / "xor.tex"
    assert write_document(d, out, "batch", pdf=True) == [out, tmp_path / "xor.pdf"]
    assert (tmp_path / "xor.pdf").read_bytes().startswith(b"%PDF")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["xor.pdf", "xor.tex"]


def test_pdf_without_pdflatex_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(pdf.shutil, "which", lambda name: None)
    d = derivation((2, 3, 1), ("sigmoid", "sigmoid"), "bce")
    with pytest.raises(SymbpError, match="pdflatex not found"):
        write_document(d, tmp_path / "xor.tex", pdf=True)
    assert list(tmp_path.iterdir()) == []


@needs_pdflatex
def test_failing_pdflatex_names_its_log_and_writes_no_document(tmp_path, monkeypatch):
    monkeypatch.setattr(latex, "render", lambda *a, **k: "\\documentclass{article}\\begin{document}"
                        "\\undefinedmacro\\end{document}\n")
    d = derivation((2, 3, 1), ("sigmoid", "sigmoid"), "bce")
    with pytest.raises(SymbpError) as e:
        write_document(d, tmp_path / "xor.tex", pdf=True)
    log = tmp_path / "xor.log"
    assert str(log) in str(e.value) and "Undefined control sequence" in str(e.value)
    assert log.exists() and not (tmp_path / "xor.tex").exists() and not (tmp_path / "xor.pdf").exists()


# --- the network options: no bias, relu_at_zero, bce after ReLU --------------------------------

@lru_cache(maxsize=None)
def _options_derivation(key):
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", symbp.OutputRangeWarning)
        net = {"nobias_relu1": lambda: symbp.mlp([2, 2, 1], ["relu", "identity"], "mse", name="net",
                                                bias=[False, True], relu_at_zero=1),
               "udl_toy": lambda: symbp.mlp([2, 1], ["relu"], "bce", name="toy", allow_any_output=True)}[key]()
    return symbp.derive(net)


def test_no_bias_layer_and_relu_at_zero_one_are_stated():
    tex = render(_options_derivation("nobias_relu1"), "cs231n", document=True)
    # layer 1 has no b: not in its parameters, its affine map, its Jacobians or its gradients
    assert "b^{[1]}" not in tex and r"\partial b^{[1]}" not in tex
    assert "b^{[2]}" in tex
    assert "(no bias)" in tex
    # ReLU'(0) = 1: the kink stage, and the one sentence that says where it comes from
    assert r"\operatorname{ReLU}'(z) &= \mathbb{I}\left[z \ge 0\right]" in tex
    assert r"symbp uses $\operatorname{ReLU}'(0) = 1$, the derivative from the right" in tex
    assert r"\texttt{relu\_at\_zero = 1}" in tex and "Backpropagation" in tex


def test_default_relu_kink_names_the_option():
    tex = render(derivation((2, 2, 1), ("relu", "identity"), "mse"), "cs231n", document=True)
    assert r"\texttt{relu\_at\_zero = 0}, the convention of PyTorch" in tex


OPTION_DOCUMENTS = [(key, n) for n in NOTATIONS for key in ("nobias_relu1", "udl_toy")]


@needs_pdflatex
@pytest.mark.parametrize("key,notation", quick_sample(OPTION_DOCUMENTS, lambda c: c[0], lambda c: c[1],
                                                      ids=["-".join(c) for c in OPTION_DOCUMENTS]))
def test_option_documents_compile(key, notation, tmp_path):
    _compile(render(_options_derivation(key), notation, document=True), tmp_path)


# ---------------------------------------------------------------------------------------------
# Acceptance: the example specs' handouts in every notation, compiled and checked as a reader would

import re  # noqa: E402

EXAMPLES = ("xor", "square", "abs", "swish", "digits_mlp")
HAVE_PDFTOTEXT = shutil.which("pdftotext") is not None and shutil.which("pdfinfo") is not None


def _outside_math(tex):
    """The text-mode part of a document body: math ($...$, align*) and \texttt{...} removed."""
    body = tex.split(r"\begin{document}", 1)[1]
    body = re.sub(r"\\begin\{align\*\}.*?\\end\{align\*\}", " ", body, flags=re.S)
    body = re.sub(r"\$[^$]*\$", " ", body)
    return re.sub(r"\\texttt\{[^}]*\}", " ", body)


@pytest.fixture(scope="module")
def handouts(tmp_path_factory):
    out = {}
    root = Path(__file__).parent.parent / "examples/specs"
    for name in EXAMPLES:
        d = symbp.derive(symbp.load(root / f"{name}.toml"))
        for notation in NOTATIONS:
            out[(name, notation)] = render(d, notation, document=True)
    return out


@pytest.mark.parametrize("name", EXAMPLES)
@pytest.mark.parametrize("notation", NOTATIONS)
def test_handout_text_reads_like_a_textbook(handouts, name, notation):
    tex = handouts[(name, notation)]
    for bad in ("Heaviside", "KroneckerDelta", "seed 0", "issue ", "sympy.", r"\text{derived}",
                r"\text{collapse}"):
        assert bad not in tex.replace(r"\texttt{sympy.diff}", ""), bad
    assert r"\_" not in _outside_math(tex) and r"\^{}" not in _outside_math(tex)
    # the Kronecker delta is an indicator: no two-index delta beside the error delta
    assert not re.search(r"\\delta_\{[a-z],?[a-z]\}", tex)
    # one sample index, s; the notes say once how indices count
    assert "^{(t)}" not in tex and tex.count("Indices count from") == 1
    assert r"\begin{tabular}{@{}r@{\hspace{1em}}p{0.88\linewidth}@{}}" in tex     # Algorithm 14.1
    assert r"\section*{Sources}" in tex and "Algorithm 14.1 of the book chapter 14" in tex


@needs_pdflatex
@pytest.mark.skipif(not HAVE_PDFTOTEXT, reason="poppler-utils not installed")
@pytest.mark.parametrize("name", EXAMPLES)
def test_handout_pdf_layout(handouts, name, tmp_path):
    """Compiled twice (references), no overfull lines, and no page nearly empty but the last."""
    for notation in NOTATIONS:
        work = tmp_path / notation
        work.mkdir()
        (work / "doc.tex").write_text(handouts[(name, notation)])
        for _ in range(2):
            run = subprocess.run(["pdflatex", "-halt-on-error", "-interaction=nonstopmode", "doc.tex"],
                                 cwd=work, capture_output=True, text=True, timeout=120)
            assert run.returncode == 0, run.stdout[-2000:]
        log = (work / "doc.log").read_text(errors="replace")
        assert "Overfull \\hbox" not in log, (notation, re.findall(r"Overfull \\hbox.*", log)[:3])
        assert "undefined" not in log.lower() or "Reference" not in log
        info = subprocess.run(["pdfinfo", "doc.pdf"], cwd=work, capture_output=True, text=True).stdout
        pages = int(re.search(r"Pages:\s+(\d+)", info).group(1))
        sizes = [len(subprocess.run(["pdftotext", "-f", str(k), "-l", str(k), "doc.pdf", "-"], cwd=work,
                                    capture_output=True, text=True).stdout.split()) for k in range(1, pages + 1)]
        for k, n in enumerate(sizes[:-1], start=1):
            assert n >= 0.15 * max(sizes), (notation, k, sizes)


def test_udl_toy_relu_then_bce_prints_as_the_slides():
    """ReLU then binary cross-entropy (the toy example of the Understanding Deep Learning
    slides): dL/df_0 = 1[f_0 > 0] (h_1 - y) / (h_1 (1 - h_1)), by the same printing rule."""
    from symbp.model.functions import ACTIVATIONS, LOSSES
    from symbp.model.network import Layer, Network
    # built by hand (no OutputRangeWarning); allow_any_output as the spec would have to say
    net = Network("toy", 2, (Layer(1, ACTIVATIONS["relu"]),), LOSSES["bce"], "sum", allow_any_output=True)
    tex = render(symbp.derive(net), "udl", document=True)
    assert (r"\frac{\partial L}{\partial f_{0}} &= \mathbb{I}[f_{0} > 0] \odot "
            r"\frac{h_{1} - y}{h_{1} \left(1 - h_{1}\right)}") in tex
    assert r"\frac{\partial L}{\partial h_{1,j}} &= \frac{h_{1,j} - y_{j}}{h_{1,j} \left(1 - h_{1,j}\right)}" in tex


def test_cli_stages_option(tmp_path):
    from symbp.cli.commands import main
    xor = str(Path(__file__).parent.parent / "examples/specs/xor.toml")
    plain, staged = tmp_path / "plain.tex", tmp_path / "staged.tex"
    assert main(["derive", xor, "--latex", str(plain)]) == 0
    assert main(["derive", xor, "--latex", str(staged), "--stages"]) == 0
    assert r"\text{collapse}" in staged.read_text() and r"\text{collapse}" not in plain.read_text()
    assert r"\emph{onehot}: one-hot targets: $\sum_i y_i = 1$" in staged.read_text()


def test_every_pass_has_a_latex_legend():
    from symbp.derivation import simplify
    assert all(p.name in latex.PASS_LATEX for p in simplify.PASSES)


def test_batch_index_form_is_upper_case_and_rows_are_announced(xor):
    """Batch notation: the index form speaks of the matrices (upper case); the per-sample
    lower-case rows appear only after a sentence saying that they are rows of those matrices."""
    tex = xor["batch"]
    out = tex[tex.index("Output layer: the chain rule"):tex.index("Parameter gradients")]
    assert r"\Delta_{2,sj} &= \sum_{i=1}^{n_{2}} \frac{\partial A_{2,si}}{\partial H_{2,sj}}" in out
    assert r"\Delta_{2,sj} &= \sum_{i=1}^{n_{2}} \mathbb{I}[i = j]\, A_{2,si} \left(1 - A_{2,si}\right)" in out
    for block in out.split(r"\begin{align*}")[1:]:
        if r"\delta_{" in block.split(r"\end{align*}")[0]:
            before = out[:out.index(block)]
            assert "one sample $s$" in before.rsplit(r"\end{align*}", 1)[-1], block[:200]


def test_sources_table_cites_works_not_files():
    from symbp.render import sources
    assert set(sources.NOTATION_SOURCE) == set(NOTATIONS)
    assert sources.cite("chapter", "eq. 14.47") == 'the book chapter 14 "Backpropagation", eq. 14.47'
    assert sources.cite("slides") == 'Soleymani, "Multi-Layer Networks & Back-Propagation"'
    items = sources.bibliography({"udl", "slides"})
    assert len(items) == 2 and items[0].startswith(r"\item M. Soleymani") and r"\&" in items[0]
    for s in sources.SOURCES.values():
        assert "seed" not in s.full() and ".txt" not in s.full()

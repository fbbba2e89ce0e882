"""The DAG handout (symbp.render.graph_latex and graph_tikz): symbols, the TikZ layout, the named
branch and shared-parameter steps, the five notations' matrix forms, PDFs without overfull lines,
the CLI."""
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from symbp.cli.commands import main
from symbp.model.graph import load_graph, loads_graph
from symbp.derivation.graph import derive_graph
from symbp.errors import SymbpError
from symbp.render import graph_latex as gl
from symbp.render import graph_tikz as gt
from symbp.render.pdf import compile_pdf

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "examples" / "specs" / "graphs"
GRAPHS = ("residual", "two_tower", "autoencoder", "gated")
needs_pdflatex = pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex not installed")


@pytest.fixture(scope="module")
def derived():
    return {name: derive_graph(load_graph(SPECS / f"{name}.toml")) for name in GRAPHS}


@pytest.mark.parametrize("name, tex", [
    ("x", "x"), ("W", "W"), ("W_in", r"W_{\mathrm{in}}"), ("b_enc", r"b_{\mathrm{enc}}"),
    ("f1", "f_{1}"), ("f1a", "f_{1a}"), ("W_f1", "W_{f_{1}}"), ("x_target", r"x_{\mathrm{target}}"),
    ("enc", r"\mathrm{enc}"), ("alpha2", r"\alpha_{2}"), ("g_x_y", "g_{x,y}"), ("x_", "x"),
])
def test_names_are_math_symbols(name, tex):
    assert gl.symbol(name) == tex


def test_colliding_symbols_are_written_out():
    g = loads_graph("""
[graph]
name = "clash"
[[node]]
name = "x"
kind = "input"
width = 2
[[node]]
name = "f1"
kind = "dense"
input = "x"
units = 2
[[node]]
name = "f_1"
kind = "dense"
input = "f1"
units = 1
[[node]]
name = "y"
kind = "input"
width = 1
[[node]]
name = "loss"
kind = "loss"
input = "f_1"
target = "y"
loss = "mse"
""")
    table = gl.symbols(g)
    assert table["f1"] != table["f_1"] and table["x"] == "x"
    assert len(set(table.values())) == len(table)


@pytest.mark.parametrize("name", GRAPHS)
def test_layout_is_deterministic_without_crossings(name):
    g = load_graph(SPECS / f"{name}.toml")
    pos, edges = gt.layout(g)
    assert (pos, edges) == gt.layout(load_graph(SPECS / f"{name}.toml"))
    assert set(pos) == {n.name for n in g.nodes}
    assert len(set(pos.values())) == len(pos)                      # no two boxes on one spot
    for u, v, bends in edges:
        ys = [pos[u][1]] + [y for _, y in bends] + [pos[v][1]]
        assert all(a > b for a, b in zip(ys, ys[1:]))             # every edge runs downwards
        assert not set(bends) & set(pos.values())                 # long edges avoid the boxes
    # no two edges cross between neighbouring levels: straight segments of the drawn polylines
    segs = []
    for u, v, bends in edges:
        pts = [pos[u]] + bends + [pos[v]]
        segs += list(zip(pts, pts[1:]))
    for i, (p1, p2) in enumerate(segs):
        for q1, q2 in segs[i + 1:]:
            if p1[1] == q1[1] and p2[1] == q2[1] and {p1, p2}.isdisjoint({q1, q2}):
                assert (p1[0] - q1[0]) * (p2[0] - q2[0]) >= 0, (name, p1, p2, q1, q2)


def test_residual_skip_edge_bends_around_the_block():
    pos, edges = gt.layout(load_graph(SPECS / "residual.toml"))
    (bends,) = [b for u, v, b in edges if (u, v) == ("a", "r")]
    assert len(bends) == 3                  # it crosses the levels of f1, f1a and f2
    block_x = {pos[n][0] for n in ("f1", "f1a", "f2")}
    assert all(x not in block_x for x, _ in bends)


def _steps(tex):
    return re.findall(r"Step (\d+): ([^\n]*)", tex)


@pytest.mark.parametrize("name", GRAPHS)
def test_handout_names_its_steps_and_draws_the_graph(derived, name):
    d = derived[name]
    tex = d.latex(document=True)
    assert tex == derived[name].latex(document=True)               # same derivation, same bytes
    assert r"\begin{tikzpicture}" in tex
    g = d.graph
    for n in g.nodes:
        assert re.search(rf"\\node\[\w+\] \({gt._tid(n.name)}\) at", tex), n.name
    assert tex.count(r"\draw[->") == len(gt._edges(g))
    # no node or parameter name in text mode: neither escaped nor raw with its underscore
    for nm in [n.name for n in g.nodes] + [p.name for p in g.params]:
        if "_" in nm:
            assert nm.replace("_", r"\_") not in tex and f"{{{nm}}}" not in tex, nm
    assert "seed" not in tex.lower()
    branch = d.of_kind("branch_sum")
    shared = d.of_kind("shared_sum")
    titles = [t for _, t in _steps(tex)]
    for e in branch:
        assert any(t.startswith(f"branch sum at ${gl.symbol(e.node)}$") for t in titles)
    for e in shared:
        assert any(t.startswith(f"shared parameter ${gl.symbol(e.node)}$") for t in titles)
    if branch:
        assert "eq.~14.46" in tex and "gradients that come back" in tex
    if shared:
        assert "eq.~14.47" in tex and "sum of the gradients of its uses" in tex
    # every backward equation is one numbered step, in the derivation's order
    back = [e for e in d.equations if e.kind != "loss" and not e.kind.startswith("forward_")]
    assert [int(k) for k, _ in _steps(tex)] == list(range(1, len(back) + 1))


def test_example_graphs_cover_both_named_sums(derived):
    kinds = {e.kind for d in derived.values() for e in d.equations}
    assert {"branch_sum", "shared_sum"} <= kinds


# The matrix forms in each notation, as SymPy moves the transposes (autoencoder: dec = W^T code).
FORMS = [
    ("cs231n", "g_code", r"g_{\mathrm{code}}", r"= W \, g_{\mathrm{dec}}"),
    ("cs231n", "g_W__dec", r"g_{W}^{(\mathrm{dec})}", r"= \sum_{s=1}^{B} \mathrm{code} \, g_{\mathrm{dec}}^{T}"),
    ("cs231n", "g_W__enc", r"g_{W}^{(\mathrm{enc})}", r"= \sum_{s=1}^{B} g_{\mathrm{enc}} \, x^{T}"),
    ("udl", "g_code", r"\frac{\partial L}{\partial \mathrm{code}}", r"= W \, \frac{\partial L}{\partial \mathrm{dec}}"),
    ("transposed", "g_code", r"g_{\mathrm{code}}", r"= W^{T} \, g_{\mathrm{dec}}"),
    ("transposed", "g_W__enc", r"g_{W}^{(\mathrm{enc})}", r"= \sum_{s=1}^{B} x \, g_{\mathrm{enc}}^{T}"),
    ("rowvector", "g_code", r"g_{\mathrm{code}}", r"= g_{\mathrm{dec}} \, W^{T}"),
    ("rowvector", "g_W__enc", r"g_{W}^{(\mathrm{enc})}", r"= \sum_{s=0}^{B - 1} x \, g_{\mathrm{enc}}"),
    ("rowvector", "g_b_dec", r"g_{b_{\mathrm{dec}}}", r"= \sum_{s=0}^{B - 1} g_{\mathrm{dec}}"),
    ("batch", "g_code", r"g_{\mathrm{code}}", r"= g_{\mathrm{dec}} \, W"),
    ("batch", "g_W__enc", r"g_{W}^{(\mathrm{enc})}", r"= x^{T} \, g_{\mathrm{enc}}"),
    ("batch", "g_b_dec", r"g_{b_{\mathrm{dec}}}", r"= \mathbf{1}^{T} \, g_{\mathrm{dec}}"),
]


@pytest.mark.parametrize("notation, name, lhs, rhs", FORMS)
def test_matrix_forms_follow_the_notation(derived, notation, name, lhs, rhs):
    r = gl.Renderer(derived["autoencoder"], gl.get_notation(notation))
    row = r.vector_row(derived["autoencoder"][name])
    assert (row["lhs"], row["rhs"]) == (lhs, rhs)


@pytest.mark.parametrize("notation, shape", [("cs231n", r"(3 \times 1)"), ("rowvector", r"(1 \times 3)"),
                                             ("batch", r"(B \times 3)")])
def test_gradient_shapes_follow_the_notation(derived, notation, shape):
    r = gl.Renderer(derived["autoencoder"], gl.get_notation(notation))
    assert r.vector_row(derived["autoencoder"]["g_code"])["note"] == shape


def test_rowvector_elementwise_step_is_g_out_times_diag(derived):
    # g_enc = g_code * (1 - code^2) entrywise: with row gradients and column values, the book's
    # g_in = g_out L^x with L^x = diag(...), the diagonal read off SymPy's Jacobian
    d = derived["autoencoder"]
    row = gl.Renderer(d, gl.get_notation("rowvector")).vector_row(d["g_enc"])
    assert row["rhs"] == r"= g_{\mathrm{code}} \operatorname{diag}\left(1 - \mathrm{code} \odot \mathrm{code}\right)"
    row = gl.Renderer(d, gl.get_notation("cs231n")).vector_row(d["g_enc"])
    assert row["rhs"] == r"= g_{\mathrm{code}} \odot \left(1 - \mathrm{code} \odot \mathrm{code}\right)"
    g = derived["gated"]
    row = gl.Renderer(g, gl.get_notation("rowvector")).vector_row(g["g_y__s"])
    # the derivative of s = y sigmoid(y) in the form the stability check keeps (no e^y / (e^y + 1),
    # which is inf / inf for large y): sigmoid(y) (1 + y (1 - sigmoid(y))) written with 1/(e^y + 1)
    assert row["rhs"] == (r"= g_{s} \operatorname{diag}\left(\left(-1 + \frac{1}{e^{y} + 1}\right) \odot "
                          r"\left(-1 - \frac{y}{e^{y} + 1}\right)\right)")


def test_unknown_notation_is_one_line(derived):
    with pytest.raises(SymbpError, match="unknown notation 'klingon' for a graph"):
        gl.render(derived["residual"], notation="klingon", document=True)


def test_equation_list_is_one_align(derived):
    d = derived["autoencoder"]
    lines = d.latex().strip().split("\n")
    assert lines[0] == r"\begin{align*}" and lines[-1] == r"\end{align*}"
    assert len(lines) - 2 == len(d.equations)
    assert r"g_{W}^{(\mathrm{dec})}" in d.latex() and "shared sum" in d.latex()


def _pdftotext(pdf):
    return subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, text=True, check=True).stdout


@needs_pdflatex
@pytest.mark.parametrize("name", GRAPHS)
def test_handout_pdf_has_no_overfull_lines(derived, name, tmp_path):
    tex = gl.render(derived[name], document=True)
    data, log = compile_pdf(tex, name)
    assert "Overfull \\hbox" not in log
    assert data.startswith(b"%PDF")
    if shutil.which("pdftotext"):
        pdf = tmp_path / f"{name}.pdf"
        pdf.write_bytes(data)
        text = _pdftotext(pdf)
        g = derived[name].graph
        for nm in [n.name for n in g.nodes] + [p.name for p in g.params]:
            if "_" in nm:
                assert nm not in text, nm          # typeset as a symbol, never as text


@needs_pdflatex
@pytest.mark.parametrize("notation", tuple(gl.GRAPH_NOTATIONS))
def test_every_notation_compiles_without_overfull_lines(derived, notation):
    for name in ("autoencoder", "gated"):
        _, log = compile_pdf(gl.render(derived[name], notation=notation, document=True), name)
        assert "Overfull \\hbox" not in log, (name, notation)


@needs_pdflatex
def test_cli_writes_tex_and_pdf(tmp_path, capsys):
    tex = tmp_path / "res.tex"
    assert main(["graph", "derive", str(SPECS / "residual.toml"), "--latex", str(tex), "--pdf",
                 "--notation", "rowvector"]) == 0
    assert tex.exists() and tex.with_suffix(".pdf").read_bytes().startswith(b"%PDF")
    out = capsys.readouterr().out
    assert f"wrote {tex}" in out and f"wrote {tex.with_suffix('.pdf')}" in out
    assert "notation rowvector" in tex.read_text()


@pytest.mark.parametrize("argv, message", [
    (["--pdf"], "--pdf: give the .tex file to write with --latex FILE"),
    (["--latex", "x.tex", "--notation", "klingon"], "argument --notation: invalid choice: 'klingon'"),
])
def test_cli_mistakes_are_one_line_and_write_nothing(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    assert main(["graph", "derive", str(SPECS / "residual.toml")] + argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("symbp: error: ") and message in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("notation, hu, hv", [
    ("cs231n", r"= \left(g_{\mathrm{merged}}\right)_{1 \ldots 4}", r"= \left(g_{\mathrm{merged}}\right)_{5 \ldots 8}"),
    ("rowvector", r"= g_{\mathrm{merged}}[0 \ldots 3]", r"= g_{\mathrm{merged}}[4 \ldots 7]"),
    ("batch", r"= \left(g_{\mathrm{merged}}\right)_{{:},\, 1 \ldots 4}",
     r"= \left(g_{\mathrm{merged}}\right)_{{:},\, 5 \ldots 8}"),
])
def test_concat_hands_each_input_its_slice(notation, hu, hv):
    d = derive_graph(load_graph(SPECS / "two_tower.toml"))
    r = gl.Renderer(d, gl.get_notation(notation))
    assert r.vector_row(d["g_hu"])["rhs"] == hu and r.vector_row(d["g_hv"])["rhs"] == hv


SIGMOID_MSE = """
[graph]
name = "sigmse"
[[node]]
name = "x"
kind = "input"
width = 2
[[node]]
name = "z"
kind = "dense"
input = "x"
units = 1
[[node]]
name = "a"
kind = "activation"
input = "z"
activation = "sigmoid"
[[node]]
name = "y"
kind = "input"
width = 1
[[node]]
name = "loss"
kind = "loss"
input = "a"
target = "y"
loss = "%s"
"""


@pytest.mark.parametrize("loss, cancels", [("bce", True), ("mse", False)])
def test_prediction_error_is_claimed_only_where_sympy_found_it(loss, cancels):
    d = derive_graph(loads_graph(SIGMOID_MSE % loss))
    (e,) = d.of_kind("output_delta")
    _, text = gl.Renderer(d, gl.get_notation("cs231n")).step_text(e)
    assert ("prediction error" in text) == cancels


from hypothesis import HealthCheck, given, settings  # noqa: E402

from test_graph_random import dags  # noqa: E402


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dags())
def test_random_graphs_render_with_a_clean_layout(g):
    """Any valid DAG (repeated inputs, shared and transposed weights, merges) renders in every
    notation; its boxes never overlap, edges run downwards, long edges avoid the boxes."""
    d = derive_graph(g)
    for notation in gl.GRAPH_NOTATIONS:
        tex = gl.render(d, notation=notation, document=True)
        assert r"\begin{tikzpicture}" in tex and "Step 1:" in tex
    pos, edges = gt.layout(g)
    assert len(set(pos.values())) == len(pos)
    by_level = {}                   # boxes and the bends of long edges share each level's slots
    for x, y in list(pos.values()) + [b for _, _, bends in edges for b in bends]:
        by_level.setdefault(y, []).append(x)
    for xs in by_level.values():
        xs.sort()
        assert all(b - a >= gt.DX - 0.002 for a, b in zip(xs, xs[1:]))   # coordinates are rounded
    for u, v, bends in edges:
        ys = [pos[u][1]] + [y for _, y in bends] + [pos[v][1]]
        assert all(a > b for a, b in zip(ys, ys[1:]))
        assert not set(bends) & set(pos.values())


def test_expression_with_underscored_names_stays_in_math():
    g = loads_graph("""
[graph]
name = "expr"
[[node]]
name = "x_in"
kind = "input"
width = 2
[[node]]
name = "h_lin"
kind = "dense"
input = "x_in"
units = 2
[[node]]
name = "gate_val"
kind = "expression"
inputs = ["h_lin", "x_in"]
expression = "h_lin * sigmoid(x_in)"
[[node]]
name = "y"
kind = "input"
width = 2
[[node]]
name = "loss"
kind = "loss"
input = "gate_val"
target = "y"
loss = "mse"
""")
    tex = gl.render(derive_graph(g), document=True)
    for nm in ("x_in", "h_lin", "gate_val"):
        assert nm.replace("_", r"\_") not in tex and nm not in tex.replace(r"\mathrm{", "")
    assert r"h_{\mathrm{lin}}" in tex


@pytest.mark.parametrize("raw, tex", [("leaky_relu", r"leaky\_relu"), ("a -> b", r"a $\to$ b"),
                                      ("50% & {x}", r"50\% \& \{x\}"), ("\\", r"\textbackslash{}")])
def test_text_mode_escapes_once(raw, tex):
    assert gt.text_mode(raw) == tex


@pytest.mark.parametrize("notation, enc, dec", [
    ("cs231n", r"$W \, x + b_{\mathrm{enc}}$", r"$W^{T} \, \mathrm{code} + b_{\mathrm{dec}}$"),
    ("transposed", r"$W^{T} \, x + b_{\mathrm{enc}}$", r"$W \, \mathrm{code} + b_{\mathrm{dec}}$"),
    ("batch", r"$x \, W + \mathbf{1} \, b_{\mathrm{enc}}$", r"$\mathrm{code} \, W^{T} + \mathbf{1} \, b_{\mathrm{dec}}$"),
])
def test_node_table_writes_dense_nodes_in_the_notation(derived, notation, enc, dec):
    rows = gl.Renderer(derived["autoencoder"], gl.get_notation(notation)).graph_table()
    assert [r["what"] for r in rows if r["kind"] == "dense"] == [enc, dec]


@pytest.mark.parametrize("notation, W, b", [("cs231n", r"$3 \times 6$", r"$3 \times 1$"),
                                            ("transposed", r"$6 \times 3$", r"$3 \times 1$"),
                                            ("batch", r"$6 \times 3$", r"$1 \times 3$")])
def test_parameter_table_gives_the_notations_shapes(derived, notation, W, b):
    rows = gl.Renderer(derived["autoencoder"], gl.get_notation(notation)).params()
    assert [r["shape"] for r in rows[:2]] == [W, b]

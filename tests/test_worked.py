"""Worked examples (symbp.render.worked): exact numbers from the Derivation, equal to the
generated kernel's, rounded only for display; LaTeX and Markdown; notations; bad input; CLI."""
import json
import shutil
import subprocess
from fractions import Fraction

import numpy as np
import pytest
import sympy as sp

import symbp
from symbp.cli import commands as cli
from symbp.errors import SymbpError
from symbp.render.notation import NOTATIONS
from symbp.render.worked import evaluate, show, worked_example

HAVE_PDFLATEX = shutil.which("pdflatex") is not None

# (sizes, activations, loss, reduction, batch): every loss, batches of 1 and 2, softmax + ce.
NETWORKS = [
    ([2, 2, 1], ["relu", "sigmoid"], "bce", "mean", 1),
    ([2, 3, 2], ["tanh", "softmax"], "ce", "mean", 2),
    ([3, 2, 1], ["sigmoid", "sigmoid"], "mse", "mean", 2),
    ([2, 2, 2], ["leaky_relu", "identity"], "sse", "sum", 2),
    ([2, 2, 1], ["softplus", "exp"], "mse", "mean", 1),
    ([1, 2, 2, 1], ["tanh", "relu", "identity"], "mse", "mean", 2),
]


def _draw(net, batch, seed):
    rng = np.random.default_rng(seed)
    params = {k: np.round(rng.normal(size=s), 1) for k, s in net.param_shapes().items()}
    X = np.round(rng.normal(size=(batch, net.sizes[0])), 1)
    n = net.sizes[-1]
    if net.loss.name == "ce":
        Y = np.eye(n)[rng.integers(0, n, size=batch)]
    elif net.loss.name == "bce":
        Y = rng.integers(0, 2, size=(batch, n)).astype(float)
    else:
        Y = np.round(rng.normal(size=(batch, n)), 1)
    return params, X, Y


def _floats(m):
    return np.array(sp.Matrix(m).evalf(30).tolist(), dtype=float)


@pytest.mark.parametrize("sizes,acts,loss,reduction,batch", NETWORKS,
                         ids=["-".join(a) + "-" + l for _, a, l, _, _ in NETWORKS])
def test_numbers_equal_the_generated_kernel(tmp_path, sizes, acts, loss, reduction, batch):
    net = symbp.mlp(sizes, acts, loss, reduction=reduction, name="w_" + "_".join(acts) + "_" + loss)
    d = symbp.derive(net)
    k = symbp.generate(d, out_dir=tmp_path, jit=False)
    params, X, Y = _draw(net, batch, seed=len(acts) + batch)
    w = worked_example(d, params, X, Y, decimals=3, lr=0.1)
    v = w.values
    L, grads = k.loss_and_grad(params, X, Y)
    assert float(v["loss"].evalf(30)) == pytest.approx(L, rel=1e-12)
    for key, g in grads.items():
        np.testing.assert_allclose(_floats(v["g" + key]).reshape(g.shape), g, rtol=1e-12, atol=1e-300)
        np.testing.assert_allclose(_floats(v[key + "_new"]).reshape(g.shape), params[key] - 0.1 * g,
                                   rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(_floats(v[f"a{net.depth}"]), k.forward(params, X), rtol=1e-12)
    np.testing.assert_allclose(_floats(v["ga0"]), k.input_grad(params, X, Y), rtol=1e-12, atol=1e-300)


def _relu_net():
    return symbp.mlp([2, 2, 1], ["relu", "identity"], "mse", name="relu_id")


RELU_PARAMS = {"W1": [[1, -1], [2, 1]], "b1": [0, -1], "W2": [[1, -1]], "b2": [1]}


def test_relu_network_with_integers_is_exact():
    w = worked_example(symbp.derive(_relu_net()), RELU_PARAMS, [2, 1], 1)
    v = w.values
    # by hand: z1 = (1, 4), z2 = 1 - 4 + 1 = -2, L = (-2 - 1)^2 / 2, delta2 = -3, ...
    expected = {"z1": [[1, 4]], "a1": [[1, 4]], "z2": [[-2]], "delta2": [[-3]], "ga1": [[-3, 3]],
                "delta1": [[-3, 3]], "gW1": [[-6, -3], [6, 3]], "gb1": [[-3], [3]],
                "gW2": [[-3, -12]], "gb2": [[-3]], "ga0": [[3, 6]]}
    for name, want in expected.items():
        assert v[name] == sp.Matrix(want), name
        assert all(isinstance(e, sp.Integer) for e in v[name]), name
    assert v["loss"] == sp.Rational(9, 2)


def test_a_given_number_that_does_not_fit_the_decimals_is_shown_exactly():
    net = symbp.mlp([1, 1], ["identity"], "mse", name="third")
    w = worked_example(symbp.derive(net), {"W1": [[3]], "b1": [0]}, [Fraction(1, 3)], 0)
    assert w.values["z1"][0] == 1                      # 3 * 1/3, not 3 * 0.33
    tex = w.latex()
    line = next(l for l in tex.splitlines() if l.startswith("z_{1}^{[1]} &="))
    # recomputable from what it shows: 3 * 0.33 = 1 would not be
    assert r"3 \cdot \tfrac{1}{3}" in line and line.rstrip(" \\").endswith("= 1")
    assert show(sp.Rational(1, 3), 2) == ("0.33", False) and show(sp.Rational(1, 4), 2) == ("0.25", True)
    assert show(sp.Rational(-1, 1000), 2)[0] == "0" and show(sp.Rational(5, 1000), 2)[0] == "0.01"
    assert show(sp.Rational(-5, 1000), 2)[0] == "-0.01"     # half away from zero


def test_latex_and_markdown_show_formula_substitution_and_value():
    w = worked_example(symbp.derive(_relu_net()), RELU_PARAMS, [2, 1], 1, lr=0.5)
    line = (r"z_{1}^{[1]} &= {W_{11}^{[1]}} {x_{1}} + {W_{12}^{[1]}} {x_{2}} + {b_{1}^{[1]}} "
            r"= 1 \cdot 2 + (-1) \cdot 1 + 0 = 1")
    delta = (r"\delta_{1}^{[1]} &= \mathbb{I}\left[{a_{1}^{[1]}} > 0\right] {\frac{\partial L}{\partial a_{1}^{[1]}}}",
             r"= \mathbb{I}\left[1 > 0\right] \cdot (-3) = -3")
    for text in (w.latex(), w.markdown()):
        assert line in text and all(part in text for part in delta)
        assert r"\frac{\partial L}{\partial W^{[1]}} = \begin{bmatrix} -6 & -3 \\ 6 & 3 \end{bmatrix}" in text
        assert r"{W^{[1]}}_{\text{new}} = \begin{bmatrix} 1 & -1 \\ 2 & 1 \end{bmatrix} - 0.5 \begin{bmatrix} -6 & -3 \\ 6 & 3 \end{bmatrix} = \begin{bmatrix} 4 & 0.5 \\ -1 & -0.5 \end{bmatrix}" in text
    assert w.values["W1_new"] == sp.Matrix([[4, sp.Rational(1, 2)], [-1, -sp.Rational(1, 2)]])
    md = w.markdown()
    assert "| layer | unit | $z$ | $a$ |" in md and "| 1 | 2 | $4$ | $4$ |" in md


def test_sigmoid_values_stay_exact_expressions():
    net = symbp.mlp([1, 1], ["sigmoid"], "bce", name="sig")
    w = worked_example(symbp.derive(net), {"W1": [[1]], "b1": [0]}, [0.5], 1)
    assert w.values["a1"][0] == 1 / (1 + sp.exp(-sp.Rational(1, 2)))
    assert r"\approx 0.62" in w.latex()


def test_kink_uses_the_left_derivative_and_says_so(tmp_path):
    net = _relu_net()
    d = symbp.derive(net)
    params = {"W1": [[1, -2], [1, 1]], "b1": [0, 0], "W2": [[1, 1]], "b2": [0]}
    w = worked_example(d, params, [2, 1], 1)
    assert w.values["z1"][0] == 0 and w.values["delta1"][0] == 0
    assert any("Kink" in n and r"\operatorname{ReLU}'(0) = 0" in n and "left" in n for n in w.notes)
    k = symbp.generate(d, out_dir=tmp_path, jit=False)
    P = {key: np.array(v, dtype=float) for key, v in params.items()}
    _, grads = k.loss_and_grad(P, np.array([[2.0, 1.0]]), np.array([[1.0]]))
    assert grads["b1"][0] == 0.0
    w2 = worked_example(d, params, [2, 0], 1)
    assert not any("Kink" in n for n in w2.notes)


@pytest.mark.parametrize("notation", list(NOTATIONS))
def test_every_notation_renders_and_compiles(tmp_path, notation):
    d = symbp.derive(symbp.mlp([2, 2, 1], ["sigmoid", "sigmoid"], "mse", name="n2"))
    params = {"W1": [[0.5, -0.3], [0.2, 0.8]], "b1": [0.1, -0.1], "W2": [[1.0, -1.5]], "b2": [0.2]}
    w = worked_example(d, params, [[1, 2], [0, -1]], [[1], [0]], lr=0.1, notation=notation)
    tex = w.latex(document=True)
    assert tex.startswith(r"\documentclass") and w.markdown().startswith("# Worked example")
    if HAVE_PDFLATEX:
        (tmp_path / "w.tex").write_text(tex)
        run = subprocess.run(["pdflatex", "-halt-on-error", "-interaction=nonstopmode", "w.tex"],
                             cwd=tmp_path, capture_output=True, text=True)
        assert run.returncode == 0, run.stdout[-2000:]


def test_transposed_notations_transpose_entries_not_only_names():
    d = symbp.derive(_relu_net())
    cs = worked_example(d, RELU_PARAMS, [2, 1], 1).latex()
    tr = worked_example(d, RELU_PARAMS, [2, 1], 1, notation="transposed").latex()
    # f = W^T a: our W[j, k] is the stored W[k, j]; the first unit reads W_11 and W_21
    assert r"z_{1}^{[1]} &= {W_{11}^{[1]}} {x_{1}} + {W_{12}^{[1]}} {x_{2}}" in cs
    assert r"f_{1}^{[1]} &= {W_{11}^{[1]}} {x_{1}} + {W_{21}^{[1]}} {x_{2}}" in tr
    # and its weight gradient a delta^T is shown with the stored shape (n_in x n_out)
    assert r"\begin{bmatrix} -3 & -12 \end{bmatrix}" in cs
    assert r"\begin{bmatrix} -3 \\ -12 \end{bmatrix}" in tr


@pytest.mark.skipif(not HAVE_PDFLATEX, reason="pdflatex not installed")
def test_latex_document_compiles(tmp_path):
    d = symbp.derive(symbp.mlp([2, 3, 2], ["tanh", "softmax"], "ce", name="sm"))
    params, X, Y = _draw(d.network, 2, 0)
    tex = worked_example(d, params, X, Y, lr=0.1, decimals=4).latex(document=True)
    (tmp_path / "sm.tex").write_text(tex)
    run = subprocess.run(["pdflatex", "-halt-on-error", "-interaction=nonstopmode", "sm.tex"],
                         cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-2000:]


def _toy():
    """The UDL toy network: ReLU straight into binary cross-entropy (allow_any_output: the
    builder wants a sigmoid under bce unless asked)."""
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", symbp.OutputRangeWarning)
        return symbp.derive(symbp.mlp([2, 1], ["relu"], "bce", name="toy", allow_any_output=True))


TOY = {"W1": [[0.4, -0.2]], "b1": [0.1]}
GOOD = {"W1": [[1, -1], [2, 1]], "b1": [0, -1], "W2": [[1, -1]], "b2": [1]}


@pytest.mark.parametrize("params,x,y,kw,match", [
    ({k: v for k, v in GOOD.items() if k != "b1"}, [2, 1], 1, {}, r"params: b1: missing"),
    ({**GOOD, "W3": [[1]]}, [2, 1], 1, {}, r"params: W3: unexpected key"),
    ({**GOOD, "W1": [[1, 2, 3], [1, 2, 3]]}, [2, 1], 1, {}, r"params: W1: expected 2 rows of 2"),
    ({**GOOD, "b2": [1, 2]}, [2, 1], 1, {}, r"params: b2: expected a list of 1 number"),
    ({**GOOD, "W2": [[1, "2"]]}, [2, 1], 1, {}, r"params: W2\[0\]\[1\]: expected a number"),
    ({**GOOD, "b1": [float("nan"), 0]}, [2, 1], 1, {}, r"b1\[0\]: expected a finite number"),
    (GOOD, [2, 1, 3], 1, {}, r"x: expected 1 rows of 2"),
    (GOOD, [2, 1], [1, 2], {}, r"y: expected 1 rows of 1"),
    (GOOD, [2, 1], 1, {"decimals": 13}, r"decimals: expected an integer from 0 to 12"),
    (GOOD, [2, 1], 1, {"decimals": -1}, r"decimals: expected an integer from 0 to 12"),
    (GOOD, [2, 1], 1, {"decimals": 2.5}, r"decimals"),
    (GOOD, [2, 1], 1, {"lr": -0.1}, r"lr: expected a positive learning rate"),
])
def test_bad_input_is_one_clear_line(params, x, y, kw, match):
    with pytest.raises(SymbpError, match=match) as e:
        worked_example(symbp.derive(_relu_net()), params, x, y, **kw)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("x,match", [
    ([0, 0.5], r"log of zero: log\(a1\[1,1\]\)"),          # f = 0.4*0 - 0.2*0.5 + 0.1 = 0: log h
    ([2.25, 0], r"log of zero: log\(1 - a1\[1,1\]\)"),      # h = 1: log(1 - h), even with y = 1
    ([5, 0], r"log of a negative number: log\(1 - a1\[1,1\]\)"),
])
def test_log_of_zero_in_the_loss_is_refused(x, match):
    with pytest.raises(SymbpError, match=match) as e:
        worked_example(_toy(), TOY, x, 1)
    assert "\n" not in str(e.value) and "not defined" in str(e.value)


def test_ce_needs_one_hot_targets():
    d = symbp.derive(symbp.mlp([2, 2], ["softmax"], "ce", name="sm1"))
    params = {"W1": [[1, 0], [0, 1]], "b1": [0, 0]}
    with pytest.raises(SymbpError, match="one-hot"):
        worked_example(d, params, [1, 2], [0.5, 0.6])
    loss = worked_example(d, params, [1, 2], [0, 1]).values["loss"]
    assert sp.simplify(loss - sp.log(1 + sp.exp(-1))) == 0


def test_toy_example_of_seed_001_as_numbered_steps():
    w = worked_example(_toy(), TOY, [1, 0.5], 1, decimals=3, lr=0.1, notation="udl")
    v = w.values
    assert v["z1"][0] == sp.Rational(2, 5) and v["loss"] == -sp.log(sp.Rational(2, 5))
    assert v["ga1"][0] == sp.Rational(-5, 2) and v["delta1"][0] == sp.Rational(-5, 2)
    assert v["gW1"] == sp.Matrix([[sp.Rational(-5, 2), sp.Rational(-5, 4)]])
    assert [s.number for s in w.steps] == list(range(1, len(w.steps) + 1))
    tex = w.latex()
    assert r"\paragraph{(1) Pre-activation of layer 1: $f_{0}$}" in tex
    assert r"f_{0,1} &= {\Omega_{0,11}} {x_{1}} + {\Omega_{0,12}} {x_{2}} + {\beta_{0,1}} = 0.4 \cdot 1 + (-0.2) \cdot 0.5 + 0.1 = 0.4" in tex


def test_student_rounding_mode_records_the_table():
    d = symbp.derive(symbp.mlp([1, 1], ["sigmoid"], "bce", name="sig1"))
    P = {"W1": sp.Matrix([[1]]), "b1": sp.Matrix([0])}
    ev = evaluate(d, P, sp.Matrix([[sp.Rational(1, 2)]]), sp.Matrix([[1]]), rounding=3)
    assert ev.results["a1"][(0, 0)] == sp.Rational(622, 1000)
    assert (r"\sigma(0.5)", sp.Rational(622, 1000)) in ev.table
    assert any(tex.startswith(r"\ln(") for tex, _ in ev.table)


# ------------------------------------------------------------------------------------------
# command line
# ------------------------------------------------------------------------------------------
SPEC = """
[network]
name = "w221"
inputs = 2
[[layer]]
units = 2
activation = "relu"
[[layer]]
units = 1
activation = "identity"
[loss]
kind = "mse"
"""


@pytest.fixture
def main(monkeypatch):
    if "symbp.render.worked" not in cli.COMMAND_MODULES:
        monkeypatch.setattr(cli, "COMMAND_MODULES", tuple(cli.COMMAND_MODULES) + ("symbp.render.worked",))
    return cli.main


@pytest.mark.parametrize("fmt", ["json", "toml"])
def test_cli_writes_latex_and_markdown(tmp_path, main, fmt):
    spec = tmp_path / "w.toml"
    spec.write_text(SPEC)
    params = tmp_path / f"p.{fmt}"
    if fmt == "json":
        params.write_text(json.dumps(RELU_PARAMS))
    else:
        params.write_text("W1 = [[1, -1], [2, 1]]\nb1 = [0, -1]\nW2 = [[1, -1]]\nb2 = [1]\n")
    tex, md = tmp_path / "w.tex", tmp_path / "w.md"
    assert main(["worked", str(spec), "--params", str(params), "--x", "2,1;1,0", "--y", "1;1/2",
                 "--lr", "0.1", "--latex", str(tex), "--markdown", str(md)]) == 0
    assert tex.read_text().startswith(r"\documentclass") and r"\delta_{1}^{[2](1)}" in tex.read_text()
    assert "# Worked example" in md.read_text()


@pytest.mark.parametrize("args,match", [
    (["--x", "2,a"], "--x: row 1, entry 2: expected a number"),
    (["--x", "2,1", "--decimals", "13"], "decimals: expected an integer from 0 to 12"),
    (["--x", "2,1", "--notation", "nope"], "unknown notation 'nope'"),
    (["--x", "2,1", "--params-override"], None),
])
def test_cli_bad_input_exits_2_and_writes_nothing(tmp_path, main, capsys, args, match):
    spec = tmp_path / "w.toml"
    spec.write_text(SPEC)
    params = tmp_path / "p.json"
    params.write_text(json.dumps({k: v for k, v in RELU_PARAMS.items()}))
    tex = tmp_path / "w.tex"
    argv = ["worked", str(spec), "--params", str(params), "--y", "1", "--latex", str(tex)] + args
    if match is None:          # an unknown option is argparse's error: one line, exit 2 too
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "unrecognized arguments: --params-override" in err and len(err.splitlines()) == 1
    else:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert match in err and len(err.splitlines()) == 1
    assert not tex.exists()


def test_cli_params_file_errors_name_the_file_and_key(tmp_path, main, capsys):
    spec = tmp_path / "w.toml"
    spec.write_text(SPEC)
    params = tmp_path / "p.json"
    params.write_text(json.dumps({**RELU_PARAMS, "W2": [[1, -1, 3]]}))
    assert main(["worked", str(spec), "--params", str(params), "--x", "2,1", "--y", "1"]) == 2
    err = capsys.readouterr().err
    assert f"{params}: W2: expected 1 rows of 2 numbers" in err
    params.write_text("{not json")
    assert main(["worked", str(spec), "--params", str(params), "--x", "2,1", "--y", "1"]) == 2
    assert "invalid JSON" in capsys.readouterr().err


@pytest.mark.parametrize("at_zero", [0, 1])
def test_no_bias_worked_example_at_a_kink_takes_relu_at_zero(tmp_path, at_zero):
    """Layer 1 without bias, z1 = 0 exactly for unit 1: the worked example uses ReLU'(0) =
    relu_at_zero (and says which side), shows no b1 anywhere (values, steps, SGD update), and
    agrees with the generated kernel."""
    net = symbp.mlp([2, 2, 1], ["relu", "identity"], "mse", name="relu_nb", bias=[False, True],
                    relu_at_zero=at_zero)
    d = symbp.derive(net)
    params = {"W1": [[1, -2], [1, 1]], "W2": [[1, 1]], "b2": [0]}
    w = worked_example(d, params, [2, 1], 1, lr=0.5)
    assert w.values["z1"][0] == 0
    assert w.values["ga1"][0] != 0 and w.values["delta1"][0] == at_zero * w.values["ga1"][0]
    side = "right" if at_zero else "left"
    assert any("Kink" in n and rf"\operatorname{{ReLU}}'(0) = {at_zero}" in n and side in n for n in w.notes)
    assert "b1" not in w.values and "b1_new" not in w.values and "gb1" not in w.values
    assert "W1_new" in w.values and "b2_new" in w.values
    k = symbp.generate(d, out_dir=tmp_path, jit=False)
    P = {key: np.array(v, dtype=float) for key, v in params.items()}
    _, grads = k.loss_and_grad(P, np.array([[2.0, 1.0]]), np.array([[1.0]]))
    np.testing.assert_array_equal(grads["W1"], np.array(w.values["gW1"], dtype=float))
    assert grads["W1"][0, 0] == float(at_zero * 2 * w.values["ga1"][0])


def test_udl_toy_worked_example_matches_the_slides():
    """bce after a ReLU (allow_any_output): dL/dh_1 = (h_1 - y)/(h_1 (1 - h_1)) and
    dL/df_0 = I[f_0 > 0] dL/dh_1, at the example's numbers (f_0 = 2/5, y = 1)."""
    w = worked_example(_toy(), TOY, [1, 0.5], 1, notation="udl")
    h = sp.Rational(2, 5)
    assert w.values["a1"][0] == h
    assert w.values["loss"] == -sp.log(h)
    assert w.values["ga1"][0] == (h - 1) / (h * (1 - h)) == sp.Rational(-5, 2)
    assert w.values["delta1"][0] == w.values["ga1"][0]
    assert list(w.values["gW1"]) == [sp.Rational(-5, 2), sp.Rational(-5, 4)]


def test_toy_relu_bce_example_runs_on_the_public_api(tmp_path):
    """examples/toy_relu_bce.py builds the UDL toy with symbp.mlp (no hand-built Network),
    prints the slide's numbers and checks its generated kernel against them."""
    import ast
    import os
    import subprocess
    import sys
    from pathlib import Path
    script = Path(__file__).resolve().parents[1] / "examples" / "toy_relu_bce.py"
    tree = ast.parse(script.read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not {"symbp.model.network", "symbp.model.functions", "symbp.codegen.load"} & imported, imported
    env = dict(os.environ, PYTHONPATH=str(script.parents[1]))
    run = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True,
                         timeout=600, env=env)
    assert run.returncode == 0, run.stderr
    assert "f_0 = 2/5, h_1 = 2/5, L = -log(2/5) = 0.9163" in run.stdout
    assert "dL/dh_1 = -5/2, dL/df_0 = -5/2, dL/dOmega_0 = [-5/2, -5/4], dL/dbeta_0 = [-5/2]" in run.stdout
    assert "kernel: L = 0.9163, dL/dOmega_0 = [-2.5, -1.25], dL/dbeta_0 = [-2.5]" in run.stdout
    assert (tmp_path / "toy_relu_bce.tex").exists() and (tmp_path / "toy_relu_bce.md").exists()

"""Scalar circuits (symbp.circuit): the seed's staged sigmoid, gate patterns, exactness, bad input."""
import argparse
import shutil
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest
import sympy as sp

from symbp.derivation.circuit import CircuitError, circuit, parse_values
from symbp.render.circuit import add_command
from symbp.errors import SymbpError
from symbp.render.circuit import fmt

ROOT = Path(__file__).resolve().parent.parent
SIGMOID = "1/(1+exp(-(w0*x0 + w1*x1 + w2)))"
SEED = dict(w0=2, x0=-1, w1=-3, x1=-2, w2=-3)
# Seed 000, "Another example: sigmoid": forward 0.73, gradients at the inputs.
SEED_GRADS = {"w0": "-0.20", "x0": "0.39", "w1": "-0.39", "x1": "-0.59", "w2": "0.20"}
HAS_PDFLATEX = shutil.which("pdflatex") is not None


def kinds(c):
    return [n.gate.kind for n in c.gates]


# --- the seed's circuit ----------------------------------------------------------------------

def _seed_sympy_expr():
    w0, x0, w1, x1, w2 = sp.symbols("w0 x0 w1 x1 w2")
    return 1 / (1 + sp.exp(-(w0 * x0 + w1 * x1 + w2)))


@pytest.mark.parametrize("source", ["text", "sympy"])
@pytest.mark.parametrize("granularity,stages", [
    ("atomic", ["mul", "mul", "add", "add", "neg", "exp", "cadd", "recip"]),
    ("fused", ["mul", "mul", "add", "add", "sigmoid"]),
])
def test_seed_sigmoid_circuit(source, granularity, stages):
    expr = SIGMOID if source == "text" else _seed_sympy_expr()
    c = circuit(expr, granularity, **SEED)
    assert kinds(c) == stages
    assert c.variables == ["w0", "x0", "w1", "x1", "w2"]
    assert fmt(c.value, 2) == "0.73"
    assert {k: fmt(v, 2) for k, v in c.gradients.items()} == SEED_GRADS
    assert sp.simplify(c.value - 1 / (1 + sp.exp(-1))) == 0


def test_seed_intermediate_values():
    c = circuit(SIGMOID, **SEED)
    values = [fmt(n.value, 2) for n in c.gates]
    grads = [fmt(n.grad, 2) for n in c.gates]
    # The slide's numbers on the wires: forward -2, 6, 4, 1, -1, 0.37, 1.37, 0.73;
    # backward 0.20, 0.20, 0.20, 0.20, -0.20, -0.53, -0.53, 1.00.
    assert values == ["-2.00", "6.00", "4.00", "1.00", "-1.00", "0.37", "1.37", "0.73"]
    assert grads == ["0.20", "0.20", "0.20", "0.20", "-0.20", "-0.53", "-0.53", "1.00"]


def test_fused_local_gradient_in_output_form():
    c = circuit(SIGMOID, "fused", **SEED)
    sig = c.gates[-1]
    assert sig.output_formula == sig.symbol * (1 - sig.symbol)
    assert "n5*(1 - n5) = 0.20" in c.table()


# --- gate patterns ---------------------------------------------------------------------------

def test_branch_sum_copy_adds():
    c = circuit("x*x + x", x=3)
    x = c.node("x")
    assert c.uses(x) == 3 and kinds(c) == ["mul", "add"]
    assert [fmt(s[2], 2) for s in x.sends] == ["3.00", "3.00", "1.00"]
    assert c.gradients == {"x": 7}
    assert "copy adds: 3.00 + 3.00 + 1.00 = 7.00" in c.table()
    assert r"\frac{\partial f}{\partial x} &= 3.00 + 3.00 + 1.00 = 7.00 && \text{copy adds}" in c.latex()
    assert r"\Sigma\ 7.00" in c.tikz()


def test_shared_subexpression_branches():
    c = circuit("exp(x)*exp(x) + y", x=0, y=1)
    assert kinds(c).count("exp") == 1
    e = c.gates[0]
    assert c.uses(e) == 2 and c.gradients["x"] == 2 and "copy adds" in c.patterns()


def test_add_distributes_mul_swaps():
    c = circuit("x*y + z", x=3, y=-4, z=5)
    mul, add = c.gates
    assert mul.local == (-4, 3)          # the other input: mul swaps
    assert add.local == (1, 1)           # add distributes
    assert c.gradients == {"x": -4, "y": 3, "z": 1}
    assert list(c.patterns()) == ["add distributes", "mul swaps"]


@pytest.mark.parametrize("x,y,gx,gy", [(3, 1, 1, 0), (1, 3, 0, 1), (-2, -5, 1, 0)])
def test_max_routes(x, y, gx, gy):
    c = circuit("2*max(x, y)", x=x, y=y)
    assert c.gradients == {"x": 2 * gx, "y": 2 * gy}
    assert "max routes" in c.patterns()
    assert not any("convention" in s for s in c.notes())


@pytest.mark.parametrize("expr,values,grads", [
    ("max(x, y)", dict(x=2, y=2), {"x": 1, "y": 0}),          # first argument takes it all
    ("max(y, x)", dict(x=2, y=2), {"x": 1, "y": 0}),          # SymPy's order: Max(x, y)
    ("relu(x)", dict(x=0), {"x": 0}),                          # max(0, x): relu'(0) = 0
    ("max(0, x)", dict(x=0), {"x": 0}),
    ("relu(x)", dict(x=Fraction(1, 2)), {"x": 1}),
    ("max(x, y, z)", dict(x=1, y=4, z=4), {"x": 0, "y": 1, "z": 0}),
])
def test_max_tie_convention(expr, values, grads):
    c = circuit(expr, **values)
    assert c.gradients == grads
    tie = any(n.tie for n in c.gates)
    assert tie == any("first tied argument" in s for s in c.notes())
    assert tie == ("first tied argument" in c.table())
    assert tie == ("first tied argument" in c.latex())


# --- exactness and agreement with sympy.diff --------------------------------------------------

EXPRESSIONS = [
    (SIGMOID, SEED),
    ("x*x + x", dict(x=3)),
    ("x*y + 1/x", dict(x=Fraction(1, 3), y=0.5)),
    ("log(1 + exp(-x*y)) + sqrt(x)", dict(x=4, y=-1)),
    ("sigmoid(a*b) * sigmoid(-a) + a", dict(a=Fraction(1, 2), b=3)),
    ("(x - y)**2 / 2 + 3*x - 7", dict(x=2, y=Fraction(-5, 4))),
    ("exp(x)**3 * log(y) - x**y", dict(x=Fraction(1, 2), y=2)),
    ("max(x*y, x + y) + relu(x - 2)", dict(x=3, y=Fraction(1, 3))),
    ("1/(1 + exp(x)) - 2*sigmoid(x*x)", dict(x=1)),
    ("-x - y - x*y", dict(x=2, y=5)),
    ("log(1/(1 + exp(-x))) + x/(1 + exp(-y*x))", dict(x=Fraction(-3, 2), y=2)),
    ("x**y + 2**x - exp(1)*x/3", dict(x=2, y=Fraction(1, 2))),
]


@pytest.mark.parametrize("granularity", ["atomic", "fused"])
@pytest.mark.parametrize("expr,values", EXPRESSIONS)
def test_gradients_equal_sympy_diff(expr, values, granularity):
    c = circuit(expr, granularity, **values)
    whole = c.expr                        # the whole expression, differentiated at once
    sym = {s.name: s for s in whole.free_symbols}
    subs = {sym[k]: sp.Rational(str(v)) for k, v in values.items()}
    assert abs(sp.N(c.value - whole.xreplace(subs), 50)) < sp.Float("1e-40")
    for name, g in c.gradients.items():
        d = sp.diff(whole, sym[name]).xreplace(subs)
        assert abs(sp.N(g - d, 50)) < sp.Float("1e-40"), name


WITH_SIGMOID = [
    (SIGMOID, SEED),
    ("sigmoid(a*b) * sigmoid(-a) + a", dict(a=Fraction(1, 2), b=3)),
    ("1/(1 + exp(x)) - 2*sigmoid(x*x)", dict(x=1)),
    ("log(1/(1 + exp(-x))) + x/(1 + exp(-y*x))", dict(x=Fraction(-3, 2), y=2)),
    ("sigmoid(sigmoid(x) + y)", dict(x=0, y=-1)),
]


@pytest.mark.parametrize("expr,values", WITH_SIGMOID)
def test_granularity_gives_same_gradients(expr, values):
    a, f = circuit(expr, "atomic", **values), circuit(expr, "fused", **values)
    assert "sigmoid" in kinds(f) and "sigmoid" not in kinds(a)
    assert len(f.gates) < len(a.gates)
    assert sp.simplify(a.value - f.value) == 0
    for k in a.gradients:
        assert sp.simplify(a.gradients[k] - f.gradients[k]) == 0, k


def test_exact_rationals():
    c = circuit("x*y + 1/x", x=Fraction(1, 3), y=0.5)
    assert c.values == {"x": sp.Rational(1, 3), "y": sp.Rational(1, 2)}
    assert c.value == sp.Rational(1, 6) + 3
    assert c.gradients == {"x": sp.Rational(1, 2) - 9, "y": sp.Rational(1, 3)}
    assert all(isinstance(v, sp.Rational) for v in c.gradients.values())
    assert fmt(sp.Rational(1, 8), 2) == "0.13" and fmt(sp.Rational(-1, 8), 2) == "-0.13"
    assert fmt(sp.Rational(-1, 1000), 2) == "0.00"


def test_float_values_by_shortest_repr():
    assert circuit("x*y", x=0.1, y=0.2).value == sp.Rational(1, 50)


# --- bad input -------------------------------------------------------------------------------

BAD = [
    ("x*y", dict(x=1), "no value for the variable y"),
    ("x", dict(x=1, z=2), "value given for z"),
    ("tanh(x)", dict(x=1), "unknown function 'tanh'"),
    ("x.real", dict(x=1), "attribute access"),
    ("__import__('os')", {}, "not allowed"),
    ("x if x else 1", dict(x=1), "a conditional"),
    ("log(x)", dict(x=0), "log of zero or a negative number"),
    ("log(x - 3)", dict(x=1), "log of zero or a negative number"),
    ("1/x", dict(x=0), "reciprocal of zero"),
    ("y/(x - 2)", dict(x=2, y=1), "reciprocal of zero"),
    ("sqrt(x)", dict(x=0), "not differentiable where evaluated"),
    ("x**(1/3)", dict(x=0), "not differentiable where evaluated"),
    ("sqrt(x)", dict(x=-1), "not a finite real number"),
    ("x**-2", dict(x=0), "not a finite real number"),
    ("x", dict(x="1"), "expected a number"),
    ("x", dict(x=float("inf")), "expected a finite number"),
    ("3 + 4", {}, "no variables"),
    ("x", dict(x=1), "single variable"),
    ("x + log(0)", dict(x=1), "not a finite real number"),
]


@pytest.mark.parametrize("expr,values,fragment", BAD)
def test_bad_input(expr, values, fragment):
    with pytest.raises(SymbpError) as e:
        circuit(expr, **values)
    msg = str(e.value)
    assert fragment in msg and "\n" not in msg


def test_outside_gates_sympy_expression():
    x = sp.Symbol("x")
    with pytest.raises(CircuitError, match="tanh .* outside the circuit's gates"):
        circuit(sp.tanh(x) + x, x=1)


def test_bad_granularity():
    with pytest.raises(CircuitError, match="granularity"):
        circuit("x", "coarse", x=1)


@pytest.mark.parametrize("decimals", [-1, 13, 2.5, True, "2"])
@pytest.mark.parametrize("method", ["table", "latex", "tikz", "document"])
def test_decimals_out_of_range(method, decimals):
    c = circuit("x*y", x=1, y=2)
    with pytest.raises(CircuitError, match="decimals: expected an integer from 0 to 12"):
        getattr(c, method)(decimals)


@pytest.mark.parametrize("decimals", [0, 12])
def test_decimals_bounds(decimals):
    c = circuit(SIGMOID, **SEED)
    assert fmt(c.gradients["x0"], decimals) in c.table(decimals)


# --- deterministic rendering -----------------------------------------------------------------

@pytest.mark.parametrize("method", ["table", "latex", "tikz", "document"])
def test_deterministic_text(method):
    a = getattr(circuit(SIGMOID, **SEED), method)()
    b = getattr(circuit(SIGMOID, **SEED), method)()
    assert a == b


def test_seed_text_outputs():
    c = circuit(SIGMOID, **SEED)
    table = c.table()
    assert "n1    mul           w0*x0     -2.00  dn1/dw0 = x0 = -1.00; dn1/dx0 = w0 = 2.00" in table
    assert "n8    reciprocal    1/n7       0.73  dn8/dn7 = -1/n7**2 = -0.53" in table
    assert "df/dw0 = -0.20, df/dx0 = 0.39, df/dw1 = -0.39, df/dx1 = -0.59, df/dw2 = 0.20" in table
    tex = c.latex()
    assert tex.count(r"\begin{align*}") == 2
    assert (r"\frac{\partial f}{\partial x_{0}} &= \frac{\partial f}{\partial n_{1}}\,"
            r"\frac{\partial n_{1}}{\partial x_{0}} = [0.20] \times \left[w_{0}\right] = "
            r"[0.20] \times [2.00] = 0.40 && \text{mul swaps}") in tex    # as printed: not 0.39
    pic = c.tikz()
    assert pic.count(r"\node[gate]") == 8 and pic.count(r"\node[var]") == 6      # 5 inputs and f
    assert pic.count(r"\draw[wire]") == 13                                        # 12 wires + output
    assert r"node[fwd, above, sloped, pos=0.42] {$-2.00$} node[bwd, below, sloped, pos=0.42] {$0.20$} (n3)" in pic
    assert "$1/x$" in pic and r"$\times(-1)$" in pic and "$+1$" in pic


# --- files, PDF, command line ----------------------------------------------------------------

def _cli(argv):
    ap = argparse.ArgumentParser(prog="symbp")
    add_command(ap.add_subparsers(dest="command", required=True))
    args = ap.parse_args(argv)
    return args.fn(args)


def test_parse_values():
    assert parse_values("w0=2, x0=-1,w1=1/3,x1=0.5,e=1e-3") == {
        "w0": 2, "x0": -1, "w1": Fraction(1, 3), "x1": Fraction(1, 2), "e": Fraction(1, 1000)}


@pytest.mark.parametrize("text,fragment", [
    ("x", "expected name=value"), ("x=abc", "expected a number"), ("x=1/0", "nonzero denominator"),
    ("x=1,x=2", "two values for x"), ("1x=2", "not a variable name"), ("x=__import__('os')", "expected a number"),
])
def test_parse_values_bad(text, fragment):
    with pytest.raises(CircuitError, match=fragment):
        parse_values(text)


def test_cli_prints_table(capsys, tmp_path):
    tikz = tmp_path / "pic.tex"
    assert _cli(["circuit", SIGMOID, "--at", "w0=2,x0=-1,w1=-3", "--at", "x1=-2,w2=-3",
                 "--tikz", str(tikz), "--decimals", "3"]) == 0
    out = capsys.readouterr().out
    assert "df/dx0 = 0.393" in out and f"wrote {tikz}" in out
    assert tikz.read_text() == circuit(SIGMOID, **SEED).tikz(3)


@pytest.mark.parametrize("argv,fragment", [
    (["circuit", "log(x)", "--at", "x=0"], "log of zero"),
    (["circuit", "x*y", "--at", "x=1"], "no value for the variable y"),
    (["circuit", "x", "--at", "x=1", "--decimals", "13"], "decimals"),
    (["circuit", "x", "--at", "x=1", "--pdf"], "--pdf needs --latex"),
])
def test_cli_bad_input_writes_nothing(tmp_path, argv, fragment):
    tex = tmp_path / "c.tex"
    with pytest.raises(SymbpError, match=fragment):
        _cli(argv + ["--latex", str(tex)] if "--pdf" not in argv else argv)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not HAS_PDFLATEX, reason="pdflatex not installed")
@pytest.mark.parametrize("expr,values,granularity", [
    (SIGMOID, SEED, "atomic"), (SIGMOID, SEED, "fused"),
    ("max(x, y)*z + relu(x - y) + x*x", dict(x=2, y=2, z=3), "atomic"),
])
def test_document_compiles(tmp_path, expr, values, granularity):
    c = circuit(expr, granularity, **values)
    written = c.write(latex=tmp_path / "c.tex", tikz=tmp_path / "p.tex", pdf=True)
    assert written == [str(tmp_path / "c.tex"), str(tmp_path / "p.tex"), str(tmp_path / "c.pdf")]
    assert (tmp_path / "c.pdf").read_bytes().startswith(b"%PDF")
    assert (tmp_path / "c.tex").read_text() == c.document()


@pytest.mark.skipif(not HAS_PDFLATEX, reason="pdflatex not installed")
@pytest.mark.parametrize("script", ["sigmoid_circuit.py", "wx_norm.py"])
def test_examples_run(tmp_path, script):
    run = subprocess.run([sys.executable, str(ROOT / "examples" / script), str(tmp_path)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert any(p.suffix == ".pdf" for p in tmp_path.iterdir())

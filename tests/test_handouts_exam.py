"""Handouts a lecturer gives out unchanged: worked examples, exams and circuits checked as a
student and an examiner would read them.

- Every step of a worked example and of a circuit can be recomputed from the numbers it prints
  (rounded half up at the stated precision, the stated convention for function values), and a
  result printed with "=" is exactly what its printed operands give.
- Exam sheets state the delta and batch conventions; every multiple-choice question has at
  least four options, pairwise further apart than the stated rounding; a student who works
  from the printed numbers as the sheet says reproduces every key.
- Circuit variants are not degenerate (no equal values; a swap of two variables changes an
  answer unless the expression is symmetric in them); titles show the expression as typed; the
  branched ||Wx||^2 circuit has no crossing wires and no overprinted labels.
- The PDFs compile without an overfull line, name no "seed" file, and are the same bytes for
  the same arguments.
"""
import json
import os
import random
import re
import shutil
import subprocess
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction
from itertools import combinations
from pathlib import Path

import mpmath
import pytest
import sympy as sp

import symbp
from symbp import naming
from symbp.derivation.circuit import circuit
from symbp.render import exam as E
from symbp.render import worked as Wk
from symbp.render.circuit import layout_problems, typed_latex

HAVE_PDFLATEX = shutil.which("pdflatex") is not None
needs_pdflatex = pytest.mark.skipif(not HAVE_PDFLATEX, reason="pdflatex is not installed")
EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "specs"
SIGMOID = "1/(1+exp(-(w0*x0 + w1*x1 + w2)))"
SIGMOID_AT = dict(w0=2, x0=-1, w1=-3, x1=-2, w2=-3)
WX = "(W11*x1 + W12*x2)**2 + (W21*x1 + W22*x2)**2"
WX_AT = dict(W11=0.1, W12=0.5, W21=-0.3, W22=0.8, x1=0.2, x2=0.4)


# ------------------------------------------------------------------------------------------
# helpers: rounding as a student does, compiling as a lecturer does
# ------------------------------------------------------------------------------------------
def half_up(value, decimals):
    """Decimal rounding, half away from zero: exact on a Fraction, else on the value's
    50-digit decimal expansion (a SymPy or mpmath number). Returns a Fraction."""
    if isinstance(value, Fraction):
        scaled = abs(value) * 10 ** decimals
        n = (scaled + Fraction(1, 2)).__floor__()
        return Fraction(n if value >= 0 else -n, 10 ** decimals)
    q = Decimal(str(value)).quantize(Decimal(1).scaleb(-decimals), rounding=ROUND_HALF_UP)
    return Fraction(str(q))


def number(text):
    """A printed number ("(-0.25)", "0.7", "\\tfrac{1}{3}") as an exact Fraction."""
    text = text.strip().strip("()")
    m = re.fullmatch(r"(-?)\\tfrac\{(\d+)\}\{(\d+)\}", text)
    if m:
        return Fraction(int(m.group(2)), int(m.group(3))) * (-1 if m.group(1) else 1)
    return Fraction(text)


def compile_tex(tex, tmp_path, name):
    """(pdf bytes, log text) of a document, compiled twice in ``tmp_path`` like a lecturer."""
    d = tmp_path / name
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{name}.tex").write_text(tex, encoding="utf-8")
    env = dict(os.environ, SOURCE_DATE_EPOCH="0", FORCE_SOURCE_DATE="1")
    for _ in range(2):
        run = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", f"{name}.tex"],
                             cwd=d, capture_output=True, text=True, env=env, timeout=300)
        assert run.returncode == 0, run.stdout[-2000:]
    return (d / f"{name}.pdf").read_bytes(), (d / f"{name}.log").read_text(errors="replace")


def assert_clean(tex, log):
    assert "Overfull \\hbox" not in log, re.findall(r"Overfull \\hbox.*", log)[:3]
    assert not re.search(r"seed\s*0\d\d|\b00\d_[0-9a-f]{6}", tex, re.I), "cite the works, not seed files"


# ------------------------------------------------------------------------------------------
# worked examples
# ------------------------------------------------------------------------------------------
XOR_PARAMS = {"W1": [[0.5, -0.4], [0.3, 0.8], [-0.6, 0.2]], "b1": [0.1, -0.2, 0.05],
              "W2": [[0.7, -0.5, 0.4]], "b2": [0.15]}
SQUARE_X, SQUARE_Y = [[0.5], [-1.0]], [[0.25], [1.0]]


def _square_params():
    rng = random.Random(3)
    net = symbp.load(str(EXAMPLES / "square.toml"))
    return net, {k: ([[rng.randint(-9, 9) / 10 for _ in range(s[1])] for _ in range(s[0])] if len(s) == 2
                     else [rng.randint(-5, 5) / 10 for _ in range(s[0])])
                 for k, s in net.param_shapes().items()}


@pytest.fixture(scope="module")
def xor_worked():
    net = symbp.load(str(EXAMPLES / "xor.toml"))
    return Wk.worked_example(symbp.derive(net), XOR_PARAMS, [[0, 1], [1, 1]], [1, 0], decimals=3,
                             lr=0.5, finite_differences=True)


@pytest.fixture(scope="module")
def square_worked():
    net, params = _square_params()
    return Wk.worked_example(symbp.derive(net), params, SQUARE_X, SQUARE_Y, decimals=3, lr=0.1)


def _student_entry(expr, printed, decimals, whole_function):
    """A student's value of an entry from the printed numbers: every function value (the whole
    activation for an elementwise activation) rounded half up, the result rounded half up."""
    e = expr.xreplace(printed)
    if whole_function:
        return half_up(sp.N(e, 50), decimals)
    raw = e if e.is_Rational else None      # a function value in it: the result is rounded
    e = e.replace(lambda t: isinstance(t, (sp.exp, sp.log)) and t.is_number and not t.is_Rational,
                  lambda t: sp.Rational(half_up(sp.N(t, 50), decimals)))
    return half_up(Fraction(int(e.p), int(e.q)), decimals), raw


def _printed_env(w, derivation):
    """The numbers a reader sees: the Given values exactly, every computed entry as printed."""
    env = {}
    B = w.batch
    for l in range(1, derivation.network.depth + 1):
        for kind in ("W", "b"):
            m = w.hand[naming.param_key(kind, l)]
            base = naming.quantity(kind, l)
            for i in range(m.rows):
                for j in range(m.cols):
                    env[base[i, j] if kind == "W" else base[i]] = m[i, j]
    for s in range(B):
        for k in range(w.hand["x"].cols):
            env[naming.quantity("a", 0)[s, k]] = w.hand["x"][s, k]
        for k in range(w.hand["y"].cols):
            env[naming.quantity("y")[s, k]] = w.hand["y"][s, k]
    env[naming.BATCH] = sp.Integer(B)
    return env


@pytest.mark.parametrize("name", ["xor_worked", "square_worked"])
def test_a_student_recomputes_every_worked_step_from_the_printed_numbers(request, name):
    w = request.getfixturevalue(name)
    d = w.derivation
    env = _printed_env(w, d)
    checked = 0
    steps = {st.name: st for st in w.steps}
    for pe in Wk.plan(d, w.batch):
        eq = pe.equation
        st = steps[eq.name]
        elementwise = eq.kind == "forward_a" and d.layers[eq.layer - 1].rule is not None
        for ent, line in zip(pe.entries, st.lines):
            rel, text = line.value.split(" ", 1)
            printed = number(text)
            if elementwise:
                e = ent.expr.xreplace(env)
                raw = e if e.is_Rational else None
                value = half_up(Fraction(int(e.p), int(e.q)) if raw is not None else sp.N(e, 50), w.decimals)
            else:
                value, raw = _student_entry(ent.expr, env, w.decimals, False)
            assert value == printed, (eq.name, ent.index, line.value)
            # "=" only where the printed numbers give exactly the printed value
            exact = raw is not None and raw.is_Rational and Fraction(int(raw.p), int(raw.q)) == printed
            assert (rel == "=") == exact, (eq.name, ent.index, line.value)
            env[ent.lhs] = sp.Rational(printed.numerator, printed.denominator)
            checked += 1
    assert checked >= 20


def test_worked_example_starts_with_the_given_block(xor_worked):
    tex = xor_worked.latex(document=True)
    given, first = tex.index(r"\subsection*{Given}"), tex.index(r"\paragraph{(1)")
    assert given < first
    block = tex[given:first]
    for part in (r"W^{[1]} = \begin{bmatrix} 0.5 & -0.4 \\ 0.3 & 0.8 \\ -0.6 & 0.2 \end{bmatrix}",
                 r"b^{[2]} = \begin{bmatrix} 0.15 \end{bmatrix}", r"X = \begin{bmatrix} 0 & 1 \\ 1 & 1 \end{bmatrix}",
                 r"Y = \begin{bmatrix} 1 \\ 0 \end{bmatrix}", r"\eta = 0.5"):
        assert part in block


def test_central_differences_stand_beside_every_parameter_gradient(xor_worked):
    fd = xor_worked.finite_differences
    for name in ("gW1", "gb1", "gW2", "gb2"):
        exact = xor_worked.values[name]
        assert fd[name].shape == exact.shape
        for a, b in zip(fd[name], exact):
            assert abs(float(a) - float(sp.N(b, 30))) < 1e-7      # O(h^2), h = 1e-4
        st = next(s for s in xor_worked.steps if s.name == name)
        assert st.lines and all(l.fd.startswith(r"\approx ") for l in st.lines)
    tex = xor_worked.latex(document=True)
    assert r"\text{central difference: }" in tex and r"h = 10^{-4}" in tex


def test_worked_rounding_is_half_up_on_the_exact_value():
    # 0.515 and 0.015 are not binary floats: round half to even on floats gives 0.51 and 0.01
    assert Wk.show(sp.Rational(515, 1000), 2) == ("0.52", False)
    assert Wk.show(sp.Rational(15, 1000), 2) == ("0.02", False)
    assert Wk.show(sp.Rational(-15, 1000), 2) == ("-0.02", False)
    net = symbp.mlp([1, 1], ["identity"], "mse", name="half")
    w = Wk.worked_example(symbp.derive(net), {"W1": [[1.03]], "b1": [0]}, [0.5], [0], decimals=2)
    line = next(l for l in w.steps[0].lines)
    assert line.value == r"\approx 0.52"                       # 1.03 * 0.5 = 0.515


@needs_pdflatex
@pytest.mark.parametrize("name", ["xor_worked", "square_worked"])
def test_worked_pdf_is_clean_and_reproducible(request, name, tmp_path):
    w = request.getfixturevalue(name)
    tex = w.latex(document=True)
    pdf, log = compile_tex(tex, tmp_path, name)
    assert_clean(tex, log)
    again, _ = compile_tex(w.latex(document=True), tmp_path / "again", name)
    assert pdf == again


# ------------------------------------------------------------------------------------------
# exams
# ------------------------------------------------------------------------------------------
EXAM_SEEDS = (1, 2, 3)


@pytest.fixture(scope="module")
def mc_exams():
    return {seed: E.make_exam((2, 2, 1), "sigmoid", "mse", variants=2, seed=seed, multiple_choice=True,
                              circuit=True) for seed in EXAM_SEEDS}


@pytest.fixture(scope="module")
def relu_exam():
    return E.make_exam((2, 2, 1), "relu", "mse", variants=2, seed=4, multiple_choice=True)


def _exams(mc_exams, relu_exam):
    return list(mc_exams.values()) + [relu_exam]


def test_every_option_set_has_four_distinct_options_further_apart_than_the_rounding(mc_exams, relu_exam):
    for ex in _exams(mc_exams, relu_exam):
        gap = Fraction(E.GAP_UNITS, 10 ** ex.decimals)
        assert gap > Fraction(1, 10 ** ex.decimals)           # more than the stated rounding
        q = ex.questions_tex()
        assert f"differ pairwise by at\nleast {ex._context()['gap']}" in q
        for v in ex.variants:
            mc = [qq for qq in v.questions if qq.options]
            assert len(mc) >= 6
            for qq in mc:
                values = [number(t.strip("$")) for _, t, _ in qq.options]
                assert len(values) >= 4 and len(set(values)) == len(values), qq
                for a, b in combinations(values, 2):
                    # displayed values: the exact ones differ by >= gap, so by > gap - one unit
                    assert abs(a - b) > gap - Fraction(1, 10 ** ex.decimals), (qq.key, values)


def test_sheets_state_the_delta_and_batch_convention(mc_exams):
    q = mc_exams[1].questions_tex()
    assert r"\delta^{[l]}_s = \partial L / \partial z^{[l]}_s" in q
    assert r"factor $\frac{1}{B}$" in q and "per-sample" in q and "IT5005" in q
    assert "mean over the 2 samples" in q


def test_the_forgotten_mean_is_never_the_key(mc_exams):
    """Under the stated convention (delta of the batch mean), the 1/N-forgotten value is wrong:
    it is B times the key, offered only as a distractor."""
    for ex in mc_exams.values():
        for v in ex.variants:
            for qq in v.questions:
                for letter, t, mistake in qq.options:
                    if mistake and "1/N" in mistake:
                        assert letter != qq.correct and t != qq.answer


def _student(ex, v):
    """A student with the sheet: the printed given numbers, the printed table of sigma values,
    every computed quantity rounded half up to the stated decimals (the derivation's order:
    delta^[2] from a and y in one go). 2-2-1, sigmoid or ReLU, mean squared error."""
    d = ex.decimals
    r = lambda x: half_up(x, d)
    table = {}
    for tex, value in v.table:
        m = re.fullmatch(r"\\sigma\((-?[\d.]+)\)", tex)
        assert m, tex
        table[Fraction(m.group(1))] = Fraction(value)
    relu = ex.network.layers[0].activation.name == "relu"

    def act(z):
        if relu:
            return max(z, Fraction(0))
        assert z in table, f"sigma({z}) is not in the printed table"
        return table[z]

    def dact(z, a):
        return Fraction(int(z > 0)) if relu else a * (1 - a)
    F = lambda m: [[Fraction(str(sp.Rational(m[i, j]))) for j in range(m.cols)] for i in range(m.rows)]
    W1, b1, W2, b2 = F(v.params["W1"]), F(v.params["b1"]), F(v.params["W2"]), F(v.params["b2"])
    X, Y = F(v.X), F(v.Y)
    B = len(X)
    out = {"delta1": [], "delta2": [], "ga0": []}
    gW1 = [[Fraction(0)] * 2 for _ in range(2)]
    loss = Fraction(0)
    for s in range(B):
        z1 = [r(sum(W1[j][k] * X[s][k] for k in range(2)) + b1[j][0]) for j in range(2)]
        a1 = [act(z) for z in z1]
        z2 = [r(sum(W2[0][k] * a1[k] for k in range(2)) + b2[0][0])]
        a2 = [act(z) for z in z2]
        loss += (a2[0] - Y[s][0]) ** 2 / 2
        delta2 = [r((a2[0] - Y[s][0]) * dact(z2[0], a2[0]) / B)]
        ga1 = [r(W2[0][j] * delta2[0]) for j in range(2)]
        delta1 = [r(dact(z1[j], a1[j]) * ga1[j]) for j in range(2)]
        ga0 = [r(sum(W1[j][i] * delta1[j] for j in range(2))) for i in range(2)]
        out["delta1"].append(delta1)
        out["delta2"].append(delta2)
        out["ga0"].append(ga0)
        for p in range(2):
            for q in range(2):
                gW1[p][q] += delta1[p] * X[s][q]
    out["loss"] = r(loss / B)
    out["gW1"] = [[r(g) for g in row] for row in gW1]
    out["W1"] = W1
    return out


def _entry(text):
    m = re.search(r"_\{(\d)(\d)?\}\^\{\[(\d)\]\}", text)
    return int(m.group(1)) - 1, (int(m.group(2)) - 1 if m.group(2) else None), int(m.group(3))


def test_a_student_working_as_told_reproduces_every_key(mc_exams, relu_exam):
    checked = 0
    for ex in _exams(mc_exams, relu_exam):
        q = ex.questions_tex()
        for v in ex.variants:
            st = _student(ex, v)
            for qq in v.questions:
                if not qq.options:
                    continue
                key = number(qq.answer.strip("$"))
                if qq.key == "loss":
                    got = st["loss"]
                elif qq.key.startswith("delta"):
                    j, _, l = _entry(qq.text)
                    got = st[qq.key][0][j]
                elif qq.key == "gW1":
                    p, q_, _ = _entry(qq.text)
                    got = st["gW1"][p][q_]
                elif qq.key == "ga0":
                    k = int(re.search(r"x_\{(\d)\}", qq.text).group(1)) - 1
                    got = st["ga0"][0][k]
                elif qq.key == "update":
                    p, q_, _ = _entry(qq.text)
                    got = half_up(st["W1"][p][q_] - Fraction(str(ex.lr)) * st["gW1"][p][q_], ex.decimals)
                else:
                    continue
                assert got == key, (ex.seed, v.number, qq.key, got, key)
                checked += 1
        # the given numbers are printed exactly (with "=")
        for v in ex.variants:
            for key, m in v.params.items():
                for x in m:
                    assert Wk.show(x, ex.decimals)[1]
    assert checked == 4 * 2 * 6      # loss, two deltas, dL/dW, dL/dx, update per variant


def test_solutions_are_printed_at_the_precision_students_are_told_to_use(mc_exams):
    ex = mc_exams[1]
    s = ex.solutions_tex()
    assert f"Worked by hand at {ex.decimals} decimals" in s
    assert f"to {ex.decimals} decimals" in ex.questions_tex()


def test_question_sheets_leave_room_for_the_answers(mc_exams):
    q = mc_exams[1].questions_tex()
    per_variant = q.split(r"\section*")[1:]
    for part in per_variant:
        items = part.count(r"\item")
        assert part.count(r"\answerbox{") == items


# ------------------------------------------------------------------------------------------
# circuits
# ------------------------------------------------------------------------------------------
def _swap_caught(text, values):
    c = circuit(text, **values)
    key = (c.value,) + tuple(c.gradients[v] for v in c.variables)
    for u, w in combinations(c.variables, 2):
        if values[u] == values[w]:
            return False
        su, sw = c.node(u).symbol, c.node(w).symbol
        if sp.simplify(c.expr.xreplace({su: sw, sw: su}) - c.expr) == 0:
            continue
        s = circuit(text, **{**values, u: values[w], w: values[u]})
        if (s.value,) + tuple(s.gradients[v] for v in s.variables) == key:
            return False
    return True


def test_no_degenerate_circuit_variant_over_many_seeds():
    for seed in range(40):
        cq = E._circuit_question(random.Random(seed))
        assert len(set(cq.values.values())) == len(cq.values), cq.values
        assert _swap_caught(cq.text, cq.values), (cq.text, cq.values)


def test_the_degenerate_variants_of_the_slides_are_refused():
    assert E.degenerate(circuit("(w0*x0 + w1*x1 + b)*v", w0=1, x0=2, w1=1, x1=2, b=3, v=2),
                        "(w0*x0 + w1*x1 + b)*v")
    assert E.degenerate(circuit("x*y + y*z", x=1, y=2, z=2), "x*y + y*z")


def test_circuit_titles_show_the_expression_as_typed(tmp_path):
    assert typed_latex(SIGMOID) == (r"\frac{1}{1 + \exp\left(-\left(w_{0} x_{0} + w_{1} x_{1} + w_{2}\right)\right)}")
    assert typed_latex("(x + y)*z") == r"\left(x + y\right) z"
    c = circuit(SIGMOID, **SIGMOID_AT)
    assert typed_latex(SIGMOID) in c.document()
    ex = E.make_exam((2, 2, 1), "relu", "mse", variants=1, seed=2, circuit=True)
    cq = ex.variants[0].circuit
    assert cq.expr == typed_latex(cq.text)


_STEP = re.compile(r"\[(-?[\d.]+)\] \\times \[(-?[\d.]+)\] (=|\\approx) (-?[\d.]+)")
_BIN = re.compile(r"= (\(?-?[\d.]+\)?) (\+|\\cdot) (\(?-?[\d.]+\)?) (=|\\approx) (-?[\d.]+) &&")
_FUN = re.compile(r"= (e\^\{(-?[\d.]+)\}|\\frac\{1\}\{(-?[\d.]+)\}|\{\(?(-?[\d.]+)\)?\}\^\{2\}) (=|\\approx) (-?[\d.]+) &&")


@pytest.mark.parametrize("text, at, decimals", [(SIGMOID, SIGMOID_AT, 2), (WX, WX_AT, 3)])
def test_every_circuit_step_recomputes_from_its_printed_numbers(text, at, decimals):
    c = circuit(text, **at)
    tex = c.latex(decimals)
    n = 0
    for a, b, rel, res in _STEP.findall(tex):
        exact = number(a) * number(b)
        assert half_up(exact, decimals) == number(res), (a, b, res)
        assert (rel == "=") == (exact == number(res)), (a, b, rel, res)
        n += 1
    for a, op, b, rel, res in _BIN.findall(tex):
        exact = number(a) + number(b) if op == "+" else number(a) * number(b)
        assert half_up(exact, decimals) == number(res) and (rel == "=") == (exact == number(res))
        n += 1
    for _, e, rec, sq, rel, res in _FUN.findall(tex):
        if e:
            exact = mpmath.exp(mpmath.mpf(e))
        elif rec:
            exact = 1 / Fraction(rec)
        else:
            exact = Fraction(sq) ** 2
        got = half_up(exact if isinstance(exact, Fraction) else mpmath.nstr(exact, 40), decimals)
        assert got == number(res), (e, rec, sq, res)
        assert (rel == "=") == (isinstance(exact, Fraction) and exact == number(res))
        n += 1
    assert n >= 10
    assert "[0.20] \\times [2.00] = 0.39" not in tex


@pytest.mark.parametrize("text, at", [(SIGMOID, SIGMOID_AT), (WX, WX_AT), ("x*y + y*z", dict(x=1, y=2, z=3)),
                                      ("max(x, y)*z + x*w", dict(x=1, y=-2, z=3, w=2))])
def test_circuit_pictures_have_no_crossing_wires_or_overprinted_labels(text, at):
    c = circuit(text, **at)
    assert layout_problems(c) == []


def test_the_shared_wx_layout_crossed_and_is_drawn_as_a_tree():
    c = circuit(WX, **WX_AT)
    assert layout_problems(c, split=False)          # what the picture used to be
    pic = c.tikz(3)
    assert pic.count("$x_{1}$") == 2 and pic.count("$x_{2}$") == 2       # one beside each gate
    assert pic.count(r"\Sigma\ {-0.112}") == 2 and pic.count(r"\Sigma\ 0.636") == 2


@needs_pdflatex
@pytest.mark.parametrize("text, at, decimals", [(SIGMOID, SIGMOID_AT, 2), (WX, WX_AT, 3)])
def test_circuit_pdf_is_clean_and_reproducible(text, at, decimals, tmp_path):
    c = circuit(text, **at)
    tex = c.document(decimals)
    pdf, log = compile_tex(tex, tmp_path, "circuit")
    assert_clean(tex, log)
    assert pdf == compile_tex(c.document(decimals), tmp_path / "again", "circuit")[0]


@needs_pdflatex
def test_wx_norm_handout_is_clean(tmp_path):
    from symbp.output import environment
    c = circuit(WX, **WX_AT)
    tex = environment().get_template("latex/circuit_wx_norm.tex.j2").render(
        f="f", dW="", dx="", dW_q="", dx_q="", W="W", x="x", q="q", value="0.116", gW="", gx="",
        fd_error="0", circuit_tikz=c.tikz(3))
    _, log = compile_tex(tex, tmp_path, "wx")
    assert_clean(tex, log)
    assert "Multi-Layer Networks" in tex


@needs_pdflatex
def test_exam_pdfs_are_clean_and_reproducible(mc_exams, tmp_path):
    for seed, ex in mc_exams.items():
        for name, tex in (("questions", ex.questions_tex()), ("solutions", ex.solutions_tex())):
            pdf, log = compile_tex(tex, tmp_path / str(seed), name)
            assert_clean(tex, log)
            if seed == EXAM_SEEDS[0]:
                again = E.make_exam((2, 2, 1), "sigmoid", "mse", variants=2, seed=seed,
                                    multiple_choice=True, circuit=True)
                tex2 = again.questions_tex() if name == "questions" else again.solutions_tex()
                assert tex2 == tex
                assert compile_tex(tex2, tmp_path / "again", name)[0] == pdf


def test_cli_worked_finite_differences(tmp_path):
    from symbp.cli import commands as cli
    params = tmp_path / "p.json"
    params.write_text(json.dumps(XOR_PARAMS))
    md = tmp_path / "w.md"
    args = ["worked", str(EXAMPLES / "xor.toml"), "--params", str(params), "--x", "0,1", "--y", "1",
            "--decimals", "3", "--markdown", str(md)]
    assert cli.main(args) == 0
    assert "central difference" not in md.read_text()
    assert cli.main(args + ["--finite-differences"]) == 0
    text = md.read_text()
    assert text.count(r"\text{central difference: }") == 6 + 3 + 3 + 1     # every entry of W1, b1, W2, b2
    assert "## Given" in text.split("## Forward pass")[0]


def test_open_answers_use_equals_only_for_exact_values():
    sig = E.make_exam((2, 2, 1), "sigmoid", "mse", variants=1, seed=5)
    answers = {q.key: q.answer for q in sig.variants[0].questions}
    assert answers["loss"].startswith(r"$L \approx ") and r"\approx \begin{bmatrix}" in answers["ga0"]
    assert answers["forward"].startswith(r"$z^{[1]} = ")          # W x + b of given numbers: exact
    relu = E.make_exam((2, 2, 1), "relu", "mse", variants=1, seed=5)
    answers = {q.key: q.answer for q in relu.variants[0].questions}
    assert r"\approx" not in answers["loss"] + answers["deltas"] + answers["ga0"]


@needs_pdflatex
@pytest.mark.parametrize("notation", ["cs231n", "udl", "transposed", "rowvector", "batch"])
def test_worked_pdf_in_every_notation_has_no_overfull_line(notation, tmp_path):
    net = symbp.load(str(EXAMPLES / "xor.toml"))
    w = Wk.worked_example(symbp.derive(net), XOR_PARAMS, [[0, 1], [1, 1]], [1, 0], decimals=3, lr=0.5,
                          notation=notation, finite_differences=True)
    tex = w.latex(document=True)
    _, log = compile_tex(tex, tmp_path, "w")
    assert_clean(tex, log)

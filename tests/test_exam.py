"""Exams (symbp.render.exam): deterministic, humane numbers, answer keys from the worked example,
multiple-choice distractors from mutated derivations, circuit questions, bad input, CLI."""
import re
import shutil

import pytest
import sympy as sp

import symbp
from symbp.cli import commands as cli
from symbp.derivation.circuit import circuit
from symbp.errors import InputError, SpecError
from symbp.render import exam as E
from symbp.render.worked import evaluate, show

HAVE_PDFLATEX = shutil.which("pdflatex") is not None
REQUIRED = ("no_derivative", "no_transpose", "no_mean", "no_branch_sum")


@pytest.fixture(scope="module")
def sig_open():
    return E.make_exam((2, 2, 1), "sigmoid", "mse", variants=3, seed=7)


@pytest.fixture(scope="module")
def sig_mc():
    return E.make_exam((2, 2, 1), "sigmoid", "mse", variants=3, seed=7, multiple_choice=True, circuit=True)


@pytest.fixture(scope="module")
def relu_mc():
    return E.make_exam((2, 2, 1), "relu", "mse", variants=4, seed=5, multiple_choice=True)


@pytest.fixture(scope="module")
def tanh_bce():
    return E.make_exam((2, 2, 1), "tanh", "bce", variants=2, seed=1)


EXAMS = ["sig_open", "sig_mc", "relu_mc", "tanh_bce"]


def test_same_seed_same_bytes_other_seed_other_exam(sig_open):
    again = E.make_exam((2, 2, 1), "sigmoid", "mse", variants=3, seed=7)
    assert again.questions_tex() == sig_open.questions_tex()
    assert again.solutions_tex() == sig_open.solutions_tex()
    other = E.make_exam((2, 2, 1), "sigmoid", "mse", variants=3, seed=8)
    assert other.questions_tex() != sig_open.questions_tex()


def _body(tex):
    body = tex.split(r"\begin{document}", 1)[1]
    return re.sub(r"\\begin\{tikzpicture\}.*?\\end\{tikzpicture\}", "", body, flags=re.S)


def _max_decimals(text):
    return max((len(m) for m in re.findall(r"(?<![\w.])\d+\.(\d+)", text)), default=0)


@pytest.mark.parametrize("name", EXAMS)
def test_every_displayed_number_has_at_most_the_stated_decimals(request, name):
    ex = request.getfixturevalue(name)
    ctx = ex._context()
    assert _max_decimals(_body(ex.solutions_tex())) <= ex.decimals
    assert _max_decimals(_body(ex.questions_tex())) <= ctx["work"]
    for v in ex.variants:
        for m in v.params.values():          # given numbers: small integers or one decimal
            assert all((e * 10).is_Integer for e in m)
        assert all((e * 10).is_Integer for e in v.X) and all(e.is_Integer for e in v.Y)
        for q in v.questions:
            for _, text, _ in q.options:
                assert _max_decimals(text) <= ex.decimals


def test_relu_exams_have_small_integer_intermediates(relu_mc):
    assert relu_mc.decimals == 2 and relu_mc.batch == 2
    for v in relu_mc.variants:
        vals = v.worked.values
        for name, m in vals.items():
            if re.match(r"^(z|a|ga|delta|gW|gb)\d+$", name):
                assert all(e.is_Integer and abs(e) <= E.MAX_INTEGER for e in m), (v.number, name)
        assert not any("Kink" in n for n in v.worked.notes)
        assert "Values you may use" not in relu_mc.questions_tex()


@pytest.mark.parametrize("name", ["sig_open", "tanh_bce"])
def test_a_student_with_the_table_reproduces_the_key(request, name):
    ex = request.getfixturevalue(name)
    d, work = ex.derivation, ex.decimals + E.WORK_EXTRA
    for v in ex.variants:
        student = evaluate(d, v.params, v.X, v.Y, rounding=work)
        assert student.table and all(len(row) == 2 for row in student.table)
        for eq in d.equations:
            if not E._asked(eq.name):
                continue
            exact = v.worked.values[eq.name]
            cells = exact if isinstance(exact, sp.MatrixBase) else [exact]
            for (idx, sv), ev in zip(sorted(student.results[eq.name].items()), cells):
                assert show(sv, ex.decimals)[0] == show(ev, ex.decimals)[0], (v.number, eq.name, idx)
        # the table in the question lists exactly the values the student needs
        q = ex.questions_tex()
        for tex, value in v.table:
            assert f"{tex} \\approx {value}" in q


@pytest.mark.parametrize("name", ["sig_mc", "relu_mc"])
def test_distractors_are_mutations_and_differ_from_the_answer(request, name):
    ex = request.getfixturevalue(name)
    texts = {m.text: m.name for m in E.MUTATIONS}
    used = set()
    for v in ex.variants:
        mc = [q for q in v.questions if q.options]
        assert mc, "multiple-choice mode asks with options"
        for q in mc:
            shown = [t for _, t, _ in q.options]
            assert len(set(shown)) == len(shown)
            right = [(l, t) for l, t, m in q.options if m is None]
            assert len(right) == 1 and right[0][0] == q.correct and right[0][1] == q.answer
            for letter, t, mistake in q.options:
                if mistake is not None:
                    assert t != q.answer and mistake
                    if mistake in texts:     # else a wrong entry read or the update's arithmetic
                        used.add(texts[mistake])
    assert set(REQUIRED) <= used


# ------------------------------------------------------------------------------------------
# the mutations themselves, on exact numbers
# ------------------------------------------------------------------------------------------
def _eval(d, B=2):
    P = {"W1": sp.Matrix([[1, -1], [2, 1]]), "b1": sp.Matrix([0, 1]),
         "W2": sp.Matrix([[1, -2]]), "b2": sp.Matrix([1])}
    X = sp.Matrix([[2, 1], [1, 3]])[:B, :]
    Y = sp.Matrix([[1], [0]])[:B, :]
    ev = evaluate(d, P, X, Y)
    mat = lambda name, shape: sp.Matrix(*shape, lambda i, j: ev.results[name][(i, j)])
    return ev, P, mat


def test_mutations_change_what_they_say():
    d = symbp.derive(symbp.mlp([2, 2, 1], ["relu", "identity"], "mse", name="mut"))
    ev, P, mat = _eval(d)
    W1 = P["W1"]
    right = {k: mat(k, (2, 2)) for k in ("ga1", "delta1", "ga0")}
    m, _, mm = _eval(E._no_derivative(d))
    assert mm("delta1", (2, 2)) == mm("ga1", (2, 2)) and mm("delta2", (2, 1)) == mm("ga2", (2, 1))
    m, _, mm = _eval(E._no_transpose(d))       # W1 is square: W1 instead of W1^T
    assert mm("ga0", (2, 2)) == right["delta1"] * W1.T and right["ga0"] == right["delta1"] * W1
    m, _, mm = _eval(E._no_mean(d))
    assert m.results["loss"][()] == 2 * ev.results["loss"][()]
    assert mm("delta2", (2, 1)) == 2 * mat("delta2", (2, 1))
    m, _, mm = _eval(E._no_branch_sum(d))      # x_i feeds both hidden units: one term only
    d1 = right["delta1"]
    assert mm("ga0", (2, 2)) == sp.Matrix(2, 2, lambda s, i: W1[0, i] * d1[s, 0])
    m, _, mm = _eval(E._error_sign(d))
    assert mm("delta2", (2, 1)) == -mat("delta2", (2, 1))
    # no square W: the fallback slip uses the pre-activation z in place of a in dL/dW
    d3 = symbp.derive(symbp.mlp([2, 3, 1], ["relu", "identity"], "mse", name="mut3"))
    mutant = E._no_transpose(d3)
    assert mutant is not None
    assert mutant["gW2"].rhs.has(symbp.naming.quantity("z", 1))


def test_circuit_questions_agree_with_the_circuit(sig_mc):
    q = sig_mc.questions_tex()
    for v in sig_mc.variants:
        c = v.circuit
        assert c is not None and c.steps and r"\begin{tikzpicture}" in c.picture
        assert f"Stage $f = {c.expr}$" in q
    s = sig_mc.solutions_tex()
    assert r"\usepackage{tikz}" in s
    assert "add distributes" in s or "mul swaps" in s
    # the answer key is the circuit's: recompute one
    v = sig_mc.variants[0].circuit
    values = dict(re.findall(r"([a-z](?:_\{\d\})?) = (-?\d+)", v.at))
    names = {k.replace("_{", "").replace("}", ""): int(x) for k, x in values.items()}
    expr = next(t for t in E.CIRCUITS if sorted(set(re.findall(r"[a-z]\w*", t)) - {"max"}) == sorted(names))
    c = circuit(expr, **names)
    assert f"f = {c.value}" in v.answer


def test_write_produces_files_and_same_pdfs(tmp_path):
    ex = E.make_exam((2, 1), "relu", "mse", variants=1, seed=3)
    paths = ex.write(tmp_path / "a", pdf=HAVE_PDFLATEX)
    names = sorted(p.name for p in paths)
    want = ["questions.tex", "solutions.tex"] + (["questions.pdf", "solutions.pdf"] if HAVE_PDFLATEX else [])
    assert names == sorted(want)
    assert (tmp_path / "a" / "questions.tex").read_text() == ex.questions_tex()
    if HAVE_PDFLATEX:
        ex.write(tmp_path / "b", pdf=True)
        for n in ("questions.pdf", "solutions.pdf"):
            assert (tmp_path / "a" / n).read_bytes() == (tmp_path / "b" / n).read_bytes()
            assert (tmp_path / "a" / n).read_bytes().startswith(b"%PDF")


# ------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw,err,match", [
    ({"variants": 0}, InputError, "variants: expected an integer from 1 to 200"),
    ({"variants": 201}, InputError, "variants: expected an integer from 1 to 200"),
    ({"variants": "3"}, InputError, "variants"),
    ({"activation": "nope"}, SpecError, "unknown hidden activation 'nope'"),
    ({"loss": "nope"}, SpecError, "unknown loss 'nope'"),
    ({"loss": "ce"}, SpecError, "softmax needs at least 2 units"),
    ({"network_sizes": (2, 9, 1)}, SpecError, "expected a width from 1 to 5"),
    ({"network_sizes": (2,)}, SpecError, "expected 2 to 5 widths"),
    ({"decimals": 13}, InputError, "decimals"),
    ({"batch": 9}, InputError, "batch: expected an integer from 1 to 4"),
])
def test_bad_arguments_are_one_clear_line(kw, err, match):
    with pytest.raises(err, match=match) as e:
        E.make_exam(**{"variants": 1, **kw})
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("text", ["2x2x1", "2--1", "", "2", "2-2-1-", "a-b", "1-2-3-4-5-6"])
def test_bad_network_strings(text):
    with pytest.raises(SpecError, match="--network: expected widths joined by '-'"):
        E.parse_network(text)


def test_network_string():
    assert E.parse_network("2-3-1") == (2, 3, 1)


@pytest.fixture
def main(monkeypatch):
    if "symbp.render.exam" not in cli.COMMAND_MODULES:
        monkeypatch.setattr(cli, "COMMAND_MODULES", tuple(cli.COMMAND_MODULES) + ("symbp.render.exam",))
    return cli.main


def test_cli_writes_the_exam(tmp_path, main):
    out = tmp_path / "exam"
    assert main(["exam", "--network", "2-2-1", "--activation", "relu", "--loss", "mse",
                 "--variants", "2", "--seed", "1", "--out", str(out), "--no-pdf"]) == 0
    assert (out / "questions.tex").exists() and (out / "solutions.tex").exists()
    assert (out / "questions.tex").read_text() == E.make_exam(
        (2, 2, 1), "relu", "mse", variants=2, seed=1).questions_tex()


@pytest.mark.parametrize("args,match", [
    (["--variants", "0"], "variants: expected an integer from 1 to 200"),
    (["--variants", "500"], "variants: expected an integer from 1 to 200"),
    (["--activation", "swishy"], "unknown hidden activation 'swishy'"),
    (["--loss", "hinge"], "unknown loss 'hinge'"),
    (["--network", "2x2"], "--network: expected widths"),
])
def test_cli_bad_input_exits_2_and_writes_nothing(tmp_path, main, capsys, args, match):
    out = tmp_path / "exam"
    assert main(["exam", "--out", str(out), "--no-pdf"] + args) == 2
    err = capsys.readouterr().err.strip()
    assert match in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_exam_without_bias_has_weights_only():
    """bias=False (the slides with f = W^T a): the variants draw weights only, nothing about b
    is asked or shown, and a student's evaluation reproduces the key."""
    ex = E.make_exam((2, 2, 1), "relu", "mse", variants=2, seed=5, multiple_choice=True, bias=False)
    assert "no bias" in str(ex.derivation.network)
    text = ex.questions_tex() + ex.solutions_tex()
    assert "b^{[1]}" not in text and "b^{[2]}" not in text
    for v in ex.variants:
        assert list(v.params) == ["W1", "W2"]
        exact = evaluate(ex.derivation, v.params, v.X, v.Y)
        assert list(v.worked.values["gW1"]) == [exact.results["gW1"][k] for k in sorted(exact.results["gW1"])]


def test_exam_heaviside_takes_relu_at_zero():
    assert (E._heaviside(0), E._heaviside(0, 1), E._heaviside(2, 0), E._heaviside(-1, 1)) == (0, 1, 1, 0)

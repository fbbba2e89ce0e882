"""The safe expression parser: text -> SymPy, built node by node, never evaluated.

Accepted expressions must give exactly the SymPy objects one builds by hand (numbers exact:
0.1 is 1/10); every construct outside the whitelist raises ExpressionError naming it; a
malicious string never runs (sentinel files), eval/exec are never reached, and the modules that
handle user text contain no call of eval, exec, compile, sympify or parse_expr.
"""
import ast
import builtins
import os
import subprocess
import sys
from pathlib import Path

import pytest
import sympy as sp

import symbp
from symbp import naming
from symbp.model import exprparse
from symbp.errors import ExpressionError
from symbp.model.exprparse import number, parse_expression
from symbp.model.functions import elementwise_functions

ROOT = Path(__file__).resolve().parents[1]
z = naming.Z
FUNCS = elementwise_functions()
VARS = {"z": z}


def parse(text):
    return parse_expression(text, VARS, FUNCS, where="test.toml", key="activations.f")


def sig(x):
    return 1 / (1 + sp.exp(-x))


ACCEPTED = [
    ("z", z),
    ("z * sigmoid(z)", z * sig(z)),
    ("z*sigmoid(z)", z / (1 + sp.exp(-z))),
    ("exp(-z) / (1 + exp(-z))**2", sp.exp(-z) / (1 + sp.exp(-z)) ** 2),
    ("log(1 + exp(z))", sp.log(1 + sp.exp(z))),
    ("tanh(z) + sinh(z) - cosh(z)", sp.tanh(z) + sp.sinh(z) - sp.cosh(z)),
    ("sin(z) * cos(z) + atan(z)", sp.sin(z) * sp.cos(z) + sp.atan(z)),
    ("sqrt(1 + z**2)", sp.sqrt(1 + z ** 2)),
    ("abs(z)", sp.Abs(z)),
    ("max(0, z)", sp.Max(0, z)),
    ("min(z, 1)", sp.Min(z, 1)),
    ("relu(z)", sp.Max(0, z)),
    ("softplus(z) - identity(z)", sp.log(1 + sp.exp(z)) - z),
    ("-z", -z),
    ("+z", z),
    ("--z", z),
    ("z - 1", z - 1),
    ("2**z", 2 ** z),
    ("z**-1", 1 / z),
    ("pi * z", sp.pi * z),
    ("E**z", sp.exp(z)),
    ("(z + 1) * (z - 1)", (z + 1) * (z - 1)),
    ("  z + 1  ", z + 1),
]


@pytest.mark.parametrize("text, expected", ACCEPTED, ids=[t for t, _ in ACCEPTED])
def test_accepted_expression_builds_the_sympy_object(text, expected):
    got = parse(text)
    assert got == expected, (got, expected)


@pytest.mark.parametrize("text, expected", [
    ("0.1 * z", sp.Rational(1, 10) * z),
    ("z / 3", sp.Rational(1, 3) * z),
    ("z * 1e-3", sp.Rational(1, 1000) * z),
    ("2.5 * z", sp.Rational(5, 2) * z),
    ("z ** 0.5", sp.sqrt(z)),
    ("0.3 + z", sp.Rational(3, 10) + z),
    ("1 / 7 + z", sp.Rational(1, 7) + z),
    ("12345678901234567890 * z", sp.Integer(12345678901234567890) * z),
])
def test_numbers_are_exact(text, expected):
    got = parse(text)
    assert got == expected
    assert not got.has(sp.Float)


@pytest.mark.parametrize("value, expected", [
    (0.1, sp.Rational(1, 10)), (0.3, sp.Rational(3, 10)), (1e-3, sp.Rational(1, 1000)),
    (2.0, sp.Integer(2)), (-0.25, sp.Rational(-1, 4)), (7, sp.Integer(7)), (0, sp.Integer(0)),
])
def test_number(value, expected):
    got = number(value)
    assert got == expected and isinstance(got, sp.Rational)


@pytest.mark.parametrize("value", [True, False, "0.1", None, float("nan"), float("inf"), -float("inf"),
                                   1j, [1]])
def test_number_rejects(value):
    with pytest.raises(ExpressionError) as info:
        number(value, "f.toml", "layer[1].slope")
    assert str(info.value).startswith("f.toml: layer[1].slope: ")


# (text, substring naming the construct): each is outside the whitelist.
REJECTED = [
    ("z.__class__", "attribute access"),
    ("z.real", "attribute access"),
    ("__import__('os').system('true')", "a call of something other than a plain function name"),
    ("__import__('os')", "'__import__'"),
    ("z + __builtins__", "the name '__builtins__'"),
    ("_hidden(z)", "'_hidden'"),
    ("lambda z: z", "a lambda"),
    ("(lambda q: q)(z)", "a call of something other than a plain function name"),
    ("[z for q in range(3)]", "a comprehension"),
    ("sigmoid([q for q in (z,)])", "a comprehension"),
    ("sum(q for q in (z,))", "unknown function 'sum'"),
    ("{q: q for q in (z,)}", "a comprehension"),
    ("{q for q in (z,)}", "a comprehension"),
    ("eval('z')", "unknown function 'eval'"),
    ("open('/etc/passwd')", "unknown function 'open'"),
    ("relu6(z)", "unknown function 'relu6'"),
    ("x * sigmoid(x)", "unknown name 'x'"),
    ("leaky_relu(z)", "unknown function 'leaky_relu'"),   # has a parameter: not a plain function
    ("softmax(z)", "unknown function 'softmax'"),          # a vector activation
    ("log(z, base=2)", "keyword or starred arguments"),
    ("exp(*[z])", "keyword or starred arguments"),
    ("z[0]", "subscripting"),
    ("(z, z)[0]", "subscripting"),
    ("'z'", "the constant 'z'"),
    ("sigmoid('z')", "the constant 'z'"),
    ("b'z'", "the constant b'z'"),
    ("z * True", "the constant True"),
    ("z * None", "the constant None"),
    ("z * 1j", "the constant 1j"),
    ("z > 0", "a comparison"),
    ("z == z", "a comparison"),
    ("z and 1", "a boolean operator"),
    ("not z", "the construct"),
    ("~z", "the construct"),
    ("z // 2", "the construct"),
    ("z % 2", "the construct"),
    ("z @ z", "the construct"),
    ("z << 1", "the construct"),
    ("(q := z)", "an assignment expression"),
    ("z if z else 0", "a conditional"),
    ("[z]", "the construct List"),
    ("(z, 1)", "the construct Tuple"),
    ("{'a': z}", "the construct Dict"),
    ("f'{z}'", "the construct JoinedStr"),
    ("...", "the constant Ellipsis"),
    ("sigmoid", "used without a call"),
    ("import os", "not a valid expression"),
    ("z = 1", "not a valid expression"),
    ("z +", "not a valid expression"),
    ("", "not a valid expression"),
    ("z; z", "not a valid expression"),
    ("-" * 200 + "z", "nesting deeper than"),
    ("+".join(["z"] * 1500), "longer than"),
    ("sigmoid(z, z)", "cannot build"),
    ("exp()", "cannot build"),
]


@pytest.mark.parametrize("text, what", REJECTED, ids=[t[:40] for t, _ in REJECTED])
def test_rejected_expression_names_the_construct(text, what):
    with pytest.raises(ExpressionError) as info:
        parse(text)
    msg = str(info.value)
    assert msg.startswith("test.toml: activations.f: "), msg
    assert what in msg, msg
    assert "\n" not in msg
    assert isinstance(info.value, symbp.SpecError)


def test_rejection_names_the_column():
    with pytest.raises(ExpressionError) as info:
        parse("z + z.real")
    assert "attribute access at column 5" in str(info.value)


def test_non_string_is_rejected():
    for value in (3, None, b"z", ["z"]):
        with pytest.raises(ExpressionError) as info:
            parse(value)
        assert "expected an expression string" in str(info.value)


def test_variables_and_functions_are_only_the_given_ones():
    y = sp.Symbol("y")
    assert parse_expression("y * 2", {"y": y}, {}) == 2 * y
    with pytest.raises(ExpressionError, match="unknown name 'z'"):
        parse_expression("z", {"y": y}, {})
    with pytest.raises(ExpressionError, match="unknown function 'exp'"):
        parse_expression("exp(y)", {"y": y}, {})


PAYLOADS = [
    "__import__('os').system('touch {s}')",
    "__import__('pathlib').Path('{s}').touch()",
    "open('{s}', 'w').write('x')",
    "exec(\"open('{s}', 'w')\")",
    "eval(\"open('{s}', 'w')\")",
    "(lambda: __import__('os').system('touch {s}'))()",
    "[__import__('os').system('touch {s}') for q in (1,)]",
    "().__class__.__bases__[0].__subclasses__()",
    "z.__class__.__init__.__globals__['__builtins__']['open']('{s}', 'w')",
    "sigmoid(z).func.__globals__",
    "(q := __import__('os').system('touch {s}'))",
    "__import__('os').system('touch {s}') if z else z",
]


@pytest.mark.parametrize("payload", PAYLOADS)
def test_malicious_string_never_runs(tmp_path, payload):
    sentinel = tmp_path / "pwned"
    text = payload.format(s=sentinel)
    with pytest.raises(ExpressionError):
        parse(text)
    with pytest.raises(symbp.SpecError):
        symbp.mlp([1, 2, 1], ["evil", "identity"], "mse", define={"evil": text})
    assert not sentinel.exists()


def test_parsing_never_reaches_eval_or_exec(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError(f"eval/exec called with {args!r}")

    monkeypatch.setattr(builtins, "eval", forbidden)
    monkeypatch.setattr(builtins, "exec", forbidden)
    import sympy.parsing.sympy_parser as sympy_parser
    monkeypatch.setattr(sympy_parser, "parse_expr", forbidden)
    for text, expected in ACCEPTED:
        assert parse(text) == expected
    net = symbp.mlp([1, 2, 1], ["swish", "identity"], "mse", define={"swish": "z * sigmoid(z)"})
    assert net.layers[0].activation.user


# the model stage reads spec text; the scalar circuits (derivation/circuit.py) read expressions
# typed by the user
USER_TEXT = sorted(f"model/{p.stem}" for p in (ROOT / "symbp" / "model").glob("*.py")) + ["derivation/circuit"]


@pytest.mark.parametrize("module", USER_TEXT)
def test_user_text_modules_never_evaluate_text(module):
    # Static guard: every module that reads user text contains no call that evaluates strings.
    source = (ROOT / "symbp" / f"{module}.py").read_text()
    banned = {"eval", "exec", "compile", "sympify", "parse_expr", "__import__"}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None
            assert name not in banned, f"symbp/{module}.py:{node.lineno} calls {name}"
            # sympy.S(x) sympifies strings too; only numeric literals are harmless.
            if name == "S":
                assert all(isinstance(x, ast.Constant) and isinstance(x.value, (int, float))
                           for x in node.args), f"symbp/{module}.py:{node.lineno} calls S on non-literals"
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = {a.name for a in node.names}
            assert not names & {"sympify", "parse_expr", "eval"}, f"symbp/{module}.py imports {names}"


def test_power_tower_is_rejected_quickly():
    # A spec must not be able to stall the tool. Run in a child process so a hang is bounded.
    code = ("import symbp, sys\n"
            "try:\n"
            "    symbp.mlp([1, 2, 1], ['big', 'identity'], 'mse', define={'big': 'z * 9**9**9'})\n"
            "except symbp.SpecError as e:\n"
            "    print(e); sys.exit(0)\n"
            "sys.exit(1)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                              timeout=15)
    except subprocess.TimeoutExpired:
        pytest.fail("parsing 'z * 9**9**9' did not finish within 15 s")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "activations.big" in proc.stdout


# (text, substring): bounded work. Each is refused at the step that would start the blow-up,
# naming the key, so that no text can stall the parser or put a huge literal into a kernel.
BOUNDED = [
    ("((((10**100)**100)**100)**100)*z", "a constant beyond 1e30"),
    ("1e308*1e308*z", "the constant 1e+308"),
    ("z + 1e-300", "the constant 1e-300"),
    ("z * 1e400", "the constant inf"),
    ("z * " + "9" * 400, "the constant 9999"),
    ("2**100 * z", "a constant beyond 1e30"),
    ("exp(100) * z", "a constant beyond 1e30"),
    ("exp(1000) * z", "a constant beyond 1e30"),
    ("exp(exp(exp(exp(5)))) * z", "a constant beyond 1e30"),
    ("(z**10)**20", "a power with exponent above 100"),
    ("(((((z+1)**100)**100)**100)**100)", "a power with exponent above 100"),
    ("*".join(["z"] * 101), "nesting deeper than"),
]


@pytest.mark.parametrize("text, what", BOUNDED, ids=[t[:40] for t, _ in BOUNDED])
def test_unbounded_work_is_refused_quickly(text, what):
    import time
    t0 = time.perf_counter()
    with pytest.raises(ExpressionError) as info:
        parse(text)
    assert time.perf_counter() - t0 < 1.0
    msg = str(info.value)
    assert msg.startswith("test.toml: activations.f: ") and what in msg, msg
    assert len(msg) < 300, msg       # the echo of the text is cut


@pytest.mark.parametrize("text, expected", [
    ("z * 1e30", sp.Integer(10) ** 30 * z),
    ("z * 1e-30", z / sp.Integer(10) ** 30),
    ("pi**50 * z", sp.pi ** 50 * z),
    ("exp(60) * z", sp.exp(60) * z),
    ("z**100", z ** 100),
    ("(z**10)**10", z ** 100),
])
def test_bounds_keep_reasonable_constants(text, expected):
    assert parse(text) == expected


def test_constant_tower_in_a_spec_is_rejected_quickly():
    # The parser once hung on this tower (it built 10**(10**8) digit by digit); a child process
    # bounds a regression to 15 s.
    code = ("import symbp, sys\n"
            "try:\n"
            "    symbp.mlp([1, 2, 1], ['big', 'identity'], 'mse',\n"
            "              define={'big': '((((10**100)**100)**100)**100)*z'})\n"
            "except symbp.SpecError as e:\n"
            "    print(e); sys.exit(0)\n"
            "sys.exit(1)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                              timeout=15)
    except subprocess.TimeoutExpired:
        pytest.fail("parsing '((((10**100)**100)**100)**100)*z' did not finish within 15 s")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "activations.big: a constant beyond 1e30" in proc.stdout

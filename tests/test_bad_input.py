"""Bad input: every mistake in a spec is one clear SpecError line, never anything else.

The corpus in tests/bad_specs/ holds TOML specs with exactly one mistake each; the first line of
each file is ``# expect: <substring>``, a substring the error message must contain (the key and
something of what was expected). Expression strings in the corpus try to run code; the sentinel
file /tmp/symbp_pwned must never appear. The same files go through the command line (exit
status 2, one stderr line, no traceback, nothing written) and bad calls of the Python builder
``symbp.mlp`` are checked the same way.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

import symbp

BAD_DIR = Path(__file__).parent / "bad_specs"
BAD_FILES = sorted(BAD_DIR.glob("*.toml"))
SENTINEL = Path("/tmp/symbp_pwned")
PREFIX = b"# expect: "

# Corpus files the package does not yet handle; each is a package bug (see the reasons).
KNOWN_BUGS = {}   # corpus files the package does not yet reject: none


def expected_substring(path):
    first = path.read_bytes().split(b"\n", 1)[0]
    assert first.startswith(PREFIX), f"{path.name}: first line must be '# expect: <substring>'"
    return first[len(PREFIX):].decode("ascii").strip()


def _cases():
    for p in BAD_FILES:
        marks = [pytest.mark.xfail(strict=True, reason=KNOWN_BUGS[p.name])] if p.name in KNOWN_BUGS else []
        yield pytest.param(p, id=p.name, marks=marks)


@pytest.fixture(scope="module", autouse=True)
def _no_stale_sentinel():
    # The sentinel is this suite's own marker file: a stale one would hide nothing but fail
    # every case, so start without it.
    if SENTINEL.exists():
        SENTINEL.unlink()
    yield


def test_corpus_is_large_and_well_formed():
    assert len(BAD_FILES) >= 35
    for p in BAD_FILES:
        assert expected_substring(p), p.name
    assert sorted(KNOWN_BUGS) == sorted(set(KNOWN_BUGS) & {p.name for p in BAD_FILES})


@pytest.mark.parametrize("path", list(_cases()))
def test_bad_spec_is_one_clear_spec_error(path):
    expect = expected_substring(path)
    try:
        net = symbp.load(path)
    except symbp.SpecError as e:
        msg = str(e)
    except Exception as e:  # anything but SpecError is a bug: the CLI would show a traceback
        pytest.fail(f"{path.name}: raised {type(e).__name__} instead of SpecError: {e}")
    else:
        pytest.fail(f"{path.name}: accepted, gave {net}")
    assert str(path) in msg, msg
    assert expect in msg, msg
    assert "\n" not in msg and "\r" not in msg, repr(msg)
    assert not SENTINEL.exists(), f"{path.name}: an expression string was executed"


def test_path_as_str_and_pathlib_both_named():
    path = BAD_DIR / "size_units_zero.toml"
    for arg in (path, str(path)):
        with pytest.raises(symbp.SpecError) as info:
            symbp.load(arg)
        assert str(info.value).startswith(str(path) + ": layer[1].units: ")


@pytest.mark.parametrize("where", ["missing.toml", "."])
def test_unreadable_path_is_a_spec_error(tmp_path, where):
    path = tmp_path / where
    with pytest.raises(symbp.SpecError) as info:
        symbp.load(path)
    msg = str(info.value)
    assert msg.startswith(str(path) + ": ") and "cannot read" in msg and "\n" not in msg


def test_loads_names_its_source():
    text = (BAD_DIR / "value_unknown_loss.toml").read_text()
    with pytest.raises(symbp.SpecError) as info:
        symbp.loads(text, where="inline spec")
    assert str(info.value).startswith("inline spec: loss.kind: unknown loss 'crossentropy'")
    with pytest.raises(symbp.SpecError) as info:
        symbp.loads(text)
    assert str(info.value).startswith("<string>: loss.kind: ")


def test_spec_error_carries_its_parts():
    with pytest.raises(symbp.SpecError) as info:
        symbp.load(BAD_DIR / "size_units_negative.toml")
    e = info.value
    assert e.where == str(BAD_DIR / "size_units_negative.toml")
    assert e.key == "layer[2].units"
    assert "-1" in e.detail
    assert isinstance(e, symbp.SymbpError) and isinstance(e, ValueError)


# --- the Python builder -------------------------------------------------------------------

GOOD = dict(sizes=[2, 3, 1], activations=["sigmoid", "sigmoid"], loss="bce")
BUILDER_CASES = {
    "sizes_string": (dict(sizes="2,3,1"), ("sizes", "list")),
    "sizes_int": (dict(sizes=3), ("sizes", "list")),
    "sizes_too_short": (dict(sizes=[2], activations=[]), ("sizes", "at least two")),
    "zero_width": (dict(sizes=[2, 0, 1]), ("sizes[1]", ">= 1", "got 0")),
    "negative_input": (dict(sizes=[-2, 3, 1]), ("sizes[0]", ">= 1")),
    "bool_width": (dict(sizes=[2, 3, True]), ("sizes[2]", "True")),
    "float_width": (dict(sizes=[2, 3.0, 1]), ("sizes[1]", "3.0")),
    "too_few_activations": (dict(activations=["sigmoid"]), ("activations", "expected 2", "got 1")),
    "too_many_activations": (dict(activations=["sigmoid"] * 3), ("activations", "expected 2", "got 3")),
    "activations_string": (dict(activations="sigmoid"), ("activations", "'sigmoid'")),
    "unknown_activation": (dict(activations=["sigmod", "sigmoid"]), ("activation", "'sigmod'")),
    "activation_none": (dict(activations=[None, "sigmoid"]), ("activation", "None")),
    "leaky_wrong_parameter": (dict(activations=[{"name": "leaky_relu", "alpha": 0.1}, "sigmoid"]),
                              ("alpha", "slope")),
    "leaky_slope_string": (dict(activations=[{"name": "leaky_relu", "slope": "0.1"}, "sigmoid"]),
                           ("slope", "number")),
    "unknown_loss": (dict(loss="hinge"), ("loss", "'hinge'")),
    "loss_not_fitting": (dict(sizes=[2, 3, 2], loss="ce"), ("loss", "softmax")),
    "bad_reduction": (dict(reduction="avg"), ("reduction", "'avg'")),
    "bad_name": (dict(name="../evil"), ("name", "'../evil'")),
    "keyword_name": (dict(name="class"), ("name", "'class'")),
    "define_not_dict": (dict(define=["z"]), ("define",)),
    "define_unsafe_expression": (dict(activations=["evil", "sigmoid"], define={"evil": "z.__class__"}),
                                 ("evil", "attribute access")),
    "define_import": (dict(activations=["evil", "sigmoid"],
                           define={"evil": "__import__('os').system('touch /tmp/symbp_pwned')"}),
                      ("evil", "not allowed")),
    "define_redefines_builtin": (dict(define={"tanh": "z"}), ("tanh", "built-in")),
    "softmax_one_unit": (dict(activations=["sigmoid", "softmax"], loss="ce"), ("units", "2 units")),
    "bias_string": (dict(bias="no"), ("bias", "true or false", "'no'")),
    "bias_list_too_short": (dict(bias=[False]), ("bias", "list of 2", "got 1")),
    "bias_list_item": (dict(bias=[False, 1]), ("bias[1]", "true or false")),
    "relu_at_zero_two": (dict(relu_at_zero=2), ("relu_at_zero", "0 or 1", "got 2")),
    "relu_at_zero_bool": (dict(relu_at_zero=True), ("relu_at_zero", "0 or 1", "True")),
    "allow_any_output_string": (dict(allow_any_output="yes"), ("allow_any_output", "true or false")),
    "bce_after_relu_not_asked": (dict(activations=["sigmoid", "relu"]), ("loss", "sigmoid", "allow_any_output")),
    "bce_after_softmax_even_allowed": (dict(sizes=[2, 3, 2], activations=["sigmoid", "softmax"],
                                            allow_any_output=True), ("bce does not fit a softmax",)),
    "name_trailing_newline": (dict(name="xor\n"), ("network.name", "'xor\\n'")),
    "width_huge": (dict(sizes=[2, 10 ** 9, 1]), ("sizes[1]", "<= 65536", "got 1000000000")),
    "width_2_70": (dict(sizes=[2 ** 70, 3, 1]), ("sizes[0]", "<= 65536")),
    "too_many_parameters": (dict(sizes=[65536, 65536, 1]), ("layer", "4295098369 weights and biases")),
    "too_many_layers": (dict(sizes=[2] * 1002, activations=["tanh"] * 1001, loss="mse"),
                        ("sizes", "1001 layers, more than the 1000")),
    "define_constant_tower": (dict(activations=["big", "sigmoid"],
                                   define={"big": "((((10**100)**100)**100)**100)*z"}),
                              ("activations.big", "a constant beyond 1e30")),
    "long_name_is_cut": (dict(name="a" * 1_000_000), ("network.name", "'aaaa", "...")),
}


@pytest.mark.parametrize("case", sorted(BUILDER_CASES))
def test_builder_bad_call(case):
    changes, expected = BUILDER_CASES[case]
    with pytest.raises(symbp.SpecError) as info:
        symbp.mlp(**{**GOOD, **changes})
    msg = str(info.value)
    assert msg.startswith("mlp(): "), msg
    assert "\n" not in msg
    for part in expected:
        assert part in msg, msg
    assert not SENTINEL.exists()


def test_builder_bad_call_is_short_and_quick():
    # a mistake is answered at once, and what the message echoes of the input is cut
    import time
    for case in sorted(BUILDER_CASES):
        changes, _ = BUILDER_CASES[case]
        t0 = time.perf_counter()
        with pytest.raises(symbp.SpecError) as info:
            symbp.mlp(**{**GOOD, **changes})
        assert time.perf_counter() - t0 < 1.0, case
        assert len(str(info.value)) <= 1000, case


def test_builder_good_call_is_accepted():
    # The baseline every bad call above differs from must itself be valid.
    assert symbp.mlp(**GOOD).sizes == (2, 3, 1)


# --- the command line ---------------------------------------------------------------------

CLI_FILES = ["type_units_string.toml", "expr_import_call.toml", "name_dotdot.toml",
             "encoding_latin1.toml", "fit_ce_without_softmax.toml", "toml_syntax.toml",
             "size_units_huge.toml", "size_units_2_70.toml", "name_trailing_newline.toml",
             "expr_power_tower_constant.toml", "expr_overflow_constant.toml",
             "key_activation_misspelled.toml"]


def _one_error_line(err, out, path):
    assert "Traceback" not in err and "Traceback" not in out
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].strip(), repr(err)
    assert str(path) in lines[0]
    assert expected_substring(path) in lines[0]


@pytest.mark.parametrize("name", CLI_FILES)
def test_cli_generate_rejects_in_process(tmp_path, capsys, name):
    from symbp.cli import commands as cli

    path = BAD_DIR / name
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    try:
        rc = cli.main(["generate", str(path), "--out", str(out_dir)])
    except SystemExit as e:  # main() should return its status; sys.exit is tolerated
        rc = e.code
    captured = capsys.readouterr()
    assert rc == 2
    _one_error_line(captured.err, captured.out, path)
    assert list(out_dir.iterdir()) == [], "files were written for a bad spec"
    assert not SENTINEL.exists()


@pytest.mark.parametrize("command", ["check", "generate", "derive"])
def test_cli_subprocess_rejects(tmp_path, command):
    # A fresh process in an empty working directory: exit status 2, one line, nothing created
    # (no generated/ folder appears in the working directory).
    path = BAD_DIR / "expr_import_call.toml"
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-m", "symbp.cli", command, str(path)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2, proc.stderr
    _one_error_line(proc.stderr, proc.stdout, path)
    assert list(tmp_path.iterdir()) == []
    assert not SENTINEL.exists()


# --- generated inputs: too large or too deep for a corpus file ----------------------------

XOR_TEXT = (Path(__file__).parents[1] / "examples" / "specs" / "xor.toml").read_text()
GRAPH_TEXT = (Path(__file__).parents[1] / "examples" / "specs" / "graphs" / "residual.toml").read_text()


def _layers(n):
    return "".join(f'[[layer]]\nunits = 2\nactivation = "tanh"\n' for _ in range(n))


def _mlp_text(name='"big"', inputs="2", layers=_layers(1), extra=""):
    return f'[network]\nname = {name}\ninputs = {inputs}\n{layers}[loss]\nkind = "mse"\n{extra}'


GENERATED = {
    # RecursionError inside tomllib
    "toml_nested_20000": ("x = " + "[" * 20000 + "]" * 20000 + "\n" + XOR_TEXT, "nested too deeply"),
    "toml_nested_tables_20000": ("x = " + "{a = " * 20000 + "1" + "}" * 20000 + "\n", "nested too deeply"),
    "layers_1001": (_mlp_text(layers=_layers(1001)), "layer: 1001 layers, more than the 1000"),
    "name_1mb": (_mlp_text(name='"' + "a" * 1_000_000 + '"'), "network.name: expected a name"),
    "key_1mb": (_mlp_text(extra="b" * 1_000_000 + " = 1\n"), "unknown key"),
    "expression_1mb": (_mlp_text(extra='[activations]\nf = "' + "z+" * 500_000 + 'z"\n'),
                       "activations.f: expression longer than 2000"),
}


@pytest.mark.parametrize("case", sorted(GENERATED))
def test_generated_bad_spec_is_one_short_error_at_once(tmp_path, capsys, case):
    import time
    text, expect = GENERATED[case]
    path = tmp_path / "spec.toml"
    path.write_text(text)
    t0 = time.perf_counter()
    with pytest.raises(symbp.SpecError) as info:
        symbp.load(path)
    assert time.perf_counter() - t0 < 1.0
    msg = str(info.value)
    assert msg.startswith(f"{path}: ") and expect in msg and "\n" not in msg, msg[:300]
    assert len(msg) <= 1000, len(msg)
    # the command line: one short line, exit 2, nothing written
    from symbp.cli import commands as cli
    out = tmp_path / "out"
    out.mkdir()
    assert cli.main(["generate", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expect in err and len(err) <= 1100
    assert list(out.iterdir()) == []


GENERATED_GRAPHS = {
    "toml_nested_20000": ("x = " + "[" * 20000 + "]" * 20000 + "\n" + GRAPH_TEXT, "nested too deeply"),
    "nodes_1001": ('[graph]\nname = "big"\n' + "".join(
        f'[[node]]\nname = "x{i}"\nkind = "input"\nwidth = 1\n' for i in range(1001)), "node: 1001 nodes, more than the 1000"),
    "name_1mb": ('[graph]\nname = "' + "g" * 1_000_000 + '"\n' + GRAPH_TEXT.split("[graph]")[1].split("\n", 2)[2],
                 "graph.name: expected a graph name"),
}


@pytest.mark.parametrize("case", sorted(GENERATED_GRAPHS))
def test_generated_bad_graph_is_one_short_error_at_once(tmp_path, case):
    import time
    text, expect = GENERATED_GRAPHS[case]
    path = tmp_path / "graph.toml"
    path.write_text(text)
    t0 = time.perf_counter()
    with pytest.raises(symbp.SpecError) as info:
        symbp.load_graph(path)
    assert time.perf_counter() - t0 < 1.0
    msg = str(info.value)
    assert msg.startswith(f"{path}: ") and expect in msg and "\n" not in msg, msg[:300]
    assert len(msg) <= 1000, len(msg)


def test_graph_with_1000_nodes_in_a_chain_is_validated_at_once():
    # the largest graph accepted: a chain as long as MAX_NODES, declared loss first, so that a
    # depth-first cycle search walks all of it at once (no RecursionError)
    from symbp.model.graph import build_graph
    g = symbp.graph("chain")
    prev = g.input("x", 2)
    for i in range(996):
        prev = g.activation(f"h{i}", prev, "tanh")
    g.loss("loss", g.dense("out", prev, 2), g.input("t", 2), "mse")
    import time
    t0 = time.perf_counter()
    built = build_graph("chain", list(reversed(g.tables)))
    assert time.perf_counter() - t0 < 1.0
    assert len(built.nodes) == 1000 and built.nodes[0].name == "t"


@pytest.mark.parametrize("reader, text", [(symbp.load, XOR_TEXT), (symbp.load_graph, GRAPH_TEXT)],
                         ids=["mlp", "graph"])
def test_byte_order_mark_is_accepted(tmp_path, reader, text):
    # editors on Windows write UTF-8 with a byte-order mark: the spec is the same spec
    plain, bom = tmp_path / "plain.toml", tmp_path / "bom.toml"
    plain.write_bytes(text.encode("utf-8"))
    bom.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    assert reader(bom).digest == reader(plain).digest

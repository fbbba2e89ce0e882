"""Graph specs: the Python builder and TOML give equal graphs; MLPs become graphs; every mistake
is one clear SpecError line naming the nodes involved.

The corpus tests/bad_graphs/*.toml holds graph specs with one mistake each; the first line is
``# expect: <substring>`` that the error must contain (after the file name). Expression strings
in the corpus try to run code; the sentinel /tmp/symbp_pwned must never appear. The CLI
rejects the same files with exit status 2, one stderr line and nothing written.
"""
from pathlib import Path

import pytest

import symbp
from symbp.errors import SpecError
from symbp.model.graph import Graph, build_graph, from_network, graph, load_graph, loads_graph

ROOT = Path(__file__).resolve().parent.parent
BAD_DIR = Path(__file__).parent / "bad_graphs"
BAD_FILES = sorted(BAD_DIR.glob("*.toml"))
SPECS = sorted((ROOT / "examples" / "specs" / "graphs").glob("*.toml"))
SENTINEL = Path("/tmp/symbp_pwned")
PREFIX = b"# expect: "


def expected_substring(path):
    first = path.read_bytes().split(b"\n", 1)[0]
    assert first.startswith(PREFIX), f"{path.name}: first line must be '# expect: <substring>'"
    return first[len(PREFIX):].decode("ascii").strip()


def residual_builder():
    g = graph("residual")
    x = g.input("x", 2)
    h = g.dense("h", x, 8, weight="W_in", bias="b_in")
    a = g.activation("a", h, "tanh")
    f1a = g.activation("f1a", g.dense("f1", a, 8, weight="W_f1", bias="b_f1"), "tanh")
    f2 = g.dense("f2", f1a, 8, weight="W_f2", bias="b_f2")
    r = g.add("r", a, f2)
    out = g.dense("out", r, 1, weight="W_out", bias="b_out")
    g.loss("loss", out, g.input("target", 1), "mse", reduction="mean")
    return g


# --- good specs -------------------------------------------------------------------------------

def test_builder_and_toml_give_equal_graphs():
    built = residual_builder().build()
    loaded = load_graph(ROOT / "examples" / "specs" / "graphs" / "residual.toml")
    assert built == loaded
    assert built.digest == loaded.digest


@pytest.mark.parametrize("spec", SPECS, ids=[s.stem for s in SPECS])
def test_example_specs_load(spec):
    g = load_graph(spec)
    assert isinstance(g, Graph) and g.loss_node.kind == "loss"
    names = [n.name for n in g.nodes]
    for n in g.nodes:     # topological order: every input comes earlier
        assert all(names.index(i) < names.index(n.name) for i in n.inputs)


def test_structure_of_the_tied_autoencoder():
    g = load_graph(ROOT / "examples" / "specs" / "graphs" / "autoencoder.toml")
    assert g.param_shapes() == {"W": (3, 6), "b_enc": (3,), "b_dec": (6,)}
    assert g.param("W").uses == (("enc", False), ("dec", True))
    assert [n.name for n in g.inputs] == ["x"] and g.target == "x_target" and g.output == "dec"
    assert g.requires_grad() == {"enc", "code", "dec"}


def test_consumers_list_branches():
    g = load_graph(ROOT / "examples" / "specs" / "graphs" / "residual.toml")
    assert g.consumers("a") == (("f1", 0), ("r", 0))
    assert g.consumers("target") == (("loss", "target"),)


def test_defaults_and_no_bias():
    g = graph("d")
    g.input("x", 3)
    g.dense("h", "x", 2)
    g.dense("out", "h", 1, bias=False)
    g.input("t", 1)
    g.loss("loss", "out", "t", "sse", reduction="sum")
    G = g.build()
    assert G.param_shapes() == {"W_h": (2, 3), "b_h": (2,), "W_out": (1, 2)}
    assert G.node("out").bias is None and G.reduction == "sum"


def test_concat_width_and_declared_units():
    g = graph("c")
    g.input("x", 2)
    g.input("y", 3)
    g.concat("c", "x", "y", units=5)
    g.dense("out", "c", 1)
    g.input("t", 1)
    g.loss("loss", "out", "t", "mse")
    assert g.build().node("c").width == 5


def test_expression_node_and_user_activation():
    g = load_graph(ROOT / "examples" / "specs" / "graphs" / "gated.toml")
    y = g.node("y")
    h, gg = y.symbol("h"), y.symbol("g")
    assert y.expression == h / (1 + symbp.model.functions.sp.exp(-gg))
    assert g.node("s").activation.user and g.node("s").activation.name == "swish"
    assert [n.name for n in g.grad_inputs] == ["x"]


def test_activation_parameters_in_the_node():
    text = (ROOT / "examples" / "specs" / "graphs" / "residual.toml").read_text()
    text = text.replace('activation = "tanh"\n', 'activation = "leaky_relu"\nslope = 0.2\n', 1)
    g = loads_graph(text, "inline")
    assert dict(g.node("a").activation.values) == {"slope": symbp.model.functions.sp.Rational(1, 5)}


@pytest.mark.parametrize("sizes,acts,loss", [([2, 3, 1], ["sigmoid", "sigmoid"], "bce"),
                                             ([3, 4, 2], ["relu", "softmax"], "ce"),
                                             ([2, 2], ["identity"], "mse")])
def test_from_network(sizes, acts, loss):
    net = symbp.mlp(sizes, acts, loss, name="m")
    g = from_network(net, input_grad=True)
    assert g.param_shapes() == net.param_shapes()
    assert [n.kind for n in g.nodes] == ["input"] + ["dense", "activation"] * (len(sizes) - 1) + ["input", "loss"]
    assert [n.activation for n in g.nodes if n.kind == "activation"] == [l.activation for l in net.layers]
    assert g.grad_inputs[0].name == "x" and g.loss_node.loss is net.loss


def test_from_network_without_bias_and_the_options():
    g = from_network(symbp.mlp([2, 3, 1], ["tanh", "sigmoid"], "bce", name="m", bias=[False, True]))
    assert g.param_shapes() == {"W1": (3, 2), "W2": (1, 3), "b2": (1,)}
    assert (g.relu_at_zero, g.allow_any_output) == (0, False)
    # the options at their defaults leave the digest as it was; set, they enter it
    assert "relu_at_zero" not in g.canonical() and "allow_any_output" not in g.canonical()
    g1 = from_network(symbp.mlp([2, 3, 1], ["relu", "identity"], "mse", name="m", relu_at_zero=1))
    assert g1.relu_at_zero == 1 and g1.canonical()["relu_at_zero"] == 1
    assert g1.digest != from_network(symbp.mlp([2, 3, 1], ["relu", "identity"], "mse", name="m")).digest
    with pytest.warns(symbp.OutputRangeWarning):
        toy = symbp.mlp([2, 1], ["relu"], "bce", name="toy", allow_any_output=True)
    gt = from_network(toy)
    assert gt.allow_any_output and gt.canonical()["allow_any_output"] is True
    assert toy.graph == from_network(toy, input_grad=True)


def test_graph_options_in_the_builder():
    def build(**kw):
        g = graph("toy", **kw)
        g.loss("loss", g.activation("a", g.dense("d", g.input("x", 2), 1), "relu"), g.input("t", 1), "bce")
        return g.build()
    with pytest.raises(SpecError, match="node.loss.loss: loss 'bce' needs a sigmoid activation"):
        build()
    assert build(allow_any_output=True).allow_any_output
    with pytest.raises(SpecError, match="graph.relu_at_zero: expected 0 or 1"):
        build(allow_any_output=True, relu_at_zero=2)
    assert "relu'(0)=1" in str(build(allow_any_output=True, relu_at_zero=1))


def test_graph_options_in_toml():
    text = (ROOT / "examples" / "specs" / "graphs" / "residual.toml").read_text()
    plain = loads_graph(text, "inline")
    g = loads_graph(text.replace("[graph]\n", "[graph]\nrelu_at_zero = 1\n", 1), "inline")
    assert (g.relu_at_zero, g.allow_any_output) == (1, False) and g.digest != plain.digest
    with pytest.raises(SpecError, match="inline: graph.relu_at_zero: expected 0 or 1"):
        loads_graph(text.replace("[graph]\n", "[graph]\nrelu_at_zero = 2\n", 1), "inline")
    with pytest.raises(SpecError, match="inline: graph.allow_any_output: expected true or false"):
        loads_graph(text.replace("[graph]\n", "[graph]\nallow_any_output = 1\n", 1), "inline")


# --- bad specs --------------------------------------------------------------------------------

@pytest.fixture(scope="module", autouse=True)
def _no_stale_sentinel():
    if SENTINEL.exists():
        SENTINEL.unlink()
    yield


def test_corpus_is_large_and_well_formed():
    assert len(BAD_FILES) >= 50
    for p in BAD_FILES:
        assert expected_substring(p), p.name


@pytest.mark.parametrize("path", BAD_FILES, ids=[p.name for p in BAD_FILES])
def test_bad_graph_is_one_clear_spec_error(path):
    expect = expected_substring(path)
    try:
        g = load_graph(path)
    except SpecError as e:
        msg = str(e)
    except Exception as e:   # anything but SpecError is a bug: the CLI would show a traceback
        pytest.fail(f"{path.name}: raised {type(e).__name__} instead of SpecError: {e}")
    else:
        pytest.fail(f"{path.name}: accepted, gave {g}")
    assert msg.startswith(str(path) + ": "), msg
    assert expect in msg, msg
    assert "\n" not in msg and "\r" not in msg, repr(msg)
    assert not SENTINEL.exists(), f"{path.name}: an expression string was executed"


GOOD = [dict(name="x", kind="input", width=2), dict(name="out", kind="dense", input="x", units=1),
        dict(name="t", kind="input", width=1), dict(name="loss", kind="loss", input="out", target="t", loss="mse")]

BUILDER_CASES = {
    "nodes_not_list": (dict(nodes="x"), ("node", "array")),
    "nodes_empty": (dict(nodes=[]), ("node", "at least one")),
    "node_not_table": (dict(nodes=[3]), ("node[1]", "table")),
    "name_missing": (dict(nodes=[dict(kind="input", width=2)] + GOOD), ("node[1].name", "missing")),
    "name_not_string": (dict(nodes=[dict(name=3, kind="input", width=2)] + GOOD), ("node[1].name", "3")),
    "graph_name_keyword": (dict(name="class"), ("graph.name", "'class'")),
    "activations_not_dict": (dict(activations=["z"]), ("activations",)),
    "activation_expression_not_str": (dict(activations={"sq": 2}), ("activations.sq", "expression")),
    "kind_list": (dict(nodes=[dict(name="x", kind=["input"], width=2)] + GOOD[1:]), ("node.x.kind", "unknown node kind")),
}


@pytest.mark.parametrize("case", sorted(BUILDER_CASES))
def test_build_graph_bad_call(case):
    changes, expected = BUILDER_CASES[case]
    args = {"name": "g", "nodes": GOOD, "activations": None, **changes}
    with pytest.raises(SpecError) as info:
        build_graph(args["name"], args["nodes"], args["activations"], where="graph()")
    msg = str(info.value)
    assert msg.startswith("graph(): ") and "\n" not in msg, msg
    for part in expected:
        assert part in msg, msg


def test_build_graph_good_call_is_accepted():
    # the baseline every bad call above differs from
    assert build_graph("g", GOOD).param_shapes() == {"W_out": (1, 2), "b_out": (1,)}


def test_builder_cycle_names_its_nodes():
    g = graph("cyc")
    g.input("x", 2)
    g.add("a", "x", "c")
    g.activation("b", "a", "tanh")
    g.dense("c", "b", 2)
    g.input("t", 2)
    g.loss("loss", "c", "t", "mse")
    with pytest.raises(SpecError, match=r"^graph\(\): node\.a: cycle a -> b -> c -> a "):
        g.build()


def test_builder_expression_is_not_evaluated():
    g = graph("evil")
    g.input("x", 2)
    g.expression("e", "__import__('os').system('touch /tmp/symbp_pwned')", ["x"])
    g.dense("out", "e", 2)
    g.input("t", 2)
    g.loss("loss", "out", "t", "mse")
    with pytest.raises(SpecError, match="node.e.expression"):
        g.build()
    assert not SENTINEL.exists()


@pytest.mark.parametrize("where", ["missing.toml", "."])
def test_unreadable_path_is_a_spec_error(tmp_path, where):
    path = tmp_path / where
    with pytest.raises(SpecError) as info:
        load_graph(path)
    assert str(info.value).startswith(str(path) + ": ") and "cannot read" in str(info.value)


# --- the command line -------------------------------------------------------------------------

def run_cli(argv):
    """symbp.cli.commands.main(argv), its exit status even where it calls sys.exit."""
    from symbp.cli import commands as cli
    try:
        return cli.main(argv)
    except SystemExit as e:   # main() should return its status; sys.exit is tolerated
        return e.code


CLI_FILES = ["cycle_three.toml", "expr_import.toml", "shape_add.toml", "shared_incompatible.toml",
             "dead_node.toml", "edge_unknown_input.toml", "encoding_latin1.toml",
             "size_width_huge.toml", "name_node_trailing_newline.toml", "key_unknown_top.toml",
             "expr_huge_constant.toml"]


# `symbp graph COMMAND` is the same command as `symbp COMMAND` (which detects a graph spec)
@pytest.mark.parametrize("command", ["derive", "generate", "check", "graph derive", "graph generate", "graph check"])
@pytest.mark.parametrize("name", CLI_FILES)
def test_cli_rejects_in_process(tmp_path, capsys, command, name):
    path = BAD_DIR / name
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    extra = ["--latex", str(out_dir / "x.tex")] if command.endswith("derive") else ["--out", str(out_dir), "--no-jit"]
    rc = run_cli(command.split() + [str(path)] + extra)
    captured = capsys.readouterr()
    assert rc == 2
    lines = captured.err.splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and expected_substring(path) in lines[0], captured.err
    assert "Traceback" not in captured.err + captured.out
    assert list(out_dir.iterdir()) == [], "files were written for a bad spec"
    assert not SENTINEL.exists()

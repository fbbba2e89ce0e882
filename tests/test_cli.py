"""The command line through its public entry point (symbp.cli.commands.main and the `symbp` script)."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import symbp
from symbp.cli.commands import build_parser, main
from symbp.derivation.simplify import PASSES

ROOT = Path(__file__).resolve().parent.parent
XOR = str(ROOT / "examples" / "specs" / "xor.toml")
RESIDUAL = str(ROOT / "examples" / "specs" / "graphs" / "residual.toml")


def test_derive_prints_the_equations(capsys):
    assert main(["derive", XOR]) == 0
    out = capsys.readouterr().out
    assert "delta2 = (a2 - y)/B" in out
    assert "delta1 = a1*ga1*(1 - a1)" in out
    assert "gW1 = sum_s delta1 a0^T" in out


def test_derive_dump_shows_every_pass_in_order(capsys):
    assert main(["derive", XOR, "--dump"]) == 0
    out = capsys.readouterr().out
    # the output delta of sigmoid + bce: derived, collapsed, then cancelled to a - y
    lines = [l for l in out.splitlines() if l.strip().startswith("delta2[s, j] [")]
    stages = [l.split("[", 2)[2].split("]")[0] for l in lines]
    order = [p.name for p in PASSES]
    assert stages[0] == "derived" and stages[-1] in order
    assert [order.index(s) for s in stages[1:]] == sorted(order.index(s) for s in stages[1:])
    assert lines[-1].endswith("(a2[s, j] - y[s, j])/B")
    assert "f'(z) [forward_outputs]: a*(1 - a)" in out


def test_derive_latex_writes_a_document(tmp_path, capsys):
    tex = tmp_path / "xor.tex"
    assert main(["derive", XOR, "--latex", str(tex)]) == 0
    text = tex.read_text()
    assert text.startswith("\\documentclass") and text.rstrip().endswith("\\end{document}")
    assert r"\delta^{[2]} = \frac{a^{[2]} - y}{B}" in text


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex not installed")
def test_derive_latex_compiles(tmp_path):
    tex = tmp_path / "xor.tex"
    assert main(["derive", XOR, "--latex", str(tex)]) == 0
    run = subprocess.run(["pdflatex", "-halt-on-error", "-interaction=nonstopmode", tex.name],
                         cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-2000:]


def test_generate_and_check_without_jit(tmp_path, capsys):
    assert main(["generate", XOR, "--out", str(tmp_path), "--no-jit"]) == 0
    assert (tmp_path / "xor" / "cpu_float64.py").exists()
    assert main(["check", XOR, "--out", str(tmp_path), "--no-jit"]) == 0
    out = capsys.readouterr().out
    assert "W1" in out and "max error" in out


@pytest.mark.parametrize("argv,message", [
    (["derive", "no/such/file.toml"], "cannot read the spec file"),
    (["generate", XOR, "--dtype", "float16", "--no-jit"], "argument --dtype: invalid choice: 'float16'"),
    (["derive", XOR, "--latex", "x.tex", "--notation", "klingon"],
     "argument --notation: invalid choice: 'klingon'"),
])
def test_user_errors_are_one_line_and_exit_2(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    assert main(argv + (["--out", str(tmp_path / "gen")] if argv[0] == "generate" else [])) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("symbp: error: ") and message in err
    assert "Traceback" not in err
    assert not (tmp_path / "gen").exists() and not (tmp_path / "x.tex").exists()


@pytest.mark.jit
def test_demo_runs_end_to_end(tmp_path):
    """The README's main command: the console script, on a fresh output directory."""
    exe = shutil.which("symbp")
    cmd = [exe, "demo", "--out", str(tmp_path)] if exe else [sys.executable, "-m", "symbp", "demo", "--out", str(tmp_path)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    out = run.stdout
    assert "sigmoid'(z) = exp(-z)/(1 + exp(-z))**2  ->  a*(1 - a)" in out
    assert "delta2 = (a2 - y)/B" in out
    assert "4/4 points classified right." in out
    assert (tmp_path / "xor" / "cpu_float64.py").read_bytes() == (ROOT / "generated" / "xor" / "cpu_float64.py").read_bytes()


def test_toy_spec_with_the_new_keys_derives_generates_and_warns_in_one_line(tmp_path, capsys):
    """relu_at_zero, bias = false and allow_any_output from a spec file through the command line:
    the OutputRangeWarning is one 'symbp: warning:' line, and the kernel compiles (its warm-up
    point, a = 0, is outside the loss's domain)."""
    spec = tmp_path / "toy.toml"
    spec.write_text('[network]\nname = "toy"\ninputs = 2\nrelu_at_zero = 1\n'
                    '[[layer]]\nunits = 1\nactivation = "relu"\nbias = false\n'
                    '[loss]\nkind = "bce"\nallow_any_output = true\n')
    assert main(["derive", str(spec)]) == 0
    out, err = capsys.readouterr()
    assert "z1 = W1 a0\n" in out and "Heaviside(z1, 1)" in out
    assert err.splitlines() == [f"symbp: warning: {spec}: loss.allow_any_output: loss 'bce' after a 'relu' "
                                "output: outputs may leave (0, 1), where the loss is undefined (the log "
                                "of a non-positive number)"]
    assert main(["generate", str(spec), "--out", str(tmp_path / "gen"), "--no-jit"]) == 0
    assert (tmp_path / "gen" / "toy" / "cpu_float64.py").exists()


# --- argparse's own errors, numeric options, --version, --help --------------------------------

@pytest.mark.parametrize("argv,message", [
    ([], "the following arguments are required: COMMAND"),
    (["frobnicate"], "argument COMMAND: invalid choice: 'frobnicate'"),
    (["derive"], "symbp derive: the following arguments are required: spec"),
    (["generate", XOR, "--bogus"], "unrecognized arguments: --bogus"),
    (["generate", XOR, "--target", "tpu"], "argument --target: invalid choice: 'tpu'"),
    (["check", XOR, "--dtype", "float16"], "argument --dtype: invalid choice: 'float16'"),
    (["demo", "--epochs", "-5"], "argument --epochs: expected a value >= 1, got '-5'"),
    (["demo", "--epochs", "0"], "argument --epochs: expected a value >= 1"),
    (["demo", "--epochs", "ten"], "argument --epochs: expected an integer, got 'ten'"),
    (["demo", "--lr", "0"], "argument --lr: expected a number > 0"),
    (["demo", "--lr", "nan"], "argument --lr: expected a finite number"),
    (["demo", "--lr", "inf"], "argument --lr: expected a finite number"),
    (["demo", "--seed", "-1"], "argument --seed: expected a value >= 0"),
    (["check", XOR, "--batch", "0"], "argument --batch: expected a value >= 1"),
    (["check", XOR, "--batch", "1000000000000"], "argument --batch: expected a value <= 100000"),
    (["check", XOR, "--tol", "-0.001"], "--tol: expected a relative tolerance in (0, 1)"),
    (["graph", "check", RESIDUAL, "--batch", "-2"], "argument --batch: expected a value >= 1"),
    (["graph", "generate", RESIDUAL, "--target", "cuda"], "node 'r' is an add node: use target='cpu'"),
    (["check", XOR, "--target", "cuda"], "argument --target: invalid choice: 'cuda'"),
    (["graph", "frobnicate"], "argument COMMAND: invalid choice"),
])
def test_argument_errors_are_one_line_and_exit_2(tmp_path, capsys, monkeypatch, argv, message):
    # argparse prints usage + message (three lines) and exits itself; symbp's parser prints the
    # one line every symbp error is, main() returns 2, and nothing is written.
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and captured.err.startswith("symbp: error: "), captured.err
    assert message in captured.err, captured.err
    assert list(tmp_path.iterdir()) == []


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"symbp {symbp.__version__}"


@pytest.mark.parametrize("argv,choices", [
    (["generate", "--help"], ["--target {cpu,cuda}", "--dtype {float64,float32}"]),
    (["check", "--help"], ["--dtype {float64,float32}"]),
    (["derive", "--help"], ["--notation {cs231n,udl,transposed,rowvector,batch}"]),
    (["check", "--help"], ["--target {cpu}"]),
    (["graph", "generate", "--help"], ["--target {cpu,cuda}", "--dtype {float64,float32}"]),
])
def test_help_lists_the_choices(capsys, argv, choices):
    assert main(argv) == 0
    out = " ".join(capsys.readouterr().out.split())    # argparse wraps lines
    for c in choices:
        assert c in out, out


def test_bench_seconds_option():
    # `bench --target` meant seconds while `generate --target` is a device: the option is
    # --seconds; the old spelling still parses, but help shows only the new one.
    ap = build_parser()
    assert ap.parse_args(["bench", "--seconds", "0.5"]).seconds == 0.5
    assert ap.parse_args(["bench", "--target", "0.25"]).seconds == 0.25
    assert ap.parse_args(["bench"]).seconds is None


def test_bench_help_names_seconds_not_target(capsys):
    assert main(["bench", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--seconds" in out and "--target" not in out


# --- one command set: the spec's kind is detected from the file -----------------------------

@pytest.mark.parametrize("prefix", [[], ["graph"]], ids=["symbp", "symbp_graph"])
@pytest.mark.parametrize("spec", [XOR, RESIDUAL], ids=["mlp", "graph"])
def test_derive_detects_the_kind_of_spec(capsys, prefix, spec):
    # `symbp graph derive` is the same command under its old name: it takes an MLP spec too
    assert main(prefix + ["derive", spec]) == 0
    out = capsys.readouterr().out
    if spec == RESIDUAL:
        assert out.startswith("# residual: x[2]") and "h = W_in x + b_in   [forward_dense]" in out
    else:
        assert out.startswith("# xor: 2-3-1") and "delta2 = (a2 - y)/B\n" in out


def test_generate_and_check_detect_a_graph_spec(tmp_path, capsys):
    assert main(["generate", RESIDUAL, "--out", str(tmp_path), "--no-jit"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "residual" / "graph_cpu_float64.py")
    assert main(["check", RESIDUAL, "--out", str(tmp_path), "--no-jit"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# residual: ") and "gradcheck residual (float64): ok" in out and "W_in" in out


@pytest.mark.parametrize("prefix", [[], ["graph"]], ids=["symbp", "symbp_graph"])
@pytest.mark.parametrize("text,message", [
    # tables of both kinds: the reader of the kind with more of them names the stray table
    ('[graph]\nname = "g"\n[[node]]\nname = "x"\n[[layer]]\nunits = 1\n',
     "layer: unknown key (expected one of: graph, node, activations)"),
    ('[network]\nname = "n"\n[[layer]]\nunits = 1\n[[node]]\nname = "x"\n', "node: unknown key"),
])
def test_a_spec_with_tables_of_both_kinds_names_the_stray_one(tmp_path, capsys, prefix, text, message):
    spec = tmp_path / "mixed.toml"
    spec.write_text(text)
    assert main(prefix + ["derive", str(spec)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{spec}: {message}" in err, err


@pytest.mark.parametrize("prefix,message", [([], "network: missing table [network]"),
                                            (["graph"], "graph: missing table [graph]")])
def test_a_spec_of_no_kind_goes_to_the_reader_of_the_command(tmp_path, capsys, prefix, message):
    spec = tmp_path / "empty.toml"
    spec.write_text("# nothing yet\n")
    assert main(prefix + ["derive", str(spec)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{spec}: {message}" in err, err


@pytest.mark.parametrize("argv,message", [
    # the CUDA target serves chain graphs; a residual graph is refused at its add node
    (["generate", RESIDUAL, "--target", "cuda", "--out", "gen", "--no-jit"],
     "the CUDA target serves chain graphs (input -> dense -> activation -> ... -> loss) only; "
     "node 'r' is an add node: use target='cpu'"),
    (["graph", "generate", RESIDUAL, "--target", "cuda"], "node 'r' is an add node"),
    (["derive", RESIDUAL, "--latex", "x.tex", "--stages"],
     f"symbp: error: --stages: {RESIDUAL} is a graph spec, which has no simplification stages in its "
     "handout yet; drop --stages (--dump prints every stage) or use an MLP spec\n"),
    (["derive", RESIDUAL, "--stages"], "--stages: "),
])
def test_an_option_the_kind_of_spec_lacks_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and message in captured.err, captured.err
    assert list(tmp_path.iterdir()) == []


# --- a reader that closes the pipe early --------------------------------------------------------

@pytest.mark.parametrize("argv", [["derive", XOR, "--dump"], ["check", XOR, "--no-jit"],
                                  ["graph", "derive", RESIDUAL], ["--help"]])
def test_closed_pipe_ends_quietly(tmp_path, argv):
    # `symbp derive SPEC | head -1`, made deterministic: the reading end is closed before the
    # command writes anything, so its first write fails with EPIPE. No traceback, nothing on
    # stderr, the exit status a SIGPIPE-killed process has.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    extra = ["--out", str(tmp_path / "gen")] if argv[0] == "check" else []
    proc = subprocess.Popen([sys.executable, "-m", "symbp.cli", *argv, *extra], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    # (--help: argparse itself ignores a failed write of the help text, and exits 0)
    assert proc.wait(timeout=300) == (0 if argv == ["--help"] else 141), err
    assert err == "", err


# --- the README's command list is the parser's ----------------------------------------------

def _readme_section(title):
    text = (ROOT / "README.md").read_text()
    return text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def _commands(parser, prefix=("symbp",)):
    """(words, options) of every leaf command: ("symbp", "graph", "check"), ["--target", ...]."""
    import argparse
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        opts = [s for a in parser._actions if a.help != argparse.SUPPRESS
                for s in a.option_strings if s.startswith("--") and s != "--help"]
        yield prefix, opts
        return
    for name, sub in subs[0].choices.items():
        yield from _commands(sub, prefix + (name,))


def test_readme_lists_every_command_and_option():
    block = _readme_section("Command line").split("```")[1]
    # a command's entry: from its first line to the next line starting with "symbp "
    entries = {}
    for chunk in ("\n" + block).split("\nsymbp ")[1:]:
        words = chunk.split()
        entries.setdefault(words[0], []).append(chunk)
    leaves = list(_commands(build_parser()))
    assert len(leaves) >= 11
    for words, opts in leaves:
        found = [c for c in entries.get(words[1], []) if len(words) == 2 or words[2] in c.split()[1]]
        assert found, f"README's command list lacks `{' '.join(words)}`"
        for o in opts:
            assert any(o in c for c in found), f"README's `{' '.join(words)}` lacks {o}"


def test_readme_names_every_example():
    layout = _readme_section("Layout")
    for script in sorted((ROOT / "examples").glob("*.py")):
        if not script.name.startswith("_"):
            assert f"`{script.name}`" in layout, f"README's layout does not name {script.name}"


def test_readme_says_where_files_go():
    where = _readme_section("Where files are written")
    for claim in ("SYMBP_GENERATED", "current working directory", "__pycache__", "--out DIR"):
        assert claim in where


@pytest.mark.parametrize("at", ["x=" + "1" * 100_000, "y" * 100_000 + "=1"], ids=["long_value", "long_name"])
def test_error_lines_are_cut(capsys, at):
    # whichever module words the error, the command line prints one short line
    assert main(["circuit", "x", "--at", at]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("symbp: error: ") and len(err) <= 1100, len(err)
    assert err.rstrip().endswith("...")

"""Command line: symbp demo | derive | generate | check (and the commands of COMMAND_MODULES).

Contract: ``main(argv) -> int``. ``derive``, ``generate`` and ``check`` take an MLP spec
([network]/[[layer]]) or a graph spec ([graph]/[[node]]), the kind detected from the file;
``symbp graph derive|generate|check`` is the same commands under their old name. A user's
mistake (a SymbpError: bad spec, bad argument, bad input, an option the spec's kind has not:
``GRAPH_LACKS``; an option argparse refuses: unknown, missing, a value outside its choices or
range) prints one line ``symbp: error: ...`` on stderr and returns 2, with no traceback and
nothing written; ``check`` returns 1 when a gradient error is above tolerance; ``--help`` and
``--version`` return 0. A reader that closes the pipe early (``symbp derive SPEC | head -1``)
ends the command quietly with status 141, as a process killed by SIGPIPE would.
"""
import argparse
import math
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from ..errors import SymbpError, cut

EXIT_BROKEN_PIPE = 141    # 128 + SIGPIPE, what a shell reports for `yes | head -1`


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with its errors as the one line every symbp error is (argparse prints the
    usage and then the message: three lines). Subparsers are built with this class too."""

    def error(self, message):
        raise SystemExit(_fail(f"{self.prog}: {message}"))


def _fail(message):
    # one line, and a short one, whichever module wrote the message
    line = " ".join(str(message).splitlines())
    print(f"symbp: error: {cut(line)}", file=sys.stderr)
    return 2


def number(kind, minimum=None, maximum=None, positive=False):
    """An argparse type: an int or a finite float, optionally within bounds (checked here, so
    that a bad value is argparse's one-line error, not a failure later)."""
    def parse(text):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                             f"got {text!r}") from None
        if isinstance(v, float) and not math.isfinite(v):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        if positive and v <= 0:
            raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
        if minimum is not None and v < minimum:
            raise argparse.ArgumentTypeError(f"expected a value >= {minimum}, got {text!r}")
        if maximum is not None and v > maximum:
            raise argparse.ArgumentTypeError(f"expected a value <= {maximum}, got {text!r}")
        return v
    parse.__name__ = kind.__name__    # argparse names the type in its messages
    return parse


# Bounds of the numeric options (a batch or epoch count beyond these is a mistake, not a run).
SEED = number(int, 0, 2 ** 32 - 1)
BATCH = number(int, 1, 100_000)
EPOCHS = number(int, 1, 10_000_000)
POSITIVE = number(float, positive=True)


def _model(args):
    """The Network or Graph of ``args.spec``: the file is read and its TOML parsed once to
    detect the kind: [graph]/[[node]] tables make a graph spec, [network]/[[layer]] an MLP spec.
    A file with tables of both kinds goes to the reader of the kind with more of them (whose
    message names the stray table), one with neither or as many of each to the reader of the
    command's kind: the MLP reader's under ``symbp derive|generate|check``, the graph reader's
    under the ``symbp graph`` alias."""
    from ..model.graph import loads_graph
    from ..model.spec import loads, read_text, read_toml
    text, where = read_text(args.spec)
    doc = read_toml(text, where)
    tables = [sum(key in doc for key in keys) for keys in (("graph", "node"), ("network", "layer"))]
    graph = tables[0] > tables[1] or (tables[0] == tables[1] and args.graph_alias)
    model = (loads_graph if graph else loads)(text, where)
    if graph:       # options an MLP spec has and a graph spec has not yet, before anything is derived
        for option, given, instead in GRAPH_LACKS:
            if given(args):
                raise SymbpError(f"{option}: {args.spec} is a graph spec, which {instead} or use an MLP spec")
    return model


# (option, given(args), what a graph spec lacks and what to do instead) for _model's one-line error
GRAPH_LACKS = (
    ("--stages", lambda a: getattr(a, "stages", False),
     "has no simplification stages in its handout yet; drop --stages (--dump prints every stage)"),
)


def _out_dir(args):
    return Path(args.out) if args.out else None


def _equation_line(d, e, graph):
    """One derived equation as text; a graph's carry their kind (and sums their terms)."""
    from ..codegen.emit import text
    if e.kind == "loss":
        return f"L = {e.rhs}"
    if not graph:
        return text(e.lhs, e.rhs)
    if e.kind in ("branch_sum", "shared_sum"):
        return f"{e.name} = {' + '.join(e.terms)}   [{e.kind}]"
    if e.kind == "forward_concat":
        return f"{e.name} = [{', '.join(d.graph.node(e.node).inputs)}]   [concat]"
    return f"{text(e.lhs, e.rhs)}   [{e.kind}]"


def cmd_derive(args):
    from .. import derive
    from ..verify import is_graph
    if args.pdf and not args.latex:
        raise SymbpError("--pdf: give the .tex file to write with --latex FILE")
    model = _model(args)
    graph = is_graph(model)
    d = derive(model)
    if args.latex:
        if graph:
            from ..render.graph_latex import write_document
            paths = write_document(d, args.latex, args.notation, pdf=args.pdf)
        else:
            from ..render.latex import write_document
            paths = write_document(d, args.latex, args.notation, pdf=args.pdf, stages=args.stages)
        for path in paths:
            print(f"wrote {path}")
    if args.dump:
        sys.stdout.write(d.dump())
    elif not args.latex:
        print(f"# {model}")
        for e in d.equations:
            print(_equation_line(d, e, graph))
    return 0


def _kernel(args):
    from .. import derive, generate
    return generate(derive(_model(args)), target=args.target, dtype=args.dtype, out_dir=_out_dir(args),
                    jit=not args.no_jit)


def cmd_generate(args):
    k = _kernel(args)
    if not args.no_jit:
        k.compile()
    print(k.path)
    return 0


def cmd_check(args):
    from ..verify import check_tol, gradcheck, model_of, sample
    tol = None if args.tol is None else check_tol(args.tol, "--tol")    # before anything is written
    k = _kernel(args)
    params = k.init_params(seed=args.seed)
    rng = np.random.default_rng(args.seed + 1)
    for key in params:   # nonzero biases too, so every term of the gradient is exercised
        params[key] += rng.normal(0, 0.1, size=params[key].shape).astype(k.dtype)
    X, Y = sample(k, args.batch, args.seed, k.dtype)
    report = gradcheck(k, params, X, Y, tol=tol)
    print(f"# {model_of(k)}  ({k.path})")
    print(report)
    return 0 if report.ok else 1


def cmd_demo(args):
    from .. import derive, generate, mlp
    from ..training.loop import train
    from ..verify import gradcheck, oracle_gradients
    from ..render.sources import cite

    out = print
    net = mlp([2, 3, 1], ["sigmoid", "sigmoid"], "bce", name="xor")
    out(f"1. The network (the XOR of {cite('notebook')}): {net}")
    t = time.perf_counter()
    d = derive(net)
    out(f"\n2. Backpropagation derived by SymPy in {time.perf_counter() - t:.2f} s "
        "(per sample, column vectors; g = dL/da, delta = dL/dz):")
    rule = d.layers[0].rule
    out(f"   sigmoid'(z) = {rule.derivative}  ->  {rule.form}  (in terms of a = sigmoid(z))")
    for e in d.equations:
        if e.kind != "loss":
            out("   " + _equation_line(d, e, False))
    t = time.perf_counter()
    k = generate(d, target="cpu", dtype="float64", out_dir=_out_dir(args)).compile()
    out(f"\n3. Numba kernel emitted to {k.path} and compiled in {time.perf_counter() - t:.1f} s")

    X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float64)
    Y = np.array([[0], [1], [1], [0]], dtype=np.float64)
    params = k.init_params(seed=args.seed)
    report = gradcheck(k, params, X, Y)
    _, oracle = oracle_gradients(net, params, X, Y)
    _, grads = k.loss_and_grad(params, X, Y)
    # relative to each array's largest entry: an entry that cancels to ~1e-16 is not an error
    orc = max(float(np.max(np.abs(grads[key] - oracle[key])) / max(float(np.max(np.abs(oracle[key]))), 1e-300))
              for key in grads)
    out("\n4. Gradients verified: central finite differences and the full-expansion SymPy oracle")
    out("   " + str(report).replace("\n", "\n   "))
    out(f"   max relative difference to the SymPy oracle: {orc:.2e}")
    if not report.ok:
        raise SymbpError("demo: the gradient check failed")

    out(f"\n5. Training XOR with full-batch gradient descent (lr {args.lr}) on the generated kernel:")
    train(k, params, X, Y, lr=args.lr, epochs=args.epochs, log_every=max(1, args.epochs // 10),
          log=lambda s: out("   " + s))
    pred = k.forward(params, X)[:, 0]
    out("\n   x1 x2 | target | output  | class")
    right = 0
    for (x1, x2), y, p in zip(X, Y[:, 0], pred):
        ok = int(p > 0.5) == int(y)
        right += ok
        out(f"   {int(x1):2d} {int(x2):2d} | {int(y):6d} | {p:.4f}  | {int(p > 0.5)} {'ok' if ok else 'WRONG'}")
    out(f"\n   {right}/4 points classified right.")
    return 0 if right == 4 else 1


COMMAND_MODULES = ("symbp.render.circuit", "symbp.render.worked", "symbp.render.exam",
                   "symbp.cli.bench", "symbp.render.wx_norm")


OUT_HELP = "directory for generated kernels (default $SYMBP_GENERATED, else ./generated)"


def add_spec_commands(sub, graph_alias=False):
    """derive, generate and check, which take an MLP spec or a graph spec alike (``_model``)."""
    from ..codegen import DTYPES, TARGETS
    from ..render.notation import NOTATIONS
    kinds = "an MLP or graph spec's"
    p = sub.add_parser("derive", help=f"derive {kinds} backpropagation and print it")
    p.add_argument("spec")
    p.add_argument("--dump", action="store_true", help="show every simplification stage")
    p.add_argument("--latex", metavar="FILE", help="write a LaTeX document")
    p.add_argument("--notation", default="cs231n", choices=tuple(NOTATIONS),
                   help="the course notation of the LaTeX (default cs231n)")
    p.add_argument("--pdf", action="store_true", help="also compile the document with pdflatex")
    p.add_argument("--stages", action="store_true",
                   help="show SymPy's simplification stages, labelled with their passes, in the document (MLP specs)")
    p.set_defaults(fn=cmd_derive, graph_alias=graph_alias)
    for name, fn, help_, targets, target_help in (
            ("generate", cmd_generate, f"emit and compile {kinds} kernel", TARGETS,
             "device (default cpu; cuda: MLP specs)"),
            ("check", cmd_check, f"verify {kinds} kernel gradients by finite differences", ("cpu",),
             "device (cpu)")):
        p = sub.add_parser(name, help=help_)
        p.add_argument("spec")
        p.add_argument("--target", default="cpu", choices=targets, help=target_help)
        p.add_argument("--dtype", default="float64", choices=DTYPES, help="default float64")
        if name == "check":
            p.add_argument("--batch", type=BATCH, default=4, help="samples of the random batch (default 4)")
            p.add_argument("--seed", type=SEED, default=0, help="seed of parameters and batch (default 0)")
            p.add_argument("--tol", type=float, default=None,
                           help="largest relative error accepted, in (0, 1) (default: by dtype)")
        p.add_argument("--out", help=OUT_HELP)
        p.add_argument("--no-jit", action="store_true", help="load as plain Python, do not compile")
        p.set_defaults(fn=fn, graph_alias=graph_alias)


def build_parser():
    from .. import __version__
    ap = ArgumentParser(prog="symbp", description="Derive backpropagation with SymPy, "
                        "render it and generate verified Numba kernels.")
    ap.add_argument("--version", action="version", version=f"symbp {__version__}")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="the whole pipeline on the XOR network (no arguments needed)")
    p.add_argument("--out", help=OUT_HELP)
    p.add_argument("--epochs", type=EPOCHS, default=3000, help="training epochs (default 3000)")
    p.add_argument("--lr", type=POSITIVE, default=2.0, help="learning rate (default 2.0)")
    p.add_argument("--seed", type=SEED, default=0, help="seed of the initial parameters (default 0)")
    p.set_defaults(fn=cmd_demo)

    add_spec_commands(sub)
    p = sub.add_parser("graph", help="derive, generate, check: the same commands (their old name for graph specs)")
    add_spec_commands(p.add_subparsers(dest="graph_command", required=True, metavar="COMMAND"), graph_alias=True)

    # Commands owned by feature modules: each defines add_command(subparsers), which adds its
    # parser and sets fn(args) -> exit code.
    import importlib
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_command(sub)
    return ap


def _one_line_warning(show):
    """warnings.showwarning that prints a spec warning (OutputRangeWarning: a loss allowed after
    any output) as one line, like the errors; other warnings keep Python's format."""
    from ..model.network import OutputRangeWarning

    def showwarning(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, OutputRangeWarning):
            print(f"symbp: warning: {message}", file=sys.stderr)
        else:
            show(message, category, filename, lineno, file, line)
    return showwarning


def main(argv=None):
    try:
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as e:     # --help, --version (0) and argparse's one-line errors (2)
            sys.stdout.flush()
            return e.code if isinstance(e.code, int) else 2
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warning(warnings.showwarning)
            code = args.fn(args)
        sys.stdout.flush()      # a closed pipe shows here, not at interpreter exit
        return code
    except SymbpError as e:
        return _fail(str(e))
    except BrokenPipeError:
        # The reader is gone (`| head`): say nothing more. stdout points at /dev/null from now
        # on, so that the interpreter's final flush does not raise again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


if __name__ == "__main__":
    sys.exit(main())

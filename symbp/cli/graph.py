"""Command line for DAG specs: ``symbp graph derive|generate|check SPEC``; ``derive`` prints the
equations, or with ``--latex FILE [--pdf] [--notation N]`` writes the handout
(``symbp.render.graph_latex``).

Contract: ``add_command(subparsers)`` adds the ``graph`` command (listed in
``symbp.cli.COMMAND_MODULES``); each subcommand returns an exit code: 0 on success, 1 when a
gradient check fails; a SymbpError (bad spec, bad option) propagates to ``symbp.cli.commands.main``, which
prints one line and exits 2. Nothing is written before everything was derived and rendered.
An MLP spec ([network] and [[layer]] tables) is refused with the MLP command to use.
"""
import sys
from pathlib import Path

import numpy as np

from ..errors import SymbpError


def _graph(args):
    from ..errors import SymbpError
    from ..model.graph import load_graph
    from ..model.spec import SpecKindError
    try:
        return load_graph(args.spec)
    except SpecKindError as e:
        raise SymbpError(f"{e.where}: this is an MLP spec ([network] and [[layer]] tables): use "
                         f"`symbp {args.graph_command} {args.spec}`") from None


def cmd_derive(args):
    from ..codegen.emit import text
    from ..derivation.graph import derive_graph
    from ..render.graph_latex import get_notation, write_document
    get_notation(args.notation)          # a bad notation is reported before anything is derived
    if args.pdf and not args.latex:
        raise SymbpError("--pdf: give the .tex file to write with --latex FILE")
    d = derive_graph(_graph(args))
    if args.latex:
        for path in write_document(d, args.latex, args.notation, pdf=args.pdf):
            print(f"wrote {path}")
    if args.dump:
        sys.stdout.write(d.dump())
    elif not args.latex:
        print(f"# {d.graph}")
        for e in d.equations:
            if e.kind == "loss":
                print(f"L = {e.rhs}")
            elif e.kind in ("branch_sum", "shared_sum"):
                print(f"{e.name} = {' + '.join(e.terms)}   [{e.kind}]")
            elif e.kind == "forward_concat":
                print(f"{e.name} = [{', '.join(d.graph.node(e.node).inputs)}]   [concat]")
            else:
                print(f"{text(e.lhs, e.rhs)}   [{e.kind}]")
    return 0


def _kernel(args):
    from ..codegen.graph_emit import generate_graph
    from ..derivation.graph import derive_graph
    d = derive_graph(_graph(args))
    return generate_graph(d, target=args.target, dtype=args.dtype,
                          out_dir=Path(args.out) if args.out else None, jit=not args.no_jit)


def cmd_generate(args):
    k = _kernel(args)
    if not args.no_jit:
        k.compile()
    print(k.path)
    return 0


def sample(graph, batch, seed, dtype):
    """Random inputs {name: (batch, width)} and a target that fits the loss (one-hot for ce,
    0/1 for bce, normal otherwise)."""
    rng = np.random.default_rng(seed)
    inputs = {n.name: rng.normal(size=(batch, n.width)).astype(dtype) for n in graph.inputs}
    w = graph.node(graph.target).width
    kind = graph.loss_node.loss.name
    if kind == "ce":
        target = np.eye(w, dtype=dtype)[rng.integers(0, w, size=batch)]
    elif kind == "bce":
        target = rng.integers(0, 2, size=(batch, w)).astype(dtype)
    else:
        target = rng.normal(size=(batch, w)).astype(dtype)
    return inputs, target


def cmd_check(args):
    from ..verify.graph import check_tol, graph_gradcheck
    tol = None if args.tol is None else check_tol(args.tol, "--tol")    # before anything is written
    k = _kernel(args)
    params = k.init_params(seed=args.seed)
    rng = np.random.default_rng(args.seed + 1)
    for key in params:    # nonzero biases too, so every term of the gradient is exercised
        params[key] += rng.normal(0, 0.1, size=params[key].shape).astype(k.dtype)
    inputs, target = sample(k.graph, args.batch, args.seed, k.dtype)
    report = graph_gradcheck(k, params, inputs, target, tol=tol)
    print(f"# {k.graph}  ({k.path})")
    print(report)
    return 0 if report.ok else 1


def add_command(subparsers):
    from .commands import BATCH, OUT_HELP, SEED
    from ..codegen.graph_emit import DTYPES, TARGETS
    p = subparsers.add_parser("graph", help="DAG networks (branch, merge, shared parameters): derive, generate, check")
    sub = p.add_subparsers(dest="graph_command", required=True, metavar="COMMAND")

    q = sub.add_parser("derive", help="derive a graph spec's backpropagation and print it")
    q.add_argument("spec")
    q.add_argument("--dump", action="store_true", help="show every simplification stage")
    q.add_argument("--latex", metavar="FILE", help="write the LaTeX handout (picture, steps explained)")
    q.add_argument("--notation", default="cs231n", help="cs231n | udl | transposed | rowvector | batch")
    q.add_argument("--pdf", action="store_true", help="also compile the handout with pdflatex")
    q.set_defaults(fn=cmd_derive)

    for name, fn, help_ in (("generate", cmd_generate, "emit and compile the kernel of a graph spec"),
                            ("check", cmd_check, "verify a graph kernel's gradients by finite differences")):
        q = sub.add_parser(name, help=help_)
        q.add_argument("spec")
        q.add_argument("--target", default="cpu", choices=TARGETS, help="device (default cpu)")
        q.add_argument("--dtype", default="float64", choices=DTYPES, help="default float64")
        q.add_argument("--out", help=OUT_HELP)
        q.add_argument("--no-jit", action="store_true", help="load as plain Python, do not compile")
        if name == "check":
            q.add_argument("--batch", type=BATCH, default=4, help="samples of the random batch (default 4)")
            q.add_argument("--seed", type=SEED, default=0, help="seed of parameters and batch (default 0)")
            q.add_argument("--tol", type=float, default=None,
                           help="largest relative error accepted, in (0, 1) (default: by dtype)")
        q.set_defaults(fn=fn)

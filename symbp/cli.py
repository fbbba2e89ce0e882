"""Command line: symbp demo | derive | generate | check.

Contract: ``main(argv) -> int``. A user's mistake (a SymbpError: bad spec, bad argument, bad
input) prints one line ``symbp: error: ...`` on stderr and returns 2, with no traceback and
nothing written; ``check`` returns 1 when a gradient error is above tolerance.
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np

from .errors import SymbpError


def _spec(path):
    from .spec import load
    return load(path)


def _out_dir(args):
    return Path(args.out) if args.out else None


def cmd_derive(args):
    from .derive import derive
    from .codegen.emit import text
    d = derive(_spec(args.spec))
    if args.pdf and not args.latex:
        raise SymbpError("--pdf: give the .tex file to write with --latex FILE")
    if args.latex:
        from .render.latex import write_document
        for path in write_document(d, args.latex, args.notation, pdf=args.pdf):
            print(f"wrote {path}")
    if args.dump:
        sys.stdout.write(d.dump())
    elif not args.latex:
        print(f"# {d.network}")
        for e in d.equations:
            print(text(e.lhs, e.rhs) if e.kind != "loss" else f"L = {e.rhs}")
    return 0


def cmd_generate(args):
    from .derive import derive
    from . import generate
    d = derive(_spec(args.spec))
    k = generate(d, target=args.target, dtype=args.dtype, out_dir=_out_dir(args), jit=not args.no_jit)
    if not args.no_jit:
        k.compile()
    print(k.path)
    return 0


def _sample(net, batch, seed, dtype):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(batch, net.sizes[0])).astype(dtype)
    n = net.sizes[-1]
    if net.loss.name == "ce":
        Y = np.eye(n, dtype=dtype)[rng.integers(0, n, size=batch)]
    elif net.loss.name == "bce":
        Y = rng.integers(0, 2, size=(batch, n)).astype(dtype)
    else:
        Y = rng.normal(size=(batch, n)).astype(dtype)
    return X, Y


def cmd_check(args):
    from .derive import derive
    from . import generate
    from .verify import gradcheck
    net = _spec(args.spec)
    d = derive(net)
    k = generate(d, target="cpu", dtype=args.dtype, out_dir=_out_dir(args), jit=not args.no_jit)
    params = k.init_params(seed=args.seed)
    rng = np.random.default_rng(args.seed + 1)
    for key in params:   # nonzero biases too, so every term of the gradient is exercised
        params[key] += rng.normal(0, 0.1, size=params[key].shape).astype(k.dtype)
    X, Y = _sample(net, args.batch, args.seed, k.dtype)
    report = gradcheck(k, params, X, Y, tol=args.tol)
    print(f"# {net}  ({k.path})")
    print(report)
    return 0 if report.ok else 1


def cmd_demo(args):
    from . import derive, generate, mlp
    from .codegen.emit import text
    from .train import train
    from .verify import gradcheck, oracle_gradients

    out = print
    net = mlp([2, 3, 1], ["sigmoid", "sigmoid"], "bce", name="xor")
    out(f"1. The network (seed 004's XOR): {net}")
    t = time.perf_counter()
    d = derive(net)
    out(f"\n2. Backpropagation derived by SymPy in {time.perf_counter() - t:.2f} s "
        "(per sample, column vectors; g = dL/da, delta = dL/dz):")
    rule = d.layers[0].rule
    out(f"   sigmoid'(z) = {rule.derivative}  ->  {rule.form}  (in terms of a = sigmoid(z))")
    for e in d.equations:
        if e.kind != "loss":
            out("   " + text(e.lhs, e.rhs))
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
    train(k, params, X, Y, lr=args.lr, epochs=args.epochs, log_every=args.epochs // 10,
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


COMMAND_MODULES = ("symbp.circuit", "symbp.graph_cli", "symbp.render.worked", "symbp.render.exam",
                   "symbp.bench", "symbp.wx_norm")


def build_parser():
    ap = argparse.ArgumentParser(prog="symbp", description="Derive backpropagation with SymPy, "
                                 "render it and generate verified Numba kernels.")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="the whole pipeline on the XOR network (no arguments needed)")
    p.add_argument("--out", help="directory for generated kernels (default ./generated)")
    p.add_argument("--epochs", type=int, default=3000)
    p.add_argument("--lr", type=float, default=2.0)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(fn=cmd_demo)

    p = sub.add_parser("derive", help="derive a spec's backpropagation and print it")
    p.add_argument("spec")
    p.add_argument("--dump", action="store_true", help="show every simplification stage")
    p.add_argument("--latex", metavar="FILE", help="write a LaTeX document")
    p.add_argument("--notation", default="cs231n",
                   help="cs231n | udl | transposed | rowvector | batch")
    p.add_argument("--pdf", action="store_true", help="also compile the document with pdflatex")
    p.set_defaults(fn=cmd_derive)

    p = sub.add_parser("generate", help="emit and compile the kernel of a spec")
    p.add_argument("spec")
    p.add_argument("--target", default="cpu")
    p.add_argument("--dtype", default="float64")
    p.add_argument("--out", help="directory for generated kernels (default ./generated)")
    p.add_argument("--no-jit", action="store_true", help="load as plain Python, do not compile")
    p.set_defaults(fn=cmd_generate)

    p = sub.add_parser("check", help="verify a spec's kernel gradients by finite differences")
    p.add_argument("spec")
    p.add_argument("--dtype", default="float64")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tol", type=float, default=None)
    p.add_argument("--out", help="directory for generated kernels (default ./generated)")
    p.add_argument("--no-jit", action="store_true")
    p.set_defaults(fn=cmd_check)

    # Commands owned by feature modules: each defines add_command(subparsers), which adds its
    # parser and sets fn(args) -> exit code.
    import importlib
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_command(sub)
    return ap


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except SymbpError as e:
        print(f"symbp: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

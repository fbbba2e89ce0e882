"""The MLP kernel against the graph kernel of the same chain, side by side in one run.

``python benchmarks/graph_vs_mlp.py [--rounds N] [--out DIR]`` generates, for each network, the
MLP kernel (``symbp.generate(symbp.derive(net))``) and the graph kernel of its chain graph
(``symbp.from_network(net)`` through ``derive_graph``), float32, and times in interleaved rounds
(MLP, graph, MLP, graph, ...) the bound step (``k.bind(params, X, Y)``, one call into compiled
code per step) and ``k.loss_and_grad(params, X, Y)``. It prints per network and call the median
and best time per call of each kernel and the ratio graph / MLP (below 1: the graph kernel is
faster), after checking that both kernels give the same loss and gradients.

Pinned as the task asks: one core (the process pins itself to CPU 0, as ``taskset -c 0`` does)
and one thread for OpenMP, OpenBLAS, MKL and Numba (set before NumPy is imported).
"""
import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_var] = "1"
if hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {0})

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

import symbp  # noqa: E402
from symbp.derivation.graph import derive_graph  # noqa: E402

CASES = [
    ("xor 2-3-1 B=4 sigmoid bce", [2, 3, 1], ["sigmoid", "sigmoid"], "bce", 4),
    ("64-64-64-10 B=256 relu softmax ce", [64, 64, 64, 10], ["relu", "relu", "softmax"], "ce", 256),
    ("784-256-128-10 B=1024 relu softmax ce", [784, 256, 128, 10], ["relu", "relu", "softmax"], "ce", 1024),
]


def data(sizes, loss, B, rng):
    X = rng.normal(size=(B, sizes[0])).astype(np.float32)
    if loss == "ce":
        Y = np.eye(sizes[-1], dtype=np.float32)[rng.integers(0, sizes[-1], B)]
    else:
        Y = rng.integers(0, 2, size=(B, sizes[-1])).astype(np.float32)
    return X, Y


def per_call(fn, target_s=0.02):
    """Seconds per call of fn, from a loop of about target_s seconds."""
    n, t = 1, 0.0
    while True:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        t = time.perf_counter() - t0
        if t >= target_s or n >= 1 << 20:
            return t / n, n
        n = max(n * 2, int(n * target_s / max(t, 1e-9)))


def measure(calls, rounds):
    """{name: [seconds per call, one per round]}, the calls interleaved round by round."""
    loops = {name: per_call(fn)[1] for name, fn in calls.items()}     # warm-up and loop sizes
    out = {name: [] for name in calls}
    for _ in range(rounds):
        for name, fn in calls.items():
            n = loops[name]
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            out[name].append((time.perf_counter() - t0) / n)
    return out


def fmt(s):
    return f"{s * 1e6:10.2f} us" if s < 1e-3 else f"{s * 1e3:10.3f} ms"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--out", default=None, help="directory for the generated kernels (default: a temporary one)")
    args = ap.parse_args(argv)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="symbp_graph_vs_mlp_"))
    print(f"float32, pinned to CPU {sorted(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else '?'}, "
          f"1 thread (OMP/OPENBLAS/MKL/NUMBA), {args.rounds} interleaved rounds; times per call")
    print(f"{'network':40s} {'call':14s} {'MLP median':>13s} {'graph median':>13s} {'MLP best':>13s} "
          f"{'graph best':>13s} {'graph/MLP':>9s}")
    rng = np.random.default_rng(0)
    for title, sizes, acts, loss, B in CASES:
        net = symbp.mlp(sizes, activations=acts, loss=loss)
        km = symbp.generate(symbp.derive(net), dtype="float32", out_dir=out)
        kg = symbp.generate(derive_graph(symbp.from_network(net)), dtype="float32", out_dir=out)
        params = km.init_params(seed=0)
        X, Y = data(sizes, loss, B, rng)
        lm, gm = km.loss_and_grad(params, X, Y)
        lg, gg = kg.loss_and_grad(params, X, Y)
        scale = max(float(np.abs(g).max()) for g in gm.values()) or 1.0
        err = max(float(np.abs(gm[k] - gg[k]).max()) for k in gm) / scale
        assert abs(lm - lg) <= 1e-4 * max(1.0, abs(lm)) and err < 1e-4, (title, lm, lg, err)
        sm, sg = km.bind(params, X, Y), kg.bind(params, X, Y)
        times = measure({"mlp step": sm, "graph step": sg,
                         "mlp lag": lambda: km.loss_and_grad(params, X, Y, copy=False),
                         "graph lag": lambda: kg.loss_and_grad(params, X, Y, copy=False)}, args.rounds)
        for call, key in (("bound step", "step"), ("loss_and_grad", "lag")):
            m, g = times[f"mlp {key}"], times[f"graph {key}"]
            mm, gmed = statistics.median(m), statistics.median(g)
            print(f"{title:40s} {call:14s} {fmt(mm)} {fmt(gmed)} {fmt(min(m))} {fmt(min(g))} {gmed / mm:9.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

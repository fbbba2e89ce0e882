"""``symbp bench``: time one training-gradient step of symbp's generated CPU kernel against
hand-written NumPy, hand-written Numba, PyTorch eager and ``jax.jit``, side by side in one run.

Contract:

- ``add_command(subparsers)`` adds ``bench``; ``main(argv) -> int`` runs the same command on its
  own (benchmarks/bench_mlp.py calls it). Exit status 0, or 1 when a kernel cannot be built or
  any implementation's loss and gradients disagree with the float64 reference. Speed targets
  are reported as met or missed and never change the exit status: timings on a shared
  machine are measurements, not assertions.
- A step is forward + loss + backward with the gradients of every parameter, on inputs built
  once. Cases (``CASES``; ``--cases`` picks by key): XOR 2-3-1 sigmoid + bce B=4; 64-64-64-10
  tanh + softmax/ce B=256; 784-256-128-10 relu + softmax/ce B=1024; 1024-1024-1024-1024 relu +
  mse B=4096, float32 only. Default dtypes: float64 and float32 (``--dtype``); ``--quick``: XOR
  and 64-64-64-10 in float32 with short rounds and one derive/emit run.
- PyTorch eager and jax.jit are timed from the package (``symbp.verify.peers``: forward passes,
  differentiated by the frameworks) whenever they are installed, also from an installed wheel.
  The hand-written NumPy and Numba baselines live in ``benchmarks/baselines.py`` of the source
  repository, not in this package (the package holds no hand-written derivative). They are
  imported from ``--baselines PATH`` (the file or its folder), $SYMBP_BENCHMARKS, the checkout
  this package was loaded from, or ./benchmarks; when absent one line says so
  (``BASELINES_HINT``) and the gradients are checked against PyTorch float64
  (``symbp.verify.torch_gradients``) when PyTorch is installed. A ``--baselines PATH``
  that holds no baselines.py is one error line.
- Reported per case: ms/step (median of interleaved rounds), the speed-up of symbp over the
  fastest peer (fastest peer ms / symbp ms; every implementation's ms over the fastest peer's
  in the JSON), and the fraction of the roofline: ``gemm_flops(sizes, B)`` (the step's minimum
  matrix-product FLOPs, see there) divided by the NumPy GEMM rate measured in the same run
  (``gemm_rate``), over the measured time. A table on stdout, everything in ``--json FILE``,
  a progress line per stage on stderr.
- Also measured, each in fresh subprocesses: derive + generate (emit and write, jit=False) of a
  10-layer MLP of width 16 and 1024, and the time to a ready kernel in a first process (cold:
  Numba compiles) and a second one (warm: Numba's cache).
- ``--threads N`` limits BLAS, OpenMP, Numba and PyTorch to N threads and, on Linux, the process
  to N CPUs (XLA, JAX's compiler, has no thread-count setting). Thread pools are sized when those
  libraries load, so the command re-runs itself in a child process with the environment and CPU
  affinity set, unless the environment already says N.
"""
import argparse
import gc
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import SymbpError
from ..verify import peers
from .commands import POSITIVE, number

COUNT = number(int, 1)      # --rounds, --threads


@dataclass(frozen=True)
class Case:
    key: str
    label: str
    sizes: tuple
    activations: tuple
    loss: str
    batch: int
    dtypes: tuple = ("float64", "float32")

    @property
    def net_name(self):
        return f"bench_{self.key}"


CASES = (
    Case("xor", "xor 2-3-1", (2, 3, 1), ("sigmoid", "sigmoid"), "bce", 4),
    Case("mlp64", "64-64-64-10", (64, 64, 64, 10), ("tanh", "tanh", "softmax"), "ce", 256),
    Case("mnist", "784-256-128-10", (784, 256, 128, 10), ("relu", "relu", "softmax"), "ce", 1024),
    # The issue names relu and mse only: relu on every layer, the output too.
    Case("large", "1024-1024-1024-1024", (1024, 1024, 1024, 1024), ("relu", "relu", "relu"), "mse",
         4096, ("float32",)),
)
CASE_KEYS = tuple(c.key for c in CASES)
IMPLS = ("symbp", "numpy", "numba", "torch", "jax")
# Max relative loss/gradient error against the float64 reference.
TOL = {"float64": 1e-9, "float32": 1e-4}
# The GEMM whose rate is the roofline: the large case's forward product, (4096 x 1024) (1024 x 1024)^T.
GEMM_SHAPE = (4096, 1024, 1024)
PAUSE_S = 0.02
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")
DESCRIPTION = ("Time one training-gradient step of symbp's generated CPU kernel against PyTorch eager "
               "and jax.jit (when installed) and, with the source repository's benchmarks/baselines.py "
               "(--baselines PATH, or run from a checkout), hand-written NumPy and Numba, side by side "
               "in one run; a table on stdout, progress on stderr, everything in --json FILE.")
BASELINES_HINT = ("the hand-written NumPy and Numba baselines need --baselines PATH (benchmarks/baselines.py "
                  "of the symbp source) or a source checkout; timing symbp, PyTorch and JAX (when installed)")


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------- FLOPs


def gemm_flops(sizes, batch):
    """Minimum matrix-product FLOPs of one training-gradient step (a multiply-add counts 2).

    Per layer l with n_in x n_out weights and B samples: forward z = a W^T (2 B n_in n_out),
    weight gradient delta^T a (2 B n_in n_out), input gradient delta W (2 B n_in n_out), except
    layer 1's input gradient dL/dX, which a training step does not need. Total
    2 B (3 sum_l n_in n_out - n_0 n_1). Elementwise work, bias sums and the loss are left out:
    they are O(B n), a lower bound stays a lower bound.
    """
    pairs = [a * b for a, b in zip(sizes, sizes[1:])]
    return 2 * batch * (3 * sum(pairs) - pairs[0])


def gemm_rate(dtype, repeats):
    """(best FLOP/s, [seconds of each run]) of NumPy's np.dot at GEMM_SHAPE in ``dtype``."""
    m, k, n = GEMM_SHAPE
    rng = np.random.default_rng(0)
    A = rng.uniform(-1, 1, (m, k)).astype(dtype)
    W = rng.uniform(-1, 1, (n, k)).astype(dtype)
    C = np.empty((m, n), dtype)
    np.dot(A, W.T, C)           # warm up the BLAS thread pool
    runs = [_run(lambda: np.dot(A, W.T, C), 1) for _ in range(repeats)]
    return 2 * m * k * n / min(runs), runs


# ---------------------------------------------------------------------------------- timing


def _run(fn, n):
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return time.perf_counter() - t0


def calibrate(fn, target):
    """Calls per measurement so that one measurement takes about ``target`` seconds."""
    fn()
    n = 1
    while True:
        dt = _run(fn, n)
        if dt >= min(0.05, target / 4):
            return max(1, round(n * target / dt))
        n *= 4


def measure(fns, target, rounds):
    """{name: (median s/call, [s/call of each round], calls per round)}; rounds interleave the
    implementations so that background load hits all of them alike."""
    counts = {name: calibrate(fn, target) for name, fn in fns.items()}
    per = {name: [] for name in fns}
    enabled = gc.isenabled()
    gc.disable()               # like timeit: collections land on whoever is running, unfairly
    try:
        for _ in range(rounds):
            for name, fn in fns.items():
                # A pause first: OpenMP workers of the previous library (PyTorch's, BLAS's)
                # busy-wait for a while after their last task and would steal this one's cores.
                time.sleep(PAUSE_S)
                per[name].append(_run(fn, counts[name]) / counts[name])
    finally:
        if enabled:
            gc.enable()
    return {name: (statistics.median(v), v, counts[name]) for name, v in per.items()}


def load_average():
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


# ---------------------------------------------------------------------------------- baselines


def baseline_dirs():
    """Where benchmarks/baselines.py is looked for, in order, without --baselines."""
    dirs = []
    if os.environ.get("SYMBP_BENCHMARKS"):
        dirs.append(Path(os.environ["SYMBP_BENCHMARKS"]))
    dirs.append(Path(__file__).resolve().parent.parent.parent / "benchmarks")   # a checkout / editable install
    dirs.append(Path.cwd() / "benchmarks")
    return dirs


def load_baselines(path=None):
    """The baselines module, or None when no checkout's benchmarks/baselines.py is found; a
    ``path`` (--baselines: the file or its folder) without one is a SymbpError."""
    if path is not None:
        given = Path(path) if str(path).endswith(".py") else Path(path) / "baselines.py"
        if not given.is_file():
            raise SymbpError(f"bench: --baselines {path}: no baselines.py there (expected "
                             f"benchmarks/baselines.py of the symbp source, or its folder)")
        candidates = [given]
    else:
        candidates = [d / "baselines.py" for d in baseline_dirs()]
    for file in candidates:
        if file.is_file():
            spec = importlib.util.spec_from_file_location("symbp_bench_baselines", file)
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module
            spec.loader.exec_module(module)
            return module
    return None


def default_build_dir(baselines):
    """Kept between runs so that a second run loads the kernels from Numba's cache."""
    if baselines is not None:
        return Path(baselines.__file__).resolve().parent / "_build"
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "symbp" / "bench"


def _build_dir(path):
    path.mkdir(parents=True, exist_ok=True)
    ignore = path / ".gitignore"
    if not ignore.exists():
        ignore.write_text("*\n")
    return path


# ---------------------------------------------------------------------------------- one case


def _make_data(net, batch, dtype, seed):
    """Glorot-uniform weights and small biases (from ``seed``), and the batch of
    ``symbp.verify.sample`` (from ``seed + 1``): X ~ N(0, 1), targets the loss accepts."""
    from ..verify import sample
    rng = np.random.default_rng(seed)
    params = {}
    for l, (n_in, n_out) in enumerate(zip(net.sizes, net.sizes[1:]), start=1):
        lim = np.sqrt(6.0 / (n_in + n_out))
        params[f"W{l}"] = rng.uniform(-lim, lim, size=(n_out, n_in)).astype(dtype)
        params[f"b{l}"] = rng.uniform(-0.1, 0.1, size=(n_out,)).astype(dtype)
    X, Y = sample(net, batch, seed + 1, dtype)
    return params, X, Y


def _softmax64(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# An activation's forward value in float64 (forward definitions only, as in symbp.functions):
# used to find the rows away from relu kinks, nothing is differentiated. Any other activation
# is the identity (the bench cases use no other).
_FORWARD64 = {
    "sigmoid": lambda z, prm: 0.5 * (1.0 + np.tanh(0.5 * z)), "tanh": lambda z, prm: np.tanh(z),
    "relu": lambda z, prm: np.maximum(z, 0.0), "exp": lambda z, prm: np.exp(z),
    "leaky_relu": lambda z, prm: np.where(z > 0, z, prm.get("slope", 0.01) * z),
    "softplus": lambda z, prm: np.logaddexp(0.0, z), "softmax": lambda z, prm: _softmax64(z),
}


def _kink_free_rows(net, params, X, margin=1e-4):
    """Rows of X whose relu / leaky_relu pre-activations are all at least ``margin`` from the
    kink at 0 (in float64). A float32 pre-activation within rounding of 0 may land on the other
    side, which flips that unit's derivative: a correct float32 gradient would then differ from
    the float64 one by O(1) in that entry, so the check uses these rows only."""
    a = X.astype(np.float64)
    keep = np.ones(X.shape[0], dtype=bool)
    for l, layer in enumerate(net.layers, start=1):
        z = a @ params[f"W{l}"].astype(np.float64).T + params[f"b{l}"].astype(np.float64)
        act = layer.activation
        if act.name in ("relu", "leaky_relu"):
            keep &= (np.abs(z) > margin).all(axis=1)
        a = _FORWARD64.get(act.name, lambda z, prm: z)(z, {k: float(v) for k, v in act.values})
    return keep


def _max_rel_error(grads, ref):
    """max over parameters of max|g - r| / max(max|r|, tiny)."""
    worst = 0.0
    for k, r in ref.items():
        g = np.asarray(grads[k], dtype=np.float64)
        r = np.asarray(r, dtype=np.float64)
        if g.shape != r.shape:
            raise ValueError(f"gradient {k}: shape {g.shape} != {r.shape}")
        worst = max(worst, float(np.abs(g - r).max()) / max(float(np.abs(r).max()), 1e-30))
    return worst


def check(impls, params, X, Y, net, baselines):
    """Max relative error of each implementation's loss and grads against a float64 reference:
    the NumPy baseline at float64 (itself checked against PyTorch and JAX float64 autograd), or
    without baselines ``symbp.verify.torch_gradients``. Returns (errors, rows used, reference)."""
    rows = _kink_free_rows(net, params, X)
    X, Y = np.ascontiguousarray(X[rows]), np.ascontiguousarray(Y[rows])
    p64 = {k: v.astype(np.float64) for k, v in params.items()}
    X64, Y64 = X.astype(np.float64), Y.astype(np.float64)
    errs = {}
    if baselines is not None:
        ref_name = "numpy float64"
        ref_loss, ref = baselines.NumpyMLP(net, "float64").loss_and_grad(p64, X64, Y64)
    else:
        from ..verify import torch_gradients
        try:
            ref_loss, ref = torch_gradients(net, p64, X64, Y64)
        except ImportError:
            return {}, int(rows.sum()), None
        ref_name = "torch float64"
        ref = {k: np.asarray(v) for k, v in ref.items() if k in params}
        ref_loss = float(ref_loss)

    def rel(loss, grads):
        return max(_max_rel_error(grads, ref), abs(loss - ref_loss) / max(abs(ref_loss), 1e-30))

    if baselines is not None:   # the reference is hand-written: check it against autograd too
        for cls in baselines.OPTIONAL:
            try:
                loss, grads = cls(net, "float64").loss_and_grad(p64, X64, Y64)
            except baselines.Unavailable:
                continue
            errs[f"ref-vs-{cls.label}64"] = rel(loss, grads)
    for name, obj in impls.items():
        loss, grads = obj.loss_and_grad(params, X, Y)
        errs[name] = rel(float(loss), grads)
    return errs, int(rows.sum()), ref_name


def breakdown_steps(k, params, X, Y):
    """Timed callables that split the kernel's step: the public call with and without gradient
    copies, its forward alone, and NumPy doing only the step's matrix products (a BLAS floor)."""
    dtype, B = k.dtype, X.shape[0]
    Ws = [params[f"W{l}"] for l in range(1, k.network.depth + 1)]
    acts = [X] + [np.empty((B, W.shape[0]), dtype) for W in Ws]
    gW = [np.empty(W.shape, dtype) for W in Ws]
    ga = [np.empty((B, W.shape[1]), dtype) for W in Ws]

    def matmuls():
        for l, W in enumerate(Ws):
            np.dot(acts[l], W.T, acts[l + 1])
        for l, W in enumerate(Ws):
            np.dot(acts[l + 1].T, acts[l], gW[l])   # delta^T a_prev: the kernel's shapes
            if l:
                np.dot(acts[l + 1], W, ga[l])

    return {
        "copy=False": lambda: k.loss_and_grad(params, X, Y, copy=False),
        "copy=True": lambda: k.loss_and_grad(params, X, Y),
        "forward": lambda: k.forward(params, X),
        "numpy matmuls only": matmuls,
    }


def run_case(case, dtype, args, baselines, missing, gemm):
    """Build, check and time every implementation on one case; returns the result dict."""
    import symbp
    net = symbp.mlp(list(case.sizes), list(case.activations), case.loss, name=case.net_name)
    params, X, Y = _make_data(net, case.batch, dtype, seed=0)
    flops = gemm_flops(case.sizes, case.batch)
    result = {"case": case.label, "key": case.key, "sizes": list(case.sizes),
              "activations": list(case.activations), "loss": case.loss, "batch": case.batch,
              "dtype": dtype, "gemm_flops": flops, "roofline_ms": flops / gemm[dtype] * 1e3,
              "ms": {}, "min_ms": {}, "rounds_ms": {}, "calls": {}, "check": {}, "errors": {}}
    impls, steps = {}, {}
    k = None
    if "symbp" in args.impls:
        log("    symbp: derive, generate, compile (or load Numba's cache) ...")
        t0 = time.perf_counter()
        try:
            k = symbp.generate(symbp.derive(net), target="cpu", dtype=dtype, out_dir=args.out, jit=True)
            result["kernel_path"] = str(k.path)
            k.loss_and_grad(params, X, Y, copy=False)     # Numba compiles on the first call
            bound = k.bind(params, X, Y)
            bound()
        except Exception as exc:   # report it and go on with the peers
            first = (str(exc).strip().splitlines() or [""])[0]
            result["errors"]["symbp"] = f"{type(exc).__name__}: {first}"
            log(f"    symbp kernel unavailable: {result['errors']['symbp']}")
            k = None
        else:
            impls["symbp"] = k
            # which variant the bound step runs: "parallel" (prange over row chunks) or "serial",
            # chosen by the Kernel from the batch size and Numba's thread count
            result["symbp_variant"] = (
                "parallel" if bound._fn is getattr(k.module, "loss_and_grad_packed_parallel", None)
                else "serial" if bound._fn is k.module.loss_and_grad_packed else "serial, one BLAS thread")
            # Kernel.bind: parameters and batch bound once, the gradients stay in the step's
            # packed buffer, as PyTorch's stay in .grad and the Numba baseline's in its own;
            # loss_and_grad (copy=False / copy=True) is timed in the breakdown.
            steps["symbp"] = bound
        result["kernel_ready_s"] = time.perf_counter() - t0
    for cls in (baselines.PEERS if baselines is not None else peers.OPTIONAL):
        if cls.label not in args.impls:
            continue
        log(f"    {cls.label}: building ...")
        try:
            obj = cls(net, dtype)
            obj.bind(params, X, Y)
        except peers.Unavailable as exc:
            missing.setdefault(cls.label, str(exc))
            continue
        except NotImplementedError as exc:
            result["errors"][cls.label] = f"not implemented: {exc}"
            continue
        impls[cls.label] = obj
        steps[cls.label] = obj.step

    log(f"    checking {', '.join(impls)} against a float64 reference ...")
    result["check"], result["check_rows"], result["reference"] = check(impls, params, X, Y, net, baselines)
    tol = {n: TOL["float64"] if n.startswith("ref-vs-") else TOL[dtype] for n in result["check"]}
    bad = {n: e for n, e in result["check"].items() if not e <= tol[n]}
    if bad:
        result["errors"]["check"] = "max rel error above tolerance: " + ", ".join(
            f"{n}={e:.2e} (tol {tol[n]:g})" for n, e in bad.items())

    log(f"    timing {', '.join(steps)} ({args.rounds} rounds of ~{args.seconds:g} s each) ...")
    for name, (med, per, n) in measure(steps, args.seconds, args.rounds).items():
        result["ms"][name] = med * 1e3
        result["min_ms"][name] = min(per) * 1e3
        result["rounds_ms"][name] = [t * 1e3 for t in per]
        result["calls"][name] = n
    _ratios(result)
    slower = (result.get("speedup_vs_fastest_peer") or float("inf")) < 1
    if k is not None and (args.breakdown or slower):
        log("    symbp breakdown ...")
        parts = measure(breakdown_steps(k, params, X, Y), args.seconds, args.rounds)
        result["breakdown_ms"] = {n: v[0] * 1e3 for n, v in parts.items()}
    return result


def _ratios(result):
    """Fastest peer, speed-up of symbp, every implementation's time over the fastest peer's and
    its fraction of the roofline."""
    ms = result["ms"]
    peers = {n: v for n, v in ms.items() if n != "symbp"}
    result["fastest_peer"] = min(peers, key=peers.get) if peers else None
    best = peers[result["fastest_peer"]] if peers else None
    result["fastest_peer_ms"] = best
    result["vs_fastest_peer"] = {n: v / best for n, v in ms.items()} if best else {}
    result["speedup_vs_fastest_peer"] = best / ms["symbp"] if best and "symbp" in ms else None
    result["roofline_fraction"] = {n: result["roofline_ms"] / v for n, v in ms.items()}


# ---------------------------------------------------------------------------------- subprocesses


DERIVE_EMIT = textwrap.dedent("""
    import json, sys, time
    import symbp
    width, out = int(sys.argv[1]), sys.argv[2]
    net = symbp.mlp([width] * 10 + [10], ["tanh"] * 9 + ["softmax"], "ce", name=f"deep{width}")
    t0 = time.perf_counter()
    d = symbp.derive(net)
    t1 = time.perf_counter()
    k = symbp.generate(d, target="cpu", dtype="float64", out_dir=out, jit=False)
    t2 = time.perf_counter()
    print(json.dumps({"width": width, "derive_s": t1 - t0, "generate_s": t2 - t1,
                      "total_s": t2 - t0, "bytes": len(open(k.path, "rb").read())}))
""")

READY = textwrap.dedent("""
    import json, sys, time
    t0 = time.perf_counter()
    import numpy as np
    import symbp
    t1 = time.perf_counter()
    sizes, acts, loss, name, dtype, out = json.loads(sys.argv[1])
    net = symbp.mlp(sizes, acts, loss, name=name)
    d = symbp.derive(net)
    t2 = time.perf_counter()
    k = symbp.generate(d, target="cpu", dtype=dtype, out_dir=out, jit=True)
    t3 = time.perf_counter()
    params = k.init_params(seed=0)
    X = np.full((8, sizes[0]), 0.5, dtype=dtype)
    Y = np.zeros((8, sizes[-1]), dtype=dtype)
    Y[:, 0] = 1
    k.loss_and_grad(params, X, Y)
    t4 = time.perf_counter()
    print(json.dumps({"import_s": t1 - t0, "derive_s": t2 - t1, "generate_s": t3 - t2,
                      "first_call_s": t4 - t3, "ready_s": t4 - t1, "process_s": t4 - t0}))
""")


def _child_env():
    """The environment of a child process, importing this same symbp."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _subprocess_json(code, *argv, timeout=600):
    """The JSON the child prints last, or {"error": why} when it fails."""
    try:
        proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True,
                              timeout=timeout, env=_child_env())
        if proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise RuntimeError(f"subprocess failed (exit {proc.returncode}): {tail}")
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except Exception as exc:
        return {"error": str(exc)}


def derive_emit_times(widths, repeats):
    """Best of ``repeats`` fresh processes per width (alternating widths so that load hits
    both); the best is the time the work takes, the rest is other work on the machine."""
    runs = {w: [] for w in widths}
    with tempfile.TemporaryDirectory(prefix="symbp-bench-emit-") as tmp:
        for rep in range(repeats):
            for w in widths:
                if not runs[w] or "error" not in runs[w][-1]:     # a width that failed once is done
                    log(f"derive + generate (jit=False): 10-layer MLP of width {w} ({rep + 1}/{repeats})")
                    runs[w].append(_subprocess_json(DERIVE_EMIT, str(w), tmp))
    out = []
    for w in widths:
        if "error" in runs[w][-1]:
            out.append({"width": w, "error": runs[w][-1]["error"]})
        else:
            out.append({**min(runs[w], key=lambda r: r["total_s"]), "runs_total_s": [r["total_s"] for r in runs[w]]})
    return out


def ready_times(cases, dtype):
    """Cold (empty Numba cache: compile) then warm (second process: cache hit) time to a ready
    kernel, in a fresh temporary directory."""
    out = []
    with tempfile.TemporaryDirectory(prefix="symbp-bench-cache-") as tmp:
        for case in cases:
            spec = json.dumps([list(case.sizes), list(case.activations), case.loss,
                               case.net_name, dtype, tmp])
            row = {"case": case.label, "dtype": dtype}
            for phase in ("cold", "warm"):
                log(f"kernel ready, {phase} process: {case.label} {dtype}")
                row[phase] = _subprocess_json(READY, spec)
            out.append(row)
    return out


# ---------------------------------------------------------------------------------- targets


# Speed targets in float32 against the fastest of NumPy, PyTorch and JAX in the same run
# (TARGET_PEERS; the hand-written Numba baseline is not a target): (speed-up, fraction of the
# roofline) per case, with one thread (``--threads 1``, pinned) and with every core (no
# --threads). None: no target.
TARGET_PEERS = ("numpy", "torch", "jax")
TARGETS = {
    "one thread": {"xor": (10.0, None), "mlp64": (1.5, None), "mnist": (1.0, 0.85), "large": (None, 0.95)},
    "all cores": {"xor": (1.0, None), "mlp64": (1.0, None), "mnist": (1.0, None), "large": (1.0, None)},
}


def targets(results, extra, threads=None):
    """The speed targets (``TARGETS``, float32) against what was measured: [(what, met, how)]."""
    by = {(r["key"], r["dtype"]): r for r in results}
    out = []
    mode = "one thread" if threads == 1 else "all cores"
    for key, (speedup, roof) in TARGETS[mode].items():
        r = by.get((key, "float32"))
        if not r or "symbp" not in r["ms"]:
            continue
        peers = {n: r["ms"][n] for n in TARGET_PEERS if n in r["ms"]}
        if speedup is not None and peers:
            name = min(peers, key=peers.get)
            x = peers[name] / r["ms"]["symbp"]
            out.append((f"{r['case']} float32, {mode}: >= {speedup:g}x the speed of the fastest of "
                        f"{', '.join(TARGET_PEERS)}", x >= speedup, f"{x:.2f}x the speed of {name}"))
        if roof is not None:
            f = r["roofline_fraction"]["symbp"]
            out.append((f"{r['case']} float32, {mode}: >= {roof:g} of the GEMM roofline", f >= roof, f"{f:.2f}"))
    de = {e["width"]: e["total_s"] for e in extra.get("derive_emit", []) if "error" not in e}
    for w, t in sorted(de.items()):
        out.append((f"derive + emit, 10 layers of width {w}: < 1 s", t < 1.0, f"{t:.2f} s"))
    if 16 in de and 1024 in de:
        out.append(("derive + emit not growing with width (1024 within 1.5x + 0.2 s of 16)",
                    de[1024] <= 1.5 * de[16] + 0.2, f"{de[16]:.2f} s -> {de[1024]:.2f} s"))
    for e in extra.get("ready", []):
        c, w = e.get("cold", {}), e.get("warm", {})
        if "ready_s" in c and "ready_s" in w:
            out.append((f"{e['case']}: a second process reuses the compiled kernel",
                        w["ready_s"] < c["ready_s"], f"cold {c['ready_s']:.2f} s, warm {w['ready_s']:.2f} s"))
    return out


# ---------------------------------------------------------------------------------- report


def _fmt(v, spec=".4g"):
    return "-" if v is None else format(v, spec)


def _table(heads, rows):
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(heads)]
    line = "  ".join(h.ljust(w) if i < 2 else h.rjust(w) for i, (h, w) in enumerate(zip(heads, widths)))
    out = [line, "-" * len(line)]
    for r in rows:
        out.append("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    return "\n".join(out)


def time_table(results, labels):
    heads = ["case", "dtype"] + [f"{n} ms" for n in labels] + ["fastest peer", "symbp speed-up"]
    rows = [[f"{r['case']} B={r['batch']}", r["dtype"]] + [_fmt(r["ms"].get(n)) for n in labels]
            + [r["fastest_peer"] or "-", _fmt(r["speedup_vs_fastest_peer"], ".2f")] for r in results]
    return _table(heads, rows)


def roofline_table(results, labels):
    heads = ["case", "dtype", "GFLOP/step", "roofline ms"] + labels
    rows = [[f"{r['case']} B={r['batch']}", r["dtype"], f"{r['gemm_flops'] / 1e9:.4g}",
             f"{r['roofline_ms']:.4g}"] + [_fmt(r["roofline_fraction"].get(n), ".3g") for n in labels]
            for r in results]
    return _table(heads, rows)


def versions():
    import symbp
    v = {"python": platform.python_version(), "numpy": np.__version__, "symbp": symbp.__version__,
         "machine": platform.machine(), "cpus": os.cpu_count()}
    for mod in ("numba", "scipy", "torch", "jax"):
        try:
            v[mod] = __import__(mod).__version__
        except ImportError:
            v[mod] = None
    if v["torch"]:
        import torch
        v["torch_threads"] = torch.get_num_threads()
    import numba
    v["numba_threads"] = numba.get_num_threads()
    v["threads_env"] = os.environ.get("OMP_NUM_THREADS")
    if hasattr(os, "sched_getaffinity"):
        v["cpus_usable"] = len(os.sched_getaffinity(0))
    return v


def report(out, data, labels):
    results, extra = data["results"], data    # extra: the subprocess timings, when measured
    out("symbp benchmark: one training-gradient step (forward + loss + backward, all parameter gradients)")
    out("  " + ", ".join(f"{k} {v}" for k, v in data["versions"].items() if v is not None))
    a = data["args"]
    out(f"  median of {a['rounds']} interleaved rounds of ~{a['seconds']:g} s each; 1-min load average "
        f"{data['load_average'][0]} before, {data['load_average'][1]} after (a shared machine inflates "
        f"timings)")
    out(f"  symbp: Kernel.bind(params, X, Y)() (one packed call per step); kernels in {a['out']}")
    out("  symbp variant (see symbp.codegen.emit PARALLEL_MIN, BLAS_THREADS_MIN): " + "; ".join(
        f"{r['case']} {r['dtype']} {r['symbp_variant']}" for r in results if r.get("symbp_variant")))
    if data["baselines"] is None:
        out(f"  {BASELINES_HINT}")
    out("\nms/step (median); symbp speed-up = fastest peer ms / symbp ms (> 1: symbp is faster)")
    out(time_table(results, labels))
    g = ", ".join(f"{dt} {v['gflops']:.1f} GFLOP/s" for dt, v in data["gemm"].items())
    out(f"\nfraction of the roofline = (GEMM FLOPs of the step / NumPy GEMM rate) / measured time; "
        f"GEMM rate (np.dot {GEMM_SHAPE[0]}x{GEMM_SHAPE[1]} by {GEMM_SHAPE[1]}x{GEMM_SHAPE[2]}, best run): {g}")
    out(roofline_table(results, labels))
    out("\nmax relative error vs the float64 reference (loss and all gradients):")
    for r in results:
        errs = ", ".join(f"{n} {e:.1e}" for n, e in r["check"].items()) or "not checked (no reference)"
        out(f"  {r['case']} {r['dtype']} ({r['check_rows']} of {r['batch']} rows, {r['reference']}): {errs}")
    for name, why in data["missing"].items():
        out(f"  {name}: skipped ({why})")
    split = [r for r in results if "breakdown_ms" in r]
    if split:
        names = list(split[0]["breakdown_ms"])
        out("\nsymbp breakdown, ms/step (numpy matmuls only = the step's matrix products in NumPy, a floor):")
        width = max(len(f"{r['case']} B={r['batch']} {r['dtype']}") for r in split)
        out("  " + " " * width + "  " + "  ".join(f"{n:>18}" for n in names))
        for r in split:
            lab = f"{r['case']} B={r['batch']} {r['dtype']}"
            out(f"  {lab:<{width}}  " + "  ".join(f"{r['breakdown_ms'][n]:>18.4g}" for n in names))
    if extra.get("derive_emit"):
        out("\nderive + generate (emit + write, jit=False), 10-layer MLP, best of fresh processes:")
        for e in extra["derive_emit"]:
            if "error" in e:
                out(f"  width {e['width']}: FAILED {e['error']}")
            else:
                runs = ", ".join(f"{t:.2f}" for t in e["runs_total_s"])
                out(f"  width {e['width']:>5}: derive {e['derive_s']:.3f} s + generate {e['generate_s']:.3f} s"
                    f" = {e['total_s']:.3f} s ({e['bytes']} bytes; all runs {runs} s)")
    if extra.get("ready"):
        out("\ntime to a ready kernel (derive + generate + first loss_and_grad; imports excluded):")
        for e in extra["ready"]:
            parts = []
            for phase in ("cold", "warm"):
                p = e[phase]
                parts.append(f"{phase} FAILED {p['error']}" if "error" in p
                             else f"{phase} {p['ready_s']:.2f} s = derive {p['derive_s']:.2f} + generate "
                                  f"{p['generate_s']:.2f} + first call {p['first_call_s']:.2f} "
                                  f"(whole process {p['process_s']:.2f} s)")
            out(f"  {e['case']} {e['dtype']}:\n    " + "\n    ".join(parts))
    if data["targets"]:
        out("\nspeed targets (float32):")
        for what, met, how in data["targets"]:
            out(f"  {'met   ' if met else 'MISSED'}  {what}: {how}")
    out(f"\ntotal benchmark time {data['elapsed_s']:.0f} s")
    for f in data["failures"]:
        out(f"FAILED: {f}")


# ---------------------------------------------------------------------------------- command


def _names(allowed, what):
    def parse(text):
        names = [n for n in text.split(",") if n]
        bad = [n for n in names if n not in allowed]
        if bad or not names:
            raise argparse.ArgumentTypeError(f"unknown {what} {', '.join(bad) or repr(text)}; "
                                             f"expected some of {', '.join(allowed)}")
        return names
    return parse


def add_arguments(p):
    p.add_argument("--quick", action="store_true",
                   help="fast subset: xor and mlp64 in float32, short rounds, one derive/emit run")
    p.add_argument("--dtype", choices=("float64", "float32", "both"), default=None,
                   help="dtype of every implementation (default both; float32 with --quick)")
    p.add_argument("--cases", type=_names(CASE_KEYS, "case"), action="extend", default=None,
                   help=f"comma-separated, any of {', '.join(CASE_KEYS)} (default all; xor,mlp64 "
                        f"with --quick)")
    p.add_argument("--impls", type=_names(IMPLS, "implementation"), action="extend", default=None,
                   help=f"comma-separated, any of {', '.join(IMPLS)} (default all available)")
    p.add_argument("--json", metavar="FILE", help="also write every result as JSON")
    p.add_argument("--baselines", metavar="PATH", help="benchmarks/baselines.py of the symbp source "
                   "(the file or its folder): adds the hand-written NumPy and Numba baselines (default: "
                   "$SYMBP_BENCHMARKS, the checkout symbp was loaded from, or ./benchmarks)")
    p.add_argument("--out", metavar="DIR", help="directory for the generated kernels (default: "
                   "benchmarks/_build of the checkout, else ~/.cache/symbp/bench)")
    p.add_argument("--seconds", type=POSITIVE, default=None,
                   help="seconds per measurement (default 0.3; 0.1 with --quick)")
    # the option's first name, kept working; hidden: `generate --target` is a device
    p.add_argument("--target", dest="seconds", type=POSITIVE, help=argparse.SUPPRESS)
    p.add_argument("--rounds", type=COUNT, default=None,
                   help="rounds per implementation (default 5; 3 with --quick)")
    p.add_argument("--skip-extra", action="store_true",
                   help="skip the derive/emit and cold/warm compile measurements")
    p.add_argument("--breakdown", action="store_true",
                   help="split symbp's time for every case (default: where a peer is faster)")
    p.add_argument("--threads", type=COUNT, default=None,
                   help="limit every library's thread pool to N (default: each library's own)")


def add_command(subparsers):
    p = subparsers.add_parser("bench", help="time symbp's kernels against NumPy, Numba, PyTorch and JAX",
                              description=DESCRIPTION)
    add_arguments(p)
    p.set_defaults(fn=run)


def _thread_env(n):
    return {v: str(n) for v in THREAD_VARS}


def _pin(n):
    """Restrict this process to ``n`` of its CPUs (Linux): XLA (JAX) takes no thread-count
    setting, so its threads are held to n cores this way. Threads started later inherit it."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:n])


def _rerun_with_threads(args):
    """Run this command again in a child whose thread pools are sized from the start and which
    runs on N CPUs."""
    ap, argv = argparse.ArgumentParser(), []
    add_arguments(ap)
    for action in ap._actions:     # the options add_arguments defines, as given (hidden ones aside)
        v = getattr(args, action.dest, None)
        if action.option_strings and action.help != argparse.SUPPRESS and v not in (None, False):
            argv += [action.option_strings[0]] + ([] if action.nargs == 0 else
                                                  [",".join(v) if isinstance(v, list) else str(v)])
    env = {**_child_env(), **_thread_env(args.threads)}
    log(f"symbp bench: re-running with {args.threads} thread(s) per library")
    # Pinned before anything is imported, so that every thread any library starts inherits it.
    code = (f"import os, sys\nif hasattr(os, 'sched_setaffinity'):\n"
            f"    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:{args.threads}])\n"
            f"from symbp.cli.bench import main\nsys.exit(main(sys.argv[1:]))")
    return subprocess.run([sys.executable, "-c", code, *argv], env=env).returncode


def run(args):
    if args.threads and any(os.environ.get(v) != str(args.threads) for v in THREAD_VARS):
        return _rerun_with_threads(args)
    if args.threads:
        _pin(args.threads)
    import symbp  # noqa: F401  (fail early, before any timing, if the package is broken)

    args.seconds = args.seconds or (0.1 if args.quick else 0.3)
    args.rounds = args.rounds or (3 if args.quick else 5)
    dtype = args.dtype or ("float32" if args.quick else "both")
    dtypes = ["float64", "float32"] if dtype == "both" else [dtype]
    keys = args.cases or (["xor", "mlp64"] if args.quick else list(CASE_KEYS))
    args.impls = args.impls or list(IMPLS)
    args.dtype, args.cases = dtype, keys        # as resolved, for the JSON
    cases = [c for c in CASES if c.key in keys]
    runs = [(c, dt) for c in cases for dt in dtypes if dt in c.dtypes]
    if not runs:
        raise SymbpError(f"bench: no case runs in {', '.join(dtypes)} among {', '.join(keys)} "
                         f"(the large case is float32 only)")

    baselines = load_baselines(args.baselines) if set(args.impls) & {"numpy", "numba"} else None
    if baselines is None and set(args.impls) & {"numpy", "numba"}:
        log(f"symbp bench: {BASELINES_HINT}")
    args.out = str(_build_dir(Path(args.out) if args.out else default_build_dir(baselines)))

    t_start = time.perf_counter()
    load_before = load_average()
    gemm = {}
    needed = sorted({dt for _, dt in runs})
    for dt in needed:
        log(f"NumPy GEMM rate, {dt} ...")
        gemm[dt] = gemm_rate(dt, 2 if args.quick else 3)
    missing, results = {}, []
    for i, (case, dt) in enumerate(runs, start=1):
        log(f"[{i}/{len(runs)}] {case.label} B={case.batch} {dt}")
        r = run_case(case, dt, args, baselines, missing, {d: v[0] for d, v in gemm.items()})
        results.append(r)
        times = " ".join(f"{n}={v:.4g}ms" for n, v in r["ms"].items())
        log(f"    {times}")
    for dt in needed:   # the rate again at the end: the best of both is the machine's
        log(f"NumPy GEMM rate, {dt}, again ...")
        rate, runs_s = gemm_rate(dt, 2 if args.quick else 3)
        best = max(rate, gemm[dt][0])
        gemm[dt] = (best, gemm[dt][1] + runs_s)
    for r in results:   # roofline with the final rate
        r["roofline_ms"] = r["gemm_flops"] / gemm[r["dtype"]][0] * 1e3
        _ratios(r)

    extra = {}
    if not args.skip_extra:
        extra["derive_emit"] = derive_emit_times([16, 1024], 1 if args.quick else 3)
        ready_cases = cases[:1] if args.quick else [c for c in cases if c.key in ("xor", "mnist")]
        extra["ready"] = ready_times(ready_cases or cases[:1], dtypes[-1])

    failures = [f"{r['case']} {r['dtype']}: {k}: {v}" for r in results for k, v in r["errors"].items()]
    failures += [f"derive_emit width {e['width']}: {e['error']}" for e in extra.get("derive_emit", [])
                 if "error" in e]
    labels = [n for n in IMPLS if any(n in r["ms"] for r in results)]
    data = {
        "versions": versions(), "args": {k: v for k, v in vars(args).items() if k != "fn"},
        "load_average": [load_before, load_average()],
        "baselines": baselines.__file__ if baselines is not None else None,
        "gemm": {dt: {"shape": list(GEMM_SHAPE), "gflops": v[0] / 1e9, "runs_s": v[1]} for dt, v in gemm.items()},
        "results": results, "missing": missing, **extra,
        "targets": targets(results, extra, args.threads), "failures": failures,
        "elapsed_s": time.perf_counter() - t_start,
    }
    report(print, data, labels)
    if args.json:
        from ..output import write
        data["targets"] = [{"target": w, "met": m, "measured": h} for w, m, h in data["targets"]]
        write(Path(args.json), json.dumps(data, indent=2) + "\n")
        log(f"wrote {args.json}")
    return 1 if failures else 0


def main(argv=None):
    """``symbp bench`` on its own (benchmarks/bench_mlp.py)."""
    ap = argparse.ArgumentParser(prog="symbp bench", description=DESCRIPTION)
    add_arguments(ap)
    args = ap.parse_args(argv)
    try:
        return run(args)
    except SymbpError as e:
        print(f"symbp: error: {e}", file=sys.stderr)
        return 2

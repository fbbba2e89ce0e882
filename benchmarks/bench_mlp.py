"""Benchmark one training-gradient step of symbp's generated CPU kernel against hand-written
NumPy, PyTorch eager and JAX (the last two when installed), side by side in one run.

A step is forward + loss + backward with the gradients of every parameter, on inputs built
once. Cases: XOR 2-3-1 sigmoid+bce B=4; 64-64-64-10 tanh + softmax/ce B=256; 784-256-128-10
relu + softmax/ce B=1024. Default dtype: both float64 and float32 (``--dtype`` picks one).

    python benchmarks/bench_mlp.py                 # full run (a few minutes on 2 cores)
    python benchmarks/bench_mlp.py --quick         # fast subset: fewer cases, shorter rounds
    python benchmarks/bench_mlp.py --json out.json

Before timing, every implementation's loss and gradients are checked once against a float64
reference (the hand-written NumPy at float64; PyTorch float64 autograd checks that reference in
turn) and the max relative error is printed, so a wrong baseline or kernel cannot go unnoticed;
the exit status is 1 if any check fails or the kernel cannot be built.

Timing: ``time.perf_counter``; each implementation is calibrated to about ``--target`` seconds
per measurement (n calls), then measured in ``--rounds`` rounds, interleaved across the
implementations so that background load hits all of them alike; the median is reported.
The symbp kernel is timed through ``Kernel.loss_and_grad`` (the public entry, including its
input checks and the grads dictionary). Kernels are written to benchmarks/_build/ (ignored by
git), so a second run loads them from Numba's cache.

Also measured, each in a fresh subprocess: derive + generate (emit and write, jit=False, no
compile) of a 10-layer MLP of width 16 and of width 1024 (must be < 2 s and not grow with width),
and the time to get a compiled kernel ready in a first process (cold: compile) and in a second
process (warm: Numba cache hit).
"""
import os
import sys

# --threads N must take effect before NumPy, SciPy's BLAS, Numba and PyTorch load their thread
# pools, so it is read here, ahead of those imports (argparse documents it below).
for _i, _a in enumerate(sys.argv if __name__ == "__main__" else []):
    if _a.startswith("--threads"):
        _n = _a.split("=", 1)[1] if "=" in _a else (sys.argv[_i + 1] if _i + 1 < len(sys.argv) else "")
        for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
            os.environ[_var] = _n

import argparse
import gc
import json
import platform
import statistics
import subprocess
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import baselines  # noqa: E402
import symbp  # noqa: E402

BUILD = HERE / "_build"

# (label, sizes, activations, loss, batch)
CASES = [
    ("xor 2-3-1", [2, 3, 1], ["sigmoid", "sigmoid"], "bce", 4),
    ("64-64-64-10", [64, 64, 64, 10], ["tanh", "tanh", "softmax"], "ce", 256),
    ("784-256-128-10", [784, 256, 128, 10], ["relu", "relu", "softmax"], "ce", 1024),
]
NET_NAMES = {"xor 2-3-1": "bench_xor", "64-64-64-10": "bench_mlp64", "784-256-128-10": "bench_mnist"}
# Max relative gradient/loss error against the float64 reference.
TOL = {"float64": 1e-9, "float32": 1e-4}


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def build_dir():
    BUILD.mkdir(exist_ok=True)
    ignore = BUILD / ".gitignore"
    if not ignore.exists():
        ignore.write_text("*\n")
    return BUILD


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
    """{name: (median seconds per call, [seconds per call of each round], calls per round)}."""
    counts = {name: calibrate(fn, target) for name, fn in fns.items()}
    per = {name: [] for name in fns}
    enabled = gc.isenabled()
    gc.disable()               # like timeit: collections land on whoever is running, unfairly
    try:
        for _ in range(rounds):
            for name, fn in fns.items():
                per[name].append(_run(fn, counts[name]) / counts[name])
    finally:
        if enabled:
            gc.enable()
    return {name: (statistics.median(v), v, counts[name]) for name, v in per.items()}


def load_average():
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


# ---------------------------------------------------------------------------------- cases


def make_kernel(net, dtype):
    """Derive and generate the kernel (jit=True); returns (kernel, error)."""
    try:
        return symbp.generate(symbp.derive(net), target="cpu", dtype=dtype, out_dir=build_dir(), jit=True), None
    except Exception as exc:  # report and go on with the baselines
        return None, f"{type(exc).__name__}: {exc}"


def kernel_step(k, params, X, Y):
    """The timed call of the kernel: its fastest public entry taking (params, X, Y)."""
    return lambda: k.loss_and_grad(params, X, Y)


def breakdown_steps(k, params, X, Y):
    """Timed callables that split the kernel's step: the public call, without the gradient
    copies, the generated module's raw njit functions on prebuilt buffers (no checks, no dict),
    its forward alone, and NumPy doing only the same matrix products (a BLAS floor)."""
    mod, dtype, B = k.module, k.dtype, X.shape[0]
    ps = [params[n] for n in mod.PARAMS]
    fwd = [np.empty((B, mod.BUFFER_WIDTHS[n]), dtype) for n in mod.FORWARD_BUFFERS]
    bwd = [np.empty((B, mod.BUFFER_WIDTHS[n]), dtype) for n in mod.BACKWARD_BUFFERS]
    grads = [np.empty(mod.PARAM_SHAPES[n], dtype) for n in mod.PARAMS]
    Ws = [params[f"W{l}"] for l in range(1, k.network.depth + 1)]
    acts = [X] + [np.empty((B, W.shape[0]), dtype) for W in Ws]
    gW = [np.empty(W.shape, dtype) for W in Ws]
    ga = [np.empty((B, W.shape[1]), dtype) for W in Ws]

    def matmuls():
        for l, W in enumerate(Ws):
            np.dot(acts[l], W.T, acts[l + 1])
        for l, W in enumerate(Ws):
            np.dot(acts[l + 1].T, acts[l], gW[l])   # delta^T a_prev: same shapes as the kernel's
            if l:
                np.dot(acts[l + 1], W, ga[l])

    return {
        "loss_and_grad": lambda: k.loss_and_grad(params, X, Y),
        "copy=False": lambda: k.loss_and_grad(params, X, Y, copy=False),
        "raw loss_and_grad": lambda: mod.loss_and_grad(X, Y, *ps, *fwd, *bwd, *grads),
        "raw forward": lambda: mod.forward(X, *ps, *fwd),
        "numpy matmuls only": matmuls,
    }


def check(impls, params, X, Y, net, dtype):
    """Max relative error of each implementation's loss and grads against the float64 reference,
    on the rows of the batch away from relu kinks (``baselines.kink_free_rows``)."""
    rows = baselines.kink_free_rows(net, params, X)
    X, Y = np.ascontiguousarray(X[rows]), np.ascontiguousarray(Y[rows])
    p64 = {k: v.astype(np.float64) for k, v in params.items()}
    X64, Y64 = X.astype(np.float64), Y.astype(np.float64)
    ref_loss, ref = baselines.NumpyMLP(net, "float64").loss_and_grad(p64, X64, Y64)
    errs = {}

    def rel(loss, grads):
        return max(baselines.max_rel_error(grads, ref), abs(loss - ref_loss) / max(abs(ref_loss), 1e-30))

    # The reference itself is hand-written: check it against autograd at float64 where possible.
    for cls in baselines.OPTIONAL:
        try:
            loss, grads = cls(net, "float64").loss_and_grad(p64, X64, Y64)
        except baselines.Unavailable:
            continue
        errs[f"ref-vs-{cls.label}64"] = rel(loss, grads)
    for name, obj in impls.items():
        loss, grads = obj.loss_and_grad(params, X, Y)
        errs[name] = rel(float(loss), grads)
    return errs, int(rows.sum())


def run_case(label, sizes, acts, loss, batch, dtype, args, missing):
    net = symbp.mlp(sizes, acts, loss, name=NET_NAMES[label])
    params = baselines.init_params(net, dtype, seed=0)
    X, Y = baselines.make_data(net, batch, dtype, seed=1)
    result = {"case": label, "sizes": sizes, "activations": acts, "loss": loss, "batch": batch,
              "dtype": dtype, "ms": {}, "rounds_ms": {}, "calls": {}, "check": {}, "errors": {}}

    impls, steps = {}, {}
    t0 = time.perf_counter()
    k, err = make_kernel(net, dtype)
    result["kernel_ready_s"] = time.perf_counter() - t0
    if k is None:
        result["errors"]["symbp"] = err
        log(f"  symbp kernel unavailable: {err}")
    else:
        result["kernel_path"] = str(getattr(k, "path", ""))
        try:
            kernel_step(k, params, X, Y)()      # Numba compiles on the first call (or loads its cache)
        except Exception as exc:
            err = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
            result["errors"]["symbp"] = f"first call failed: {err}"
            log(f"  symbp kernel failed on its first call: {err}")
        else:
            impls["symbp"] = k
            steps["symbp"] = kernel_step(k, params, X, Y)
        result["kernel_ready_s"] = time.perf_counter() - t0
    for cls in (baselines.NumpyMLP,) + baselines.OPTIONAL:
        try:
            obj = cls(net, dtype)
        except baselines.Unavailable as exc:
            if cls.label not in missing:
                missing[cls.label] = str(exc)
            continue
        obj.bind(params, X, Y)
        impls[cls.label] = obj
        steps[cls.label] = obj.step

    result["check"], result["check_rows"] = check(impls, params, X, Y, net, dtype)
    # ref-vs-* compare two float64 computations whatever the case's dtype.
    tol = {n: TOL["float64"] if n.startswith("ref-vs-") else TOL[dtype] for n in result["check"]}
    bad = {n: e for n, e in result["check"].items() if not e <= tol[n]}
    if bad:
        result["errors"]["check"] = "max rel error above tolerance: " + ", ".join(
            f"{n}={e:.2e} (tol {tol[n]:g})" for n, e in bad.items())
    timed = measure(steps, args.target, args.rounds)
    for name, (med, per, n) in timed.items():
        result["ms"][name] = med * 1e3
        result["rounds_ms"][name] = [t * 1e3 for t in per]
        result["calls"][name] = n
        result.setdefault("min_ms", {})[name] = min(per) * 1e3
    slower = "symbp" in result["ms"] and result["ms"]["symbp"] > result["ms"].get("numpy", float("inf"))
    if "symbp" in impls and (args.breakdown or slower):
        try:
            parts = measure(breakdown_steps(k, params, X, Y), args.target, args.rounds)
        except Exception as exc:  # it reads the generated module's layout, which may change
            result["breakdown_error"] = f"{type(exc).__name__}: {exc}"
            log(f"  breakdown unavailable: {result['breakdown_error']}")
        else:
            result["breakdown_ms"] = {n: v[0] * 1e3 for n, v in parts.items()}
    return result


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


def _subprocess_json(code, *argv, timeout=600):
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise RuntimeError(f"subprocess failed (exit {proc.returncode}): {tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def derive_emit_times(widths, repeats):
    """Best of ``repeats`` fresh processes per width (alternating widths, so load hits both);
    the best is the time the work takes, the rest is other work on the machine."""
    runs = {w: [] for w in widths}
    errors = {}
    with tempfile.TemporaryDirectory(prefix="symbp-bench-emit-") as tmp:
        for rep in range(repeats):
            for w in widths:
                if w in errors:
                    continue
                log(f"derive + generate (jit=False): 10-layer MLP of width {w} ({rep + 1}/{repeats})")
                try:
                    runs[w].append(_subprocess_json(DERIVE_EMIT, str(w), tmp))
                except Exception as exc:
                    errors[w] = str(exc)
    out = []
    for w in widths:
        if w in errors:
            out.append({"width": w, "error": errors[w]})
            continue
        best = min(runs[w], key=lambda r: r["total_s"])
        out.append({**best, "runs_total_s": [r["total_s"] for r in runs[w]]})
    return out


def ready_times(cases, dtype):
    """Cold (compile, empty cache) then warm (second process, cache hit) time to a ready kernel."""
    out = []
    with tempfile.TemporaryDirectory(prefix="symbp-bench-cache-") as tmp:
        for label, sizes, acts, loss, _ in cases:
            spec = json.dumps([sizes, acts, loss, NET_NAMES[label], dtype, tmp])
            row = {"case": label, "dtype": dtype}
            for phase in ("cold", "warm"):
                log(f"kernel ready, {phase} process: {label} {dtype}")
                try:
                    row[phase] = _subprocess_json(READY, spec)
                except Exception as exc:
                    row[phase] = {"error": str(exc)}
            out.append(row)
    return out


# ---------------------------------------------------------------------------------- report


def _fmt_ms(v):
    return "n/a" if v is None else f"{v:.4g}"


def _ratio(a, b):
    return None if a is None or b is None else a / b


def table(results, labels):
    heads = ["case", "dtype"] + [f"{n} ms" for n in labels] + [f"{n}/symbp" for n in labels if n != "symbp"]
    rows = []
    for r in results:
        ms = r["ms"]
        row = [r["case"] + f" B={r['batch']}", r["dtype"]] + [_fmt_ms(ms.get(n)) for n in labels]
        for n in labels:
            if n != "symbp":
                q = _ratio(ms.get(n), ms.get("symbp"))
                row.append("n/a" if q is None else f"{q:.2f}")
        rows.append(row)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(heads)]
    line = "  ".join(h.ljust(w) if i < 2 else h.rjust(w) for i, (h, w) in enumerate(zip(heads, widths)))
    out = [line, "-" * len(line)]
    for r in rows:
        out.append("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    return "\n".join(out)


def versions():
    v = {"python": platform.python_version(), "numpy": np.__version__, "symbp": symbp.__version__,
         "machine": platform.machine(), "cpus": os.cpu_count()}
    for mod in ("numba", "scipy", "torch", "jax"):
        try:
            v[mod] = __import__(mod).__version__
        except ImportError:
            v[mod] = None
    try:
        import torch
        v["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    v["threads_env"] = os.environ.get("OMP_NUM_THREADS")
    return v


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtype", choices=("float64", "float32", "both"), default="both",
                    help="dtype of every implementation (default: both)")
    ap.add_argument("--quick", action="store_true",
                    help="fast subset: XOR and 64-64-64-10 in float64, short rounds, XOR-only compile timing")
    ap.add_argument("--target", type=float, default=None,
                    help="seconds per measurement (default 0.3; 0.1 with --quick)")
    ap.add_argument("--rounds", type=int, default=None, help="rounds per implementation (default 5; 3 with --quick)")
    ap.add_argument("--skip-extra", action="store_true",
                    help="skip the derive/emit and cold/warm compile measurements")
    ap.add_argument("--breakdown", action="store_true",
                    help="split the kernel's time (public call, raw njit functions, BLAS floor) for every "
                         "case; by default only where the kernel is slower than NumPy")
    ap.add_argument("--threads", type=int, default=None,
                    help="limit every library's thread pool (BLAS, OpenMP, Numba, PyTorch) to N; default: "
                         "each library's own default. --threads 1 gives steadier figures on a busy machine")
    ap.add_argument("--json", metavar="FILE", help="write all results as JSON")
    args = ap.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        ap.error("--threads: expected an integer >= 1")
    args.target = args.target or (0.1 if args.quick else 0.3)
    args.rounds = args.rounds or (3 if args.quick else 5)
    dtypes = ["float64", "float32"] if args.dtype == "both" else [args.dtype]
    if args.quick and args.dtype == "both":
        dtypes = ["float64"]
    cases = CASES[:2] if args.quick else CASES

    t_start = time.perf_counter()
    load_before = load_average()
    missing, results = {}, []
    for label, sizes, acts, loss, batch in cases:
        for dtype in dtypes:
            log(f"[{len(results) + 1}/{len(cases) * len(dtypes)}] {label} B={batch} {dtype}: "
                f"building kernel, checking, timing ...")
            r = run_case(label, sizes, acts, loss, batch, dtype, args, missing)
            results.append(r)
            errs = " ".join(f"{n}={e:.1e}" for n, e in r["check"].items())
            times = " ".join(f"{n}={v:.4g}ms" for n, v in r["ms"].items())
            log(f"    kernel ready {r['kernel_ready_s']:.1f}s | max rel err {errs} | {times}")
    for name, why in missing.items():
        log(f"skipped {name}: {why}")

    labels = [n for n in ("symbp", "numpy", "torch", "jax") if any(n in r["ms"] for r in results)]
    extra = {}
    if not args.skip_extra:
        extra["derive_emit"] = derive_emit_times([16, 1024], 1 if args.quick else 3)
        extra["ready"] = ready_times(cases[:1] if args.quick else [cases[0], cases[2]], "float64")

    print()
    print("symbp benchmark: one training-gradient step (forward + loss + backward, all parameter gradients)")
    vv = versions()
    print("  " + ", ".join(f"{k} {v}" for k, v in vv.items() if v is not None))
    print(f"  median of {args.rounds} rounds of ~{args.target:g} s each; ratios > 1 mean symbp is faster")
    print(f"  1-min load average {load_before} before, {load_average()} after "
          f"(other work on the machine inflates the timings, PyTorch's most)")
    print()
    print(table(results, labels))
    print()
    print("max relative error vs float64 reference (loss and all gradients):")
    for r in results:
        errs = ", ".join(f"{n} {e:.1e}" for n, e in r["check"].items())
        print(f"  {r['case']} {r['dtype']} ({r['check_rows']} of {r['batch']} rows): {errs}")
    for name, why in missing.items():
        print(f"  {name}: skipped ({why})")
    split = [r for r in results if "breakdown_ms" in r]
    if split:
        names = list(split[0]["breakdown_ms"])
        print()
        print("symbp kernel breakdown, ms/step (raw = the generated module's njit function on prebuilt "
              "buffers; numpy matmuls only = the same matrix products in NumPy, a floor):")
        width = max(len(f"{r['case']} B={r['batch']} {r['dtype']}") for r in split)
        print("  " + " " * width + "  " + "  ".join(f"{n:>18}" for n in names))
        for r in split:
            lab = f"{r['case']} B={r['batch']} {r['dtype']}"
            print(f"  {lab:<{width}}  " + "  ".join(f"{r['breakdown_ms'][n]:>18.4g}" for n in names))
    if "derive_emit" in extra:
        print()
        print("derive + generate (emit + write, jit=False), 10-layer MLP, best of fresh processes:")
        for e in extra["derive_emit"]:
            if "error" in e:
                print(f"  width {e['width']}: FAILED {e['error']}")
            else:
                runs = ", ".join(f"{t:.2f}" for t in e["runs_total_s"])
                print(f"  width {e['width']:>5}: derive {e['derive_s']:.3f} s + generate {e['generate_s']:.3f} s"
                      f" = {e['total_s']:.3f} s ({e['bytes']} bytes; all runs {runs} s)")
        print()
        print("time to a ready kernel (derive + generate + first loss_and_grad; Python/numba import excluded):")
        for e in extra["ready"]:
            parts = []
            for phase in ("cold", "warm"):
                p = e[phase]
                parts.append(f"{phase} FAILED {p['error']}" if "error" in p
                             else f"{phase} {p['ready_s']:.2f} s = derive {p['derive_s']:.2f} + generate "
                                  f"{p['generate_s']:.2f} + first call {p['first_call_s']:.2f} "
                                  f"(whole process {p['process_s']:.2f} s)")
            print(f"  {e['case']} {e['dtype']}:\n    " + "\n    ".join(parts))
    elapsed = time.perf_counter() - t_start
    print(f"\ntotal benchmark time {elapsed:.0f} s")

    failures = [f"{r['case']} {r['dtype']}: {k}: {v}" for r in results for k, v in r["errors"].items()]
    for e in extra.get("derive_emit", []):
        if "error" in e:
            failures.append(f"derive_emit width {e['width']}: {e['error']}")
        elif e["total_s"] >= 2.0:
            failures.append(f"derive_emit width {e['width']}: {e['total_s']:.2f} s >= 2 s")
    de = {e["width"]: e["total_s"] for e in extra.get("derive_emit", []) if "error" not in e}
    if len(de) == 2 and de[1024] > 1.5 * de[16] + 0.2:
        failures.append(f"derive_emit grows with width: {de[16]:.2f} s at 16, {de[1024]:.2f} s at 1024")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"versions": vv, "args": vars(args), "load_average": [load_before, load_average()],
             "results": results, "failures": failures,
             "elapsed_s": elapsed, **extra}, indent=2) + "\n")
    for f in failures:
        print(f"FAILED: {f}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

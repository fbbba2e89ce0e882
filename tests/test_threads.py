"""A kernel called from several threads at once returns each thread's own results.

Four threads, each with its own batch of the same size (so that, before, they shared one set of
work buffers), call forward, loss_and_grad, input_grad(s) and sgd_step over and over; every
result must equal the serial result of the same call. The interpreter's switch interval is made
tiny so that threads interleave between any two bytecodes (between a compiled call and the copy
of its buffers, or inside the NumPy passes of the vectorized path). MLP kernels on the fused
loop path (small layers) and on the BLAS/vectorized path (64-wide layers, batch x width above
VECTOR_MIN), graph kernels small and wide; as plain Python (the generated source, fast to load)
and, for one MLP and one graph, compiled by Numba. The CUDA kernel (one set of device buffers,
calls serialized by a lock) under Numba's simulator, in a subprocess.
"""
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import symbp
from symbp.codegen.emit import VECTOR_MIN
from symbp.codegen.graph_emit import generate_graph
from symbp.model.graph import from_network, load_graph
from symbp.derivation.graph import derive_graph

ROOT = Path(__file__).resolve().parent.parent
THREADS = 4

MLPS = {
    # (sizes, activations, loss, batch): loops: every layer at most LOOPS_MAX weights
    "loops": ([2, 3, 1], ["sigmoid", "sigmoid"], "bce", 4),
    # blas + vectorized: 64 x 64 weights, batch 32 x width 64 >= VECTOR_MIN
    "blas": ([64, 64, 64, 10], ["tanh", "tanh", "softmax"], "ce", 32),
}


@pytest.fixture(autouse=True)
def tiny_switch_interval():
    saved = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(saved)


def mlp_kernel(path, out, jit):
    sizes, acts, loss, B = MLPS[path]
    net = symbp.mlp(sizes, acts, loss, name=f"threads_{path}")
    k = symbp.generate(symbp.derive(net), out_dir=out, jit=jit)
    if path == "blas":
        assert set(k.module.STRATEGIES.values()) == {"blas"} and B * 64 >= VECTOR_MIN
    else:
        assert set(k.module.STRATEGIES.values()) == {"loops"}
    return k, B


def mlp_batches(k, B):
    rng = np.random.default_rng(1)
    n0, nL = k.network.sizes[0], k.network.sizes[-1]
    out = []
    for _ in range(THREADS):
        X = rng.normal(size=(B, n0))
        Y = np.eye(nL)[rng.integers(0, nL, B)] if nL > 1 else rng.integers(0, 2, (B, 1)).astype(float)
        out.append((X, Y))
    return out


def graph_kernel(name, out, jit):
    if name == "gated":
        g = load_graph(ROOT / "examples" / "specs" / "graphs" / "gated.toml")
    else:
        g = from_network(symbp.mlp([48, 64, 10], ["tanh", "softmax"], "ce", name="threads_wide"), input_grad=True)
    return generate_graph(derive_graph(g), out_dir=out, jit=jit)


def graph_batches(k, B):
    rng = np.random.default_rng(2)
    out = []
    for _ in range(THREADS):
        inputs = {name: rng.normal(size=(B, w)) for name, w in k.inputs.items()}
        t = np.eye(k.target_width)[rng.integers(0, k.target_width, B)]
        out.append((inputs, t))
    return out


def mlp_calls(k, p, X, Y):
    loss, g = k.loss_and_grad(p, X, Y)
    return [k.forward(p, X), np.array(loss), *g.values(), k.input_grad(p, X, Y)]


def graph_calls(k, p, x, t):
    loss, g, gx = k.loss_and_input_grads(p, x, t)
    loss2, g2 = k.loss_and_grad(p, x, t)
    return [k.forward(p, x), np.array(loss), *g.values(), *gx.values(), np.array(loss2), *g2.values(),
            *k.input_grads(p, x, t).values()]


def run_threads(k, calls, batches, rounds):
    """Serial results first, then THREADS threads each repeating its batch's calls (and an
    sgd_step on its own copy of the parameters); returns the number of mismatching calls."""
    p = {key: v + 0.05 for key, v in k.init_params(0).items()}
    serial = [calls(k, p, *b) for b in batches]
    sgd_serial = []
    for b in batches:
        q = {key: v.copy() for key, v in p.items()}
        sgd_serial.append((k.sgd_step(q, *b, 0.1), q))
    bad = [0] * THREADS
    start = threading.Barrier(THREADS)

    def work(i):
        start.wait()
        for _ in range(rounds):
            got = calls(k, p, *batches[i])
            if not all(np.array_equal(a, b) for a, b in zip(got, serial[i])):
                bad[i] += 1
            q = {key: v.copy() for key, v in p.items()}
            loss = k.sgd_step(q, *batches[i], 0.1)
            ref_loss, ref_q = sgd_serial[i]
            if loss != ref_loss or not all(np.array_equal(q[key], ref_q[key]) for key in q):
                bad[i] += 1

    threads = [threading.Thread(target=work, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(bad)


@pytest.mark.parametrize("path", list(MLPS))
def test_mlp_kernel_from_four_threads(tmp_path, path):
    k, B = mlp_kernel(path, tmp_path, jit=False)
    assert run_threads(k, mlp_calls, mlp_batches(k, B), rounds=40 if path == "loops" else 10) == 0


@pytest.mark.parametrize("name", ["gated", "wide"])
def test_graph_kernel_from_four_threads(tmp_path, name):
    k = graph_kernel(name, tmp_path, jit=False)
    assert run_threads(k, graph_calls, graph_batches(k, 16 if name == "wide" else 4), rounds=20) == 0


@pytest.mark.jit
def test_compiled_kernels_from_four_threads(tmp_path):
    k, B = mlp_kernel("loops", tmp_path, jit=True)
    assert run_threads(k, mlp_calls, mlp_batches(k, B), rounds=300) == 0
    g = graph_kernel("gated", tmp_path, jit=True)
    assert run_threads(g, graph_calls, graph_batches(g, 4), rounds=100) == 0


def test_buffers_are_per_thread_and_copy_false_returns_the_callers(tmp_path):
    k, B = mlp_kernel("loops", tmp_path, jit=False)
    (X, Y), = mlp_batches(k, B)[:1]
    p = k.init_params(0)
    _, mine = k.loss_and_grad(p, X, Y, copy=False)
    seen = {}
    t = threading.Thread(target=lambda: seen.update(k.loss_and_grad(p, X * 2, Y, copy=False)[1]))
    t.start()
    t.join()
    assert all(seen[key] is not mine[key] for key in mine)       # another thread, other buffers
    _, again = k.loss_and_grad(p, X, Y, copy=False)
    assert all(again[key] is mine[key] for key in mine)          # the same thread, the same ones


CUDA_SCRIPT = """
import sys, threading, numpy as np, symbp
# The default switch interval (5 ms) already interleaves these calls (each runs far longer).
# A 1e-6 interval also interleaves the simulator's own per-CUDA-thread Python threads so finely
# that, in 2 of 7 full-suite runs on a loaded 2-core machine, a block read shared memory that its
# syncthreads should have filled: a simulator artefact, not a race between host threads (the
# calls are serialized).
from symbp.codegen import cuda as cu
from symbp.codegen.cuda_kernel import generate_cuda
geometry = cu.Geometry(threads=32, row_threads=32, entry_block=(8, 4), util_threads=32, gemm_tile=8, gemm_k=4)
d = symbp.derive(symbp.mlp([2, 3, 1], ["sigmoid", "sigmoid"], "bce", name="threads_cuda"))
k = generate_cuda(d, "float64", out_dir=sys.argv[1], geometry=geometry)
rng = np.random.default_rng(0)
p = {key: v + 0.1 for key, v in k.init_params(0).items()}
batches = [(rng.normal(size=(5, 2)), rng.integers(0, 2, (5, 1)).astype(float)) for _ in range(3)]
serial = [(k.loss_and_grad(p, X, Y), k.input_grad(p, X, Y)) for X, Y in batches]
bad = [0]
def work(i):
    for _ in range(int(sys.argv[2])):
        try:
            (loss, g), gx = k.loss_and_grad(p, *batches[i]), k.input_grad(p, *batches[i])
        except Exception as e:    # the simulator refuses concurrent launches (a GPU would race)
            print(type(e).__name__, e, file=sys.stderr)
            bad[0] += 1
            continue
        (rl, rg), rgx = serial[i]
        bad[0] += not (loss == rl and np.array_equal(gx, rgx) and all(np.array_equal(g[key], rg[key]) for key in g))
threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
[t.start() for t in threads]
[t.join() for t in threads]
print(bad[0])
"""


def test_cuda_kernel_from_three_threads_under_the_simulator(tmp_path):
    """The CUDA kernel's device buffers are shared: calls from several threads are serialized
    (unserialized, the simulator fails with "concurrent simulated kernel not supported")."""
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1", "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    run = subprocess.run([sys.executable, "-c", CUDA_SCRIPT, str(tmp_path), "2"], capture_output=True, text=True,
                         env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.split() == ["0"], run.stdout + run.stderr[-2000:]

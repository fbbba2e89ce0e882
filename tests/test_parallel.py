"""The CPU kernels' parallel variant (prange over row chunks, symbp.codegen.emit.PARALLEL_MIN).

loss_and_grad_parallel must give bit-identical results on every run and for any number of
Numba threads (each chunk of CHUNK_ROWS rows has its own partial loss and gradients, added in
chunk order), and equal the serial loss_and_grad to rounding. The Kernel takes the parallel
variant only when the batch is large enough and Numba has more than one thread, and a kernel
with a BLAS layer has none. Two fused-loops networks (sigmoid + bce; tanh, softmax + ce with its
per-row reductions); the batch is not a multiple of CHUNK_ROWS, so the last chunk is short.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import symbp
from conftest import random_batch

ROOT = Path(__file__).resolve().parent.parent

NETS = {
    "loops": ([2, 3, 1], ["sigmoid", "sigmoid"], "bce", {"loops"}),
    "softmax": ([4, 8, 3], ["tanh", "softmax"], "ce", {"loops"}),
}
B = 300


def build(tmp_path, path, dtype="float64"):
    sizes, acts, loss, strategies = NETS[path]
    net = symbp.mlp(sizes, acts, loss, name=f"par_{path}")
    k = symbp.generate(symbp.derive(net), out_dir=tmp_path, dtype=dtype)
    assert set(k.module.STRATEGIES.values()) == strategies
    assert B % k.module.CHUNK_ROWS != 0
    return k


def raw_call(k, fn, params, X, Y):
    fwd, bwd, grads, *_ = k._buffers(X.shape[0])
    loss = fn(X, Y, *[params[q] for q in k._params], *fwd, *bwd, *grads)
    return [np.array(loss)] + [g.copy() for g in grads]


CHILD = """
import json, sys
import numba, numpy as np
import symbp
sys.path.insert(0, sys.argv[2])
from test_parallel import NETS, raw_call
from conftest import random_batch
path, out, dtype = json.loads(sys.argv[1])
sizes, acts, loss, _ = NETS[path]
net = symbp.mlp(sizes, acts, loss, name=f"par_{path}")
k = symbp.generate(symbp.derive(net), out_dir=out, dtype=dtype)
p, X, Y = random_batch(net, 300, seed=3, dtype=dtype)
res = raw_call(k, k.module.loss_and_grad_parallel, p, X, Y)
np.savez(out + f"/threads{numba.get_num_threads()}.npz", *res)
"""


@pytest.mark.parametrize("path", list(NETS))
def test_parallel_is_deterministic_and_equals_serial(tmp_path, path):
    k = build(tmp_path, path)
    p, X, Y = random_batch(k.network, B, seed=3)
    serial = raw_call(k, k.module.loss_and_grad, p, X, Y)
    runs = [raw_call(k, k.module.loss_and_grad_parallel, p, X, Y) for _ in range(3)]
    for run in runs[1:]:
        assert all(np.array_equal(a, b) for a, b in zip(run, runs[0]))
    for a, b in zip(runs[0], serial):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)
    assert np.abs(serial[1]).max() > 1e-3          # the gradients are not all zero

    # bit-identical for 1 and 2 Numba threads, each in its own process (Numba's cache: no compile)
    if (os.cpu_count() or 1) < 2:
        pytest.skip("one CPU: NUMBA_NUM_THREADS=2 is not available")
    for n in (1, 2):
        env = {**os.environ, "NUMBA_NUM_THREADS": str(n),
               "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps([path, str(tmp_path), "float64"]),
                               str(ROOT / "tests")], env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
    one, two = np.load(tmp_path / "threads1.npz"), np.load(tmp_path / "threads2.npz")
    for key in one.files:
        assert np.array_equal(one[key], two[key]), key
        assert np.array_equal(one[key], runs[0][int(key.split("_")[1])]), key


def test_kernel_picks_the_parallel_variant_by_size(tmp_path, monkeypatch):
    import numba
    k = build(tmp_path, "loops", dtype="float32")
    m = k.module
    big = -(-m.PARALLEL_MIN // m.PARALLEL_COST)            # the smallest batch that pays
    assert not k._parallel(4) and not k._parallel(big - 1)
    assert k._parallel(big) == (numba.get_num_threads() > 1)
    monkeypatch.setattr(numba, "get_num_threads", lambda: 1)
    assert not k._parallel(big)
    monkeypatch.setattr(numba, "get_num_threads", lambda: 2)
    assert k._parallel(big)
    # the public calls on the parallel variant equal the serial kernel to float32 rounding
    p, X, Y = random_batch(k.network, big, seed=4, dtype="float32")
    loss, grads = k.loss_and_grad(p, X, Y)
    step = k.bind(p, X, Y)
    assert step._fn is m.loss_and_grad_packed_parallel
    assert step() == loss
    serial = raw_call(k, m.loss_and_grad, p, X, Y)
    np.testing.assert_allclose(loss, serial[0], rtol=1e-5)
    for (key, g), s in zip(grads.items(), serial[1:]):
        np.testing.assert_allclose(g, s, rtol=1e-4, atol=1e-6 * np.abs(s).max(), err_msg=key)
        np.testing.assert_array_equal(step.grads[key], g)


def test_blas_kernel_has_no_parallel_variant(tmp_path):
    """BLAS already threads the products; the module stays serial (see emit.PARALLEL_MIN)."""
    net = symbp.mlp([64, 32, 10], ["tanh", "softmax"], "ce", name="par_blas")
    k = symbp.generate(symbp.derive(net), out_dir=tmp_path, jit=False)
    assert "blas" in k.module.STRATEGIES.values()
    assert not hasattr(k.module, "loss_and_grad_parallel") and "prange" not in k.path.read_text()
    k.jit = True        # as if compiled: the choice still falls on the serial variant
    assert not k._parallel(10 ** 9)


def test_small_blas_steps_run_on_one_blas_thread(tmp_path):
    """Below BLAS_THREADS_MIN product FLOPs the Kernel wraps the step with blas.one_thread: the
    BLAS thread count inside the call is 1, restored afterwards; the results are the same."""
    from symbp.codegen import blas
    if blas._setter() is None:
        pytest.skip("SciPy's OpenBLAS (openblas_set_num_threads_local) not found")
    get = blas._getter()
    assert blas.one_thread(get)() == 1
    before = get()
    net = symbp.mlp([64, 64, 64, 10], ["tanh", "tanh", "softmax"], "ce", name="par_blas1")
    k = symbp.generate(symbp.derive(net), out_dir=tmp_path, dtype="float32")
    m = k.module
    assert 256 * m.BLAS_FLOPS < m.BLAS_THREADS_MIN <= 10 ** 6 * m.BLAS_FLOPS
    small, large = k._step_fn(256), k._step_fn(10 ** 6)
    assert small is not m.loss_and_grad and large is m.loss_and_grad
    assert k.bind(*random_batch(net, 256, dtype="float32"))._fn is not m.loss_and_grad_packed
    p, X, Y = random_batch(net, 256, seed=5, dtype="float32")
    loss, grads = k.loss_and_grad(p, X, Y)
    ref = raw_call(k, m.loss_and_grad, p, X, Y)
    np.testing.assert_allclose(loss, ref[0], rtol=1e-6)
    for g, r in zip(grads.values(), ref[1:]):
        # float32 sums in another order (BLAS threads split them): equal to float32 rounding of
        # the largest entry, not of each entry (a small entry can come from cancellation)
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5 * np.abs(r).max())
    assert get() == before

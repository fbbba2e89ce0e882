"""Measure the CPU emitter's loops / BLAS crossover (symbp.codegen.emit.LOOPS_MAX).

For w-w-w-w tanh networks, emit the kernel twice, once with every layer as fused per-sample loops
and once with every layer through BLAS, and time the raw generated loss_and_grad (prebuilt
buffers, no Python-side checks). Run with one BLAS thread for a stable comparison:

    OPENBLAS_NUM_THREADS=1 python benchmarks/crossover.py
"""
import tempfile
import time

import numpy as np

import symbp
import symbp.codegen.emit as emit


def median_us(f, rounds=5, seconds=0.15):
    for _ in range(20):
        f()
    res = []
    for _ in range(rounds):
        t, n = time.perf_counter(), 0
        while time.perf_counter() - t < seconds:
            f()
            n += 1
        res.append((time.perf_counter() - t) / n)
    return float(np.median(res)) * 1e6


def main():
    out_dir = tempfile.mkdtemp(prefix="symbp_crossover_")
    saved = emit.LOOPS_MAX
    try:
        for w, B in [(2, 4), (4, 64), (8, 64), (8, 256), (16, 256), (32, 256), (64, 256)]:
            times = []
            for strategy, loops_max in (("loops", 10 ** 9), ("blas", 0)):
                emit.LOOPS_MAX = loops_max
                net = symbp.mlp([w] * 4, ["tanh", "tanh", "identity"], "mse", name=f"x{w}_{strategy}")
                k = symbp.generate(symbp.derive(net), out_dir=out_dir).compile()
                p = k.init_params(0)
                rng = np.random.default_rng(0)
                X, Y = rng.normal(size=(B, w)), rng.normal(size=(B, w))
                fwd, bwd, grads, _ = k._buffers(B)
                ps = [p[key] for key in k._params]
                times.append(median_us(lambda: k.module.loss_and_grad(X, Y, *ps, *fwd, *bwd, *grads)))
            print(f"width {w:3d} (weights {w * w:5d}) B={B:4d}: loops {times[0]:9.2f} us  "
                  f"blas {times[1]:9.2f} us", flush=True)
    finally:
        emit.LOOPS_MAX = saved


if __name__ == "__main__":
    main()

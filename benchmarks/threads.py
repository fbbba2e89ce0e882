"""Measure where the CPU kernels' parallel variants pay (symbp.codegen.emit.PARALLEL_MIN).

Only kernels whose layers are all fused loops have a parallel variant. For a few such networks
and batch sizes, time (best of interleaved rounds) the raw generated loss_and_grad (serial) and
loss_and_grad_parallel (prange over row chunks) with prebuilt buffers, float32, and print
batch x PARALLEL_COST (the module's per-sample work of the passes prange splits) next to the
ratio serial / parallel. The threshold is the smallest batch x cost where the ratio is
clearly above 1. Run on an otherwise idle machine with all cores:

    python benchmarks/threads.py
"""
import sys
import tempfile
import time

import numba
import numpy as np

import symbp

NETS = {
    "xor": ([2, 3, 1], ["sigmoid", "sigmoid"], "bce", (64, 256, 1024, 4096, 16384)),
    "w8": ([8, 8, 8, 8], ["tanh", "tanh", "identity"], "mse", (64, 256, 1024, 4096)),
    "w8relu": ([8, 8, 8, 8], ["relu", "relu", "identity"], "mse", (1024, 4096, 16384)),
}


def best_us(fns, rounds=9, seconds=0.05):
    """Best (minimum) us/call of each of ``fns`` over interleaved rounds: on a shared machine a
    parallel region waits for every thread to be scheduled, so the median measures the load;
    the minimum is the time with the cores free."""
    for f in fns:
        f()
    res = [[] for _ in fns]
    for _ in range(rounds):
        for f, r in zip(fns, res):
            t, n = time.perf_counter(), 0
            while time.perf_counter() - t < seconds:
                f()
                n += 1
            r.append((time.perf_counter() - t) / n)
    return [(min(r) * 1e6, float(np.median(r)) * 1e6) for r in res]


def main(names):
    out_dir = tempfile.mkdtemp(prefix="symbp_threads_")
    print(f"numba threads {numba.get_num_threads()}, float32", flush=True)
    for name in names:
        sizes, acts, loss, batches = NETS[name]
        net = symbp.mlp(sizes, acts, loss, name=f"threads_{name}")
        k = symbp.generate(symbp.derive(net), out_dir=out_dir, dtype="float32")
        p = k.init_params(0)
        rng = np.random.default_rng(0)
        for B in batches:
            X = rng.uniform(-1, 1, (B, sizes[0])).astype(np.float32)
            Y = np.zeros((B, sizes[-1]), np.float32)
            Y[np.arange(B), rng.integers(0, sizes[-1], B)] = 1
            fwd, bwd, grads, _ = k._buffers(B)
            args = (X, Y, *[p[q] for q in k._params], *fwd, *bwd, *grads)
            (s, sm), (par, pm) = best_us([lambda: k.module.loss_and_grad(*args),
                                          lambda: k.module.loss_and_grad_parallel(*args)])
            print(f"{name:6s} B={B:6d} B*cost={B * k.module.PARALLEL_COST:10d}: best serial {s:9.1f} us "
                  f"parallel {par:9.1f} us ratio {s / par:5.2f}  (median {sm:9.1f} / {pm:9.1f} us)",
                  flush=True)


if __name__ == "__main__":
    main(sys.argv[1:] or list(NETS))

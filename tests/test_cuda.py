"""The CUDA target: every emitted kernel compiles to PTX for a real GPU (float32 ones to float32
instructions), the kernels agree with the CPU kernel and with finite differences under Numba's
CUDA simulator (fused and tiled, float32 and float64, batch splitting, device-array inputs),
the fallback to the tiled path is announced once, no GPU and no simulator is one clear error,
and emission is deterministic.

The simulator must be switched on before numba is imported, so the simulator checks run in one
subprocess (this file run as a script with NUMBA_ENABLE_CUDASIM=1), started before the PTX
compilations so that both use a core; each check reports numbers that the tests below assert.
On a machine with a GPU the same checks also run on the GPU (``test_real_gpu``).
"""
import dataclasses
import hashlib
import inspect
import json
import os
import re
import subprocess
import sys
import traceback
import types
import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
if __name__ == "__main__":           # run as the simulator subprocess: import the checkout
    sys.path.insert(0, str(ROOT))

import symbp                          # noqa: E402
import symbp.codegen                  # noqa: E402
from symbp import InputError, SymbpError      # noqa: E402
from symbp.codegen import cuda as cu           # noqa: E402
from symbp.codegen.cuda import emit_cuda  # noqa: E402
from symbp.codegen.cuda_kernel import generate_cuda  # noqa: E402

# name -> (sizes, activations, loss[, mlp options]) or a spec file; small widths keep
# compilation short.
NETWORKS = {
    "sigmoid_bce": ([2, 3, 1], ["sigmoid", "sigmoid"], "bce"),
    "tanh_softmax_ce": ([3, 4, 3], ["tanh", "softmax"], "ce"),
    "relu_mse": ([2, 4, 2], ["relu", "identity"], "mse"),
    "swish_sse": ROOT / "examples" / "specs" / "swish.toml",       # a user-defined activation
    "tiles": ([7, 5, 4], ["tanh", "sigmoid"], "mse"),
    # a layer without bias (z = W a) next to one with, and ReLU'(0) = 1
    "nobias_relu1": ([2, 4, 2], ["relu", "identity"], "mse", {"bias": [False, True], "relu_at_zero": 1}),
}


@lru_cache(maxsize=None)
def derivation(name):
    spec = NETWORKS[name]
    if isinstance(spec, Path):
        return symbp.derive(symbp.load(spec))
    sizes, acts, loss, *opts = spec
    return symbp.derive(symbp.mlp(sizes, activations=acts, loss=loss, name=name, **(opts[0] if opts else {})))


def data(d, B, dtype, seed=0):
    """A batch fitting the loss (one-hot targets for ce, targets in (0, 1) for bce)."""
    rng = np.random.default_rng(seed)
    n = d.network.sizes
    X = rng.normal(size=(B, n[0])).astype(dtype)
    if d.network.loss.name == "ce":
        Y = np.eye(n[-1], dtype=dtype)[rng.integers(0, n[-1], B)]
    else:
        Y = rng.uniform(0.05, 0.95, size=(B, n[-1])).astype(dtype)
    return X, Y


def params(k, seed=1):
    """Glorot weights and small nonzero biases (zero biases would hide a bias error)."""
    rng = np.random.default_rng(seed)
    return {key: (v + 0.1 * rng.normal(size=v.shape)).astype(k.dtype)
            for key, v in k.init_params(seed).items()}


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


# ---------------------------------------------------------------------------------------------
# checks run under the simulator (subprocess) or on a GPU; each returns {label: number}
# ---------------------------------------------------------------------------------------------
def _compare(k, ref, p, X, Y):
    """Relative differences of everything a kernel returns against the CPU reference."""
    loss, g = k.loss_and_grad(p, X, Y)
    rloss, rg = ref.loss_and_grad(p, X, Y)
    out = {"loss": rel(loss, rloss), "forward": rel(k.forward(p, X), ref.forward(p, X)),
           "input_grad": rel(k.input_grad(p, X, Y), ref.input_grad(p, X, Y))}
    out.update({f"grad {key}": rel(g[key], rg[key]) for key in g})
    return out


def _finite_differences(k, p, X, Y, directions=1, h=1e-6, seed=3):
    """Central differences of the kernel's own loss along random directions of the parameters
    and of X, against the kernel's gradients (float64 kernels)."""
    rng = np.random.default_rng(seed)
    _, g = k.loss_and_grad(p, X, Y)
    gx = k.input_grad(p, X, Y)
    out = {}
    for i in range(directions):
        v = {key: rng.normal(size=a.shape) for key, a in p.items()}
        up = k.loss({key: p[key] + h * v[key] for key in p}, X, Y)
        down = k.loss({key: p[key] - h * v[key] for key in p}, X, Y)
        out[f"params dir{i}"] = rel((up - down) / (2 * h), sum(np.sum(g[key] * v[key]) for key in p))
    vx = rng.normal(size=X.shape)
    fd = (k.loss(p, X + h * vx, Y) - k.loss(p, X - h * vx, Y)) / (2 * h)
    out["X dir0"] = rel(fd, np.sum(gx * vx))
    return out


# (check name, network, dtype, generate_cuda options, batch, finite differences)
AGREEMENT = [
    ("fused sigmoid_bce float64", "sigmoid_bce", "float64", {}, 5, True),
    ("fused tanh_softmax_ce float32", "tanh_softmax_ce", "float32", {}, 5, False),
    ("fused relu_mse float64", "relu_mse", "float64", {}, 5, True),
    ("fused swish_sse float32", "swish_sse", "float32", {}, 5, False),
    # two blocks, weight rows in several tiles, sample groups that do not divide the block
    ("fused tiles float64", "tiles", "float64", {"shared_bytes": 27 * 8}, 45, False),
    ("tiled sigmoid_bce float64", "sigmoid_bce", "float64", {"fuse_width": 1}, 5, True),
    ("tiled tanh_softmax_ce float32", "tanh_softmax_ce", "float32", {"fuse_width": 1}, 5, False),
    # matrix products over several tiles of rows, columns and depth (SMALL: 8 x 8 x 4)
    ("tiled tiles float64", "tiles", "float64", {"fuse_width": 1}, 45, False),
    ("fused nobias_relu1 float64", "nobias_relu1", "float64", {}, 5, True),
    ("tiled nobias_relu1 float32", "nobias_relu1", "float32", {"fuse_width": 1}, 5, False),
]
TOL = {"float64": 1e-11, "float32": 2e-5}
FD_TOL = 1e-6


# The simulator runs a Python thread per CUDA thread: small blocks and tiles (several tiles per
# matrix product, which also exercises the tile edges).
SMALL = cu.Geometry(threads=32, row_threads=32, entry_block=(8, 4), util_threads=32,
                    gemm_tile=8, gemm_k=4)


def _kernel(name, dtype, out, shared_bytes=None, **opts):
    geometry = SMALL if shared_bytes is None else dataclasses.replace(SMALL, shared_bytes=shared_bytes)
    return generate_cuda(derivation(name), dtype, out_dir=out, geometry=geometry, **opts)


def check_agreement(out, label):
    _, name, dtype, opts, B, fd = next(c for c in AGREEMENT if c[0] == label)
    d = derivation(name)
    k = _kernel(name, dtype, out, **opts)
    ref = symbp.generate(d, dtype=dtype, out_dir=Path(out) / "cpu", jit=False)
    X, Y = data(d, B, dtype)
    p = params(k)
    res = {"strategy": k.strategy, **_compare(k, ref, p, X, Y)}
    if fd:
        res.update({f"fd {key}": v for key, v in _finite_differences(k, p, X, Y).items()})
    return res


def check_chunks(out, strategy):
    """A batch split into chunks gives the loss, gradients, dL/dX and outputs of the whole."""
    opts = {"fuse_width": 1} if strategy == "tiled" else {}
    k = _kernel("sigmoid_bce", "float64", out, **opts)
    X, Y = data(derivation("sigmoid_bce"), 5, "float64")
    p = params(k)
    k.max_chunk = None
    whole = (k.loss_and_grad(p, X, Y), k.input_grad(p, X, Y), k.forward(p, X))
    k.max_chunk = 2
    split = (k.loss_and_grad(p, X, Y), k.input_grad(p, X, Y), k.forward(p, X))
    res = {"chunk": k.chunk_size(5), "loss": rel(split[0][0], whole[0][0]),
           "input_grad": rel(split[1], whole[1]), "forward": rel(split[2], whole[2])}
    res.update({f"grad {key}": rel(split[0][1][key], whole[0][1][key]) for key in p})
    return res


def check_device_arrays(out):
    """Device-array inputs give the NumPy inputs' results; sgd_step updates device parameters
    on the device and NumPy parameters in place, both by theta - lr g."""
    from numba import cuda
    k = _kernel("relu_mse", "float64", out)
    X, Y = data(derivation("relu_mse"), 5, "float64")
    p = params(k)
    loss, g = k.loss_and_grad(p, X, Y)
    dp = {key: cuda.to_device(v) for key, v in p.items()}
    dX, dY = cuda.to_device(X), cuda.to_device(Y)
    dloss, dg = k.loss_and_grad(dp, dX, dY)
    res = {"loss": rel(dloss, loss), "forward": rel(k.forward(dp, dX), k.forward(p, X)),
           "input_grad": rel(k.input_grad(dp, dX, dY), k.input_grad(p, X, Y))}
    res.update({f"grad {key}": rel(dg[key], g[key]) for key in p})
    try:
        k.loss_and_grad(dp, cuda.to_device(X.astype(np.float32)), dY)
        res["wrong dtype refused"] = 1.0
    except InputError as e:
        res["wrong dtype refused"] = float("X: expected dtype float64" not in str(e))
    lr = 0.25
    k.sgd_step(dp, dX, dY, lr)
    host = {key: v.copy() for key, v in p.items()}
    k.sgd_step(host, X, Y, lr)
    for key in p:
        res[f"sgd device {key}"] = rel(dp[key].copy_to_host(), p[key] - lr * g[key])
        res[f"sgd numpy {key}"] = rel(host[key], p[key] - lr * g[key])
    return res


def check_stability(out, strategy):
    """float32, |z| up to ~1e4: loss, gradients and dL/dX stay finite (stable sigmoid,
    softplus, log-sum-exp), as in the CPU kernel."""
    opts = {"fuse_width": 1} if strategy == "tiled" else {}
    res = {}
    for name in ("sigmoid_bce", "tanh_softmax_ce"):
        k = _kernel(name, "float32", out, **opts)
        X, Y = data(derivation(name), 5, "float32")
        p = params(k)
        X = (X * 1e4 / np.max(np.abs(X))).astype(np.float32)
        p = {key: (v * 10).astype(np.float32) if key.startswith("W") else v for key, v in p.items()}
        loss, g = k.loss_and_grad(p, X, Y)
        finite = [np.isfinite(loss)] + [np.all(np.isfinite(v)) for v in g.values()]
        finite.append(np.all(np.isfinite(k.input_grad(p, X, Y))))
        res[name] = float(all(finite))
        res[f"{name} max |z|"] = float(np.max(np.abs(X @ p["W1"].T)))
    return res


def check_kinks(out, strategy):
    """relu_at_zero = 1 at exactly z = 0 (integer weights and inputs): the CUDA kernels take
    ReLU'(0) = 1 as the CPU kernel does (itself checked against the oracle in test_verify).
    Returns the differences and, to show the batch hits the kink, the count of z = 0 entries."""
    opts = {"fuse_width": 1} if strategy == "tiled" else {}
    k = _kernel("nobias_relu1", "float64", out, **opts)
    ref = symbp.generate(derivation("nobias_relu1"), out_dir=Path(out) / "cpu", jit=False)
    X = np.array([[1., 1.], [0., 2.], [-1., 0.]])
    Y = np.array([[1., -1.], [0., 2.], [0.5, 0.]])
    p = {"W1": np.array([[1., -1.], [1., 0.], [0., 1.], [2., 1.]]),
         "W2": np.array([[1., 2., -1., 1.], [0., -1., 1., 0.]]), "b2": np.array([0., 1.])}
    res = _compare(k, ref, p, X, Y)
    res["zeros"] = float(np.sum(X @ p["W1"].T == 0))
    return res


class _Counted:
    """A kernel of a generated module that counts its launches (and still runs them)."""

    def __init__(self, real, counter):
        self.real, self.counter = real, counter

    def __getitem__(self, config):
        self.counter[0] += 1
        return self.real[config]


def count_launches(module):
    """Replace every kernel of ``module`` by a counting wrapper (the host functions look the
    kernels up as module globals at call time); returns the one-element counter."""
    counter = [0]
    for name in module.SIGNATURES:
        setattr(module, name, _Counted(getattr(module, name), counter))
    return counter


def check_bind(out, strategy):
    """bind() on CUDA: the bound step's loss and device gradients are the kernel's, its sgd is
    theta - lr g on the device, device parameters are updated in place, a split batch adds up;
    loss_and_grad(copy=False), device_grads and device_loss give device arrays; sgd_step is
    LAUNCHES[strategy] launches; symbp.train on device arrays copies nothing to the host but the
    one-number loss of each step, and trains as the CPU kernel does."""
    from numba import cuda
    from symbp.codegen.cuda_kernel import is_device_array
    from symbp.training.loop import train
    opts = {"fuse_width": 1} if strategy == "tiled" else {}
    k = _kernel("relu_mse", "float64", out, **opts)
    d = derivation("relu_mse")
    X, Y = data(d, 5, "float64")
    p = params(k)
    loss, g = k.loss_and_grad(p, X, Y)
    res = {}
    step = k.bind(p, X, Y)
    step.run()
    res["loss"] = rel(step.loss, loss)
    res.update({f"grad {key}": rel(step.grads[key].copy_to_host(), g[key]) for key in p})
    flags = [is_device_array(v) for v in step.grads.values()] + [is_device_array(step.loss_device)]
    _, dg = k.loss_and_grad(p, X, Y, copy=False)
    flags += [dg[key] is k.device_grads[key] and is_device_array(dg[key]) for key in p]
    res["device_loss"] = rel(k.device_loss.copy_to_host()[0], loss)
    lr = 0.25
    step.sgd(lr)
    host = step.params_to_host()
    res.update({f"sgd {key}": rel(host[key], p[key] - lr * g[key]) for key in p})
    dp = {key: cuda.to_device(v) for key, v in p.items()}
    s2 = k.bind(dp, cuda.to_device(X), cuda.to_device(Y))
    s2.sgd(lr)
    flags += [s2.params[key] is dp[key] for key in p]
    res.update({f"in place {key}": rel(dp[key].copy_to_host(), p[key] - lr * g[key]) for key in p})
    k.max_chunk = 2
    s3 = k.bind(p, X, Y)
    res["split loss"] = rel(s3(), loss)
    res.update({f"split grad {key}": rel(s3.grads[key].copy_to_host(), g[key]) for key in p})
    # two blocks of 32 samples, whole and in chunks: the last block (of the last chunk) updates
    X2, Y2 = data(d, 45, "float64", seed=4)
    _, g2 = k.loss_and_grad(p, X2, Y2)
    for mc in (None, 20):
        k.max_chunk = mc
        hp = {key: v.copy() for key, v in p.items()}
        k.sgd_step(hp, X2, Y2, lr)
        res.update({f"sgd 45 rows max_chunk={mc} {key}": rel(hp[key], p[key] - lr * g2[key]) for key in p})
    k.max_chunk = None
    res["flags"] = float(all(flags))
    # launches of one sgd_step (device parameters: no copies either way)
    counter = count_launches(k.module)
    k.sgd_step(dp, cuda.to_device(X), cuda.to_device(Y), lr)
    res["launches"] = counter[0]
    # symbp.train on device arrays: every copy to the host is the loss (one number)
    dX, dY = cuda.to_device(X), cuda.to_device(Y)
    dp = {key: cuda.to_device(v) for key, v in p.items()}
    copies = []
    cls = type(dX)
    real = cls.copy_to_host

    def spy(self, *args, **kwargs):
        copies.append(int(np.prod(self.shape)))
        return real(self, *args, **kwargs)
    cls.copy_to_host = spy
    try:
        hist = train(k, dp, dX, dY, lr=0.1, epochs=2, batch_size=2, log_every=0)
    finally:
        cls.copy_to_host = real
    res["host copies"] = len(copies)
    res["largest host copy"] = max(copies)
    ref = symbp.generate(d, out_dir=Path(out) / "cpu", jit=False)
    hp = {key: v.copy() for key, v in p.items()}
    ref_hist = train(ref, hp, X, Y, lr=0.1, epochs=2, batch_size=2, log_every=0)
    res["train loss"] = rel(hist, ref_hist)
    res.update({f"train {key}": rel(dp[key].copy_to_host(), hp[key]) for key in p})
    return res


def check_interop(out):
    """torch_function and jax_function of a CUDA kernel (NumPy-side tensors): the loss and the
    gradients (parameters and X) of the CPU kernel. A library not installed adds no numbers."""
    k = _kernel("sigmoid_bce", "float64", out)
    ref = symbp.generate(derivation("sigmoid_bce"), out_dir=Path(out) / "cpu", jit=False)
    X, Y = data(derivation("sigmoid_bce"), 5, "float64")
    p = params(k)
    keys = list(k.module.PARAMS)
    loss, g, gx = ref.loss_and_grads(p, X, Y)
    res = {}
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None:
        args = [torch.tensor(p[key], requires_grad=True) for key in keys]
        args += [torch.tensor(X, requires_grad=True), torch.tensor(Y)]
        value = k.torch_function().apply(*args)
        value.backward()
        res["torch loss"] = rel(value.item(), loss)
        res.update({f"torch grad {key}": rel(a.grad.numpy(), g[key]) for key, a in zip(keys, args)})
        res["torch X"] = rel(args[len(keys)].grad.numpy(), gx)
    try:
        import jax
    except ImportError:
        jax = None
    if jax is not None:
        jax.config.update("jax_enable_x64", True)
        f = k.jax_function()
        value, grads = jax.value_and_grad(f, argnums=tuple(range(len(keys) + 1)))(
            *[p[key] for key in keys], X, Y)
        res["jax loss"] = rel(float(value), loss)
        res.update({f"jax grad {key}": rel(np.asarray(a), g[key]) for key, a in zip(keys, grads)})
        res["jax X"] = rel(np.asarray(grads[-1]), gx)
    return res


def emitted_digests():
    """sha256 of every emitted source of the table (compared across processes)."""
    out = {}
    for name in NETWORKS:
        for dtype in ("float32", "float64"):
            for fw in (128, 1):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    src = emit_cuda(derivation(name), dtype, fuse_width=fw)
                out[f"{name} {dtype} {fw}"] = hashlib.sha256(src.encode()).hexdigest()
    return out


def run_checks(out):
    checks = {c[0]: (lambda c=c: check_agreement(out, c[0])) for c in AGREEMENT}
    checks["chunks fused"] = lambda: check_chunks(out, "fused")
    checks["chunks tiled"] = lambda: check_chunks(out, "tiled")
    checks["device arrays"] = lambda: check_device_arrays(out)
    checks["stable fused"] = lambda: check_stability(out, "fused")
    checks["stable tiled"] = lambda: check_stability(out, "tiled")
    checks["kinks fused"] = lambda: check_kinks(out, "fused")
    checks["kinks tiled"] = lambda: check_kinks(out, "tiled")
    checks["bind fused"] = lambda: check_bind(out, "fused")
    checks["bind tiled"] = lambda: check_bind(out, "tiled")
    checks["interop"] = lambda: check_interop(out)
    checks["digests"] = emitted_digests
    results = {}
    for label, fn in checks.items():
        try:
            results[label] = {"values": fn(), "error": None}
        except Exception:
            results[label] = {"values": None, "error": traceback.format_exc()}
    return results


# ---------------------------------------------------------------------------------------------
# the simulator subprocess
# ---------------------------------------------------------------------------------------------
class _Run:
    """The simulator subprocess, started at once; ``results()`` waits for it."""

    def __init__(self, tmp):
        self.path, self.log = tmp / "results.json", tmp / "output.txt"
        env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", PYTHONHASHSEED="12345")
        with open(self.log, "w") as log:      # a file, not a pipe: nothing blocks on a full pipe
            self.proc = subprocess.Popen([sys.executable, __file__, str(tmp / "gen"), str(self.path)],
                                         env=env, stdout=log, stderr=subprocess.STDOUT)
        self._results = None

    def results(self):
        if self._results is None:
            self.proc.wait(timeout=600)
            assert self.proc.returncode == 0, self.log.read_text()[-4000:]
            self._results = json.loads(self.path.read_text())
        return self._results

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    run = _Run(tmp_path_factory.mktemp("cudasim"))
    yield run
    run.close()


def assert_check(label, values):
    """The tolerances each check's numbers must meet (under the simulator and on a GPU)."""
    v = dict(values)
    if label in ("chunks fused", "chunks tiled"):
        assert v.pop("chunk") == 2
        tol = {key: 1e-12 for key in v}
    elif label == "device arrays":
        tol = {key: 1e-12 for key in v}
    elif label in ("kinks fused", "kinks tiled"):
        assert v.pop("zeros") >= 3, "the kink batch does not hit z = 0"
        tol = {key: 1e-12 for key in v}
    elif label in ("bind fused", "bind tiled"):
        assert v.pop("flags") == 1.0, "a gradient or loss is not a device array, or not in place"
        assert v.pop("launches") == LAUNCHES[label.split()[1]](2)
        assert v.pop("host copies") == 6 and v.pop("largest host copy") == 1   # 2 epochs x 3 steps
        tol = {key: 1e-12 for key in v}
    elif label == "interop":
        import importlib.util
        for lib in ("torch", "jax"):        # installed here: the subprocess checked it too
            assert (importlib.util.find_spec(lib) is None) or f"{lib} loss" in v, lib
        tol = {key: 1e-12 for key in v}
    elif label in ("stable fused", "stable tiled"):
        for name in ("sigmoid_bce", "tanh_softmax_ce"):
            assert v[name] == 1.0, (label, name, "not finite")
            assert v[f"{name} max |z|"] > 1e4, "the check did not reach large |z|"
        return
    else:
        _, _, dtype, opts, _, fd = next(c for c in AGREEMENT if c[0] == label)
        assert v.pop("strategy") == ("tiled" if opts.get("fuse_width") == 1 else "fused")
        assert {"loss", "forward", "input_grad"} <= set(v)
        assert any(key.startswith("fd ") for key in v) == fd
        tol = {key: FD_TOL if key.startswith("fd ") else TOL[dtype] for key in v}
    for key, err in v.items():
        assert err <= tol[key], (label, key, err)


# ---------------------------------------------------------------------------------------------
# PTX for a real GPU, compiled without one
# ---------------------------------------------------------------------------------------------
# (network, dtype, strategy): every activation, loss and strategy, both dtypes
PTX_CASES = [
    ("sigmoid_bce", "float32", "fused"), ("sigmoid_bce", "float64", "fused"),
    ("sigmoid_bce", "float32", "tiled"), ("sigmoid_bce", "float64", "tiled"),
    ("tanh_softmax_ce", "float32", "fused"), ("tanh_softmax_ce", "float32", "tiled"),
    ("relu_mse", "float32", "fused"), ("relu_mse", "float64", "tiled"),
    ("swish_sse", "float32", "fused"), ("swish_sse", "float32", "tiled"),
    ("nobias_relu1", "float32", "fused"), ("nobias_relu1", "float64", "tiled"),
]
_PTX = {}      # (kernel source, signature) -> PTX: the matrix products repeat across networks


@pytest.fixture
def fixed_compute_capability(monkeypatch):
    """compile_ptx needs no GPU, but numba compiles the device functions a kernel calls for the
    current device's compute capability; without a GPU there is none, so supply (8, 0)."""
    import numba.cuda.dispatcher as dispatcher
    monkeypatch.setattr(dispatcher, "get_current_device",
                        lambda: types.SimpleNamespace(compute_capability=(8, 0)), raising=False)


@pytest.mark.skipif(cu.simulator(), reason="compile_ptx needs the real CUDA target, not the simulator")
@pytest.mark.parametrize("name,dtype,strategy", PTX_CASES, ids=["-".join(c) for c in PTX_CASES])
def test_every_kernel_compiles_to_ptx(simulated, fixed_compute_capability, tmp_path, name, dtype, strategy):
    from numba import cuda
    fw = 1 if strategy == "tiled" else cu.FUSE_WIDTH
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        k = generate_cuda(derivation(name), dtype, out_dir=tmp_path, jit=False, fuse_width=fw)
    m = k.module
    assert m.STRATEGY == strategy
    kernels = {n: getattr(m, n) for n in m.SIGNATURES}
    # every @cuda.jit kernel of the module has a signature, and so is compiled here
    found = {n for n, f in vars(m).items() if type(f).__name__ == "CUDADispatcher"
             and not f.targetoptions.get("device")}
    assert found == set(kernels)
    for n, fn in kernels.items():
        key = (inspect.getsource(fn.py_func), m.SIGNATURES[n])
        if key not in _PTX:
            _PTX[key] = cuda.compile_ptx(fn.py_func, m.SIGNATURES[n], cc=(8, 0))[0]
        ptx = _PTX[key]
        assert ".entry" in ptx
        if dtype == "float32":
            f64 = [line.strip() for line in ptx.splitlines() if ".f64" in line]
            assert not f64, (n, f64[:5])
    if strategy == "fused":
        ptx = _PTX[(inspect.getsource(m.fused_loss_and_grad.py_func), m.SIGNATURES["fused_loss_and_grad"])]
        assert re.search(rf"\.shared\s+\.align\s+\d+\s+\.b8\s+\w+\[{m.SHARED * np.dtype(dtype).itemsize}\]", ptx)
        assert re.search(rf"(atom|red)\.global\.add\.f{np.dtype(dtype).itemsize * 8}", ptx)


def _values(run, label):
    res = run.results()[label]
    assert res["error"] is None, res["error"]
    return res["values"]


@pytest.mark.parametrize("label", [c[0] for c in AGREEMENT])
def test_simulator_agrees_with_cpu_and_finite_differences(simulated, label):
    assert_check(label, _values(simulated, label))


@pytest.mark.parametrize("strategy", ["fused", "tiled"])
def test_batch_split_into_chunks_adds_up(simulated, strategy):
    assert_check(f"chunks {strategy}", _values(simulated, f"chunks {strategy}"))


def test_device_arrays_and_sgd_step(simulated):
    assert_check("device arrays", _values(simulated, "device arrays"))


@pytest.mark.parametrize("strategy", ["fused", "tiled"])
def test_bind_keeps_gradients_loss_and_training_on_the_device(simulated, strategy):
    assert_check(f"bind {strategy}", _values(simulated, f"bind {strategy}"))


def test_torch_and_jax_functions_of_a_cuda_kernel(simulated):
    assert_check("interop", _values(simulated, "interop"))


# Launches of one training step (zero, loss and gradients, update) for a network of L layers:
# fused, zeroing and the kernel, whose epilogue updates (it was 2 + 2 * params: a zeroing launch
# per array, an update per parameter, 14 for three layers);
# tiled, a matrix product and an elementwise pass per layer forward, an elementwise pass and the
# weight-gradient product (bias gradient folded in) per layer backward and L - 1 products for
# dL/da (it was 30 for three layers: separate zeroing, column sums and updates).
LAUNCHES = {"fused": lambda L: 2, "tiled": lambda L: 1 + 2 * L + 2 * L + (L - 1) + 1}


@pytest.mark.parametrize("sizes,strategy", [([4, 8, 8, 3], "fused"), ([784, 256, 128, 10], "tiled"),
                                            ([2, 3, 2], "fused"), ([3, 130, 2], "tiled")])
def test_launches_per_training_step(tmp_path, sizes, strategy):
    """Counted on the module's host functions with stand-in launches (no device needed): the
    step CudaKernel.sgd_step runs is zero_grads, then loss_and_grad with the update."""
    L = len(sizes) - 1
    net = symbp.mlp(sizes, activations=["relu"] * (L - 1) + ["softmax"], loss="ce", name=f"launch{L}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        k = generate_cuda(symbp.derive(net), "float32", out_dir=tmp_path, jit=False)
    m = k.module
    assert m.STRATEGY == strategy
    counter = [0]

    class Stub:
        def __getitem__(self, config):
            def launch(*args):
                counter[0] += 1
            return launch
    for name in m.SIGNATURES:
        setattr(m, name, Stub())
    B, dt = 3, np.float32
    ps = [np.zeros(k.param_shapes[key], dt) for key in m.PARAMS]
    gs = [np.zeros_like(a) for a in ps]
    work = [np.zeros((B, m.BUFFER_WIDTHS[b]), dt) for b in m.FORWARD_BUFFERS + m.BACKWARD_BUFFERS]
    X, Y, loss = np.zeros((B, sizes[0]), dt), np.zeros((B, sizes[-1]), dt), np.zeros(1, dt)
    m.zero_grads(*gs, loss)
    m.loss_and_grad(X, Y, *ps, *work, *gs, loss, X.copy(), False, B, np.zeros(1, np.int32), 0.1, True)
    assert counter[0] == LAUNCHES[strategy](L)
    assert "column_sum" not in m.SIGNATURES       # every bias gradient folded into a product


@pytest.mark.parametrize("strategy", ["fused", "tiled"])
def test_float32_stays_finite_for_large_pre_activations(simulated, strategy):
    assert_check(f"stable {strategy}", _values(simulated, f"stable {strategy}"))


@pytest.mark.parametrize("strategy", ["fused", "tiled"])
def test_relu_at_zero_one_is_used_at_an_exact_kink(simulated, strategy):
    assert_check(f"kinks {strategy}", _values(simulated, f"kinks {strategy}"))


# ---------------------------------------------------------------------------------------------
# bad input, determinism
# ---------------------------------------------------------------------------------------------
def test_no_gpu_and_no_simulator_is_one_clear_error(monkeypatch, tmp_path):
    from numba import cuda
    monkeypatch.setattr(cu, "simulator", lambda: False)
    monkeypatch.setattr(cuda, "is_available", lambda: False)
    d = derivation("sigmoid_bce")
    with pytest.raises(SymbpError) as e:
        generate_cuda(d, "float32", out_dir=tmp_path)
    msg = str(e.value)
    assert msg == cu.NO_DEVICE and "\n" not in msg
    assert "NVIDIA GPU" in msg and "NUMBA_ENABLE_CUDASIM=1" in msg
    assert not (tmp_path / d.network.name).exists()        # nothing written
    k = generate_cuda(d, "float32", out_dir=tmp_path, jit=False)   # source only: no device needed
    X, Y = data(d, 3, "float32")
    for call in (lambda: k.loss_and_grad(k.init_params(0), X, Y), lambda: k.forward(k.init_params(0), X),
                 k.compile):
        with pytest.raises(SymbpError, match=re.escape(cu.NO_DEVICE)):
            call()


@pytest.mark.skipif("cuda" not in symbp.codegen.TARGETS,
                    reason="symbp.generate(target='cuda') is not wired yet")
def test_cli_without_gpu_prints_one_line(monkeypatch, tmp_path, capsys):
    from numba import cuda
    from symbp.cli.commands import main
    monkeypatch.setattr(cu, "simulator", lambda: False)
    monkeypatch.setattr(cuda, "is_available", lambda: False)
    rc = main(["generate", str(ROOT / "examples" / "specs" / "xor.toml"), "--target", "cuda",
               "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and cu.NO_DEVICE in err and "Traceback" not in err


def test_bad_arrays_are_refused_before_any_device_work(tmp_path):
    k = generate_cuda(derivation("sigmoid_bce"), "float32", out_dir=tmp_path, jit=False)
    X, Y = data(derivation("sigmoid_bce"), 4, "float32")
    p = k.init_params(0)
    bad = [((p, X[:, :1], Y), "X: expected shape (4, 2)"),
           ((p, X.astype(np.float64), Y), "X: expected dtype float32"),
           ((p, X, Y[:3]), "Y: expected shape (4, 1)"),
           ((p, X.tolist(), Y), "X: expected an array of shape (batch, 2)"),
           (({k_: v for k_, v in p.items() if k_ != "b2"}, X, Y), "params: missing ['b2']"),
           (({**p, "W1": p["W1"].T.copy()}, X, Y), "params['W1']: expected shape (3, 2)")]
    for args, message in bad:
        with pytest.raises(InputError) as e:
            k.loss_and_grad(*args)
        assert message in str(e.value) and "\n" not in str(e.value)


def test_wide_layer_falls_back_to_tiled_and_says_so_once(tmp_path):
    net = symbp.mlp([3, 130, 2], activations=["tanh", "identity"], loss="mse", name="wide_fallback")
    d = symbp.derive(net)
    with pytest.warns(UserWarning, match=r"layer 1 has width 130, more than the 128") as rec:
        src = emit_cuda(d, "float32")
    assert len(rec) == 1 and 'STRATEGY = "tiled"' in src
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # a second emission says nothing
        assert emit_cuda(d, "float64").count('STRATEGY = "tiled"') == 1
    assert 'STRATEGY = "fused"' in emit_cuda(d, "float32", fuse_width=130)


@pytest.mark.parametrize("opts,message", [
    ({"dtype": "float16"}, "dtype: expected one of float64, float32"),
    ({"fuse_width": 0}, "fuse_width: expected a positive integer"),
    ({"geometry": cu.Geometry(threads=48)}, "geometry.threads: expected an integer from 32 to 1024 and a multiple of 32"),
    ({"geometry": cu.Geometry(shared_bytes=1 << 20)}, "geometry.shared_bytes: expected an integer from 16 to 40960"),
    ({"geometry": cu.Geometry(entry_block=(3, 3))}, "geometry.entry_block: expected (units, samples)"),
    ({"geometry": cu.Geometry(gemm_tile=10)}, "geometry.gemm_tile: expected an integer from 8 to 128 and a multiple of 4"),
    ({"geometry": cu.Geometry(gemm_k=3)}, "geometry.gemm_k: gemm_k * gemm_tile must be a multiple of"),
    ({"geometry": {"threads": 32}}, "geometry: expected a symbp.codegen.cuda.Geometry"),
])
def test_bad_options(opts, message):
    kw = {"dtype": "float32", **opts}
    with pytest.raises(SymbpError, match=re.escape(message)):
        emit_cuda(derivation("sigmoid_bce"), **kw)


def test_emission_is_deterministic_across_processes(simulated, tmp_path):
    # the subprocess ran with another PYTHONHASHSEED: set iteration order would show here
    assert _values(simulated, "digests") == emitted_digests()
    d = derivation("tanh_softmax_ce")
    k = generate_cuda(d, "float32", out_dir=tmp_path, jit=False)
    before = k.path.stat().st_mtime_ns
    assert generate_cuda(d, "float32", out_dir=tmp_path, jit=False).path.stat().st_mtime_ns == before


def test_generated_module_is_readable():
    src = emit_cuda(derivation("sigmoid_bce"), "float32")
    net = derivation("sigmoid_bce").network
    assert f"sha256 {net.digest}" in src and f"symbp {symbp.__version__}" in src
    # each derived line is tied to its equation, printed from the Derivation
    for comment in ("# layer 1: z1 = W1 a0 + b1", "# a1 = 1/(1 + exp(-z1))   [sigmoid]",
                    "# delta2 = (a2 - y)/B", "# ga1 = W2^T delta2", "# gW1 = sum_s delta1 a0^T"):
        assert comment in src
    assert "np.float32(1.0)" in src and "numpy.exp" not in src and "np.exp" not in src
    compile(src, "cuda_float32.py", "exec")


@pytest.mark.skipif(cu.simulator() or not cu.device_available(), reason="no CUDA GPU")
def test_real_gpu(tmp_path):
    """On a GPU: the same agreement checks, on the device itself."""
    results = run_checks(tmp_path)
    failures = {k: v["error"] for k, v in results.items() if v["error"]}
    assert not failures, failures
    for label, res in results.items():
        if label != "digests":
            assert_check(label, res["values"])


if __name__ == "__main__":
    Path(sys.argv[2]).write_text(json.dumps(run_checks(sys.argv[1]), indent=1))

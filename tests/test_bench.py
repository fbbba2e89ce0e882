"""``symbp bench`` (symbp/bench.py), its hand-written baselines and examples/digits.py.

What is checked: the FLOP count of the roofline, the structure of the report and of the JSON
of a short run on the XOR case (symbp and NumPy; symbp alone when the baselines are not found),
that every implementation agrees with an autograd reference, the command's errors, and that the
digits example trains to >= 95 % test accuracy. Never how fast anything is: speed is measured
by the benchmark, not asserted by tests on a shared machine.
"""
import argparse
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import symbp
from symbp.cli import bench

ROOT = Path(__file__).resolve().parent.parent

# Quick and short: one round of ~10 ms per implementation, no subprocess measurements.
SHORT = ["--quick", "--cases", "xor", "--skip-extra", "--rounds", "1", "--seconds", "0.01"]


@pytest.fixture(scope="module")
def kernels(tmp_path_factory):
    """One kernel directory for the module, so the second run loads Numba's cache."""
    return tmp_path_factory.mktemp("bench-kernels")


@pytest.fixture(scope="module")
def baselines():
    """benchmarks/baselines.py, loaded once: its Numba functions compile once per dtype."""
    module = bench.load_baselines()
    assert module is not None and Path(module.__file__) == ROOT / "benchmarks" / "baselines.py"
    return module


# (sizes, batch, FLOPs counted by hand: forward + weight gradients of every layer, input
# gradients of every layer but the first)
FLOPS = [
    ((2, 3, 1), 4, 2 * 4 * (6 + 3) * 2 + 2 * 4 * 3),
    ((64, 64, 64, 10), 256, 2 * 256 * (4096 + 4096 + 640) * 2 + 2 * 256 * (4096 + 640)),
    ((784, 256, 128, 10), 1024, 2 * 1024 * (200704 + 32768 + 1280) * 2 + 2 * 1024 * (32768 + 1280)),
    ((1024,) * 4, 4096, 8 * 2 * 4096 * 1024 * 1024),
]


def _result(key, speedup, roof):
    case = next(c for c in bench.CASES if c.key == key)
    # the hand-written Numba baseline is faster than every target peer: it is not a target
    return {"key": key, "case": case.label, "dtype": "float32",
            "ms": {"symbp": 1.0, "jax": speedup, "numpy": 2 * speedup, "numba": 0.5},
            "speedup_vs_fastest_peer": 0.5, "fastest_peer": "numba", "roofline_fraction": {"symbp": roof}}


@pytest.mark.parametrize("threads, expected", [
    # one thread: xor >= 10x, mlp64 >= 1.5x, mnist >= 1x and >= 0.85 of the roofline, large >= 0.95
    (1, [False, True, True, True, False]),
    # all cores: at least as fast as the fastest peer in every case
    (None, [True, True, True, True]),
])
def test_speed_targets_depend_on_threads(threads, expected):
    results = [_result("xor", 9.0, 0.01), _result("mlp64", 1.6, 0.5), _result("mnist", 1.1, 0.9),
               _result("large", 1.2, 0.9)]
    got = bench.targets(results, {}, threads)
    assert [met for _, met, _ in got] == expected
    assert all(("one thread" if threads == 1 else "all cores") in what for what, _, _ in got)


@pytest.mark.parametrize("sizes, batch, flops", FLOPS)
def test_gemm_flops(sizes, batch, flops):
    assert bench.gemm_flops(sizes, batch) == flops


def _run_cli(argv):
    """Through add_command, as ``symbp bench`` runs it."""
    ap = argparse.ArgumentParser(prog="symbp")
    bench.add_command(ap.add_subparsers(dest="command", required=True))
    args = ap.parse_args(["bench", *argv])
    return args.fn(args)


def _check_result(r, impls):
    assert r["key"] == "xor" and r["batch"] == 4 and r["dtype"] == "float32"
    assert r["sizes"] == [2, 3, 1] and r["gemm_flops"] == FLOPS[0][2]
    assert sorted(r["ms"]) == sorted(impls)
    for field in ("ms", "min_ms", "roofline_fraction"):
        assert sorted(r[field]) == sorted(impls)
        assert all(v > 0 and np.isfinite(v) for v in r[field].values())
    assert all(len(v) == 1 for v in r["rounds_ms"].values())
    for name, v in r["roofline_fraction"].items():
        assert v == pytest.approx(r["roofline_ms"] / r["ms"][name])
    assert r["errors"] == {}


def test_bench_xor_symbp_and_numpy(tmp_path, kernels, capsys):
    out = tmp_path / "bench.json"
    rc = _run_cli([*SHORT, "--impls", "symbp,numpy", "--json", str(out), "--out", str(kernels)])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    data = json.loads(out.read_text())
    assert {"versions", "args", "load_average", "gemm", "results", "targets", "failures",
            "elapsed_s", "baselines"} <= set(data)
    assert data["failures"] == [] and data["baselines"].endswith("baselines.py")
    assert data["gemm"]["float32"]["gflops"] > 0 and data["gemm"]["float32"]["shape"] == list(bench.GEMM_SHAPE)
    [r] = data["results"]
    _check_result(r, ["symbp", "numpy"])
    assert r["fastest_peer"] == "numpy" and r["fastest_peer_ms"] == r["ms"]["numpy"]
    assert r["speedup_vs_fastest_peer"] == pytest.approx(r["ms"]["numpy"] / r["ms"]["symbp"])
    assert r["vs_fastest_peer"]["numpy"] == pytest.approx(1.0)
    assert r["reference"] == "numpy float64" and set(r["check"]) >= {"symbp", "numpy"}
    assert all(e <= bench.TOL["float32"] for n, e in r["check"].items() if not n.startswith("ref-vs-"))
    # the xor target is judged against the fastest of the target peers run, here NumPy alone
    assert [t["target"].split(":")[0] for t in data["targets"]] == ["xor 2-3-1 float32, all cores"]
    assert data["targets"][0]["measured"].endswith("the speed of numpy")
    # The table on stdout and a progress line per stage on stderr.
    assert "symbp ms" in cap.out and "numpy ms" in cap.out and "fastest peer" in cap.out
    assert "xor 2-3-1 B=4  float32" in cap.out and "fraction of the roofline" in cap.out
    assert "[1/1] xor 2-3-1 B=4 float32" in cap.err and "timing symbp, numpy" in cap.err


def test_bench_without_baselines_times_symbp_alone(tmp_path, kernels, capsys, monkeypatch):
    monkeypatch.setattr(bench, "baseline_dirs", lambda: [tmp_path / "nowhere"])
    out = tmp_path / "alone.json"
    rc = bench.main([*SHORT, "--impls", "symbp,numpy", "--json", str(out), "--out", str(kernels)])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert cap.err.count(bench.BASELINES_HINT) == 1
    data = json.loads(out.read_text())
    assert data["baselines"] is None
    [r] = data["results"]
    _check_result(r, ["symbp"])
    assert r["fastest_peer"] is None and r["speedup_vs_fastest_peer"] is None
    if importlib.util.find_spec("torch"):
        assert r["reference"] == "torch float64" and r["check"]["symbp"] <= bench.TOL["float32"]


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="PyTorch not installed")
def test_bench_times_pytorch_without_the_baselines(tmp_path, kernels, capsys, monkeypatch):
    # an installed wheel has no benchmarks/: PyTorch (and JAX) are peers from the package itself
    monkeypatch.setattr(bench, "baseline_dirs", lambda: [tmp_path / "nowhere"])
    out = tmp_path / "torch.json"
    rc = bench.main([*SHORT, "--impls", "symbp,torch", "--json", str(out), "--out", str(kernels)])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert bench.BASELINES_HINT not in cap.err       # numpy and numba were not asked for
    data = json.loads(out.read_text())
    [r] = data["results"]
    _check_result(r, ["symbp", "torch"])
    assert r["fastest_peer"] == "torch" and r["reference"] == "torch float64"


def test_bench_baselines_path(tmp_path, capsys):
    assert bench.load_baselines(ROOT / "benchmarks").__file__ == str(ROOT / "benchmarks" / "baselines.py")
    assert bench.main([*SHORT, "--baselines", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"--baselines {tmp_path}: no baselines.py there" in err and err.count("\n") == 1


@pytest.mark.parametrize("argv, message", [
    (["--cases", "large", "--dtype", "float64"], "float32 only"),
])
def test_bench_no_case_to_run(argv, message, capsys):
    assert bench.main(argv) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--cases", "nope"], ["--impls", "numpy,tf"], ["--threads", "0"],
                                  ["--rounds", "x"]])
def test_bench_bad_arguments(argv, capsys):
    with pytest.raises(SystemExit) as e:
        bench.main(argv)
    assert e.value.code == 2
    assert "error" in capsys.readouterr().err


# The baselines' hand-written derivatives against PyTorch autograd (an independent reference).
NETS = [
    ((2, 3, 1), ("sigmoid", "sigmoid"), "bce"),
    ((6, 5, 4), ("tanh", "softmax"), "ce"),
    ((6, 5, 4, 3), ("relu", "leaky_relu", "identity"), "mse"),
    ((6, 5, 4), ("softplus", "exp"), "sse"),
]


@pytest.mark.jit
@pytest.mark.parametrize("sizes, acts, loss", NETS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_baselines_agree_with_autograd(sizes, acts, loss, dtype, baselines):
    pytest.importorskip("torch")
    from symbp.verify import torch_gradients
    net = symbp.mlp(list(sizes), list(acts), loss, name="t")
    params, X, Y = bench._make_data(net, 16, dtype, seed=3)
    rows = bench._kink_free_rows(net, params, X)
    X, Y = X[rows], Y[rows]
    ref_loss, ref = torch_gradients(net, params, X, Y)
    tol = bench.TOL[dtype] if dtype == "float32" else 1e-12
    for cls in (baselines.NumpyMLP, baselines.NumbaMLP):
        loss_value, grads = cls(net, dtype).loss_and_grad(params, X, Y)
        assert abs(loss_value - ref_loss) <= tol * abs(ref_loss), cls.label
        assert bench._max_rel_error(grads, ref) <= tol, cls.label
        assert all(g.dtype == np.dtype(dtype) for g in grads.values())


def test_digits_example(tmp_path):
    pytest.importorskip("sklearn")
    plot = tmp_path / "loss.png"
    run = subprocess.run([sys.executable, str(ROOT / "examples" / "digits.py"), "--out", str(tmp_path),
                          "--plot", str(plot)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    lines = run.stdout.splitlines()
    assert sum(line.startswith("epoch ") for line in lines) == 30
    final = float(lines[-1].split()[2])
    assert lines[-1].startswith("test accuracy") and final >= 0.95
    if importlib.util.find_spec("matplotlib"):
        assert plot.read_bytes().startswith(b"\x89PNG")
    else:
        assert "matplotlib not installed" in run.stdout

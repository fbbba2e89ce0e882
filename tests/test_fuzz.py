"""Fuzzing the public face: random expression trees and random TOML mutations.

For every drawn input the whole pipeline runs (parse -> derive -> emit -> write -> import ->
gradients), and exactly one of two outcomes is allowed, within ``BUDGET_S`` seconds:

- a kernel whose gradients agree with central finite differences (where the loss is finite
  there), or, where finite differences cannot resolve them (steep functions), with the
  full-expansion SymPy oracle; or
- a one-line ``SymbpError`` with nothing written into the output directory.

Anything else (another exception, a hang, a wrong gradient, a partial file) fails. The inputs
are drawn from fixed seeds, so a failure is reproducible from its test id. Seeds 0 to 20 N - 1
are drawn of each kind (N = ``SYMBP_FUZZ_N``, default 30): the default run takes the first
``SYMBP_FUZZ_QUICK`` (default 10) of them, the breadth run (``-m slow``, in CI) the rest.
"""
import math
import os
import random
import signal
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

import symbp
from symbp.errors import SymbpError

BUDGET_S = 10.0
N = int(os.environ.get("SYMBP_FUZZ_N", "30"))
QUICK = min(N, int(os.environ.get("SYMBP_FUZZ_QUICK", "10")))     # the default run's share
ROOT = Path(__file__).resolve().parent.parent
SPECS = sorted((ROOT / "examples" / "specs").glob("*.toml"))

UNARY = ("exp", "log", "sqrt", "tanh", "abs", "sigmoid", "relu", "softplus", "sinh", "cosh",
         "sin", "cos", "atan")
BINARY_OPS = ("+", "-", "*", "/", "**")
BINARY_FNS = ("max", "min")
CONSTANTS = ("1", "2", "3", "0.5", "0.1", "10", "100", "1e3", "1e-3", "2.5", "1e308", "10**100")


def random_expression(rng, depth):
    """A random expression string in z over the parser's whitelist, depth <= ``depth``."""
    if depth == 0 or rng.random() < 0.2:
        return "z" if rng.random() < 0.7 else rng.choice(CONSTANTS)
    r = rng.random()
    if r < 0.4:
        return f"{rng.choice(UNARY)}({random_expression(rng, depth - 1)})"
    if r < 0.55:
        a, b = random_expression(rng, depth - 1), random_expression(rng, depth - 1)
        return f"{rng.choice(BINARY_FNS)}({a}, {b})"
    op = rng.choice(BINARY_OPS)
    left = random_expression(rng, depth - 1)
    if op == "**" and rng.random() < 0.8:
        right = rng.choice(("2", "3", "-1", "0.5", "100", "1/3"))
    else:
        right = random_expression(rng, depth - 1)
    return f"({left}) {op} ({right})"


MUTATIONS = ("drop_line", "dup_line", "typo_key", "swap_value", "huge_number", "newline_name",
             "truncate", "insert_bytes", "deep_nesting", "bom", "negative", "float_for_int")
VALUES = ('"sigmoid"', '"softmax"', '"relu"', "0", "-1", "1.5", "true", '"x\\n"', "[1, 2]",
          "{a = 1}", "1000000000", "2e308", '"z * sigmoid(z)"', '"exp(exp(exp(exp(z))))"',
          '"' + "a" * 5000 + '"')


def mutate(rng, text):
    """One random mutation of a spec's text; returns (mutation name, new text or bytes)."""
    lines = text.splitlines()
    kind = rng.choice(MUTATIONS)
    idx = rng.randrange(len(lines))
    if kind == "drop_line":
        del lines[idx]
    elif kind == "dup_line":
        lines.insert(idx, lines[idx])
    elif kind == "typo_key":
        line = lines[idx]
        if "=" in line:
            key, rest = line.split("=", 1)
            key = key.strip()
            if key:
                pos = rng.randrange(len(key))
                key = key[:pos] + key[pos + 1:] if len(key) > 1 else key + "x"
            lines[idx] = f"{key} ={rest}"
    elif kind in ("swap_value", "huge_number", "negative", "float_for_int"):
        cand = [i for i, l in enumerate(lines) if "=" in l and not l.lstrip().startswith("#")]
        if cand:
            idx = rng.choice(cand)
            key = lines[idx].split("=", 1)[0]
            value = {"swap_value": rng.choice(VALUES), "huge_number": "2e308",
                     "negative": "-3", "float_for_int": "2.0"}[kind]
            lines[idx] = f"{key}= {value}"
    elif kind == "newline_name":
        lines = [l.replace('name = "', 'name = "\\n') if l.startswith("name") else l for l in lines]
    elif kind == "truncate":
        return kind, "\n".join(lines)[: rng.randrange(1, len(text))]
    elif kind == "insert_bytes":
        raw = "\n".join(lines).encode()
        pos = rng.randrange(len(raw))
        return kind, raw[:pos] + bytes(rng.randrange(256) for _ in range(3)) + raw[pos:]
    elif kind == "deep_nesting":
        lines.append("deep = " + "[" * 20000 + "]" * 20000)
    elif kind == "bom":
        return kind, b"\xef\xbb\xbf" + "\n".join(lines).encode()
    return kind, "\n".join(lines) + "\n"


@contextmanager
def budget(seconds, what):
    """Fail (rather than hang CI) when ``what`` runs past ``seconds`` (main thread only)."""
    def alarm(signum, frame):
        raise TimeoutError(f"{what}: no answer within {seconds:.0f} s")
    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    start = time.perf_counter()
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert time.perf_counter() - start <= seconds, f"{what}: took over {seconds} s"


def _batch(net, seed):
    rng = np.random.default_rng(seed)
    params = {k: rng.normal(0.0, 0.5, size=s) for k, s in net.param_shapes().items()}
    X = rng.normal(size=(3, net.inputs))
    n = net.sizes[-1]
    if net.loss.name == "ce":
        Y = np.eye(n)[rng.integers(0, n, 3)]
    elif net.loss.name == "bce":
        Y = rng.integers(0, 2, size=(3, n)).astype(float)
    else:
        Y = rng.normal(size=(3, n))
    return params, X, Y


def _gradients_agree(k, net, params, X, Y):
    """True when the kernel's gradients agree with finite differences, or (where differences
    cannot resolve them) with the full-expansion oracle; None when the loss is not finite
    at this point (the function is not defined there, e.g. log of a negative number)."""
    loss, grads = k.loss_and_grad(params, X, Y)
    if not math.isfinite(loss):
        return None
    report = symbp.gradcheck(k, params, X, Y)
    if report.ok:
        return True
    from symbp.verify import oracle_gradients
    try:
        _, ref = oracle_gradients(net, params, X, Y)
    except SymbpError:
        return None         # not real at this point (z**0.5 of a negative z inside a max)
    for key, g in grads.items():
        want = np.asarray(ref[key], dtype=float)
        if not np.all(np.isfinite(want)):
            continue
        if not np.allclose(g, want, rtol=1e-6, atol=1e-9 * max(1.0, float(np.max(np.abs(want))))):
            return False
    return True


def _run(build, out, seed, what):
    """Build, derive, generate (plain Python: broad and quick) and check, within the budget."""
    with budget(BUDGET_S, what):
        try:
            net = build()
            k = symbp.generate(symbp.derive(net), out_dir=out, jit=False)
        except SymbpError as e:
            msg = str(e)
            assert "\n" not in msg and 0 < len(msg) <= 400, f"{what}: not one short line: {msg[:500]!r}"
            written = [p for p in out.rglob("*") if p.is_file()] if out.exists() else []
            assert written == [], f"{what}: {msg}: wrote {written}"
            return "error"
        params, X, Y = _batch(net, seed)
        agree = _gradients_agree(k, net, params, X, Y)
        assert agree is not False, f"{what}: gradients disagree with finite differences and the oracle"
        return "kernel" if agree else "undefined"


@pytest.mark.parametrize("seed", range(QUICK))
def test_fuzz_expression(seed, tmp_path):
    rng = random.Random(seed)
    text = random_expression(rng, rng.randint(1, 6))
    hidden = rng.random() < 0.7
    acts = ["f", "identity"] if hidden else ["tanh", "f"]

    def build():
        return symbp.mlp([2, 3, 1], acts, "mse", name=f"fz{seed}", define={"f": text})
    _run(build, tmp_path / "gen", seed, f"expression {text!r}")


@pytest.mark.parametrize("seed", range(QUICK))
def test_fuzz_toml_mutation(seed, tmp_path):
    rng = random.Random(1000 + seed)
    spec = rng.choice(SPECS)
    kind, text = mutate(rng, spec.read_text())
    path = tmp_path / "spec.toml"
    (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
    _run(lambda: symbp.load(path), tmp_path / "gen", seed, f"{spec.name} ({kind})")


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(QUICK, 20 * N))
def test_fuzz_expression_breadth(seed, tmp_path):
    test_fuzz_expression(seed, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(QUICK, 20 * N))
def test_fuzz_toml_mutation_breadth(seed, tmp_path):
    test_fuzz_toml_mutation(seed, tmp_path)

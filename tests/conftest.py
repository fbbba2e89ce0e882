"""Shared test helpers (``from conftest import ...``; pytest puts tests/ on sys.path):
``random_batch`` (random parameters and a batch that fits a network's loss) and ``quick_sample``
(the quick set's share of a long parameter list; the rest is marked ``slow``), and the
SYMBP_CPU_TIMES report (CPU seconds per test and per file)."""
import os
import resource
from collections import defaultdict

import numpy as np
import pytest


def random_batch(net, batch, seed=0, dtype="float64", scale=0.7):
    """(params, X, Y) for ``net``: W ~ N(0, scale^2 / n_in), b ~ N(0, 0.1^2), X ~ N(0, 1);
    Y one-hot for ce, in {0, 1} for bce, N(0, 1) otherwise. Continuous draws put every
    pre-activation away from ReLU kinks with probability 1. Every value is rounded to float32,
    so the float64 and float32 batches of one seed hold the same numbers (one oracle run serves
    both dtypes)."""
    rng = np.random.default_rng(seed)
    params = {}
    for key, shape in net.param_shapes().items():
        if len(shape) == 2:
            params[key] = rng.normal(0.0, scale / np.sqrt(shape[1]), size=shape)
        else:
            params[key] = rng.normal(0.0, 0.1, size=shape)
    X = rng.normal(size=(batch, net.inputs))
    n_out = net.sizes[-1]
    if net.loss.name == "ce":
        Y = np.eye(n_out)[rng.integers(0, n_out, batch)]
    elif net.loss.name == "bce":
        Y = rng.integers(0, 2, size=(batch, n_out)).astype(float)
    else:
        Y = rng.normal(size=(batch, n_out))

    def cast(a):
        return a.astype(np.float32).astype(dtype)

    return {k: cast(v) for k, v in params.items()}, cast(X), cast(Y)




def quick_sample(cases, *keys, ids=None):
    """``cases`` as pytest.params for a parametrize list: a case stays in the quick (default) set
    when it is the first to bring some value of one of ``keys`` (functions of a case), so the
    quick set holds one case per activation, per loss, per dtype, ...; every other case is marked
    ``slow`` (the breadth run, ``-m slow``, runs them; ``-m ""`` runs all). ``ids``: one per case.
    A case is a tuple of the parametrize arguments (or one value for a single argument)."""
    seen = [set() for _ in keys]
    out = []
    for i, case in enumerate(cases):
        new = False
        for values, key in zip(seen, keys):
            v = key(case)
            if v not in values:
                values.add(v)
                new = True
        args = case if isinstance(case, tuple) else (case,)
        out.append(pytest.param(*args, marks=() if new else (pytest.mark.slow,),
                                id=None if ids is None else ids[i]))
    return out


# --- CPU time per test (SYMBP_CPU_TIMES=N) ---------------------------------------------------
# The machine the tests are timed on is shared, so wall time (--durations) swings with its load;
# CPU time (this process and the subprocesses it waited for) does not. SYMBP_CPU_TIMES=N prints
# the N tests with the most CPU time and the CPU seconds per file. Each phase's time rides on the
# test's user_properties, so the numbers also reach the controller under pytest-xdist.
_CPU_KEY = "cpu_s"


def _cpu_now():
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _timed_phase(item):
    t0 = _cpu_now()
    yield
    item.user_properties.append((_CPU_KEY, _cpu_now() - t0))


pytest_runtest_setup = pytest.hookimpl(wrapper=True)(lambda item: (yield from _timed_phase(item)))
pytest_runtest_call = pytest.hookimpl(wrapper=True)(lambda item: (yield from _timed_phase(item)))
pytest_runtest_teardown = pytest.hookimpl(wrapper=True)(
    lambda item, nextitem: (yield from _timed_phase(item)))

_cpu_by_test = {}
_cpu_by_worker = defaultdict(float)


def pytest_runtest_logreport(report):
    # the teardown report carries the three phases (each report copies the list at its phase)
    if report.when == "teardown":
        s = sum(v for k, v in report.user_properties if k == _CPU_KEY)
        _cpu_by_test[report.nodeid] = s
        gateway = getattr(getattr(report, "node", None), "gateway", None)    # pytest-xdist's worker
        _cpu_by_worker[getattr(gateway, "id", "main")] += s


def pytest_terminal_summary(terminalreporter):
    top = os.environ.get("SYMBP_CPU_TIMES")
    if not top or not _cpu_by_test:
        return
    tr = terminalreporter
    tr.write_sep("=", f"CPU seconds per test (top {int(top)}), this process and its subprocesses")
    for nodeid, s in sorted(_cpu_by_test.items(), key=lambda kv: -kv[1])[:int(top)]:
        tr.write_line(f"{s:8.2f}s  {nodeid}")
    per_file = defaultdict(lambda: [0.0, 0])
    for nodeid, s in _cpu_by_test.items():
        per_file[nodeid.split("::")[0]][0] += s
        per_file[nodeid.split("::")[0]][1] += 1
    tr.write_sep("=", "CPU seconds per file")
    for f, (s, n) in sorted(per_file.items(), key=lambda kv: -kv[1][0]):
        tr.write_line(f"{s:8.1f}s  {n:5d} tests  {f}")
    tr.write_line(f"{sum(_cpu_by_test.values()):8.1f}s  {len(_cpu_by_test):5d} tests  total")
    if len(_cpu_by_worker) > 1:
        tr.write_line("per worker: " + ", ".join(f"{w} {s:.1f}s" for w, s in sorted(_cpu_by_worker.items())))

"""gradcheck can fail at every tolerance it accepts, for MLP and graph kernels.

A real generated kernel (xor MLP, the gated graph; the generated source run as plain Python) is
wrapped so that its gradients are deliberately wrong: one entry changed by a small relative
amount, or one entry's sign flipped. The reported errors are the same numbers at every
tolerance (the noise floor does not depend on tol), a sign flip fails at every accepted
tolerance, a small relative error fails at every tolerance below it, and the honest kernel
fails a tolerance tighter than float64 can resolve. Tolerances outside (0, 1) are refused by
gradcheck and by both `check` commands, before anything is written.
"""
from pathlib import Path

import numpy as np
import pytest

import symbp
from symbp.cli.commands import main
from symbp.errors import InputError
from symbp.model.graph import load_graph
from symbp.derivation.graph import derive_graph
from symbp.codegen.graph_emit import generate_graph
from symbp.verify import gradcheck, sample

from conftest import random_batch
from test_graph_spec import run_cli

ROOT = Path(__file__).resolve().parent.parent
XOR = ROOT / "examples" / "specs" / "xor.toml"
GATED = ROOT / "examples" / "specs" / "graphs" / "gated.toml"
# every decade the check may be asked for, from far below float64's reach to just under 1
TOLS = [1e-15, 1e-12, 1e-10, 1e-9, 1e-8, 1e-6, 1e-4, 1e-2, 0.1, 0.5, 0.9]
# a relative error 100 times the disagreement of an honest float64 kernel with the differences
SMALL = 1e-7


class Wrong:
    """A kernel whose gradient ``key`` has its largest-magnitude entry replaced by ``change(v)``."""

    def __init__(self, k, key, change):
        self._k, self._key, self._change = k, key, change
        for attr in ("network", "derivation", "dtype", "path", "target", "jit"):
            setattr(self, attr, getattr(k, attr))
        if hasattr(k, "graph"):
            self.graph = k.graph

    def _alter(self, grads):
        grads = {key: v.copy() for key, v in grads.items()}
        g = grads[self._key]
        idx = np.unravel_index(int(np.argmax(np.abs(g))), g.shape)
        g[idx] = self._change(g[idx])
        return grads

    def loss_and_grad(self, *args):
        loss, grads = self._k.loss_and_grad(*args)
        return loss, self._alter(grads)

    def input_grad(self, *args):
        return self._k.input_grad(*args)

    def input_grads(self, *args):
        return self._k.input_grads(*args)


@pytest.fixture(scope="module")
def mlp(tmp_path_factory):
    net = symbp.load(XOR)
    k = symbp.generate(symbp.derive(net), out_dir=tmp_path_factory.mktemp("tol_mlp"), jit=False)
    p, X, Y = random_batch(net, 4, seed=1)
    return k, lambda kern, tol: gradcheck(kern, p, X, Y, tol=tol)


@pytest.fixture(scope="module")
def graph_case(tmp_path_factory):
    k = generate_graph(derive_graph(load_graph(GATED)), out_dir=tmp_path_factory.mktemp("tol_graph"), jit=False)
    rng = np.random.default_rng(3)
    p = {key: v + rng.normal(0, 0.1, v.shape) for key, v in k.init_params(1).items()}
    inputs, target = sample(k.graph, 4, 2, k.dtype)
    return k, lambda kern, tol: gradcheck(kern, p, inputs, target, tol=tol)


@pytest.fixture(params=["mlp", "graph"])
def checked(request):
    return request.getfixturevalue("mlp" if request.param == "mlp" else "graph_case")


def first_weight(k):
    return next(key for key, shape in k.param_shapes.items() if len(shape) == 2)


def test_errors_do_not_depend_on_tol(checked):
    k, check = checked
    reports = [check(k, tol) for tol in TOLS]
    assert all(r.errors == reports[0].errors for r in reports)
    assert all(r.floor == reports[0].floor for r in reports)
    assert reports[TOLS.index(1e-6)].ok, str(reports[TOLS.index(1e-6)])
    # an honest float64 kernel still differs from central differences by ~1e-10 relative: a
    # tolerance far below that is a check it must fail, not one made easier
    assert not reports[0].ok and reports[0].max_error > 1e-15


def test_sign_flip_fails_at_every_tolerance(checked):
    k, check = checked
    bad = Wrong(k, first_weight(k), lambda v: -v)
    for tol in TOLS:
        report = check(bad, tol)
        assert not report.ok, f"tol {tol}: {report}"
        assert report.max_error == pytest.approx(2.0, rel=1e-3)     # |g - (-g)| / |g|


@pytest.mark.parametrize("sign", [1, -1])
def test_small_relative_error_fails_at_every_tolerance_below_it(checked, sign):
    k, check = checked
    key = first_weight(k)
    bad = Wrong(k, key, lambda v: v * (1 + sign * SMALL))
    for tol in TOLS:
        report = check(bad, tol)
        assert report.errors[key] == pytest.approx(SMALL, rel=0.1)
        assert report.ok == (tol > SMALL), f"tol {tol}: {report}"


@pytest.mark.parametrize("tol", [0, 0.0, -1e-6, 1.0, 2.0, float("inf"), float("nan"), True, "1e-6"])
def test_gradcheck_refuses_tolerances_it_cannot_fail_at(checked, tol):
    k, check = checked
    with pytest.raises(InputError, match=r"tol: expected a relative tolerance in \(0, 1\)") as e:
        check(k, tol)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("tol", ["0", "-1e-6", "1", "2", "inf", "nan", "1e400"])
@pytest.mark.parametrize("command", ["check", "graph check"])
@pytest.mark.parametrize("spec", [XOR, GATED], ids=["mlp", "graph"])
def test_cli_check_refuses_bad_tol_before_writing(tmp_path, capsys, command, spec, tol):
    argv = command.split() + [str(spec), "--out", str(tmp_path / "gen"), "--no-jit", f"--tol={tol}"]
    assert run_cli(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("symbp: error: --tol: expected a relative tolerance in (0, 1)")
    assert err.count("\n") == 1
    assert not (tmp_path / "gen").exists()


def test_cli_check_fails_an_honest_kernel_at_an_unreachable_tol(tmp_path, capsys):
    argv = ["check", str(XOR), "--out", str(tmp_path), "--no-jit"]
    assert main(argv + ["--tol", "1e-6"]) == 0
    assert main(argv + ["--tol", "1e-16"]) == 1
    assert "FAILED" in capsys.readouterr().out


@pytest.mark.parametrize("kw,message", [
    ({"eps": 0}, "eps: expected a positive number"),
    ({"eps": float("inf")}, "eps: expected a positive number"),
    ({"eps": True}, "eps: expected a positive number"),
    ({"max_entries": 0}, "max_entries: expected an integer >= 1"),
])
def test_gradcheck_checks_its_options_for_both_kinds(checked, kw, message):
    k, _ = checked
    X, Y = sample(k, 2, 0, k.dtype)
    with pytest.raises(InputError, match=f"^gradcheck: {message}"):
        gradcheck(k, k.init_params(0), X, Y, **kw)

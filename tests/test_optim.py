"""Optimizers fused into the generated step (symbp.optim, train_step_<kind>, Kernel.bind with an
optimizer): each one's 100-step trajectory equals torch.optim's to float64 rounding (loss and
parameters, rtol 1e-10), with weight decay, momentum, Nesterov, dampening and clipping by global
norm (torch.nn.utils.clip_grad_norm_); a bad optimizer or hyperparameter is one InputError line.
The kernels run their generated source as plain Python (jit=False), one compiled case."""
from pathlib import Path

import numpy as np
import pytest

import symbp
from symbp import InputError
from symbp.model.optim import RULES, optimizer

ROOT = Path(__file__).resolve().parent.parent
SIZES, ACTS, LOSS = [3, 5, 2], ["tanh", "softmax"], "ce"

# (label, symbp optimizer, torch optimizer name and keywords, max_grad_norm)
CASES = [
    ("sgd", symbp.SGD(lr=0.2), ("SGD", {"lr": 0.2}), None),
    ("sgd-momentum-wd", symbp.SGD(lr=0.1, momentum=0.9, weight_decay=0.01),
     ("SGD", {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.01}), None),
    ("sgd-nesterov", symbp.SGD(lr=0.1, momentum=0.8, nesterov=True),
     ("SGD", {"lr": 0.1, "momentum": 0.8, "nesterov": True}), None),
    ("sgd-dampening-clip", symbp.SGD(lr=0.1, momentum=0.9, dampening=0.3, max_grad_norm=0.1),
     ("SGD", {"lr": 0.1, "momentum": 0.9, "dampening": 0.3}), 0.1),
    ("adam", symbp.Adam(lr=0.01), ("Adam", {"lr": 0.01}), None),
    ("adam-wd-betas", symbp.Adam(lr=0.02, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1),
     ("Adam", {"lr": 0.02, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.1}), None),
    ("adam-clip", symbp.Adam(lr=0.01, max_grad_norm=0.05), ("Adam", {"lr": 0.01}), 0.05),
    ("adamw", symbp.AdamW(lr=0.01), ("AdamW", {"lr": 0.01}), None),
    ("adamw-wd", symbp.AdamW(lr=0.05, weight_decay=0.2), ("AdamW", {"lr": 0.05, "weight_decay": 0.2}), None),
]


@pytest.fixture(scope="module")
def kernel_py(tmp_path_factory):
    net = symbp.mlp(SIZES, ACTS, LOSS, name="optim_py")
    return symbp.generate(symbp.derive(net), out_dir=tmp_path_factory.mktemp("optim"), jit=False)


def data(seed=0, B=6):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(B, SIZES[0])), np.eye(SIZES[-1])[rng.integers(0, SIZES[-1], B)]


def torch_trajectory(p0, X, Y, torch_opt, max_norm, steps):
    """(losses, parameters after each step) of the same network and optimizer in PyTorch."""
    torch = pytest.importorskip("torch")
    name, kw = torch_opt
    tp = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in p0.items()}
    opt = getattr(torch.optim, name)(list(tp.values()), **kw)
    Xt, yt = torch.tensor(X), torch.tensor(Y.argmax(1))
    losses, params = [], []
    for _ in range(steps):
        opt.zero_grad()
        a1 = torch.tanh(Xt @ tp["W1"].T + tp["b1"])
        loss = torch.nn.functional.cross_entropy(a1 @ tp["W2"].T + tp["b2"], yt)
        loss.backward()
        if max_norm is not None:
            torch.nn.utils.clip_grad_norm_(list(tp.values()), max_norm)
        opt.step()
        losses.append(loss.item())
        params.append({k: v.detach().numpy().copy() for k, v in tp.items()})
    return losses, params


@pytest.mark.parametrize("label,opt,torch_opt,max_norm", CASES, ids=[c[0] for c in CASES])
def test_trajectory_equals_torch_optim(kernel_py, label, opt, torch_opt, max_norm):
    X, Y = data()
    p0 = kernel_py.init_params(1)
    losses, params = torch_trajectory(p0, X, Y, torch_opt, max_norm, 100)
    step = kernel_py.bind(p0, X, Y, opt)
    for i in range(100):
        loss = step()
        assert loss == pytest.approx(losses[i], rel=1e-10, abs=1e-14), i
        for key in p0:
            np.testing.assert_allclose(step.params[key], params[i][key], rtol=1e-10, atol=1e-13,
                                       err_msg=f"{label} step {i + 1} {key}")
    assert step.steps == 100
    # the trajectory moved: not a no-op compared with the start
    assert max(float(np.max(np.abs(step.params[k] - p0[k]))) for k in p0) > 1e-3


@pytest.mark.jit
def test_compiled_adam_equals_torch_and_stays_in_float32(tmp_path):
    net = symbp.mlp(SIZES, ACTS, LOSS, name="optim_jit")
    k = symbp.generate(symbp.derive(net), out_dir=tmp_path, jit=True)
    X, Y = data(3)
    p0 = k.init_params(2)
    label, opt, torch_opt, max_norm = CASES[6]      # Adam with clipping
    losses, params = torch_trajectory(p0, X, Y, torch_opt, max_norm, 100)
    step = k.bind(p0, X, Y, opt)
    for i in range(100):
        assert step() == pytest.approx(losses[i], rel=1e-10, abs=1e-14)
    for key in p0:
        np.testing.assert_allclose(step.params[key], params[-1][key], rtol=1e-10, atol=1e-13)
    # float32, compiled: the update lines type-check in float32 (the Piecewise of SGD too) and
    # follow the float64 trajectory to float32 rounding
    k32 = symbp.generate(symbp.derive(net), dtype="float32", out_dir=tmp_path, jit=True)
    for opt in (symbp.AdamW(lr=0.01), symbp.SGD(lr=0.1, momentum=0.9, nesterov=True, max_grad_norm=0.5)):
        s64 = k.bind(p0, X, Y, opt)
        s32 = k32.bind({key: v.astype(np.float32) for key, v in p0.items()}, X.astype(np.float32),
                       Y.astype(np.float32), opt)
        for _ in range(20):
            assert s32() == pytest.approx(s64(), rel=1e-4)
        assert s32.theta.dtype == s32.state.dtype == np.float32
        np.testing.assert_allclose(s32.theta, s64.theta, rtol=1e-3, atol=1e-4)


def test_the_fused_step_is_generated_from_the_rule_table(kernel_py):
    """One train_step_<kind> per rule, whose docstring lists the rule's assignments; the state
    and hyper arrays of a bound step are laid out as the rule says."""
    src = Path(kernel_py.path).read_text()
    X, Y = data()
    for kind, rule in RULES.items():
        assert f"def train_step_{kind}(v_x, v_y, theta, gtheta, work, state, hyper):" in src
        step = kernel_py.bind(kernel_py.init_params(0), X, Y, optimizer(kind))
        assert step.state.shape == (len(rule.state) * step.theta.size,)
        assert step.hyper.shape == (len(rule.hyper) + 2,) and step.hyper[-1] == 0
    assert "state_m[i] = beta1*state_m[i]" in src


def test_defaults_are_pytorchs():
    assert symbp.SGD().hyper == {"lr": 1e-3, "momentum": 0.0, "dampening": 0.0, "weight_decay": 0.0,
                                 "nesterov": False}
    assert symbp.Adam().hyper == {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0}
    assert symbp.AdamW().hyper["weight_decay"] == 1e-2
    assert optimizer(("adam", {"lr": 0.5})).hyper["lr"] == 0.5
    assert isinstance(optimizer("AdamW"), symbp.AdamW)
    assert symbp.Adam().max_grad_norm is None and np.isinf(symbp.Adam().hyper_array()[-2])


BAD = [
    ("unknown name", lambda: optimizer("rmsprop"), "optimizer: expected symbp.SGD(...), symbp.Adam(...)"),
    ("not an optimizer", lambda: optimizer(0.1), "optimizer: expected symbp.SGD(...)"),
    ("unknown hyperparameter", lambda: symbp.Adam(lr=0.1, beta1=0.9),
     "optimizer: Adam: unknown hyperparameter 'beta1': expected some of lr, betas, eps, weight_decay, max_grad_norm"),
    ("typo in pair", lambda: optimizer(("sgd", {"momentun": 0.9})), "optimizer: SGD: unknown hyperparameter 'momentun'"),
    ("negative lr", lambda: symbp.SGD(lr=-0.1), "optimizer: SGD: lr: expected a finite learning rate >= 0"),
    ("nan lr", lambda: symbp.Adam(lr=float("nan")), "optimizer: Adam: lr: expected a finite learning rate >= 0"),
    ("string lr", lambda: symbp.Adam(lr="0.1"), "optimizer: Adam: lr: expected a finite learning rate >= 0"),
    ("beta 1", lambda: symbp.Adam(betas=(1.0, 0.999)), "optimizer: Adam: betas: expected two numbers in [0, 1), got 1.0"),
    ("beta negative", lambda: symbp.AdamW(betas=(0.9, -0.1)), "optimizer: AdamW: betas: expected two numbers in [0, 1)"),
    ("betas one number", lambda: symbp.Adam(betas=0.9), "optimizer: Adam: betas: expected two numbers in [0, 1), got 0.9"),
    ("negative eps", lambda: symbp.Adam(eps=-1e-8), "optimizer: Adam: eps: expected a finite number >= 0"),
    ("negative momentum", lambda: symbp.SGD(momentum=-0.5), "optimizer: SGD: momentum: expected a finite number >= 0"),
    ("negative weight decay", lambda: symbp.AdamW(weight_decay=-1), "optimizer: AdamW: weight_decay: expected"),
    ("dampening", lambda: symbp.SGD(dampening=1.5), "optimizer: SGD: dampening: expected a number in [0, 1]"),
    ("nesterov no momentum", lambda: symbp.SGD(nesterov=True), "optimizer: SGD: nesterov: needs momentum > 0"),
    ("nesterov not bool", lambda: symbp.SGD(momentum=0.9, nesterov=1), "optimizer: SGD: nesterov: expected True or False"),
    ("clip zero", lambda: symbp.Adam(max_grad_norm=0), "optimizer: Adam: max_grad_norm: expected a finite number > 0"),
]


@pytest.mark.parametrize("label,make,message", BAD, ids=[b[0] for b in BAD])
def test_bad_optimizer_is_one_input_error_line(label, make, message):
    with pytest.raises(InputError) as e:
        make()
    assert str(e.value).startswith(message), str(e.value)
    assert "\n" not in str(e.value)


def test_bind_with_a_bad_optimizer_changes_nothing(kernel_py):
    X, Y = data()
    p = kernel_py.init_params(0)
    before = {k: v.copy() for k, v in p.items()}
    with pytest.raises(InputError, match="^optimizer: expected"):
        kernel_py.bind(p, X, Y, "adagrad")
    assert all(np.array_equal(p[k], before[k]) for k in p)

"""symbp.train: mini-batch training with a fused optimizer step; the loss history it returns is
the batch losses' weighted mean per epoch; the same seed gives the same run and a manual loop of
bound steps over the same batches gives the same numbers; plain SGD (``lr=``, the older spelling)
is the kernel's sgd_step; a progress line on stderr when asked; bad input is one InputError
line and leaves the parameters untouched. Plain Python kernels (jit=False)."""
from pathlib import Path

import numpy as np
import pytest

import symbp
from symbp import InputError

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def k(tmp_path_factory):
    net = symbp.mlp([1, 6, 1], ["tanh", "identity"], "mse", name="train_py")
    return symbp.generate(symbp.derive(net), out_dir=tmp_path_factory.mktemp("train"), jit=False)


def data(n=12, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, size=(n, 1))
    return x, x ** 2


def copy(p):
    return {key: v.copy() for key, v in p.items()}


def test_adam_trains_in_place_and_returns_the_history(k):
    X, Y = data()
    p = k.init_params(0)
    start = copy(p)
    history = symbp.train(k, p, X, Y, optimizer=symbp.Adam(lr=0.05), epochs=60, batch_size=4, seed=1)
    assert len(history) == 60 and all(isinstance(h, float) for h in history)
    assert history[-1] < 0.25 * history[0]
    assert history[0] == pytest.approx(k.loss(start, X, Y), rel=0.5)
    # the parameters were trained in place, and the final loss is below the last epoch's mean
    assert not np.array_equal(p["W1"], start["W1"])
    assert k.loss(p, X, Y) < history[-1] * 1.5


def test_a_manual_loop_of_bound_steps_gives_the_same_numbers(k):
    X, Y = data()
    p = k.init_params(0)
    opt = symbp.SGD(lr=0.1, momentum=0.9)
    manual = copy(p)
    step = k.bind(manual, X[:5], Y[:5], opt)
    expect = []
    for _ in range(3):
        total = 0.0
        for s in range(0, 12, 5):      # batches of 5, 5 and 2 rows, in order
            step.rebatch(X[s:s + 5], Y[s:s + 5])
            total += step() * len(X[s:s + 5])
        expect.append(total / 12)
    step.write_back(manual)
    got = symbp.train(k, p, X, Y, optimizer=opt, epochs=3, batch_size=5, shuffle=False)
    assert got == pytest.approx(expect, rel=1e-13)
    for key in p:
        np.testing.assert_allclose(p[key], manual[key], rtol=1e-13, atol=1e-15)


def test_shuffling_follows_the_seed(k):
    X, Y = data()
    runs = {}
    for seed in (3, 3, 4):
        p = k.init_params(0)
        runs.setdefault(seed, []).append((symbp.train(k, p, X, Y, optimizer=("adam", {"lr": 0.01}), epochs=4,
                                                      batch_size=3, seed=seed), p))
    (h1, p1), (h2, p2) = runs[3]
    assert h1 == h2 and all(np.array_equal(p1[key], p2[key]) for key in p1)
    assert runs[4][0][0] != h1


def test_plain_sgd_is_the_kernels_sgd_step(k):
    """lr= (the older spelling) and SGD without momentum, decay or clipping: the kernel's own
    sgd_step on the caller's arrays, batch after batch."""
    X, Y = data()
    p, q = k.init_params(0), k.init_params(0)
    history = symbp.train(k, p, X, Y, lr=0.1, epochs=2, batch_size=6, shuffle=False)
    expect = []
    for _ in range(2):
        expect.append((k.sgd_step(q, X[:6], Y[:6], 0.1) + k.sgd_step(q, X[6:], Y[6:], 0.1)) / 2)
    assert history == pytest.approx(expect, rel=1e-14)
    assert all(np.array_equal(p[key], q[key]) for key in p)
    assert symbp.train(k, k.init_params(0), X, Y, optimizer=symbp.SGD(lr=0.1), epochs=2, batch_size=6,
                       shuffle=False) == history


def test_progress_line_on_stderr(k, capsys, monkeypatch):
    import builtins
    real_import = builtins.__import__

    def no_tqdm(name, *args, **kw):      # the plain line, whether or not tqdm is installed
        if name == "tqdm":
            raise ImportError(name)
        return real_import(name, *args, **kw)

    monkeypatch.setattr(builtins, "__import__", no_tqdm)
    X, Y = data()
    symbp.train(k, k.init_params(0), X, Y, optimizer=symbp.Adam(), epochs=3, progress=True)
    err = capsys.readouterr().err
    assert "symbp train: epoch 3/3  loss " in err and err.endswith("\n")
    symbp.train(k, k.init_params(0), X, Y, optimizer=symbp.Adam(), epochs=3, progress=False)
    assert capsys.readouterr().err == ""


X0, Y0 = data()

# (label, keyword arguments over the defaults, message start)
BAD = [
    ("batch larger than data", {"batch_size": 13}, "train: batch_size: 13 is larger than the data (12 rows): use at most 12"),
    ("batch zero", {"batch_size": 0}, "train: batch_size: expected a whole number of rows >= 1"),
    ("batch float", {"batch_size": 2.5}, "train: batch_size: expected a whole number of rows >= 1"),
    ("epochs zero", {"epochs": 0}, "train: epochs: expected a whole number of epochs >= 1"),
    ("unknown optimizer", {"optimizer": "rmsprop"}, "optimizer: expected symbp.SGD(...), symbp.Adam(...)"),
    ("unknown hyperparameter", {"optimizer": ("adam", {"momentum": 0.9})}, "optimizer: Adam: unknown hyperparameter 'momentum'"),
    ("negative lr", {"optimizer": None, "lr": -0.1}, "optimizer: SGD: lr: expected a finite learning rate >= 0"),
    ("no optimizer", {"optimizer": None}, "train: optimizer: expected one, e.g. optimizer=symbp.Adam(lr=1e-3)"),
    ("both", {"lr": 0.1}, "train: lr: give the learning rate inside the optimizer"),
    ("shuffle", {"shuffle": "yes"}, "train: shuffle: expected True or False"),
    ("seed", {"seed": -1}, "seed: expected a non-negative integer"),
    ("X shape", {"X": X0[:, [0, 0]]}, "X: expected shape (12, 1)"),
    ("Y rows", {"Y": Y0[:5]}, "Y: expected shape (12, 1)"),
    ("params", {"params": "W1"}, "params: expected a dict with keys W1, b1, W2, b2"),
]


@pytest.mark.parametrize("optimizer", [symbp.Adam(lr=0.1), symbp.SGD(lr=0.1)], ids=["fused", "sgd_step"])
@pytest.mark.parametrize("label,kw,message", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_one_line_and_changes_nothing(k, optimizer, label, kw, message):
    p = k.init_params(0)
    before = copy(p)
    args = {"params": p, "X": X0, "Y": Y0, "optimizer": optimizer, "epochs": 2, "batch_size": 4, **kw}
    with pytest.raises(InputError) as e:
        symbp.train(k, args.pop("params"), args.pop("X"), args.pop("Y"), **args)
    assert str(e.value).startswith(message), str(e.value)
    assert "\n" not in str(e.value)
    assert all(np.array_equal(p[key], before[key]) for key in p)


@pytest.mark.parametrize("optimizer", [symbp.Adam(lr=0.1), symbp.SGD(lr=0.1)], ids=["fused", "sgd_step"])
def test_read_only_parameters_are_refused_before_any_step(k, optimizer):
    p = k.init_params(0)
    p["W2"].flags.writeable = False
    before = copy(p)
    with pytest.raises(InputError, match=r"^params\['W2'\]: .* writable array"):
        symbp.train(k, p, X0, Y0, optimizer=optimizer, epochs=2)
    assert all(np.array_equal(p[key], before[key]) for key in p)


@pytest.mark.parametrize("optimizer", [symbp.Adam(), symbp.SGD(lr=0.1)], ids=["fused", "sgd_step"])
def test_train_needs_an_mlp_kernel(tmp_path, optimizer):
    from symbp.codegen.graph_emit import generate_graph
    from symbp.model.graph import load_graph
    from symbp.derivation.graph import derive_graph
    g = generate_graph(derive_graph(load_graph(ROOT / "examples" / "specs" / "graphs" / "gated.toml")),
                       out_dir=tmp_path, jit=False)
    with pytest.raises(InputError, match=r"^train: kernel: expected the Kernel of an MLP .* got GraphKernel; "):
        symbp.train(g, g.init_params(0), {"x": np.zeros((4, 3))}, np.zeros((4, 2)), optimizer=optimizer)


def test_a_fused_optimizer_needs_a_cpu_kernel(tmp_path):
    from symbp.codegen.cuda_kernel import generate_cuda
    k = generate_cuda(symbp.derive(symbp.mlp([2, 3, 1], ["sigmoid", "sigmoid"], "bce", name="train_cuda")),
                      "float64", out_dir=tmp_path, jit=False)
    X, Y = np.zeros((4, 2)), np.zeros((4, 1))
    with pytest.raises(InputError, match=r"^train: optimizer: Adam\(.*\) runs as a fused step of an MLP kernel on the CPU"):
        symbp.train(k, k.init_params(0), X, Y, optimizer=symbp.Adam())

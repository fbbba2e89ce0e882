"""Every public method of the MLP Kernel, the GraphKernel and the CudaKernel refuses a bad
argument with one InputError line naming it, before any compiled code (or device) runs: a None
target, lists, wrong dtype (bool, int, float32), wrong shape, empty batches, params that are not
a dict or have missing/unexpected keys (of any type), read-only parameters and a non-finite or
non-scalar lr for sgd_step, a bad seed for init_params. Non-contiguous inputs work (copied).

The kernels run their generated source as plain Python (jit=False): the checks are the same
Python code in front of the compiled entry points, and no compile is needed. The CUDA kernel is
written without a device (jit=False): a call that passes the checks reaches the "no GPU" error,
so an InputError proves the check ran first.
"""
from pathlib import Path

import numpy as np
import pytest

import symbp
from symbp.codegen.cuda_kernel import generate_cuda
from symbp.codegen.graph_emit import generate_graph
from symbp.errors import InputError, SymbpError
from symbp.model.graph import load_graph
from symbp.derivation.graph import derive_graph

ROOT = Path(__file__).resolve().parent.parent
XOR = ROOT / "examples" / "specs" / "xor.toml"
GATED = ROOT / "examples" / "specs" / "graphs" / "gated.toml"
B = 4


class Face:
    """One kernel kind behind one calling convention: call(method, p, X, Y, lr)."""

    def __init__(self, kind, k, X, Y, xname, yname):
        self.kind, self.k, self.X, self.Y, self.xname, self.yname = kind, k, X, Y, xname, yname

    def params(self):
        return {key: v + 0.1 for key, v in self.k.init_params(0).items()}

    def call(self, method, p, X, Y, lr=0.1):
        k = self.k
        if method == "forward":
            return k.forward(p, X)
        if method == "sgd_step":
            return k.sgd_step(p, X, Y, lr)
        if method == "input_grad":
            return (k.input_grads if self.kind == "graph" else k.input_grad)(p, X, Y)
        return getattr(k, method)(p, X, Y)


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    out = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    mlp = symbp.generate(symbp.derive(symbp.load(XOR)), out_dir=out, jit=False)
    graph = generate_graph(derive_graph(load_graph(GATED)), out_dir=out, jit=False)
    cuda = generate_cuda(symbp.derive(symbp.load(XOR)), "float64", out_dir=out, jit=False)
    xy = rng.normal(size=(B, 2)), rng.integers(0, 2, (B, 1)).astype(float)
    gx, gt = rng.normal(size=(B, 3)), np.eye(2)[rng.integers(0, 2, B)]
    return {"mlp": Face("mlp", mlp, *xy, "X", "Y"),
            "graph": Face("graph", graph, gx, gt, "inputs['x']", "target"),
            "cuda": Face("cuda", cuda, *xy, "X", "Y")}


KINDS = ["mlp", "graph", "cuda"]
WITH_Y = ["loss_and_grad", "loss", "input_grad", "sgd_step", "bind"]
ALL = ["forward"] + WITH_Y


def first(p):
    return next(iter(p))


# (label, methods, mutate(face, p, X, Y) -> (p, X, Y), message with {x}, {y}, {p} placeholders)
BAD = [
    ("Y None", WITH_Y, lambda f, p, X, Y: (p, X, None), "{y}: expected an array of shape (4, {yw}) and dtype float64, got None"),
    ("Y list", WITH_Y, lambda f, p, X, Y: (p, X, Y.tolist()), "{y}: expected a numpy"),
    ("Y bool", WITH_Y, lambda f, p, X, Y: (p, X, Y.astype(bool)), "{y}: expected dtype float64"),
    ("Y rows", WITH_Y, lambda f, p, X, Y: (p, X, Y[:2]), "{y}: expected shape (4, {yw})"),
    ("X None", ALL, lambda f, p, X, Y: (p, None, Y), "{x}: expected an array of shape (batch, {xw}), got NoneType"),
    ("X list", ALL, lambda f, p, X, Y: (p, X.tolist(), Y), "{x}: expected an array of shape (batch, {xw}), got list"),
    ("X bool", ALL, lambda f, p, X, Y: (p, X > 0, Y), "{x}: expected dtype float64"),
    ("X int", ALL, lambda f, p, X, Y: (p, X.astype(np.int64), Y), "{x}: expected dtype float64"),
    ("X float32", ALL, lambda f, p, X, Y: (p, X.astype(np.float32), Y), "{x}: expected dtype float64"),
    ("X 1-d", ALL, lambda f, p, X, Y: (p, X[0], Y), "{x}: expected an array of shape (batch, {xw})"),
    ("X 3-d", ALL, lambda f, p, X, Y: (p, X[None], Y), "{x}: expected an array of shape (batch, {xw})"),
    ("X columns", ALL, lambda f, p, X, Y: (p, X[:, :1], Y), "{x}: expected shape (4, {xw})"),
    ("0 rows", ALL, lambda f, p, X, Y: (p, X[:0], Y[:0]), "{x}: expected at least one row"),
    ("params list", ALL, lambda f, p, X, Y: (list(p.values()), X, Y), "params: expected a dict with keys"),
    ("params None", ALL, lambda f, p, X, Y: (None, X, Y), "params: expected a dict with keys"),
    ("missing key", ALL, lambda f, p, X, Y: ({k: v for k, v in p.items() if k != first(p)}, X, Y),
     "params: missing ['{p}'], unexpected nothing"),
    # keys of mixed types: once a TypeError from sorting them
    ("extra keys", ALL, lambda f, p, X, Y: ({**p, 7: 0, "zz": 1}, X, Y), "params: missing nothing, unexpected [7, 'zz']"),
    ("param list", ALL, lambda f, p, X, Y: ({**p, first(p): p[first(p)].tolist()}, X, Y), "params['{p}']: expected a numpy"),
    ("param bool", ALL, lambda f, p, X, Y: ({**p, first(p): p[first(p)] > 0}, X, Y), "params['{p}']: expected dtype float64"),
    ("param shape", ALL, lambda f, p, X, Y: ({**p, first(p): p[first(p)].T.copy()}, X, Y), "params['{p}']: expected shape"),
]


# a graph kernel's inputs are a dict (or one array for a one-input graph): anything else is
# refused as a whole
GRAPH_INPUTS = "inputs: expected a dict with keys x (or one array), got "


def fill(face, message):
    k = face.k
    if face.kind == "graph" and message.startswith("{x}: expected an array of shape (batch, {xw}), got "):
        return GRAPH_INPUTS
    yw = face.Y.shape[1]
    xw = face.X.shape[1]
    return message.format(x=face.xname, y=face.yname, p=first(k.param_shapes), xw=xw, yw=yw)


CASES = [(kind, label, method, mutate, msg) for kind in KINDS for label, methods, mutate, msg in BAD
         for method in methods if not (kind == "graph" and method == "bind")]


@pytest.mark.parametrize("kind,label,method,mutate,message", CASES,
                         ids=[f"{c[0]}-{c[2]}-{c[1]}" for c in CASES])
def test_bad_argument_is_one_input_error_line(faces, kind, label, method, mutate, message):
    face = faces[kind]
    p, X, Y = mutate(face, face.params(), face.X, face.Y)
    with pytest.raises(InputError) as e:
        face.call(method, p, X, Y)
    assert str(e.value).startswith(fill(face, message)), str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("lr", [np.array([0.1, 0.2]), np.array([0.1]), np.ones((2, 2)), float("nan"),
                                float("inf"), -float("inf"), None, "0.1", True, [0.1], 1 + 2j],
                         ids=["array2", "array1", "matrix", "nan", "inf", "-inf", "None", "str", "bool",
                              "list", "complex"])
@pytest.mark.parametrize("kind", KINDS)
def test_sgd_step_refuses_a_bad_lr_and_leaves_params_alone(faces, kind, lr):
    face = faces[kind]
    p = face.params()
    before = {k: v.copy() for k, v in p.items()}
    with pytest.raises(InputError, match=r"^lr: expected one finite real number \(in float64\), got ") as e:
        face.call("sgd_step", p, face.X, face.Y, lr)
    assert "\n" not in str(e.value)
    assert all(np.array_equal(p[k], before[k]) for k in p)


@pytest.mark.parametrize("kind", KINDS)
def test_sgd_step_refuses_read_only_and_non_contiguous_params(faces, kind):
    face = faces[kind]
    p = face.params()
    key = first(p)
    p[key].flags.writeable = False
    with pytest.raises(InputError, match=rf"^params\['{key}'\]: sgd_step updates in place and needs a "
                                         r"writable array \(this one is read-only\)$"):
        face.call("sgd_step", p, face.X, face.Y)
    p = face.params()
    p[key] = np.asfortranarray(p[key])      # a copy would be updated, not the caller's array
    assert not p[key].flags.c_contiguous
    with pytest.raises(InputError, match=rf"^params\['{key}'\]: sgd_step updates in place and needs a C-contiguous"):
        face.call("sgd_step", p, face.X, face.Y)


@pytest.mark.parametrize("kind", ["mlp", "graph"])
def test_scalar_lr_kinds_and_non_contiguous_inputs_work(faces, kind):
    face = faces[kind]
    loss, grads = face.call("loss_and_grad", face.params(), face.X, face.Y)
    # the same numbers from a strided X, Fortran-ordered parameters and a strided target
    p = {k: np.asfortranarray(v) for k, v in face.params().items()}
    Xs = np.repeat(face.X, 2, axis=0)[::2]
    Ys = np.repeat(face.Y, 2, axis=0)[::2]
    assert not Xs.flags.c_contiguous
    loss2, grads2 = face.call("loss_and_grad", p, Xs, Ys)
    assert loss2 == loss and all(np.array_equal(grads[k], grads2[k]) for k in grads)
    for lr in (0.5, 1, np.float32(0.5), np.float64(0.5), np.array(0.5), np.int64(1), -0.5):
        p = face.params()
        _, g = face.call("loss_and_grad", p, face.X, face.Y)
        before = {k: v.copy() for k, v in p.items()}
        face.call("sgd_step", p, face.X, face.Y, lr)
        for k in p:
            np.testing.assert_allclose(p[k], before[k] - float(lr) * g[k], rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("seed", [-1, 1.5, "0", True, [0]])
@pytest.mark.parametrize("kind", KINDS)
def test_init_params_refuses_a_bad_seed(faces, kind, seed):
    with pytest.raises(InputError, match=r"^seed: expected a non-negative integer, got "):
        faces[kind].k.init_params(seed)


def test_cuda_bind_checks_its_arguments_before_the_device(faces):
    """CUDA bind works (tests/test_cuda.py); here, without a device: a bad argument is its
    InputError line, good arguments reach the "no GPU" error."""
    from symbp.codegen.cuda import NO_DEVICE
    face = faces["cuda"]
    with pytest.raises(InputError, match=r"^X: expected dtype float64"):
        face.k.bind(face.params(), face.X.astype(np.float32), face.Y)
    with pytest.raises(SymbpError, match=NO_DEVICE.split(";")[0]):
        face.k.bind(face.params(), face.X, face.Y)


def test_float32_sgd_step_refuses_an_lr_that_overflows_float32(tmp_path):
    k = symbp.generate(symbp.derive(symbp.load(XOR)), dtype="float32", out_dir=tmp_path, jit=False)
    p = k.init_params(0)
    X, Y = np.zeros((2, 2), np.float32), np.zeros((2, 1), np.float32)
    before = {key: v.copy() for key, v in p.items()}
    with pytest.raises(InputError, match=r"^lr: expected one finite real number \(in float32\), got 1e\+39$"):
        k.sgd_step(p, X, Y, 1e39)
    assert all(np.array_equal(p[key], before[key]) for key in p)      # refused: nothing changed
    loss = k.loss(p, X, Y)
    assert k.sgd_step(p, X, Y, 3e38) == loss        # representable in float32: accepted

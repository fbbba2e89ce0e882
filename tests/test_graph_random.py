"""Hypothesis-drawn random DAGs (2-8 inner nodes: dense with new, shared and transposed weights,
activations, add, multiply, concat, expression layers; random branches and merges), derived,
emitted and run as plain Python (jit=False), checked against central finite differences, the
full-expansion SymPy oracle and PyTorch; a few compiled with Numba."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from symbp.codegen.graph_emit import generate_graph
from symbp.model.graph import graph
from symbp.verify import gradcheck, oracle_gradients, sample, torch_gradients
from symbp.derivation.graph import derive_graph

ACTIVATIONS = ["sigmoid", "tanh", "softplus", "identity", "relu", {"name": "leaky_relu", "slope": 0.2}, "swish"]
# elementwise expressions by number of inputs ({0}, {1}: input names)
EXPRESSIONS = {
    1: ["{0} * {0} + {0}", "tanh({0}) * {0}", "exp(-{0} * {0})", "{0} * sigmoid({0})", "log(1 + {0} * {0})"],
    2: ["{0} * {1}", "{0} * sigmoid({1})", "{0} - 2 * {1}", "tanh({0} + {1})", "{0} / (1 + {1} * {1})"],
}
LOSSES = [("mse", "identity", 1), ("sse", "tanh", 2), ("bce", "sigmoid", 1), ("ce", "softmax", 2)]


@st.composite
def dags(draw, max_width=2, max_nodes=8):
    """A random valid graph. Every inner node reads earlier nodes (acyclic by construction);
    the nodes nobody reads are concatenated (a merge) so that every node reaches the loss."""
    g = graph("rand", activations={"swish": "z * sigmoid(z)"})
    pool = []                  # (name, width)
    weights = []               # (name, shape)
    biases = []                # (name, width)
    for i in range(draw(st.integers(1, 2))):
        w = draw(st.integers(1, max_width))
        pool.append((g.input(f"x{i}", w, grad=draw(st.booleans())), w))
    used = set()

    def pick(width=None):
        cands = [p for p in pool if width is None or p[1] == width]
        return draw(st.sampled_from(cands))

    for idx in range(draw(st.integers(2, max_nodes))):
        name = f"n{idx}"
        kind = draw(st.sampled_from(["dense", "dense", "activation", "add", "multiply", "concat", "expression"]))
        src, w = pick()
        if kind in ("add", "multiply"):
            others = [pick(w) for _ in range(draw(st.integers(1, 2)))]
            ins = [src] + [o[0] for o in others]
            getattr(g, kind)(name, *ins)
            width = w
        elif kind == "concat":
            other, w2 = pick()
            ins, width = [src, other], w + w2
            g.concat(name, *ins)
        elif kind == "expression":
            same = [p[0] for p in pool if p[1] == w and p[0] != src]
            ins = [src] + ([draw(st.sampled_from(same))] if same and draw(st.booleans()) else [])
            template = draw(st.sampled_from(EXPRESSIONS[len(ins)]))
            g.expression(name, template.format(*ins), ins)
            width = w
        elif kind == "activation":
            act = draw(st.sampled_from(ACTIVATIONS))
            g.activation(name, src, act)
            ins, width = [src], w
        else:
            units = draw(st.integers(1, max_width))
            fits = [(wn, tr) for wn, shape in weights for tr in (False, True)
                    if shape == ((w, units) if tr else (units, w))]
            if fits and draw(st.booleans()):
                weight, transpose = draw(st.sampled_from(fits))
            else:
                weight, transpose = f"W{len(weights)}", draw(st.booleans())
                weights.append((weight, (w, units) if transpose else (units, w)))
            shared = [bn for bn, bw in biases if bw == units]
            choice = draw(st.sampled_from(["new", "none"] + (["shared"] if shared else [])))
            if choice == "new":
                bias = f"b{len(biases)}"
                biases.append((bias, units))
            else:
                bias = draw(st.sampled_from(shared)) if choice == "shared" else False
            g.dense(name, src, units, weight=weight, bias=bias, transpose=transpose)
            ins, width = [src], units
        used.update(ins)
        pool.append((name, width))
    sinks = [p for p in pool if p[0] not in used]
    if len(sinks) > 1:
        head = g.concat("merge", *[p[0] for p in sinks])
    else:
        head = sinks[0][0]
    loss, act, out = draw(st.sampled_from(LOSSES))
    z = g.dense("head", head, out, weight="W_head", bias="b_head")
    a = g.activation("out", z, act)
    g.input("target", out)
    g.loss("loss", a, "target", loss, draw(st.sampled_from(["mean", "sum"])))
    return g.build()


def setup(G, tmp, seed=0, batch=2, jit=False):
    k = generate_graph(derive_graph(G), out_dir=tmp, jit=jit)
    params = k.init_params(seed)
    rng = np.random.default_rng(seed + 1)
    params = {key: v + rng.normal(0, 0.2, v.shape) for key, v in params.items()}
    inputs, target = sample(G, batch, seed, np.float64)
    return k, params, inputs, target


def close(a, b, rtol):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(np.maximum(np.abs(a), np.abs(b)), 1e-8), initial=0)) <= rtol


COMMON = dict(deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@settings(max_examples=40, **COMMON)
@given(G=dags())
def test_random_dags_pass_finite_differences_and_torch(tmp_path_factory, G):
    k, params, inputs, target = setup(G, tmp_path_factory.mktemp("rand"), batch=3)
    report = gradcheck(k, params, inputs, target)
    assert report.ok, f"{G}\n{report}"
    try:
        import torch  # noqa: F401
    except ImportError:
        return
    tl, tg = torch_gradients(G, params, inputs, target)
    loss, grads, igrads = k.loss_and_input_grads(params, inputs, target)
    assert abs(tl - loss) <= 1e-11 * max(1.0, abs(tl)), G
    assert list(tg) == list(grads) + list(igrads)
    for key, v in {**grads, **igrads}.items():
        assert close(v, tg[key], 1e-9), (key, str(G))


@settings(max_examples=10, **COMMON)
@given(G=dags(max_width=2, max_nodes=5))
def test_random_dags_match_the_oracle(tmp_path_factory, G):
    k, params, inputs, target = setup(G, tmp_path_factory.mktemp("rand_oracle"), seed=2, batch=2)
    ol, og = oracle_gradients(G, params, inputs, target)
    loss, grads, igrads = k.loss_and_input_grads(params, inputs, target)
    assert abs(ol - loss) <= 1e-11 * max(1.0, abs(ol)), G
    assert list(og) == list(grads) + list(igrads)
    for key, v in {**grads, **igrads}.items():
        assert close(v, og[key], 1e-9), (key, str(G))


def test_the_strategy_draws_branches_merges_and_shared_weights():
    """The generator really produces the structures the tests are about."""
    seen = {"branch": 0, "shared": 0, "transposed": 0, "merge": 0, "expression": 0}

    @settings(max_examples=60, **COMMON)
    @given(G=dags())
    def look(G):
        if any(len([c for c in G.consumers(n.name) if c[1] != "target"]) > 1 for n in G.nodes):
            seen["branch"] += 1
        seen["shared"] += any(len(p.uses) > 1 for p in G.params)
        seen["transposed"] += any(n.kind == "dense" and n.transpose for n in G.nodes)
        seen["merge"] += any(n.kind in ("add", "multiply", "concat") for n in G.nodes)
        seen["expression"] += any(n.kind == "expression" for n in G.nodes)

    look()
    assert all(v >= 3 for v in seen.values()), seen


@pytest.mark.jit
@settings(max_examples=2, **COMMON)
@given(G=dags(max_nodes=6))
def test_random_dags_compiled(tmp_path_factory, G):
    k, params, inputs, target = setup(G, tmp_path_factory.mktemp("rand_jit"), batch=4, jit=True)
    kp = generate_graph(k.derivation, out_dir=k.path.parent.parent, jit=False)
    lj, gj = k.loss_and_grad(params, inputs, target)
    lp, gp = kp.loss_and_grad(params, inputs, target)
    assert abs(lj - lp) <= 1e-12 * max(1.0, abs(lp))
    for key in gp:
        assert np.allclose(gj[key], gp[key], rtol=1e-11, atol=1e-13), key

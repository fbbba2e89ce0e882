"""The function table and what SymPy derives from it.

Parametrized over ``ACTIVATIONS`` and ``LOSSES`` (never copied here):
- for every elementwise activation, ``output_form`` of its definition equals ``sympy.diff`` of the
  definition at many points once a = f(z) is put in (an independent numerical check, not the
  package's own checker), and reads only a when it says so;
- the forms SymPy must find are pinned (sigmoid a(1 - a), tanh 1 - a^2, exp a, softplus
  1 - exp(-a), relu Heaviside(a, 0), identity 1, leaky_relu a Piecewise in a; swish keeps z);
- the output delta of the derivation: the loss/activation cancellations (sigmoid + bce and
  softmax + ce give a - y, times 1/B for the mean) happen structurally (no log, no division by
  a), and for every loss and every output activation it fits the delta equals the derivative of
  the scalar loss taken directly;
- the hidden delta of every elementwise activation is ga[s, j] times that activation's form.
"""
import itertools

import pytest
import sympy as sp

import symbp
from symbp import naming
from symbp.derivation.local import output_form
from symbp.model.functions import ACTIVATIONS, LOSSES, REDUCTIONS, user_activation

z, a, yv = naming.Z, naming.A, naming.Y
S, J = naming.S, naming.J
B = naming.BATCH
ELEMENTWISE = [name for name, act in ACTIVATIONS.items() if act.elementwise]
# Points away from 0 (the kink of relu/leaky_relu, handled by test_kink_convention), both signs.
POINTS = [sp.Rational(k, 4) + sp.Rational(1, 7) for k in range(-24, 25)]
# relu' at 0 is 0 and leaky_relu' at 0 the slope: the left derivative (PyTorch's convention).
KINK_AT_ZERO = {"relu": sp.Integer(0), "leaky_relu": sp.Rational(1, 100)}


def activation(name):
    act = ACTIVATIONS[name]
    return act.instantiate("test") if act.params else act


def swish():
    return user_activation("swish", "z * sigmoid(z)")


def close(got, want, tol=1e-20):
    got, want = complex(sp.N(got, 40)), complex(sp.N(want, 40))
    return abs(got - want) <= tol * max(1.0, abs(want))


def check_form_numerically(f, form, uses):
    fprime = sp.diff(f, z)
    for z0 in POINTS:
        want = fprime.xreplace({z: z0}).doit()
        point = {a: f.xreplace({z: z0})} if uses == "a" else {z: z0}
        got = form.xreplace(point).doit()
        assert close(got, want), (f, form, z0, got, want)


def test_table_has_the_required_entries():
    for name in ("sigmoid", "tanh", "relu", "leaky_relu", "softplus", "identity", "exp", "softmax"):
        assert name in ACTIVATIONS
    assert set(LOSSES) >= {"mse", "sse", "bce", "ce"}
    assert set(REDUCTIONS) == {"mean", "sum"}
    assert not ACTIVATIONS["softmax"].elementwise


@pytest.mark.parametrize("name", ELEMENTWISE)
def test_output_form_equals_diff(name):
    f = activation(name).definition
    stages, form, uses = output_form(f)
    assert uses in ("a", "z")
    assert stages[0][0] == "derived" and stages[0][1] == sp.diff(f, z)
    if uses == "a":
        assert form.free_symbols <= {a}, form
    else:
        assert form.free_symbols <= {z}, form
    check_form_numerically(f, form, uses)


def test_user_activation_output_form_equals_diff():
    f = swish().definition
    stages, form, uses = output_form(f)
    assert uses == "z"
    assert form.has(z) and not form.has(a)
    check_form_numerically(f, form, uses)


@pytest.mark.parametrize("name", [n for n in ELEMENTWISE if n in KINK_AT_ZERO])
def test_kink_convention(name):
    _, form, uses = output_form(activation(name).definition)
    assert uses == "a"
    assert form.xreplace({a: sp.Integer(0)}) == KINK_AT_ZERO[name]


PINS = {
    "sigmoid": (a * (1 - a), "a*(1 - a)"),
    "tanh": (1 - a ** 2, "1 - a**2"),
    "exp": (a, "a"),
    "softplus": (1 - sp.exp(-a), "1 - exp(-a)"),
    "relu": (sp.Heaviside(a, 0), "Heaviside(a, 0)"),
    "identity": (sp.Integer(1), "1"),
}


@pytest.mark.parametrize("name", sorted(PINS))
def test_pinned_output_form(name):
    expected, printed = PINS[name]
    _, form, uses = output_form(activation(name).definition)
    assert uses == "a"
    assert sp.expand(form - expected) == 0
    assert str(form) == printed


def test_leaky_relu_form_is_a_piecewise_in_a():
    act = activation("leaky_relu")
    slope = dict(act.values)["slope"]
    _, form, uses = output_form(act.definition)
    assert uses == "a"
    assert isinstance(form, sp.Piecewise) and form.free_symbols == {a}
    assert form.xreplace({a: sp.Integer(2)}) == 1
    assert form.xreplace({a: -slope}) == slope          # a = slope * z for z = -1
    # A non-default slope is carried into the form exactly.
    act3 = ACTIVATIONS["leaky_relu"].instantiate("test", slope=0.3)
    _, form3, _ = output_form(act3.definition)
    assert form3.xreplace({a: sp.Rational(-3, 10)}) == sp.Rational(3, 10)


# --- the output delta -------------------------------------------------------------------------

a2, y2 = naming.quantity("a", 2)[S, J], naming.quantity("y")[S, J]

OUTPUT_PINS = [
    ("sigmoid", "bce", "mean", (a2 - y2) / B),
    ("softmax", "ce", "mean", (a2 - y2) / B),
    ("identity", "mse", "mean", (a2 - y2) / B),
    ("identity", "sse", "sum", 2 * (a2 - y2)),
    ("sigmoid", "bce", "sum", a2 - y2),
    ("softmax", "ce", "sum", a2 - y2),
    ("identity", "mse", "sum", a2 - y2),
    ("identity", "sse", "mean", 2 * (a2 - y2) / B),
]


def derive_output(act, loss, reduction, width=None):
    width = width or (3 if act == "softmax" else 1)
    net = symbp.mlp([2, 4, width], ["tanh", act], loss, reduction=reduction)
    return symbp.derive(net)


@pytest.mark.parametrize("act, loss, reduction, expected", OUTPUT_PINS,
                         ids=[f"{x}+{l}-{r}" for x, l, r, _ in OUTPUT_PINS])
def test_output_delta_pins(act, loss, reduction, expected):
    d = derive_output(act, loss, reduction)
    eq = d["delta2"]
    assert eq.lhs == naming.quantity("delta", 2)[S, J]
    rhs = eq.rhs
    assert sp.simplify(rhs - expected) == 0, rhs
    # The cancellation happened in the expression itself, not only up to simplify:
    assert sp.expand(rhs - expected) == 0, rhs
    assert not rhs.has(sp.log) and not rhs.has(sp.exp)
    assert not rhs.has(sp.Sum) and not rhs.has(sp.KroneckerDelta) and not rhs.has(sp.Piecewise)
    for p in rhs.atoms(sp.Pow):
        assert not (p.exp.is_negative and p.base.has(naming.quantity("a", 2))), f"divides by {p.base}: {rhs}"
    assert rhs.atoms(sp.Indexed) <= {a2, y2}


def _loss_activation_pairs():
    for lname, loss in LOSSES.items():
        outs = loss.outputs or ELEMENTWISE
        for act, red in itertools.product(outs, REDUCTIONS):
            yield pytest.param(lname, act, red, id=f"{act}+{lname}-{red}")


Y_VALUES = [sp.Rational(1, 3), sp.Rational(-1, 2), sp.Integer(1)]


@pytest.mark.parametrize("lname, act_name, reduction", list(_loss_activation_pairs()))
def test_output_delta_equals_direct_derivative(lname, act_name, reduction):
    """delta2 = d(c * loss(f(z), y))/dz, the scalar loss differentiated by SymPy directly."""
    loss = LOSSES[lname]
    c = sp.Rational(1, 4) if reduction == "mean" else sp.Integer(1)
    d = derive_output(act_name, lname, reduction)
    rhs = d["delta2"].rhs
    z2 = naming.quantity("z", 2)[S, J]
    if act_name == "softmax":
        n = 3
        zs = [sp.Rational(1, 2), sp.Rational(-1, 3), sp.Integer(2)]
        for hot in range(n):
            ys = [sp.Integer(int(i == hot)) for i in range(n)]
            zsym = sp.symbols("w0:%d" % n, real=True)
            soft = [sp.exp(w) / sum(sp.exp(v) for v in zsym) for w in zsym]
            total = c * sum(loss.per_unit.xreplace({a: soft[i], yv: ys[i]}) for i in range(n))
            at = dict(zip(zsym, zs))
            for j in range(n):
                want = sp.diff(total, zsym[j]).xreplace(at)
                got = rhs.xreplace({a2: soft[j].xreplace(at), y2: ys[j], z2: zs[j], B: 4})
                assert close(got, want), (hot, j, got, want)
        return
    f = activation(act_name).definition
    for z0, y0 in itertools.product([sp.Rational(-3, 2), sp.Rational(2, 5), sp.Rational(7, 3)], Y_VALUES):
        want = sp.diff(c * loss.per_unit.xreplace({a: f}), z).xreplace({z: z0, yv: y0})
        got = rhs.xreplace({a2: f.xreplace({z: z0}), y2: y0, z2: z0, B: 4})
        assert close(got, want), (z0, y0, got, want)


# --- the hidden delta -------------------------------------------------------------------------

a1, z1 = naming.quantity("a", 1)[S, J], naming.quantity("z", 1)[S, J]
ga1 = naming.quantity("ga", 1)[S, J]
HIDDEN = ELEMENTWISE + ["swish"]


def derive_hidden(name):
    define = {"swish": "z * sigmoid(z)"} if name == "swish" else None
    net = symbp.mlp([2, 3, 1], [name, "identity"], "mse", define=define)
    return net.layers[0].activation, symbp.derive(net)


@pytest.mark.parametrize("name", HIDDEN)
def test_hidden_delta_is_ga_times_derivative(name):
    """delta1 = ga1 * f'(z1), checked numerically with a1 = f(z1) put in."""
    act, d = derive_hidden(name)
    rhs = d["delta1"].rhs
    assert not rhs.has(sp.Sum) and not rhs.has(sp.KroneckerDelta), rhs
    assert rhs.atoms(sp.Indexed) <= {a1, z1, ga1}, rhs
    fprime = sp.diff(act.definition, z)
    for z0, g0 in itertools.product(POINTS[::6], [sp.Rational(3, 7), sp.Integer(-2)]):
        got = rhs.xreplace({a1: act.at(z0), z1: z0, ga1: g0})
        assert close(got, g0 * fprime.xreplace({z: z0}).doit()), (z0, got)
    rule = d.layers[0].rule
    assert rule is not None and rule.derivative == fprime
    assert (rule.form, rule.uses) == output_form(act.definition)[1:]


def _reuse_cases():
    for name in HIDDEN:
        yield pytest.param(name, id=name)


@pytest.mark.parametrize("name", list(_reuse_cases()))
def test_hidden_delta_is_ga_times_form(name):
    """delta1 = ga1 * (the activation's form), in a1 when the form reads only a."""
    act, d = derive_hidden(name)
    _, form, uses = output_form(act.definition)
    rhs = d["delta1"].rhs
    expected = ga1 * form.xreplace({a: a1, z: z1})
    if uses == "a":
        # The backward pass reuses the stored output: no z1 is read.
        assert not rhs.has(naming.quantity("z", 1)), rhs
        assert sp.simplify(rhs - expected) == 0, rhs
    else:
        # The form keeps z; the derivation may also reuse a1 where that is exact.
        assert rhs.has(naming.quantity("z", 1)), rhs
        back = rhs.xreplace({a1: act.at(z1)})
        assert sp.simplify(back - expected) == 0, rhs

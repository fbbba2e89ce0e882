"""The facts the renderers state in words, found by the derivation stage (symbp.derivation.facts):
kinks of an activation's derivative, the output cancellation, the one-fraction output form."""
import sympy as sp

import symbp
from symbp import naming
from symbp.derivation import facts


def _derive(acts, loss, **kw):
    return symbp.derive(symbp.mlp([2, 2, 1], list(acts), loss, **kw))


def test_relu_kink_takes_the_side_of_relu_at_zero():
    for at_zero, side in ((0, "left"), (1, "right")):
        rule = _derive(("relu", "identity"), "mse", relu_at_zero=at_zero).layers[0].rule
        [k] = facts.kinks(rule)
        assert (k.point, k.left, k.right, k.value, k.side, k.jump) == (0, 0, 1, at_zero, side, True)


def test_smooth_activations_have_no_kink():
    d = _derive(("tanh", "sigmoid"), "bce")
    assert facts.kinks(d.layers[0].rule) == () and facts.kinks(None) == ()


def test_sigmoid_bce_cancels_to_the_prediction_error_and_mse_does_not():
    d = _derive(("tanh", "sigmoid"), "bce")
    found = facts.output_cancellation(d["delta2"], d["ga2"], d.batch_factor, True)
    assert found == facts.Cancellation(onehot=False)
    d = _derive(("tanh", "sigmoid"), "mse")
    assert facts.output_cancellation(d["delta2"], d["ga2"], d.batch_factor, True) is None


def test_one_fraction_is_exact_and_leaves_sums_alone():
    a, y = sp.symbols("a y", positive=True)
    e = -y / a + (1 - y) / (1 - a)
    f = facts.one_fraction(e)
    assert sp.cancel(f - e) == 0 and len(sp.Add.make_args(sp.fraction(f)[1])) == 1
    s = sp.Sum(naming.quantity("a", 1)[naming.S, naming.J], (naming.J, 0, 3))
    assert facts.one_fraction(s) is s

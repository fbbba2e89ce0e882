"""Exam variants with answer keys, drawn so that the hand calculation stays humane.

Contract:
- ``make_exam(network_sizes=(2, 2, 1), activation="sigmoid", loss="mse", variants=10, seed=7,
  multiple_choice=False, circuit=False, ...) -> Exam``; ``Exam.questions_tex()``,
  ``Exam.solutions_tex()`` and ``Exam.write(out_dir, pdf=None)`` (questions.tex, solutions.tex,
  and their PDFs where pdflatex exists; ``pdf=True`` requires it, ``pdf=False`` skips it).
  The same arguments give the same bytes: one ``random.Random(seed)`` stream draws every
  variant in order, and nothing else (no date, no set order) enters the text.
- The network: the hidden layers use ``activation``; the output layer uses sigmoid for bce,
  softmax for ce, and ``activation`` for mse/sse (``output_activation`` overrides it). The loss
  is the mean over a batch of ``batch`` samples (default 1, and 2 in multiple-choice mode, where
  the forgotten 1/N is only a distinct mistake with N >= 2).
- Each variant asks for the forward values z and a, the loss, every delta, one weight gradient
  dL/dW^[1]_pq, the input gradient dL/dx (where a hidden unit's branches must be summed), and
  the SGD update of that weight. The answer key is the worked example of the variant
  (``symbp.render.worked``): the numbers come from the Derivation, in exact arithmetic.
- How the numbers stay humane:
  * Integer-preserving activations (f maps integers to integers, e.g. ReLU, identity) with
    mse/sse: W in {-2..2}, b in {-1..1}, x in {-2..2}, integer targets. A draw is kept only if
    every intermediate value (z, a, dL/da, delta, dL/dW, dL/db, dL/dx) is an integer of magnitude
    at most 12, no ReLU
    sits exactly at its kink, and the asked values are not zero. The loss and the update then
    need at most two decimals (halves and quarters, steps of 0.1).
  * Other activations (sigmoid, tanh, softmax, ...): W and b with one decimal, x small
    integers, targets 0/1 (one-hot for ce). A student cannot evaluate sigma(z) or log by hand,
    so the question gives a table of exactly the function values the calculation needs,
    rounded to the stated decimals (e.g. sigma(0.7) = 0.668). Which values those are comes
    from evaluating the derivation as a student would (``worked.evaluate(rounding=d)``: every
    quantity rounded before it is used, every function value taken from the table). One
    precision: the sheet tells the student to round every quantity and table value to d
    decimals (half up) and to answer with d decimals (default 3). A draw is kept only if that
    calculation gives the same displayed answer as the exact value for every quantity asked, so
    a student rounding as told (and one with a calculator) reproduces the key digit for digit;
    the worked solution prints that very calculation.
- The sheet states its conventions: delta^[l]_s = dL/dz^[l]_s of the batch-mean loss (so it
  carries 1/B: the per-sample delta of some course notes would make the forgotten 1/N look
  right), dL/dW = sum_s delta_s a_s^T, the rounding rule; it leaves a framed answer box after
  every question, kept on the page of its question.
- Multiple choice: the loss, the output delta and each hidden delta of sample 1, the weight
  gradient, dL/dx_k and the updated weight are asked with 4 or 5 options, pairwise at least
  GAP_UNITS units of the last decimal apart (0.01 at 3 decimals, stated on the sheet), shown
  with all d decimals. The wrong options are the same calculation on a MUTATED DERIVATION
  (``MUTATIONS``): the activation derivative dropped (delta = dL/da), the transpose missing (W
  instead of W^T in the backward step where W is square; where no W is square, the
  pre-activation z in place of a in dL/dW), the 1/N of the mean forgotten, the branch sum
  forgotten (only the first term of the sum over the units a hidden unit feeds), the sign of
  the output error flipped; for the loss: sample 1 only, log10 for ln, the loss of z, the target
  read as 1 - y; plus a wrong entry read (another sample's or unit's value, dL/dW_qp for
  dL/dW_pq) and, for the update, the step taken uphill, the learning rate forgotten, the step
  alone and eta applied twice. A distractor closer than the gap to the key or to an earlier
  option is dropped; fewer than three left forces a redraw.
- Circuit questions (``circuit=True``) need ``symbp.circuit``; without it a SymbpError says so.
  Their values are distinct non-zero integers in -3..3 and no variant is ``degenerate``: a
  student who swaps two variables changes some answer unless the expression is symmetric in
  them. The title shows the expression as typed (``render.circuit.typed_latex``).
- Bad input, one line each: variants outside 1..200, an unknown activation or loss (the
  network builder's SpecError), a network string that is not like 2-2-1, widths outside 1..5.

The CLI subcommand ``symbp exam`` is added by ``add_command`` (module ``symbp.render.exam``).
"""
import importlib.util
import math
import random
import re
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path

import mpmath
import sympy as sp
from fractions import Fraction
from sympy.printing.pycode import PythonCodePrinter

from .. import naming
from ..derivation.equations import Derivation
from ..errors import InputError, SpecError, SymbpError
from ..model.functions import ACTIVATIONS, LOSSES
from .sources import latex_cite
from .pdf import pdflatex, write_all
from .worked import (_equal, bmatrix, check_decimals, evaluate, exact, given_env, plan, rounded, show,
                     worked_example, entry_name)

MAX_VARIANTS = 200
MAX_WIDTH = 5
MAX_LAYERS = 4
MAX_TRIES = 4000
LETTERS = "ABCDEFGH"
MAX_OPTIONS = 5
MAX_INTEGER = 12     # integer exams: no intermediate value beyond this in magnitude


# ------------------------------------------------------------------------------------------
# mutations of the derivation (wrong answers a student plausibly gives)
# ------------------------------------------------------------------------------------------
def _with(derivation, equations):
    d = derivation
    return Derivation(d.network, tuple(equations), d.layers, d.loss_sample, d.batch_factor)


def _rewrite(d, kinds, change):
    """The derivation with ``change(d, e)`` as the right-hand side of every equation e of the
    given kinds (None: that equation unchanged); None where no equation changed."""
    eqs, changed = [], False
    for e in d.equations:
        rhs = change(d, e) if e.kind in kinds else None
        if rhs is not None and rhs != e.rhs:
            e, changed = replace(e, rhs=rhs), True
        eqs.append(e)
    return _with(d, eqs) if changed else None


def _mutation(kinds, change):
    """The mutation (Derivation -> Derivation, or None) that rewrites the equations of ``kinds``
    with ``change(d, e)``."""
    return lambda d: _rewrite(d, kinds, change)


# delta^l = dL/da^l: the activation's derivative (Jacobian) dropped.
_no_derivative = _mutation(("delta", "output_delta"), lambda d, e: naming.quantity("ga", e.layer)[e.lhs.indices])
# The 1/N of the mean forgotten: the loss and its output gradients summed over the batch.
_no_mean = _mutation(("loss", "loss_grad", "output_delta"),
                     lambda d, e: e.rhs * naming.BATCH if d.network.reduction == "mean" else None)
# The output error with the wrong sign (y - a instead of a - y).
_error_sign = _mutation(("loss_grad", "output_delta"), lambda d, e: -e.rhs)


def _no_transpose(d):
    """W^[l] instead of (W^[l])^T in dL/da^[l-1] where W^[l] is square; with no square W,
    the pre-activation z^[l-1] in place of a^[l-1] in dL/dW^[l] (l >= 2)."""
    sizes = d.network.sizes
    square = [l for l in range(2, d.network.depth + 1) if sizes[l] == sizes[l - 1]]
    square += [1] if sizes[1] == sizes[0] else []
    if not square:
        return _rewrite(d, ("grad_W",), lambda d, e: _swap_base(e.rhs, "a", "z", e.layer - 1)
                        if e.layer >= 2 else None)

    def transpose(d, e):
        W = naming.quantity("W", e.layer + 1)
        return e.rhs.replace(lambda t: isinstance(t, sp.Indexed) and t.base == W,
                             lambda t: W[t.indices[1], t.indices[0]]) if e.layer + 1 in square else None
    return _rewrite(d, ("backprop", "input_grad"), transpose)


def _swap_base(rhs, old, new, layer):
    """rhs with every entry of quantity ``old`` of ``layer`` read from ``new`` (a -> z)."""
    a, z = naming.quantity(old, layer), naming.quantity(new, layer)
    return rhs.replace(lambda t: isinstance(t, sp.Indexed) and t.base == a, lambda t: z[t.indices])


def _first_term(d, e):
    """Only the first term of the sum over the units j that a unit i feeds:
    dL/da_i = W_1i delta_1 instead of sum_j W_ji delta_j."""
    def first(s):
        if len(s.limits) != 1:
            return s
        v, lo, _ = s.limits[0]
        return s.function.xreplace({v: lo})
    return e.rhs.replace(lambda t: isinstance(t, sp.Sum), first)


_no_branch_sum = _mutation(("backprop", "input_grad"), _first_term)


def _loss_mutation(change):
    """A mutation of the loss equation only (its other equations keep their own forms)."""
    return _mutation(("loss",), lambda d, e: change(d, e.rhs))


def _first_sample(d, rhs):
    """Only the first sample's loss (the batch average not taken)."""
    def cut(s):
        limits = [(v, lo, lo if hi.has(naming.BATCH) else hi) for v, lo, hi in s.limits]
        return sp.Sum(s.function, *limits)
    out = rhs.replace(lambda t: isinstance(t, sp.Sum), cut)
    return out * naming.BATCH if d.network.reduction == "mean" else out


def _log10(d, rhs):
    """A calculator's log key (base 10) for the natural log."""
    return rhs.replace(lambda t: isinstance(t, sp.log), lambda t: sp.log(t.args[0]) / sp.log(10)) \
        if rhs.has(sp.log) else None


def _pre_activation(d, rhs):
    """The loss of the output pre-activation z^[L] instead of a^[L]."""
    return _swap_base(rhs, "a", "z", d.network.depth)


def _flipped_target(d, rhs):
    """The target read the other way round (1 - y for 0/1 targets)."""
    if d.network.loss.onehot:
        return None
    y = naming.quantity("y")
    return rhs.replace(lambda t: isinstance(t, sp.Indexed) and t.base == y, lambda t: 1 - t)


@dataclass(frozen=True)
class Mutation:
    name: str
    text: str           # the mistake, as the solutions name it
    build: object       # Derivation -> Derivation or None (not applicable)
    uphill: bool = False
    loss_only: bool = False   # changes the loss equation only (evaluated on the key's values)


MUTATIONS = (
    Mutation("no_derivative", r"the activation derivative dropped ($\delta = \partial L/\partial a$)", _no_derivative),
    Mutation("no_transpose", r"a transpose missing ($W$ instead of $W^T$ in the backward step)", _no_transpose),
    Mutation("no_mean", r"the $1/N$ of the mean forgotten", _no_mean),
    Mutation("no_branch_sum", r"the branch sum forgotten (one term of $\sum_j W_{ji}\delta_j$)", _no_branch_sum),
    Mutation("error_sign", r"the sign of the output error flipped ($y - a$ for $a - y$)", _error_sign),
    Mutation("uphill", r"the step taken uphill ($W + \eta\,\partial L/\partial W$)", None, uphill=True),
    Mutation("first_sample", r"the loss of sample 1 only (no average over the batch)",
             _loss_mutation(_first_sample), loss_only=True),
    Mutation("log10", r"$\log_{10}$ in place of the natural logarithm", _loss_mutation(_log10), loss_only=True),
    Mutation("pre_activation", r"the loss of $z$ in place of $a$ (the output activation skipped)",
             _loss_mutation(_pre_activation), loss_only=True),
    Mutation("flipped_target", r"the target read the wrong way round ($1 - y$ for $y$)",
             _loss_mutation(_flipped_target), loss_only=True),
)


# ------------------------------------------------------------------------------------------
# arguments
# ------------------------------------------------------------------------------------------
_NETWORK = re.compile(r"^\d{1,3}(-\d{1,3}){1,%d}$" % MAX_LAYERS)


def parse_network(text):
    """'2-2-1' -> (2, 2, 1)."""
    if not isinstance(text, str) or not _NETWORK.match(text.strip()):
        raise SpecError("--network", "", f"expected widths joined by '-' like 2-2-1 "
                        f"(2 to {MAX_LAYERS + 1} numbers), got {text!r}")
    return tuple(int(t) for t in text.strip().split("-"))


def _check_sizes(sizes):
    if isinstance(sizes, str) or not hasattr(sizes, "__len__") or not 2 <= len(sizes) <= MAX_LAYERS + 1:
        raise SpecError("network", "", f"expected 2 to {MAX_LAYERS + 1} widths, got {sizes!r}")
    for i, n in enumerate(sizes):
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_WIDTH:
            raise SpecError("network", f"sizes[{i}]", f"expected a width from 1 to {MAX_WIDTH} "
                            f"(an exam is done by hand), got {n!r}")
    return tuple(sizes)


def build_network(sizes, activation, loss, output_activation=None, bias=True, relu_at_zero=0):
    from ..model.network import mlp
    if not isinstance(loss, str) or loss not in LOSSES:
        raise SpecError("exam", "loss", f"unknown loss {loss!r} (expected one of: {', '.join(LOSSES)})")
    if not isinstance(activation, str) or activation not in ACTIVATIONS or activation == "softmax":
        known = ", ".join(a for a in ACTIVATIONS if a != "softmax")
        raise SpecError("exam", "activation", f"unknown hidden activation {activation!r} (expected one of: {known})")
    if output_activation is None:
        output_activation = {"bce": "sigmoid", "ce": "softmax"}.get(loss, activation)
    acts = [activation] * (len(sizes) - 2) + [output_activation]
    return mlp(list(sizes), acts, loss, name="exam", bias=bias, relu_at_zero=relu_at_zero)


def _matrix_tex(m):
    """A matrix of exact given numbers (all shown exactly)."""
    return bmatrix([[show(v, 12)[0] for v in row] for row in m.tolist()])


def _definition(layer, act):
    if act.definition is None:     # the vector activation, printed from its table entry
        z, S, I, K = sp.IndexedBase("z"), naming.S, naming.I, naming.K
        entry = act.softmax_entry(z, S, I, K, sp.Symbol("n"))
        entry = entry.replace(lambda e: isinstance(e, sp.Sum),
                              lambda e: sp.Sum(e.function, *[(v, lo + 1, hi + 1) for v, lo, hi in e.limits]))
        return (layer, act.latex, f"a_{{s,i}} = {sp.latex(entry)}")
    return (layer, act.latex, f"{act.latex}(z) = {sp.latex(act.definition.xreplace({naming.Z: sp.Symbol('z')}))}")


def _integer_preserving(act):
    return act.definition is not None and all(act.at(sp.Integer(k)).is_Integer for k in range(-3, 4))


# ------------------------------------------------------------------------------------------
# one variant
# ------------------------------------------------------------------------------------------
@dataclass
class Question:
    key: str              # "loss", "delta2", "gW1", ...
    text: str             # LaTeX of what is asked
    answer: str           # LaTeX of the answer
    options: list = field(default_factory=list)    # [(letter, text, mistake or None)]
    correct: str = ""


@dataclass
class Variant:
    number: int
    params: dict          # exact
    X: sp.Matrix
    Y: sp.Matrix
    table: list           # [(function value LaTeX, shown value)]
    questions: list
    worked: object        # WorkedExample
    circuit: object = None   # CircuitQuestion


def _draw(rng, net, B, integer):
    """Parameters, inputs and targets of one draw: integers W in -2..2, b in -1..1, targets in
    -1..3 (``integer``), else one decimal W in +-2.0 (not 0), b in +-1.0, 0/1 (one-hot) targets;
    inputs are integers in -2..2."""
    def entry(k):
        if integer:
            return sp.Integer(rng.randint(*((-2, 2) if k.startswith("W") else (-1, 1))))
        return _decimal(rng, -20, 20, nonzero=True) if k.startswith("W") else _decimal(rng, -10, 10)
    P = {k: sp.Matrix(shape[0], (shape + (1,))[1], lambda i, j, k=k: entry(k))
         for k, shape in net.param_shapes().items()}
    X = sp.Matrix(B, net.sizes[0], lambda i, j: sp.Integer(rng.randint(-2, 2)))
    n = net.sizes[-1]
    if integer:
        return P, X, sp.Matrix(B, n, lambda i, j: sp.Integer(rng.randint(-1, 3)))
    if net.loss.onehot:
        hot = [rng.randrange(n) for _ in range(B)]
        return P, X, sp.Matrix(B, n, lambda i, j: sp.Integer(int(hot[i] == j)))
    return P, X, sp.Matrix(B, n, lambda i, j: sp.Integer(rng.randint(0, 1)))


def _decimal(rng, lo, hi, nonzero=False):
    while True:
        v = sp.Rational(rng.randint(lo, hi), 10)
        if v != 0 or not nonzero:
            return v


def _all_entries(ev):
    for name, vals in ev.results.items():
        for idx, v in vals.items():
            yield name, idx, v


class _Redraw(Exception):
    pass


# ------------------------------------------------------------------------------------------
# the screen: a cheap, reject-only pre-check of a draw
# ------------------------------------------------------------------------------------------
SCREEN_DPS = 50
# The student works (and the table is given) at the answers' precision: one stated precision,
# so that a student who rounds as told reproduces every key (a draw is kept only where that
# rounded calculation and the exact values agree at the displayed decimals).
WORK_EXTRA = 0
# Multiple-choice options differ pairwise by at least this many units of the last decimal, so
# that a student whose rounding differs from the key's by a unit or two still finds one option.
GAP_UNITS = 10
MIN_DISTRACTORS = 3


def _asked(name):
    """Quantities an exam asks for: forward values, the loss, deltas, dL/dx, dL/dW^[1]."""
    return name == "loss" or name in ("ga0", "gW1") or re.match(r"^(z|a|delta)\d+$", name) is not None


class _FractionPrinter(PythonCodePrinter):
    """Python source over Fractions: rationals stay exact; function values come from the
    student's table (the namespace rounds them)."""

    def _print_Rational(self, e):
        return f"Fraction({e.p}, {e.q})"

    def _print_Integer(self, e):
        return str(e.p)

    def _print_Heaviside(self, e):
        h = e.args[1] if len(e.args) > 1 else 0     # the network's relu_at_zero
        return f"_heaviside({self._print(e.args[0])}, {self._print(h)})"

    def _call(self, name, e):
        return f"{name}(" + ", ".join(self._print(a) for a in e.args) + ")"

    # max and min as Python's; exp, log and tanh from the student's table (the namespace's _exp, ...)
    _print_Max, _print_Min = (lambda self, e: self._call("max", e)), (lambda self, e: self._call("min", e))
    _print_exp, _print_log = (lambda self, e: self._call("_exp", e)), (lambda self, e: self._call("_log", e))
    _print_tanh = lambda self, e: self._call("_tanh", e)


def _heaviside(x, h=0):
    return 1 if x > 0 else (h if x == 0 else 0)


def _round_fraction(x, decimals):
    """Half away from zero, to a Fraction; x a Fraction or an mpf."""
    scale = 10 ** decimals
    if isinstance(x, Fraction):
        n = math.floor(abs(x) * scale + Fraction(1, 2))
    else:
        n = int(mpmath.floor(abs(x) * scale + mpmath.mpf(1) / 2))
    return Fraction(-n if x < 0 else n, scale)


def _near_boundary(x, decimals):
    """An mpf whose rounding the screen cannot decide (within 1e-30 of a half step)."""
    y = abs(x) * 10 ** decimals
    return abs(y - mpmath.floor(y) - mpmath.mpf(1) / 2) < mpmath.mpf(10) ** -30


class _Screen:
    """Evaluates a draw fast, for rejecting it early: the exact values as 50-digit mpmath
    numbers, the student's rounded calculation in Fractions (exactly what ``evaluate(...,
    rounding=d)`` computes). It only rejects draws (clearly too small values, a student
    calculation that clearly differs from the key); every draw it lets through is decided by
    the exact evaluation. Distractors that land near the key are dropped (not redrawn), so the
    screen need not evaluate the mutants. mpmath is pure Python, so its decisions, and hence
    the exams, are the same on every platform."""

    def __init__(self, derivation, B, decimals):
        self.decimals = decimals
        d = self.work = decimals + WORK_EXTRA

        def table(f):
            def g(x):
                return _round_fraction(f(mpmath.mpf(x.numerator) / x.denominator), d)
            return g

        def log(x):
            if x <= 0:
                raise _Redraw()
            return Fraction(0) if x == 1 else table(mpmath.log)(x)

        self.student_ns = {"Fraction": Fraction, "_heaviside": _heaviside, "_log": log,
                           "_exp": lambda x: Fraction(1) if x == 0 else table(mpmath.exp)(x),
                           "_tanh": lambda x: Fraction(0) if x == 0 else table(mpmath.tanh)(x)}
        self.steps = self._compile(derivation, B)

    def _compile(self, d, B):
        steps = []
        for pe in plan(d, B):
            eq = pe.equation
            act = None
            if eq.kind == "forward_a" and d.layers[eq.layer - 1].rule is not None:
                a = d.layers[eq.layer - 1].activation
                act = sp.lambdify([naming.Z], a.definition, modules=[{"Heaviside": _heaviside}, "mpmath"])
            for ent in pe.entries:
                atoms = sorted(ent.expr.atoms(sp.Indexed), key=sp.default_sort_key)
                if ent.expr.has(naming.BATCH):
                    atoms.append(naming.BATCH)
                dums = [sp.Dummy(f"v{i}") for i in range(len(atoms))]
                e = ent.expr.xreplace(dict(zip(atoms, dums)))
                fx = sp.lambdify(dums, e, modules=[{"Heaviside": _heaviside}, "mpmath"])
                fs = sp.lambdify(dums, e, modules=[self.student_ns], printer=_FractionPrinter)
                zkey = naming.quantity("z", eq.layer)[ent.lhs.indices] if act is not None else None
                steps.append((eq.name, ent.index, ent.lhs, atoms, fx, fs, act, zkey))
        return steps

    def run(self, P, X, Y, student):
        conv = (lambda v: Fraction(int(v.p), int(v.q))) if student else (lambda v: mpmath.mpf(int(v.p)) / int(v.q))
        env = given_env(P, X, Y, conv)
        env[naming.BATCH] = X.rows if student else mpmath.mpf(X.rows)
        res = {}
        try:
            for name, index, lhs, atoms, fx, fs, act, zkey in self.steps:
                if student and act is not None:
                    z = env[zkey]
                    v = act(mpmath.mpf(z.numerator) / z.denominator)
                    v = Fraction(0) if v == 0 else _round_fraction(v, self.work)
                else:
                    v = (fs if student else fx)(*[env[a] for a in atoms])
                    if student:
                        v = _round_fraction(Fraction(v), self.work)
                if not student and (not isinstance(v, mpmath.mpf) or not mpmath.isfinite(v)):
                    if isinstance(v, (int, Fraction)):
                        v = mpmath.mpf(v.numerator) / v.denominator
                    else:
                        raise _Redraw()
                env[lhs] = v
                res.setdefault(name, {})[index] = v
        except (ZeroDivisionError, ValueError, OverflowError, TypeError):
            raise _Redraw() from None
        return res

    def check(self, P, X, Y, net, small):
        """Raise _Redraw for a draw the exact checks would clearly reject."""
        d = self.decimals
        with mpmath.workdps(SCREEN_DPS):
            ex = self.run(P, X, Y, False)
            margin = mpmath.mpf(small) * (1 - mpmath.mpf(10) ** -20)
            big = lambda v: abs(v) >= margin
            if not big(ex["loss"][()]) or not any(big(v) for v in ex["gW1"].values()) or \
                    not any(big(ex["ga0"][(0, k)]) for k in range(net.sizes[0])):
                raise _Redraw()
            for l in range(1, net.depth + 1):
                if not any(big(v) for v in ex[f"delta{l}"].values()):
                    raise _Redraw()
            st = self.run(P, X, Y, True)
            for name, vals in ex.items():
                if not _asked(name):
                    continue
                for idx, v in vals.items():
                    if not _near_boundary(v, d) and _round_fraction(v, d) != _round_fraction(st[name][idx], d):
                        raise _Redraw()


@dataclass
class Exam:
    """Variants with questions and answer keys (see the module contract)."""

    network: object
    derivation: object
    variants: list
    decimals: int
    batch: int
    lr: object
    multiple_choice: bool
    seed: int
    circuit: bool
    integer: bool

    def _context(self):
        net = self.network
        acts = [l.activation for l in net.layers]
        return {
            "title": f"Backpropagation by hand: a {'-'.join(map(str, net.sizes))} network",
            "sizes": "-".join(map(str, net.sizes)),
            "layers": [(l, act.latex, act.name.replace("_", r"\_")) for l, act in enumerate(acts, 1)],
            "loss": net.loss.latex,
            "loss_name": net.loss.name,
            "batch": self.batch,
            "decimals": self.decimals,
            "work": self.decimals if self.integer else self.decimals + WORK_EXTRA,
            "lr": show(self.lr, 12)[0],
            "definitions": [_definition(l, act) for l, act in enumerate(acts, 1)],
            "variants": [self._variant_context(v) for v in self.variants],
            "multiple_choice": self.multiple_choice,
            "circuit": self.circuit,
            "seed": self.seed,
            "mean": net.reduction == "mean",
            "gap": show(sp.Rational(GAP_UNITS, 10 ** self.decimals), 12)[0],
            "per_sample_sources": f"{latex_cite('slides')} and {latex_cite('it5005')}",
        }

    def _variant_context(self, v):
        given = [f"{key[0]}^{{[{key[1:]}]}} = {_matrix_tex(m)}" for key, m in v.params.items()]
        x, y, X, Y = ("x", "y", v.X.T, v.Y.T) if self.batch == 1 else ("X", "Y", v.X, v.Y)
        given += [f"{x} = {_matrix_tex(X)}", f"{y} = {_matrix_tex(Y)}"]
        return {"number": v.number, "given": given, "table": v.table, "questions": v.questions,
                "worked": v.worked.latex(document=False), "circuit": v.circuit}

    def _render(self, sheet):
        from ..output import environment
        return environment().get_template(f"latex/exam_{sheet}.tex.j2").render(**self._context())

    def questions_tex(self):
        return self._render("questions")

    def solutions_tex(self):
        return self._render("solutions")

    def write(self, out_dir, pdf=None):
        """Write questions.tex and solutions.tex (and PDFs: pdf=None where pdflatex exists,
        True requires it, False skips). Everything is rendered and compiled first, then
        written; returns the paths written."""
        texts = {"questions": self.questions_tex(), "solutions": self.solutions_tex()}
        want_pdf = (shutil.which("pdflatex") is not None) if pdf is None else bool(pdf)
        files = [(Path(out_dir) / f"{name}.tex", text) for name, text in texts.items()]
        return write_all(files + ([(Path(out_dir) / f"{name}.pdf", pdflatex(text, name))
                                   for name, text in texts.items()] if want_pdf else []))


def make_exam(network_sizes=(2, 2, 1), activation="sigmoid", loss="mse", variants=10, seed=7,
              multiple_choice=False, circuit=False, decimals=None, batch=None, lr=0.1,
              output_activation=None, bias=True, relu_at_zero=0):
    """Draw ``variants`` exam variants (see the module contract); ``bias`` and ``relu_at_zero``
    as for ``symbp.mlp`` (no bias: z = W a; ReLU'(0) of the course)."""
    if isinstance(variants, bool) or not isinstance(variants, int) or not 1 <= variants <= MAX_VARIANTS:
        raise InputError(f"variants: expected an integer from 1 to {MAX_VARIANTS}, got {variants!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InputError(f"seed: expected an integer, got {seed!r}")
    sizes = _check_sizes(network_sizes)
    net = build_network(sizes, activation, loss, output_activation, bias, relu_at_zero)
    if circuit and importlib.util.find_spec("symbp.derivation.circuit") is None:
        raise SymbpError("circuit: circuit questions need symbp.circuit, which this installation lacks")
    integer = all(_integer_preserving(l.activation) for l in net.layers) and loss in ("mse", "sse")
    if decimals is None:
        decimals = 2 if integer else 3
    check_decimals(decimals)
    if batch is None:
        batch = 2 if multiple_choice else 1
    if isinstance(batch, bool) or not isinstance(batch, int) or not 1 <= batch <= 4:
        raise InputError(f"batch: expected an integer from 1 to 4, got {batch!r}")
    eta = exact(lr, "lr", "learning rate")
    if eta <= 0:
        raise InputError(f"lr: expected a positive learning rate, got {lr!r}")
    from ..derivation.chain import derive
    d = derive(net)
    built = [(m, m.build(d) if m.build is not None else d) for m in MUTATIONS] if multiple_choice else []
    mutants = [(m, md) for m, md in built if md is not None]
    screen = None if integer else _Screen(d, batch, decimals)
    rng = random.Random(seed)
    out = []
    for number in range(1, variants + 1):
        for _ in range(MAX_TRIES):
            try:
                out.append(_variant(number, rng, net, d, mutants, integer, decimals, batch, eta,
                                    multiple_choice, circuit, screen))
                break
            except _Redraw:
                continue
        else:
            raise SymbpError(f"exam: no humane numbers found for variant {number} of this network "
                             f"after {MAX_TRIES} draws; try another seed, activation or size")
    return Exam(net, d, out, decimals, batch, eta, multiple_choice, seed, circuit, integer)


def _variant(number, rng, net, d, mutants, integer, decimals, B, eta, multiple_choice, circuit,
             screen=None):
    P, X, Y = _draw(rng, net, B, integer)
    L = net.depth
    # The asked entries are drawn among those with two significant digits at the stated
    # decimals (smaller ones teach nothing once rounded), and whose SGD step shows.
    small = sp.Rational(1, 10 ** (decimals - 1)) if decimals >= 1 else sp.Integer(1)
    if screen is not None:
        screen.check(P, X, Y, net, small)
    try:
        ev = evaluate(d, P, X, Y)
    except InputError:
        raise _Redraw()
    if ev.kinks:
        raise _Redraw()

    def big(name, idx):
        return abs(ev.approx_results[name][idx]) >= small

    gW1 = ev.results["gW1"]
    pq = [idx for idx in sorted(gW1) if big("gW1", idx)
          and show(P["W1"][idx] - eta * ev.approx_results["gW1"][idx], decimals)[0] != show(P["W1"][idx], decimals)[0]]
    gx = [(0, k) for k in range(net.sizes[0]) if big("ga0", (0, k))]
    if not pq or not gx or not big("loss", ()) or \
            not all(any(big(f"delta{l}", idx) for idx in ev.results[f"delta{l}"]) for l in range(1, L + 1)):
        raise _Redraw()
    p, q = pq[rng.randrange(len(pq))]
    xk = gx[rng.randrange(len(gx))][1]
    table = []
    if integer:
        if any(not v.is_Integer or abs(v) > MAX_INTEGER for name, idx, v in _all_entries(ev) if name != "loss"):
            raise _Redraw()
    else:
        work = decimals + WORK_EXTRA
        student = evaluate(d, P, X, Y, rounding=work)
        for name, idx, v in _all_entries(ev):
            if _asked(name) and show(v, decimals, ev.approx_results[name][idx])[0] != \
                    show(student.results[name][idx], decimals)[0]:
                raise _Redraw()
        new_exact = P["W1"][p, q] - eta * gW1[(p, q)]
        new_student = rounded(P["W1"][p, q] - eta * student.results["gW1"][(p, q)], work)
        if show(new_exact, decimals, P["W1"][p, q] - eta * ev.approx_results["gW1"][(p, q)])[0] != \
                show(new_student, decimals)[0]:
            raise _Redraw()
        table = [(tex, _fixed(show(v, work)[0], work)) for tex, v in student.table]

    def shown(name, idx):
        return show(ev.results[name][idx], decimals, ev.approx_results[name][idx])[0]

    def rel(name, idx):     # "=" only where the printed number is the exact value
        return "=" if show(ev.results[name][idx], decimals, ev.approx_results[name][idx])[1] else r"\approx"

    # what is asked: (key, LaTeX of the quantity, exact-value getter on an evaluation)
    single = B == 1
    sample = "" if single else " for sample 1"
    W1pq = entry_name(naming.quantity("W", 1), (p, q))
    targets = [("loss", "the loss $L$", lambda e, up=False: e.results["loss"][()])]
    for l in range(L, 0, -1):
        j = next((j for j in range(net.sizes[l]) if big(f"delta{l}", (0, j))), None)
        if j is None:
            raise _Redraw()
        targets.append((f"delta{l}", f"${entry_name(naming.quantity('delta', l), (0, j), True)}$" + sample,
                        lambda e, up=False, l=l, j=j: e.results[f"delta{l}"][(0, j)]))
    targets.append(("gW1", f"${entry_name(naming.quantity('gW', 1), (p, q))}$",
                    lambda e, up=False: e.results["gW1"][(p, q)]))
    targets.append(("ga0", f"${entry_name(naming.quantity('ga', 0), (0, xk), True)}$" + sample,
                    lambda e, up=False: e.results["ga0"][(0, xk)]))
    targets.append(("update", f"the new ${W1pq}$ after one SGD step",
                    lambda e, up=False: P["W1"][p, q] + (1 if up else -1) * eta * e.results["gW1"][(p, q)]))

    # forward values stay an open question
    questions = [Question("forward", _forward_question(net, B), ", ".join(
        _vector_text(net, ev, decimals, B, kind, l) for l in range(1, L + 1) for kind in ("z", "a")))]
    if multiple_choice:
        mutant_evals = []
        for m, md in mutants:
            if m.uphill:
                continue
            try:
                mev = _loss_only(md, ev, B) if m.loss_only else evaluate(md, P, X, Y)
            except InputError:
                continue
            if mev is not None:
                mutant_evals.append((m, mev))
        extras = _extra_distractors(ev, P, eta, p, q, targets)
        pad = (lambda t: t) if integer else (lambda t: _fixed(t, decimals))
        gap = sp.Rational(GAP_UNITS, 10 ** decimals)
        mc = {}
        for key, what, get in targets:
            right = get(ev)
            right_text = show(right, decimals)[0]
            uphill = [(get(ev, up=True), MUTATIONS_BY_NAME["uphill"].text)] if key == "update" else []
            cands = uphill + [(get(mev), m.text) for m, mev in mutant_evals] + extras.get(key, [])
            mc[key] = (right_text, _options(right, cands, decimals, gap))
        for key, what, get in targets:
            right_text, opts = mc[key]
            allopts = [(right_text, None)] + opts
            rng.shuffle(allopts)
            lettered = [(LETTERS[i], f"${pad(t)}$", mistake) for i, (t, mistake) in enumerate(allopts)]
            correct = next(letter for letter, t, mistake in lettered if mistake is None)
            questions.append(Question(key, f"Which value is {what}?", f"${pad(right_text)}$", lettered, correct))
    else:
        questions.append(Question("loss", "Compute the loss $L$.", f"$L {rel('loss', ())} {shown('loss', ())}$"))
        deltas = ", ".join(f"$\\delta^{{[{l}]}}$" for l in range(L, 0, -1))
        questions.append(Question("deltas", f"Compute the deltas {deltas} (backward pass).",
                                  ", ".join(_vector_text(net, ev, decimals, B, "delta", l) for l in range(L, 0, -1))))
        questions.append(Question("gW1", f"Compute ${entry_name(naming.quantity('gW', 1), (p, q))}$.",
                                  f"${entry_name(naming.quantity('gW', 1), (p, q))} {rel('gW1', (p, q))} {shown('gW1', (p, q))}$"))
        questions.append(Question("ga0", "Compute the gradient with respect to the input, "
                                  r"$\partial L / \partial x$" + sample + ".",
                                  _vector_text(net, ev, decimals, 1, "ga", 0, r"\frac{\partial L}{\partial x}")))
        new = P["W1"][p, q] - eta * gW1[(p, q)]
        new_t = show(new, decimals, P["W1"][p, q] - eta * ev.approx_results["gW1"][(p, q)])[0]
        questions.append(Question("update", f"Take one SGD step with $\\eta = {show(eta, 12)[0]}$: "
                                  f"what is the new ${W1pq}$?",
                                  _update_answer(W1pq, P["W1"][p, q], eta, shown("gW1", (p, q)), new_t,
                                                 decimals, integer)))
    if not integer:     # every decimal number of an answer with all the decimals asked for
        for qq in questions:
            if not qq.options and qq.key != "update":
                qq.answer = re.sub(r"(?<![\w.])-?\d+\.\d+", lambda m: _fixed(m.group(0), decimals), qq.answer)
    circ = _circuit_question(rng) if circuit else None
    worked = worked_example(d, P, X.tolist(), Y.tolist(), decimals=decimals, lr=eta)
    return Variant(number, P, X, Y, table, questions, worked, circ)


MUTATIONS_BY_NAME = {m.name: m for m in MUTATIONS}


def _loss_only(md, ev, B):
    """The key's evaluation with only the mutated loss equation evaluated again on the key's
    values (None: not a real number)."""
    v = next(pe for pe in plan(md, B) if pe.equation.kind == "loss").entries[0].expr.xreplace(ev.env)
    num = sp.N(v, 30)
    if not num.is_real or not num.is_finite or v.has(sp.zoo, sp.nan):
        return None
    return replace(ev, results={**ev.results, "loss": {(): v}})


def _extra_distractors(ev, P, eta, p, q, targets):
    """Mistakes that are not a change of the derivation: a wrong entry read, the update's
    arithmetic. {question key: [(value, mistake text)]}."""
    out = {}
    for key, what, get in targets:
        if key.startswith("delta") or key == "ga0":
            vals = ev.results[key]
            asked = next(i for i in vals if _equal(get(ev), vals[i]))
            out[key] = [(vals[idx], f"the value for sample {idx[0] + 1} (the wrong row)" if idx[0] != asked[0]
                         else f"entry {idx[1] + 1} in place of entry {asked[1] + 1}")
                        for idx in sorted(vals) if idx != asked]
    if (q, p) in ev.results["gW1"] and (q, p) != (p, q):
        out["gW1"] = [(ev.results["gW1"][(q, p)],
                       r"the indices swapped ($\partial L / \partial W_{qp}$ for $W_{pq}$)")]
    g = ev.results["gW1"][(p, q)]
    out["update"] = [(P["W1"][p, q] - g, r"the learning rate forgotten ($W - \partial L/\partial W$)"),
                     (-eta * g, r"the step $-\eta\,\partial L/\partial W$ alone (the old weight not added)"),
                     (P["W1"][p, q] - eta * eta * g, r"$\eta$ applied twice")]
    return out


def _options(right, cands, decimals, gap):
    """Up to MAX_OPTIONS - 1 distractors, each at least ``gap`` from the key and from each
    other (in exact values), in the order given; fewer than MIN_DISTRACTORS: redraw."""
    num = lambda v: sp.N(v, 40)
    r = num(right)
    taken, opts, texts = [r], [], {show(right, decimals, r)[0]}
    for wrong, mistake in cands:
        w = num(wrong)
        if not w.is_Number or any(abs(w - t) < gap for t in taken):
            continue          # the key's value, or too close to it or to an earlier option
        t = show(wrong, decimals, w)[0]
        if t in texts:
            continue
        taken.append(w)
        texts.add(t)
        opts.append((t, mistake))
        if len(opts) == MAX_OPTIONS - 1:
            break
    if len(opts) < MIN_DISTRACTORS:
        raise _Redraw()
    return opts


def _update_answer(name, w, eta, g_text, new_text, decimals, integer):
    """W <- W - eta g from the printed gradient: "=" where those numbers give the printed new
    weight exactly, "\\approx" where it is rounded (the key is the exact value rounded, which
    the draw made equal to the hand calculation)."""
    g = sp.Rational(g_text)
    raw = w - eta * g
    rel = "=" if raw == sp.Rational(new_text) else r"\approx"
    pad = (lambda t: t) if integer else (lambda t: _fixed(t, decimals))
    return (f"${name} \\leftarrow {show(w, 12)[0]} - {show(eta, 12)[0]} \\cdot {_paren(pad(g_text))} "
            f"{rel} {pad(new_text)}$")


def _fixed(text, decimals):
    """A displayed number with all its decimals ("0.02" -> "0.020" at 3): every option and
    answer of a sheet shows the precision the sheet asks for."""
    if decimals == 0:
        return text
    whole, _, frac = text.partition(".")
    return f"{whole}.{frac.ljust(decimals, '0')}"


def _paren(t):
    return f"({t})" if t.startswith("-") else t


def _forward_question(net, B):
    names = ", ".join(f"$z^{{[{l}]}}$, $a^{{[{l}]}}$" for l in range(1, net.depth + 1))
    return f"Forward pass: compute {names}" + ("" if B == 1 else " for every sample") + "."


def _vector_text(net, ev, decimals, B, kind, l, name=None):
    """"$a^{[1]} = [...]$" (one column per sample of B): the vectors of quantity ``kind`` of
    layer ``l``, "=" only where every printed number is exact."""
    name = name or entry_name(naming.quantity(kind, l), (), True)
    rows = []
    for s in range(B):
        shown = [show(ev.results[f"{kind}{l}"][(s, j)], decimals, ev.approx_results[f"{kind}{l}"][(s, j)])
                 for j in range(net.sizes[l])]
        rel = "=" if all(ok for _, ok in shown) else r"\approx"     # "=" only where exact
        rows.append((rel, bmatrix([[t] for t, _ in shown])))
    if B == 1:
        return f"${name} {rows[0][0]} {rows[0][1]}$"
    return ", ".join(f"${name}_{{(s={s + 1})}} {rel} {r}$" for s, (rel, r) in enumerate(rows))


# Circuit expressions whose gates keep integers integral (add, mul, max, constant add), each
# showing a gate pattern of Soleymani's slides ("Multi-Layer Networks & Back-Propagation"): add distributes, mul swaps, max routes, copy adds.
CIRCUITS = (
    "(x + y)*z",
    "x*y + y*z",
    "max(x, y)*z + x*w",
    "(w0*x0 + w1*x1 + b)*v",
    "max(0, w*x + b)*v + w",
)


@dataclass
class CircuitQuestion:
    expr: str             # LaTeX of f
    at: str               # LaTeX of the values
    variables: list
    answer: str           # LaTeX: f and its gradients
    steps: str            # the circuit's forward and backward steps (symbp.render.circuit)
    picture: str          # its TikZ picture
    text: str = ""        # the expression as typed
    values: dict = field(default_factory=dict)


def _answers(c):
    return (c.value,) + tuple(c.gradients[v] for v in c.variables)


def _symmetric(expr, u, v):
    """Whether expr is unchanged by swapping u and v, tested at generic rational points (the
    circuits are polynomials with max: equal at these points means equal)."""
    free = sorted(expr.free_symbols, key=lambda t: t.name)
    swapped = expr.xreplace({u: v, v: u})
    for k in range(3):
        at = {t: sp.Rational(7 * i + 3 * k + 2, 11 + 2 * i + k) * (-1) ** (i + k) for i, t in enumerate(free)}
        if swapped.xreplace(at) != expr.xreplace(at):
            return False
    return True


def degenerate(c, text):
    """Why a circuit variant cannot tell a careful student from a careless one, or "": two
    variables with equal values, or two that a student may swap without changing any answer
    (unless the expression itself is symmetric in them), a max tie, a zero value or gradient."""
    from ..derivation.circuit import circuit
    vals, names = c.values, c.variables
    if any(n.tie for n in c.gates):
        return "a max tie"
    if c.value == 0 or any(c.gradients[v] == 0 for v in names):
        return "a zero value or gradient"
    for i, u in enumerate(names):
        for v in names[i + 1:]:
            if vals[u] == vals[v]:
                return f"{u} = {v}"
            if _symmetric(c.expr, c.node(u).symbol, c.node(v).symbol):
                continue        # symmetric in u and v: a swap is no mistake
            swapped = circuit(text, **{**vals, u: vals[v], v: vals[u]})
            if _answers(swapped) == _answers(c):
                return f"swapping {u} and {v} changes no answer"
    return ""


def _circuit_question(rng):
    """One staged-circuit question: distinct integer values in -3..3, not degenerate."""
    from ..derivation.circuit import circuit
    from .circuit import _name_tex, typed_latex
    for _ in range(MAX_TRIES):
        text = CIRCUITS[rng.randrange(len(CIRCUITS))]
        typed = [n for n in dict.fromkeys(re.findall(r"[a-z]\w*", text)) if n != "max"]   # as typed
        values = dict(zip(sorted(typed), rng.sample([v for v in range(-3, 4) if v != 0], len(typed))))
        c = circuit(text, **values)
        if degenerate(c, text):
            continue
        grads = c.gradients
        at = ", ".join(f"{_name_tex(n)} = {values[n]}" for n in typed)
        ans = [f"f = {show(c.value, 0)[0]}"] + [
            rf"\frac{{\partial f}}{{\partial {_name_tex(v)}}} = {show(grads[v], 0)[0]}" for v in typed]
        return CircuitQuestion(typed_latex(text), at, [_name_tex(v) for v in typed],
                               ", ".join(f"${a}$" for a in ans), c.latex(0), c.tikz(0), text, dict(values))
    raise _Redraw()


# ------------------------------------------------------------------------------------------
# command line
# ------------------------------------------------------------------------------------------
def cmd_exam(args):
    sizes = parse_network(args.network)
    exam = make_exam(sizes, activation=args.activation, loss=args.loss, variants=args.variants,
                     seed=args.seed, multiple_choice=args.multiple_choice, circuit=args.circuit,
                     decimals=args.decimals, batch=args.batch)
    pdf = True if args.pdf else (False if args.no_pdf else None)
    for path in exam.write(args.out, pdf=pdf):
        print(f"wrote {path}")
    return 0


def add_command(subparsers):
    p = subparsers.add_parser("exam", help="exam variants with answer keys (humane numbers)")
    p.add_argument("--network", default="2-2-1", help="widths, e.g. 2-2-1 (input first)")
    p.add_argument("--activation", default="sigmoid", help="hidden (and mse/sse output) activation")
    p.add_argument("--loss", default="mse", help="mse | sse | bce | ce")
    p.add_argument("--variants", type=int, default=10, help=f"1..{MAX_VARIANTS}")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--decimals", type=int, default=None, help="answers' decimals (default 3; 2 for ReLU)")
    p.add_argument("--batch", type=int, default=None, help="samples per variant (default 1; 2 with --multiple-choice)")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--multiple-choice", action="store_true", help="options from mutated derivations")
    p.add_argument("--circuit", action="store_true", help="add a computation-graph question")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--pdf", action="store_true", help="require PDFs (pdflatex)")
    g.add_argument("--no-pdf", action="store_true", help="write only the .tex files")
    p.set_defaults(fn=cmd_exam)

"""Scalar computation graphs (circuits): stage an expression into gates, run forward and backward.

Contract: ``circuit(expr, granularity="atomic", **values) -> Circuit``.

- ``expr`` is a SymPy expression or a string. A string is read by the safe parser
  (``symbp.exprparse.parse_expression``) with SymPy's evaluation switched off, so the graph follows
  the text: ``x*x + x`` stays a mul gate fed twice by x plus an add gate (x has three uses).
  Its variables are the identifiers that are not functions (exp, log, max, sqrt, sigmoid, relu)
  and not the constants pi and E. ``values`` gives one number per variable (int, float, Fraction
  or a SymPy Rational; floats by their shortest repr, 0.1 -> 1/10), so the arithmetic is exact.
- Gates (the table ``GATES`` holds each gate's forward operation and its names, nothing else):
  add, constant add, mul, constant multiply, negation, exp, log, reciprocal, pow, max, and with
  ``granularity="fused"`` a sigmoid gate wherever the expression contains 1/(1 + exp(-u)) (Soleymani's slides
    "choose a graph where local gradients are easy"). Sums and products of more than two terms
  are folded left to right in SymPy's printing order, so 1/(1+exp(-(w0 x0 + w1 x1 + w2))) gives
  the seed's stages: w0*x0, w1*x1, +, + w2, *-1, exp, +1, 1/x. A sum whose terms are all negated
  becomes a negation of the sum. Equal sub-graphs are shared, so their value branches.
- Forward values are exact SymPy numbers. Backward: the local gradient of every gate input is
  ``sympy.diff`` of the gate's forward expression with respect to that input, evaluated at the
  forward values; the gradient sent to an input is upstream x local; a value that feeds several
  gates gets the sum of what they send ("copy adds"). The gate patterns are named in the output:
  add distributes, mul swaps, max routes, copy adds.
- Ties of max (and ReLU = max(0, x) at x = 0): the whole upstream gradient goes to the first of
  the tied arguments, in the order the gate shows them (its one-sided derivative with that
  argument approached from above). relu(x) is max(0, x), so relu'(0) = 0, the core's convention.
  The output says so in a note line whenever a tie occurs.
- Bad input raises ``CircuitError`` (a ``SymbpError``) with one line: a missing or unknown
  variable value, an expression outside the gates, log of zero or a negative number, reciprocal
  of zero, a value that is not a finite real number, a local gradient that is infinite where it
  is evaluated, decimals outside 0..12.

A Circuit shows itself through the render stage (``symbp.render.circuit``: ``c.table()``,
``c.latex()``, ``c.tikz()``, ``c.document()``, ``c.write(...)``, ``str(c)``), which adds those
methods; this stage never imports it. ``parse_values`` reads the ``--at`` text of the ``symbp
circuit`` command (``symbp.render.circuit.add_command``).
"""
import ast
import functools
import re
from dataclasses import dataclass, field
from fractions import Fraction
from functools import lru_cache
from typing import Callable

import sympy as sp
from sympy.core.sorting import default_sort_key

from .. import naming
from ..errors import SymbpError
from ..model.exprparse import number, parse_expression
from ..model.functions import ACTIVATIONS, elementwise_functions

GRANULARITIES = ("atomic", "fused")
FUNCTIONS = ("exp", "log", "max", "sqrt", "sigmoid", "relu")
CONSTANTS = ("pi", "E")
MAX_DECIMALS = 12

# Gate patterns of the slides "Multi-Layer Networks & Back-Propagation", named in the output.
ADD_DISTRIBUTES = "add distributes"
MUL_SWAPS = "mul swaps"
MAX_ROUTES = "max routes"
COPY_ADDS = "copy adds"
PATTERN_TEXT = {
    ADD_DISTRIBUTES: "an add gate passes its upstream gradient unchanged to each input",
    MUL_SWAPS: "a mul gate sends each input the upstream gradient times the other input",
    MAX_ROUTES: "a max gate routes the whole upstream gradient to its largest input, 0 to the others",
    COPY_ADDS: "a value that feeds several gates gets the sum of the gradients they send back",
}
TIE_NOTE = ("max with tied arguments is not differentiable there; convention: the whole upstream "
            "gradient goes to the first tied argument (so relu(x) = max(0, x) has relu'(0) = 0)")


class CircuitError(SymbpError, ValueError):
    """A circuit cannot be built or evaluated as asked (one line: what and where)."""

    def __init__(self, message):
        super().__init__(f"circuit: {message}")


_sigmoid = ACTIVATIONS["sigmoid"].at
_sigma_display = sp.Function("sigma")


@dataclass(frozen=True)
class Gate:
    """One kind of gate: its forward operation in its inputs, and names. No derivatives here."""

    kind: str
    name: str
    forward: Callable            # (*inputs) -> SymPy expression
    pattern: str = ""            # the gate pattern of Soleymani's slides it shows
    display: Callable = None     # (*inputs) -> expression printed for the node (default forward)

    def shown(self, *args):
        return (self.display or self.forward)(*args)


GATES = {g.kind: g for g in (
    # display: printed without evaluation, so x*x shows as x*x (not x**2) in the table.
    Gate("add", "add", lambda a, b: a + b, ADD_DISTRIBUTES, lambda a, b: sp.Add(a, b, evaluate=False)),
    Gate("cadd", "constant add", lambda a, c: a + c),
    Gate("mul", "mul", lambda a, b: a * b, MUL_SWAPS, lambda a, b: sp.Mul(a, b, evaluate=False)),
    Gate("cmul", "constant multiply", lambda a, c: c * a, "", lambda a, c: sp.Mul(c, a, evaluate=False)),
    Gate("neg", "negation", lambda a: -a),
    Gate("exp", "exp", sp.exp),
    Gate("log", "log", sp.log),
    Gate("recip", "reciprocal", lambda a: 1 / a),
    Gate("pow", "pow", lambda a, b: a ** b),
    Gate("max", "max", lambda *a: sp.Max(*a), MAX_ROUTES),
    Gate("sigmoid", "sigmoid", _sigmoid, display=lambda a: _sigma_display(a)),
)}


@dataclass(frozen=True)
class Slot:
    """A gate input: a node (``node`` is its index) or a constant (``const``)."""

    node: int = None
    const: sp.Expr = None

    @property
    def is_node(self):
        return self.node is not None


@dataclass
class Node:
    """A value of the graph: an input variable (``gate is None``) or a gate's output."""

    index: int
    name: str
    symbol: sp.Symbol
    gate: Gate = None
    slots: tuple = ()
    value: sp.Expr = None
    local: tuple = ()            # per slot: exact local gradient (None for a constant slot)
    local_formula: tuple = ()    # per slot: the local gradient in the inputs' symbols
    output_formula: sp.Expr = None   # fused sigmoid: the local gradient in the gate's output
    grad: sp.Expr = None
    sends: list = field(default_factory=list)   # (consumer index, slot index, contribution)
    tie: bool = False            # a max gate evaluated at a tie (the convention applied)

    @property
    def is_input(self):
        return self.gate is None


@dataclass(frozen=True)
class Edge:
    src: int
    dst: int
    slot: int
    value: sp.Expr
    grad: sp.Expr


def _err(msg):
    return CircuitError(msg)


def _ev(e):
    """``e`` rebuilt with SymPy's evaluation on (undoes evaluate(False) parsing)."""
    if not e.args:
        return e
    with sp.evaluate(True):
        return e.func(*[_ev(a) for a in e.args])


def _finite_real(v):
    if v.has(sp.zoo, sp.oo, -sp.oo, sp.nan):
        return False
    if v.is_extended_real is False:
        return False
    n = v.evalf(30)
    return bool(n.is_real) and bool(n.is_finite)


def _is_zero(v):
    z = v.is_zero
    if z is not None:
        return z
    return abs(complex(v.evalf(60))) < 1e-50


def _sign(v):
    """-1, 0 or 1 for a finite real exact value."""
    if _is_zero(v):
        return 0
    return 1 if v.evalf(60) > 0 else -1


def _value(name, v):
    """An exact SymPy number from a user's value."""
    if isinstance(v, sp.Rational):
        return v
    if isinstance(v, Fraction):
        return sp.Rational(v.numerator, v.denominator)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise _err(f"value of {name}: expected a number (int, float or Fraction), got {type(v).__name__}")
    try:
        return number(v)
    except SymbpError:
        raise _err(f"value of {name}: expected a finite number, got {v!r}") from None


# --- parsing ---------------------------------------------------------------------------------

def _functions():
    table = elementwise_functions()
    return {name: table[name] for name in FUNCTIONS}


def _names(text):
    """Variables of an expression string in order of appearance, found by walking its ast."""
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError:
        return []          # the safe parser reports it
    called = {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    found = [n for n in ast.walk(tree) if isinstance(n, ast.Name) and id(n) not in called]
    found.sort(key=lambda n: (n.lineno, n.col_offset))
    out = []
    for n in found:
        if n.id in FUNCTIONS or n.id in CONSTANTS or n.id.startswith("_") or n.id in out:
            continue       # the parser rejects these with its own message
        out.append(n.id)
    return out


def _parse(text):
    names = _names(text)
    variables = {n: sp.Symbol(n, real=True) for n in names}
    # evaluate(False): the graph follows the text (x*x stays a product of two uses of x).
    with sp.evaluate(False):
        expr = parse_expression(text, variables, _functions(), "circuit", "expression")
    return expr


# --- staging ---------------------------------------------------------------------------------

def _flat(e, cls):
    if isinstance(e, cls):
        out = []
        for a in e.args:
            out.extend(_flat(a, cls))
        return out
    return [e]


def _coeff(t):
    """(numeric coefficient, other factors) of a product, without evaluating the factors."""
    c, rest = sp.Integer(1), []
    for f in _flat(t, sp.Mul):
        if f.is_Number:
            c *= f
        else:
            rest.append(f)
    return c, rest


def _negated(t):
    """-t, keeping the structure of t's terms and factors."""
    if isinstance(t, sp.Add):
        return sp.Add(*[_negated(a) for a in _flat(t, sp.Add)], evaluate=False)
    c, rest = _coeff(t)
    c = -c
    if not rest:
        return c
    if c == 1:
        return rest[0] if len(rest) == 1 else sp.Mul(*rest, evaluate=False)
    return sp.Mul(c, *rest, evaluate=False)


def _degree(t):
    try:
        return sp.Poly(_ev(t)).total_degree()
    except (sp.PolynomialError, sp.GeneratorsNeeded):
        return 0


def _term_order(terms):
    """Terms of a sum in SymPy's printing order (higher degree first, then the sort key)."""
    return sorted(terms, key=lambda t: (-_degree(t), default_sort_key(_ev(t))))


def _factor_order(factors):
    return sorted(factors, key=lambda f: default_sort_key(_ev(f)))


def _sigmoid_argument(e):
    """u when e is 1/(1 + exp(v)) with v = -u, else None."""
    if not (isinstance(e, sp.Pow) and e.exp == -1):
        return None
    terms = _flat(e.base, sp.Add)
    if len(terms) != 2:
        return None
    ones = [t for t in terms if t == 1]
    exps = [t for t in terms if isinstance(t, sp.exp)]
    if len(ones) != 1 or len(exps) != 1:
        return None
    return _negated(exps[0].args[0])


class _Stager:
    def __init__(self, fused):
        self.fused = fused
        self.nodes = []
        self.by_name = {}
        self.memo = {}

    def variable(self, sym):
        if sym.name not in self.by_name:
            n = Node(len(self.nodes), sym.name, sym)
            self.nodes.append(n)
            self.by_name[sym.name] = n.index
        return Slot(node=self.by_name[sym.name])

    def gate(self, kind, slots):
        key = (kind, tuple(slots))
        if key not in self.memo:
            n = Node(len(self.nodes), None, None, GATES[kind], tuple(slots))
            self.nodes.append(n)
            self.memo[key] = n.index
        return Slot(node=self.memo[key])

    def const(self, e):
        v = _ev(e)
        if not _finite_real(v):
            raise _err(f"the constant part {sp.sstr(_ev(e))} is not a finite real number")
        return Slot(const=v)

    def stage(self, e):
        if not e.free_symbols:
            return self.const(e)
        if isinstance(e, sp.Symbol):
            return self.variable(e)
        if self.fused:
            u = _sigmoid_argument(e)
            if u is not None:
                return self.gate("sigmoid", [self.stage(u)])
        if isinstance(e, sp.Add):
            return self.add(_flat(e, sp.Add))
        if isinstance(e, sp.Mul):
            return self.mul(_flat(e, sp.Mul))
        if isinstance(e, sp.Pow):
            if e.exp == -1:
                return self.gate("recip", [self.stage(e.base)])
            return self.gate("pow", [self.stage(e.base), self.stage(e.exp)])
        if isinstance(e, sp.exp):
            return self.gate("exp", [self.stage(e.args[0])])
        if isinstance(e, sp.log) and len(e.args) == 1:
            return self.gate("log", [self.stage(e.args[0])])
        if isinstance(e, sp.Max):
            return self.gate("max", [self.stage(a) for a in e.args])
        what = type(e).__name__ if not isinstance(e, sp.Function) else f"the function {e.func.__name__}"
        raise _err(f"{what} in {sp.sstr(_ev(e))} is outside the circuit's gates "
                   f"(+, -, *, /, **, exp, log, sqrt, max, sigmoid, relu)")

    def add(self, terms):
        consts = [t for t in terms if not t.free_symbols]
        rest = [t for t in terms if t.free_symbols]
        if consts:
            c = self.const(sp.Add(*consts, evaluate=False))
            if not _is_zero(c.const):
                return self.gate("cadd", [self.add(rest), c])
        if len(rest) > 1 and all(_coeff(t)[0] < 0 for t in rest):
            # -a - b - c is staged as -(a + b + c): one negation gate, as the seed draws it.
            return self.gate("neg", [self.add([_negated(t) for t in rest])])
        return self.chain("add", _term_order(rest))

    def mul(self, factors):
        consts = [f for f in factors if not f.free_symbols]
        rest = [f for f in factors if f.free_symbols]
        if consts:
            c = self.const(sp.Mul(*consts, evaluate=False))
            if c.const == -1:
                return self.gate("neg", [self.mul(rest)])
            if c.const != 1:
                return self.gate("cmul", [self.mul(rest), c])
        return self.chain("mul", _factor_order(rest))

    def chain(self, kind, operands):
        """Binary gates of one kind, left to right: ((t1 op t2) op t3) ..."""
        return functools.reduce(lambda cur, t: self.gate(kind, [cur, self.stage(t)]), operands[1:], self.stage(operands[0]))


def _gate_names(variables, count):
    """Names n1, n2, ... of gate outputs, with a prefix no variable uses."""
    for prefix in ("n", "v", "u", "t", "g", "node"):
        if not any(re.fullmatch(rf"{prefix}\d+", v) for v in variables):
            return [f"{prefix}{i}" for i in range(1, count + 1)]
    raise _err("cannot name the gates: the variables use every prefix n, v, u, t, g, node")


# --- forward and backward --------------------------------------------------------------------

_EPS = sp.Symbol("epsilon", positive=True)


def _placeholders(k):
    return sp.symbols(f"p0:{k}", real=True)


def _slot_value(nodes, s):
    return nodes[s.node].value if s.is_node else s.const


def _slot_symbol(nodes, s):
    return nodes[s.node].symbol if s.is_node else s.const


def _describe(node, nodes):
    return f"{node.name} = {sp.sstr(node.gate.shown(*[_slot_symbol(nodes, s) for s in node.slots]))}"


def _forward(node, nodes):
    vals = [_slot_value(nodes, s) for s in node.slots]
    kind, where = node.gate.kind, _describe(node, nodes)
    if kind == "log" and _sign(vals[0]) <= 0:
        raise _err(f"log of zero or a negative number: {where} with "
                   f"{nodes[node.slots[0].node].name} = {sp.sstr(vals[0])}")
    if kind == "recip" and _sign(vals[0]) == 0:
        raise _err(f"reciprocal of zero: {where} with {nodes[node.slots[0].node].name} = 0")
    v = node.gate.forward(*vals)
    if not _finite_real(v):
        args = ", ".join(f"{_slot_name(nodes, s)} = {sp.sstr(x)}" for s, x in zip(node.slots, vals)
                         if s.is_node)
        raise _err(f"{where} is not a finite real number at {args}")
    return v


def _slot_name(nodes, s):
    return nodes[s.node].name if s.is_node else sp.sstr(s.const)


def _local(node, nodes):
    """Exact local gradients, by sympy.diff of the gate's forward expression, at the values."""
    p = _placeholders(len(node.slots))
    # Constants go in before differentiating (x**2 -> 2*x, which is 0 at x = 0, not 0 * oo).
    fwd = node.gate.forward(*[pk if s.is_node else s.const for pk, s in zip(p, node.slots)])
    vals = [_slot_value(nodes, s) for s in node.slots]
    at = {pk: v for pk, v, s in zip(p, vals, node.slots) if s.is_node}
    if node.gate.kind == "max":
        top = max(range(len(vals)), key=lambda k: (vals[k].evalf(60), -k))
        tied = [k for k in range(len(vals)) if _is_zero(vals[k] - vals[top])]
        if len(tied) > 1:
            # The one-sided convention: the first tied argument wins, as if it were epsilon above
            # the others, with epsilon -> 0+ (a constant first: the tied inputs sit below it).
            node.tie = True
            if node.slots[tied[0]].is_node:
                at[p[tied[0]]] = vals[tied[0]] + _EPS
            else:
                for k in tied[1:]:
                    at[p[k]] = vals[k] - _EPS
    shown = {pk: _slot_symbol(nodes, s) for pk, s in zip(p, node.slots)}
    local, formula = [], []
    for k, s in enumerate(node.slots):
        if not s.is_node:
            local.append(None)
            formula.append(None)
            continue
        d = sp.diff(fwd, p[k])
        v = d.xreplace(at)
        if v.has(sp.nan):
            # 0 * oo from the general formula (d/dx x**y = y x**y / x at x = 0): put the other
            # inputs in first, so SymPy simplifies before this input's value goes in.
            others = {q: x for q, x in at.items() if q != p[k]}
            v = d.xreplace(others).xreplace({p[k]: at[p[k]]}) if p[k] in at else v
        if v.has(_EPS):
            v = sp.limit(v, _EPS, 0, "+")
        if not _finite_real(v):
            what = "infinite" if v.has(sp.zoo, sp.oo, -sp.oo) else f"{sp.sstr(v)}, not a finite real number"
            raise _err(f"not differentiable where evaluated: d{node.name}/d{nodes[s.node].name} of "
                       f"{_describe(node, nodes)} is {what} at "
                       + ", ".join(f"{_slot_name(nodes, t)} = {sp.sstr(x)}"
                                   for t, x in zip(node.slots, vals) if t.is_node))
        local.append(v)
        formula.append(d.xreplace(shown))
    if node.gate.kind == "sigmoid":
        # Soleymani's slides write this gate's local gradient as (1 - sigma) sigma: the core's
        # rewriting of f'(z) in terms of the output a = f(z), checked there.
        form = _output_form(node.gate.kind)
        if form is not None:
            node.output_formula = form.xreplace({naming.A: node.symbol})
    return tuple(local), tuple(formula)


@lru_cache(maxsize=None)
def _output_form(kind):
    from .local import output_form     # late: needed for the sigmoid gate only
    _, form, uses = output_form(GATES[kind].forward(naming.Z))
    return form if uses == "a" else None


# --- the Circuit -----------------------------------------------------------------------------

class Circuit:
    """A staged scalar expression with exact forward values and gradients (see module docs)."""

    def __init__(self, expr, text, granularity, values, nodes, variables):
        self.expr = expr                    # the expression, evaluated by SymPy
        self.text = text                    # as the user wrote it
        self.granularity = granularity
        self.values = values                # name -> exact value
        self.nodes = nodes                  # topological order (inputs first where they appear)
        self.variables = variables          # input names, in the order they first appear
        self.output = nodes[-1]

    @property
    def value(self):
        return self.output.value

    @property
    def gradients(self):
        """name -> exact df/d(name)."""
        return {v: self.node(v).grad for v in self.variables}

    @property
    def gates(self):
        return [n for n in self.nodes if not n.is_input]

    @property
    def inputs(self):
        return [n for n in self.nodes if n.is_input]

    def node(self, name):
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def edges(self):
        out = []
        for n in self.gates:
            for k, s in enumerate(n.slots):
                if s.is_node:
                    src = self.nodes[s.node]
                    contrib = next(c for (i, j, c) in src.sends if i == n.index and j == k)
                    out.append(Edge(s.node, n.index, k, src.value, contrib))
        return out

    def uses(self, node):
        """How many gate inputs read this node's value."""
        return len(node.sends)

    def patterns(self):
        """The gate patterns this circuit shows: pattern -> node names, in the seed's order."""
        found = {}
        for n in self.gates:
            if n.gate.pattern:
                found.setdefault(n.gate.pattern, []).append(n.name)
        branching = [n.name for n in self.nodes if self.uses(n) > 1]
        if branching:
            found[COPY_ADDS] = branching
        order = (ADD_DISTRIBUTES, MUL_SWAPS, COPY_ADDS, MAX_ROUTES)
        return {p: found[p] for p in order if p in found}

    def notes(self):
        """One line per gate pattern shown, and the tie convention where it was used."""
        lines = [f"{p}: {PATTERN_TEXT[p]} ({', '.join(names)})" for p, names in self.patterns().items()]
        ties = [n.name for n in self.gates if n.tie]
        if ties:
            lines.append(f"convention at {', '.join(ties)}: {TIE_NOTE}")
        return lines

    def __repr__(self):
        return f"Circuit({self.text!r}, {self.granularity}, {len(self.gates)} gates)"


def check_decimals(decimals):
    if isinstance(decimals, bool) or not isinstance(decimals, int) or not 0 <= decimals <= MAX_DECIMALS:
        raise _err(f"decimals: expected an integer from 0 to {MAX_DECIMALS}, got {decimals!r}")
    return decimals


def circuit(expr, granularity="atomic", at=None, **values):
    """Stage ``expr`` into gates and run the forward and backward pass at ``values``.

    ``at`` is an optional mapping name -> value, for names that clash with the keywords here.
    """
    if granularity not in GRANULARITIES:
        raise _err(f"granularity: expected one of {', '.join(GRANULARITIES)}, got {granularity!r}")
    given = dict(at or {})
    for k, v in values.items():
        if k in given:
            raise _err(f"two values for {k}")
        given[k] = v
    if isinstance(expr, str):
        text, parsed = expr.strip(), _parse(expr)
    elif isinstance(expr, sp.Basic):
        text, parsed = sp.sstr(expr), expr
    else:
        raise _err(f"expected an expression (a string or a SymPy expression), got {type(expr).__name__}")
    if not isinstance(parsed, sp.Expr) or parsed.has(sp.I):
        raise _err(f"{text!r} is not a real scalar expression")
    free = sorted(parsed.free_symbols, key=lambda s: s.name)
    if not free:
        raise _err(f"{text!r} has no variables: nothing to differentiate")
    names = [s.name for s in free]
    if len(set(names)) != len(names):
        raise _err(f"two different symbols share a name in {text!r}")
    unknown = [k for k in given if k not in names]
    if unknown:
        raise _err(f"value given for {unknown[0]}, which is not a variable of {text!r} "
                   f"(variables: {', '.join(names)})")
    missing = [n for n in names if n not in given]
    if missing:
        raise _err(f"no value for the variable {missing[0]} (give values for: {', '.join(names)})")
    exact = {k: _value(k, given[k]) for k in names}

    st = _Stager(granularity == "fused")
    out = st.stage(parsed)
    if not out.is_node:
        raise _err(f"{text!r} is constant: nothing to differentiate")
    nodes = st.nodes
    if nodes[out.node].is_input:
        raise _err(f"{text!r} is a single variable: there is no gate to stage")
    if out.node != len(nodes) - 1:
        raise _err(f"{text!r} stages to a graph whose output is not its last node")
    variables = [n.name for n in nodes if n.is_input]
    gates = [n for n in nodes if not n.is_input]
    for name, n in zip(_gate_names(variables, len(gates)), gates):
        n.name = name
        n.symbol = sp.Symbol(name, real=True)

    for n in nodes:                       # forward, in topological order
        n.value = exact[n.name] if n.is_input else _forward(n, nodes)
    for n in nodes:
        if not n.is_input:
            n.local, n.local_formula = _local(n, nodes)
    out_node = nodes[-1]
    out_node.grad = sp.Integer(1)
    for n in reversed(nodes):             # backward: upstream x local, summed over uses
        if n is not out_node:
            # Exact values as SymPy's arithmetic leaves them: simplify() is slow here and
            # rewrites exp into cosh, which reads worse.
            n.grad = sp.Add(*[c for (_, _, c) in n.sends]) if n.sends else sp.Integer(0)
        for k, s in enumerate(n.slots):
            if s.is_node:
                nodes[s.node].sends.append((n.index, k, n.grad * n.local[k]))
    for n in nodes:                       # sends were collected from the output backwards
        n.sends.sort(key=lambda t: (t[0], t[1]))
    return Circuit(_ev(parsed), text, granularity, exact, nodes, variables)


# --- command line ----------------------------------------------------------------------------

def parse_values(text):
    """``"w0=2,x0=-1,w1=1/3,x1=0.5"`` -> {name: Fraction}, without eval."""
    values = {}
    for part in [p for p in text.split(",") if p.strip()]:
        if "=" not in part:
            raise _err(f"--at: expected name=value, got {part.strip()!r}")
        name, raw = (s.strip() for s in part.split("=", 1))
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", name):
            raise _err(f"--at: {name!r} is not a variable name")
        if name in values:
            raise _err(f"--at: two values for {name}")
        if not re.fullmatch(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?(/\d+)?", raw):
            raise _err(f"--at: {name}={raw}: expected a number (integer, decimal or p/q)")
        try:
            values[name] = Fraction(raw)
        except (ValueError, ZeroDivisionError):
            raise _err(f"--at: {name}={raw}: expected a number with a nonzero denominator") from None
    return values

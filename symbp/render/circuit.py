"""Text, LaTeX and TikZ of a Circuit (symbp.circuit): tables, steps, pictures, documents.

Contract: every function reads a built ``Circuit`` and never derives; numbers are rounded here
(half up on the exact value, ``decimals`` in 0..12). The steps and the picture show the
calculation by hand (``Hand``): every gate value, local gradient and upstream x local product
rounded and used rounded further on, so each printed step recomputes from the numbers it shows
("=" where exact, "\\approx" where rounded); the document's result gives the exact values (and
the hand value where the two differ). Titles show the expression as typed (``typed_latex``).

- ``table(c, decimals)``: plain text, one row per node (node, gate, what it computes, value,
  local gradient(s) as formula = number, gradient, gate pattern), then f, the gradients, the
  exact values and the note lines (gate patterns, the max tie convention where used).
- ``latex(c, decimals)``: two align* blocks, the forward steps and the backward steps written
  "[upstream] x [local] = result", with the branch sums ("copy adds"); a tie note where needed.
- ``tikz(c, decimals)``: a tikzpicture in the style of the course slides' circuits: gates as
  circles from left to right, forward values above each edge (green), gradients below (red).
  Where the layout with one node per input would cross wires or overprint labels
  (``layout_problems``), an input that feeds several gates is drawn beside each of them, each
  copy marked with the summed gradient.
- ``document(c, decimals)``: a standalone article with the picture, the steps and the notes.
- ``write(c, latex=, tikz=, pdf=, decimals=)``: renders everything (and compiles the PDF in a
  temporary directory) before writing any file, each atomically; returns the paths written.

The public face (symbp/__init__.py) makes these the Circuit's methods (``c.table()``, ...).
``add_command(subparsers)`` adds ``symbp circuit "EXPR" --at name=value,... [--fused]
[--latex FILE] [--tikz FILE] [--pdf] [--decimals N]``.
"""
import ast
import re
from collections import Counter
from itertools import combinations
from decimal import ROUND_HALF_UP, Decimal

import sympy as sp
from sympy.printing.latex import LatexPrinter

from ..derivation.circuit import TIE_NOTE, CircuitError, _err, check_decimals, circuit, parse_values
from ..output import environment
from .pdf import with_pdf, write_all

# Picture geometry (cm): column spacing, row spacing, length of the output wire.
DX, DY, OUT = 2.4, 1.6, 2.0
MAX_UNFOLDED = 400   # leaves of the unfolded tree, beyond which shared values are not unfolded


def fmt(v, decimals):
    """A value rounded for display, half away from zero, never "-0.00"."""
    d = Decimal(str(sp.N(v, decimals + 30)))
    q = d.quantize(Decimal(1).scaleb(-decimals), rounding=ROUND_HALF_UP)
    if q == 0:
        q = abs(q)
    return f"{q:f}"


class _Printer(LatexPrinter):
    """SymPy's LaTeX, with the step function of max written as an indicator [u > 0]."""

    def _print_Heaviside(self, e, exp=None):
        return rf"\mathbf{{1}}\left[{self._print(e.args[0])} > 0\right]"


def _tex(e):
    return _Printer().doprint(e)


# --- the expression as typed -----------------------------------------------------------------
_FUNC_TEX = {"exp": r"\exp", "log": r"\log", "max": r"\max", "sigmoid": r"\sigma",
             "relu": r"\operatorname{relu}"}


def _name_tex(name):
    m = re.match(r"^([A-Za-z]+)_?(\d+)$", name)
    return {"pi": r"\pi", "E": "e"}.get(name) or (f"{m.group(1)}_{{{m.group(2)}}}" if m else name)


def _typed(node):
    """(LaTeX, precedence) of an ast node of the expression text (1 sum, 2 product, 3 sign,
    4 power, 5 atom); the text was already accepted by the safe parser."""
    if isinstance(node, ast.Expression):
        return _typed(node.body)
    if isinstance(node, ast.Name):
        return _name_tex(node.id), 5
    if isinstance(node, ast.Constant):
        return str(node.value), 5
    if isinstance(node, ast.UnaryOp):
        t, p = _typed(node.operand)
        sign = "-" if isinstance(node.op, ast.USub) else "+"
        return sign + (rf"\left({t}\right)" if p <= 2 else t), 3
    if isinstance(node, ast.Call):
        name = node.func.id if isinstance(node.func, ast.Name) else "?"
        args = [_typed(a)[0] for a in node.args]
        if name == "sqrt":
            return rf"\sqrt{{{args[0]}}}", 5
        head = _FUNC_TEX.get(name) or r"\operatorname{%s}" % name
        return rf"{head}\left({', '.join(args)}\right)", 5
    if isinstance(node, ast.BinOp):
        (lt, lp), (rt, rp) = _typed(node.left), _typed(node.right)
        paren = lambda t: rf"\left({t}\right)"
        if isinstance(node.op, (ast.Add, ast.Sub)):
            return f"{lt} {'+' if isinstance(node.op, ast.Add) else '-'} {rt if rp > 1 else paren(rt)}", 1
        if isinstance(node.op, ast.Mult):
            lt = lt if lp >= 2 else paren(lt)
            rt = rt if rp > 3 or (rp == 2 and not isinstance(node.right, ast.BinOp)) else paren(rt)
            sep = r" \cdot " if rt[:1].isdigit() or rt.startswith("-") else " "
            return f"{lt}{sep}{rt}", 2
        if isinstance(node.op, ast.Div):
            return rf"\frac{{{lt}}}{{{rt}}}", 5
        if isinstance(node.op, ast.Pow):
            return f"{{{lt if lp >= 5 else paren(lt)}}}^{{{rt}}}", 4
    raise ValueError("not an expression of the circuit grammar")


def typed_latex(text):
    r"""LaTeX of an expression string as it was typed (its own grouping and order, not SymPy's
    rewrite): "1/(1+exp(-(w0*x0 + w1*x1 + w2)))" -> \frac{1}{1 + \exp(-(w_{0} x_{0} + ...))}."""
    return _typed(ast.parse(text.strip(), mode="eval"))[0]


def title_tex(c):
    """The circuit's expression for a title: as typed where it was typed."""
    try:
        return typed_latex(c.text)
    except (SyntaxError, ValueError, AttributeError):
        return _tex(c.expr)


def _shown(c, n):
    """The expression a gate computes, in its inputs' symbols."""
    return n.gate.shown(*[c.nodes[s.node].symbol if s.is_node else s.const for s in n.slots])


def _signed_sum(parts):
    """"0.04", "-0.16" -> "0.04 - 0.16"."""
    out = parts[0]
    for p in parts[1:]:
        out += f" - {p[1:]}" if p.startswith("-") else f" + {p}"
    return out


def _copy_sum(c, n, f):
    return f"{_signed_sum([f(x) for (_, _, x) in n.sends])} = {f(n.grad)}"


# --- the calculation by hand ----------------------------------------------------------------

def _round(v, decimals):
    """The exact Rational that ``fmt`` shows for ``v``."""
    return sp.Rational(fmt(v, decimals))


class Hand:
    """The circuit worked by hand at ``decimals``: every gate value, local gradient and
    upstream x local product rounded (half up) and used rounded further on, so that each step
    printed can be recomputed from the numbers it shows. ``exact[...]`` says whether a printed
    result is exactly what its printed operands give (printed with "=", else "\\approx").
    Input values are the given numbers themselves."""

    def __init__(self, c, decimals):
        self.d = decimals
        val, exact, local, local_exact, grad, sends, send_exact = {}, {}, {}, {}, {}, {}, {}

        def keep(store, flags, key, raw):      # rounded, and whether that changed nothing
            store[key] = _round(raw, decimals)
            flags[key] = _same(raw, store[key])
        for n in c.nodes:
            if n.is_input:
                val[n.index] = n.value
            else:
                keep(val, exact, n.index, n.gate.forward(*[val[s.node] if s.is_node else s.const for s in n.slots]))
        for n in c.gates:
            at = {c.nodes[s.node].symbol: val[s.node] for s in n.slots if s.is_node}
            at[n.symbol] = val[n.index]
            for k, s in enumerate(n.slots):
                if not s.is_node:
                    continue
                if n.gate.kind == "max":
                    raw = n.local[k]        # 0 or 1: the router's choice (and tie convention)
                elif n.output_formula is not None:
                    raw = n.output_formula.xreplace(at)
                else:
                    raw = n.local_formula[k].xreplace(at)
                keep(local, local_exact, (n.index, k), raw)
        grad[c.output.index] = sp.Integer(1)
        for n in reversed(c.nodes):
            if n is not c.output:
                grad[n.index] = sp.Add(*[sends[(i, j)] for (i, j, _) in n.sends]) if n.sends else sp.Integer(0)
            for k, s in enumerate(n.slots):
                if s.is_node:
                    keep(sends, send_exact, (n.index, k), grad[n.index] * local[(n.index, k)])
        self.value, self.value_exact, self.local, self.local_exact = val, exact, local, local_exact
        self.grad, self.send, self.send_exact = grad, sends, send_exact

    def text(self, v):
        """A hand value as printed (the given inputs exactly)."""
        text = fmt(v, self.d)
        return text if sp.Rational(text) == v else _given_text(v)


def _same(a, b):
    d = sp.nsimplify(a - b) if not (a - b).is_Rational else a - b
    if d.is_zero is not None:
        return bool(d.is_zero)
    return abs(sp.N(a - b, 50)) < sp.Float("1e-40")


def shortest(v, decimals, otherwise=None):
    """The shortest decimal of at most ``decimals`` places that is exactly ``v`` (0.1, 0.22,
    0.116), else ``otherwise`` (default: ``v`` rounded to ``decimals`` places)."""
    exact = next((t for t in (fmt(v, d) for d in range(decimals + 1)) if sp.Rational(t) == v), None)
    return exact or (fmt(v, decimals) if otherwise is None else otherwise)


def _given_text(v):
    v = sp.Rational(v)
    return shortest(v, 12, sp.latex(v))


def _rel(ok):
    return "=" if ok else r"\approx"


# --- plain text ------------------------------------------------------------------------------

def table(c, decimals=2):
    d = check_decimals(decimals)
    f = lambda v: fmt(v, d)
    at = ", ".join(f"{k} = {sp.sstr(c.values[k])}" for k in c.variables)
    lines = [f"f = {c.text}", f"at {at}  ({c.granularity} gates: {len(c.gates)})", ""]
    rows = [("node", "gate", "computes", "value", "local gradient", "gradient", "pattern")]
    for n in c.inputs:
        note = f"copy adds: {_copy_sum(c, n, f)}" if c.uses(n) > 1 else ""
        rows.append((n.name, "input", "", f(n.value), "", f(n.grad), note))
    for n in c.gates:
        locs = []
        for k, s in enumerate(n.slots):
            if not s.is_node:
                continue
            form = n.local_formula[k]
            text = f"d{n.name}/d{c.nodes[s.node].name} = "
            if not form.is_Number:
                text += f"{sp.sstr(form)} = "
                if n.output_formula is not None:
                    text += f"{sp.sstr(n.output_formula)} = "
            locs.append(text + f(n.local[k]))
        notes = [n.gate.pattern] if n.gate.pattern else []
        if c.uses(n) > 1:
            notes.append(f"copy adds: {_copy_sum(c, n, f)}")
        if n is c.output:
            notes.append("output f")
        if n.tie:
            notes.append("tie: see note")
        rows.append((n.name, n.gate.name, sp.sstr(_shown(c, n)), f(n.value), "; ".join(locs),
                     f(n.grad), "; ".join(notes)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    right = {3, 5}   # numbers aligned right
    for r in rows:
        cells = [cell.rjust(w) if i in right else cell.ljust(w) for i, (cell, w) in enumerate(zip(r, widths))]
        lines.append("  ".join(cells).rstrip())
    lines += ["", f"f = {f(c.value)}", "gradients: " + ", ".join(f"df/d{k} = {f(v)}" for k, v in c.gradients.items()),
              "exact:", f"  f = {sp.sstr(c.value)}"] + [f"  df/d{k} = {sp.sstr(v)}" for k, v in c.gradients.items()]
    notes = c.notes()
    if notes:
        lines.append("notes:")
        lines.extend(f"  {s}" for s in notes)
    return "\n".join(lines) + "\n"


# --- LaTeX steps -----------------------------------------------------------------------------

def _dfd(sym):
    return rf"\frac{{\partial f}}{{\partial {_tex(sym)}}}"


def _text(s):
    """Plain text for LaTeX's text mode."""
    rep = {"\\": r"\textbackslash{}", "_": r"\_", "%": r"\%", "&": r"\&", "#": r"\#", "$": r"\$",
           "{": r"\{", "}": r"\}", "^": r"\^{}", "~": r"\~{}"}
    return "".join(rep.get(ch, ch) for ch in s)


# A gate's operation as a student writes it, from its operands as printed (t), the same with a
# negative number parenthesized (p), and whether they are symbols (no product sign between them).
_WRITTEN = {
    "add": lambda t, p, symbols: " + ".join(p),
    "cadd": lambda t, p, symbols: " + ".join(p),
    "mul": lambda t, p, symbols: (" " if symbols else r" \cdot ").join(p),
    "cmul": lambda t, p, symbols: rf"{p[1]} \cdot {p[0]}",
    "neg": lambda t, p, symbols: f"-{p[0]}",
    "exp": lambda t, p, symbols: f"e^{{{t[0]}}}",
    "log": lambda t, p, symbols: rf"\log {p[0]}" if not t[0].startswith("-") else rf"\log\left({t[0]}\right)",
    "recip": lambda t, p, symbols: rf"\frac{{1}}{{{t[0]}}}",
    "pow": lambda t, p, symbols: f"{{{t[0] if symbols else p[0]}}}^{{{t[1]}}}",
    "max": lambda t, p, symbols: rf"\max\left({', '.join(t)}\right)",
    "sigmoid": lambda t, p, symbols: rf"\sigma\left({t[0]}\right)",
}


def _with_numbers(n, t, symbols=False):
    """A gate's operation on printed numbers (or, ``symbols``, on its inputs' symbols), its
    operands in slot order, as a student writes it."""
    written = _WRITTEN.get(n.gate.kind, lambda t, p, symbols: ", ".join(t))
    return written(t, [f"({x})" if x.startswith("-") else x for x in t], symbols)


def _steps(c, decimals):
    h = Hand(c, decimals)
    f = h.text
    forward = []
    for n in c.gates:
        # the gate's expression with the printed numbers of its inputs, then its printed value
        with_numbers = _with_numbers(n, [f(h.value[s.node]) if s.is_node else _tex(s.const)
                                         for s in n.slots])
        # the symbols in the same order as the numbers (SymPy's printing may reorder a sum)
        with_symbols = _with_numbers(n, [_tex(c.nodes[s.node].symbol) if s.is_node else _tex(s.const)
                                         for s in n.slots], symbols=True)
        forward.append(rf"{_tex(n.symbol)} &= {with_symbols} = {with_numbers} "
                       rf"{_rel(h.value_exact[n.index])} {f(h.value[n.index])} && \text{{{n.gate.name}}}")
    forward.append(rf"f &= {_tex(c.output.symbol)} = {f(h.value[c.output.index])}")

    # A branching value gets its sum line right after its last contribution (lowest consumer).
    last = {n.index: min(i for (i, _, _) in n.sends) for n in c.nodes if c.uses(n) > 1}
    backward = [rf"{_dfd(c.output.symbol)} &= 1 && \text{{output}}"]
    for n in reversed(c.gates):
        counts, seen = Counter(s.node for s in n.slots if s.is_node), {}
        for k, s in enumerate(n.slots):
            if not s.is_node:
                continue
            src = c.nodes[s.node]
            lhs = _dfd(src.symbol)
            if c.uses(src) > 1:
                seen[s.node] = seen.get(s.node, 0) + 1
                via = rf"\text{{via }} {_tex(n.symbol)}"
                if counts[s.node] > 1:
                    via += rf",\ \text{{input {seen[s.node]}}}"
                lhs = rf"\left.{lhs}\right|_{{{via}}}"
            local = rf"\frac{{\partial {_tex(n.symbol)}}}{{\partial {_tex(src.symbol)}}}"
            form = n.local_formula[k]
            up = f(h.grad[n.index])
            rhs = rf"{_dfd(n.symbol)}\,{local} = [{up}] \times "
            if not form.is_Number:
                sym = _tex(form)
                if n.output_formula is not None:
                    sym += f" = {_tex(n.output_formula)}"
                rhs += rf"\left[{sym}\right] {_rel(h.local_exact[(n.index, k)])} [{up}] \times "
            rhs += (rf"[{f(h.local[(n.index, k)])}] {_rel(h.send_exact[(n.index, k)])} "
                    rf"{f(h.send[(n.index, k)])}")
            tag = n.gate.pattern or n.gate.name
            backward.append(rf"{lhs} &= {rhs} && \text{{{tag}}}")
        for k in sorted({s.node for s in n.slots if s.is_node}):
            if last.get(k) == n.index:
                src = c.nodes[k]
                parts = _signed_sum([f(h.send[(i, j)]) for (i, j, _) in src.sends])
                backward.append(rf"{_dfd(src.symbol)} &= {parts} = {f(h.grad[k])} && \text{{copy adds}}")
    ties = [n for n in c.gates if n.tie]
    return forward, backward, ties


def latex(c, decimals=2):
    d = check_decimals(decimals)
    forward, backward, ties = _steps(c, d)
    return environment().get_template("latex/circuit_steps.tex.j2").render(
        forward=forward, backward=backward,
        tie_note=(_text(f"At {', '.join(n.name for n in ties)}: {TIE_NOTE}.") if ties else ""))


# --- TikZ ------------------------------------------------------------------------------------

_LABELS = {"add": "+", "mul": r"\times", "neg": r"\times(-1)", "recip": "1/x", "exp": r"\exp",
           "log": r"\log", "max": r"\max", "sigmoid": r"\sigma"}


def _gate_label(c, n):
    k = n.gate.kind
    if k in ("cadd", "cmul"):
        v = next(s.const for s in n.slots if not s.is_node)
        if k == "cadd":
            return f"+{_tex(v)}" if v > 0 else _tex(v)
        return rf"\times {_tex(v)}" if v > 0 else rf"\times ({_tex(v)})"
    if k == "pow":
        base, expo = n.slots
        if not expo.is_node:
            return f"x^{{{_tex(expo.const)}}}"
        return "x^{y}" if base.is_node else f"{_tex(base.const)}^{{x}}"
    return _LABELS[k]


def _layout(c, split=False):
    """Positions of the drawn nodes: {drawn id: (x, y)}, their columns, and for every edge
    (src, dst, slot) the drawn id of its source.

    Columns by depth (inputs just left of their first consumer); rows by a tidy tree walk: the
    graph is unfolded into a tree (a value used twice appears twice), each leaf gets the next
    row, a gate sits at the mean of its inputs, and a value that branches sits at the mean of
    its occurrences. Where the unfolded tree would be large (deep sharing), a value is placed at
    its first occurrence instead. Then nodes of one column are pushed a row apart.

    ``split``: an input that feeds several gates is drawn once beside each of them (its copies
    carry the summed gradient), which keeps the picture a tree: no wire crosses another.
    """
    depth, kids, size = {}, {}, {}     # nodes come in topological order
    for n in c.nodes:
        depth[n.index] = 0 if n.is_input else 1 + max(depth[s.node] for s in n.slots if s.is_node)
        kids[n.index] = list(dict.fromkeys(s.node for s in n.slots if s.is_node))
        size[n.index] = 1 if n.is_input else sum(size[k] for k in kids[n.index])
    unfold = size[c.output.index] <= MAX_UNFOLDED

    def drawn(i, parent):
        n = c.nodes[i]
        if split and n.is_input and c.uses(n) > 1 and parent is not None:
            return f"{n.name}-{c.nodes[parent].name}"
        return n.name

    occurrences, leaves = {}, [0]
    col = {n.name: depth[n.index] for n in c.nodes if not n.is_input}

    def walk(i, parent):
        key = drawn(i, parent)
        if not unfold and key in occurrences:
            return occurrences[key][0]
        if c.nodes[i].is_input:
            r = leaves[0]
            leaves[0] += 1
            consumers = [parent] if key != c.nodes[i].name else [j for (j, _, _) in c.nodes[i].sends]
            col[key] = min(depth[j] for j in consumers) - 1
        else:
            rows = [walk(k, i) for k in kids[i]]
            r = sum(rows) / len(rows)
        occurrences.setdefault(key, []).append(r)
        return r

    walk(c.output.index, None)
    row = {k: sum(rs) / len(rs) for k, rs in occurrences.items()}
    # Shared values can put two nodes of one column on (almost) the same row: push apart.
    for k in sorted(set(col.values())):
        prev = None
        for i in sorted((i for i in row if col[i] == k), key=lambda i: (row[i], i)):
            if prev is not None and row[i] < prev + 1:
                row[i] = prev + 1
            prev = row[i]
    source = {(s.node, n.index, k): drawn(s.node, n.index) for n in c.gates for k, s in enumerate(n.slots)
              if s.is_node}
    return {i: (col[i] * DX, -row[i] * DY) for i in row}, col, source


def _segments_cross(p1, p2, p3, p4):
    """Whether two segments cross at a point that is not an endpoint of both."""
    def orient(a, b, q):
        v = (b[0] - a[0]) * (q[1] - a[1]) - (b[1] - a[1]) * (q[0] - a[0])
        return 0 if abs(v) < 1e-9 else (1 if v > 0 else -1)
    if {p1, p2} & {p3, p4}:
        return False         # wires that meet at a node
    o1, o2, o3, o4 = orient(p1, p2, p3), orient(p1, p2, p4), orient(p3, p4, p1), orient(p3, p4, p2)
    return o1 * o2 < 0 and o3 * o4 < 0


def _geometry(c, split):
    pos, col, source = _layout(c, split)
    return pos, col, [(source[(e.src, e.dst, e.slot)], c.nodes[e.dst].name, e) for e in c.edges()]


def layout_problems(c, split=None):
    """What a reader would trip over in the picture: pairs of wires that cross, and pairs of
    edge labels placed closer than a label's height. ``split=None``: the layout tikz() uses."""
    if split is None:
        split = _needs_split(c)
    pos, col, wires = _geometry(c, split)
    problems = [f"wires {a1}->{b1} and {a2}->{b2} cross" for (a1, b1, _), (a2, b2, _) in combinations(wires, 2)
                if _segments_cross(pos[a1], pos[b1], pos[a2], pos[b2])]
    anchors = []
    for a, b, e in wires:
        t = _label_pos(c, a)
        (x0, y0), (x1, y1) = pos[a], pos[b]
        anchors.append(((x0 + t * (x1 - x0), y0 + t * (y1 - y0)), f"{a}->{b}"))
    return problems + [f"labels of {n1} and {n2} overlap" for (p, n1), (q, n2) in combinations(anchors, 2)
                       if p != q and abs(p[0] - q[0]) < 0.9 and abs(p[1] - q[1]) < 0.55]


def _needs_split(c):
    if not any(n.is_input and c.uses(n) > 1 for n in c.nodes):
        return False
    return bool(layout_problems(c, split=False))


def _label_pos(c, drawn_id):
    n = next((m for m in c.nodes if m.name == drawn_id), None)
    return 0.72 if n is not None and c.uses(n) > 1 else 0.42


def _sigma(text):
    """The summed-gradient label; a negative number braced, so its minus is a sign."""
    return rf"\Sigma\ {{{text}}}" if text.startswith("-") else rf"\Sigma\ {text}"


def _bends(m):
    """TikZ path operations for m parallel edges between the same two nodes."""
    angles = [30 * (i - (m - 1) / 2) for i in range(m)]
    return ["--" if a == 0 else (f"to[bend left={a:g}]" if a > 0 else f"to[bend right={-a:g}]") for a in angles]


def tikz(c, decimals=2):
    d = check_decimals(decimals)
    h = Hand(c, d)
    f = h.text
    split = _needs_split(c)
    pos, col, wires = _geometry(c, split)
    by_name = {n.name: n for n in c.nodes}

    def node_of(key):      # a drawn id: a node's name, or "name-consumer" for an input's copy
        return by_name.get(key) or by_name[key.split("-", 1)[0]]
    nodes = []
    for key, (x, y) in pos.items():
        n = node_of(key)
        label = _tex(n.symbol) if n.is_input else _gate_label(c, n)
        nodes.append({"id": key, "style": "var" if n.is_input else "gate",
                      "x": f"{x:.2f}", "y": f"{y:.2f}", "label": label})
    edges = []
    pairs = {}
    for a, b, e in wires:
        pairs.setdefault((a, b), []).append(e)
    for (src, dst), group in pairs.items():
        skip = col[dst] - col[src] > 1
        for e, how in zip(group, _bends(len(group))):
            if skip and how == "--":
                how = "to[bend left=25]"    # a wire over a column bends around the gates in it
            # Wires of a branching value start together: label them near their gate instead.
            edges.append({"src": src, "dst": dst, "how": how, "pos": f"{_label_pos(c, src):.2f}",
                          "value": f(h.value[e.src]), "grad": f(h.send[(e.dst, e.slot)])})
    sums = [{"id": key, "text": _sigma(f(h.grad[node_of(key).index]))}
            for key in pos if c.uses(node_of(key)) > 1]
    ox, oy = pos[c.output.name]
    return environment().get_template("latex/circuit_tikz.tex.j2").render(
        nodes=nodes, edges=edges, sums=sums, output={
            "src": c.output.name, "x": f"{ox + OUT:.2f}", "y": f"{oy:.2f}",
            "value": f(h.value[c.output.index]), "grad": f(sp.Integer(1))})


_picture = tikz   # write() takes a ``tikz`` path argument that hides this function


# --- document and files ----------------------------------------------------------------------

def document(c, decimals=2):
    d = check_decimals(decimals)
    at = r",\ ".join(f"{_tex(c.node(k).symbol)} = {_tex(c.values[k])}" for k in c.variables)
    return environment().get_template("latex/circuit_document.tex.j2").render(
        expr=title_tex(c), at=at, granularity=c.granularity, gates=len(c.gates),
        picture=tikz(c, d), steps=latex(c, d), decimals=d,
        results=_results(c, d),
        notes=[_text(s) for s in c.notes()])


def _results(c, d):
    """Rows (lhs, relation, rounded exact value, exact value in LaTeX or "", value by hand if it
    differs from the rounded exact one, else "")."""
    h = Hand(c, d)
    rows = []
    for lhs, node, v in [("f", c.output, c.value)] + [
            (_dfd(c.node(k).symbol), c.node(k), g) for k, g in c.gradients.items()]:
        shown = fmt(v, d)
        exact = sp.Rational(shown) == v
        by_hand = h.text(h.value[node.index] if node is c.output else h.grad[node.index])
        rows.append((lhs, "=" if exact else r"\approx", shown, "" if exact else _tex(v),
                     "" if sp.Rational(by_hand) == sp.Rational(shown) else by_hand))
    return rows


def write(c, latex=None, tikz=None, pdf=False, decimals=2):
    d = check_decimals(decimals)
    if pdf and not latex:
        raise CircuitError("pdf=True needs a latex path (the PDF is written beside it)")
    files = ([(latex, document(c, d))] if latex else []) + ([(tikz, _picture(c, d))] if tikz else [])
    return [str(path) for path in write_all(with_pdf(files, pdf))]


# --- command line ----------------------------------------------------------------------------

def cmd_circuit(args):
    decimals = check_decimals(args.decimals)
    values = {}
    for text in args.at or []:
        for k, v in parse_values(text).items():
            if k in values:
                raise _err(f"--at: two values for {k}")
            values[k] = v
    if args.pdf and not args.latex:
        raise _err("--pdf needs --latex FILE (the PDF is written beside it)")
    c = circuit(args.expr, granularity="fused" if args.fused else "atomic", at=values)
    written = write(c, latex=args.latex, tikz=args.tikz, pdf=args.pdf, decimals=decimals)
    print(table(c, decimals), end="")
    for path in written:
        print(f"wrote {path}")
    return 0


def add_command(subparsers):
    p = subparsers.add_parser("circuit", help="a scalar computation graph: forward values and "
                              "upstream x local gradients at every gate")
    p.add_argument("expr", help='the expression, e.g. "1/(1+exp(-(w0*x0 + w1*x1 + w2)))"')
    p.add_argument("--at", action="append", metavar="NAME=VALUE,...",
                   help="values of the variables: integers, decimals or p/q fractions")
    p.add_argument("--fused", action="store_true", help="use a sigmoid gate for 1/(1+exp(-u))")
    p.add_argument("--latex", metavar="FILE", help="write a LaTeX document (picture and steps)")
    p.add_argument("--tikz", metavar="FILE", help="write the TikZ picture alone")
    p.add_argument("--pdf", action="store_true", help="also compile the --latex document to PDF")
    p.add_argument("--decimals", type=int, default=2, help="decimals shown (0..12; default 2)")
    p.set_defaults(fn=cmd_circuit)
    return p

"""Text, LaTeX and TikZ of a Circuit (symbp.circuit): tables, steps, pictures, documents.

Contract: every function reads a built ``Circuit`` and never recomputes a value or a derivative;
numbers are rounded here, for display only (half away from zero, ``decimals`` in 0..12).

- ``table(c, decimals)``: plain text, one row per node (node, gate, what it computes, value,
  local gradient(s) as formula = number, gradient, gate pattern), then f, the gradients, the
  exact values and the note lines (gate patterns, the max tie convention where used).
- ``latex(c, decimals)``: two align* blocks, the forward steps and the backward steps written
  "[upstream] x [local] = result", with the branch sums ("copy adds"); a tie note where needed.
- ``tikz(c, decimals)``: a tikzpicture in the style of the seeds' circuit slides: gates as
  circles from left to right, forward values above each edge (green), gradients below (red).
- ``document(c, decimals)``: a standalone article with the picture, the steps and the notes.
- ``write(c, latex=, tikz=, pdf=, decimals=)``: renders everything (and compiles the PDF in a
  temporary directory) before writing any file, each atomically; returns the paths written.
"""
import ast
import re
import shutil
import subprocess
import tempfile
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import sympy as sp
from sympy.printing.latex import LatexPrinter

from ..circuit import CircuitError, check_decimals
from ..codegen.load import write as write_text
from ..codegen.templates import environment

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


def _sstr(e):
    return sp.sstr(e)


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
    if name == "pi":
        return r"\pi"
    if name == "E":
        return "e"
    m = re.match(r"^([A-Za-z]+)_?(\d+)$", name)
    return f"{m.group(1)}_{{{m.group(2)}}}" if m else name


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
        inner = ", ".join(args)
        return rf"{head}\left({inner}\right)", 5
    if isinstance(node, ast.BinOp):
        (lt, lp), (rt, rp) = _typed(node.left), _typed(node.right)
        paren = lambda t: rf"\left({t}\right)"
        if isinstance(node.op, ast.Add):
            return f"{lt} + {rt if rp > 1 else paren(rt)}", 1
        if isinstance(node.op, ast.Sub):
            return f"{lt} - {rt if rp > 1 else paren(rt)}", 1
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


def _src(c, n, k):
    return c.nodes[n.slots[k].node]


def _pattern_of(c, n):
    out = []
    if not n.is_input and n.gate.pattern:
        out.append(n.gate.pattern)
    return out


def _signed_sum(parts):
    """"0.04", "-0.16" -> "0.04 - 0.16"."""
    out = parts[0]
    for p in parts[1:]:
        out += f" - {p[1:]}" if p.startswith("-") else f" + {p}"
    return out


def _copy_sum(c, n, f):
    return f"{_signed_sum([f(x) for (_, _, x) in n.sends])} = {f(n.grad)}"


# --- plain text ------------------------------------------------------------------------------

def table(c, decimals=2):
    d = check_decimals(decimals)
    f = lambda v: fmt(v, d)
    at = ", ".join(f"{k} = {_sstr(c.values[k])}" for k in c.variables)
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
            text = f"d{n.name}/d{_src(c, n, k).name} = "
            if not form.is_Number:
                text += f"{_sstr(form)} = "
                if n.output_formula is not None:
                    text += f"{_sstr(n.output_formula)} = "
            locs.append(text + f(n.local[k]))
        notes = _pattern_of(c, n)
        if c.uses(n) > 1:
            notes.append(f"copy adds: {_copy_sum(c, n, f)}")
        if n is c.output:
            notes.append("output f")
        if n.tie:
            notes.append("tie: see note")
        rows.append((n.name, n.gate.name, _sstr(_shown(c, n)), f(n.value), "; ".join(locs),
                     f(n.grad), "; ".join(notes)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    right = {3, 5}   # numbers aligned right
    for r in rows:
        cells = [cell.rjust(w) if i in right else cell.ljust(w) for i, (cell, w) in enumerate(zip(r, widths))]
        lines.append("  ".join(cells).rstrip())
    lines.append("")
    lines.append(f"f = {f(c.value)}")
    lines.append("gradients: " + ", ".join(f"df/d{k} = {f(v)}" for k, v in c.gradients.items()))
    lines.append("exact:")
    lines.append(f"  f = {_sstr(c.value)}")
    for k, v in c.gradients.items():
        lines.append(f"  df/d{k} = {_sstr(v)}")
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


def _steps(c, decimals):
    f = lambda v: fmt(v, decimals)
    forward = []
    for n in c.gates:
        forward.append(rf"{_tex(n.symbol)} &= {_tex(_shown(c, n))} = {f(n.value)} && \text{{{n.gate.name}}}")
    forward.append(rf"f &= {_tex(c.output.symbol)} = {f(c.value)}")

    # A branching value gets its sum line right after its last contribution (lowest consumer).
    last = {}
    for n in c.nodes:
        if c.uses(n) > 1:
            last[n.index] = min(i for (i, _, _) in n.sends)
    backward = [rf"{_dfd(c.output.symbol)} &= 1 && \text{{output}}"]
    for n in reversed(c.gates):
        counts = {}
        for s in n.slots:
            if s.is_node:
                counts[s.node] = counts.get(s.node, 0) + 1
        seen = {}
        for k, s in enumerate(n.slots):
            if not s.is_node:
                continue
            src = c.nodes[s.node]
            contrib = next(x for (i, j, x) in src.sends if i == n.index and j == k)
            lhs = _dfd(src.symbol)
            if c.uses(src) > 1:
                seen[s.node] = seen.get(s.node, 0) + 1
                via = rf"\text{{via }} {_tex(n.symbol)}"
                if counts[s.node] > 1:
                    via += rf",\ \text{{input {seen[s.node]}}}"
                lhs = rf"\left.{lhs}\right|_{{{via}}}"
            local = rf"\frac{{\partial {_tex(n.symbol)}}}{{\partial {_tex(src.symbol)}}}"
            form = n.local_formula[k]
            rhs = rf"{_dfd(n.symbol)}\,{local} = [{f(n.grad)}] \times "
            if not form.is_Number:
                sym = _tex(form)
                if n.output_formula is not None:
                    sym += f" = {_tex(n.output_formula)}"
                rhs += rf"\left[{sym}\right] = [{f(n.grad)}] \times "
            rhs += rf"[{f(n.local[k])}] = {f(contrib)}"
            tag = n.gate.pattern or n.gate.name
            backward.append(rf"{lhs} &= {rhs} && \text{{{tag}}}")
        for k in sorted({s.node for s in n.slots if s.is_node}):
            if last.get(k) == n.index:
                src = c.nodes[k]
                parts = _signed_sum([f(x) for (_, _, x) in src.sends])
                backward.append(rf"{_dfd(src.symbol)} &= {parts} = {f(src.grad)} && \text{{copy adds}}")
    ties = [n for n in c.gates if n.tie]
    return forward, backward, ties


def latex(c, decimals=2):
    d = check_decimals(decimals)
    forward, backward, ties = _steps(c, d)
    from ..circuit import TIE_NOTE
    return environment().get_template("latex/circuit_steps.tex.j2").render(
        forward=forward, backward=backward,
        tie_note=(_text(f"At {', '.join(n.name for n in ties)}: {TIE_NOTE}.") if ties else ""))


# --- TikZ ------------------------------------------------------------------------------------

def _gate_label(c, n):
    k = n.gate.kind
    consts = [s.const for s in n.slots if not s.is_node]
    if k == "add":
        return "+"
    if k == "mul":
        return r"\times"
    if k == "neg":
        return r"\times(-1)"
    if k == "cadd":
        v = consts[0]
        return f"+{_tex(v)}" if v > 0 else _tex(v)
    if k == "cmul":
        v = consts[0]
        return rf"\times {_tex(v)}" if v > 0 else rf"\times ({_tex(v)})"
    if k == "recip":
        return "1/x"
    if k == "pow":
        base, expo = n.slots
        if not expo.is_node:
            return f"x^{{{_tex(expo.const)}}}"
        if not base.is_node:
            return f"{_tex(base.const)}^{{x}}"
        return "x^{y}"
    return {"exp": r"\exp", "log": r"\log", "max": r"\max", "sigmoid": r"\sigma"}[k]


def _layout(c):
    """Columns by depth (inputs just left of their first consumer); rows by a tidy tree walk.

    Rows: the graph is unfolded into a tree (a value used twice appears twice), each leaf gets
    the next row, a gate sits at the mean of its inputs, and a value that branches sits at the
    mean of its occurrences. Where the unfolded tree would be large (deep sharing), a value is
    placed at its first occurrence instead. Then nodes of one column are pushed a row apart.
    """
    depth = {}
    for n in c.nodes:
        depth[n.index] = 0 if n.is_input else 1 + max(depth[s.node] for s in n.slots if s.is_node)
    col = dict(depth)
    for n in c.inputs:
        col[n.index] = min(depth[i] for (i, _, _) in n.sends) - 1
    kids = {}
    for n in c.nodes:
        kids[n.index] = []
        for s in n.slots:
            if s.is_node and s.node not in kids[n.index]:
                kids[n.index].append(s.node)
    size = {}
    for n in c.nodes:
        size[n.index] = 1 if n.is_input else sum(size[k] for k in kids[n.index])
    unfold = size[c.output.index] <= MAX_UNFOLDED
    occurrences, leaves = {}, [0]

    def walk(i):
        if not unfold and i in occurrences:
            return occurrences[i][0]
        if c.nodes[i].is_input:
            r = leaves[0]
            leaves[0] += 1
        else:
            rows = [walk(k) for k in kids[i]]
            r = sum(rows) / len(rows)
        occurrences.setdefault(i, []).append(r)
        return r

    walk(c.output.index)
    row = {i: sum(rs) / len(rs) for i, rs in occurrences.items()}
    # Shared values can put two nodes of one column on (almost) the same row: push apart.
    for k in sorted(set(col.values())):
        prev = None
        for i in sorted((i for i in row if col[i] == k), key=lambda i: (row[i], i)):
            if prev is not None and row[i] < prev + 1:
                row[i] = prev + 1
            prev = row[i]
    return {i: (col[i] * DX, -row[i] * DY) for i in row}, col


def _bends(m):
    """TikZ path operations for m parallel edges between the same two nodes."""
    if m == 1:
        return ["--"]
    out = []
    for i in range(m):
        a = 30 * (i - (m - 1) / 2)
        out.append("--" if a == 0 else (f"to[bend left={a:g}]" if a > 0 else f"to[bend right={-a:g}]"))
    return out


def tikz(c, decimals=2):
    d = check_decimals(decimals)
    f = lambda v: fmt(v, d)
    pos, col = _layout(c)
    nodes = []
    for n in c.nodes:
        x, y = pos[n.index]
        label = _tex(n.symbol) if n.is_input else _gate_label(c, n)
        nodes.append({"id": n.name, "style": "var" if n.is_input else "gate",
                      "x": f"{x:.2f}", "y": f"{y:.2f}", "label": label})
    edges = []
    pairs = {}
    for e in c.edges():
        pairs.setdefault((e.src, e.dst), []).append(e)
    for (src, dst), group in pairs.items():
        skip = col[dst] - col[src] > 1
        for e, how in zip(group, _bends(len(group))):
            if skip and how == "--":
                how = "to[bend left=25]"    # a wire over a column bends around the gates in it
            # Wires of a branching value start together: label them near their gate instead.
            edges.append({"src": c.nodes[src].name, "dst": c.nodes[dst].name, "how": how,
                          "pos": "0.72" if c.uses(c.nodes[src]) > 1 else "0.42",
                          "value": f(e.value), "grad": f(e.grad)})
    sums = [{"id": n.name, "text": rf"\Sigma\ {f(n.grad)}"} for n in c.nodes if c.uses(n) > 1]
    ox, oy = pos[c.output.index]
    return environment().get_template("latex/circuit_tikz.tex.j2").render(
        nodes=nodes, edges=edges, sums=sums, output={
            "src": c.output.name, "x": f"{ox + OUT:.2f}", "y": f"{oy:.2f}",
            "value": f(c.value), "grad": f(sp.Integer(1))})


_picture = tikz   # write() takes a ``tikz`` path argument that hides this function


# --- document and files ----------------------------------------------------------------------

def document(c, decimals=2):
    d = check_decimals(decimals)
    at = r",\ ".join(f"{_tex(c.node(k).symbol)} = {_tex(c.values[k])}" for k in c.variables)
    return environment().get_template("latex/circuit_document.tex.j2").render(
        expr=title_tex(c), at=at, granularity=c.granularity, gates=len(c.gates),
        picture=tikz(c, d), steps=latex(c, d), value=fmt(c.value, d), exact=_tex(c.value),
        gradients=[(_dfd(c.node(k).symbol), fmt(v, d), _tex(v)) for k, v in c.gradients.items()],
        notes=[_text(s) for s in c.notes()])


def compile_pdf(tex, name="circuit"):
    """PDF bytes of a LaTeX document, compiled by pdflatex in a temporary directory."""
    exe = shutil.which("pdflatex")
    if exe is None:
        raise CircuitError("--pdf: pdflatex is not installed (the .tex can be compiled elsewhere)")
    with tempfile.TemporaryDirectory(prefix="symbp-circuit-") as tmp:
        src = Path(tmp) / f"{name}.tex"
        src.write_text(tex, encoding="utf-8")
        try:
            run = subprocess.run([exe, "-halt-on-error", "-interaction=nonstopmode", src.name],
                                 cwd=tmp, capture_output=True, text=True, timeout=180)
        except subprocess.TimeoutExpired:
            raise CircuitError(f"pdflatex took longer than 180 s on {name}.tex") from None
        pdf = Path(tmp) / f"{name}.pdf"
        if run.returncode != 0 or not pdf.exists():
            err = next((ln for ln in run.stdout.splitlines() if ln.startswith("!")), "no PDF produced")
            raise CircuitError(f"pdflatex failed on {name}.tex: {err}")
        return pdf.read_bytes()


def write(c, latex=None, tikz=None, pdf=False, decimals=2):
    d = check_decimals(decimals)
    if pdf and not latex:
        raise CircuitError("pdf=True needs a latex path (the PDF is written beside it)")
    out = []
    doc = document(c, d) if latex else None
    pic = _picture(c, d) if tikz else None
    data = compile_pdf(doc, Path(latex).stem) if pdf else None
    if latex:
        write_text(latex, doc)
        out.append(str(latex))
    if tikz:
        write_text(tikz, pic)
        out.append(str(tikz))
    if data is not None:
        target = Path(latex).with_suffix(".pdf")
        write_text(target, data)
        out.append(str(target))
    return out

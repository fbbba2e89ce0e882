"""Direct loops for the tensor ops (conv2d, pooling, flatten) in the CPU graph module.

Contract: ``FORWARD[realize](emission, node, equation)`` and ``backward(emission, equation,
comment)`` return / append the items of ``graph_emit`` (whole-batch "stmt" items) for the
equations ``derive_graph`` derived for a tensor op (``symbp.derivation.conv``); the entries are
keyed by the op's ``realize`` value ("convolution", "pooling", "reshape"). Every statement is
printed from an equation: lhs[idx] = sum of terms, each term a product under sums, as

    for <lhs indices>:                # s over the batch, the others over the lhs's shape
        acc = 0
        for <the term's summation indices>:
            t0 = <a computed index>   # an index that is not a loop index (i*stride + m - pad)
            if <t0 in range, and integral where it is a fraction>:
                acc += <the term>
        lhs[idx] = acc

The guards are the derivation's reading of an entry outside its array or at a fractional index
(zero: the padded border, the positions a stride skips); a guard whose range follows from the
loop bounds is left out. Tensor values are stored as the (batch, C*H*W) rows of their C-order
flattening, so an entry [s, c, u, v] of a tensor quantity prints as [s, c*H*W + u*W + v].
Parameters keep their own shapes (W: (C_out, C_in, k_h, k_w)). The forward of ``flatten`` is a
row copy: the storage of (B, C, H, W) is already its C-order flattening.
"""
import sympy as sp

from .. import naming
from .emit import text


def _flat_sum(e):
    """(body, limits) of a term: nested sums flattened, a number or factor outside kept."""
    limits, factor = [], sp.Integer(1)
    while True:
        if isinstance(e, sp.Sum):
            limits += list(e.limits)
            e = e.function
            continue
        if isinstance(e, sp.Mul):
            inner = [f for f in e.args if isinstance(f, sp.Sum)]
            if len(inner) == 1:
                factor *= e / inner[0]
                e = inner[0]
                continue
        return factor * e, limits


def tensor_shapes(d):
    """label -> (C, H, W) of every quantity of the derivation that is a tensor value, its
    gradient or a contribution to it."""
    out = {}
    for label, q in d.quantities.items():
        if q.role in ("value", "target", "grad", "contribution"):
            node = d.graph.node(q.of) if q.of in d.graph._by_name else None
            if node is not None and node.shape is not None:
                out[label] = node.shape
    return out


def _label(base):
    return str(base.label)


def _bounds(e, ranges):
    """(lowest, highest) of an integer-affine index over the loop ranges, or None."""
    lo = hi = 0
    e = sp.expand(e)
    for t in sp.Add.make_args(e):
        coeff, rest = t.as_coeff_Mul()
        if rest == 1:
            lo, hi = lo + coeff, hi + coeff
            continue
        if not coeff.is_Integer or rest not in ranges:
            return None
        a, b = ranges[rest]
        if b is None:
            return None
        lo, hi = lo + min(coeff * a, coeff * b), hi + max(coeff * a, coeff * b)
    return int(lo), int(hi)


class _Loops:
    """Prints one tensor equation as direct loops (see the module docstring)."""

    def __init__(self, c, shapes):
        self.c, self.p, self.shapes = c, c.p, shapes

    def dims(self, base, n):
        """The extent of each index position of ``base`` accessed with ``n`` indices."""
        label = _label(base)
        if label in self.shapes:
            chw = self.shapes[label]
            return (None,) + tuple(chw) if n == 4 else (None, chw[0] * chw[1] * chw[2])
        if label in self.c.d.quantities and self.c.d.quantities[label].role in ("param", "param_grad", "param_use"):
            return tuple(self.c.g.param(self.c.d.quantities[label].of).shape)
        return (None, self.c.sizes[sp.Symbol(f"n_{self.c.d.quantities[label].of}", integer=True, positive=True)])

    def index(self, e):
        """Indexed -> its printed access: tensor quantities flattened."""
        label = _label(e.base)
        idx = [sp.sstr(i) for i in e.indices]
        if len(idx) == 4 and label in self.shapes:
            _, h, w = self.shapes[label]
            flat = f"({idx[1]}) * {h * w} + ({idx[2]}) * {w} + {idx[3]}"
            return f"{self.c.ids[label]}[{idx[0]}, {flat}]"
        return f"{self.c.ids[label]}[{', '.join(idx)}]"

    def expr(self, e):
        """``e`` printed with each Indexed as its (flattened) access."""
        names, subs = {}, {}
        for k, x in enumerate(sorted(e.atoms(sp.Indexed), key=sp.default_sort_key)):
            sym = sp.Symbol(f"_ix{k}", real=True)
            subs[x], names[sym] = sym, self.index(x)
        printer = type(self.p)(self.p.dtype, self.c.ids, {**self.p.names, **names})
        return printer.doprint(e.xreplace(subs))

    def equation(self, eq, comment):
        lhs = eq.lhs
        ranges, lines = {}, [f"# {comment}"]
        dims = self.dims(lhs.base, len(lhs.indices))
        depth = 0
        for pos, ix in enumerate(lhs.indices):
            n = "B" if ix == naming.S else str(dims[pos])
            lines.append("    " * depth + f"for {ix} in range({n}):")
            ranges[ix] = (0, None if ix == naming.S else dims[pos] - 1)
            depth += 1
        zero = self.p.doprint(sp.Integer(0))
        lines.append("    " * depth + f"acc = {zero}")
        for term in sp.Add.make_args(eq.rhs):
            lines += self.term(term, dict(ranges), depth)
        lines.append("    " * depth + f"{self.index(lhs)} = acc")
        return lines

    def term(self, term, ranges, depth):
        """One term's loops; each computed index and its guard are placed right after the loop
        of the last index it reads (hoisted out of the loops it does not depend on)."""
        body, limits = _flat_sum(term)
        for var, lo, hi in limits:
            ranges[var] = (0, None) if hi.has(naming.BATCH) else (int(lo), int(hi))
        order = [var for var, _, _ in limits]
        temps, subs, at = {}, {}, {}
        for x in sorted(body.atoms(sp.Indexed), key=sp.default_sort_key):
            dims = self.dims(x.base, len(x.indices))
            new = []
            for pos, ix in enumerate(x.indices):
                ix = sp.expand(ix)
                if ix.is_Symbol or pos == 0 and ix == naming.S:
                    new.append(ix)
                    continue
                if ix not in temps:
                    t = sp.Symbol(f"t{len(temps)}", integer=True)
                    temps[ix] = t
                    level = max([order.index(v) for v in ix.free_symbols if v in order], default=-1)
                    at.setdefault(level, []).append(self.guard(t, ix, ranges, dims[pos]))
                new.append(temps[ix])
            subs[x] = x.base[tuple(new)]
        lines = []

        def place(level, depth):
            for block in at.get(level, ()):
                for text, deeper in block:
                    lines.append("    " * depth + text)
                    depth += deeper
            return depth
        depth = place(-1, depth)
        for k, (var, lo, hi) in enumerate(limits):
            if hi.has(naming.BATCH):        # the sum over the samples
                lines.append("    " * depth + f"for {var} in range(B):")
            else:
                lines.append("    " * depth + f"for {var} in range({sp.sstr(lo)}, {sp.sstr(hi + 1)}):")
            depth = place(k, depth + 1)
        lines.append("    " * depth + f"acc += {self.expr(body.xreplace(subs))}")
        return lines

    @staticmethod
    def guard(t, ix, ranges, dim):
        """[(line, indentation it adds)] computing index ``t`` = ``ix`` and guarding it: in range
        (unless the loop bounds imply it) and integral where ``ix`` is a fraction."""
        num, den = sp.fraction(sp.together(ix))
        out = [(f"{t} = {sp.sstr(num)}", 0)]
        conds = []
        if den != 1:
            conds.append(f"{t} % {sp.sstr(den)} == 0")
        known = _bounds(ix, ranges) if den == 1 else None
        if known is None or known[0] < 0 or known[1] > dim - 1:
            conds.append(f"0 <= {t} < {dim * den}")
        if conds:
            out.append((f"if {' and '.join(conds)}:", 1))
        if den != 1:
            out.append((f"{t} = {t} // {sp.sstr(den)}", 0))
        return out


def _stmt(lines):
    return {"kind": "stmt", "lines": list(lines)}


def _loops_forward(c, n, eq):
    """A convolution or pooling node: its forward definition as direct loops."""
    comment = f"{text(eq.lhs, eq.rhs)}   [{n.kind}: direct loops]"
    return [_stmt(_Loops(c, tensor_shapes(c.d)).equation(eq, comment))]


def _reshape_forward(c, n, eq):
    """flatten: the (B, C, H, W) value is stored as its C-order (B, C*H*W) rows: a row copy."""
    src = c.ids[n.inputs[0]]
    return [_stmt([f"# {n.name} = flatten({n.inputs[0]})   [reshape: the storage is already C-order rows]",
                   f"{c.ids[n.name]}[:, :] = {src}[:, :]"])]


FORWARD = {"convolution": _loops_forward, "pooling": _loops_forward, "reshape": _reshape_forward}


def is_tensor_source(graph, eq):
    """True when ``eq`` is a gradient through a tensor op (printed here)."""
    return bool(eq.source) and graph.node(eq.source).op.realize in FORWARD


def backward(c, eq, comment):
    """A gradient through a tensor op (an input's or a parameter's) as direct loops, one
    whole-batch item appended to the emission's backward list."""
    if naming.S in eq.lhs.indices:
        c.bwd_buffers[eq.name] = c.g.node(eq.node).width
    c.bwd.append(_stmt(_Loops(c, tensor_shapes(c.d)).equation(eq, comment + "   (direct loops)")))

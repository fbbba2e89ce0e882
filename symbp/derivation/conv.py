"""The derivation of the tensor ops (conv2d, maxpool2d, avgpool2d, flatten) with SymPy.

Contract: ``template(key, at_zero) -> dict`` is the tensor counterpart of ``graph._template``
(same keys: forward, jacobians, contributions, rule, d<symbol>, g<symbol>; plus ``out`` and
``ins``, the index tuples of the node's value and of its input's gradient), derived once per op
key in the generic names and sizes of ``symbp.model.ops_conv`` and renamed per node by
``derive_graph``. Nothing here is written by hand but the forward definition (the registry's):

1. ``derived``: ``sympy.diff`` of the forward definition w.r.t. in0[s, c, u, v] (the input's
   gradient) and W[o, c, p, q], b[o] (the parameters'), summed against the output's gradient
   g[s, o, i, j]: SymPy gives products of Kronecker deltas with affine index arguments;
2. ``collapse`` (``collapse_deltas``): each delta is resolved by solving its (linear) argument
   for one summation index and substituting it: an entry whose index falls outside its array
   or is fractional is zero, the reading of the forward definition (zero padding; a stride
   skips positions), so no range condition is lost;
3. the named textbook form, checked to be what SymPy reached (``recognise``):
   ``correlation`` for dL/dW[o, c, p, q] = sum_{s,i,j} g[s, o, i, j] x[s, c, i stride + p - pad,
   j stride + q - pad] (the correlation of the input with the output's gradient), and
   ``full_convolution`` for dL/dx[s, c, u, v] = sum_{o,p,q} g[s, o, (u + pad - p)/stride,
   (v + pad - q)/stride] W[o, c, p, q] as SymPy collapses it, shown reindexed (p -> k_h - 1 - p)
   as sum_{o,p,q} g[s, o, (u + pad - k_h + 1 + p)/stride, ...] W[o, c, k_h - 1 - p, k_w - 1 - q]:
   for stride 1 the correlation of the zero-padded g with the kernel rotated by 180 degrees, the
   full convolution of g with the kernel (the book "Deep Learning", Goodfellow, Bengio and
   Courville, chapter 9.5); ``window_sum`` for
   average pooling's dL/dx = 1/(k_h k_w) sum_{p,q} g[s, c, (u - p)/stride, (v - q)/stride];
4. max pooling: SymPy's derivative of Max is Heaviside(x_k - Max(others)); ``argmax_routing``
   settles its ties as PyTorch does, to the first index of the window in row-major order:
   Heaviside(x_k - Max(earlier), 0) Heaviside(x_k - Max(later), 1) (strictly above every
   earlier entry, at least every later one).
"""
from functools import lru_cache

import sympy as sp

from .. import naming
from ..errors import DerivationError
from ..model import ops, ops_conv as oc

S, I, J, P, Q = naming.S, naming.I, naming.J, naming.P, naming.Q
O, C, U, V, D, M, N, R = naming.O, naming.C, naming.U, naming.V, naming.D, naming.M, naming.N, naming.R
BATCH = naming.BATCH
_OUT, _GOUT, _W, _B, _in = ops._OUT, ops._GOUT, ops._W, ops._B, ops._in

# the order in which a delta's summation index is eliminated: a parameter's gradient keeps the
# sums over samples and positions (r, d, m, n go), the input's gradient keeps the sums over
# output channels and the kernel (o, i, j go first), flatten keeps none
PREFER = (R, O, I, J, D, M, N)
# the summation indices left over are given the textbook names
RENAME = {M: P, N: Q}


def _flat_sum(e):
    """(body, limits) of nested sums whose bodies are products: Sum(a Sum(b, L2), L1) ->
    (a b, L1 + L2); the indices are distinct by construction."""
    limits = []
    while isinstance(e, sp.Sum):
        limits += list(e.limits)
        e = e.function
    if isinstance(e, sp.Mul):
        inner = [f for f in e.args if isinstance(f, sp.Sum)]
        if len(inner) == 1:
            rest = e / inner[0]
            body, more = _flat_sum(inner[0])
            return rest * body, limits + more
    return e, limits


def _terms(expr):
    """expr as a list of (body, limits) over its additive terms, sums flattened and expanded."""
    out = []
    for t in sp.Add.make_args(sp.expand(expr)):
        body, limits = _flat_sum(t)
        if isinstance(body, sp.Add) or any(isinstance(f, sp.Sum) for f in sp.Mul.make_args(body)):
            for b in sp.Add.make_args(sp.expand(body)):
                b2, l2 = _flat_sum(b)
                out.append((b2, limits + l2))
        else:
            out.append((body, limits))
    return out


def collapse_deltas(expr):
    """Resolve every Kronecker delta of ``expr`` against a summation index (``PREFER``), with
    the zero-outside reading of the module docstring; the remaining sums' m, n are renamed p, q.
    Raises DerivationError when a delta has no summation index to absorb it."""
    out = []
    for body, limits in _terms(expr):
        limits = list(limits)
        factors = list(sp.Mul.make_args(body))
        while True:
            delta = next((f for f in factors if isinstance(f, sp.KroneckerDelta)), None)
            if delta is None:
                break
            factors.remove(delta)
            arg = delta.args[0] - delta.args[1]
            if arg == 0:
                continue
            summed = [lim[0] for lim in limits]
            var = next((x for x in PREFER if x in summed and x in arg.free_symbols
                        and sp.Poly(arg, x).degree() == 1), None)
            if var is None:
                raise DerivationError(f"tensor op: cannot resolve {delta} against the sums over {summed}")
            coeff = arg.coeff(var)
            value = sp.together(sp.expand(-(arg - coeff * var) / coeff))
            limits = [lim for lim in limits if lim[0] != var]
            factors = [f.xreplace({var: value}) for f in factors]
        rest = [lim for lim in limits]
        term = sp.Mul(*factors)
        rename = {k: v for k, v in RENAME.items() if any(lim[0] == k for lim in rest)}
        term = term.xreplace(rename)
        rest = [(rename.get(lim[0], lim[0]),) + tuple(lim[1:]) for lim in rest]
        out.append(sp.Sum(term, *rest) if rest else term)
    return sp.Add(*out)


def argmax_routing(expr, entries):
    """Max's derivative Heaviside(x_k - Max(others)) -> the first arg-max's indicator:
    Heaviside(x_k - Max(x_m, m < k), 0) Heaviside(x_k - Max(x_m, m > k), 1), ``entries`` the
    window in row-major order."""
    def route(h):
        arg = h.args[0]
        for k, x in enumerate(entries):
            if sp.expand(arg - x + sp.Max(*[e for e in entries if e != x])) == 0:
                before, after = entries[:k], entries[k + 1:]
                out = sp.Integer(1)
                if before:
                    out *= sp.Heaviside(x - sp.Max(*before), 0)
                if after:
                    out *= sp.Heaviside(x - sp.Max(*after), 1)
                return out
        return h
    return expr.replace(lambda e: isinstance(e, sp.Heaviside), route)


def tidy(stages):
    """Stages with every index rebuilt as one fraction: renaming a stride of 1 into (u - 1)/stride
    leaves 1*(u - 1), shown and printed as u - 1."""
    def fix(x):
        return x.base[tuple(sp.together(sp.expand(i)) for i in x.indices)]
    return tuple((name, e.replace(lambda x: isinstance(x, sp.Indexed), fix)) for name, e in stages)


# ----------------------------------------------------------------------------------------------
# the textbook forms (for the named step; tests/test_conv.py pins that SymPy reaches them)
# ----------------------------------------------------------------------------------------------

def textbook(kind, what):
    """The textbook expression of ``what`` ("x", "W", "b") for op ``kind``, in generic names."""
    st, ph, pw = oc.STRIDE, oc.PAD_H, oc.PAD_W
    if kind == "conv2d" and what == "W":
        return sp.Sum(_GOUT[S, O, I, J] * _in(0)[S, C, I * st + P - ph, J * st + Q - pw],
                      (S, 0, BATCH - 1), (I, 0, oc.H_OUT - 1), (J, 0, oc.W_OUT - 1))
    if kind == "conv2d" and what == "b":
        return sp.Sum(_GOUT[S, O, I, J], (S, 0, BATCH - 1), (I, 0, oc.H_OUT - 1), (J, 0, oc.W_OUT - 1))
    if kind == "conv2d" and what == "x":
        # the kernel rotated by 180 degrees: W[o, c, k_h - 1 - p, k_w - 1 - q]
        return sp.Sum(_GOUT[S, O, (U + ph - (oc.K_H - 1) + P) / st, (V + pw - (oc.K_W - 1) + Q) / st]
                      * _W[O, C, oc.K_H - 1 - P, oc.K_W - 1 - Q],
                      (O, 0, oc.C_OUT - 1), (P, 0, oc.K_H - 1), (Q, 0, oc.K_W - 1))
    if kind == "avgpool2d" and what == "x":
        return sp.Sum(_GOUT[S, C, (U - P) / st, (V - Q) / st] / (oc.K_H * oc.K_W), (P, 0, oc.K_H - 1),
                      (Q, 0, oc.K_W - 1))
    if kind == "flatten" and what == "x":
        return _GOUT[S, C * oc.H_IN * oc.W_IN + U * oc.W_IN + V]
    return None


def _indices_expanded(e):
    return e.replace(lambda x: isinstance(x, sp.Indexed),
                     lambda x: x.base[tuple(sp.expand(i) for i in x.indices)])


STEP = {("conv2d", "W"): "correlation", ("conv2d", "b"): "sum_positions", ("conv2d", "x"): "full_convolution",
        ("avgpool2d", "x"): "window_sum", ("flatten", "x"): "unflatten"}


def reindexed(expr, kind, what):
    """The collapsed form with the step's reindexing applied (a sum reversal, exact: p and
    k_h - 1 - p run over the same range): full_convolution reads the kernel rotated by 180
    degrees."""
    if (kind, what) != ("conv2d", "x"):
        return expr
    flip = {P: oc.K_H - 1 - P, Q: oc.K_W - 1 - Q}
    return expr.replace(lambda e: isinstance(e, sp.Sum), lambda e: sp.Sum(e.function.xreplace(flip), *e.limits))


def recognise(stages, kind, what):
    """Append the named textbook step when SymPy's collapsed form is the textbook form, after
    the step's reindexing (``reindexed``) and with each index written as one fraction."""
    form = textbook(kind, what)
    if form is None:
        return stages
    got = reindexed(stages[-1][1], kind, what)
    same = got == form or _indices_expanded(got) == _indices_expanded(form)
    if not same:
        raise DerivationError(f"{kind}: SymPy's d/d{what} {got} is not the textbook form {form}")
    return stages + [(STEP[(kind, what)], form)]


# ----------------------------------------------------------------------------------------------
# the template
# ----------------------------------------------------------------------------------------------

def _out_limits(kind):
    if kind == "flatten":
        return ((J, 0, oc.C_IN * oc.H_IN * oc.W_IN - 1),)
    channels = oc.C_OUT if kind == "conv2d" else oc.C_IN
    return ((O, 0, channels - 1), (I, 0, oc.H_OUT - 1), (J, 0, oc.W_OUT - 1))


@lru_cache(maxsize=None)
def template(key, at_zero=0):
    """The rules of one tensor op key in generic names (see the module docstring)."""
    kind = key[0]
    fw = ops.OPS[kind].forward(key, at_zero)
    fwd = fw.expr
    out_idx = (S, J) if kind == "flatten" else oc.OUT_INDICES
    in_idx = oc.IN_INDICES
    x = _in(0)[in_idx]
    raw = sp.diff(fwd, x)
    jac = [("derived", raw)]
    if kind == "maxpool2d":
        jac.append(("argmax_routing", argmax_routing(raw, oc.window_entries(key[1], key[2]))))
    g = _GOUT[out_idx]
    contrib = sp.Sum(g * jac[-1][1], *_out_limits(kind))
    stages = [("derived", contrib), ("collapse", collapse_deltas(contrib))]
    stages = recognise(stages, kind, "x")
    t = {"forward": fwd, "out": out_idx, "ins": (in_idx,), "jacobians": (tuple(jac),),
         "contributions": (tuple(stages),), "rule": None}
    for spec in fw.params:
        # the output channel is summed over as r: the gradient's own o is the parameter's index
        at_r = fwd.xreplace({O: R})
        d = sp.diff(at_r, spec.generic[spec.indices])
        t[f"d{spec.symbol}"] = (("derived", d),)
        total = sp.Sum(_GOUT[S, R, I, J] * d, (S, 0, BATCH - 1), (R, 0, oc.C_OUT - 1),
                       (I, 0, oc.H_OUT - 1), (J, 0, oc.W_OUT - 1))
        st = [("derived", total), ("collapse", collapse_deltas(total))]
        t[f"g{spec.symbol}"] = tuple(recognise(st, kind, spec.symbol))
    return t

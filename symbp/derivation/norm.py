"""The derivation of a normalization op (batchnorm, layernorm) from its forward definition.

Contract: ``template(key, fw, at_zero)`` returns the same dict as ``graph._template`` (forward,
jacobians, contributions per input slot, the parameters' d<symbol> / g<symbol>) for an op whose
``Forward`` carries ``statistics`` (``symbp.model.ops_norm.Statistics``), plus ``statistics``:
the definitions of the quantities the compact forms name, [(what, lhs, rhs)] for mu, sigma and
xhat, in generic names. Nothing here is a derivative written by hand: every local derivative is
``sympy.diff`` of the forward definition, in which mu and var are written out as sums.

Steps after ``diff`` (each a named stage):

1. ``statistics``: where the mean and var + eps stand whole (not differentiated), they are named
   mu and sigma^2 (before the deltas collapse: SymPy's summation would otherwise try to evaluate
   each sum of the variance, most of this derivation's time);
2. ``collapse``: the Kronecker deltas of the sums (``simplify.collapse``); for batchnorm the
   Jacobian d out[s, i] / d x[t, j] has the second sample index t, and the contribution
   g_x[t, j] = sum_s sum_i g[s, i] d out[s, i] / d x[t, j] sums over the samples;
3. ``moments``: the sums collapsing left that are statistics, named: sum_u x[u] = N mu and
   sum_u x[u]^2 = N (sigma^2 - eps + mu^2) (sigma^2 = var + eps, var = mean of x^2 - mu^2);
4. ``normalized``: every remaining x written as mu + sigma xhat (the definition of xhat), and the
   sums split over their terms;
5. ``<kind>_compact``: SymPy's rational simplification with each sum kept whole, and its common
   factor taken out (``factor_terms``): for batch normalization this reaches the textbook form
   (Ioffe and Szegedy 2015, Algorithm 1's gradients, collected)
   dx = gamma / (N sigma) (N dy - sum dy - xhat sum(dy xhat)), N = B; for layer normalization
   dx = 1 / (n sigma) (n gamma dy - sum gamma dy - xhat sum(gamma dy xhat)).

The batchnorm contribution is then written with the sample index s free (g_x[s, j]) and t summed,
as every other contribution of the graph derivation.
"""
import sympy as sp

from .. import naming
from . import simplify as simp

S, T, I, J, P = naming.S, naming.T, naming.I, naming.J, naming.P
BATCH = naming.BATCH


def _is_reduction(e, st):
    """The dummy of ``e`` if it is a sum over the whole reduced axis, else None."""
    if not isinstance(e, sp.Sum) or len(e.limits) != 1:
        return None
    k, lo, hi = e.limits[0]
    return k if (lo == 0 and hi == st.size - 1) else None


def named_statistics(expr, st):
    """Stages 1 and 3: var + eps -> sigma^2 and the mean -> mu where they stand whole, then
    sum_u x[u] -> N mu, sum_u x[u]^2 -> N (sigma^2 - eps + mu^2) where collapsing expanded them.
    A batch statistic is per unit: it is looked for at each unit index a derivative may leave
    (j; i before the unit sum collapses; p in a parameter's gradient)."""
    for at in ((J, I, P) if st.at == J else (st.at,)):
        moved = {J: at} if at != J else {}
        mu, sigma = st.mu[at], st.sigma[at]
        expr = expr.xreplace({(st.var + st.eps).xreplace(moved): sigma ** 2}).xreplace({(st.mean * st.size).xreplace(moved): st.size * mu})
        entry = st.entry(naming.U).xreplace(moved)

        def rep(e, entry=entry, mu=mu, sigma=sigma):
            k = _is_reduction(e, st)
            if k is None:
                return e
            if not e.function.has(k):      # a sum of a constant: N times it
                return e.doit()
            f = e.function.xreplace({k: naming.U})
            if f == entry:
                return st.size * mu
            if f == entry ** 2:
                return st.size * (sigma ** 2 - st.eps + mu ** 2)
            return e
        expr = expr.replace(lambda e: isinstance(e, sp.Sum), rep)
    return expr


def normalized(expr, st):
    """Stage 4: x = mu + sigma xhat at every entry (the definition of xhat), sums split."""
    def rep(e):
        at = e.indices[1] if st.axes == ("batch",) else e.indices[0]
        return st.mu[at] + st.sigma[at] * st.xhat[e.indices]
    expr = expr.replace(lambda e: isinstance(e, sp.Indexed) and e.base == st.x, rep)
    return simp._split_sums(expr)


def compact(expr):
    """Stage 5: rational simplification with the sums as atoms, common factor taken out."""
    sums = sorted(expr.atoms(sp.Sum), key=sp.default_sort_key)
    atoms = {s: sp.Symbol(f"_sum{m}", real=True) for m, s in enumerate(sums)}
    back = {v: k for k, v in atoms.items()}
    e = sp.factor_terms(sp.cancel(sp.together(expr.xreplace(atoms))))
    return e.xreplace(back)


def _stages(expr, st, kind, ctx):
    # the statistics named before the deltas collapse: SymPy's summation would otherwise try to
    # evaluate every sum of the variance (most of the time of this derivation)
    stages = [("derived", expr), ("statistics", named_statistics(expr, st))]
    e = simp.collapse(stages[-1][1], ctx)
    stages.append(("collapse", e))
    e = named_statistics(e, st)
    stages.append(("moments", e))
    e = normalized(e, st)
    stages.append(("normalized", e))
    stages.append((f"{kind}_compact", compact(e)))
    return stages


def template(key, fw, at_zero=0):
    """The rules of a normalization op in generic names (see the module docstring)."""
    from ..model.ops import _GOUT, _N_OUT, _in
    st, kind = fw.statistics, key[0]
    ctx = simp.Context(at_zero=at_zero)
    fwd = fw.expr
    at_i = fwd.xreplace({J: I})
    couples = st.axes == ("batch",)
    wrt = _in(0)[T, J] if couples else _in(0)[S, J]
    jac = _stages(sp.diff(at_i, wrt), st, kind, ctx)
    rows = [(I, 0, _N_OUT - 1)] + ([(S, 0, BATCH - 1)] if couples else [])
    contrib = _stages(sp.Sum(_GOUT[S, I] * jac[0][1], *rows), st, kind, ctx)
    if couples:
        # g_x[t, j] -> g_x[s, j] (t summed), as every contribution of the derivation is written
        contrib = [(name, e.xreplace({S: T, T: S})) for name, e in contrib]
    t = {"forward": fwd, "jacobians": (tuple(jac),), "contributions": (tuple(contrib),), "rule": None}
    for spec in fw.params:
        d = _stages(sp.diff(at_i, spec.generic[spec.indices]), st, kind, ctx)
        t[f"d{spec.symbol}"] = tuple(d)
        g = sp.Sum(_GOUT[S, I] * d[0][1], (I, 0, _N_OUT - 1), (S, 0, BATCH - 1))
        t[f"g{spec.symbol}"] = tuple(_stages(g, st, kind, ctx))
    t["forward_named"] = normalized(named_statistics(fwd, st), st)
    x = st.x[S, J]
    t["statistics"] = (
        ("mu", st.mu[st.at], st.mean),
        ("sigma", st.sigma[st.at], sp.sqrt(st.var.xreplace({st.mean * st.size: st.size * st.mu[st.at]}) + st.eps)),
        ("xhat", st.xhat[S, J], (x - st.mu[st.at]) / st.sigma[st.at]),
    )
    return t


def mapping(node):
    """{generic name: this node's}: mu, sigma, xhat (IndexedBases) and eps (a Symbol), named
    ``naming.statistic(node, what)``; for ``graph._mapping``."""
    from ..model.ops_norm import statistics
    st = statistics(node.op.key(node)[1])
    out = {st.eps: sp.Symbol(naming.statistic(node.name, "eps"), positive=True)}
    for what in ("mu", "sigma", "xhat"):
        gen = getattr(st, what)
        actual = sp.IndexedBase(naming.statistic(node.name, what), **gen.assumptions0)
        out[gen], out[gen.label] = actual, actual.label
    return out

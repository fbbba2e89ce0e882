"""Op registry entries of the normalization family: batchnorm, layernorm, dropout.

Each is an ``ops.Op`` registered into ``ops.OPS`` when this module is imported (``KINDS`` here is
the registry's kinds with them); the forward definitions are written in the registry's generic
names (``in0[s, j]``, ``_gamma[j]``, ``_beta[j]``) with symbolic sizes, and the derivation
differentiates them (nothing here is a derivative).

- ``batchnorm`` (S. Ioffe and C. Szegedy, "Batch Normalization: Accelerating Deep Network
  Training by Reducing Internal Covariate Shift", 2015, Algorithm 1), statistics over the axes
  ("batch",): mu[j] = 1/B sum_u x[u, j], var[j] = 1/B sum_u (x[u, j] - mu[j])^2,
  xhat[s, j] = (x[s, j] - mu[j]) / sqrt(var[j] + eps), out[s, j] = gamma[j] xhat[s, j] + beta[j]
  (``affine = false``: out = xhat). The forward definition sums over the samples, so its Jacobian
  couples them (``couples_samples``): d out[s, i] / d x[t, j] has a second sample index t.
  Keys: eps (1e-5), momentum (0.1, the running statistics' update r <- (1 - m) r + m stat,
  with the unbiased variance, as PyTorch's BatchNorm1d), affine (true), mode "train" (batch
  statistics), gamma / beta (parameter names, default gamma_<node>, beta_<node>).
- ``layernorm`` (J. L. Ba, J. R. Kiros and G. E. Hinton, "Layer Normalization", 2016, eq. 4),
  statistics over the axes ("units",): mu[s] = 1/n sum_u x[s, u], the same xhat and affine map;
  it couples the units of one sample (d out[s, i] / d x[s, j] is dense in i, j). Keys: eps,
  affine, gamma, beta.
- ``dropout`` (N. Srivastava et al., "Dropout: A Simple Way to Prevent Neural Networks from
  Overfitting", JMLR 15, 2014; inverted scaling as in PyTorch): inputs = [x, mask], the mask an
  input of the step (0/1 entries drawn by the caller), out[s, j] = x[s, j] m[s, j] / (1 - p);
  the same mask serves forward and backward. Key: p in [0, 1).

In inference (``Op.inference``: the kernel's ``forward(..., mode="inference")``) batchnorm
normalizes with the running statistics, out = gamma (x - r_mean) / sqrt(r_var + eps) + beta, and
dropout is the identity; layernorm is the same in both modes.

The reduction axes are data (``Statistics.axes``): a per-channel batchnorm over (batch, C, H, W)
values reduces over ("batch", "height", "width") with the same entry once values have those axes.
"""
from dataclasses import dataclass
from numbers import Real

import sympy as sp

from .. import naming
from ..errors import SpecError, shown as _shown
from .ops import OPS, ParamSpec, Forward, Op, _gen, _in, _n_in, _N_OUT, check_bool, check_name, check_str

S, J, P = naming.S, naming.J, naming.P
U, V = naming.U, naming.V
BATCH = naming.BATCH

_GAMMA, _BETA = _gen("gamma"), _gen("beta")
_MU, _XHAT = _gen("mu"), _gen("xhat")
_SIGMA = sp.IndexedBase("_sigma", positive=True)
_EPS = sp.Symbol("_eps", positive=True)
_RMEAN, _RVAR = _gen("running_mean"), sp.IndexedBase("_running_var", nonnegative=True)

NORM_PARAMS = (
    ParamSpec("scale", "gamma", _GAMMA, (P,), lambda key: (_N_OUT,)),
    ParamSpec("shift", "beta", _BETA, (P,), lambda key: (_N_OUT,)),
)
MODES = ("train",)


@dataclass(frozen=True)
class Statistics:
    """What a normalization's forward definition reduces and names, in generic names.

    ``axes``: the axes the statistics reduce over ("batch" or "units"); ``at``: the index a
    statistic is indexed by (j: per unit, over the batch; s: per sample, over the units);
    ``size``: the number of entries reduced; ``mean`` and ``var`` the definitions
    (1/size sum_u x, 1/size sum_u (x - mean)^2); ``x`` the normalized input, ``eps`` the
    constant, ``mu``, ``sigma``, ``xhat`` the bases the derivation names them by."""

    axes: tuple
    at: sp.Symbol
    size: sp.Expr
    mean: sp.Expr
    var: sp.Expr
    x: sp.IndexedBase = _in(0)
    eps: sp.Symbol = _EPS
    mu: sp.IndexedBase = _MU
    sigma: sp.IndexedBase = _SIGMA
    xhat: sp.IndexedBase = _XHAT

    def entry(self, index):
        """x at the sample or unit ``index`` of the reduced axis: x[index, j] or x[s, index]."""
        return self.x[index, J] if self.axes == ("batch",) else self.x[S, index]


def statistics(axes):
    """The Statistics of a normalization over ``axes`` (("batch",) or ("units",))."""
    x = _in(0)
    if axes == ("batch",):
        at, size = J, BATCH
        def entry(i): return x[i, J]
    elif axes == ("units",):
        at, size = S, _n_in(0)
        def entry(i): return x[S, i]
    else:
        raise ValueError(axes)
    mean = sp.Sum(entry(V), (V, 0, size - 1)) / size
    var = sp.Sum((entry(U) - mean) ** 2, (U, 0, size - 1)) / size
    return Statistics(axes, at, size, mean, var)


def _normalized(key_axes, affine):
    st = statistics(key_axes)
    xhat = (st.x[S, J] - st.mean) / sp.sqrt(st.var + st.eps)
    out = _GAMMA[J] * xhat + _BETA[J] if affine else xhat
    return st, out


# ----------------------------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------------------------

def _number(t, key, v, default, low, high, high_open=False, low_open=False):
    """A real number key within [low, high] (an end open where said), or the default."""
    if key not in t:
        return default
    x = t[key]
    lo, hi = "(" if low_open else "[", ")" if high_open else "]"
    if isinstance(x, bool) or not isinstance(x, Real) or x != x:
        raise v.error(key, f"expected a number in {lo}{low:g}, {high:g}{hi}, got {_shown(x)}")
    x = float(x)
    if x < low or x > high or (low_open and x == low) or (high_open and x == high):
        raise v.error(key, f"expected a number in {lo}{low:g}, {high:g}{hi} at {v.name!r}, got {_shown(t[key])}")
    return x


def _affine_params(t, v, affine):
    names = {}
    for spec, default in ((NORM_PARAMS[0], f"gamma_{v.name}"), (NORM_PARAMS[1], f"beta_{v.name}")):
        key = spec.symbol
        if not affine:
            if key in t:
                raise v.error(key, f"node {v.name!r} has affine = false and so no {key} parameter")
            continue
        names[spec.role] = check_name(check_str(t, key, v.where, v.prefix, default=default), v.where,
                                      f"{v.prefix}{key}", "parameter name")
    return names


def _norm_validate(kind):
    def validate(t, ins, v):
        width = v.widths[ins[0]]
        eps = _number(t, "eps", v, 1e-5, 0.0, 1.0, low_open=True)
        affine = check_bool({"affine": t.get("affine", True)}, "affine", v.where, v.prefix)
        opts = [("eps", eps), ("affine", affine)]
        if kind == "batchnorm":
            opts.append(("momentum", _number(t, "momentum", v, 0.1, 0.0, 1.0)))
            mode = check_str(t, "mode", v.where, v.prefix, default="train")
            if mode not in MODES:
                raise v.error("mode", f"expected one of {', '.join(MODES)} at {v.name!r} (inference uses the "
                                      f"running statistics through the kernel's forward(mode=\"inference\")), "
                                      f"got {_shown(mode)}")
            opts.append(("mode", mode))
        names = _affine_params(t, v, affine)
        opts += [(role, name) for role, name in names.items()]
        uses = tuple((name, role, (width,), False) for role, name in names.items())
        return width, {"options": tuple(opts)}, uses
    return validate


def _dropout_validate(t, ins, v):
    if len(ins) != 2:
        raise v.error("inputs", f"a dropout node reads [value, mask], got {len(ins)} inputs")
    if ins[0] == ins[1]:
        raise v.error("inputs", f"the mask of dropout node {v.name!r} must be another node than its value")
    wx, wm = v.widths[ins[0]], v.widths[ins[1]]
    if wx != wm:
        raise v.error("inputs", f"shape mismatch at dropout node {v.name!r}: value {ins[0]!r} has width {wx}, "
                                f"mask {ins[1]!r} has width {wm}")
    if "p" not in t:
        raise v.error("p", "missing key (expected a probability in [0, 1))")
    p = _number(t, "p", v, None, 0.0, 1.0, high_open=True)
    return wx, {"options": (("p", p),)}, ()


# ----------------------------------------------------------------------------------------------
# forward definitions (training and inference)
# ----------------------------------------------------------------------------------------------

AXES = {"batchnorm": ("batch",), "layernorm": ("units",)}


def _norm_key(node):
    return (node.kind, AXES[node.kind], node.option("affine"))


def _norm_forward(key, at_zero=0):
    st, out = _normalized(key[1], key[2])
    return Forward(out, 1, NORM_PARAMS if key[2] else (), statistics=st)


def _batchnorm_inference(key):
    xhat = (_in(0)[S, J] - _RMEAN[J]) / sp.sqrt(_RVAR[J] + _EPS)
    return Forward(_GAMMA[J] * xhat + _BETA[J] if key[2] else xhat, 1, NORM_PARAMS if key[2] else ())


def _dropout_key(node):
    return ("dropout", sp.Rational(repr(node.option("p"))))


def _dropout_forward(key, at_zero=0):
    # inverted dropout: the kept entries scaled by 1/(1 - p) so that inference is the identity
    return Forward(_in(0)[S, J] * _in(1)[S, J] / (1 - key[1]), 2)


def _dropout_inference(key):
    return Forward(_in(0)[S, J], 2)


RUNNING = {"mean": _RMEAN, "var": _RVAR}
_MOMENTUM = sp.Symbol("_momentum", nonnegative=True)


def running_update(key):
    """The running statistics' update of a batchnorm node after a training pass, as PyTorch's
    BatchNorm1d (torch.nn.BatchNorm1d documentation, "momentum"): r <- (1 - m) r + m stat with the
    batch mean and the unbiased batch variance B / (B - 1) var, var = sigma^2 - eps the biased
    one the normalization used. [(running base at j, its new value)] in generic names, with
    ``_momentum`` standing for the node's momentum."""
    st = statistics(key[1])
    var = (st.sigma[J] ** 2 - st.eps) * BATCH / (BATCH - 1)
    return [(_RMEAN[J], (1 - _MOMENTUM) * _RMEAN[J] + _MOMENTUM * st.mu[J]),
            (_RVAR[J], (1 - _MOMENTUM) * _RVAR[J] + _MOMENTUM * var)]


def _norm_bind(node):
    opts = dict(node.options)
    return {r: opts[r] for r in ("scale", "shift") if r in opts}


def _norm_canonical(node):
    return {"options": [[k, v] for k, v in node.options]}


def _norm_describe(node):
    opts = ", ".join(f"{k}={v}" for k, v in node.options if k not in ("scale", "shift"))
    return f"{node.name}={node.kind}({', '.join(node.inputs)}; {opts})[{node.width}]"


_NORM_KEYS = ("name", "kind", "input", "eps", "affine", "gamma", "beta")

NORM_OPS = {op.kind: op for op in (
    Op("batchnorm", _NORM_KEYS + ("momentum", "mode"), "one", "normalization",
       _norm_validate("batchnorm"), _norm_forward, key=_norm_key, canonical=_norm_canonical,
       describe=_norm_describe, params=NORM_PARAMS, bind=_norm_bind, couples_samples=True,
       doc="batch normalization: each unit normalized over the batch, then gamma xhat + beta"),
    Op("layernorm", _NORM_KEYS, "one", "normalization",
       _norm_validate("layernorm"), _norm_forward, key=_norm_key, canonical=_norm_canonical,
       describe=_norm_describe, params=NORM_PARAMS, bind=_norm_bind,
       doc="layer normalization: each sample normalized over its units, then gamma xhat + beta"),
    Op("dropout", ("name", "kind", "inputs", "p"), "many", "mask",
       _dropout_validate, _dropout_forward, key=_dropout_key, canonical=_norm_canonical,
       describe=_norm_describe, min_inputs=2,
       doc="inverted dropout: x m / (1 - p) with the mask m an input of the step; identity in inference"),
)}
# the forward definition in inference, per kind (absent: the same as in training)
INFERENCE = {"batchnorm": _batchnorm_inference, "dropout": _dropout_inference}

OPS.update(NORM_OPS)
KINDS = tuple(OPS)

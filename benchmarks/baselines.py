"""Hand-written baselines for the symbp benchmark: the same training-gradient step four ways.

Contract: each baseline is built from a ``symbp.Network`` and a dtype and exposes
``loss_and_grad(params, X, Y) -> (loss, grads)`` with the kernel's conventions (batch rows,
W of shape (n_out, n_in), z = a W^T + b, loss summed over output units per sample then
averaged ("mean") or summed ("sum") over the batch; grads keyed like params as NumPy arrays).
Each also offers ``step()``, the timed call: forward + loss + backward on inputs bound once by
``bind(params, X, Y)``, returning nothing more than the framework naturally returns.

- ``NumpyMLP``: vectorized NumPy as a competent engineer writes it by hand. The derivatives here
  are written by hand on purpose: this file lives outside the package and exists to be compared
  against the SymPy-derived kernel. Fused output layers (sigmoid+bce, softmax+ce) use the logits
  (log-sum-exp, softplus) and delta = (a - y) c, like any careful hand implementation.
- ``NumbaMLP``: hand-written Numba, "naive" in issue 4's words: the straightforward loops a
  competent person writes with ``@njit`` (a dot-product loop per output unit, rank-1 updates for
  the weight gradients, one loop nest per layer and per pass; serial, no BLAS, preallocated
  buffers, ``fastmath`` limited to reassociation and contraction so that the sums vectorize).
  Same hand-written derivatives as ``NumpyMLP``.
- ``TorchMLP``: PyTorch eager autograd (``torch.nn.functional``), default thread count.
- ``JaxMLP``: ``jax.jit(jax.value_and_grad(loss))``.
(These two are in the package, ``symbp.verify.peers``: they write forward passes only, so
``symbp bench`` times them from an installed wheel too.) The optional ones raise ``Unavailable`` with a one-line reason when the framework is missing.
``PEERS`` lists every baseline in the order the benchmark reports them; ``OPTIONAL`` the autograd
ones, which also check the float64 NumPy reference.

``symbp bench`` (symbp/cli/bench.py) imports this file from a checkout of the repository or from
``--baselines PATH``; it is kept out of the package because the package holds no hand-written
derivative.
"""
import math

import numba
import numpy as np
from numba.typed import List
from scipy.special import expit

# The autograd peers (and what every baseline shares) are in the package, which writes forward
# passes only; the hand-written derivatives stay here, outside it.
from symbp.verify.peers import OPTIONAL, JaxMLP, TorchMLP, Unavailable, _fused, _layers  # noqa: E402,F401


# ---------------------------------------------------------------------------------- NumPy


def _np_act(name, z, prm):
    if name == "sigmoid":
        return expit(z)            # SciPy's stable, vectorized logistic function
    if name == "tanh":
        return np.tanh(z)
    if name == "relu":
        return np.maximum(z, 0)
    if name == "leaky_relu":
        return np.where(z > 0, z, prm["slope"] * z)
    if name == "softplus":
        return np.logaddexp(0, z)
    if name == "identity":
        return z
    if name == "exp":
        return np.exp(z)
    if name == "softmax":
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    raise NotImplementedError(name)


def _np_act_backward(name, g, z, a, prm):
    """dL/dz from dL/da for one layer (hand-written derivatives)."""
    if name == "sigmoid":
        return g * a * (1 - a)
    if name == "tanh":
        return g * (1 - a * a)
    if name == "relu":
        return g * (z > 0)
    if name == "leaky_relu":
        return np.where(z > 0, g, prm["slope"] * g)
    if name == "softplus":
        return g * _np_act("sigmoid", z, prm)
    if name == "identity":
        return g
    if name == "exp":
        return g * a
    if name == "softmax":
        # Jacobian-vector product of softmax: a * (g - <g, a>).
        return a * (g - (g * a).sum(axis=1, keepdims=True))
    raise NotImplementedError(name)


class NumpyMLP:
    """Hand-written vectorized NumPy forward + loss + backward."""

    label = "numpy"

    def __init__(self, net, dtype):
        self.net = net
        self.dtype = np.dtype(dtype)
        self.layers = _layers(net)
        self.fused = _fused(net)
        self.loss_name = net.loss.name
        self.mean = net.reduction == "mean"

    def _loss_and_delta(self, z, a, Y):
        """The loss and delta of the output layer; c is 1/B for the mean."""
        B = Y.shape[0]
        c = 1.0 / B if self.mean else 1.0
        name = self.layers[-1][2]
        if self.fused and name == "sigmoid":
            # bce from the logits: log(1 + e^z) - y z.
            loss = (np.logaddexp(0, z) - Y * z).sum() * c
            return loss, (a - Y) * self.dtype.type(c)
        if self.fused:
            zs = z - z.max(axis=1, keepdims=True)
            logp = zs - np.log(np.exp(zs).sum(axis=1, keepdims=True))
            loss = -(Y * logp).sum() * c
            return loss, (a - Y) * self.dtype.type(c)
        d = a - Y
        if self.loss_name == "mse":
            loss, g = 0.5 * (d * d).sum() * c, d * self.dtype.type(c)
        elif self.loss_name == "sse":
            loss, g = (d * d).sum() * c, d * self.dtype.type(2 * c)
        elif self.loss_name == "bce":
            loss = -(Y * np.log(a) + (1 - Y) * np.log(1 - a)).sum() * c
            g = (a - Y) / (a * (1 - a)) * self.dtype.type(c)
        elif self.loss_name == "ce":
            loss, g = -(Y * np.log(a)).sum() * c, -Y / a * self.dtype.type(c)
        else:
            raise NotImplementedError(self.loss_name)
        return loss, _np_act_backward(name, g, z, a, self.layers[-1][3])

    def loss_and_grad(self, params, X, Y):
        zs, acts = [], [X]
        a = X
        for wk, bk, name, prm in self.layers:
            z = a @ params[wk].T + params[bk]
            a = _np_act(name, z, prm)
            zs.append(z)
            acts.append(a)
        loss, delta = self._loss_and_delta(zs[-1], a, Y)
        grads = {}
        for idx in range(len(self.layers) - 1, -1, -1):
            wk, bk, _, _ = self.layers[idx]
            grads[wk] = delta.T @ acts[idx]
            grads[bk] = delta.sum(axis=0)
            if idx:
                g = delta @ params[wk]
                _, _, name, prm = self.layers[idx - 1]
                delta = _np_act_backward(name, g, zs[idx - 1], acts[idx], prm)
        return float(loss), grads

    def bind(self, params, X, Y):
        self._args = (params, X, Y)

    def step(self):
        return self.loss_and_grad(*self._args)


# ---------------------------------------------------------------------------------- Numba

_ACT_CODE = {"identity": 0, "sigmoid": 1, "tanh": 2, "relu": 3, "leaky_relu": 4, "softplus": 5,
             "exp": 6, "softmax": 7}
# Output layer and loss: the fused pairs first (delta = (a - y) c), then dL/da through the
# output activation's derivative.
_OUT_CODE = {"fused-bce": 0, "fused-ce": 1, "mse": 2, "sse": 3, "bce": 4, "ce": 5}
# Reassociation lets the dot-product sums vectorize; no finite-math assumption (sigmoid
# overflows exp to inf on purpose). No cache: Numba's cache records the module's import name,
# which differs between `import baselines` and symbp bench's loader; compiling costs a few
# seconds once per dtype and process (every case shares the types), outside the timing.
_jit = numba.njit(cache=False, fastmath={"reassoc", "contract"})


@_jit
def _nb_act(code, slope, Z, A):
    B, n = Z.shape
    for s in range(B):
        if code == 7:
            m = Z[s, 0]
            for j in range(1, n):
                m = max(m, Z[s, j])
            t = 0.0
            for j in range(n):
                e = math.exp(Z[s, j] - m)
                A[s, j] = e
                t += e
            for j in range(n):
                A[s, j] = A[s, j] / t
            continue
        for j in range(n):
            z = Z[s, j]
            if code == 0:
                a = z
            elif code == 1:
                a = 1.0 / (1.0 + math.exp(-z))
            elif code == 2:
                a = math.tanh(z)
            elif code == 3:
                a = z if z > 0 else 0.0
            elif code == 4:
                a = z if z > 0 else slope * z
            elif code == 5:
                a = max(z, 0.0) + math.log1p(math.exp(-abs(z)))
            else:
                a = math.exp(z)
            A[s, j] = a

@_jit
def _nb_act_backward(code, slope, Z, A, G, D):
    """D = dL/dz from G = dL/da (hand-written derivatives); D may be G."""
    B, n = Z.shape
    for s in range(B):
        if code == 7:
            t = 0.0
            for j in range(n):
                t += G[s, j] * A[s, j]
            for j in range(n):
                D[s, j] = A[s, j] * (G[s, j] - t)
            continue
        for j in range(n):
            g = G[s, j]
            if code == 0:
                d = g
            elif code == 1:
                d = g * A[s, j] * (1.0 - A[s, j])
            elif code == 2:
                d = g * (1.0 - A[s, j] * A[s, j])
            elif code == 3:
                d = g if Z[s, j] > 0 else 0.0
            elif code == 4:
                d = g if Z[s, j] > 0 else slope * g
            elif code == 5:
                d = g / (1.0 + math.exp(-Z[s, j]))
            else:
                d = g * A[s, j]
            D[s, j] = d


@_jit
def _nb_step(Y, Ws, bs, codes, slopes, out_code, c, Zs, As, Ds, Gs, gWs, gbs):
    """Forward, loss, backward. As[0] is X; Gs[l] is dL/da_l (Gs[0] unused). Returns the loss."""
    L = len(Ws)
    for l in range(L):
        W, b, Z, Ain = Ws[l], bs[l], Zs[l], As[l]
        n_out, n_in = W.shape
        for s in range(Ain.shape[0]):
            for j in range(n_out):
                acc = b[j]
                for k in range(n_in):
                    acc += W[j, k] * Ain[s, k]
                Z[s, j] = acc
        _nb_act(codes[l], slopes[l], Z, As[l + 1])
    Z, A, D = Zs[L - 1], As[L], Ds[L - 1]
    B, n = Z.shape
    loss = 0.0
    for s in range(B):
        if out_code == 1:
            m = Z[s, 0]
            for j in range(1, n):
                m = max(m, Z[s, j])
            t = 0.0
            for j in range(n):
                t += math.exp(Z[s, j] - m)
            lse = m + math.log(t)
            for j in range(n):
                loss += Y[s, j] * (lse - Z[s, j])
                D[s, j] = (A[s, j] - Y[s, j]) * c
            continue
        for j in range(n):
            z, a, y = Z[s, j], A[s, j], Y[s, j]
            if out_code == 0:       # bce from the logit: log(1 + e^z) - y z
                loss += max(z, 0.0) + math.log1p(math.exp(-abs(z))) - y * z
                D[s, j] = (a - y) * c
            elif out_code == 2:
                loss += 0.5 * (a - y) * (a - y)
                D[s, j] = (a - y) * c
            elif out_code == 3:
                loss += (a - y) * (a - y)
                D[s, j] = 2.0 * (a - y) * c
            elif out_code == 4:
                loss -= y * math.log(a) + (1.0 - y) * math.log(1.0 - a)
                D[s, j] = (a - y) / (a * (1.0 - a)) * c
            else:
                loss -= y * math.log(a)
                D[s, j] = -y / a * c
    if out_code >= 2:
        _nb_act_backward(codes[L - 1], slopes[L - 1], Z, A, D, D)
    for l in range(L - 1, -1, -1):
        W, D, Ain, gW, gb = Ws[l], Ds[l], As[l], gWs[l], gbs[l]
        n_out, n_in = W.shape
        gW[:] = 0.0
        gb[:] = 0.0
        for s in range(Ain.shape[0]):
            for j in range(n_out):
                d = D[s, j]
                gb[j] += d
                for k in range(n_in):
                    gW[j, k] += d * Ain[s, k]
        if l > 0:
            G = Gs[l]
            G[:] = 0.0
            for s in range(Ain.shape[0]):
                for j in range(n_out):
                    d = D[s, j]
                    for k in range(n_in):
                        G[s, k] += d * W[j, k]
            _nb_act_backward(codes[l - 1], slopes[l - 1], Zs[l - 1], As[l], G, Ds[l - 1])
    return loss * c


class NumbaMLP:
    """Hand-written naive Numba loops (see the module docstring); buffers are allocated by
    ``bind`` and reused by every ``step``."""

    label = "numba"

    def __init__(self, net, dtype):
        self.net = net
        self.dtype = np.dtype(dtype)
        self.layers = _layers(net)
        self.codes = np.array([_ACT_CODE[name] for _, _, name, _ in self.layers], dtype=np.int64)
        self.slopes = np.array([prm.get("slope", 0.0) for _, _, _, prm in self.layers])
        loss = net.loss.name
        self.out_code = _OUT_CODE[f"fused-{loss}" if _fused(net) else loss]

    def _args(self, params, X, Y):
        dt = self.dtype
        B, sizes = X.shape[0], self.net.sizes

        def lst(arrays):
            out = List()
            for a in arrays:
                out.append(a)
            return out

        Ws = lst([np.ascontiguousarray(params[wk], dt) for wk, _, _, _ in self.layers])
        bs = lst([np.ascontiguousarray(params[bk], dt) for _, bk, _, _ in self.layers])
        Zs = lst([np.empty((B, n), dt) for n in sizes[1:]])
        As = lst([np.ascontiguousarray(X, dt)] + [np.empty((B, n), dt) for n in sizes[1:]])
        Ds = lst([np.empty((B, n), dt) for n in sizes[1:]])
        Gs = lst([np.empty((B, n), dt) for n in sizes[:-1]])
        gWs = lst([np.empty(W.shape, dt) for W in Ws])
        gbs = lst([np.empty(b.shape, dt) for b in bs])
        c = 1.0 / B if self.net.reduction == "mean" else 1.0
        return (np.ascontiguousarray(Y, dt), Ws, bs, self.codes, self.slopes, self.out_code, c,
                Zs, As, Ds, Gs, gWs, gbs)

    def loss_and_grad(self, params, X, Y):
        args = self._args(params, X, Y)
        loss = _nb_step(*args)
        gWs, gbs = args[-2], args[-1]
        grads = {}
        for l, (wk, bk, _, _) in enumerate(self.layers):
            grads[wk], grads[bk] = gWs[l].copy(), gbs[l].copy()
        return float(loss), grads

    def bind(self, params, X, Y):
        self._bound = self._args(params, X, Y)
        self.step()                # compile (or load Numba's cache) outside the timing

    def step(self):
        return _nb_step(*self._bound)


PEERS = (NumpyMLP, NumbaMLP) + OPTIONAL


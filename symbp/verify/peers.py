"""PyTorch eager and jax.jit as peers of the generated kernel in ``symbp bench``.

Contract: each peer is built from a ``symbp.Network`` and a dtype and exposes
``loss_and_grad(params, X, Y) -> (loss, grads)`` with the kernel's conventions (batch rows,
W of shape (n_out, n_in), z = a W^T + b, loss summed over output units per sample then
averaged ("mean") or summed ("sum") over the batch; grads keyed like params as NumPy arrays),
and ``step()``, the timed call: forward + loss + backward on inputs bound once by
``bind(params, X, Y)``, returning nothing more than the framework naturally returns.

- ``TorchMLP``: PyTorch eager autograd (``torch.nn.functional``), default thread count.
- ``JaxMLP``: ``jax.jit(jax.value_and_grad(loss))``.

Both write the forward pass only: the frameworks' autograd differentiates it, so these are
independent references and the package still holds no hand-written derivative (the hand-written
NumPy and Numba baselines live in benchmarks/baselines.py of the source repository, which
imports these). A missing framework raises ``Unavailable`` with a one-line reason; an
activation the peers do not write raises NotImplementedError. ``OPTIONAL`` lists them in the
order the benchmark reports them.
"""
import numpy as np

ELEMENTWISE = ("sigmoid", "tanh", "relu", "leaky_relu", "softplus", "identity", "exp")


class Unavailable(Exception):
    """An optional framework is not installed (the message says which)."""


def _layers(net):
    """[(W key, b key, activation name, activation parameters dict)] in layer order."""
    out = []
    for l, layer in enumerate(net.layers, start=1):
        act = layer.activation
        if act.user or (act.name not in ELEMENTWISE and act.name != "softmax"):
            raise NotImplementedError(f"bench: activation {act.name!r} has no hand-written version")
        out.append((f"W{l}", f"b{l}", act.name, {k: float(v) for k, v in act.values}))
    return out


def _fused(net):
    """True when the output activation and the loss are the matched pair whose delta is a - y."""
    out = net.layers[-1].activation.name
    return (out, net.loss.name) in (("sigmoid", "bce"), ("softmax", "ce"))


class _Peer:
    """The forward pass and the loss of a peer, written once over its framework's functions:
    ``acts`` (activation name -> function of z; leaky ReLU's also of its slope), ``_linear``
    (z = a W^T + b), ``_fused_loss`` (the matched output and loss from z, summed), ``_bce`` and
    ``_log``."""

    def __init__(self, net):
        self.net = net
        self.layers = _layers(net)
        self.fused = _fused(net)

    def _act(self, name, z, prm):
        if name == "identity":
            return z
        return self.acts[name](z, prm["slope"]) if name == "leaky_relu" else self.acts[name](z)

    def _loss(self, params, X, Y):
        a = X
        for i, (wk, bk, name, prm) in enumerate(self.layers):
            z = self._linear(a, params[wk], params[bk])
            if i == len(self.layers) - 1 and self.fused:
                break
            a = self._act(name, z, prm)
        c = 1.0 / X.shape[0] if self.net.reduction == "mean" else 1.0
        loss = self.net.loss.name
        if self.fused:
            return self._fused_loss(loss, z, Y) * c
        d = a - Y
        if loss == "mse":
            return 0.5 * (d * d).sum() * c
        if loss == "sse":
            return (d * d).sum() * c
        if loss == "bce":
            return self._bce(a, Y) * c
        if loss == "ce":
            return -(Y * self._log(a)).sum() * c
        raise NotImplementedError(loss)


# ---------------------------------------------------------------------------------- PyTorch


class TorchMLP(_Peer):
    """PyTorch eager: tensors built once; the step zeroes .grad, runs forward, loss, backward."""

    label = "torch"

    def __init__(self, net, dtype):
        try:
            import torch
        except ImportError as exc:
            raise Unavailable(f"PyTorch not installed ({exc})") from None
        super().__init__(net)
        self.torch, F = torch, torch.nn.functional
        self.tdtype = {"float32": torch.float32, "float64": torch.float64}[np.dtype(dtype).name]
        self.acts = {"sigmoid": torch.sigmoid, "tanh": torch.tanh, "relu": torch.relu, "leaky_relu": F.leaky_relu,
                     "softplus": F.softplus, "exp": torch.exp, "softmax": lambda z: torch.softmax(z, dim=1)}
        self._linear, self._log = F.linear, torch.log
        self._bce = lambda a, Y: F.binary_cross_entropy(a, Y, reduction="sum")

    def _fused_loss(self, loss, z, Y):
        F = self.torch.nn.functional
        if loss == "bce":
            return F.binary_cross_entropy_with_logits(z, Y, reduction="sum")
        # Probability targets: -sum y log softmax(z), summed over units, reduced over samples.
        return F.cross_entropy(z, Y, reduction="sum")

    def _tensors(self, params, X, Y):
        t = self.torch
        tp = {k: t.tensor(v, dtype=self.tdtype, requires_grad=True) for k, v in params.items()}
        return tp, t.tensor(X, dtype=self.tdtype), t.tensor(Y, dtype=self.tdtype)

    def loss_and_grad(self, params, X, Y):
        tp, tX, tY = self._tensors(params, X, Y)
        loss = self._loss(tp, tX, tY)
        loss.backward()
        return float(loss.detach()), {k: v.grad.numpy() for k, v in tp.items()}

    def bind(self, params, X, Y):
        self._tp, self._X, self._Y = self._tensors(params, X, Y)
        self._plist = list(self._tp.values())

    def step(self):
        for p in self._plist:
            p.grad = None          # the idiomatic zero_grad(set_to_none=True)
        loss = self._loss(self._tp, self._X, self._Y)
        loss.backward()
        return loss


# ---------------------------------------------------------------------------------- JAX


class JaxMLP(_Peer):
    """jax.jit(jax.value_and_grad(loss)); float64 needs jax_enable_x64, switched on here."""

    label = "jax"

    def __init__(self, net, dtype):
        try:
            import jax
            import jax.numpy as jnp
        except ImportError as exc:
            raise Unavailable(f"JAX not installed ({exc})") from None
        jax.config.update("jax_enable_x64", True)
        super().__init__(net)
        self.jax, self.jnp = jax, jnp
        self.dtype = np.dtype(dtype)
        self.acts = {"sigmoid": jax.nn.sigmoid, "tanh": jnp.tanh, "relu": jax.nn.relu, "leaky_relu": jax.nn.leaky_relu,
                     "softplus": jax.nn.softplus, "exp": jnp.exp, "softmax": lambda z: jax.nn.softmax(z, axis=1)}
        self._linear, self._log = lambda a, W, b: a @ W.T + b, jnp.log
        self._vg = jax.jit(jax.value_and_grad(self._loss))

    def _fused_loss(self, loss, z, Y):
        if loss == "bce":
            return (self.jax.nn.softplus(z) - Y * z).sum()
        return -(Y * self.jax.nn.log_softmax(z, axis=1)).sum()

    def _bce(self, a, Y):
        log = self.jnp.log
        return -(Y * log(a) + (1 - Y) * log(1 - a)).sum()

    def _arrays(self, params, X, Y):
        jnp = self.jnp
        return ({k: jnp.asarray(v, dtype=self.dtype) for k, v in params.items()},
                jnp.asarray(X, dtype=self.dtype), jnp.asarray(Y, dtype=self.dtype))

    def loss_and_grad(self, params, X, Y):
        loss, grads = self._vg(*self._arrays(params, X, Y))
        return float(loss), {k: np.asarray(v) for k, v in grads.items()}

    def bind(self, params, X, Y):
        self._args = self._arrays(params, X, Y)
        self.step()                # trace and compile outside the timing

    def step(self):
        loss, grads = self._vg(*self._args)
        self.jax.block_until_ready(grads)
        return loss


OPTIONAL = (TorchMLP, JaxMLP)

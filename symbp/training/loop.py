"""Training loops on a generated kernel: ``symbp.train``.

Contract: ``train(kernel, params, X, Y, optimizer=..., epochs=1, batch_size=None, shuffle=True,
seed=0, progress=None)`` trains ``params`` in place and returns the loss history, one mean loss
per epoch (the batch losses weighted by batch size, each taken before its update), a list of
floats to plot. ``optimizer`` is ``symbp.SGD(...)``, ``symbp.Adam(...)``, ``symbp.AdamW(...)``, a
name or a pair (name, {hyperparameters}) (see symbp.optim); ``lr=`` alone (the older spelling)
means ``SGD(lr=lr)``. Each epoch visits every row once in mini-batches of ``batch_size`` rows (the
whole data when None; the last batch may be smaller), in a fresh random order drawn from
``seed`` when ``shuffle``.

Each mini-batch is one compiled call that does forward, backward and the update: plain SGD (no
momentum, weight decay or clipping) the kernel's ``sgd_step`` on the caller's arrays, every
other optimizer the fused ``train_step_<kind>`` of a bound step on packed arrays (MLP kernels
on the CPU), whose parameters are copied back into ``params`` at the end (also when the loop is
interrupted).

Bad input (an unknown optimizer or hyperparameter, a value out of range, a batch size larger
than the data, non-positive epochs, arrays of the wrong shape) is one InputError line, raised
before anything is updated. ``progress``: True shows a progress bar on stderr (tqdm when
installed, ``pip install symbp[progress]``, else one line rewritten in place), False none, None
one for runs that last longer than two seconds when stderr is a terminal. ``log_every`` > 0
also calls ``log`` with a line every that many epochs (and after the first and the last).
``one_hot(labels, classes)`` builds targets for ce.
"""
import numbers
import sys
import time

import numpy as np

from ..codegen.cuda_kernel import as_batch, is_device_array, take_rows
from ..codegen.kernel import Kernel, check_seed, check_writable
from ..errors import InputError, shown
from ..model.optim import SGD, optimizer as make_optimizer


def one_hot(labels, classes, dtype=np.float64):
    labels = np.asarray(labels)
    out = np.zeros((labels.shape[0], classes), dtype=dtype)
    out[np.arange(labels.shape[0]), labels] = 1
    return out


def _positive_int(key, value, what):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise InputError(f"train: {key}: expected {what}, got {shown(value)}")
    return int(value)


def _as_array(key, a, dtype):
    # the older train() converted the data to the kernel's dtype: numbers of another float or
    # integer dtype are still converted; anything else is left to the kernel's own checks
    if isinstance(a, np.ndarray) and a.dtype != dtype and (a.dtype.kind in "fiu"):
        return np.ascontiguousarray(a, dtype=dtype)
    return a


class _Progress:
    """A progress bar on stderr: tqdm when installed, else one line rewritten with \\r."""

    def __init__(self, total, mode):
        self.total, self.mode = total, mode
        self.start = time.perf_counter()
        self.bar = None
        self.shown = False
        self.last = 0.0

    def _open(self):
        self.shown = True
        try:
            from tqdm import tqdm
        except ImportError:
            return
        self.bar = tqdm(total=self.total, desc="symbp train", unit="epoch", file=sys.stderr)

    def update(self, epoch, loss):
        now = time.perf_counter()
        if not self.shown:
            if self.mode is False or (self.mode is None and (now - self.start < 2.0 or not sys.stderr.isatty())):
                return
            self._open()
        if self.bar is not None:
            self.bar.n = epoch
            self.bar.set_postfix(loss=f"{loss:.6g}", refresh=False)
            self.bar.refresh()
        elif now - self.last > 0.2 or epoch == self.total:
            self.last = now
            rate = epoch / max(now - self.start, 1e-9)
            sys.stderr.write(f"\rsymbp train: epoch {epoch}/{self.total}  loss {loss:.6g}  {rate:.1f} epochs/s ")
            sys.stderr.flush()

    def close(self):
        if self.bar is not None:
            self.bar.close()
        elif self.shown:
            sys.stderr.write("\n")
            sys.stderr.flush()


def train(kernel, params, X, Y, optimizer=None, epochs=1, batch_size=None, shuffle=True, seed=0,
          lr=None, log_every=0, log=print, progress=None):
    """Train ``params`` in place on (X, Y); returns the per-epoch mean losses (see the module)."""
    if optimizer is None and lr is None:
        raise InputError("train: optimizer: expected one, e.g. optimizer=symbp.Adam(lr=1e-3) or "
                         "optimizer=symbp.SGD(lr=0.1, momentum=0.9) (or lr=... for plain SGD)")
    if optimizer is not None and lr is not None:
        raise InputError("train: lr: give the learning rate inside the optimizer, e.g. "
                         "optimizer=symbp.Adam(lr=1e-3), not both optimizer= and lr=")
    opt = make_optimizer(optimizer) if optimizer is not None else SGD(lr=lr)
    if not isinstance(kernel, Kernel):
        raise InputError(f"train: kernel: expected the Kernel of an MLP (symbp.generate of a symbp.mlp network), "
                         f"got {type(kernel).__name__}; a graph kernel trains with its sgd_step in a loop of your own")
    epochs = _positive_int("epochs", epochs, "a whole number of epochs >= 1")
    if not isinstance(shuffle, (bool, np.bool_)):
        raise InputError(f"train: shuffle: expected True or False, got {shown(shuffle)}")
    check_seed(seed)
    if is_device_array(X) or is_device_array(Y):
        # device arrays of a CUDA kernel stay on the device (mini-batches gathered there)
        X, Y = as_batch(kernel, X), as_batch(kernel, Y)
    else:
        X, Y = _as_array("X", X, kernel.dtype), _as_array("Y", Y, kernel.dtype)
    plain = (opt.kind == "sgd" and opt.hyper["momentum"] == 0 and opt.hyper["weight_decay"] == 0
             and opt.max_grad_norm is None)
    if plain:
        step = None
        if not is_device_array(X):
            _, X, Y = kernel._check(params, X, Y)      # every argument, before any update
    else:
        if getattr(kernel, "target", None) != "cpu" or not hasattr(kernel.module, f"train_step_{opt.kind}"):
            raise InputError(f"train: optimizer: {opt!r} runs as a fused step of an MLP kernel on the CPU; "
                             f"this kernel has none: use plain SGD (optimizer=symbp.SGD(lr=...))")
        step = kernel.bind(params, X, Y, opt)
        X, Y = step._args[0], step._args[1]
    n = X.shape[0]
    bs = n if batch_size is None else _positive_int("batch_size", batch_size,
                                                    "a whole number of rows >= 1, or None for the whole data")
    if bs > n:
        raise InputError(f"train: batch_size: {bs} is larger than the data ({n} rows): use at most {n}, "
                         f"or batch_size=None for the whole data in one batch")
    _check_in_place(kernel, params, "sgd_step" if plain else "train")
    rng = np.random.default_rng(seed)
    history = []
    bar = _Progress(epochs, progress)
    lr_value = opt.hyper["lr"]
    try:
        for epoch in range(1, epochs + 1):
            if shuffle and bs < n:
                order = rng.permutation(n)
                # one copy per epoch: every batch a contiguous view (device arrays: gathered per batch)
                Xe, Ye = (None, None) if is_device_array(X) else (X[order], Y[order])
            else:
                Xe, Ye = X, Y
            total = 0.0
            for start in range(0, n, bs):
                if Xe is None:      # device arrays: the batch gathered on the device
                    idx = order[start:start + bs]
                    Xb, Yb = take_rows(kernel, X, idx, 0), take_rows(kernel, Y, idx, 1)
                else:
                    Xb, Yb = Xe[start:start + bs], Ye[start:start + bs]
                if step is None:
                    loss = kernel.sgd_step(params, Xb, Yb, lr_value)
                else:
                    step._set_batch(Xb, Yb)
                    loss = float(step())
                total += loss * Xb.shape[0]
            loss = total / n
            history.append(loss)
            bar.update(epoch, loss)
            if log_every and (epoch % log_every == 0 or epoch == 1 or epoch == epochs):
                log(f"epoch {epoch:6d}  loss {loss:.6f}")
    finally:
        bar.close()
        if step is not None:
            step.write_back(params)
    return history


def _check_in_place(kernel, params, where="sgd_step"):
    """The trained parameters are written into the caller's arrays: refuse read-only ones (and,
    for sgd_step, which updates them at each step, arrays that the kernel would have copied)
    before any step."""
    keys = tuple(kernel.param_shapes)
    if where == "sgd_step":
        check_writable(params, keys, [params[k] for k in keys], kernel.dtype)
        return
    for k in keys:
        if not params[k].flags.writeable:
            raise InputError(f"params[{k!r}]: train writes the trained parameters back and needs a "
                             f"writable array (this one is read-only)")

"""Optimizers fused into the generated training step: their update rules, written once.

This is a table of definitions, like the activation table (``symbp.model.functions``), so it
lives in the model stage: the code generator prints it and the training loop validates the
user's choice with it, and neither of those later stages is imported from here.

Contract: ``RULES`` holds, per optimizer kind ("sgd", "adam", "adamw"), the optimizer's own
definition as SymPy assignments (PyTorch's ``torch.optim`` definitions and defaults, so that a
trajectory can be compared with torch's step for step). These are forward definitions of an
update, not derivatives: the gradient g comes from the derived kernel. The code generator
(``symbp.codegen.emit``) prints each rule into one compiled function per kind,
``train_step_<kind>(X, Y, theta, gtheta, work, state, hyper)``, that does forward, backward,
the optional clipping by global norm and the update in one call, on the packed arrays of
``Kernel.bind``: theta (parameters), gtheta (gradients), state (the per-parameter buffers of the
rule, ``len(rule.state)`` blocks of theta's size, in the kernel's dtype) and hyper (float64: the
hyperparameters in ``rule.hyper`` order, then ``max_grad_norm`` (inf: no clipping), then the step
count t, which the compiled step increments).

The public face is one class per kind, named as in torch.optim: ``SGD(lr=1e-3, momentum=0,
dampening=0, weight_decay=0, nesterov=False)``, ``Adam(lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
weight_decay=0)``, ``AdamW(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2)``, each
with ``max_grad_norm=None`` (torch.nn.utils.clip_grad_norm_ before the step). ``optimizer(spec)``
also accepts a name ("adam") or a pair ("adam", {"lr": 0.01}). A bad name, an unknown
hyperparameter or a value out of range (a negative learning rate, betas outside [0, 1), Nesterov
without momentum, ...) is one InputError line that says what to give instead.
"""
import math
import numbers
from dataclasses import dataclass

import numpy as np
import sympy as sp

from ..errors import InputError, shown

# per element: the parameter p, its gradient g; per step: the step count t
p, g, t = sp.symbols("p g t", real=True)
lr, momentum, dampening, weight_decay, nesterov = sp.symbols("lr momentum dampening weight_decay nesterov",
                                                             real=True)
beta1, beta2, eps = sp.symbols("beta1 beta2 eps", positive=True)
buf, m, v = sp.symbols("buf m v", real=True)
# per-step quantities of Adam (bias corrections), computed once per step in float64
step_size, bc2_sqrt = sp.symbols("step_size bc2_sqrt", positive=True)
# clipping by global norm (torch.nn.utils.clip_grad_norm_): ||g|| over every parameter
sq, max_grad_norm, clip = sp.symbols("sq max_grad_norm clip", positive=True)
CLIP_EPS = sp.Float("1e-6")    # torch's clip_coef = max_norm / (total_norm + 1e-6)


@dataclass(frozen=True)
class Rule:
    """One optimizer: hyperparameters (name, PyTorch default) in the order of the hyper array,
    state buffers (zero at the start), per-step scalars and per-element assignments (in order;
    the left side p updates the parameter, g rewrites the gradient used by what follows)."""
    name: str
    title: str
    hyper: tuple
    state: tuple
    scalars: tuple
    updates: tuple
    doc: str


SGD_RULE = Rule(
    "sgd", "SGD",
    hyper=(("lr", 1e-3), ("momentum", 0.0), ("dampening", 0.0), ("weight_decay", 0.0), ("nesterov", False)),
    state=(buf,),
    scalars=(),
    updates=(
        (g, g + weight_decay * p),
        # torch: the buffer starts as the first gradient, then b = mu b + (1 - dampening) g
        (buf, sp.Piecewise((g, sp.Eq(t, 1)), (momentum * buf + (1 - dampening) * g, True))),
        (p, p - lr * sp.Piecewise((g + momentum * buf, sp.Eq(nesterov, 1)), (buf, True))),
    ),
    doc="SGD with momentum (Nesterov optional) and L2 weight decay, as torch.optim.SGD")

_ADAM_TAIL = (
    (m, beta1 * m + (1 - beta1) * g),
    (v, beta2 * v + (1 - beta2) * g ** 2),
    (p, p - step_size * m / (sp.sqrt(v) / bc2_sqrt + eps)),
)
_ADAM_SCALARS = ((step_size, lr / (1 - beta1 ** t)), (bc2_sqrt, sp.sqrt(1 - beta2 ** t)))
_ADAM_HYPER = (("lr", 1e-3), ("beta1", 0.9), ("beta2", 0.999), ("eps", 1e-8))

ADAM_RULE = Rule(
    "adam", "Adam", hyper=_ADAM_HYPER + (("weight_decay", 0.0),), state=(m, v), scalars=_ADAM_SCALARS,
    updates=((g, g + weight_decay * p),) + _ADAM_TAIL,
    doc="Adam with L2 weight decay (added to the gradient), as torch.optim.Adam")

ADAMW_RULE = Rule(
    "adamw", "AdamW", hyper=_ADAM_HYPER + (("weight_decay", 1e-2),), state=(m, v), scalars=_ADAM_SCALARS,
    updates=((p, p * (1 - lr * weight_decay)),) + _ADAM_TAIL,
    doc="Adam with decoupled weight decay (the parameter shrinks first), as torch.optim.AdamW")

RULES = {r.name: r for r in (SGD_RULE, ADAM_RULE, ADAMW_RULE)}

# Clipping by global norm, before any rule: sq = sum of g^2 over every parameter (a reduction),
# then clip = min(1, max_grad_norm / (sqrt(sq) + 1e-6)) and g <- clip g.
CLIP_REDUCTION = (sq, g ** 2)
CLIP_SCALAR = (clip, sp.Min(1, max_grad_norm / (sp.sqrt(sq) + CLIP_EPS)))
CLIP_UPDATE = (g, clip * g)


def hyper_names(rule):
    """Names of the hyper array's entries: the rule's hyperparameters, max_grad_norm, t."""
    return [h for h, _ in rule.hyper] + ["max_grad_norm", "t"]


# ---------------------------------------------------------------------------------------------
# the public optimizer objects
# ---------------------------------------------------------------------------------------------

def _real(kind, key, value, low=None, high=None, low_open=False, high_open=True, what=None):
    ok = not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        raise InputError(f"optimizer: {kind}: {key}: expected {what}, got {shown(value)}")
    return float(value)


class Optimizer:
    """Hyperparameters of one optimizer kind (see the module's contract); subclasses name it."""
    kind = None

    def __init__(self, lr=1e-3, **hyper):
        hyper["lr"] = lr
        rule = RULES[self.kind]
        title = rule.title
        allowed = [h for h, _ in rule.hyper] + ["max_grad_norm"]
        if rule.name != "sgd":
            allowed = ["lr", "betas", "eps", "weight_decay", "max_grad_norm"]
        unknown = [k for k in hyper if k not in allowed]
        if unknown:
            raise InputError(f"optimizer: {title}: unknown hyperparameter {shown(unknown[0])}: "
                             f"expected some of {', '.join(allowed)}")
        values = {h: d for h, d in rule.hyper}
        if "betas" in hyper:
            b = hyper.pop("betas")
            if not isinstance(b, (tuple, list)) or len(b) != 2:
                raise InputError(f"optimizer: {title}: betas: expected two numbers in [0, 1), got {shown(b)}")
            for key, val in zip(("beta1", "beta2"), b):
                values[key] = _real(title, "betas", val, 0.0, 1.0, what="two numbers in [0, 1)")
        clip_norm = hyper.pop("max_grad_norm", None)
        for key, val in hyper.items():
            if key == "nesterov":
                if not isinstance(val, (bool, np.bool_)):
                    raise InputError(f"optimizer: {title}: nesterov: expected True or False, got {shown(val)}")
                values[key] = bool(val)
            elif key == "lr":
                values[key] = _real(title, key, val, 0.0,
                                    what="a finite learning rate >= 0 (to ascend, negate the loss instead)")
            elif key == "dampening":
                values[key] = _real(title, key, val, 0.0, 1.0, high_open=False, what="a number in [0, 1]")
            else:
                values[key] = _real(title, key, val, 0.0, what="a finite number >= 0")
        if rule.name == "sgd" and values["nesterov"] and (values["momentum"] <= 0 or values["dampening"] != 0):
            raise InputError(f"optimizer: {title}: nesterov: needs momentum > 0 and dampening = 0 "
                             f"(got momentum={values['momentum']}, dampening={values['dampening']})")
        if clip_norm is not None:
            clip_norm = _real(title, "max_grad_norm", clip_norm, 0.0, low_open=True,
                              what="a finite number > 0, or None for no clipping")
        self.rule = rule
        self.hyper = values
        self.max_grad_norm = clip_norm

    def __repr__(self):
        hyper = dict(self.hyper)
        if "beta1" in hyper:        # spelled as the constructor takes them
            hyper = {"lr": hyper.pop("lr"), "betas": (hyper.pop("beta1"), hyper.pop("beta2")), **hyper}
        args = [f"{k}={v!r}" for k, v in hyper.items()]
        if self.max_grad_norm is not None:
            args.append(f"max_grad_norm={self.max_grad_norm!r}")
        return f"{self.rule.title}({', '.join(args)})"

    def hyper_array(self):
        """The float64 hyper array of the fused step (see the module's contract), t = 0."""
        vals = [float(self.hyper[h]) for h, _ in self.rule.hyper]
        vals.append(math.inf if self.max_grad_norm is None else self.max_grad_norm)
        vals.append(0.0)
        return np.array(vals, dtype=np.float64)


class SGD(Optimizer):
    """torch.optim.SGD: lr=1e-3, momentum=0, dampening=0, weight_decay=0, nesterov=False."""
    kind = "sgd"


class Adam(Optimizer):
    """torch.optim.Adam: lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0."""
    kind = "adam"


class AdamW(Optimizer):
    """torch.optim.AdamW: lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2."""
    kind = "adamw"


CLASSES = {"sgd": SGD, "adam": Adam, "adamw": AdamW}


def optimizer(spec):
    """An Optimizer from an Optimizer, a name ("adam") or a pair (name, {hyperparameters})."""
    if isinstance(spec, Optimizer):
        return spec
    hyper = {}
    if isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[1], dict):
        spec, hyper = spec
        if not all(isinstance(k, str) for k in hyper):
            raise InputError(f"optimizer: hyperparameter names must be strings, got {shown(list(hyper))}")
    if isinstance(spec, str) and spec.lower() in CLASSES:
        return CLASSES[spec.lower()](**hyper)
    raise InputError(f"optimizer: expected symbp.SGD(...), symbp.Adam(...), symbp.AdamW(...), one of the names "
                     f"{', '.join(CLASSES)} or a pair (name, {{hyperparameters}}), got {shown(spec)}")

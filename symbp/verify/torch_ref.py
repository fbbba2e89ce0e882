"""The PyTorch autograd reference in float64 for either kind of model: ``torch_gradients``, with
the arguments and result of the ``symbp.verify`` contract. It reads the model's forward
definitions only, never ``symbp.derive`` or the kernels."""
import functools
import math
import operator

import sympy as sp

from .. import naming
from .conv import TENSOR_KINDS, torch_op
from .norm_torch import TORCH as NORM_TORCH
from .fd import checked_arrays


def _torch_expr(expr, env, torch):
    """Evaluate a SymPy expression on tensors (forward only; autograd differentiates it).

    Covers what the safe expression parser can build: + * ** numbers, exp log sqrt tanh sinh
    cosh sin cos atan Abs Max Min sign, Piecewise with comparisons. Anything else raises
    NotImplementedError naming it.
    """
    ref = next(iter(env.values()))

    def ev(e):
        if e in env:
            return env[e]
        if e.is_Number or e in (sp.pi, sp.E):
            return torch.full_like(ref, float(e))
        folds = {sp.Add: operator.add, sp.Mul: operator.mul, sp.Max: torch.maximum, sp.Min: torch.minimum}
        if e.func in folds:     # left to right: ((a0 + a1) + a2) ...
            return functools.reduce(folds[e.func], map(ev, e.args))
        if isinstance(e, sp.Pow):
            base, ex = e.args
            if ex.is_Integer or ex.is_Rational:
                return ev(base) ** float(ex)
            return torch.pow(ev(base), ev(ex))
        unary = {sp.exp: torch.exp, sp.log: torch.log, sp.tanh: torch.tanh, sp.sinh: torch.sinh,
                 sp.cosh: torch.cosh, sp.sin: torch.sin, sp.cos: torch.cos, sp.atan: torch.atan,
                 sp.Abs: torch.abs, sp.sign: torch.sign}
        if e.func in unary:
            return unary[e.func](ev(e.args[0]))
        if isinstance(e, sp.Piecewise):
            # undefined where no condition holds (a Piecewise without an otherwise branch): NaN
            out = torch.full_like(ref, math.nan)
            for value, cond in reversed(e.args):
                out = ev(value) if cond == sp.true else torch.where(ev(cond), ev(value), out)
            return out
        rel = {sp.StrictGreaterThan: torch.gt, sp.GreaterThan: torch.ge,
               sp.StrictLessThan: torch.lt, sp.LessThan: torch.le}
        if type(e) in rel:
            return rel[type(e)](ev(e.args[0]), ev(e.args[1]))
        raise NotImplementedError(f"torch_gradients: no torch translation of {e.func.__name__} in {expr}")

    return ev(expr)


def _torch_activation(act, z, torch, at_zero=0):
    """a = f(z) for one layer: built-ins through torch's own functions, user ones translated.
    torch's relu'(0) is 0 and leaky_relu'(0) the slope; with ``at_zero`` = 1 both are written
    as torch.where(z >= 0, z, ...), whose derivative at 0 is that of the z branch, 1."""
    if act.user:
        return _torch_expr(act.definition, {naming.Z: z}, torch)
    name, slope = act.name, float(dict(act.values).get("slope", 0))
    if name in ("relu", "leaky_relu") and at_zero:
        return torch.where(z >= 0, z, slope * z)
    builtin = {"sigmoid": torch.sigmoid, "tanh": torch.tanh, "relu": torch.relu, "exp": torch.exp,
               "leaky_relu": lambda z: torch.nn.functional.leaky_relu(z, negative_slope=slope),
               "softplus": lambda z: torch.logaddexp(z, torch.zeros_like(z)),   # exact log(1 + e^z), no threshold
               "identity": lambda z: z, "softmax": lambda z: torch.softmax(z, dim=1)}
    if name not in builtin:
        raise NotImplementedError(f"torch_gradients: no torch translation of activation {name!r}")
    return builtin[name](z)


def _loss(name, a, logits, y, torch):
    """Per-entry loss: mse 1/2 (a - y)^2, sse (a - y)^2; bce and ce from the logits (the
    pre-activation of the sigmoid / softmax output) when there are any, from a otherwise
    (an MLP's allow_any_output: NaN outside the loss's domain, as the kernels give)."""
    F = torch.nn.functional
    if name == "mse":
        return 0.5 * (a - y) ** 2
    if name == "sse":
        return (a - y) ** 2
    if name == "bce":
        if logits is not None:
            return F.binary_cross_entropy_with_logits(logits, y, reduction="none")
        return -(y * torch.log(a) + (1 - y) * torch.log(1 - a))
    if name == "ce":
        return -y * (torch.log_softmax(logits, dim=1) if logits is not None else torch.log(a))
    raise NotImplementedError(f"torch_gradients: no torch translation of loss {name!r}")


def _forward(graph, tp, vals, torch):
    """(output, logits or None) of a graph (an MLP's chain graph too): dense as in @ W^T + b
    (in @ W transposed), the other nodes by their definitions, ReLU'(0) as the graph's
    relu_at_zero; the logits are the input of a sigmoid output read by bce or a softmax output
    read by ce (a loss after another activation, ``allow_any_output``, is computed from the
    output)."""
    for n in graph.nodes:
        if n.kind in ("input", "loss"):
            continue
        ins = [vals[i] for i in n.inputs]
        if n.kind in TENSOR_KINDS:      # conv2d, pooling, flatten by torch's own (verify/conv.py)
            vals[n.name] = torch_op(n, graph, ins[0], tp, torch)
            continue
        if n.kind == "dense":
            W = tp[n.weight]
            out = ins[0] @ (W if n.transpose else W.T)
            if n.bias is not None:
                out = out + tp[n.bias]
        elif n.kind == "activation":
            out = _torch_activation(n.activation, ins[0], torch, graph.relu_at_zero)
        elif n.kind in ("add", "multiply"):
            out = ins[0]
            for v in ins[1:]:
                out = out + v if n.kind == "add" else out * v
        elif n.kind == "concat":
            out = torch.cat(ins, dim=1)
        elif n.kind in NORM_TORCH:      # batchnorm, layernorm, dropout (verify.norm_torch)
            out = NORM_TORCH[n.kind](n, ins, tp, torch)
        else:
            out = _torch_expr(n.expression, {n.symbol(i): v for i, v in zip(n.inputs, ins)}, torch)
        vals[n.name] = out
    outn = graph.node(graph.output)
    fits = {"bce": "sigmoid", "ce": "softmax"}.get(graph.loss_node.loss.name)
    logits = vals[outn.inputs[0]] if outn.kind == "activation" and outn.activation.name == fits else None
    return vals[outn.name], logits


def torch_gradients(model, params, X, Y, input_grad=False):
    """Loss and gradients by PyTorch autograd in float64 (an independent reference).

    Activations through torch's own sigmoid, tanh, relu, leaky_relu(slope), softplus (as
    logaddexp(z, 0)), identity, exp and softmax over units (relu and leaky_relu as
    torch.where(z >= 0, ...) when the model's relu_at_zero is 1); user-defined activations and
    expression nodes are translated from their SymPy definition. The loss per sample is summed
    over units (``_loss``), then the mean or the sum over the batch. ImportError without torch,
    NotImplementedError for what it cannot translate.
    """
    import torch
    graph, p64, x64, t64, checked = checked_arrays("torch_gradients", model, params, X, Y, input_grad)
    tp = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in p64.items()}
    leaves = {k: torch.tensor(v, dtype=torch.float64, requires_grad=k in checked) for k, v in x64.items()}
    a, logits = _forward(graph, tp, dict(leaves), torch)
    total = _loss(graph.loss_node.loss.name, a, logits, torch.tensor(t64, dtype=torch.float64), torch).sum()
    loss = total / t64.shape[0] if graph.reduction == "mean" else total
    loss.backward()
    grads = {k: t.grad.detach().numpy().copy() for k, t in tp.items()}
    grads.update({key: leaves[k].grad.detach().numpy().copy() for k, key in checked.items()})
    return float(loss.detach()), grads

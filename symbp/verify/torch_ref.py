"""The PyTorch autograd reference in float64 for either kind of model: ``torch_gradients``, with
the arguments and result of the ``symbp.verify`` contract. It reads the model's forward
definitions only, never ``symbp.derive`` or the kernels."""
import math

import sympy as sp

from .. import naming
from .conv import TENSOR_KINDS, torch_op
from .norm_torch import TORCH as NORM_TORCH


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
        if isinstance(e, sp.Add):
            out = ev(e.args[0])
            for t in e.args[1:]:
                out = out + ev(t)
            return out
        if isinstance(e, sp.Mul):
            out = ev(e.args[0])
            for t in e.args[1:]:
                out = out * ev(t)
            return out
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
        if isinstance(e, (sp.Max, sp.Min)):
            pick = torch.maximum if isinstance(e, sp.Max) else torch.minimum
            out = ev(e.args[0])
            for t in e.args[1:]:
                out = pick(out, ev(t))
            return out
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
    F = torch.nn.functional
    if act.user:
        return _torch_expr(act.definition, {naming.Z: z}, torch)
    name = act.name
    if name == "sigmoid":
        return torch.sigmoid(z)
    if name == "tanh":
        return torch.tanh(z)
    if name in ("relu", "leaky_relu") and at_zero:
        slope = float(dict(act.values)["slope"]) if name == "leaky_relu" else 0.0
        return torch.where(z >= 0, z, slope * z)
    if name == "relu":
        return torch.relu(z)
    if name == "leaky_relu":
        return F.leaky_relu(z, negative_slope=float(dict(act.values)["slope"]))
    if name == "softplus":
        return torch.logaddexp(z, torch.zeros_like(z))   # exact log(1 + e^z), no threshold
    if name == "identity":
        return z
    if name == "exp":
        return torch.exp(z)
    if name == "softmax":
        return torch.softmax(z, dim=1)
    raise NotImplementedError(f"torch_gradients: no torch translation of activation {name!r}")


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


def _mlp_forward(network, tp, x, torch):
    """(a_L, logits or None): z_l = a_{l-1} W_l^T + b_l (no b_l without bias), a_l = f_l(z_l)."""
    a, z = x, None
    for l, layer in enumerate(network.layers, start=1):
        z = a @ tp[naming.param_key("W", l)].T
        if layer.bias:
            z = z + tp[naming.param_key("b", l)]
        a = _torch_activation(layer.activation, z, torch, network.relu_at_zero)
    fits = {"bce": "sigmoid", "ce": "softmax"}.get(network.loss.name)
    return a, (z if network.layers[-1].activation.name == fits else None)


def _graph_forward(graph, tp, vals, torch):
    """(output, logits or None) of a graph: dense as in @ W^T + b (in @ W transposed), the other
    nodes by their definitions; a graph's bce reads a sigmoid node and its ce a softmax node
    (validated), whose input is the logits."""
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
            out = _torch_activation(n.activation, ins[0], torch)
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
    logits = vals[outn.inputs[0]] if graph.loss_node.loss.name in ("bce", "ce") else None
    return vals[outn.name], logits


def torch_gradients(model, params, X, Y, input_grad=False):
    """Loss and gradients by PyTorch autograd in float64 (an independent reference).

    Activations through torch's own sigmoid, tanh, relu, leaky_relu(slope), softplus (as
    logaddexp(z, 0)), identity, exp and softmax over units (relu and leaky_relu as
    torch.where(z >= 0, ...) when an MLP's relu_at_zero is 1); user-defined activations and
    expression nodes are translated from their SymPy definition. The loss per sample is summed
    over units (``_loss``), then the mean or the sum over the batch. ImportError without torch,
    NotImplementedError for what it cannot translate.
    """
    import torch
    from .fd import arrays, is_graph
    p64, x64, t64 = arrays("torch_gradients", model, params, X, Y)
    if is_graph(model):
        grad_names = {n.name for n in model.grad_inputs}
        loss_name, reduction = model.loss_node.loss.name, model.loss_node.reduction
    else:
        grad_names = {"X"} if input_grad else set()
        loss_name, reduction = model.loss.name, model.reduction
    tp = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in p64.items()}
    leaves = {k: torch.tensor(v, dtype=torch.float64, requires_grad=k in grad_names) for k, v in x64.items()}
    y = torch.tensor(t64, dtype=torch.float64)
    if is_graph(model):
        a, logits = _graph_forward(model, tp, dict(leaves), torch)
    else:
        a, logits = _mlp_forward(model, tp, leaves["X"], torch)
    total = _loss(loss_name, a, logits, y, torch).sum()
    loss = total / t64.shape[0] if reduction == "mean" else total
    loss.backward()
    grads = {k: t.grad.detach().numpy().copy() for k, t in tp.items()}
    grads.update({k: t.grad.detach().numpy().copy() for k, t in leaves.items() if k in grad_names})
    return float(loss.detach()), grads

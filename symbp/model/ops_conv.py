"""Registry entries of the tensor ops: conv2d, maxpool2d, avgpool2d and flatten.

Contract: importing this module adds ``CONV_OPS`` to the op registry ``symbp.model.ops.OPS``
(``symbp.model.graph`` imports it, so every built graph knows these kinds). Each entry is an
``ops.Op`` like the others: keys, a validation returning a one-line ``SpecError`` that names the
node and the key, and the forward definition in index notation with symbolic sizes.

Values: an ``input`` node may declare ``shape = [channels, height, width]`` instead of
``width``; a node's value is then the tensor (batch, C, H, W), stored in the kernels as the
(batch, C*H*W) rows of its C-order flattening (``torch.flatten(x, 1)``), so that elementwise
nodes (an activation, add) apply to it unchanged and keep its shape. ``Node.shape`` is (C, H, W)
for a tensor value and None for a (batch, width) one. The forward definitions, in the generic
names of ``ops`` (out, in0, W, b) and these sizes (``TENSOR_SIZES``: _c_in, _h_in, _w_in, _c_out,
_h_out, _w_out, _k_h, _k_w, _stride, _pad_h, _pad_w), with the reading "an entry outside its
array (a padded border, a fractional index) is zero":

- conv2d: out[s, o, i, j] = sum_{d, m, n} W[o, d, m, n] in0[s, d, i*stride + m - pad_h,
  j*stride + n - pad_w] + b[o] (the convolution of the book "Deep Learning", Goodfellow, Bengio
  and Courville, chapter 9, eq. 9.7, as PyTorch computes it: a cross-correlation), W of shape
  (C_out, C_in, k_h, k_w), b of shape (C_out,); keys out_channels, kernel (int or [k_h, k_w]),
  stride (default 1), padding (int, "valid" = 0, "same" = (k - 1) // 2 for stride 1, as
  PyTorch pads it: the rest on the bottom and right), bias (default true) and, as a dense node
  has them, ``weight`` / ``bias`` parameter names (default W_<node> / b_<node>, ``bias = false``
  for none);
- maxpool2d: out[s, o, i, j] = Max of in0[s, o, i*stride + m, j*stride + n] over the window in
  row-major order (the window is part of the definition: Max of its k_h k_w entries);
- avgpool2d: out[s, o, i, j] = 1/(k_h k_w) sum_{m, n} in0[s, o, i*stride + m, j*stride + n];
  both keys window (int or [k_h, k_w]) and stride (default: the window); sizes floor like
  PyTorch (ceil_mode false, no padding): H_out = floor((H - k_h) / stride) + 1;
- flatten: out[s, j] = sum_{d, m, n} delta(j, d H W + m W + n) in0[s, d, m, n] (C order).

Bad input (a ``SpecError`` naming ``node.<name>.<key>``): a kernel or window larger than the
(padded) input, stride 0, "same" with a stride other than 1, a tensor op reading a (batch,
width) value (flatten of a vector), and ``Check.channels`` mismatches (declared ``in_channels``).
"""
from dataclasses import replace
from numbers import Integral

import sympy as sp

from .. import naming
from ..errors import SpecError, shown as _shown
from .limits import MAX_WIDTH
from .ops import OPS, Forward, Op, ParamSpec, _B, _W, _in, check_int, check_name, check_str

S, I, J = naming.S, naming.I, naming.J
O, C, P, Q = naming.O, naming.C, naming.P, naming.Q
D, M, N = naming.D, naming.M, naming.N


def _size(name):
    return sp.Symbol(f"_{name}", integer=True, positive=True)


C_IN, H_IN, W_IN = _size("c_in"), _size("h_in"), _size("w_in")
C_OUT, H_OUT, W_OUT = _size("c_out"), _size("h_out"), _size("w_out")
K_H, K_W, STRIDE = _size("k_h"), _size("k_w"), _size("stride")
PAD_H, PAD_W = sp.Symbol("_pad_h", integer=True, nonnegative=True), sp.Symbol("_pad_w", integer=True, nonnegative=True)
TENSOR_SIZES = (C_IN, H_IN, W_IN, C_OUT, H_OUT, W_OUT, K_H, K_W, STRIDE, PAD_H, PAD_W)

# the index tuples of a tensor op's output and of its input's gradient
OUT_INDICES = (S, O, I, J)
IN_INDICES = (S, C, naming.U, naming.V)


def sizes(node, in_shape):
    """{generic size symbol: int} of one tensor node, given its input's (C, H, W)."""
    c, h, w = in_shape
    out = {C_IN: c, H_IN: h, W_IN: w}
    if node.shape is not None:
        out.update({C_OUT: node.shape[0], H_OUT: node.shape[1], W_OUT: node.shape[2]})
    if node.kernel is not None:
        out.update({K_H: node.kernel[0], K_W: node.kernel[1], STRIDE: node.stride,
                    PAD_H: node.padding[0], PAD_W: node.padding[1]})
    return out


# ----------------------------------------------------------------------------------------------
# checks
# ----------------------------------------------------------------------------------------------

def _pair(t, key, v, default=None):
    """An int >= 1 or [k_h, k_w] of them, as a pair."""
    if key not in t:
        if default is None:
            raise v.error(key, "missing key (expected an integer >= 1 or [height, width])")
        return default
    val = t[key]
    if isinstance(val, (list, tuple)):
        if len(val) != 2:
            raise v.error(key, f"expected an integer >= 1 or [height, width], got {_shown(val)}")
        return tuple(check_int(x, v.where, f"{v.prefix}{key}") for x in val)
    k = check_int(val, v.where, f"{v.prefix}{key}")
    return (k, k)


def _stride(t, v, default):
    if "stride" not in t:
        return default
    val = t["stride"]
    if isinstance(val, Integral) and not isinstance(val, bool) and val == 0:
        raise v.error("stride", "stride 0: expected an integer >= 1")
    return check_int(val, v.where, f"{v.prefix}stride")


def _tensor_input(ins, v, kind):
    shape = (v.shapes or {}).get(ins[0])
    if shape is None:
        raise v.error("input", f"{kind} node {v.name!r} reads a (batch, channels, height, width) value, but its "
                               f"input {ins[0]!r} is a (batch, {v.widths[ins[0]]}) vector")
    return shape


def _out_size(size, k, pad, stride, v, key, axis):
    padded = size + 2 * pad
    if k > padded:
        raise v.error(key, f"the {axis} {k} of node {v.name!r} is larger than its "
                           f"{'padded ' if pad else ''}input's {axis.split()[0]} {padded}")
    return (padded - k) // stride + 1


def input_shape(t, v):
    """An input node's declared ``shape = [C, H, W]``: (width, shape)."""
    val = t["shape"]
    if not isinstance(val, (list, tuple)) or len(val) != 3:
        raise v.error("shape", f"expected [channels, height, width], got {_shown(val)}")
    shape = tuple(check_int(x, v.where, f"{v.prefix}shape") for x in val)
    if "width" in t:
        raise v.error("width", "give either width (a vector) or shape (a tensor), not both")
    width = shape[0] * shape[1] * shape[2]
    if width > MAX_WIDTH:
        raise v.error("shape", f"{width} entries per sample, more than the {MAX_WIDTH} symbp accepts")
    return width, shape


def _conv_validate(t, ins, v):
    c, h, w = _tensor_input(ins, v, "conv2d")
    if "in_channels" in t and check_int(t["in_channels"], v.where, f"{v.prefix}in_channels") != c:
        raise v.error("in_channels", f"channel mismatch at conv2d node {v.name!r}: declared in_channels "
                                     f"{t['in_channels']}, but its input {ins[0]!r} has {c} channels")
    if "out_channels" not in t:
        raise v.error("out_channels", "missing key (expected an integer >= 1)")
    co = check_int(t["out_channels"], v.where, f"{v.prefix}out_channels")
    kernel = _pair(t, "kernel", v)
    stride = _stride(t, v, 1)
    pad = t.get("padding", 0)
    if pad == "same":
        if stride != 1:
            raise v.error("padding", f"padding 'same' needs stride 1 (node {v.name!r} has stride {stride})")
        padding = ((kernel[0] - 1) // 2, (kernel[1] - 1) // 2)
    elif pad == "valid":
        padding = (0, 0)
    elif isinstance(pad, str) or isinstance(pad, bool):
        raise v.error("padding", f"expected an integer >= 0, 'same' or 'valid', got {_shown(pad)}")
    else:
        p = check_int(pad, v.where, f"{v.prefix}padding", minimum=0)
        padding = (p, p)
    if pad == "same":
        ho, wo = h, w
        _out_size(h, kernel[0], padding[0], 1, v, "kernel", "kernel height")
        _out_size(w, kernel[1], padding[1], 1, v, "kernel", "kernel width")
    else:
        ho = _out_size(h, kernel[0], padding[0], stride, v, "kernel", "kernel height")
        wo = _out_size(w, kernel[1], padding[1], stride, v, "kernel", "kernel width")
    weight = check_str(t, "weight", v.where, v.prefix, default=f"W_{v.name}")
    check_name(weight, v.where, f"{v.prefix}weight", "parameter name")
    bias = t.get("bias", f"b_{v.name}")
    if bias is False:
        bias = None
    elif bias is True:
        bias = f"b_{v.name}"
    elif not isinstance(bias, str):
        raise v.error("bias", f"expected a parameter name, true or false, got {_shown(bias)}")
    else:
        check_name(bias, v.where, f"{v.prefix}bias", "parameter name")
    uses = [(weight, "weight", (co, c, kernel[0], kernel[1]), False)]
    if bias is not None:
        uses.append((bias, "bias", (co,), False))
    fields = {"weight": weight, "bias": bias, "shape": (co, ho, wo), "kernel": kernel, "stride": stride,
              "padding": padding}
    return co * ho * wo, fields, tuple(uses)


def _pool_validate(kind):
    def validate(t, ins, v):
        c, h, w = _tensor_input(ins, v, kind)
        window = _pair(t, "window", v)
        stride = _stride(t, v, None)
        if stride is None:
            if window[0] != window[1]:
                raise v.error("stride", f"window {list(window)} is not square: give stride")
            stride = window[0]
        ho = _out_size(h, window[0], 0, stride, v, "window", "window height")
        wo = _out_size(w, window[1], 0, stride, v, "window", "window width")
        return c * ho * wo, {"shape": (c, ho, wo), "kernel": window, "stride": stride, "padding": (0, 0)}, ()
    return validate


def _flatten_validate(t, ins, v):
    c, h, w = _tensor_input(ins, v, "flatten")
    return c * h * w, {}, ()


# ----------------------------------------------------------------------------------------------
# forward definitions (generic names and sizes)
# ----------------------------------------------------------------------------------------------

CONV_PARAMS = (
    ParamSpec("weight", "W", _W, (O, C, P, Q), lambda key: (C_OUT, C_IN, K_H, K_W)),
    ParamSpec("bias", "b", _B, (O,), lambda key: (C_OUT,)),
)


def _conv_forward(key, at_zero=0):
    x = _in(0)[S, D, I * STRIDE + M - PAD_H, J * STRIDE + N - PAD_W]
    fwd = sp.Sum(_W[O, D, M, N] * x, (D, 0, C_IN - 1), (M, 0, K_H - 1), (N, 0, K_W - 1))
    has_bias = key[1]
    return Forward(fwd + (_B[O] if has_bias else 0), 1, CONV_PARAMS if has_bias else CONV_PARAMS[:1])


def window_entries(kh, kw):
    """The entries of one pooling window, in row-major order (PyTorch's order for ties)."""
    return [_in(0)[S, O, I * STRIDE + a, J * STRIDE + b] for a in range(kh) for b in range(kw)]


def _maxpool_forward(key, at_zero=0):
    return Forward(sp.Max(*window_entries(key[1], key[2])), 1)


def _avgpool_forward(key, at_zero=0):
    body = _in(0)[S, O, I * STRIDE + M, J * STRIDE + N]
    return Forward(sp.Sum(body, (M, 0, K_H - 1), (N, 0, K_W - 1)) / (K_H * K_W), 1)


def _flatten_forward(key, at_zero=0):
    flat = D * H_IN * W_IN + M * W_IN + N
    return Forward(sp.Sum(sp.KroneckerDelta(J, flat) * _in(0)[S, D, M, N],
                          (D, 0, C_IN - 1), (M, 0, H_IN - 1), (N, 0, W_IN - 1)), 1)


def _conv_bind(node):
    return {"weight": node.weight, **({"bias": node.bias} if node.bias is not None else {})}


def _geometry(node):
    return {"shape": list(node.shape), "kernel": list(node.kernel), "stride": node.stride,
            "padding": list(node.padding)}


def _describe(node):
    c, h, w = node.shape if node.shape else (None, None, None)
    extra = f" {node.kernel[0]}x{node.kernel[1]}/{node.stride}" if node.kernel else ""
    return f"{node.name}={node.kind}({node.inputs[0]}{extra})[{c}x{h}x{w}]" if node.shape else \
        f"{node.name}={node.kind}({node.inputs[0]})[{node.width}]"


CONV_OPS = {op.kind: op for op in (
    Op("conv2d", ("name", "kind", "input", "out_channels", "in_channels", "kernel", "stride", "padding",
                  "bias", "weight"), "one", "convolution",
       _conv_validate, _conv_forward, key=lambda node: ("conv2d", node.bias is not None),
       canonical=lambda node: {"weight": node.weight, "bias": node.bias, **_geometry(node)},
       describe=_describe, params=CONV_PARAMS, bind=_conv_bind,
       doc="2-d convolution (a cross-correlation with the kernel W) plus the bias per channel"),
    Op("maxpool2d", ("name", "kind", "input", "window", "stride"), "one", "pooling",
       _pool_validate("maxpool2d"), _maxpool_forward,
       key=lambda node: ("maxpool2d", node.kernel[0], node.kernel[1]),
       canonical=_geometry, describe=_describe, doc="the maximum of each window (max pooling)"),
    Op("avgpool2d", ("name", "kind", "input", "window", "stride"), "one", "pooling",
       _pool_validate("avgpool2d"), _avgpool_forward, key=lambda node: ("avgpool2d",),
       canonical=_geometry, describe=_describe, doc="the mean of each window (average pooling)"),
    Op("flatten", ("name", "kind", "input"), "one", "reshape",
       _flatten_validate, _flatten_forward, key=lambda node: ("flatten",),
       canonical=lambda node: {}, describe=_describe, doc="the channels, rows and columns as one vector (C order)"),
)}
TENSOR_REALIZE = ("convolution", "pooling", "reshape")



def _with_shape(op):
    """The input entry, extended: ``shape = [C, H, W]`` declares a tensor value."""
    def validate(t, ins, v):
        if "shape" not in t:
            return op.validate(t, ins, v)
        width, shape = input_shape(t, v)
        fields = op.validate({**{k: x for k, x in t.items() if k != "shape"}, "width": width}, ins, v)[1]
        return width, {**fields, "shape": shape}, ()

    def canonical(node):
        return {**op.canonical(node), **({"shape": list(node.shape)} if node.shape else {})}

    def describe(node):
        if node.shape is None:
            return op.describe(node)
        return f"{node.name}[{'x'.join(map(str, node.shape))}{', grad' if node.grad else ''}]"
    return replace(op, keys=op.keys + ("shape",), validate=validate, canonical=canonical, describe=describe)


if "shape" not in OPS["input"].keys:
    OPS["input"] = _with_shape(OPS["input"])
OPS.update(CONV_OPS)

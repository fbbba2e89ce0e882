"""The tensor ops (conv2d, maxpool2d, avgpool2d, flatten) in the two independent references.

Contract: ``oracle_sample(node, graph, entries, P, fold)`` is one sample's value of a tensor
node for the full-expansion oracle (``verify.oracle``): SymPy entries built from the forward
definition read in its plainest form (sums over the kernel with the out-of-range entries of the
zero-padded input left out; Max over the window), as a flat list in C order. ``torch_op(node,
graph, x, tp, torch)`` is the same node by PyTorch's own ``conv2d``, ``max_pool2d``,
``avg_pool2d`` on the (B, C, H, W) view of the flattened rows. Neither reads the derivation.
"""
import sympy as sp

TENSOR_KINDS = ("conv2d", "maxpool2d", "avgpool2d", "flatten")


def oracle_sample(node, graph, x, P, fold):
    """One sample's entries of ``node`` (C order) from its input's entries ``x`` (C order)."""
    if node.kind == "flatten":
        return list(x)
    c_in, h, w = graph.node(node.inputs[0]).shape
    co, ho, wo = node.shape
    kh, kw = node.kernel
    st, (ph, pw) = node.stride, node.padding

    def at(c, u, v):
        return x[(c * h + u) * w + v]
    out = []
    for o in range(co):
        for i in range(ho):
            for j in range(wo):
                if node.kind == "conv2d":
                    W = P[node.weight]
                    terms = [W[o][c][m][n] * at(c, i * st + m - ph, j * st + n - pw)
                             for c in range(c_in) for m in range(kh) for n in range(kw)
                             if 0 <= i * st + m - ph < h and 0 <= j * st + n - pw < w]
                    z = sp.Add(*terms) + (P[node.bias][o] if node.bias is not None else 0)
                elif node.kind == "maxpool2d":
                    z = sp.Max(*[at(o, i * st + m, j * st + n) for m in range(kh) for n in range(kw)])
                else:
                    z = sp.Add(*[at(o, i * st + m, j * st + n) for m in range(kh) for n in range(kw)]) \
                        / (kh * kw)
                out.append(fold(z))
    return out


def torch_op(node, graph, x, tp, torch):
    """The node by PyTorch on the (B, C, H, W) view of ``x`` (B, C*H*W); flattened back."""
    F = torch.nn.functional
    if node.kind == "flatten":
        return x
    c, h, w = graph.node(node.inputs[0]).shape
    t = x.reshape(x.shape[0], c, h, w)
    kh, kw = node.kernel
    if node.kind == "conv2d":
        ph, pw = node.padding
        _, ho, wo = node.shape
        # PyTorch's padding="same" puts the odd pixel at the bottom and right: padded explicitly
        bottom = max((ho - 1) * node.stride + kh - h - ph, 0)
        right = max((wo - 1) * node.stride + kw - w - pw, 0)
        t = F.pad(t, (pw, right, ph, bottom))
        out = F.conv2d(t, tp[node.weight], tp[node.bias] if node.bias is not None else None, stride=node.stride)
    elif node.kind == "maxpool2d":
        out = F.max_pool2d(t, (kh, kw), stride=node.stride)
    else:
        out = F.avg_pool2d(t, (kh, kw), stride=node.stride)
    assert tuple(out.shape[1:]) == tuple(node.shape), (out.shape, node.shape)
    return out.reshape(x.shape[0], -1)

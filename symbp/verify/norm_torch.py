"""PyTorch translations of the normalization family, for ``verify.torch_ref`` (float64 autograd).

Contract: ``TORCH`` = {kind: fn(node, inputs, torch params, torch) -> tensor}:
``torch.nn.functional.batch_norm`` (training = True: batch statistics, biased variance),
``torch.nn.functional.layer_norm`` over the node's units, and for dropout x m / (1 - p) with the
mask the graph reads (what ``F.dropout`` computes with that mask: inverted scaling).
"""


# ----------------------------------------------------------------------------------------------

def _torch_affine(node, tp):
    if not node.option("affine"):
        return None, None
    return tp[node.option("scale")], tp[node.option("shift")]


def _torch_batchnorm(node, ins, tp, torch):
    w, b = _torch_affine(node, tp)
    return torch.nn.functional.batch_norm(ins[0], None, None, weight=w, bias=b, training=True,
                                          eps=node.option("eps"))


def _torch_layernorm(node, ins, tp, torch):
    w, b = _torch_affine(node, tp)
    return torch.nn.functional.layer_norm(ins[0], (node.width,), weight=w, bias=b, eps=node.option("eps"))


def _torch_dropout(node, ins, tp, torch):
    return ins[0] * ins[1] / (1.0 - node.option("p"))


TORCH = {"batchnorm": _torch_batchnorm, "layernorm": _torch_layernorm, "dropout": _torch_dropout}

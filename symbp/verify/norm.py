"""References for the normalization family (batchnorm, layernorm, dropout), independent of the
derivation: the full-expansion oracle of a graph holding them, and their PyTorch translations.

Contract: ``FAMILY[kind](node, ins, P, fold)`` is the value of one node of the family for a group
of samples, as nested rows out[s][j], from its inputs' rows ``ins`` and the parameters ``P``
(arrays of SymPy symbols), written out entry by entry from the definitions (Ioffe and Szegedy
2015, Algorithm 1; Ba, Kiros and Hinton 2016, eq. 4; inverted dropout x m / (1 - p)), independent
of the derivation. The full-expansion oracle (``verify.oracle``) calls it with the whole batch as
the group when an op couples the samples (batchnorm: every output of a batch depends on every
input of its column).

The PyTorch translations of the family are in ``verify.norm_torch``.
"""
import sympy as sp


def _eps(node):
    return sp.Rational(repr(node.option("eps")))


def _affine(node, P, xhat, j):
    if not node.option("affine"):
        return xhat
    return P[node.option("scale")][j] * xhat + P[node.option("shift")][j]


def _batchnorm(node, ins, P, fold):
    x = ins[0]                      # x[s][j]
    B, n = len(x), len(x[0])
    out = [[None] * n for _ in range(B)]
    for j in range(n):
        col = [x[s][j] for s in range(B)]
        mu = sp.Add(*col) / B
        var = sp.Add(*[(v - mu) ** 2 for v in col]) / B
        sigma = sp.sqrt(var + _eps(node))
        for s in range(B):
            out[s][j] = fold(_affine(node, P, (col[s] - mu) / sigma, j))
    return out


def _layernorm(node, ins, P, fold):
    out = []
    for row in ins[0]:
        n = len(row)
        mu = sp.Add(*row) / n
        var = sp.Add(*[(v - mu) ** 2 for v in row]) / n
        sigma = sp.sqrt(var + _eps(node))
        out.append([fold(_affine(node, P, (v - mu) / sigma, j)) for j, v in enumerate(row)])
    return out


def _dropout(node, ins, P, fold):
    keep = 1 - sp.Rational(repr(node.option("p")))
    return [[fold(v * m / keep) for v, m in zip(rx, rm)] for rx, rm in zip(*ins)]


FAMILY = {"batchnorm": _batchnorm, "layernorm": _layernorm, "dropout": _dropout}

"""CUDA target: emit numba.cuda kernels from a Derivation, write them and load them.

Contract:

- ``emit_cuda(derivation, dtype, fuse_width=FUSE_WIDTH, geometry=DEFAULT_GEOMETRY) -> str`` is
  deterministic (same derivation and options, same bytes); ``Geometry`` holds the launch
  shapes. The templates (templates/cuda/{fused,tiled}.py.j2) arrange the statements printed
  here into kernels and hold no math: every expression comes from the Derivation's equations,
  printed by ``CudaPrinter`` (``printer.NumbaPrinter``: ``math.*`` calls and typed constants, so
  a float32 kernel compiles to float32 instructions; no builtin max/min, which numba's CUDA
  target fails to compile). ``SIGNATURES`` in the module gives every kernel's argument types.
- ``generate_cuda(derivation, dtype="float64", out_dir=None, jit=True, ...) -> CudaKernel`` writes
  ``<out_dir>/<network>/cuda_<dtype>.py`` (atomically, only after the whole source was
  rendered), imports it and returns a ``CudaKernel`` (symbp.codegen.cuda_kernel) with the CPU
  Kernel's methods. With ``jit=True`` it first requires a CUDA GPU or Numba's simulator
  (``NUMBA_ENABLE_CUDASIM=1``) and raises ``SymbpError(NO_DEVICE)`` otherwise; with
  ``jit=False`` the module is written and imported without a device (for reading it or compiling
  it to PTX) and the Kernel raises that error when it is called.

Two strategies, chosen by width:

- ``fused`` when every width, the input's included, is at most ``fuse_width`` (128): one kernel
  per entry point; each thread carries one sample (s = the thread's global index) through the
  forward pass, the loss and the backward pass in per-thread local arrays sized by the widths.
  Weight rows pass through one shared-memory buffer a tile at a time (all threads of a block
  read the same weight at the same time: a broadcast); the parameter gradients of a block's
  samples are summed through the same buffer (rows of delta and a staged per sample) and then
  added to the global gradients with ``cuda.atomic.add``; the loss likewise. The shared buffer
  is ``SHARED_BYTES`` whatever the widths, so the tiles are sized to fit it.
- ``tiled`` otherwise (and the emitter says so once per network, with a warning): shared-memory
  tiled matrix products (64 x 64 tiles of the result per block, 4 x 4 per thread) for the
  contractions that ``batch_form`` reads off the equations, and one elementwise kernel per pass
  (bias and activation, output delta with the loss, hidden deltas), launched in sequence.

Launches: besides the strategy's kernels, one kernel zeroes every gradient and the loss and
one updates every parameter (``zero_all``, ``sgd_all``: one thread per entry of the parameters
laid end to end), and the tiled weight-gradient product dL/dW = delta^T A also writes the bias
gradient sum_s delta (the row sums of the delta^T tiles it already holds in shared memory), so a
training step is 5 L + 1 launches tiled (L layers). The fused kernel folds the update into its
epilogue when asked (``update``): the block that finishes last (an atomic ticket counter
``DONE``, after a memory fence; every other block's gradient sums are then in g*) applies
theta <- theta - lr g, reading g by atomic adds of 0 (coherent with the other blocks' atomics),
and resets the counter; a fused training step is 2 launches (zero, loss-gradient-update). ``gather_rows`` assembles a
shuffled mini-batch of device arrays on the device.

The batch factor's B (``Bf``) is a kernel argument: the size of the whole batch, so that a batch
split into chunks (``CudaKernel``) sums to the gradients of the whole batch.
"""
import warnings
from dataclasses import dataclass

import numpy as np
import sympy as sp
from sympy.printing.pycode import PythonCodePrinter

from .. import naming
from .._version import __version__
from ..derivation.equations import ColumnSum, Product, batch_form
from ..errors import DerivationError, SymbpError
from .emit import BF, _Block, text
from .printer import NumbaPrinter, helper_source, helpers_used, stable_forms
from ..output import environment

TARGET = "cuda"
DTYPES = ("float64", "float32")
ITEMSIZE = {"float64": 8, "float32": 4}
# Widest layer (input included) that the fused kernel takes: the threshold, not yet
# measured on a GPU. Each thread keeps its sample's z, a, g and delta of every layer in local
# memory, and its work per sample grows with the widths, so wide layers go to matrix products.
FUSE_WIDTH = 128
SHARED_BYTES = 40 * 1024      # the fused kernel's staging buffer; with the loss buffer < 48 KiB
NO_DEVICE = ("no CUDA GPU found; run on a machine with an NVIDIA GPU or set "
             "NUMBA_ENABLE_CUDASIM=1 to use Numba's CUDA simulator")



@dataclass(frozen=True)
class Geometry:
    """Launch shapes of the emitted kernels. The defaults are for a GPU; the simulator runs a
    Python thread per CUDA thread, so its tests use small blocks and tiles (more of them, which
    also exercises the tile edges)."""

    threads: int = 128                 # samples (threads) per block of the fused kernel
    shared_bytes: int = SHARED_BYTES   # the fused kernel's shared staging buffer
    row_threads: int = 64              # threads per block of the per-sample (row) kernels
    entry_block: tuple = (32, 8)       # (units, samples) per block of the per-entry kernels
    util_threads: int = 128            # threads per block of zeroing, SGD, column sums
    gemm_tile: int = 64                # rows and columns of C per block of a matrix product
    gemm_k: int = 16                   # depth of one shared-memory tile of a matrix product

    @property
    def gemm_side(self):               # threads per side of a block, 4 x 4 entries of C each
        return self.gemm_tile // 4

    @property
    def gemm_pad(self):                # a spare entry per tile row: no bank conflicts on stores
        return self.gemm_tile + 1

    @property
    def gemm_loads(self):              # entries of each shared tile that one thread loads
        return self.gemm_k * self.gemm_tile // self.gemm_side ** 2

    def check(self, dtype):
        def count(name, v, lo, hi, step=1):
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi or v % step:
                extra = f" and a multiple of {step}" if step > 1 else ""
                raise SymbpError(f"geometry.{name}: expected an integer from {lo} to {hi}{extra}, got {v!r}")
        count("threads", self.threads, 32, 1024, 32)
        count("shared_bytes", self.shared_bytes, 16, SHARED_BYTES)
        count("row_threads", self.row_threads, 32, 1024, 32)
        count("util_threads", self.util_threads, 32, 1024, 32)
        eb = self.entry_block
        if (not isinstance(eb, tuple) or len(eb) != 2 or not all(isinstance(v, int) and v > 0 for v in eb)
                or (eb[0] * eb[1]) % 32 or eb[0] * eb[1] > 1024):
            raise SymbpError(f"geometry.entry_block: expected (units, samples) with a product that is a "
                             f"multiple of 32 up to 1024, got {eb!r}")
        count("gemm_tile", self.gemm_tile, 8, 128, 4)
        count("gemm_k", self.gemm_k, 1, 64)
        if (self.gemm_k * self.gemm_tile) % self.gemm_side ** 2:
            raise SymbpError(f"geometry.gemm_k: gemm_k * gemm_tile must be a multiple of "
                             f"(gemm_tile / 4)^2 = {self.gemm_side ** 2}, got {self.gemm_k}")
        if 2 * self.gemm_k * self.gemm_pad * ITEMSIZE[dtype] > 48 * 1024:
            raise SymbpError("geometry: the matrix-product tiles exceed 48 KiB of shared memory")


DEFAULT_GEOMETRY = Geometry()

SM = sp.IndexedBase("sm")                 # the fused kernel's shared buffer (flat)
W_ROW = sp.Symbol("w", integer=True)      # offset of a weight row inside sm
O_ROW = sp.Symbol("o", integer=True)      # offset of a staged sample row inside sm
_INDEX = PythonCodePrinter()              # integer index expressions, printed untyped
_WARNED = set()                           # networks already told about the tiled fallback


# ---------------------------------------------------------------------------------------------
# device
# ---------------------------------------------------------------------------------------------
def simulator():
    """True when Numba runs CUDA kernels in its simulator (NUMBA_ENABLE_CUDASIM=1)."""
    import numba
    return bool(numba.config.ENABLE_CUDASIM)


def device_available():
    """A CUDA GPU with a working driver, or the simulator."""
    if simulator():
        return True
    from numba import cuda
    try:
        return bool(cuda.is_available())
    except Exception:      # a broken driver install reads as "no GPU"
        return False


def require_device():
    if not device_available():
        raise SymbpError(NO_DEVICE)


# ---------------------------------------------------------------------------------------------
# printing
# ---------------------------------------------------------------------------------------------
class CudaPrinter(NumbaPrinter):
    """NumbaPrinter for kernels: per-thread quantities print without the sample index
    (``a1[s, j]`` -> ``a1[j]``, a thread-local array), the shared buffer as ``sm[<offset>]``,
    Max and Min as conditional expressions."""

    def __init__(self, dtype, names=None, per_thread=None):
        super().__init__(dtype, names)
        self.per_thread = dict(per_thread or {})     # quantity label -> local array name

    def _print_Indexed(self, e):
        label = str(e.base.label)
        if e.base == SM:
            return f"sm[{_INDEX.doprint(e.indices[0])}]"
        if label in self.per_thread:
            idx = [_INDEX.doprint(i) for i in e.indices if i != naming.S]
            return f"{self.per_thread[label]}[{', '.join(idx)}]"
        return super()._print_Indexed(e)

    def _print_Max(self, e):
        return self._fold(e.args, ">")

    def _print_Min(self, e):
        return self._fold(e.args, "<")

    def _fold(self, args, op):
        # numba >= 0.66's CUDA target cannot compile the two-argument builtins max and min
        # (numba issue #10753, "Signature mismatch"): conditional expressions instead.
        out = self._print(args[0])
        for a in args[1:]:
            x = self._print(a)
            out = f"({x} if {x} {op} {out} else {out})"
        return out


# Helpers whose source in printer.HELPERS calls max(), which the CUDA target cannot compile
# (see CudaPrinter._fold): the same function without it.
CUDA_HELPERS = {
    "_softplus": '''def _softplus(x):
    # log(1+exp(x)) = max(x, 0) + log1p(exp(-|x|)), finite for any finite x.
    return (x if x > {zero} else {zero}) + math.log1p(math.exp(-abs(x)))''',
}


def _helper_source(name, printer):
    if name in CUDA_HELPERS:
        one, zero = printer._print(sp.Integer(1)), printer._print(sp.Integer(0))
        return CUDA_HELPERS[name].format(one=one, zero=zero)
    return helper_source(name, printer)


def _sum_of(rhs):
    """(the one Sum in rhs, the rest of rhs)."""
    sums = [t for t in sp.Add.make_args(rhs) if isinstance(t, sp.Sum)]
    if len(sums) != 1:
        raise DerivationError(f"expected one sum in {rhs}")
    return sums[0], rhs - sums[0]


def _rows(blk, groups, index, width):
    """Printed rows of ``groups`` (lists of (lhs, rhs, comment)), one loop per group. Row
    reductions are hoisted out of the loop over ``index``: they must not depend on it."""
    for _, rhs, _ in (a for g in groups for a in g):
        for sm in rhs.atoms(sp.Sum):
            if index in sm.free_symbols:
                raise DerivationError(f"a row sum depends on the unit index {index}: {sm}")
    return [line for g in groups for line in blk.rows(g, str(index), width)]


def _statements(p, sizes, assignments):
    """Elementwise statements without a loop (one thread per entry); None if any has a sum."""
    out = []
    for lhs, rhs, comment in assignments:
        rhs = stable_forms(rhs.xreplace(sizes))
        if rhs.has(sp.Sum):
            return None
        out += [f"# {comment}", f"{p.doprint(lhs)} = {p.doprint(rhs)}"]
    return out


_KIND_ORDER = {k: i for i, k in enumerate(naming.KINDS)}


def _arrays(exprs):
    """Quantities read or written by ``exprs``, in naming order, as (identifier, ndim)."""
    bases = {str(ix.base.label): ix.base for e in exprs for ix in e.atoms(sp.Indexed)}

    def order(base):
        kind, layer = naming.parse(base)
        return _KIND_ORDER[kind], -1 if layer is None else layer

    return [(naming.ident(base), 1 if naming.parse(base)[0] in ("b", "gb") else 2)
            for base in sorted(bases.values(), key=order)]


_ARG_TYPES = {"int": "int64", "index": "int64[::1]", "counter": "int32[::1]"}


def _sig(dtype, args):
    """Numba signature of a kernel from [(name, ndim or 'scalar', 'int', 'index', 'counter')]."""
    types = [dtype if kind == "scalar" else _ARG_TYPES[kind] if kind in _ARG_TYPES
             else f"{dtype}[{', '.join([':'] * (kind - 1) + ['::1'])}]" for _, kind in args]
    return f"void({', '.join(types)})"


def _activation_row(d, l, f):
    """Layer l's activation as a row [(lhs, rhs, comment)], after checking that ``f``, the batch
    form of z_l, is W a + b (W a in a layer without bias)."""
    net, zq, aq = d.network, d[f"z{l}"], d[f"a{l}"]
    bias = net.layers[l - 1].bias
    if not isinstance(f, Product) or (f.bias is None) == bias:
        raise DerivationError(f"z{l}: expected W a{' + b' if bias else ''}, got {zq.rhs}")
    return [(aq.lhs, aq.rhs, f"{text(aq.lhs, aq.rhs)}   [{net.layers[l - 1].activation.name}]")]


def _loss_pass(d, p, sizes):
    """The per-sample loss printed: the lines of its row reductions, its value, the quantities
    it reads, and the batch factor that scales the sum."""
    loss_expr, reads = d.loss_sample
    expr, lines, _ = _Block(p, sizes).reductions(stable_forms(loss_expr.xreplace(sizes)))
    return {"lines": lines, "value": p.doprint(expr), "reads": reads,
            "scale": p.doprint(d.batch_factor.xreplace(sizes))}


# ---------------------------------------------------------------------------------------------
# the fused kernel
# ---------------------------------------------------------------------------------------------
def _weight_contraction(eq, l, net, p, smem, per_thread):
    """Loops of a per-sample contraction with W_l (z = W a + b, or g = W^T delta): the weight's
    rows pass through shared memory a tile at a time."""
    sm, rest = _sum_of(eq.rhs)
    (c, _, _), = sm.limits
    W = naming.quantity("W", l)
    wf = [f for f in sp.Mul.make_args(sm.function) if isinstance(f, sp.Indexed) and f.base == W]
    if len(wf) != 1 or len(wf[0].indices) != 2:
        raise DerivationError(f"{eq.name}: expected one factor W{l}[row, col] in {sm.function}")
    row, col = wf[0].indices
    out_index, = [i for i in eq.lhs.indices if i != naming.S]
    if {row, col} != {out_index, c}:
        raise DerivationError(f"{eq.name}: the indices of W{l} do not match {eq.lhs}")
    n_out, n_in = net.sizes[l], net.sizes[l - 1]
    summand = sm.function.xreplace({wf[0]: SM[W_ROW + col]})
    return {
        "W": naming.ident(W), "n_out": n_out, "n_in": n_in,
        "tile": max(1, min(n_out, smem // n_in)),
        "row": str(row), "col": str(col), "row_output": out_index == row,
        "out": per_thread[str(eq.lhs.base.label)],
        "init": p.doprint(rest), "summand": p.doprint(summand),
        "comment": text(eq.lhs, eq.rhs),
    }


def _gradient_stage(d, l, p, smem, threads):
    """Per-block sums of gW_l and gb_l (no gb_l for a layer without bias): rows of the two
    factors staged per sample in shared memory, ``samples`` at a time; each thread sums its
    entries over the staged samples."""
    net = d.network
    bias = net.layers[l - 1].bias
    gW = d[f"gW{l}"]
    gb = d[f"gb{l}"] if bias else None
    f = batch_form(gW.lhs, gW.rhs)
    cs = batch_form(gb.lhs, gb.rhs) if bias else None
    if not isinstance(f, Product) or (bias and (not isinstance(cs, ColumnSum) or cs.arg != f.left)):
        raise DerivationError(f"gW{l}, gb{l}: expected sum_s delta a^T and sum_s delta")
    staged, offset = [], 0
    for base in (f.left, f.right):
        kind, layer = naming.parse(base)
        staged.append({"name": str(base.label), "offset": offset, "width": net.sizes[layer]})
        offset += net.sizes[layer]
    stride = offset
    where = {s["name"]: s["offset"] for s in staged}

    def staged_form(expr):
        return expr.replace(lambda e: isinstance(e, sp.Indexed) and str(e.base.label) in where,
                            lambda e: SM[O_ROW + where[str(e.base.label)] + e.indices[1]])

    sW, _ = _sum_of(gW.rhs)
    pW, qW = gW.lhs.indices
    n_out, n_in = net.sizes[l], net.sizes[l - 1]
    out = {
        "staged": staged, "stride": stride,
        "samples": max(1, min(threads, smem // stride)),
        "gW": naming.ident(gW.lhs.base), "gb": None,
        "gW_comment": text(gW.lhs, gW.rhs),
        "p": str(pW), "q": str(qW), "n_out": n_out, "n_in": n_in,
        "entries_W": n_out * n_in,
        "per_thread_W": -(-n_out * n_in // threads), "per_thread_b": 0,
        "gW_summand": p.doprint(staged_form(sW.function)),
    }
    if bias:
        sb, _ = _sum_of(gb.rhs)
        pb, = gb.lhs.indices
        out.update({"gb": naming.ident(gb.lhs.base), "gb_comment": text(gb.lhs, gb.rhs), "pb": str(pb),
                    "entries_b": n_out, "per_thread_b": -(-n_out // threads),
                    "gb_summand": p.doprint(staged_form(sb.function))})
    return out


def _fused_context(d, dtype, geometry, sizes):
    net = d.network
    L, n = net.depth, net.sizes
    threads = geometry.threads
    # entries of the shared buffer: at least one weight row and one staged sample row
    smem = max([geometry.shared_bytes // ITEMSIZE[dtype]] + [n[l] + n[l - 1] for l in range(1, L + 1)])

    def local(kind, l):      # a per-thread array of a quantity: (name, width)
        return str(naming.quantity(kind, l).label), n[l]

    locals_fwd = [local("a", 0)] + [local(kind, l) for l in range(1, L + 1) for kind in ("z", "a")]
    locals_bwd = [local(kind, l - back) for l in range(L, 0, -1) for kind, back in (("delta", 0), ("ga", 1))]
    per_thread = {name: name for name, _ in locals_fwd + locals_bwd}
    p = CudaPrinter(dtype, {BF: "Bf"}, per_thread)

    forward = []
    for l in range(1, L + 1):
        zq = d[f"z{l}"]
        act = _activation_row(d, l, batch_form(zq.lhs, zq.rhs))
        forward.append({"layer": l, "z": _weight_contraction(zq, l, net, p, smem, per_thread),
                        "rows": _rows(_Block(p, sizes), [act], naming.J, n[l])})

    backward = []
    for l in range(L, 0, -1):
        dq = d[f"delta{l}"]
        rows = _rows(_Block(p, sizes), [[(dq.lhs, dq.rhs, text(dq.lhs, dq.rhs))]], naming.J, n[l])
        step = {"layer": l, "delta_comment": f"{dq.name}: {dq.doc}", "rows": rows,
                "grad": _gradient_stage(d, l, p, smem, threads)}
        gq = d[f"ga{l - 1}"]
        step["ga"] = _weight_contraction(gq, l, net, p, smem, per_thread)
        backward.append(step)

    out = str(naming.quantity("a", L).label)
    pargs = [(k, len(s)) for k, s in net.param_shapes().items()]
    fwd_args = [("X", 2)] + pargs + [(f"A{L}", 2)]
    train_args = ([("X", 2), ("Y", 2)] + pargs + [("g" + k, nd) for k, nd in pargs]
                  + [("LOSS", 1), ("GX", 2), ("want_gx", "int"), ("Bf", "scalar"),
                     ("lr", "scalar"), ("update", "int"), ("DONE", "counter")])
    return p, {
        "strategy": "fused", "shared": smem,
        "locals_fwd": locals_fwd, "locals_bwd": locals_bwd, "forward": forward, "backward": backward,
        **{f"loss_{k}": v for k, v in _loss_pass(d, p, sizes).items()}, "out": out,
        "fwd_buffers": [f"A{L}"], "bwd_buffers": [],
        "buffer_widths": {f"A{L}": n[L]},
        "kernels": {"fused_forward": fwd_args, "fused_loss_and_grad": train_args},
        "n0": n[0], "nL": n[L], "input": per_thread["a0"], "gx": per_thread["ga0"],
        "acc_W": max(s["grad"]["per_thread_W"] for s in backward),
        "acc_b": max(1, max(s["grad"]["per_thread_b"] for s in backward)),   # >= 1: a valid array
    }


# ---------------------------------------------------------------------------------------------
# the tiled path
# ---------------------------------------------------------------------------------------------
def _gemm_call(eq, out):
    """Host call of the tiled product for ``eq`` (a Product): C = op(L) op(R)."""
    f = batch_form(eq.lhs, eq.rhs)
    if not isinstance(f, Product):
        raise DerivationError(f"{eq.name}: expected a matrix product, got {eq.rhs}")
    name = "gemm_" + ("t" if f.left_t else "n") + ("t" if f.right_t else "n")
    return f, name, f"{naming.ident(f.left)}, {naming.ident(f.right)}, {out}"


def _elementwise(name, p, sizes, groups, width, extra=()):
    """An elementwise kernel over (sample, unit): one thread per entry, or one thread per
    sample when a row sum is involved (softmax)."""
    flat = [a for g in groups for a in g]
    exprs = [e for lhs, rhs, _ in flat for e in (lhs, rhs.xreplace(sizes))]
    args = _arrays(exprs) + list(extra)
    if any(e.has(BF) for e in exprs) and ("Bf", "scalar") not in args:
        args.append(("Bf", "scalar"))
    body = _statements(p, sizes, flat)
    kernel = {"name": name, "args": args, "width": width,
              "rows_of": next(a for a, nd in args if nd == 2)}   # an array with a row per sample
    if body is not None and not extra:
        kernel.update(kind="entry", body=body)
    else:
        kernel.update(kind="row", body=_rows(_Block(p, sizes), groups, naming.J, width))
    return kernel


def _tiled_context(d, dtype, sizes):
    net = d.network
    L, n = net.depth, net.sizes
    p = CudaPrinter(dtype, {BF: "Bf"})
    kernels, steps_fwd, steps_bwd, gemms = [], [], [], set()
    column_sums = False      # a column-sum kernel only where a bias gradient is not folded

    for l in range(1, L + 1):
        zq, aq = d[f"z{l}"], d[f"a{l}"]
        f, gemm, args = _gemm_call(zq, f"Z{l}")
        act = _activation_row(d, l, f)
        gemms.add(gemm)
        zlhs = zq.lhs
        if f.bias is not None:
            bias = [(zlhs, zlhs + f.bias[naming.J], text(zq.lhs, zq.rhs))]
            groups = [bias, act] if aq.rhs.has(sp.Sum) else [bias + act]
        else:   # no bias: the product already is z, the pass only applies the activation
            groups = [act]
        k = _elementwise(f"forward{l}", p, sizes, groups, n[l])
        kernels.append(k)
        steps_fwd.append({"layer": l, "comment": text(zq.lhs, zq.rhs), "gemm": gemm, "gemm_args": args,
                          "kernel": k})

    loss = _loss_pass(d, p, sizes)
    loss_exprs = [d.loss_sample[0].xreplace(sizes)]

    for l in range(L, 0, -1):
        dq = d[f"delta{l}"]
        name = f"output{l}" if l == L else f"delta{l}"
        extra = ()
        groups = [[(dq.lhs, dq.rhs, text(dq.lhs, dq.rhs))]]
        if l == L:
            # the loss is summed per block in the same pass over the output rows
            extra = tuple(a for a in _arrays(loss_exprs)
                          if a not in _arrays([dq.lhs, dq.rhs])) + (("LOSS", 1),)
        k = _elementwise(name, p, sizes, groups, n[l], extra)
        if l == L:
            k["loss"] = loss
            if ("Bf", "scalar") not in k["args"]:
                k["args"].append(("Bf", "scalar"))
        kernels.append(k)
        gW = d[f"gW{l}"]
        _, gW_gemm, gW_args = _gemm_call(gW, naming.ident(gW.lhs.base))
        bias = {"gb_comment": None, "gb": None, "gb_arg": None, "gb_folded": False}
        if net.layers[l - 1].bias:
            gb = d[f"gb{l}"]
            cs = batch_form(gb.lhs, gb.rhs)
            if not isinstance(cs, ColumnSum):
                raise DerivationError(f"gb{l}: expected a sum over the samples, got {gb.rhs}")
            # dL/db = sum_s delta: the row sums of delta^T, which the product dL/dW = delta^T A
            # reads tile by tile anyway, so the product also writes them (no column-sum launch)
            folded = gW_gemm == "gemm_tn" and gW_args.split(", ")[0] == naming.ident(cs.arg)
            column_sums = column_sums or not folded
            bias = {"gb_comment": text(gb.lhs, gb.rhs), "gb": naming.ident(gb.lhs.base),
                    "gb_arg": naming.ident(cs.arg), "gb_folded": folded}
        gq = d[f"ga{l - 1}"]
        _, ga_gemm, ga_args = _gemm_call(gq, "GX" if l == 1 else naming.ident(gq.lhs.base))
        gemms.update((gW_gemm, ga_gemm))
        steps_bwd.append({
            "layer": l, "delta_comment": f"{dq.name}: {dq.doc}", "kernel": k,
            "gW_comment": text(gW.lhs, gW.rhs), "gW_gemm": gW_gemm, "gW_args": gW_args, **bias,
            "ga_comment": text(gq.lhs, gq.rhs), "ga_gemm": ga_gemm, "ga_args": ga_args,
        })

    fwd_buffers = [b for l in range(1, L + 1) for b in (f"Z{l}", f"A{l}")]
    bwd_buffers = [f"G{l}" for l in range(1, L)] + [f"D{l}" for l in range(1, L + 1)]
    widths = {f"{kind}{l}": n[l] for kind in "ZAGD" for l in range(1, L if kind == "G" else L + 1)}
    sig = {k["name"]: k["args"] for k in kernels}
    for g in sorted(gemms):
        sig[g] = [("L", 2), ("R", 2), ("C", 2), ("accumulate", "int"), ("S", 1), ("with_sum", "int")]
    if column_sums:
        sig["column_sum"] = [("D", 2), ("g", 1)]
    return p, {
        "strategy": "tiled", "kernels_ew": kernels, "gemms": sorted(gemms),
        "forward": steps_fwd, "backward": steps_bwd, "loss_pass": loss,
        "fwd_buffers": fwd_buffers, "bwd_buffers": bwd_buffers, "buffer_widths": widths,
        "kernels": sig, "out": f"A{L}", "n0": n[0], "nL": n[L], "column_sums": column_sums,
    }


# ---------------------------------------------------------------------------------------------
# entry points
# ---------------------------------------------------------------------------------------------
def choose_strategy(network, fuse_width=FUSE_WIDTH):
    """("fused", None), or ("tiled", why) when a width is above ``fuse_width``."""
    wide = [(w, l) for l, w in enumerate(network.sizes) if w > fuse_width]
    if not wide:
        return "fused", None
    w, l = max(wide, key=lambda t: (t[0], -t[1]))
    what = "the input" if l == 0 else f"layer {l}"
    return "tiled", (f"{network.name}: {what} has width {w}, more than the {fuse_width} units the "
                     f"fused CUDA kernel (one thread per sample) takes; using tiled matrix-product "
                     f"kernels")


def _check_options(dtype, fuse_width, geometry):
    if dtype not in DTYPES:
        raise SymbpError(f"dtype: expected one of {', '.join(DTYPES)}, got {dtype!r}")
    if isinstance(fuse_width, bool) or not isinstance(fuse_width, int) or fuse_width < 1:
        raise SymbpError(f"fuse_width: expected a positive integer, got {fuse_width!r}")
    if not isinstance(geometry, Geometry):
        raise SymbpError(f"geometry: expected a symbp.codegen.cuda.Geometry, "
                         f"got {type(geometry).__name__}")
    geometry.check(dtype)


def emit_cuda(derivation, dtype="float64", fuse_width=FUSE_WIDTH, geometry=DEFAULT_GEOMETRY):
    """Source text of the CUDA kernel module for ``derivation``; ``geometry`` gives the launch
    shapes (``Geometry``)."""
    _check_options(dtype, fuse_width, geometry)
    d = derivation
    net = d.network
    strategy, why = choose_strategy(net, fuse_width)
    if why is not None and (net.digest, fuse_width) not in _WARNED:
        _WARNED.add((net.digest, fuse_width))
        warnings.warn(why, stacklevel=3)
    sizes = {**{naming.width(l): w for l, w in enumerate(net.sizes)}, naming.BATCH: BF}
    if strategy == "fused":
        p, ctx = _fused_context(d, dtype, geometry, sizes)
    else:
        p, ctx = _tiled_context(d, dtype, sizes)
    loss_expr, _ = d.loss_sample
    used = helpers_used([stable_forms(e.rhs) for e in d.equations] + [stable_forms(loss_expr)])
    params = list(net.param_shapes())
    ctx.update({
        "version": __version__, "digest": net.digest, "name": net.name, "target": TARGET,
        "dtype": dtype, "sizes": net.sizes, "description": str(net),
        "loss": net.loss.name, "reduction": net.reduction, "depth": net.depth,
        "param_shapes": net.param_shapes(), "params": params, "grads": ["g" + k for k in params],
        "helpers": [_helper_source(h, p) for h in used], "fuse_width": fuse_width,
        "geometry": geometry,
        "zero": p.doprint(sp.Integer(0)), "why": why,
        "equations": [text(e.lhs, e.rhs) for e in d.equations if e.kind != "loss"],
        "nobias": [l for l, layer in enumerate(net.layers, start=1) if not layer.bias],
    })
    ctx["kernels"] = dict(ctx["kernels"])
    # zeroing and the update: one launch each over all parameters, flat, in PARAMS order
    flat, start = [], 0
    for k, shape in net.param_shapes().items():
        size = int(np.prod(shape))
        flat.append({"name": k, "start": start, "end": start + size, "size": size,
                     "cols": shape[1] if len(shape) == 2 else None})
        start += size
    ctx.update(flat_params=flat, flat_total=start)
    ctx["kernels"]["zero_all"] = [("g" + k, 1) for k in params] + [("LOSS", 1)]
    ctx["kernels"]["sgd_all"] = [(k, 1) for k in params] + [("g" + k, 1) for k in params] + [("lr", "scalar")]
    ctx["kernels"]["gather_rows"] = [("src", 2), ("idx", "index"), ("dst", 2)]
    ctx["signatures"] = {k: _sig(dtype, a) for k, a in ctx["kernels"].items()}
    ctx["arglists"] = {k: ", ".join(n for n, _ in a) for k, a in ctx["kernels"].items()}
    return environment().get_template(f"cuda/{strategy}.py.j2").render(**ctx)

"""The CPU code generator's shared printing pieces and measured thresholds.

Contract: every CPU kernel module, of an MLP and of a graph alike, is emitted by
``codegen.graph_emit`` (an MLP through its chain graph, ``graph_emit.emit_mlp``) and the CUDA
generator (``codegen.cuda``); this module holds what they share: ``text`` (the one-line form of
an equation for code comments), ``_Block`` (the printed statements of one fused pass over the
rows of a batch, with the row reductions), ``optimizer_steps`` (the printed fused optimizer
updates), and the measured thresholds that choose how a kernel computes (LOOPS_MAX,
VECTOR_MIN, CHUNK_ROWS / PARALLEL_MIN, BLAS_THREADS_MIN), documented with their measurements.
Batch rows are samples. Per dense node a CPU kernel uses BLAS matrix products (``np.dot`` with
an ``out`` buffer inside njit) for the contractions that ``batch_form`` finds (z = A W^T, g = D W,
dL/dW = D^T A_prev) or fused per-sample loops (``layer_strategy``), and fuses the elementwise
work of a row (bias, activation, delta, per-row reductions such as softmax's sum) into one pass.

Numerical stability: ``printer.stable_forms`` prints sigmoid and softplus stably, and every
row reduction of the form sum_k exp(x_k) is shifted by the row maximum m (log-sum-exp):
sum_k exp(x_k) = exp(m) r with r = sum_k exp(x_k - m), substituted and simplified by SymPy
(powsimp, expand_log), so softmax and its cross-entropy never overflow.
"""
import sympy as sp

from .. import naming
from ..model import optim
from ..derivation.equations import ColumnSum, Product, batch_form
from ..derivation.graph import renamer
from .printer import NumbaPrinter, stable_forms

# Elementwise activations with a transcendental function (tanh, exp, log, sigmoid, ...) are
# computed by NumPy's SIMD ufuncs (inside numba.objmode) once a layer has at least this many
# entries (batch x width); below it, the scalar loop fused with the bias add is faster. Measured
# on this project's 2-core x86 machine (benchmarks/bench_mlp.py --breakdown): Numba's scalar
# math.tanh/math.exp cost about 10-20 ns an entry and do not vectorize (llvmlite has no SVML),
# NumPy's take about 1-2 ns, and entering object mode costs about 2 us: the crossover is near
# 200 entries; 1024 keeps small layers (XOR, per-sample calls) entirely compiled.
VECTOR_MIN = 1024

BF = sp.Symbol("Bf", positive=True)          # the batch size as a float of the kernel's dtype


def _label(base):
    return str(base.label)


def text(lhs, rhs):
    """One-line plain-text form of an equation for code comments (per sample, column vectors)."""
    form = batch_form(lhs, rhs)
    name = _label(lhs.base) if isinstance(lhs, sp.Indexed) else str(lhs)
    if isinstance(form, Product):
        # batch rows C = op(L) op(R); per sample c = op(R)^T l, or sum_s l r^T without samples.
        if naming.S in lhs.indices:
            m = _label(form.right) + ("" if form.right_t else "^T")
            out = f"{name} = {m} {_label(form.left)}"
        else:
            out = f"{name} = sum_s {_label(form.left)} {_label(form.right)}^T"
        return out + (f" + {_label(form.bias)}" if form.bias is not None else "")
    if isinstance(form, ColumnSum):
        return f"{name} = sum_s {_label(form.arg)}"
    return f"{name} = {_plain(rhs)}"


def _plain(expr):
    """``expr`` with each indexed quantity as its bare label and each sum as sum(body), renamed
    by the derivation's ``renamer``, which keeps the form a pass chose (the kernel prints
    2 (a - y) from the same expression; ``replace`` would rebuild the product as 2 a - 2 y)."""
    mapping = {e: sp.Symbol(_label(e.base)) for e in expr.atoms(sp.Indexed)}
    mapping.update({s: sp.Function("sum")(_plain(s.function)) for s in expr.atoms(sp.Sum)})
    return renamer(mapping)(expr)


class _Block:
    """Printed statements of one fused pass over the rows of a batch."""

    def __init__(self, printer, sizes):
        self.p = printer
        self.sizes = sizes
        self.count = 0

    def _temp(self, prefix):
        self.count += 1
        sym = sp.Symbol(f"{prefix}{self.count - 1}", real=True)
        self.p.names[sym] = str(sym)
        return sym

    def reductions(self, expr, index=None):
        """Replace the sums over units in ``expr`` by temporaries; return (expr, lines before
        the loop over ``index``, lines inside it). A sum that depends on ``index`` (a matrix-vector
        product row, z_j = sum_k W_jk a_k) is reduced inside the loop, the others once per row."""
        before, inside = [], []
        zero = self.p._print(sp.Integer(0))

        def summed(r, k, n, term):      # r = sum_k term, over k < n
            return [f"{r} = {zero}", f"for {k} in range({n}):", f"    {r} += {term}"]

        for sm in sorted(expr.atoms(sp.Sum), key=str):
            (k, lo, hi), = sm.limits
            body = sm.function
            n = int(hi - lo + 1)
            if index is not None and index in sm.free_symbols:
                r = self._temp("acc")
                inside += summed(r, k, n, self.p.doprint(body))
                expr = expr.xreplace({sm: r})
            elif isinstance(body, sp.exp):
                x = body.args[0]
                r, m = self._temp("r"), self._temp("m")
                before += [f"{m} = {self.p.doprint(x.xreplace({k: lo}))}",
                           f"for {k} in range({int(lo) + 1}, {n}):",
                           f"    {m} = {self.p.doprint(sp.Max(m, x))}"]
                before += summed(r, k, n, f"math.exp({self.p.doprint(x - m)})")
                expr = expr.xreplace({sm: sp.exp(m) * r})
                expr = sp.powsimp(sp.expand_log(expr, force=True), combine="exp")
            else:
                r = self._temp("r")
                before += summed(r, k, n, self.p.doprint(body))
                expr = expr.xreplace({sm: r})
        return expr, before, inside

    def rows(self, assignments, index, width, then=()):
        """for j in range(width): OUT[s, j] = expr, after the row's reductions; ``then`` are
        further statements fused into the same pass (e.g. gradient accumulations)."""
        lines, body = [], []
        for lhs, rhs, comment in assignments:
            rhs = stable_forms(rhs.xreplace(self.sizes))
            rhs, before, inside = self.reductions(rhs, sp.Symbol(index, integer=True))
            lines += before
            body += [f"# {comment}"] + inside + [f"{self.p.doprint(lhs)} = {self.p.doprint(rhs)}"]
        body += list(then)
        return lines + [f"for {index} in range({width}):"] + ["    " + b for b in body]


# Per layer, the emitter chooses how to do the layer's three contractions (z = W a, the
# backpropagated g = W^T delta and dL/dW = sum_s delta a^T):
# - "loops": fused per-sample loops, the sums written out from the index-form equations and the
#   gradient accumulated in the pass that computes delta; no call leaves compiled code;
# - "blas": np.dot into preallocated buffers (BLAS gemm), with the elementwise work fused into
#   one pass over the rows.
# Measured on this project's 2-core machine, one BLAS thread, a step of a w-w-w-w tanh network
# (loss_and_grad, microseconds, loops / blas): w=2 B=4: 2.4 / 2.4; w=4 B=64: 12.3 / 11.4;
# w=8 B=64: 29 / 36; w=8 B=256: 74 / 79; w=16 B=256: 72 / 68; w=32 B=256: 159 / 155;
# w=64 B=256: 534 / 515. Loops win up to 8 x 8 layers and BLAS from 16 x 16 (more so with more
# BLAS threads), so loops are used while a layer has at most LOOPS_MAX weights.
LOOPS_MAX = 64

# Both cores: a module whose dense nodes are all fused loops (no parameter shared) also holds
# ``loss_and_grad_parallel`` (and its packed form): one numba.prange over chunks of CHUNK_ROWS
# rows, each chunk forward, loss and backward sample by sample in a serially compiled helper (the same machine code as the
# serial kernel), into its own partial loss and gradients, added in chunk order afterwards: the
# result does not depend on the thread count or the schedule (bit-identical across runs and
# across NUMBA_NUM_THREADS; equal to the serial variant to rounding). The Kernel calls it when
# batch x PARALLEL_COST (per-sample multiply-adds and elementwise entries) reaches PARALLEL_MIN
# and Numba has more than one thread; otherwise the serial variant runs, the unchanged
# single-thread code compiled without parallel=True (a parallel compile takes about 3x longer,
# so it happens only on first use). A module with a BLAS layer has no parallel variant: its
# products already run on BLAS's threads, and a second thread pool around them lost (below).
# Measured by benchmarks/threads.py (float32, best of 9 interleaved rounds, serial / parallel
# time) and bound steps side by side, on this project's 2-core machine shared with other jobs
# (load average 4-9):
# - one Numba thread: the parallel variant runs at 0.4-0.9 of the serial speed (xor 2-3-1
#   B=1024..16384: 0.69-0.88; 8-8-8-8 tanh: 0.38-0.69): per chunk it takes transcendental
#   activations from scalar math.exp/math.tanh (10-20 ns an entry), where the serial variant
#   uses NumPy's SIMD ufuncs above VECTOR_MIN entries (1-2 ns);
# - two threads, OMP_WAIT_POLICY=passive: xor B=1024..16384 0.54-0.64, 8-8-8-8 0.34-0.50; at one
#   quiet moment xor B=8192 gained 1.42x (512 -> 361 us);
# - with libgomp's default (spinning) wait policy, one empty prange region cost 9-16 ms here
#   (8 us passive): a parallel region waits for every thread to get a core;
# - BLAS nets with prange elementwise passes between the products (an earlier version):
#   784-256-128-10 B=1024 60 -> 285 ms, 1024-wide B=4096 1265 -> 1592 ms (median, two threads):
#   Numba's and OpenBLAS's workers contend for the two cores.
# - relu 8-8-8-8 (no transcendental function), two threads, passive: B=1024 (0.6M) 0.82,
#   B=4096 (2.4M) 0.72, B=16384 (9.6M) 1.21.
# The threshold sits between the last loss and the first gain; with transcendental activations
# the single-thread handicap above keeps threads from paying at any size measured here.
# Re-measure on free cores (benchmarks/threads.py).
CHUNK_ROWS = 64

# BLAS threads: a step whose matrix products take fewer than BLAS_THREADS_MIN FLOPs (the module's
# BLAS_FLOPS per sample x batch; 2 per multiply-add, forward, weight and input gradients) runs on
# one BLAS thread (symbp.codegen.blas.one_thread); above, BLAS uses all its threads. Measured
# side by side in one process, bound step, float32, 2-core machine shared with other jobs
# (median ms, BLAS on 2 threads / on 1): 64-64-64-10 B=256 (0.0115 GFLOP) 22.8 / 0.77;
# 784-256-128-10 B=1024 (1.03 GFLOP) 280 / 43; 1024-wide B=4096 (68.7 GFLOP): 2 threads faster
# (1580 ms unpinned against 1900 ms on one pinned core, in two bench runs).
BLAS_THREADS_MIN = 8e9
PARALLEL_MIN = 5_000_000


def layer_strategy(n_in, n_out):
    """"loops" or "blas" for a dense layer of n_out x n_in weights (see LOOPS_MAX)."""
    return "loops" if n_in * n_out <= LOOPS_MAX else "blas"


def optimizer_steps(dtype):
    """Per optimizer kind of ``symbp.optim.RULES``, the printed pieces of its fused step
    ``train_step_<kind>``: the rule's assignments printed per element of the packed arrays (p as
    theta[i], g as a local gradient, a state buffer s as state_s[i]), its per-step scalars
    printed in float64 from the hyper array, and the clipping by global norm."""
    steps = []
    for rule in optim.RULES.values():
        names = optim.hyper_names(rule)
        slot = {name: i for i, name in enumerate(names)}
        # per-step scalars: float64, straight from the hyper array
        wide = NumbaPrinter("float64", {**{getattr(optim, h): f"hyper[{slot[h]}]" for h in names[:-1]},
                                        optim.t: "t", optim.sq: "sq"})
        # per element: the kernel's dtype; hyperparameters cast once into locals of that name
        elem = NumbaPrinter(dtype, {optim.p: "theta[i]", optim.g: "g",
                                    **{s: f"state_{s}[i]" for s in rule.state}})
        hyper_locals = [f"{h} = DTYPE(hyper[{slot[h]}])" for h, _ in rule.hyper]
        scalars = [f"{lhs} = DTYPE({wide.doprint(rhs)})" for lhs, rhs in rule.scalars]
        body = [f"{'theta[i]' if lhs == optim.p else elem.doprint(lhs)} = {elem.doprint(rhs)}"
                for lhs, rhs in rule.updates]
        clip_sym, clip_rhs = optim.CLIP_SCALAR
        red_sym, red_rhs = optim.CLIP_REDUCTION
        gfull = NumbaPrinter(dtype, {optim.g: "gtheta[i]", clip_sym: str(clip_sym)})
        steps.append({
            "kind": rule.name, "title": rule.title, "doc": rule.doc, "hyper": names,
            "state": [f"state_{s}" for s in rule.state], "hyper_locals": hyper_locals,
            "scalars": scalars, "body": body, "t_slot": slot["t"], "clip_slot": slot["max_grad_norm"],
            "clip_sum": f"{red_sym} += {gfull.doprint(red_rhs)}",
            "clip_scalar": f"{clip_sym} = DTYPE({wide.doprint(clip_rhs)})",
            "clip_update": f"gtheta[i] = {gfull.doprint(optim.CLIP_UPDATE[1])}",
            "updates": [f"{lhs} <- {rhs}" for lhs, rhs in rule.updates],
        })
    return steps

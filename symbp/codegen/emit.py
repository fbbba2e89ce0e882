"""Emit the source of a kernel module from a Derivation, through a Jinja template.

Contract: ``emit(derivation, target, dtype) -> str`` is deterministic (same derivation, same
bytes). This module turns each derived equation into printed statements; the template
(templates/<target>/module.py.j2) only arranges them into functions and holds no math.
Batch rows are samples. Per layer the CPU kernel uses BLAS matrix products (``np.dot`` with an
``out`` buffer inside njit) for the contractions that ``batch_form`` finds (z = A W^T, g = D W,
dL/dW = D^T A_prev) and fuses all elementwise work of a row (bias, activation, delta, per-row
reductions such as softmax's sum) into one pass over the row.

Numerical stability: ``printer.stable_forms`` prints sigmoid and softplus stably, and every
row reduction of the form sum_k exp(x_k) is shifted by the row maximum m (log-sum-exp):
sum_k exp(x_k) = exp(m) r with r = sum_k exp(x_k - m), substituted and simplified by SymPy
(powsimp, expand_log), so softmax and its cross-entropy never overflow.
"""
import numpy as np
import sympy as sp

from .. import naming
from .._version import __version__
from ..model import optim
from ..derivation.equations import ColumnSum, Product, batch_form
from .printer import (ArrayPrinter, NumbaPrinter, helper_source, helpers_used, is_transcendental,
                      stable_forms)

# Elementwise activations with a transcendental function (tanh, exp, log, sigmoid, ...) are
# computed by NumPy's SIMD ufuncs (inside numba.objmode) once a layer has at least this many
# entries (batch x width); below it, the scalar loop fused with the bias add is faster. Measured
# on this project's 2-core x86 machine (benchmarks/bench_mlp.py --breakdown): Numba's scalar
# math.tanh/math.exp cost about 10-20 ns an entry and do not vectorize (llvmlite has no SVML),
# NumPy's take about 1-2 ns, and entering object mode costs about 2 us: the crossover is near
# 200 entries; 1024 keeps small layers (XOR, per-sample calls) entirely compiled.
VECTOR_MIN = 1024
from ..output import environment

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
    plain = rhs.replace(lambda e: isinstance(e, sp.Indexed), lambda e: sp.Symbol(_label(e.base)))
    plain = plain.replace(lambda e: isinstance(e, sp.Sum), lambda e: sp.Function("sum")(e.function))
    return f"{name} = {plain}"


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
        for sm in sorted(expr.atoms(sp.Sum), key=str):
            (k, lo, hi), = sm.limits
            body = sm.function
            n = int(hi - lo + 1)
            if index is not None and index in sm.free_symbols:
                r = self._temp("acc")
                inside += [f"{r} = {zero}",
                           f"for {k} in range({n}):",
                           f"    {r} += {self.p.doprint(body)}"]
                expr = expr.xreplace({sm: r})
            elif isinstance(body, sp.exp):
                x = body.args[0]
                r, m = self._temp("r"), self._temp("m")
                before += [f"{m} = {self.p.doprint(x.xreplace({k: lo}))}",
                           f"for {k} in range({int(lo) + 1}, {n}):",
                           f"    {m} = {self.p.doprint(sp.Max(m, x))}",
                           f"{r} = {zero}",
                           f"for {k} in range({n}):",
                           f"    {r} += math.exp({self.p.doprint(x - m)})"]
                expr = expr.xreplace({sm: sp.exp(m) * r})
                expr = sp.powsimp(sp.expand_log(expr, force=True), combine="exp")
            else:
                r = self._temp("r")
                before += [f"{r} = {zero}",
                           f"for {k} in range({n}):",
                           f"    {r} += {self.p.doprint(body)}"]
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

# Both cores: a module whose layers are all fused loops also holds ``loss_and_grad_parallel``
# (and its packed form): one numba.prange over chunks of CHUNK_ROWS rows, each chunk forward,
# loss and backward sample by sample in a serially compiled helper (the same machine code as the
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
        body = []
        for lhs, rhs in rule.updates:
            target = "theta[i]" if lhs == optim.p else elem.doprint(lhs)
            body.append(f"{target} = {elem.doprint(rhs)}")
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


def _to_partial(line, accumulated):
    """``line`` with its accumulation ``g[j] += ...`` into a gradient g of ``accumulated``
    redirected to chunk c's partial, ``Pg[c, j] += ...``; other lines unchanged."""
    for g, _ in accumulated:
        if line.lstrip().startswith(f"{g}["):
            return line.replace(f"{g}[", f"P{g}[c, ", 1)
    return line


def emit(derivation, target="cpu", dtype="float64"):
    """Source text of the kernel module for ``derivation``."""
    net = derivation.network
    L = net.depth
    sizes = {naming.width(l): n for l, n in enumerate(net.sizes)}
    sizes[naming.BATCH] = BF
    p = NumbaPrinter(dtype, {BF: "Bf"})
    d = derivation
    J, P = naming.J, naming.P

    def product(eq, out):
        f = batch_form(eq.lhs, eq.rhs)
        assert isinstance(f, Product), eq
        left = naming.ident(f.left) + (".T" if f.left_t else "")
        right = naming.ident(f.right) + (".T" if f.right_t else "")
        return f, f"np.dot({left}, {right}, {out})"

    layers_fwd = []
    for l in range(1, L + 1):
        zq, aq = d[f"z{l}"], d[f"a{l}"]
        strategy = layer_strategy(net.sizes[l - 1], net.sizes[l])
        f, dot = product(zq, naming.ident(zq.lhs.base))
        blk = _Block(p, sizes)
        zlhs = zq.lhs
        if strategy == "blas":
            pre, zrhs = [dot], (zlhs + f.bias[J] if f.bias is not None else None)  # product in Z
        else:
            pre, zrhs = [], zq.rhs
        # a BLAS layer without bias has nothing left to do per entry of z
        zrow = [(zlhs, zrhs, text(zq.lhs, zq.rhs))] if zrhs is not None else []
        act = [(aq.lhs, aq.rhs, f"{text(aq.lhs, aq.rhs)}   [{net.layers[l - 1].activation.name}]")]
        vector = None
        if aq.rhs.has(sp.Sum):
            body = blk.rows(zrow, "j", net.sizes[l]) + blk.rows(act, "j", net.sizes[l])
        else:
            body = blk.rows(zrow + act, "j", net.sizes[l])
            rhs = stable_forms(aq.rhs)
            if is_transcendental(rhs):
                vector = {"z_rows": _Block(p, sizes).rows(zrow, "j", net.sizes[l]) if zrow else [],
                          "fn": f"_vector_a{l}", "args": f"{naming.ident(zq.lhs.base)}, {naming.ident(aq.lhs.base)}",
                          "comment": text(aq.lhs, aq.rhs),
                          "stmt": f"{naming.ident(aq.lhs.base)}[...] = {ArrayPrinter().doprint(rhs)}".replace("numpy.", "np."),
                          "size": net.sizes[l]}
        layers_fwd.append({"layer": l, "strategy": strategy, "comment": text(zq.lhs, zq.rhs),
                           "pre": pre, "rows": body, "vector": vector})

    # loss per sample (in z for cross-entropies: see derive._loss_from_logits)
    loss_expr, loss_reads = d.loss_sample
    blk = _Block(p, sizes)
    lexpr = stable_forms(loss_expr.xreplace(sizes))
    lexpr, lred, _ = blk.reductions(lexpr)
    loss_lines = lred + [f"loss += {p.doprint(lexpr)}"]
    loss_scale = p.doprint(d.batch_factor.xreplace(sizes))

    # per-sample work of the passes that the parallel variant splits over rows: forward rows
    # (plus the z = W a multiply-adds of loops layers) here, backward rows below
    cost = sum(net.sizes[l] * (2 + (net.sizes[l - 1] if layer_strategy(net.sizes[l - 1], net.sizes[l]) == "loops" else 0))
               for l in range(1, L + 1))
    backward = []
    for l in range(L, 0, -1):
        strategy = layer_strategy(net.sizes[l - 1], net.sizes[l])
        dq = d[f"delta{l}"]
        gW = d[f"gW{l}"]
        gWq = naming.ident(gW.lhs.base)
        then, pre, post, accumulated = [], [], [], []
        if net.layers[l - 1].bias:
            gb = d[f"gb{l}"]
            gbq = naming.ident(gb.lhs.base)
            cs = batch_form(gb.lhs, gb.rhs)
            assert isinstance(cs, ColumnSum) and cs.arg == dq.lhs.base, gb
            # the column sum dL/db = sum_s delta[s, :] is accumulated in the pass that computes
            # delta, row by row (contiguous), instead of a strided second pass
            then = [f"{gbq}[j] += {naming.ident(cs.arg)}[s, j]   # {text(gb.lhs, gb.rhs)}"]
            pre = [f"{gbq}[:] = {p.doprint(sp.Integer(0))}"]
            accumulated.append((gbq, (net.sizes[l],)))
        if strategy == "blas":
            post += [f"# {text(gW.lhs, gW.rhs)}", product(gW, gWq)[1]]
        else:
            # dL/dW[p, q] = sum_s delta[s, p] a[s, q]: this sample's term, in the same pass
            (q, lo, hi), = [lim for lim in gW.rhs.limits]
            term = gW.rhs.function.xreplace({P: J})
            pre.append(f"{gWq}[:, :] = {p.doprint(sp.Integer(0))}")
            accumulated.append((gWq, (net.sizes[l], net.sizes[l - 1])))
            then += [f"for q in range({net.sizes[l - 1]}):   # {text(gW.lhs, gW.rhs)}",
                     f"    {gWq}[j, q] += {p.doprint(term)}"]
        blk = _Block(p, sizes)
        rows = blk.rows([(dq.lhs, dq.rhs, text(dq.lhs, dq.rhs))], "j", net.sizes[l], then=then)
        # the parallel variant: the same pass per chunk c of rows, accumulating into the chunk's
        # own partial gradients P<g>[c, ...], added in chunk order afterwards
        partial = [("P" + g, shape) for g, shape in accumulated]
        then_par = [_to_partial(t, accumulated) for t in then]
        rows_par = _Block(p, sizes).rows([(dq.lhs, dq.rhs, text(dq.lhs, dq.rhs))], "j", net.sizes[l],
                                         then=then_par)
        step = {"layer": l, "strategy": strategy, "delta_comment": f"{dq.name}: {dq.doc}",
                "pre": pre, "rows": rows, "post": post,
                "par": {"partial": [(name, ", ".join(str(n) for n in shape)) for name, shape in partial],
                        "rows": rows_par,
                        "reduce": [(g, shape) for g, shape in accumulated]}}
        cost += net.sizes[l] + (net.sizes[l] * net.sizes[l - 1] if strategy == "loops" else 0)
        gq = d[f"ga{l - 1}"]
        ga = {"comment": text(gq.lhs, gq.rhs)}
        if strategy == "blas":
            ga["dot"] = product(gq, naming.ident(gq.lhs.base))[1]
        else:
            ga["rows"] = _Block(p, sizes).rows([(gq.lhs, gq.rhs, text(gq.lhs, gq.rhs))], "i", net.sizes[l - 1])
            cost += net.sizes[l - 1] * net.sizes[l] if l > 1 else 0
        if l > 1:
            step["ga"] = ga
        else:
            input_grad = ga
        backward.append(step)

    params = [k for k in net.param_shapes()]
    # packed entry point: every parameter (gradient, work buffer) back to back in one array
    packed, packed_grads, off = [], [], 0
    for key, shape in net.param_shapes().items():
        size = int(np.prod(shape))
        view = f"[{off}:{off + size}]" + (f".reshape({shape})" if len(shape) == 2 else "")
        packed += [f"{key} = theta{view}", f"g{key} = gtheta{view}"]
        packed_grads.append(f"g{key} = gtheta{view}")
        off += size
    fwd_buffers = [n for l in range(1, L + 1) for n in (f"Z{l}", f"A{l}")]
    bwd_buffers = [f"G{l}" for l in range(1, L)] + [f"D{l}" for l in range(1, L + 1)]
    grads = ["g" + k for k in params]
    widths = {**{f"Z{l}": net.sizes[l] for l in range(1, L + 1)},
              **{f"A{l}": net.sizes[l] for l in range(1, L + 1)},
              **{f"G{l}": net.sizes[l] for l in range(1, L)},
              **{f"D{l}": net.sizes[l] for l in range(1, L + 1)}}
    off, packed_work = 0, []
    for name in fwd_buffers + bwd_buffers:
        packed.append(f"{name} = work[B * {off}:B * {off + widths[name]}].reshape((B, {widths[name]}))")
        packed_work.append(packed[-1])
        off += widths[name]
    work_width = off
    used = helpers_used([stable_forms(e.rhs) for e in d.equations] + [stable_forms(loss_expr)])
    acts = ", ".join(l.activation.name for l in net.layers)
    ctx = {
        "version": __version__, "digest": net.digest, "name": net.name, "target": target,
        "dtype": dtype, "sizes": net.sizes, "description": str(net), "activations": acts,
        "loss": net.loss.name, "reduction": net.reduction, "depth": L,
        "param_shapes": net.param_shapes(), "params": params, "grads": grads,
        "fwd_buffers": fwd_buffers, "bwd_buffers": bwd_buffers,
        "buffer_widths": widths, "packed": packed, "work_width": work_width,
        "packed_grads": packed_grads, "packed_work": packed_work,
        "packed_fwd": packed_work[:len(fwd_buffers)],
        "helpers": [helper_source(h, p) for h in used], "layers": layers_fwd, "loss_lines": loss_lines,
        "loss_scale": loss_scale, "loss_reads": loss_reads, "backward": backward,
        "input_grad": input_grad, "input_grad_buffer": naming.ident(d["ga0"].lhs.base),
        "strategies": [l["strategy"] for l in layers_fwd], "loops_max": LOOPS_MAX,
        "zero": p.doprint(sp.Integer(0)), "out": f"A{L}", "vector_min": VECTOR_MIN,
        "uses_scipy": any(l["vector"] and "scipy." in l["vector"]["stmt"] for l in layers_fwd),
        "equations": [text(e.lhs, e.rhs) for e in d.equations if e.kind != "loss"],
        "nobias": [l for l, layer in enumerate(net.layers, start=1) if not layer.bias],
        "optimizers": optimizer_steps(dtype),
        "loss_lines_par": [ln.replace("loss += ", "lossc += ", 1) for ln in loss_lines],
        "partials": [name for step in backward for name, _ in step["par"]["partial"]],
        "all_loops": all(l["strategy"] == "loops" for l in layers_fwd),
        "blas_threads_min": f"{BLAS_THREADS_MIN:g}",
        "blas_flops": sum(2 * net.sizes[l - 1] * net.sizes[l] * (2 if l == 1 else 3) for l in range(1, L + 1)
                          if layer_strategy(net.sizes[l - 1], net.sizes[l]) == "blas"),
        "chunk_rows": CHUNK_ROWS, "parallel_min": PARALLEL_MIN, "parallel_cost": cost,
    }
    return environment().get_template(f"{target}/module.py.j2").render(**ctx)

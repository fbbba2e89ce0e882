"""The TikZ picture of a DAG for its handout (``symbp.render.graph_latex``).

Contract: ``layout(graph) -> (positions, edges)`` and ``tikz(graph, sym, loss) -> str``. The graph
is drawn top (inputs) to bottom (loss): each node is a box at its topological depth (1 + the
deepest node it reads; an input sits just above its first reader, so the loss's target is drawn
beside the output), edges are arrows. An edge that skips levels passes through a slot of its own
on each level it crosses; the levels are ordered by barycentre sweeps (down and up, four rounds,
the order with the fewest crossings kept, ties broken by declared order), and each slot sits
under the mean of what it reads, at least ``DX`` from its neighbours. Coordinates are rounded to
a thousandth of a centimetre, so the same graph gives the same picture, byte for byte.
"""
from itertools import combinations

from .sources import text_mode

DX, DY = 2.6, 1.75      # cm between slots of a level, between levels


def _depths(graph):
    """Topological depth: 1 + the deepest input; an input node sits just above its first
    consumer (so the loss's target is drawn next to the output, not at the top)."""
    depth = {}
    for n in graph.nodes:
        if n.kind != "input":
            ins = list(n.inputs) + ([n.target] if n.kind == "loss" else [])
            depth[n.name] = 1 + max((depth.get(i, 0) for i in ins if graph.node(i).kind != "input"),
                                    default=0)
    for n in graph.nodes:
        if n.kind == "input":
            depth[n.name] = min(depth[c] for c, _ in graph.consumers(n.name)) - 1
    return depth


def _edges(graph):
    return [(i, n.name) for n in graph.nodes for i in list(n.inputs) + ([n.target] if n.kind == "loss" else [])]


def _crossings(levels, preds):
    total = 0
    for k in range(1, len(levels)):
        pos = {v: i for i, v in enumerate(levels[k - 1])}
        segs = [(pos[u], i) for i, v in enumerate(levels[k]) for u in preds[v]]
        total += sum((u1 - u2) * (v1 - v2) < 0 for (u1, v1), (u2, v2) in combinations(segs, 2))
    return total


def layout(graph):
    """({name: (x, y)} in cm, [(source, target, [(x, y) of the bends])]): levels by topological
    depth, long edges through reserved slots, each level ordered by barycentre sweeps."""
    depth = _depths(graph)
    order = {n: i for i, n in enumerate(graph.declared)}
    nlev = max(depth.values()) + 1
    levels = [[] for _ in range(nlev)]
    for name in graph.declared:
        levels[depth[name]].append(name)
    preds = {n: [] for lev in levels for n in lev}
    chains = []
    for e, (u, v) in enumerate(_edges(graph)):
        chain, prev = [], u
        for k in range(depth[u] + 1, depth[v]):
            dummy = f"{u}->{v}#{e}@{k}"      # one per edge: a node read twice has two edges
            levels[k].append(dummy)
            preds[dummy] = [prev]
            chain.append(dummy)
            prev = dummy
        preds[v].append(prev)
        chains.append((u, v, chain))
    succs = {n: [] for n in preds}
    for v, ps in preds.items():
        for u in ps:
            succs[u].append(v)

    def sweep(lev, ref_of, ref_level):
        pos = {v: i for i, v in enumerate(ref_level)}
        def key(item):
            i, v = item
            return _mean([pos[u] for u in ref_of[v] if u in pos], i), i
        return [v for _, v in sorted(enumerate(lev), key=key)]

    best, best_c = [list(l) for l in levels], _crossings(levels, preds)
    cur = [list(l) for l in levels]
    for _ in range(4):
        for k in range(1, nlev):
            cur[k] = sweep(cur[k], preds, cur[k - 1])
        for k in range(nlev - 2, -1, -1):
            cur[k] = sweep(cur[k], succs, cur[k + 1])
        c = _crossings(cur, preds)
        if c < best_c:
            best, best_c = [list(l) for l in cur], c
    pos = _place(best, preds, succs)
    edges = [(u, v, [pos[c] for c in chain]) for u, v, chain in chains]
    return {n: pos[n] for n in order}, edges


def _level_x(lev, desired):
    """x of each slot of a level, in order, at least DX apart, as close to ``desired`` as a
    left-to-right push and one common shift allow."""
    xs = []
    for v in lev:
        xs.append(desired[v] if not xs else max(desired[v], xs[-1] + DX))
    shift = sum(desired[v] - x for v, x in zip(lev, xs)) / len(xs)
    return [x + shift for x in xs]


def _mean(xs, default):
    return sum(xs) / len(xs) if xs else default


def _place(levels, preds, succs):
    """Coordinates: each slot under the mean of what it reads (inputs: of what reads them),
    levels kept in their order; rounded so the output is stable."""
    x = {}
    for lev in levels:                        # down: under the predecessors
        want = {v: _mean([x[u] for u in preds[v] if u in x], (i - (len(lev) - 1) / 2) * DX)
                for i, v in enumerate(lev)}
        x.update(zip(lev, _level_x(lev, want)))
    for lev in levels[-2::-1]:                # up: sources move over what they feed
        want = {v: x[v] if preds[v] else _mean([x[w] for w in succs[v]], x[v]) for v in lev}
        x.update(zip(lev, _level_x(lev, want)))
    mid = (min(x.values()) + max(x.values())) / 2
    return {v: (round(x[v] - mid, 3) + 0.0, round(-k * DY, 3) + 0.0)
            for k, lev in enumerate(levels) for v in lev}


def _node_label(graph, n, sym, loss):
    if n.kind == "loss":
        return f"${loss}$", f"loss: {n.loss.name}" + (", sum" if n.reduction == "sum" else "")
    what = (n.activation.name if n.kind == "activation" else
            "input" + (", grad" if n.grad else "") if n.kind == "input" else n.kind)
    return f"${sym(n.name)}$", f"{text_mode(what)}, {n.width}"


def tikz(graph, sym, loss="L"):
    """A tikzpicture of the graph (see the module docstring); ``sym(name)`` is a node's or a
    parameter's LaTeX symbol, ``loss`` the loss's."""
    pos, edges = layout(graph)
    lines = [r"\begin{tikzpicture}[>=stealth, node/.style={draw, rounded corners=2pt, align=center, "
             r"minimum width=1.5cm, minimum height=0.8cm, inner sep=2pt, fill=white}, "
             r"input/.style={node, fill=black!6}, loss/.style={node, thick}]"]
    for n in graph.nodes:
        x, y = pos[n.name]
        name, what = _node_label(graph, n, sym, loss)
        style = "input" if n.kind == "input" else "loss" if n.kind == "loss" else "node"
        extra = ""
        if n.kind == "dense":
            # the parameters inside the box: labels beside it would run into the next column
            ps = [p for p in (n.weight, n.bias) if p is not None]
            t = "^{T}" if n.transpose else ""
            label = ", ".join(f"{sym(p)}{t if p == n.weight else ''}" for p in ps)
            extra = rf"\\[-1pt]{{\scriptsize\color{{black!60}}${label}$}}"
        lines.append(rf"\node[{style}] ({_tid(n.name)}) at ({x}, {y}) {{{name}\\[-1pt]"
                     rf"{{\scriptsize {what}}}{extra}}};")
    seen = {}
    for u, v, bends in edges:
        pts = [f"({_tid(u)})"] + [f"({x}, {y})" for x, y in bends] + [f"({_tid(v)})"]
        if bends:
            lines.append(r"\draw[->, rounded corners=8pt] " + " -- ".join(pts) + ";")
            continue
        # a node that reads the same value twice (x * x): the second arrow bends aside
        m = seen[(u, v)] = seen.get((u, v), -1) + 1
        how = f" to[bend left={12 * m}] " if m else " -- "
        lines.append(r"\draw[->] " + how.join(pts) + ";")
    lines.append(r"\end{tikzpicture}")
    return "\n".join(lines) + "\n"


def _tid(name):
    return "n-" + name.replace("_", "-")



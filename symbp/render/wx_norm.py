"""Text and LaTeX of the vectorized example f(x, W) = ||W x||^2 (``symbp.derivation.wx_norm``).

Contract: ``text(r, decimals)`` is the plain-text report of a ``WxNorm``, ``document(r,
decimals)`` its LaTeX handout (templates/latex/circuit_wx_norm.tex.j2, with the picture of the
scalar circuit of the same function when the derivation stage built one). Both read the
WxNorm and never derive. The public face (symbp/__init__.py) makes them the WxNorm's methods
(``r.text()``, ``r.document()``).

``add_command(subparsers)`` adds ``symbp wx-norm [--W ROWS] [--x VALUES] [--latex FILE] [--pdf]
[--decimals N]``: rows separated by ``;``, entries by ``,`` (integers, decimals or p/q); the
defaults are the slides' numbers W = [[0.1, 0.5], [-0.3, 0.8]], x = [0.2, 0.4].
"""
from pathlib import Path

import sympy as sp

from ..derivation.circuit import check_decimals
from ..derivation.wx_norm import DEFAULT_W, DEFAULT_X, WxNormError, parse_numbers, wx_norm
from ..errors import SymbpError
from ..output import environment, write
from .circuit import fmt, tikz
from .pdf import compile_pdf


def text(r, decimals=3):
    """The plain-text report of a WxNorm."""
    fmt = _num

    def vec(m):
        return "[" + ", ".join(fmt(v, decimals) for v in m) + "]"

    def mat(m):
        return "[" + ", ".join(vec(m.row(i)) for i in range(m.rows)) + "]"
    return "\n".join([
        "f(x, W) = ||W x||^2, q = W x  (the vectorized example of the slides "
        "\"Multi-Layer Networks & Back-Propagation\")",
        "SymPy, with matrix symbols (W: m x n, x: n x 1):",
        f"  df/dW = {r.dW} = {r.dW_q}   (with q = W x)",
        f"  df/dx = {r.dx} = {r.dx_q}",
        f"At W = {mat(r.W)}, x = {vec(r.x)}:",
        f"  q = W x       = {vec(r.q)}",
        f"  f = q^T q     = {fmt(r.value, decimals)}",
        f"  df/dW = 2 q x^T = {mat(r.gW)}   (shape {r.gW.rows} x {r.gW.cols}, as W)",
        f"  df/dx = 2 W^T q = {vec(r.gx)}   (shape {r.gx.rows}, as x)",
        f"exact: q = {list(r.q)}, f = {r.value}, df/dW = {r.gW.tolist()}, df/dx = {list(r.gx)}",
        f"central finite differences (float64): max |difference| = {r.fd_error:.2e}",
    ]) + "\n"

def document(r, decimals=3):
    """The LaTeX handout of a WxNorm (templates/latex/circuit_wx_norm.tex.j2), with the picture
    of its scalar circuit when the derivation stage built one (W with at most MAX_CIRCUIT
    entries)."""
    def bmatrix(M, d):
        rows = [" & ".join(_num(v, d) for v in M.row(i)) for i in range(M.rows)]
        return r"\begin{bmatrix} " + r" \\ ".join(rows) + r" \end{bmatrix}"
    pic = tikz(r.circuit, decimals) if r.circuit is not None else ""
    return environment().get_template("latex/circuit_wx_norm.tex.j2").render(
        f=sp.latex(r.f), dW=sp.latex(r.dW), dx=sp.latex(r.dx), dW_q=sp.latex(r.dW_q),
        dx_q=sp.latex(r.dx_q), W=bmatrix(r.W, decimals), x=bmatrix(r.x, decimals),
        q=bmatrix(r.q, decimals), value=_num(r.value, decimals),
        gW=bmatrix(r.gW, decimals), gx=bmatrix(r.gx, decimals),
        fd_error=sp.latex(sp.Float(r.fd_error, 2)), circuit_tikz=pic)


def _num(v, decimals):
    """A value as the shortest decimal that is exact within ``decimals`` places (0.1, 0.22,
    0.116), else rounded to ``decimals`` places."""
    for d in range(decimals + 1):
        s = fmt(v, d)
        if sp.Rational(s) == v:
            return s
    return fmt(v, decimals)


# --- command line ----------------------------------------------------------------------------

def cmd_wx_norm(args):
    try:
        decimals = check_decimals(args.decimals)
    except SymbpError:
        raise WxNormError(f"--decimals: expected an integer from 0 to 12, got {args.decimals}") from None
    if args.pdf and not args.latex:
        raise WxNormError("--pdf needs --latex FILE (the PDF is written beside it)")
    W = parse_numbers(args.W, "--W")
    xs = parse_numbers(args.x, "--x")
    if len(xs) != 1:
        raise WxNormError("--x: expected one row of numbers, e.g. 0.2,0.4")
    r = wx_norm(W, xs[0])
    out = []
    if args.latex:
        tex = document(r, decimals)
        try:
            data = compile_pdf(tex, Path(args.latex).stem)[0] if args.pdf else None
        except SymbpError as e:
            raise WxNormError(str(e)) from None
        write(args.latex, tex)
        out.append(str(args.latex))
        if data is not None:
            pdf = Path(args.latex).with_suffix(".pdf")
            write(pdf, data)
            out.append(str(pdf))
    print(text(r, decimals), end="")
    for p in out:
        print(f"wrote {p}")
    return 0


def add_command(subparsers):
    p = subparsers.add_parser("wx-norm", help="the vectorized example f(x, W) = ||W x||^2: "
                              "gradients 2 q x^T and 2 W^T q derived by SymPy with matrix symbols")
    p.add_argument("--W", default=DEFAULT_W, metavar="ROWS",
                   help=f"the matrix W, rows separated by ';' (default {DEFAULT_W!r}, the slides' numbers)")
    p.add_argument("--x", default=DEFAULT_X, metavar="VALUES", help=f"the vector x (default {DEFAULT_X!r})")
    p.add_argument("--latex", metavar="FILE", help="write a LaTeX handout (derivation, numbers, circuit)")
    p.add_argument("--pdf", action="store_true", help="also compile the --latex document to PDF")
    p.add_argument("--decimals", type=int, default=3, help="decimals shown (0..12; default 3)")
    p.set_defaults(fn=cmd_wx_norm)
    return p

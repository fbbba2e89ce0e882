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
import sympy as sp

from ..derivation.circuit import check_decimals
from ..derivation.wx_norm import DEFAULT_W, DEFAULT_X, WxNormError, parse_numbers, wx_norm
from ..errors import SymbpError
from ..output import environment
from .circuit import shortest, tikz
from .pdf import with_pdf, write_all
from .worked import bmatrix


def text(r, decimals=3):
    """The plain-text report of a WxNorm."""
    def vec(m):
        return "[" + ", ".join(shortest(v, decimals) for v in m) + "]"

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
        f"  f = q^T q     = {shortest(r.value, decimals)}",
        f"  df/dW = 2 q x^T = {mat(r.gW)}   (shape {r.gW.rows} x {r.gW.cols}, as W)",
        f"  df/dx = 2 W^T q = {vec(r.gx)}   (shape {r.gx.rows}, as x)",
        f"exact: q = {list(r.q)}, f = {r.value}, df/dW = {r.gW.tolist()}, df/dx = {list(r.gx)}",
        f"central finite differences (float64): max |difference| = {r.fd_error:.2e}",
    ]) + "\n"

def document(r, decimals=3):
    """The LaTeX handout of a WxNorm (templates/latex/circuit_wx_norm.tex.j2), with the picture
    of its scalar circuit when the derivation stage built one (W with at most MAX_CIRCUIT
    entries)."""
    def mat(M):
        return bmatrix([[shortest(v, decimals) for v in row] for row in M.tolist()])
    pic = tikz(r.circuit, decimals) if r.circuit is not None else ""
    return environment().get_template("latex/circuit_wx_norm.tex.j2").render(
        f=sp.latex(r.f), dW=sp.latex(r.dW), dx=sp.latex(r.dx), dW_q=sp.latex(r.dW_q),
        dx_q=sp.latex(r.dx_q), W=mat(r.W), x=mat(r.x), q=mat(r.q), value=shortest(r.value, decimals),
        gW=mat(r.gW), gx=mat(r.gx),
        fd_error=sp.latex(sp.Float(r.fd_error, 2)), circuit_tikz=pic)


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
    files = [(args.latex, document(r, decimals))] if args.latex else []
    try:
        files = with_pdf(files, args.pdf)
    except SymbpError as e:
        raise WxNormError(str(e)) from None
    out = write_all(files)
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

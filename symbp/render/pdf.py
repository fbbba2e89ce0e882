"""pdflatex in a temporary directory, for the renderers that write a PDF beside their .tex.

Contract: ``compile_pdf(tex, name) -> (pdf bytes, log text)``; nothing is written outside the
temporary directory. A missing pdflatex, a failing run or one over ``TIMEOUT`` seconds raises a
SymbpError naming the first error line of the log.
"""
import shutil
import subprocess
import tempfile
from pathlib import Path

from ..errors import SymbpError

TIMEOUT = 300


def _first_error(log):
    for line in log.splitlines():
        if line.startswith("!"):
            return line.strip()
    return "no error line in the log"


def compile_pdf(tex, name="graph"):
    """(PDF bytes, log text) of a LaTeX document compiled in a temporary directory; a missing or
    failing pdflatex raises a SymbpError naming the first error line."""
    exe = shutil.which("pdflatex")
    if exe is None:
        raise SymbpError("--pdf: pdflatex not found on PATH (install texlive-latex-base and "
                         "texlive-pictures); nothing written")
    with tempfile.TemporaryDirectory(prefix="symbp-pdf-") as tmp:
        (Path(tmp) / f"{name}.tex").write_text(tex, encoding="utf-8")
        try:
            run = subprocess.run([exe, "-halt-on-error", "-interaction=nonstopmode", "-no-shell-escape",
                                  f"{name}.tex"], cwd=tmp, capture_output=True, text=True, timeout=TIMEOUT)
            ok = run.returncode == 0 and (Path(tmp) / f"{name}.pdf").exists()
        except subprocess.TimeoutExpired:
            ok = False
        logp = Path(tmp) / f"{name}.log"
        log = logp.read_text(encoding="utf-8", errors="replace") if logp.exists() else ""
        if not ok:
            raise SymbpError(f"--pdf: pdflatex failed on {name}.tex ({_first_error(log)}); nothing written")
        return (Path(tmp) / f"{name}.pdf").read_bytes(), log

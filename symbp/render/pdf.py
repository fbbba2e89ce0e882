"""The one pdflatex helper: every renderer that writes a PDF compiles it here.

Contract: ``compile_pdf(tex, name="document", runs=1) -> (pdf bytes, log text)`` runs
``pdflatex -halt-on-error -interaction=nonstopmode -no-shell-escape`` ``runs`` times (two for a
document whose references resolve on the second run) in a temporary directory, with
SOURCE_DATE_EPOCH pinned so that the same source gives the same PDF bytes; nothing is written
outside that directory. A missing pdflatex, a failing run or one over ``TIMEOUT`` seconds raises
``PdfError`` (a SymbpError, one line naming the file and the first error line of the log; the
whole log is its ``log``). ``pdflatex(tex, name, runs)`` is the PDF's bytes alone. Callers
compile before they write any file, then write with ``symbp.output.write`` (atomic).
"""
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from ..errors import SymbpError

TIMEOUT = 300


class PdfError(SymbpError):
    """pdflatex is missing or failed; ``log`` holds pdflatex's log (empty when it never ran)."""

    def __init__(self, message, log=""):
        super().__init__(message)
        self.log = log


def _first_error(log):
    for line in log.splitlines():
        if line.startswith("!"):
            return line.strip()
    return "no error line in the log"


def compile_pdf(tex, name="document", runs=1):
    """(PDF bytes, log text) of a LaTeX document compiled in a temporary directory (see the
    module's contract)."""
    exe = shutil.which("pdflatex")
    if exe is None:
        raise PdfError("pdf: pdflatex not found on PATH (install texlive-latex-base, "
                       "texlive-latex-recommended and texlive-pictures); nothing written")
    env = dict(os.environ, SOURCE_DATE_EPOCH="0", FORCE_SOURCE_DATE="1")
    with tempfile.TemporaryDirectory(prefix="symbp-pdf-") as tmp:
        (Path(tmp) / f"{name}.tex").write_text(tex, encoding="utf-8")
        ok = True
        try:
            for _ in range(runs):
                run = subprocess.run([exe, "-halt-on-error", "-interaction=nonstopmode", "-no-shell-escape",
                                      f"{name}.tex"], cwd=tmp, capture_output=True, text=True, env=env,
                                     timeout=TIMEOUT)
                ok = run.returncode == 0 and (Path(tmp) / f"{name}.pdf").exists()
                if not ok:
                    break
        except subprocess.TimeoutExpired:
            ok = False
        logp = Path(tmp) / f"{name}.log"
        log = logp.read_text(encoding="utf-8", errors="replace") if logp.exists() else ""
        if not ok:
            raise PdfError(f"pdf: pdflatex failed on {name}.tex ({_first_error(log)}); nothing written", log)
        return (Path(tmp) / f"{name}.pdf").read_bytes(), log


def pdflatex(tex, name="document", runs=1):
    """The PDF's bytes of ``compile_pdf``."""
    return compile_pdf(tex, name, runs)[0]


def with_pdf(files, pdf):
    """``files`` [(path, LaTeX text), ...] and, with ``pdf``, the first one's PDF (its path with
    .pdf): compiled before anything is written."""
    files = list(files)
    if pdf:
        path = Path(files[0][0])
        files.append((path.with_suffix(".pdf"), pdflatex(files[0][1], path.stem)))
    return files


def write_all(files):
    """Write every (path, text or bytes), each atomically; returns the paths, in order."""
    from ..output import write
    for path, data in files:
        write(path, data)
    return [path for path, _ in files]

"""Output shared by every stage: the one Jinja environment and the one atomic file writer.

Contract:

- ``environment()`` is the Jinja environment over the templates (templates/ at the top of a
  checkout, or symbp/templates/ inside an installed wheel); the render and codegen stages both
  render through it, so every template gets the same settings (StrictUndefined, no autoescape,
  trimmed blocks).
- ``write(path, source)`` (text or bytes) leaves either the old file or the complete new one
  (temporary file in the same directory, then ``os.replace``), never a partial file, and does
  not touch a file whose bytes are already equal (so Numba's on-disk cache, keyed by the file's
  stamp, stays valid). A sealed source replacing a file that is not intact (edited by hand, or
  without a seal) keeps that file as ``<file>.edited`` (``.edited.1``, ... when taken) and says so
  in one line on stderr, so that a hand edit is never lost silently.

Code templates start with a seal line, ``# symbp seal: spec sha256 <digest>, body sha256 -``;
a rendered text that starts with one comes back sealed (``seal``: the ``-`` replaced by the
sha256 of every byte after that line), so every emitter's output is sealed without doing
anything of its own. ``symbp.codegen.load`` checks the seal before importing a file.
"""
import hashlib
import os
import re
import sys
import tempfile
from functools import lru_cache
from pathlib import Path

import jinja2

SEAL = re.compile(rb"# symbp seal: spec sha256 (?P<spec>[0-9a-f]{64}), body sha256 (?P<body>[0-9a-f]{64}|-)\n")


def seal(source):
    """``source`` (text starting with a seal line) with the body hash filled in."""
    data = source.encode("utf-8")
    m = SEAL.match(data)
    if m is None:
        raise ValueError("seal: the source does not start with a '# symbp seal:' line")
    body = data[m.end():]
    line = f"# symbp seal: spec sha256 {m['spec'].decode()}, body sha256 {hashlib.sha256(body).hexdigest()}\n"
    return line + body.decode("utf-8")


class _SealingTemplate(jinja2.Template):
    def render(self, *args, **kwargs):
        out = super().render(*args, **kwargs)
        return seal(out) if out.startswith("# symbp seal: ") else out


def template_dir():
    here = Path(__file__).resolve().parent                  # symbp/
    for cand in (here / "templates", here.parent / "templates"):
        if (cand / "cpu").is_dir():
            return cand
    raise FileNotFoundError("symbp's templates/ directory is missing from the installation")


@lru_cache(maxsize=None)
def environment():
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(template_dir())),
        undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
        trim_blocks=True, lstrip_blocks=True, autoescape=False)
    env.template_class = _SealingTemplate
    return env


# ----------------------------------------------------------------------------------------------
# write
# ----------------------------------------------------------------------------------------------

def seal_problem(data, digest=None):
    """Why the bytes ``data`` of a generated file are not intact, or None when they are: the
    seal line is missing, the body does not hash to it, or its spec digest is not ``digest``."""
    m = SEAL.match(data)
    if m is None:
        return "has no symbp seal line (not written by this symbp, or its first line was edited)"
    if m["body"] == b"-" or m["body"].decode() != hashlib.sha256(data[m.end():]).hexdigest():
        return "was edited after symbp generated it (its body does not match the sha256 in its seal line)"
    if digest is not None and m["spec"].decode() != digest:
        return (f"was generated from another spec (sha256 {m['spec'].decode()[:12]}..., "
                f"expected {digest[:12]}...)")
    return None


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _backup_name(path):
    cand = path.with_name(path.name + ".edited")
    n = 0
    while cand.exists():
        n += 1
        cand = path.with_name(f"{path.name}.edited.{n}")
    return cand


def _write_bytes(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_umask())   # mkstemp makes 0600; a written file is ordinary
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write(path, source):
    """Write text (UTF-8) or bytes to ``path`` atomically; a no-op when the bytes are equal.
    A sealed source replacing a file that is not intact keeps that file (see the contract)."""
    path = Path(path)
    data = source if isinstance(source, bytes) else source.encode("utf-8")
    if path.exists():
        old = path.read_bytes()
        if old == data:
            return False
        if SEAL.match(data) and seal_problem(old) is not None:
            backup = _backup_name(path)
            _write_bytes(backup, old)
            print(f"symbp: warning: {path}: {seal_problem(old)}; replaced by the generated code, "
                  f"the old file is kept as {backup}".replace("\n", " "), file=sys.stderr)
    _write_bytes(path, data)
    return True

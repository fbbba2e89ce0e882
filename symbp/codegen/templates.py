"""Locate and load the Jinja templates (templates/ at the top of a checkout, or
symbp/templates/ inside an installed wheel).

Code templates start with a seal line, ``# symbp seal: spec sha256 <digest>, body sha256 -``;
a rendered text that starts with one comes back sealed (``seal``: the ``-`` replaced by the
sha256 of every byte after that line), so every emitter's output is sealed without doing
anything of its own. ``symbp.codegen.load`` checks the seal before importing a file.
"""
import hashlib
import re
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
    here = Path(__file__).resolve().parent.parent           # symbp/
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

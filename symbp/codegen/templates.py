"""Locate and load the Jinja templates (templates/ at the top of a checkout, or
symbp/templates/ inside an installed wheel)."""
from functools import lru_cache
from pathlib import Path

import jinja2


def template_dir():
    here = Path(__file__).resolve().parent.parent           # symbp/
    for cand in (here / "templates", here.parent / "templates"):
        if (cand / "cpu").is_dir():
            return cand
    raise FileNotFoundError("symbp's templates/ directory is missing from the installation")


@lru_cache(maxsize=None)
def environment():
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(template_dir())),
        undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
        trim_blocks=True, lstrip_blocks=True, autoescape=False)

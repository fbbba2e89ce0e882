"""Reading spec files, whichever kind: the TOML document of a text (syntax errors as SpecError),
the kind of a parsed document (MLP or graph), the error for an unknown key (with the close
match), and a file's text (BOM, encoding and size checked)."""
import difflib
import os
import tomllib

from ..errors import SpecError, shown


def unknown_key(where, prefix, key, allowed, what="unknown key"):
    """The SpecError for a key not in ``allowed``: it names the key and, when one is close
    (difflib), the valid key it probably misspells."""
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6) if len(key) <= 100 else []
    hint = f"did you mean {close[0]!r}? " if close else ""
    return SpecError(where, f"{prefix}{key}", f"{what} ({hint}expected one of: {', '.join(allowed)})")


def read_toml(text, where):
    """The TOML document of ``text``; a syntax error or nesting too deep for the reader (a
    RecursionError inside tomllib) is a SpecError."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SpecError(where, "", f"not valid TOML ({e})") from None
    except RecursionError:
        raise SpecError(where, "", "not valid TOML for symbp (arrays or tables nested too deeply)") from None


class SpecKindError(SpecError):
    """A spec of the other kind: an MLP reader given a graph spec, or the reverse.
    ``spec_kind`` is the kind the file is ("graph" or "mlp"); the command line names the
    command to use instead."""

    def __init__(self, where, spec_kind, message):
        self.spec_kind = spec_kind
        super().__init__(where, "", message)


def is_graph_doc(doc):
    """True for a parsed graph spec: it has [graph] or [[node]] and no [network] or [[layer]]."""
    return ("graph" in doc or "node" in doc) and "network" not in doc and "layer" not in doc


def is_mlp_doc(doc):
    """True for a parsed MLP spec: it has [network] or [[layer]] and no [graph] or [[node]]."""
    return ("network" in doc or "layer" in doc) and "graph" not in doc and "node" not in doc


def read_text(path):
    """(text, where) of a spec file: its UTF-8 text (a leading byte-order mark dropped, as
    editors on Windows write one) and its name for error messages."""
    where = os.fspath(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise SpecError(where, "", f"cannot read the spec file ({e.strerror})") from None
    try:
        return raw.decode("utf-8-sig"), where
    except UnicodeDecodeError:
        raise SpecError(where, "", "not UTF-8 text") from None

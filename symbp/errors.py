"""Errors a user can cause, each naming what is wrong and where.

Contract: every mistake in a spec, an argument or an input array raises a `SymbpError`
subclass whose message is one line: ``<where>: <key>: <what was expected>``. The CLI prints
that line and exits with status 2; it never shows a traceback for these.

What a message echoes of the user's input is cut: ``shown(value)`` is the repr of a value cut to
``SHOWN_CHARS`` characters with an ellipsis, used wherever a message quotes a name, a key or an
expression, and a SpecError's key and whole line are cut to ``KEY_CHARS`` / ``LINE_CHARS`` as a
last guard, so that a 1 MB name gives a short line, not a 1 MB one (the command line cuts every
error line it prints the same way).
"""

SHOWN_CHARS = 60
KEY_CHARS = 100
LINE_CHARS = 1000


def cut(text, limit=LINE_CHARS):
    """``text`` cut to ``limit`` characters, the last three an ellipsis."""
    return text if len(text) <= limit else text[:max(limit - 3, 1)] + "..."


def shown(value, limit=SHOWN_CHARS, quote=True):
    """``repr(value)`` (``str`` with quote=False) cut to ``limit`` characters with "..."."""
    return cut(repr(value) if quote else str(value), limit)


class SymbpError(Exception):
    """Base class of every error symbp raises for a user's mistake."""


class SpecError(SymbpError, ValueError):
    """A network spec (Python builder arguments or a TOML file) is invalid.

    ``where`` is the file name or the builder argument, ``key`` the offending key.
    """

    def __init__(self, where, key, message):
        self.where, self.key, self.detail = where, key, message
        prefix = f"{where}: " if where else ""
        keypart = f"{cut(str(key), KEY_CHARS)}: " if key else ""
        # one line, whatever a spec's quoted keys contain
        text = f"{prefix}{keypart}{message}"
        super().__init__(cut(text.replace("\r", "\\r").replace("\n", "\\n"), LINE_CHARS))


class ExpressionError(SpecError):
    """An expression string uses something outside the whitelist of the safe parser."""


class InputError(SymbpError, ValueError):
    """Arrays handed to a kernel have the wrong shape, dtype or keys."""


class DerivationError(SymbpError):
    """SymPy could not bring a derived rule into the form the code generator needs."""

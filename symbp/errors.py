"""Errors a user can cause, each naming what is wrong and where.

Contract: every mistake in a spec, an argument or an input array raises a `SymbpError`
subclass whose message is one line: ``<where>: <key>: <what was expected>``. The CLI prints
that line and exits with status 2; it never shows a traceback for these.
"""


class SymbpError(Exception):
    """Base class of every error symbp raises for a user's mistake."""


class SpecError(SymbpError, ValueError):
    """A network spec (Python builder arguments or a TOML file) is invalid.

    ``where`` is the file name or the builder argument, ``key`` the offending key.
    """

    def __init__(self, where, key, message):
        self.where, self.key, self.detail = where, key, message
        prefix = f"{where}: " if where else ""
        keypart = f"{key}: " if key else ""
        # one line, whatever a spec's quoted keys contain
        text = f"{prefix}{keypart}{message}"
        super().__init__(text.replace("\r", "\\r").replace("\n", "\\n"))


class ExpressionError(SpecError):
    """An expression string uses something outside the whitelist of the safe parser."""


class InputError(SymbpError, ValueError):
    """Arrays handed to a kernel have the wrong shape, dtype or keys."""


class DerivationError(SymbpError):
    """SymPy could not bring a derived rule into the form the code generator needs."""

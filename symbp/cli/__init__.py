"""The command line: ``symbp`` (main), its graph commands and ``symbp bench``."""
from .commands import main

__all__ = ["main"]

"""Stage 2: the derivation. SymPy derives the chain-rule expressions (``chain`` for MLPs,
``graph`` for DAGs, ``circuit`` scalar graphs, ``wx_norm`` the matrix example), simplified by the
ordered passes of ``simplify``; ``equations`` holds the Derivation types every renderer and
emitter reads."""
from .equations import Derivation, Equation

__all__ = ["Derivation", "Equation"]

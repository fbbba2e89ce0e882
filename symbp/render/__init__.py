"""Renderers: read a Derivation, never re-derive."""

"""The package's version, in a module of its own so that every stage can read it without
importing the public face (symbp/__init__.py imports every stage)."""
__version__ = "0.1.0"

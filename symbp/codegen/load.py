"""Write generated source atomically and import it, compiled by Numba or as plain Python.

Contract:

- ``write(path, source)`` is the package's one atomic writer (``symbp.output.write``, used by
  every stage; see its contract): the old file or the complete new one, never a partial file.
- Generated modules are sealed: their first line is
  ``# symbp seal: spec sha256 <spec digest>, body sha256 <sha256 of every byte after this line>``
  (the code templates render it with the body hash ``-``; ``seal`` fills it in, which the
  template environment does on every render, see ``symbp.output``). Writing a sealed source
  over an existing file that is not intact keeps that file as ``<file>.edited``: ``generate``
  always writes the derivation's code, and a hand edit is never lost silently.
- ``import_module(path, name, jit, digest)`` imports the file under a stable module name, put
  into ``sys.modules`` before execution (Numba's cache needs to find the module again in a
  second process), and never executes a file whose seal does not hold: a body that does not
  hash to its seal, no seal, or (``digest`` given) a spec digest other than the expected one is
  a one-line ``GeneratedFileError`` naming the file. With ``jit=False`` the decorators are
  disabled while the module executes, so the same source runs as plain Python, its ``math``
  replaced by ``NUMPY_MATH`` and its min/max/abs by NumPy's, so that it computes what the
  compiled code computes (NaN and inf, never ValueError, OverflowError or ZeroDivisionError).
- A Numba cache entry next to the file that cannot be read (a truncated ``.nbc``, a garbage
  ``.nbi``: anything that raises while Numba loads it) is discarded (the function's index is
  reset) and the function compiled anew, with one line on stderr per file and process, instead
  of failing every later call until the cache is deleted by hand.
"""
import functools
import importlib.util
import math
import os
import sys
import threading
from pathlib import Path

import numba
import numpy as np

from .. import naming
from ..errors import SymbpError
from ..output import seal, seal_problem, write  # noqa: F401  (part of this module's API)

_LOCK = threading.Lock()
_WARNED = set()     # files whose Numba cache was reported unreadable in this process


def default_out_dir():
    return Path(os.environ.get("SYMBP_GENERATED", "generated"))


def kernel_path(network, target, dtype, out_dir=None):
    """Where the kernel of ``network`` for ``target`` and ``dtype`` is written."""
    base = Path(out_dir) if out_dir is not None else default_out_dir()
    return base / network.name / f"{naming.module_name(network.name, target, dtype)}.py"


class GeneratedFileError(SymbpError):
    """A generated file is not what symbp wrote: edited, unsealed, or from another spec."""


def _say(message):
    """One line on stderr (a note to the user, not an error: the call goes on)."""
    print(f"symbp: warning: {message}".replace("\n", " "), file=sys.stderr)


# ----------------------------------------------------------------------------------------------
# import
# ----------------------------------------------------------------------------------------------

def import_module(path, name, jit=True, digest=None):
    """Import the generated file at ``path`` as module ``name`` (``name`` + "_py" without jit),
    after checking its seal (and its spec digest when ``digest`` is given)."""
    path = Path(path).resolve()
    if not jit:
        name += "_py"
    problem = seal_problem(path.read_bytes(), digest)
    if problem is not None:
        raise GeneratedFileError(f"{path}: {problem}; not imported: regenerate it with symbp generate")
    mod = sys.modules.get(name)
    if mod is not None and getattr(mod, "__file__", None) == str(path):
        return mod
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    with _LOCK:
        saved = numba.config.DISABLE_JIT
        numba.config.DISABLE_JIT = not jit
        try:
            spec.loader.exec_module(mod)
        except BaseException:
            sys.modules.pop(name, None)
            raise
        finally:
            numba.config.DISABLE_JIT = saved
    if jit:
        guard_caches(mod, path)
    else:
        mod.math = NUMPY_MATH
        # Python's min/max/abs of a float and a NumPy scalar can return a Python float, whose
        # division by zero raises; NumPy's give inf as the compiled code does
        mod.min, mod.max, mod.abs = _np_min, _np_max, np.abs
    return mod


def _np_min(*args):
    return functools.reduce(np.minimum, args)


def _np_max(*args):
    return functools.reduce(np.maximum, args)


class _NumpyMath:
    """``math`` for generated code run as plain Python: the same functions with NumPy's
    floating-point semantics, as the compiled code has (``error_model="numpy"``): log(-1) is
    NaN and exp(1000) is inf, where Python's math raises ValueError or OverflowError."""

    def __getattr__(self, name):
        fn = getattr(np, name, None)
        if not callable(fn) or name in ("isfinite", "isnan", "isinf"):
            return getattr(math, name)

        def call(*args):
            with np.errstate(all="ignore"):
                return fn(*args)
        call.__name__ = name
        setattr(self, name, call)       # looked up once
        return call


NUMPY_MATH = _NumpyMath()


# ----------------------------------------------------------------------------------------------
# Numba's on-disk cache
# ----------------------------------------------------------------------------------------------

def guard_caches(mod, path):
    """Make every cached Numba dispatcher of ``mod`` survive an unreadable cache entry: its
    cache's ``load_overload`` (which Numba calls before compiling a signature) is wrapped so that
    an exception while loading resets the function's index (``flush``: an empty index written
    over the broken one; its data files are then overwritten as entries are saved anew) and
    reports a miss, so Numba compiles and saves a fresh entry."""
    for fname, obj in vars(mod).items():
        cache = getattr(obj, "_cache", None) if hasattr(obj, "py_func") else None
        load = getattr(cache, "load_overload", None)
        if load is None or not hasattr(cache, "flush") or getattr(load, "_symbp_guarded", False):
            continue
        cache.load_overload = _guarded_load(cache, load, path, fname)


def _guarded_load(cache, load, path, fname):
    def load_overload(sig, target_context):
        try:
            return load(sig, target_context)
        except Exception as e:      # whatever a damaged file makes the unpickler or loader raise
            _discard(cache, path, fname, e)
            return None
    load_overload._symbp_guarded = True
    return load_overload


def _discard(cache, path, fname, error):
    try:
        cache.flush()
    except Exception as e:
        raise SymbpError(f"{path}: Numba's cache of {fname} is unreadable ({type(error).__name__}) and could "
                         f"not be reset ({type(e).__name__}: {e}); delete {path.parent / '__pycache__'}") from None
    if path not in _WARNED:
        _WARNED.add(path)
        _say(f"{path}: Numba's cache entry for {fname} was unreadable ({type(error).__name__}: {error}); "
             f"discarded it, compiling anew")

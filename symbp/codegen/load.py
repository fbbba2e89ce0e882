"""Write generated source atomically and import it, compiled by Numba or as plain Python.

Contract:

- ``write(path, source)`` (text or bytes) leaves either the old file or the complete new one
  (temporary file in the same directory, then ``os.replace``), and does not touch a file whose
  bytes are already equal (so Numba's on-disk cache, keyed by the file's stamp, stays valid).
- Generated modules are sealed: their first line is
  ``# symbp seal: spec sha256 <spec digest>, body sha256 <sha256 of every byte after this line>``
  (the code templates render it with the body hash ``-``; ``seal`` fills it in, which the
  template environment does on every render, see ``symbp.codegen.templates``). Writing a sealed
  source over an existing file that is not intact (edited by hand, or without a seal) keeps
  that file as ``<file>.edited`` (``.edited.1``, ... when taken), replaces it, and says so in one
  line on stderr: ``generate`` always writes the derivation's code, and a hand edit is never
  lost silently.
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
import hashlib
import importlib.util
import math
import os
import sys
import tempfile
import threading
from pathlib import Path

import numba
import numpy as np

from ..errors import SymbpError
from .templates import SEAL as _SEAL, seal  # noqa: F401  (seal: part of this module's API)

_LOCK = threading.Lock()
_WARNED = set()     # files whose Numba cache was reported unreadable in this process


class GeneratedFileError(SymbpError):
    """A generated file is not what symbp wrote: edited, unsealed, or from another spec."""


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _say(message):
    """One line on stderr (a note to the user, not an error: the call goes on)."""
    print(f"symbp: warning: {message}".replace("\n", " "), file=sys.stderr)


# ----------------------------------------------------------------------------------------------
# seal
# ----------------------------------------------------------------------------------------------

def _sha256(data):
    return hashlib.sha256(data).hexdigest()


def seal_problem(data, digest=None):
    """Why the bytes ``data`` of a generated file are not intact, or None when they are: the
    seal line is missing, the body does not hash to it, or its spec digest is not ``digest``."""
    m = _SEAL.match(data)
    if m is None:
        return "has no symbp seal line (not written by this symbp, or its first line was edited)"
    if m["body"] == b"-" or m["body"].decode() != _sha256(data[m.end():]):
        return "was edited after symbp generated it (its body does not match the sha256 in its seal line)"
    if digest is not None and m["spec"].decode() != digest:
        return (f"was generated from another spec (sha256 {m['spec'].decode()[:12]}..., "
                f"expected {digest[:12]}...)")
    return None


def _backup_name(path):
    cand = path.with_name(path.name + ".edited")
    n = 0
    while cand.exists():
        n += 1
        cand = path.with_name(f"{path.name}.edited.{n}")
    return cand


# ----------------------------------------------------------------------------------------------
# write
# ----------------------------------------------------------------------------------------------

def _write_bytes(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_umask())   # mkstemp makes 0600; a written file is ordinary
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write(path, source):
    """Write text (UTF-8) or bytes to ``path`` atomically; a no-op when the bytes are equal.
    A sealed source replacing a file that is not intact keeps that file (see the contract)."""
    path = Path(path)
    data = source if isinstance(source, bytes) else source.encode("utf-8")
    if path.exists():
        old = path.read_bytes()
        if old == data:
            return False
        if _SEAL.match(data) and seal_problem(old) is not None:
            backup = _backup_name(path)
            _write_bytes(backup, old)
            _say(f"{path}: {seal_problem(old)}; replaced by the generated code, the old file is kept as {backup}")
    _write_bytes(path, data)
    return True


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
    out = args[0]
    for a in args[1:]:
        out = np.minimum(out, a)
    return out


def _np_max(*args):
    out = args[0]
    for a in args[1:]:
        out = np.maximum(out, a)
    return out


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

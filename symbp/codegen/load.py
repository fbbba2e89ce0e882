"""Write generated source atomically and import it, compiled by Numba or as plain Python.

Contract: ``write(path, source)`` (text or bytes) leaves either the old file or the complete new one (temporary
file in the same directory, then ``os.replace``), and does not touch a file whose bytes are
already equal (so Numba's on-disk cache, keyed by the file's stamp, stays valid).
``import_module(path, name, jit)`` imports the file under a stable module name, put into
``sys.modules`` before execution (Numba's cache needs to find the module again in a second
process). With ``jit=False`` the decorators are disabled while the module executes, so the same
source runs as plain Python: quick to start, for broad tests.
"""
import importlib.util
import os
import sys
import tempfile
import threading
from pathlib import Path

import numba

_LOCK = threading.Lock()


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write(path, source):
    """Write text (UTF-8) or bytes to ``path`` atomically; a no-op when the bytes are equal."""
    path = Path(path)
    data = source if isinstance(source, bytes) else source.encode("utf-8")
    if path.exists() and path.read_bytes() == data:
        return False
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
    return True


def import_module(path, name, jit=True):
    """Import the generated file at ``path`` as module ``name`` (``name`` + "_py" without jit)."""
    path = Path(path).resolve()
    if not jit:
        name += "_py"
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
    return mod

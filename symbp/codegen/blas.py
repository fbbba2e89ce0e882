"""The BLAS behind ``np.dot`` in compiled kernels, and running a call on one BLAS thread.

Contract: ``one_thread(fn)`` returns a callable that runs ``fn(*args)`` with the calling thread's
BLAS limited to one thread (OpenBLAS's ``openblas_set_num_threads_local``, which changes the
calling thread only, restoring the previous count afterwards), or ``fn`` itself when that BLAS or
symbol is not found (then nothing changes). Numba's ``np.dot`` calls SciPy's BLAS
(scipy.linalg.cython_blas), so the library looked for is the OpenBLAS bundled with SciPy.

Why: on a 2-core machine shared with other work, OpenBLAS's second thread made the small and
middle-sized products of a step 5-30x slower (its workers wait for a core; see
symbp.codegen.emit.BLAS_THREADS_MIN for the measurement), so the Kernel runs steps below that
size on one BLAS thread.
"""
import ctypes
import glob
import os

_LIB = []      # [library or None], filled on first use


def _library():
    """SciPy's bundled OpenBLAS when it has openblas_set_num_threads_local, else None."""
    if not _LIB:
        found = None
        try:
            import scipy
            root = os.path.dirname(os.path.dirname(os.path.realpath(scipy.__file__)))
            for path in sorted(glob.glob(os.path.join(root, "scipy.libs", "libscipy_openblas*.so*"))):
                lib = ctypes.CDLL(path)
                if hasattr(lib, "openblas_set_num_threads_local") and hasattr(lib, "scipy_openblas_get_num_threads"):
                    lib.openblas_set_num_threads_local.argtypes = [ctypes.c_int]
                    lib.openblas_set_num_threads_local.restype = ctypes.c_int
                    lib.scipy_openblas_get_num_threads.restype = ctypes.c_int
                    found = lib
                    break
        except (ImportError, OSError):
            found = None
        _LIB.append(found)
    return _LIB[0]


def _setter():
    """openblas_set_num_threads_local (n -> previous n, calling thread only), or None."""
    lib = _library()
    return lib.openblas_set_num_threads_local if lib is not None else None


def _getter():
    """The calling thread's BLAS thread count (a callable), or None."""
    lib = _library()
    return lib.scipy_openblas_get_num_threads if lib is not None else None


def one_thread(fn):
    """``fn`` run on one BLAS thread (see the module docstring)."""
    setter = _setter()
    if setter is None:
        return fn

    def call(*args):
        prev = setter(1)
        try:
            return fn(*args)
        finally:
            setter(prev)
    return call

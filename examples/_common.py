"""Shared by the example scripts: load a spec shipped beside them, derive, generate, compile."""
import time
from pathlib import Path

import symbp

HERE = Path(__file__).resolve().parent


def kernel_for(spec_name, dtype="float64", out_dir=None):
    net = symbp.load(HERE / "specs" / f"{spec_name}.toml")
    t = time.perf_counter()
    d = symbp.derive(net)
    k = symbp.generate(d, dtype=dtype, out_dir=out_dir or HERE.parent / "generated").compile()
    print(f"{net}\n  derived, emitted to {k.path} and compiled in {time.perf_counter() - t:.1f} s")
    return k

"""The benchmark of issue 4 as a script: ``python benchmarks/bench_mlp.py [options]`` is
``symbp bench [options]`` (see symbp/bench.py and benchmarks/README.md).

It works from a checkout without installing the package: the repository root is put first on
sys.path, and the hand-written baselines beside this file (baselines.py) are found from there.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from symbp.cli.bench import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())

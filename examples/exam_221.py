"""A 2-2-1 exam with answer keys: ten variants of a sigmoid network with the mean squared error,
in multiple-choice form (wrong options from mutated derivations) with a circuit question each.

Each variant's numbers are drawn so that the hand calculation stays humane (one-decimal weights,
small integer inputs, a table of the sigmoid values needed); the answer key is the worked example
of the variant, computed exactly from the Derivation. Same seed, same bytes.

Run: python examples/exam_221.py [OUT_DIR]   (default ./out/exam_221/; writes questions.tex,
solutions.tex and, where pdflatex exists, their PDFs)
"""
import sys
from pathlib import Path

import symbp

out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("out") / "exam_221"
exam = symbp.make_exam((2, 2, 1), activation="sigmoid", loss="mse", variants=10, seed=7,
                 multiple_choice=True, circuit=True)
for path in exam.write(out):
    print(f"wrote {path}")

"""The five course texts symbp implements, in one place: every citation in the package's output
(handouts, README, demo and bench lines) is built from this table, never from file names.

Contract: ``SOURCES`` maps a short key to a ``Source`` (title, author and where, as each text's
own first page gives them; a field the text does not give is empty). ``cite(key, at="")`` is
the plain-text citation (``at`` a chapter, equation or section, e.g. "eq. 14.47"), ``latex_cite``
the same for LaTeX text mode, and ``bibliography(keys)`` the LaTeX list of full entries, in the
order of the table. ``NOTATION_SOURCE`` names the text each notation of ``render.notation``
comes from. ``text_mode(s)`` is a plain string for LaTeX text mode, as every handout writes its
names and citations.
"""
import re
from dataclasses import dataclass

_TEXT = {"\\": r"\textbackslash{}", "_": r"\_", "&": r"\&", "%": r"\%", "#": r"\#", "$": r"\$",
         "{": r"\{", "}": r"\}", "^": r"\^{}", "~": r"\~{}", "->": r"$\to$", "<": "$<$", ">": "$>$"}


def text_mode(s):
    """Plain text for LaTeX text mode (names, kinds, pass labels, citations), each special
    character escaped once (a single pass, so an escape is never escaped again)."""
    return re.sub(r"->|[\\_&%#$^~{}<>]", lambda m: _TEXT[m.group(0)], s)


@dataclass(frozen=True)
class Source:
    key: str
    title: str
    author: str        # as the text gives it; empty where it names none
    kind: str          # lecture slides, book chapter, ...
    where: str         # course, institution, date or chapter

    def short(self):
        """Author (or kind) and title: Soleymani, "Multi-Layer Networks & Back-Propagation"."""
        who = self.author.split()[-1] if self.author else self.kind
        return f'{who}, "{self.title}"'

    def full(self):
        parts = [self.author, f'"{self.title}"', self.kind, self.where]
        return ", ".join(p for p in parts if p)


SOURCES = {s.key: s for s in (
    Source("slides", "Multi-Layer Networks & Back-Propagation", "M. Soleymani", "lecture slides",
           "Deep Learning, Sharif University of Technology, Spring 2024 (after B. Raj, CMU 11-785, "
           "and F.-F. Li et al., Stanford CS231n)"),
    Source("udl", "Backpropagation", "A. Aghamohammadi", "lecture slides",
           "28 April 2024, in the notation of Understanding Deep Learning"),
    Source("chapter", "Backpropagation", "", "book chapter 14",
           "row-vector gradients, Algorithm 14.1"),
    Source("it5005", "IT5005: Multi-Layer Perceptrons", "S. R. Prasad", "course slides",
           "slide credit B. Leong"),
    Source("notebook", "Backpropagation", "", "tutorial notebook",
           "row batches H = X W1, gradient descent on XOR"),
)}

NOTATION_SOURCE = {"cs231n": "slides", "udl": "udl", "transposed": "it5005", "rowvector": "chapter",
                   "batch": "notebook"}


def cite(key, at=""):
    """Plain-text citation: 'the book chapter 14 "Backpropagation", eq. 14.47'."""
    s = SOURCES[key]
    text = f'the {s.kind} "{s.title}"' if not s.author else s.short()
    return f"{text}, {at}" if at else text


def _tex(s):
    return text_mode(s).replace('"', "").replace("H = X W1", "$H = X W_1$")


def latex_cite(key, at=""):
    """LaTeX text-mode citation with the title in italics."""
    s = SOURCES[key]
    title = rf"\emph{{{_tex(s.title)}}}"
    text = f"the {s.kind} {title}" if not s.author else f"{s.author.split()[-1]}, {title}"
    return f"{text}, {_tex(at)}" if at else text


def bibliography(keys):
    """LaTeX items of the full entries for ``keys``, in the table's order."""
    items = []
    for key, s in SOURCES.items():
        if key in keys:
            who = f"{_tex(s.author)}, " if s.author else ""
            items.append(rf"\item {who}\emph{{{_tex(s.title)}}}, {_tex(s.kind)}; {_tex(s.where)}.")
    return items

"""Imported once in the math workers' forkserver: load math-verify and warm its lazy state.

The first parse and verify in a fresh process pay for ANTLR and SymPy set-up (seconds on a busy
machine). Paying it here, before any worker is forked, keeps that cost out of every record's time cap.
"""

from __future__ import annotations

from still.core.verify_math import compare_in_worker

for _gold, _pred in (
    ("\\frac{1}{2}", "0.5"),
    ("x=5", "5"),
    ("3x+4y+14=0", "3x+4y+14=0"),
    ("(1,2]", "(1,2]"),
    ("\\sqrt{2}+\\pi", "\\pi+\\sqrt{2}"),
    ("\\{1,2\\}", "2, 1"),
    ("\\begin{pmatrix}1\\\\2\\end{pmatrix}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}"),
    ("\\text{east}", "\\text{East}"),
    ("1/3!", "1/6"),
    ("\\sqrt{2}", "1.414"),
    ("\\frac{\\sqrt{3}}{3}", "0.57735"),
    ("x^2+1", "1+x^2"),
    ("\\frac{1}{2^{99}}", "\\frac{1}{2^{98}}"),
    ("y=2x+3", "y=2x+4"),
):
    compare_in_worker((_gold, _pred))

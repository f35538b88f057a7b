"""Imported once in the math workers' forkserver: load math-verify and warm its lazy state.

The first parse and verify in a fresh process pay for ANTLR and SymPy set-up (seconds on a busy
machine). Paying it here, before any worker is forked, keeps that cost out of every record's time cap.
"""

from __future__ import annotations

from still.core.math_worker import compare_in_worker

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
    # Typical answer shapes: each warms ANTLR's prediction cache, which forked workers inherit.
    ("3-4i", "3 - 4i + 1"),
    ("1012_3", "1012_{3} + 1"),
    ("x^4-2x^2+1", "(x^2-1)^2"),
    ("(a+1)(b-3)", "(a+1)(b-3) + 1"),
    ("\\cos x", "\\sin x + 1"),
    ("-\\frac{\\pi}{3}", "-\\dfrac{\\pi}{3} + 1"),
    ("\\left( 2, \\frac{\\pi}{4} \\right)", "(2, \\pi/4)"),
    ("(-\\infty, 1) \\cup (2, \\infty)", "(-\\infty,1)\\cup(2,\\infty)"),
    ("2 \\pm \\sqrt{3}", "2+\\sqrt{3}, 2-\\sqrt{3}"),
    ("\\frac{7\\sqrt{2}}{3}", "\\frac{7}{3}\\sqrt{2}"),
    ("5\\pi + 2", "2 + 5\\pi"),
    ("\\begin{pmatrix} 1 & 0 \\\\ 0 & 1 \\end{pmatrix}", "\\begin{pmatrix} 1 & 0 \\\\ 0 & 2 \\end{pmatrix}"),
    ("3n^2+2n", "n(3n+2)"),
    ("\\{-1, 3\\}", "3, -1"),
    ("\\log_2 5", "\\ln 5 / \\ln 2"),
):
    compare_in_worker((_gold, _pred))

# math-verify's own extraction (its regexes compile on first use: seconds).
for _gold, _region in (
    ("1000.99", "so it is 1,000.99m²"),
    ("\\frac{1}{2}", "Final Answer: The final answer is $\\frac{1}{2}$. I hope it is correct."),
    ("[0,1)", "The domain is $[0,1)$, and the answer is $x \\in [0, 1)$."),
    ("28\\%", "the loss is 28 percent"),
):
    compare_in_worker((_gold, "", _region))

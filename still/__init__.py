"""still: composable Unix-style commands for reasoning distillation.

The command line lives in ``still.cli`` and the reusable library in ``still.core``.
"""

__version__ = "0.1.0"

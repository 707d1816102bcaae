"""Task arithmetic (Ilharco et al. 2022): the plain row of the generalized task-arithmetic core.

Kept as its own module so every method has one; the math lives in :mod:`mergefile.methods.gta`.
"""

from mergefile.methods.gta import TASK_ARITHMETIC as METHOD

__all__ = ["METHOD"]

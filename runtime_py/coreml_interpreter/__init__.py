"""A numpy interpreter for Core ML programs, so Core ML numerics can be checked off Apple systems.

``load_mlpackage(path)`` reads a saved ``.mlpackage`` (compressed weights included) and returns a
:class:`CoreMLProgram`, callable with numpy arrays in the program's input order. See
``program.py`` for loading and ``ops.py`` for the kernels and the precision model.
"""

from .ops import OPS, InterpreterOpError, unpack_indices
from .program import (
    CoreMLProgram,
    CoreMLProgramError,
    UnsupportedOperationError,
    from_mil_program,
    load_mlpackage,
    read_mil_program,
)

__all__ = [
    "OPS",
    "CoreMLProgram",
    "CoreMLProgramError",
    "InterpreterOpError",
    "UnsupportedOperationError",
    "from_mil_program",
    "load_mlpackage",
    "read_mil_program",
    "unpack_indices",
    "supported_ops",
]


def supported_ops() -> list[str]:
    """Names of the MIL operations the interpreter implements."""
    return sorted(OPS)

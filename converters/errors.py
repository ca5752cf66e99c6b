"""Errors of the converters, all :class:`~dcfmt.errors.ConvertError` (a ``DczError``).

The subclasses double as the core error kinds the ``dcz`` command maps to
exit codes: a limit (exit 4) and an unsupported input (exit 5); every other
conversion error is an invalid input (exit 1).
"""

from __future__ import annotations

from dcfmt.errors import ConvertError, LimitError, UnsupportedFeatureError

__all__ = [
    "ConvertError",
    "ConvertLimitError",
    "UnsupportedInputError",
    "UnsafePickleError",
    "VerificationError",
]


class ConvertLimitError(ConvertError, LimitError):
    """An input declares sizes above the converter's limits (a zip bomb, a huge pickle)."""


class UnsupportedInputError(ConvertError, UnsupportedFeatureError):
    """The input holds something .dcz cannot store (fp8 or complex tensors, a pickled module)."""


class UnsafePickleError(ConvertError):
    """A pickle references code other than tensor rebuilding; it is refused, never executed."""


class VerificationError(ConvertError):
    """The written file, read back, differs from what was intended; the target is untouched."""

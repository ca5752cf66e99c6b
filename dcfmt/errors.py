"""The one exception hierarchy of dcfmt (ARCHITECTURE.md, decision 10).

Every public call that is handed bad input -- a corrupt, truncated, hostile or
unsupported ``.dcz`` file, or a request the format cannot express -- raises a
subclass of :class:`DczError`, which is itself a :class:`ValueError`.  Nothing
else escapes: no ``IndexError``, ``struct.error``, ``UnicodeDecodeError`` or
numpy error.

Each error carries, where known, the byte ``offset`` in the file, the
``tensor`` name and the ``rule`` id of the specification (``spec/dcz.md``,
section "Rule index") that the input broke, so a tool can print where a
problem is and a validator can report it as a finding.
"""

from __future__ import annotations

__all__ = [
    "DczError",
    "FormatError",
    "TruncatedError",
    "ChecksumError",
    "VersionError",
    "UnsupportedFeatureError",
    "LimitError",
    "EncodeError",
    "ConvertError",
]


class DczError(ValueError):
    """Root of every error dcfmt raises on bad input.

    Attributes:
        message: what went wrong, with expected and found values.
        offset: absolute byte offset in the file where the problem is, or None.
        tensor: name of the tensor being read, or None.
        rule: the spec rule id that was broken (for example ``"HUF-6"``), or None.
    """

    def __init__(
        self,
        message: str,
        *,
        offset: int | None = None,
        tensor: str | None = None,
        rule: str | None = None,
    ) -> None:
        self.message = message
        self.offset = offset
        self.tensor = tensor
        self.rule = rule
        super().__init__(self._render())

    def _render(self) -> str:
        where = []
        if self.tensor is not None:
            where.append(f"tensor {self.tensor!r}")
        if self.offset is not None:
            where.append(f"offset {self.offset}")
        prefix = f"[{self.rule}] " if self.rule else ""
        suffix = f" ({', '.join(where)})" if where else ""
        return f"{prefix}{self.message}{suffix}"

    def located(self, *, offset: int | None = None, tensor: str | None = None) -> "DczError":
        """Fill in location fields that are still unknown and return self.

        Codec stages know nothing about files (ARCHITECTURE.md, layers), so they
        raise with section-relative information; the container layer adds the
        absolute offset and the tensor name on the way out.
        """
        changed = False
        if self.offset is None and offset is not None:
            self.offset = offset
            changed = True
        if self.tensor is None and tensor is not None:
            self.tensor = tensor
            changed = True
        if changed:
            self.args = (self._render(),)
        return self


class FormatError(DczError):
    """The bytes do not follow the specification (corrupt or hostile input)."""


class TruncatedError(DczError):
    """The input ended before a structure that the specification requires."""


class ChecksumError(DczError):
    """A CRC-32 stored in the file does not match the bytes it covers."""


class VersionError(DczError):
    """The file's format version is not one this implementation reads."""


class UnsupportedFeatureError(VersionError):
    """The file uses a critical feature (record, section, dtype, encoding) unknown here."""


class LimitError(DczError):
    """A size declared by the file exceeds a :class:`~dcfmt.limits.DecodeLimits` bound."""


class EncodeError(DczError):
    """A write request that the format cannot express (bad name, dtype, shape, state)."""


class ConvertError(DczError):
    """A checkpoint handed to :mod:`dcfmt.converters` cannot be converted.

    Raised for corrupt or hostile input files of other formats (safetensors,
    torch pickles, npz), pickles that would run code, tensors whose type .dcz
    cannot store, and output that failed verification.  The converters add
    subclasses that are also a :class:`LimitError` or an
    :class:`UnsupportedFeatureError`, so the CLI maps them to those exit codes.
    """

"""Decoder limits (spec 9): every size a file declares is checked against one of
these before anything is allocated (ARCHITECTURE.md, decision 9).

The defaults let any realistic checkpoint through while stopping hostile files
early.  A caller who expects bigger tensors raises them::

    limits = DecodeLimits(max_tensor_bytes=1 << 36)
    dcfmt.load("big.dcz", limits=limits)
"""

from __future__ import annotations

import dataclasses

from .errors import LimitError

__all__ = ["DecodeLimits", "DEFAULT_LIMITS"]


@dataclasses.dataclass(frozen=True)
class DecodeLimits:
    """Upper bounds a decoder enforces on what a file declares.

    Attributes:
        max_tensors: records in one file.
        max_tensor_bytes: decoded bytes of one tensor.
        max_total_bytes: decoded bytes of all tensors returned by one ``load``.
        max_expansion: decoded bytes per stored byte of a record, checked only
            above ``expansion_floor`` decoded bytes (stops decompression bombs:
            a 20-byte record that declares a terabyte of zeros).
        expansion_floor: decoded size below which the expansion check is skipped.
        max_name_bytes: UTF-8 bytes of a tensor name.
        max_metadata_bytes: bytes of the metadata record body.
        max_metadata_entries: key/value pairs in the metadata record.
        max_index_bytes: bytes of the index record.
        max_record_bytes: bytes of one record (what a streaming reader buffers).
    """

    max_tensors: int = 1_000_000
    max_tensor_bytes: int = 1 << 35
    max_total_bytes: int = 1 << 40
    max_expansion: int = 1 << 20
    expansion_floor: int = 1 << 28
    max_name_bytes: int = 4096
    max_metadata_bytes: int = 16 << 20
    max_metadata_entries: int = 65536
    max_index_bytes: int = 1 << 28
    max_record_bytes: int = 1 << 36

    def check(self, what: str, value: int, limit_name: str, **where) -> None:
        """Raise LimitError if ``value`` exceeds the limit called ``limit_name``."""
        limit = getattr(self, limit_name)
        if value > limit:
            raise LimitError(
                f"{what} is {value}, above the limit {limit_name}={limit}", rule="LIM-1", **where
            )

    def check_expansion(self, decoded: int, stored: int, **where) -> None:
        """Raise LimitError for a record that expands implausibly (a bomb)."""
        if decoded > self.expansion_floor and decoded > self.max_expansion * max(stored, 1):
            raise LimitError(
                f"record expands {stored} stored bytes to {decoded} decoded bytes, more than "
                f"max_expansion={self.max_expansion}x",
                rule="LIM-1",
                **where,
            )


DEFAULT_LIMITS = DecodeLimits()

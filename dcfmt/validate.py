"""Validation of .dcz files against the specification: ``dcfmt.validate(path)``.

The validator walks the whole file with the same parser as the readers
(:func:`dcfmt.reader.walk`) and fully decodes every tensor with the same
decoder, so it passes exactly when a full decode succeeds.  Every problem
becomes a :class:`Finding` with the spec's rule id, the byte offset and the
tensor name.  Structural errors stop the walk (nothing after them can be
trusted); a tensor that fails to decode is reported and the walk goes on to
the next record, so one run lists every broken tensor.
"""

from __future__ import annotations

import dataclasses
import mmap
import os

from .decoder import decode_range
from .errors import DczError, UnsupportedFeatureError, VersionError
from .limits import DEFAULT_LIMITS, DecodeLimits
from .reader import BufferSource, walk

__all__ = ["Finding", "Report", "validate"]


@dataclasses.dataclass(frozen=True)
class Finding:
    """One violation: spec rule id, absolute byte offset, tensor name, message, error class."""

    rule: str | None
    offset: int | None
    tensor: str | None
    message: str
    error: str

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def line(self, path: str = "") -> str:
        where = []
        if self.offset is not None:
            where.append(f"offset {self.offset}")
        if self.tensor is not None:
            where.append(f"tensor {self.tensor!r}")
        loc = f" ({', '.join(where)})" if where else ""
        prefix = f"{path}: " if path else ""
        return f"{prefix}{self.rule or self.error}{loc}: {self.message}"


@dataclasses.dataclass
class Report:
    """The result of :func:`validate`.  ``valid`` is True exactly when there are no findings."""

    path: str
    findings: list[Finding]
    tensors: int = 0
    version: str | None = None
    file_bytes: int = 0
    checksums: bool = True

    @property
    def valid(self) -> bool:
        return not self.findings

    def to_dict(self) -> dict:
        return {"path": self.path, "valid": self.valid, "version": self.version,
                "tensors": self.tensors, "file_bytes": self.file_bytes,
                "checksums": self.checksums, "findings": [f.to_dict() for f in self.findings]}


def _finding(exc: DczError) -> Finding:
    return Finding(exc.rule, exc.offset, exc.tensor, exc.message, type(exc).__name__)


def validate(source, *, limits: DecodeLimits = DEFAULT_LIMITS, checksums: bool = True) -> Report:
    """Check a .dcz file against every rule of the specification.

    Args:
        source: a path, or the file's bytes.
        limits: decoder limits; a file beyond them gets a LIM-1 finding.
        checksums: also verify CRC-32s (default).  Without them every other
            rule is still checked: checksums catch accidents, not attackers.

    Returns:
        A :class:`Report`; ``report.valid`` is True exactly when
        ``dcfmt.load`` would succeed.

    Raises:
        OSError: the file cannot be read (an I/O problem, not a finding).
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _validate(bytes(source), "<bytes>", limits, checksums)
    path = os.fspath(source)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            return _validate(b"", path, limits, checksums)
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            view = memoryview(m)
            try:
                return _validate(view, path, limits, checksums)
            finally:
                view.release()


def _validate(buf, path: str, limits: DecodeLimits, checksums: bool) -> Report:
    report = Report(path, [], file_bytes=len(buf), checksums=checksums)
    total = 0
    try:
        for ev in walk(BufferSource(buf), limits, checksums=checksums):
            if ev.kind == "header":
                report.version = f"{ev.header.major}.{ev.header.minor}"
            elif ev.kind == "tensor":
                rec = ev.record
                report.tensors += 1
                total += rec.decoded_bytes
                # the same limit load() applies to the whole file
                limits.check("decoded bytes of the file", total, "max_total_bytes",
                             offset=rec.offset, tensor=rec.name)
                try:
                    # a full decode, discarding the result: the same code and
                    # checks as load(); memory is one tensor at a time
                    decode_range(rec, 0, rec.numel, full=True)
                except DczError as exc:
                    report.findings.append(_finding(exc.located(offset=rec.offset, tensor=rec.name)))
    except DczError as exc:
        report.findings.append(_finding(exc))
    return report


def severity(report: Report) -> str:
    """"valid", "limit", "unsupported" or "invalid": what the CLI maps to exit codes."""
    if report.valid:
        return "valid"
    kinds = {f.error for f in report.findings}
    if "LimitError" in kinds:
        return "limit"
    if kinds & {UnsupportedFeatureError.__name__, VersionError.__name__}:
        return "unsupported"
    return "invalid"

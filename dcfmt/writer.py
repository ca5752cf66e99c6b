"""The streaming writer (spec 3): records go out as soon as each tensor is encoded.

The writer never seeks, so it can write to a pipe or socket.  Records are
self-describing; the index and trailer come last.  Writing to a path is
atomic (see :mod:`dcfmt.atomic`).
"""

from __future__ import annotations

import enum
import os


from .atomic import AtomicFile
from .constants import ALIGNMENT, RECORD_ALIGNED, RecordKind
from .container import (
    IndexEntry,
    crc32,
    encode_header,
    encode_index,
    encode_metadata,
    encode_trailer,
    record_prefix,
)
from .errors import EncodeError
from .record import DEFAULT_OPTIONS, EncodeOptions, TensorCode, check_name, encode_tensor

__all__ = ["Writer"]


class _State(enum.Enum):
    OPEN = "open"
    CLOSED = "closed"
    ABORTED = "aborted"


class Writer:
    """Write tensors one by one to a .dcz file, a pipe, or any binary file object.

    Args:
        target: a path (written atomically: temporary file, fsync, verify,
            rename) or a binary file object with ``write`` (never seeked).
        metadata: user metadata, str -> str; stored as the first record.
        plan: the compression plan for :meth:`write`: a plan object or a name
            (``"error-bounded"``, the default; ``"lossless"``; ``"paper"``).
        options: Huffman stream parameters; ``EncodeOptions(group_indices=False)``
            writes a format 1.0 file, for readers that predate 1.1.
        verify: for path targets, re-read the finished file and check its
            structure and checksums before it replaces the target.
        keep_codes: remember every TensorCode written in ``codes`` (for
            reports); off by default, since on a large checkpoint they hold
            every tensor's encoded content.

    Leaving a ``with`` block finishes the file (index and trailer); an
    exception inside the block aborts it instead, and a path target is left
    as it was.

    Example:
        >>> with Writer("model.dcz", metadata={"arch": "lenet"}) as w:   # doctest: +SKIP
        ...     w.write("fc1.weight", weights)
    """

    def __init__(self, target, *, metadata: dict[str, str] | None = None, plan=None,
                 options: EncodeOptions = DEFAULT_OPTIONS, verify: bool = True,
                 keep_codes: bool = False) -> None:
        from .plan import resolve_plan

        self._plan = resolve_plan(plan)
        self._options = options
        self._verify = verify
        self._atomic: AtomicFile | None = None
        if isinstance(target, (str, os.PathLike)):
            self._atomic = AtomicFile(target)
            self._f = self._atomic.file
        elif hasattr(target, "write"):
            self._f = target
        else:
            raise TypeError(f"expected a path or a binary file object, got {type(target).__name__}")
        self._pos = 0
        self._entries: list[IndexEntry] = []
        self._names: set[str] = set()
        self._state = _State.OPEN
        self._keep_codes = keep_codes
        self.codes: list[TensorCode] = []  # what was written, when keep_codes
        try:
            # a file that may hold 1.1 sections says so; without them it is a 1.0 file
            self._emit(encode_header(minor=options.format_minor))
            if metadata:
                body = encode_metadata(metadata)
                self._record(RecordKind.METADATA, 0, [body])
        except BaseException:
            self.abort()
            raise

    # -- low level -------------------------------------------------------------
    def _emit(self, data) -> None:
        view = memoryview(data).cast("B")
        while len(view):
            n = self._f.write(view)
            if n is None:  # non-blocking raw stream: treat as a full write
                n = len(view)
            if n <= 0:
                raise OSError("write made no progress")
            view = view[n:]
            self._pos += n

    def _record(self, kind: int, flags: int, parts: list, name=None, dtype=None, shape=None) -> None:
        if flags & RECORD_ALIGNED and self._pos % ALIGNMENT:
            self._emit(bytes((-self._pos) % ALIGNMENT))
        start = self._pos
        body_len = sum(len(memoryview(p).cast("B")) for p in parts)
        prefix = record_prefix(kind, flags, body_len)
        crc = crc32(prefix, *parts)
        self._emit(prefix)
        for p in parts:
            self._emit(p)
        self._emit(crc.to_bytes(4, "little"))
        if kind != RecordKind.INDEX:
            self._entries.append(IndexEntry(kind, start, self._pos - start, name, dtype, shape))

    def _check_open(self) -> None:
        if self._state is not _State.OPEN:
            raise EncodeError(f"writer is {self._state.value}")

    # -- public ------------------------------------------------------------------
    def write(self, name: str, array, *, plan=None, dtype=None) -> TensorCode:
        """Encode ``array`` with the writer's plan (or ``plan``) and write it.

        Args:
            name: unique tensor name.
            array: numpy array (or anything ``np.asarray`` accepts).
            plan: plan for this tensor only.
            dtype: element type override, e.g. ``"bfloat16"`` for uint16 bits.

        Returns:
            The TensorCode written (its ``reconstruct()`` is what readers get).
        """
        from .plan import prepare, resolve_plan

        self._check_open()
        check_name(name)
        if name in self._names:
            raise EncodeError(f"duplicate tensor name {name!r}")
        storage, dt = prepare(array, dtype)
        code = resolve_plan(plan or self._plan).encode(name, storage, dt)
        self.write_code(code)
        return code

    def write_code(self, code: TensorCode, *, options: EncodeOptions | None = None) -> None:
        """Write an already encoded tensor (for example a trained codebook).

        ``options`` replaces the writer's stream parameters for this tensor;
        it may not use a feature newer than the header the writer wrote.
        """
        self._check_open()
        if code.name in self._names:
            raise EncodeError(f"duplicate tensor name {code.name!r}")
        options = self._options if options is None else options
        if options.format_minor > self._options.format_minor:
            raise EncodeError("these options write format 1.1 sections into a file whose header "
                              "says 1.0 (the writer was made with group_indices=False)")
        aligned, parts = encode_tensor(code, options)
        try:
            self._record(RecordKind.TENSOR, RECORD_ALIGNED if aligned else 0, parts, code.name,
                         code.dtype, tuple(int(d) for d in code.shape))
        except BaseException:
            self.abort()
            raise
        self._names.add(code.name)
        if self._keep_codes:
            self.codes.append(code)

    def close(self) -> None:
        """Write the index and trailer; for a path, commit the file atomically."""
        if self._state is not _State.OPEN:
            return
        try:
            index_offset = self._pos
            self._record(RecordKind.INDEX, 0, [encode_index(self._entries)])
            self._emit(encode_trailer(index_offset))
            if self._atomic is not None:
                self._atomic.commit(_verify_file if self._verify else None)
            else:
                flush = getattr(self._f, "flush", None)
                if flush is not None:
                    flush()
        except BaseException:
            self.abort()
            raise
        self._state = _State.CLOSED

    def abort(self) -> None:
        """Stop without finishing; a path target keeps its old content."""
        if self._state is _State.OPEN:
            self._state = _State.ABORTED
        if self._atomic is not None:
            self._atomic.abort()

    @property
    def bytes_written(self) -> int:
        return self._pos

    def __enter__(self) -> "Writer":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _verify_file(path: str) -> None:
    """Walk the finished temporary file: structure, index and every checksum."""
    from .reader import StreamSource, walk

    with open(path, "rb") as f:
        for _ in walk(StreamSource(f)):
            pass

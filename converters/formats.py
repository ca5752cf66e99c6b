"""Checkpoint formats: recognising them, reading them tensor by tensor, writing them.

Formats (``FORMATS``): ``dcz``, ``safetensors``, ``torch`` (``.pt``/``.pth``/
``.bin`` state dicts), ``npz`` and ``sharded`` (a Hugging Face checkpoint
directory with a ``*.index.json`` and several shards; input only).

An input's format is recognised from its extension *and* its first bytes
(:func:`detect_input`); when the two disagree the bytes win and a note says so.
An output's format comes from its extension (:func:`output_format`).

Sources (:func:`open_source`) hand out one tensor at a time as a C-contiguous
little-endian numpy *storage* array plus its :class:`~dcfmt.DType`
(bfloat16 as uint16 bit patterns), so a conversion holds about one tensor in
memory.  Sinks (:func:`open_sink`) write to a temporary file beside the
target, read it back (.dcz: by a second thread, while it is written; other
formats: when finished), compare every tensor with what was intended, and
only then rename it over the target (:class:`dcfmt.atomic.AtomicFile`); the
input is never touched, even when it is the target.

Tied tensors.  ``.dcz`` stores a tensor that is an exact alias of another
(tied embeddings: same storage, offset, shape, strides, dtype) once, and
records ``{"alias": "stored name", ...}`` as JSON under the metadata key
``dcfmt.aliases`` (:data:`ALIASES_KEY`).  safetensors and npz cannot share
data, so they get a full copy under each name plus the same metadata key;
reading them back, a copy that is bit-identical to its target is folded into
an alias again.  ``.pt`` output ties the tensors for real (one storage).
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import json
import os
import struct
import threading
import zipfile
import zlib

import numpy as np

from dcfmt.atomic import AtomicFile
from dcfmt.constants import MAGIC
from dcfmt.dtypes import DType, from_numpy, to_storage
from dcfmt.errors import DczError, EncodeError

from .errors import ConvertError, ConvertLimitError, UnsupportedInputError, VerificationError
from .safety import DEFAULT_CONVERT_LIMITS, ConvertLimits, check_zip

__all__ = [
    "FORMATS",
    "ALIASES_KEY",
    "TensorMeta",
    "Source",
    "Sink",
    "detect_input",
    "output_format",
    "open_source",
    "open_sink",
    "storage_digest",
]

FORMATS = ("dcz", "safetensors", "torch", "npz", "sharded")
OUTPUT_FORMATS = ("dcz", "safetensors", "torch", "npz")
ALIASES_KEY = "dcfmt.aliases"
NPZ_METADATA = "__metadata__"

_EXTENSIONS = {
    ".dcz": "dcz", ".safetensors": "safetensors", ".pt": "torch", ".pth": "torch", ".bin": "torch",
    ".npz": "npz",
}

# safetensors dtype codes <-> .dcz element types
_ST_CODES = {
    "F64": DType.FLOAT64, "F32": DType.FLOAT32, "F16": DType.FLOAT16, "BF16": DType.BFLOAT16,
    "I64": DType.INT64, "I32": DType.INT32, "I16": DType.INT16, "I8": DType.INT8,
    "U64": DType.UINT64, "U32": DType.UINT32, "U16": DType.UINT16, "U8": DType.UINT8,
    "BOOL": DType.BOOL,
}
_ST_NAMES = {v: k for k, v in _ST_CODES.items()}


@dataclasses.dataclass(frozen=True)
class TensorMeta:
    """Name, element type, shape and stored size of one input tensor."""

    name: str
    dtype: DType
    shape: tuple[int, ...]
    stored_bytes: int

    @property
    def numel(self) -> int:
        return math.prod(int(d) for d in self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes of the decoded tensor."""
        return self.numel * self.dtype.itemsize


def storage_digest(array: np.ndarray) -> tuple[int, tuple, str]:
    """(CRC-32 of the bytes, shape, dtype) of a storage array: what a re-read must match."""
    arr = np.ascontiguousarray(array)
    return zlib.crc32(arr.reshape(-1).view(np.uint8)), tuple(array.shape), arr.dtype.str


def matches_code(array: np.ndarray, code) -> bool:
    """Whether a decoded ``array`` is bit for bit ``code.reconstruct()`` (same shape and dtype).

    A dense codebook is compared block by block against its centroid lookups,
    without materialising the reconstruction.
    """
    from dcfmt.constants import Layout, Values
    from dcfmt.dtypes import widen

    array = np.asarray(array)
    # the storage type itself, or bfloat16 as ml_dtypes gives it: never a value conversion
    if array.dtype != code.dtype.storage and not (code.dtype is DType.BFLOAT16
                                                  and array.dtype.name == "bfloat16"):
        return False
    got = np.asarray(_as_storage(array, code.dtype))
    if tuple(got.shape) != tuple(int(d) for d in code.shape) or got.dtype != code.dtype.storage:
        return False
    got = np.ascontiguousarray(got).reshape(-1)  # (ascontiguousarray makes a 0-d array 1-d)
    if code.layout is Layout.DENSE and code.values is Values.CODEBOOK and len(code.codebook) > 1:
        book = np.ascontiguousarray(widen(code.codebook, code.codebook_dtype, code.dtype),
                                    dtype=code.dtype.storage)
        bits = f"u{book.dtype.itemsize}" if book.dtype.kind != "b" else "u1"
        book, got = book.view(bits), got.view(bits)  # NaN payloads compare by their bits
        idx = np.asarray(code.indices).reshape(-1)
        if len(idx) != len(got):
            return False
        for a in range(0, len(idx), 1 << 16):
            if not np.array_equal(book.take(idx[a : a + (1 << 16)], mode="wrap"), got[a : a + (1 << 16)]):
                return False
        return True
    want = np.ascontiguousarray(_as_storage(code.reconstruct(), code.dtype)).reshape(-1)
    return want.dtype == got.dtype and np.array_equal(want.view(np.uint8), got.view(np.uint8))


def _as_storage(array: np.ndarray, dtype: DType) -> np.ndarray:
    return to_storage(np.asarray(array), dtype)


def _strict_json(text: str | bytes, what: str):
    """Parse JSON strictly: no duplicate keys, no NaN/Infinity."""

    def pairs(items):
        out = {}
        for k, v in items:
            if k in out:
                raise ConvertError(f"{what}: duplicate JSON key {k!r}")
            out[k] = v
        return out

    def constant(name):
        raise ConvertError(f"{what}: JSON constant {name} is not allowed")

    try:
        return json.loads(text, object_pairs_hook=pairs, parse_constant=constant)
    except (ValueError, RecursionError) as exc:
        if isinstance(exc, ConvertError):
            raise
        raise ConvertError(f"{what}: invalid JSON ({exc})") from None


def parse_aliases(metadata: dict, what: str, notes: list) -> dict[str, str]:
    """The alias map stored under :data:`ALIASES_KEY` (empty, with a note, if malformed)."""
    text = metadata.get(ALIASES_KEY)
    if text is None:
        return {}
    try:
        value = _strict_json(text, f"{what}: metadata {ALIASES_KEY}")
    except ConvertError as exc:
        notes.append(f"{exc}; ignored")
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                              for k, v in value.items()):
        notes.append(f"{what}: metadata {ALIASES_KEY} is not a JSON object of strings; ignored")
        return {}
    return value


# ---------------------------------------------------------------------------
# Recognising formats
# ---------------------------------------------------------------------------


def format_from_extension(path: str) -> str | None:
    """The format an extension names (``.pt`` -> ``torch``), or None."""
    return _EXTENSIONS.get(os.path.splitext(os.fspath(path))[1].lower())


def _index_files(directory: str) -> list[str]:
    names = sorted(os.listdir(directory))
    preferred = [n for n in names if n == "model.safetensors.index.json"]
    return preferred or [n for n in names if n.endswith(".safetensors.index.json")] or \
        [n for n in names if n.endswith(".bin.index.json")]


def sniff_format(path: str) -> tuple[str | None, str]:
    """(format, description) from a file's first bytes or a directory's contents."""
    if os.path.isdir(path):
        if _index_files(path):
            return "sharded", "a sharded checkpoint directory"
        return None, "a directory without a *.safetensors.index.json or *.bin.index.json"
    with open(path, "rb") as f:
        head = f.read(64)
        size = os.fstat(f.fileno()).st_size
    if not head:
        return None, "an empty file"
    if head.startswith(MAGIC):
        return "dcz", "a .dcz file"
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except (zipfile.BadZipFile, OSError, ValueError):
            return None, "a corrupt zip archive"
        if any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
            return "torch", "a torch zip checkpoint"
        if names and all(n.endswith(".npy") for n in names):
            return "npz", "a numpy .npz archive"
        return None, "a zip archive that is neither a torch checkpoint nor an .npz"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "torch", "a legacy torch pickle"
    if head.startswith(b"\x93NUMPY"):
        return None, "a single numpy .npy array (use .npz)"
    if len(head) >= 9:
        (n,) = struct.unpack_from("<Q", head)
        if head[8:9] == b"{" and 2 <= n <= size - 8:
            return "safetensors", "a safetensors file"
    return None, "an unrecognised format"


def detect_input(path: str, forced: str | None = None) -> tuple[str, list[str]]:
    """The format of input ``path`` and notes (extension and bytes disagreeing).

    Raises:
        ConvertError: the bytes match no supported format.
        OSError: ``path`` cannot be read.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(2, "No such file or directory", path)
    if forced is not None:
        if forced not in FORMATS:
            raise ConvertError(f"unknown input format {forced!r}; known: {', '.join(FORMATS)}")
        return forced, []
    sniffed, what = sniff_format(path)
    by_ext = None if os.path.isdir(path) else format_from_extension(path)
    if sniffed is None:
        expected = f" (its extension says {by_ext})" if by_ext else ""
        raise ConvertError(f"{path}: cannot convert {what}{expected}; supported inputs: .dcz, "
                           ".safetensors, .pt/.pth/.bin, .npz, sharded checkpoint directories")
    notes = []
    if by_ext is not None and by_ext != sniffed:
        notes.append(f"{path}: extension says {by_ext} but the content is {what}; reading it as "
                     f"{sniffed}")
    return sniffed, notes


def output_format(path: str, forced: str | None = None) -> str:
    """The format to write ``path`` in, from ``forced`` or the extension.

    Raises:
        ConvertError: unknown extension or format (the CLI reports a usage error).
    """
    fmt = forced or format_from_extension(path)
    if fmt is None:
        raise ConvertError(f"{path}: cannot tell the output format from the extension; use .dcz, "
                           ".safetensors, .pt/.pth/.bin or .npz (or --to)")
    if fmt not in OUTPUT_FORMATS:
        raise ConvertError(f"cannot write format {fmt!r}; outputs: {', '.join(OUTPUT_FORMATS)}")
    return fmt


# ---------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------


class Source:
    """Tensors of an input checkpoint, read one at a time.

    Attributes:
        path: the input.
        format: one of :data:`FORMATS`.
        aliases: ``alias -> stored name`` for tied tensors (not in :meth:`names`).
        notes: things the user should know (skipped entries, overlaps).
    """

    format = "?"

    def __init__(self, path: str) -> None:
        self.path = os.fspath(path)
        self.aliases: dict[str, str] = {}
        self.notes: list[str] = []
        self._meta: dict[str, TensorMeta] = {}
        self._order: list[str] = []
        self._metadata: dict[str, str] = {}

    def names(self) -> list[str]:
        """Stored tensor names, in the order they are best read."""
        return [n for n in self._order if n not in self.aliases]

    def info(self, name: str) -> TensorMeta:
        return self._meta[name]

    def metadata(self) -> dict[str, str]:
        """User metadata (the alias key excluded: it is in :attr:`aliases`)."""
        return {k: v for k, v in self._metadata.items() if k != ALIASES_KEY}

    def read(self, name: str) -> tuple[np.ndarray, DType]:  # pragma: no cover - abstract
        raise NotImplementedError

    def input_bytes(self) -> int:
        """Bytes of the input on disk."""
        return os.path.getsize(self.path)

    def close(self) -> None:
        pass

    def __enter__(self) -> "Source":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- tied copies (safetensors, npz) -----------------------------------------
    def _fold_copies(self, declared: dict[str, str]) -> None:
        """Keep the declared aliases whose copy is bit-identical to its target."""
        present = set(self._order)
        for alias, target in declared.items():
            if target not in present or target in declared:
                self.notes.append(f"{self.path}: alias {alias!r} -> {target!r} has no stored "
                                  "target; ignored")
                continue
            if alias not in present:
                self.aliases[alias] = target  # declared only (no copy stored)
                continue
            a, b = self.info(alias), self.info(target)
            same = (a.dtype, a.shape) == (b.dtype, b.shape) and np.array_equal(
                self.read(alias)[0].reshape(-1).view(np.uint8),
                self.read(target)[0].reshape(-1).view(np.uint8))
            if same:
                self.aliases[alias] = target
            else:
                self.notes.append(f"{self.path}: {alias!r} is declared a copy of {target!r} but "
                                  "differs; kept as a separate tensor")


class SafetensorsSource(Source):
    """A safetensors file, read with ``safetensors.safe_open`` tensor by tensor."""

    format = "safetensors"

    def __init__(self, path: str, limits: ConvertLimits = DEFAULT_CONVERT_LIMITS) -> None:
        super().__init__(path)
        try:
            from safetensors import safe_open
        except ImportError:  # pragma: no cover - depends on the environment
            raise UnsupportedInputError("reading safetensors needs the safetensors package: "
                                        "pip install safetensors") from None
        with open(self.path, "rb") as f:
            head = f.read(8)
        if len(head) == 8:
            (n,) = struct.unpack("<Q", head)
            if n > limits.max_header_bytes:
                raise ConvertLimitError(f"{self.path}: safetensors header of {n} bytes, above the "
                                        f"limit max_header_bytes={limits.max_header_bytes}")
        self._pt = None
        try:
            try:
                handle = safe_open(self.path, framework="np", backend="pread")
            except TypeError:  # safetensors < 0.7: no backend argument
                handle = safe_open(self.path, framework="np")
            self._f = handle.__enter__()
            self._handle = handle
            order = list(self._f.offset_keys()) if hasattr(self._f, "offset_keys") else \
                list(self._f.keys())
            metadata = self._f.metadata() or {}
            for name in order:
                sl = self._f.get_slice(name)
                code, shape = sl.get_dtype(), tuple(int(d) for d in sl.get_shape())
                dt = _ST_CODES.get(code)
                if dt is None:
                    raise UnsupportedInputError(
                        f"{self.path}: tensor {name!r} has dtype {code}, which .dcz cannot store "
                        f"(supported: {', '.join(_ST_CODES)}); fp8 and complex tensors must be "
                        "converted first")
                meta = TensorMeta(name, dt, shape, 0)
                self._meta[name] = dataclasses.replace(meta, stored_bytes=meta.nbytes)
        except DczError:
            self.close()
            raise
        except Exception as exc:  # SafetensorError and friends: corrupt input
            self.close()
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConvertError(f"{self.path}: not a valid safetensors file ({msg})") from None
        self._order = order
        self._metadata = dict(metadata)
        self._fold_copies(parse_aliases(self._metadata, self.path, self.notes))

    def read(self, name: str) -> tuple[np.ndarray, DType]:
        meta = self._meta[name]
        try:
            if meta.dtype is DType.BFLOAT16:
                arr = self._bf16(name)
            else:
                arr = self._f.get_tensor(name)
        except DczError:
            raise
        except Exception as exc:
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConvertError(f"{self.path}: cannot read tensor {name!r} ({msg})") from None
        return _as_storage(arr, meta.dtype), meta.dtype

    def _bf16(self, name: str) -> np.ndarray:
        try:
            # imported for its side effect: it registers the bfloat16 dtype that
            # safetensors' numpy path asks numpy for
            importlib.import_module("ml_dtypes")

            return self._f.get_tensor(name).view(np.uint16)
        except ImportError:
            pass
        from .torch_io import require_torch, tensor_to_numpy

        try:
            require_torch()
        except UnsupportedInputError:
            raise UnsupportedInputError(f"{self.path}: reading bfloat16 tensor {name!r} needs "
                                        "ml_dtypes or torch (pip install ml_dtypes)") from None
        if self._pt is None:
            from safetensors import safe_open

            self._pt_handle = safe_open(self.path, framework="pt")
            self._pt = self._pt_handle.__enter__()
        return tensor_to_numpy(self._pt.get_tensor(name), name)[0]

    def close(self) -> None:
        for attr in ("_handle", "_pt_handle"):
            h = getattr(self, attr, None)
            if h is not None:
                setattr(self, attr, None)
                try:
                    h.__exit__(None, None, None)
                except Exception:  # pragma: no cover - closing must not mask the real error
                    pass


class TorchSource(Source):
    """A torch checkpoint (``.pt``/``.pth``/``.bin``): a state dict, loaded safely and mapped."""

    format = "torch"

    def __init__(self, path: str, limits: ConvertLimits = DEFAULT_CONVERT_LIMITS) -> None:
        super().__init__(path)
        from .torch_io import load_checkpoint

        state, notes = load_checkpoint(self.path, limits)
        self._init_state(state, notes)

    def _init_state(self, state: dict, notes: list[str]) -> None:
        from .torch_io import _dtype_table, find_aliases, require_torch, tensor_to_numpy

        torch = require_torch()
        self.notes += notes
        table = _dtype_table(torch)
        for name, t in state.items():
            if t.dtype not in table or t.layout != torch.strided or t.is_quantized:
                tensor_to_numpy(t, name)  # raises the precise UnsupportedInputError
            shape = tuple(int(d) for d in t.shape)
            meta = TensorMeta(name, table[t.dtype], shape, 0)
            self._meta[name] = dataclasses.replace(meta, stored_bytes=meta.nbytes)
        self._state = state
        self._order = list(state)
        self.aliases, overlaps = find_aliases(state)
        for a, b in overlaps:
            self.notes.append(f"{self.path}: tensors {a!r} and {b!r} share memory without being "
                              "the same tensor; stored as separate copies")

    def read(self, name: str) -> tuple[np.ndarray, DType]:
        from .torch_io import tensor_to_numpy

        arr, dt = tensor_to_numpy(self._state[name], name)
        return _as_storage(arr, dt), dt

    def close(self) -> None:
        self._state = {}


class StateDictSource(TorchSource):
    """An in-memory state dict (or ``nn.Module``) handed to the Python API."""

    def __init__(self, obj, what: str = "state dict") -> None:
        Source.__init__(self, what)
        from .torch_io import state_dict_of

        state, notes = state_dict_of(obj, what)
        self._init_state(state, notes)

    def input_bytes(self) -> int:
        return sum(m.nbytes for m in self._meta.values())


class NpzSource(Source):
    """A numpy ``.npz`` archive; member sizes and .npy headers are checked before reading."""

    format = "npz"

    def __init__(self, path: str, limits: ConvertLimits = DEFAULT_CONVERT_LIMITS) -> None:
        super().__init__(path)
        infos = check_zip(self.path, limits)
        self._zf = zipfile.ZipFile(self.path)
        self._members: dict[str, tuple[zipfile.ZipInfo, np.dtype, bool, int]] = {}
        bf16: set[str] = set()
        try:
            for info in infos:
                if not info.filename.endswith(".npy"):
                    self.notes.append(f"{self.path}: skipped zip member {info.filename!r} (not .npy)")
                    continue
                name = info.filename[:-4]
                if name in self._members or name in self._meta:
                    raise ConvertError(f"{self.path}: duplicate array name {name!r}")
                dtype, shape, fortran, offset = self._header(info, limits)
                if name == NPZ_METADATA:
                    doc = self._read_metadata(info, dtype, shape, offset)
                    bf16 = set(doc.get("bfloat16", []))
                    self._metadata = dict(doc.get("metadata", {}))
                    continue
                if dtype.kind not in "biuf" and not (dtype.kind == "V" and dtype.itemsize == 2):
                    raise UnsupportedInputError(
                        f"{self.path}: array {name!r} has dtype {dtype}, which .dcz cannot store"
                        + (" (object arrays need pickle and are never read)" if dtype.kind == "O"
                           else ""))
                self._members[name] = (info, dtype, fortran, offset)
                self._order.append(name)
                self._meta[name] = TensorMeta(name, DType.FLOAT32, shape, info.compress_size)
            for name in self._order:
                info, dtype, fortran, offset = self._members[name]
                if name in bf16:
                    if dtype.itemsize != 2 or dtype.kind not in "uiV":
                        raise ConvertError(f"{self.path}: {name!r} is listed as bfloat16 but has "
                                           f"dtype {dtype}")
                    dt = DType.BFLOAT16
                else:
                    try:
                        dt = from_numpy(dtype)
                    except EncodeError as exc:
                        raise UnsupportedInputError(f"{self.path}: array {name!r}: {exc}") from None
                self._meta[name] = dataclasses.replace(self._meta[name], dtype=dt)
        except BaseException:
            self.close()
            raise
        self._fold_copies(parse_aliases(self._metadata, self.path, self.notes))

    def _header(self, info: zipfile.ZipInfo, limits: ConvertLimits):
        fmt = np.lib.format
        try:
            with self._zf.open(info) as f:
                version = fmt.read_magic(f)
                if version == (1, 0):
                    shape, fortran, dtype = fmt.read_array_header_1_0(f)
                elif version in ((2, 0), (3, 0)):
                    shape, fortran, dtype = fmt.read_array_header_2_0(f)
                else:
                    raise ValueError(f"unknown .npy version {version}")
                offset = f.tell()
        except (ValueError, OSError, zipfile.BadZipFile, EOFError, SyntaxError) as exc:
            raise ConvertError(f"{self.path}: member {info.filename!r} is not a valid .npy "
                               f"({exc})") from None
        if dtype.hasobject:
            raise UnsupportedInputError(f"{self.path}: array {info.filename[:-4]!r} holds Python "
                                        "objects (pickles); they are never read")
        numel = 1
        for d in shape:
            numel *= int(d)
        declared = numel * dtype.itemsize
        if declared != info.file_size - offset:
            raise ConvertError(f"{self.path}: member {info.filename!r} declares {declared} data bytes "
                               f"but holds {info.file_size - offset}")
        return dtype, tuple(int(d) for d in shape), fortran, offset

    def _read_metadata(self, info, dtype, shape, offset) -> dict:
        if dtype.kind != "U" or shape != ():
            raise ConvertError(f"{self.path}: {NPZ_METADATA}.npy must be a 0-d string array")
        with self._zf.open(info) as f:
            f.read(offset)
            text = np.frombuffer(f.read(dtype.itemsize), dtype=dtype)[0]
        doc = _strict_json(str(text), f"{self.path}: {NPZ_METADATA}")
        ok = isinstance(doc, dict) and isinstance(doc.get("metadata", {}), dict) and \
            all(isinstance(k, str) and isinstance(v, str) for k, v in doc.get("metadata", {}).items()) \
            and isinstance(doc.get("bfloat16", []), list) and \
            all(isinstance(n, str) for n in doc.get("bfloat16", []))
        if not ok:
            raise ConvertError(f"{self.path}: {NPZ_METADATA} must be a JSON object "
                               '{"metadata": {str: str}, "bfloat16": [names]}')
        return doc

    def read(self, name: str) -> tuple[np.ndarray, DType]:
        info, dtype, fortran, offset = self._members[name]
        meta = self._meta[name]
        try:
            with self._zf.open(info) as f:
                f.read(offset)
                data = f.read(meta.nbytes)
        except (OSError, zipfile.BadZipFile, EOFError, zlib.error) as exc:
            raise ConvertError(f"{self.path}: cannot read array {name!r} ({exc})") from None
        if len(data) != meta.nbytes:
            raise ConvertError(f"{self.path}: array {name!r} is truncated")
        arr = np.frombuffer(data, dtype=dtype if dtype.kind != "V" else np.dtype("<u2"))
        arr = arr.reshape(meta.shape, order="F" if fortran else "C")
        if meta.dtype is DType.BFLOAT16 and dtype.kind != "V":
            arr = arr.astype(dtype.newbyteorder("<"), copy=False).view("<u2")
        return _as_storage(arr, meta.dtype), meta.dtype

    def close(self) -> None:
        zf = getattr(self, "_zf", None)
        if zf is not None:
            zf.close()
            self._zf = None


class DczSource(Source):
    """A .dcz file through the lazy loader (index first, each tensor decoded on demand)."""

    format = "dcz"

    def __init__(self, path: str, limits=None) -> None:
        super().__init__(path)
        import dcfmt
        from dcfmt.constants import RecordKind

        self._limits = limits
        self._stream = None
        self._next = 0
        self._f = dcfmt.open(self.path) if limits is None else dcfmt.open(self.path, limits=limits)
        try:
            self._metadata = self._f.metadata()
            for e in self._f.entries:
                if e.kind == RecordKind.TENSOR:
                    self._order.append(e.name)
                    self._meta[e.name] = TensorMeta(e.name, e.dtype, tuple(e.shape), e.length)
            declared = parse_aliases(self._metadata, self.path, self.notes)
            for alias, target in declared.items():
                if alias in self._meta or target not in self._meta:
                    self.notes.append(f"{self.path}: alias {alias!r} -> {target!r} does not fit the "
                                      "file's tensors; ignored")
                else:
                    self.aliases[alias] = target
        except BaseException:
            self.close()
            raise

    def read(self, name: str) -> tuple[np.ndarray, DType]:
        """Decode ``name``: streamed when tensors are read in file order (memory stays at
        about one record plus one tensor), else through the lazy loader's map."""
        meta = self._meta[name]
        if self._stream is None and self._next == 0 and name == self._order[0]:
            import dcfmt

            self._stream = dcfmt.Reader(self.path) if self._limits is None else \
                dcfmt.Reader(self.path, limits=self._limits)
            self._tensors = iter(self._stream)
        if self._stream is not None and self._next < len(self._order) and \
                self._order[self._next] == name:
            got, array = next(self._tensors)
            self._next += 1
            if got != name:  # the index and the records disagree; the lazy path will say how
                raise ConvertError(f"{self.path}: record {got!r} where the index lists {name!r}")
            if self._next == len(self._order):
                # run the walk to its end: it checks the index against every record
                # (NDX-4: a dtype or shape the index gets wrong), the trailer and that
                # nothing follows it, none of which the lazy open or the records read
                # so far have checked
                extra = next(self._tensors, None)
                if extra is not None:
                    raise ConvertError(f"{self.path}: record {extra[0]!r} is not in the index")
            return _as_storage(array, meta.dtype), meta.dtype
        return _as_storage(self._f[name], meta.dtype), meta.dtype

    def close(self) -> None:
        for attr in ("_stream", "_f"):
            f = getattr(self, attr, None)
            if f is not None:
                setattr(self, attr, None)
                f.close()


class ShardedSource(Source):
    """A Hugging Face sharded checkpoint: ``*.index.json`` naming a shard for each tensor."""

    format = "sharded"

    def __init__(self, path: str, limits: ConvertLimits = DEFAULT_CONVERT_LIMITS) -> None:
        super().__init__(path)
        found = _index_files(self.path)
        if not found:
            raise ConvertError(f"{self.path}: no *.safetensors.index.json or *.bin.index.json")
        self.index_file = os.path.join(self.path, found[0])
        size = os.path.getsize(self.index_file)
        if size > limits.max_header_bytes:
            raise ConvertLimitError(f"{self.index_file}: {size} bytes, above the limit "
                                    f"max_header_bytes={limits.max_header_bytes}")
        with open(self.index_file, "rb") as f:
            doc = _strict_json(f.read(), self.index_file)
        weight_map = doc.get("weight_map") if isinstance(doc, dict) else None
        if not isinstance(weight_map, dict) or not weight_map or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()):
            raise ConvertError(f"{self.index_file}: needs a non-empty \"weight_map\" of tensor name "
                               "-> shard file")
        shards: dict[str, list[str]] = {}
        for name, shard in weight_map.items():
            if os.path.basename(shard) != shard or shard in ("", ".", "..") or "\\" in shard:
                raise ConvertError(f"{self.index_file}: shard {shard!r} is not a file name in the "
                                   "checkpoint directory")
            shards.setdefault(shard, []).append(name)
        self._shards: dict[str, Source] = {}
        self._where: dict[str, Source] = {}
        try:
            for shard in sorted(shards):
                file = os.path.join(self.path, shard)
                fmt, _ = detect_input(file)
                if fmt not in ("safetensors", "torch"):
                    raise ConvertError(f"{file}: a shard must be safetensors or a torch checkpoint")
                src = SafetensorsSource(file, limits) if fmt == "safetensors" else TorchSource(file, limits)
                self._shards[shard] = src
                self.notes += src.notes
                held = set(src._order)
                listed = set(shards[shard])
                if held != listed:
                    extra = sorted(held - listed)[:3]
                    missing = sorted(listed - held)[:3]
                    raise ConvertError(f"{file}: shard holds tensors the index does not map to it "
                                       f"({extra}) or lacks tensors it does ({missing})")
                for name in src._order:
                    self._order.append(name)
                    self._meta[name] = src.info(name)
                    self._where[name] = src
                for alias, target in src.aliases.items():
                    self.aliases[alias] = target
                for k, v in src.metadata().items():
                    if self._metadata.setdefault(k, v) != v:
                        self.notes.append(f"{file}: metadata {k!r} differs between shards; kept "
                                          f"{self._metadata[k]!r}")
        except BaseException:
            self.close()
            raise

    def read(self, name: str) -> tuple[np.ndarray, DType]:
        return self._where[name].read(name)

    def input_bytes(self) -> int:
        return os.path.getsize(self.index_file) + sum(os.path.getsize(s.path)
                                                      for s in self._shards.values())

    def close(self) -> None:
        for src in getattr(self, "_shards", {}).values():
            src.close()


def open_source(path: str, fmt: str | None = None, *,
                limits: ConvertLimits = DEFAULT_CONVERT_LIMITS) -> Source:
    """Open an input checkpoint of any supported format (detected unless ``fmt``)."""
    fmt, notes = detect_input(path, fmt)
    cls = {"safetensors": SafetensorsSource, "torch": TorchSource, "npz": NpzSource,
           "dcz": DczSource, "sharded": ShardedSource}[fmt]
    src = cls(path) if fmt == "dcz" else cls(path, limits)
    src.notes[:0] = notes
    return src


# ---------------------------------------------------------------------------
# Sinks
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class Written:
    """What a sink did with one tensor: bytes it took and, for .dcz, its TensorCode."""

    bytes_out: int
    code: object = None


class Sink:
    """An output being written: ``add`` each stored tensor, then ``finish`` (or ``abort``).

    Every sink writes through :class:`~dcfmt.atomic.AtomicFile`; ``finish``
    re-reads the temporary file and compares each tensor (CRC-32 of its bytes,
    shape, dtype), the names and the metadata with what was intended before
    the rename.
    """

    format = "?"

    def __init__(self, path: str, *, metadata: dict[str, str], aliases: dict[str, str],
                 infos: list[TensorMeta], verify: bool = True) -> None:
        self.path = os.fspath(path)
        if os.path.isdir(self.path):
            raise IsADirectoryError(21, "Is a directory", self.path)
        self.aliases = dict(aliases)
        self.metadata = dict(metadata)
        if self.aliases:
            self.metadata[ALIASES_KEY] = json.dumps(self.aliases, sort_keys=True)
        self.infos = {m.name: m for m in infos}
        self.verify = verify
        self.notes: list[str] = []
        self.expected: dict[str, tuple] = {}
        self._copies: dict[str, list[str]] = {}
        for alias, target in self.aliases.items():
            self._copies.setdefault(target, []).append(alias)
        self._atomic = AtomicFile(self.path)

    def order(self, names: list[str]) -> list[str]:
        """The order in which tensors must be added."""
        return list(names)

    def add(self, name: str, array: np.ndarray, dtype: DType) -> Written:  # pragma: no cover
        raise NotImplementedError

    def finish(self) -> int:
        """Complete, verify and commit the file; returns its size in bytes."""
        self._close()
        self._atomic.commit(self._check if self.verify else None)
        return os.path.getsize(self.path)

    def abort(self) -> None:
        self._atomic.abort()

    def _close(self) -> None:
        pass

    def _check(self, tmp: str) -> None:
        """Read ``tmp`` back with the matching Source and compare with :attr:`expected`."""
        cls = {"safetensors": SafetensorsSource, "npz": NpzSource, "dcz": DczSource,
               "torch": TorchSource}[self.format]
        try:
            src = cls(tmp)
        except DczError as exc:
            raise VerificationError(f"{self.path}: the written file does not read back ({exc}); "
                                    "the target was left untouched") from None
        with src:
            self._compare(src)

    def _compare(self, src: Source) -> None:
        def fail(what: str):
            raise VerificationError(f"{self.path}: the written file differs from what was intended "
                                    f"({what}); the target was left untouched")

        # safetensors and npz hold a copy under each alias; reading folds them back
        names = {n for n in self.expected if n not in self.aliases}
        if set(src.names()) != names:
            fail("tensor names")
        if src.aliases != self.aliases:
            fail("tied tensors")
        if self.format != "torch" and src.metadata() != \
                {k: v for k, v in self.metadata.items() if k != ALIASES_KEY}:
            fail("metadata")
        for name in sorted(names):
            arr, dt = src.read(name)
            if (storage_digest(arr), dt) != self.expected[name]:
                fail(f"tensor {name!r}")


class _Follower:
    """A file that another thread is still writing, as a stream for :class:`dcfmt.Reader`.

    Reads block until the writer has published more bytes (after flushing
    them); once the writer publishes its last byte, the end of what was
    published is the end of the stream.
    """

    def __init__(self, path: str) -> None:
        self._f = open(path, "rb", buffering=0)
        self._cond = threading.Condition()
        self._avail = 0
        self._final = False
        self._pos = 0

    def publish(self, nbytes: int, final: bool = False) -> None:
        with self._cond:
            self._avail = nbytes
            self._final = self._final or final
            self._cond.notify_all()

    def readinto(self, b) -> int:
        view = memoryview(b).cast("B")
        with self._cond:
            while self._pos >= self._avail and not self._final:
                self._cond.wait()
            room = self._avail - self._pos
        if room <= 0 or not len(view):
            return 0
        got = self._f.readinto(view[:room]) or 0
        self._pos += got
        return got

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            out = bytearray()
            while chunk := self.read(1 << 20):
                out += chunk
            return bytes(out)
        buf = bytearray(n)
        return bytes(buf[: self.readinto(buf)])

    def close(self) -> None:
        self._f.close()


class DczSink(Sink):
    """Write .dcz through :class:`dcfmt.Writer` with a compression plan.

    The check runs while the file is written: a second thread reads the
    temporary file behind the writer with the streaming :class:`dcfmt.Reader`
    (structure, every checksum, every tensor decoded) and compares each
    decoded tensor bit for bit with ``TensorCode.reconstruct()`` of the code
    that was written, and its shape and dtype (:func:`matches_code`); the writer hands each code
    over and waits when two are still unchecked.  The file is renamed over the
    target only after that thread has read the trailer and found everything as
    intended.
    """

    #: codes written but not yet checked before the writer waits
    MAX_PENDING = 2

    format = "dcz"

    def __init__(self, path: str, *, plan=None, options=None, **kw) -> None:
        super().__init__(path, **kw)
        from dcfmt.plan import resolve_plan
        from dcfmt.writer import Writer

        self._plan = resolve_plan(plan)
        self._follow: _Follower | None = None
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None
        self._seen: list[str] = []
        self._read_meta: dict | None = None
        self._pending: dict = {}  # name -> TensorCode written, not yet checked
        self._pending_cond = threading.Condition()
        try:
            extra = {} if options is None else {"options": options}
            self._writer = Writer(self._atomic.file, metadata=self.metadata or None,
                                  plan=self._plan, **extra)
            if self.verify:
                self._atomic.file.flush()
                self._follow = _Follower(self._atomic.tmp_path)
                self._follow.publish(self._writer.bytes_written)
                self._thread = threading.Thread(target=self._read_back, name="dcz-verify",
                                                daemon=True)
                self._thread.start()
        except BaseException:
            self.abort()
            raise

    def add(self, name: str, array: np.ndarray, dtype: DType) -> Written:
        from dcfmt.plan import prepare
        from dcfmt.record import check_name

        if self._failure is not None:
            self._fail()
        check_name(name)
        storage, dt = prepare(array, dtype if dtype is DType.BFLOAT16 else None)
        code = self._plan.encode(name, storage, dt)
        del storage
        if self._follow is None:
            # unchecked: only the name is recorded (a digest would cost a decode's worth of work)
            self.expected[name] = None
        else:  # the reading thread works out what it must find, before the record exists
            with self._pending_cond:
                while len(self._pending) >= self.MAX_PENDING and self._failure is None:
                    self._pending_cond.wait()
                if self._failure is not None:
                    self._fail()
                self._pending[name] = code
                self.expected[name] = None
        before = self._writer.bytes_written
        self._writer.write_code(code)
        if self._follow is not None:
            self._atomic.file.flush()
            self._follow.publish(self._writer.bytes_written)
        return Written(self._writer.bytes_written - before, code)

    def _checked(self, name: str, array: np.ndarray) -> bool:
        """Whether ``array``, read back as ``name``, is what the code written under that name
        intended; the code then leaves the pending set."""
        with self._pending_cond:
            code = self._pending.get(name)
        if code is None:
            return False
        ok = matches_code(array, code)
        with self._pending_cond:
            del self._pending[name]
            self._pending_cond.notify_all()
        return ok

    def _read_back(self) -> None:
        import dcfmt

        try:
            with dcfmt.Reader(self._follow) as r:
                self._read_meta = r.metadata
                for name, arr in r:
                    if not self._checked(name, arr):
                        raise VerificationError(f"{self.path}: tensor {name!r} of the written file "
                                                "differs from what the encoder intended; the target "
                                                "was left untouched")
                    self._seen.append(name)
                    del arr
        except BaseException as exc:  # reported by the writing thread
            with self._pending_cond:
                self._failure = exc
                self._pending.clear()
                self._pending_cond.notify_all()

    def _fail(self):
        exc = self._failure
        if isinstance(exc, VerificationError):
            raise exc
        raise VerificationError(f"{self.path}: the written file does not read back ({exc}); "
                                "the target was left untouched") from None

    def _close(self) -> None:
        self._writer.close()
        if self._follow is not None:
            self._atomic.file.flush()
            self._follow.publish(self._writer.bytes_written, final=True)

    def _check(self, tmp: str) -> None:
        self._join()
        if self._failure is not None:
            self._fail()
        if self._seen != list(self.expected) or self._read_meta != self.metadata:
            raise VerificationError(f"{self.path}: the written file's tensor list or metadata "
                                    "differs from what was written; the target was left untouched")

    def _join(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._follow is not None:
            self._follow.close()
            self._follow = None

    def abort(self) -> None:
        if self._follow is not None:
            self._follow.publish(0, final=True)  # the reader sees the end and stops
        self._join()
        super().abort()


class SafetensorsSink(Sink):
    """Write safetensors: the header (from the source's index) first, then each tensor's bytes.

    The safetensors library's writer needs every tensor in memory at once, so
    this sink writes the documented layout itself -- 8-byte little-endian
    header length, JSON header padded with spaces to a multiple of 8, tensor
    bytes at the offsets the header gives, largest element size first so every
    tensor stays aligned -- placing each tensor at its offset whatever order
    it arrives in, and then reads the result back with
    ``safetensors.safe_open`` to check it.
    """

    format = "safetensors"

    def __init__(self, path: str, **kw) -> None:
        super().__init__(path, **kw)
        try:
            if "__metadata__" in self.infos or "__metadata__" in self.aliases:
                raise ConvertError("a tensor named '__metadata__' cannot be stored in safetensors")
            stored = [n for n in self.infos if n not in self.aliases]
            layout = sorted(stored, key=lambda n: -self.infos[n].dtype.itemsize)
            header: dict = {}
            if self.metadata:
                header["__metadata__"] = self.metadata
            self._at: dict[str, list[int]] = {}
            offset = 0
            for name in layout:
                m = self.infos[name]
                for each in [name] + self._copies.get(name, []):
                    header[each] = {"dtype": _ST_NAMES[m.dtype], "shape": list(m.shape),
                                    "data_offsets": [offset, offset + m.nbytes]}
                    self._at.setdefault(name, []).append(offset)
                    offset += m.nbytes
            text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
            text += b" " * (-len(text) % 8)
            self._atomic.write(struct.pack("<Q", len(text)) + text)
            self._data_start = 8 + len(text)
            self._data_bytes = offset
        except BaseException:
            self._atomic.abort()
            raise

    def add(self, name: str, array: np.ndarray, dtype: DType) -> Written:
        m = self.infos[name]
        arr = _as_storage(array, dtype)
        if (dtype, tuple(arr.shape)) != (m.dtype, m.shape):
            raise ConvertError(f"tensor {name!r} is {dtype.label}{list(arr.shape)}, its index says "
                               f"{m.dtype.label}{list(m.shape)}")
        data = arr.reshape(-1).view(np.uint8)
        digest = (storage_digest(arr), dtype)
        f = self._atomic.file
        for each, offset in zip([name] + self._copies.get(name, []), self._at[name]):
            f.seek(self._data_start + offset)
            f.write(data)
            self.expected[each] = digest
        return Written(arr.nbytes * len(self._at[name]))

    def _close(self) -> None:
        f = self._atomic.file
        f.seek(0, os.SEEK_END)
        if f.tell() != self._data_start + self._data_bytes:  # pragma: no cover - a tensor was skipped
            raise ConvertError(f"internal: {self.path} has {f.tell()} bytes, expected "
                               f"{self._data_start + self._data_bytes}")


class NpzSink(Sink):
    """Write a numpy ``.npz`` (uncompressed zip of ``.npy`` members), tensor by tensor.

    bfloat16 tensors are stored as uint16 bit patterns; their names and the
    user metadata go into a ``__metadata__.npy`` member holding the JSON text
    ``{"metadata": {...}, "bfloat16": [names]}``.
    """

    format = "npz"

    def __init__(self, path: str, **kw) -> None:
        super().__init__(path, **kw)
        self._zf = None
        try:
            for name in self.infos:
                _check_member_name(name)
            self._bf16: list[str] = []
            self._zf = zipfile.ZipFile(self._atomic.file, "w", zipfile.ZIP_STORED, allowZip64=True)
        except BaseException:
            self._atomic.abort()  # convert_source never sees this sink: drop its temporary file
            raise

    def add(self, name: str, array: np.ndarray, dtype: DType) -> Written:
        arr = _as_storage(array, dtype)
        digest = (storage_digest(arr), dtype)
        out = arr.view(np.uint16) if dtype is DType.BFLOAT16 else arr
        for each in [name] + self._copies.get(name, []):
            if dtype is DType.BFLOAT16:
                self._bf16.append(each)
            with self._zf.open(each + ".npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, out, allow_pickle=False)
            self.expected[each] = digest
        return Written(arr.nbytes * (1 + len(self._copies.get(name, []))))

    def _close(self) -> None:
        if self._bf16 or self.metadata:
            doc = json.dumps({"metadata": self.metadata, "bfloat16": sorted(self._bf16)},
                             sort_keys=True, ensure_ascii=False)
            with self._zf.open(NPZ_METADATA + ".npy", "w") as f:
                np.lib.format.write_array(f, np.array(doc), allow_pickle=False)
        self._zf.close()

    def abort(self) -> None:
        # close the archive before its file goes: left open, ZipFile.__del__ would later
        # write to the closed file and print "Exception ignored ... seek of closed file"
        zf, self._zf = self._zf, None
        if zf is not None:
            try:
                zf.close()
            except (OSError, ValueError):  # the write that failed may fail again; it is dropped
                pass
        super().abort()



def _check_member_name(name: str) -> None:
    """Tensor names become zip member names: refuse ones that are paths out of an archive."""
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or ".." in parts or name == NPZ_METADATA or ":" in parts[0]:
        raise ConvertError(f"tensor name {name!r} cannot be an .npz member name (absolute, '..', "
                           f"drive letter or the reserved {NPZ_METADATA!r})")


class TorchSink(Sink):
    """Write a torch state dict with ``torch.save`` (tied tensors share one storage).

    ``torch.save`` has no streaming API, so this sink holds every tensor in
    memory until :meth:`finish`.  torch checkpoints have no metadata slot: user
    metadata is dropped (with a note).
    """

    format = "torch"

    def __init__(self, path: str, **kw) -> None:
        from .torch_io import require_torch

        require_torch()  # before the temporary file exists: nothing to clean up if torch is missing
        super().__init__(path, **kw)
        self._state: dict = {}
        user = {k: v for k, v in self.metadata.items() if k != ALIASES_KEY}
        if user:
            self.notes.append(f"{self.path}: torch checkpoints have no metadata; dropped "
                              + ", ".join(sorted(user)[:8]))

    def add(self, name: str, array: np.ndarray, dtype: DType) -> Written:
        from .torch_io import numpy_to_tensor

        arr = _as_storage(array, dtype)
        t = numpy_to_tensor(arr, dtype)
        self._state[name] = t
        self.expected[name] = (storage_digest(arr), dtype)
        for alias in self._copies.get(name, []):
            self._state[alias] = t
        return Written(arr.nbytes)

    def _close(self) -> None:
        torch = __import__("torch")
        order = [n for n in self.infos if n in self._state] + \
            [a for a in self.aliases if a not in self.infos]
        torch.save({n: self._state[n] for n in order}, self._atomic.file)
        self._state = {}


def open_sink(path: str, fmt: str, *, metadata: dict[str, str], aliases: dict[str, str],
              infos: list[TensorMeta], plan=None, verify: bool = True, options=None) -> Sink:
    """Start writing ``path`` in format ``fmt`` (``plan`` applies to .dcz only)."""
    kw = dict(metadata=metadata, aliases=aliases, infos=infos, verify=verify)
    if fmt == "dcz":
        return DczSink(path, plan=plan, options=options, **kw)
    return {"safetensors": SafetensorsSink, "npz": NpzSink, "torch": TorchSink}[fmt](path, **kw)

"""Checks that run before a foreign container is opened (RELIABILITY.md, "Converters").

* :func:`check_zip` -- a zip archive's declared member sizes, read from its
  central directory and local headers only, against :class:`ConvertLimits`
  before anything is inflated or loaded (zip bombs: huge declared sizes,
  absurd compression ratios, members that overlap each other).
* :func:`scan_pickle` -- the globals a pickle would import, found by walking
  its opcodes with :mod:`pickletools` (nothing is executed).  Only the
  functions and classes that rebuild tensors, storages, dtypes and plain
  containers are accepted; anything else (``os.system``, a pickled
  ``nn.Module``, ``builtins.eval``) is refused before ``torch.load`` runs.
  ``torch.load(..., weights_only=True)`` is the second, independent guard.
"""

from __future__ import annotations

import dataclasses
import io
import os
import pickletools
import struct
import zipfile

from .errors import ConvertError, ConvertLimitError, UnsafePickleError

__all__ = ["ConvertLimits", "DEFAULT_CONVERT_LIMITS", "check_zip", "scan_pickle", "ALLOWED_GLOBALS"]


@dataclasses.dataclass(frozen=True)
class ConvertLimits:
    """Bounds on what a foreign input may declare before it is loaded.

    Attributes:
        max_members: entries in a zip archive (torch checkpoint, npz).
        max_member_bytes: declared uncompressed bytes of one member.
        max_total_bytes: declared uncompressed bytes of all members.
        max_ratio: declared uncompressed / compressed bytes of a compressed member.
        max_pickle_bytes: bytes of a pickle that is scanned before loading.
        max_header_bytes: bytes of a safetensors header or a sharded index file.
    """

    max_members: int = 1_000_000
    max_member_bytes: int = 1 << 38
    max_total_bytes: int = 1 << 40
    max_ratio: int = 1000
    max_pickle_bytes: int = 1 << 28
    max_header_bytes: int = 100 << 20


DEFAULT_CONVERT_LIMITS = ConvertLimits()

_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")  # zipfile's structFileHeader
_LOCAL_MAGIC = b"PK\x03\x04"


def check_zip(path: str, limits: ConvertLimits = DEFAULT_CONVERT_LIMITS) -> list[zipfile.ZipInfo]:
    """Check a zip archive's declared sizes before any member is read.

    Returns:
        The archive's members (``ZipInfo``), in central-directory order.

    Raises:
        ConvertLimitError: a member count, size or ratio above ``limits``.
        ConvertError: the archive is corrupt (members outside the file or
            overlapping one another, bad local headers).
    """
    size = os.path.getsize(path)
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            if len(infos) > limits.max_members:
                raise ConvertLimitError(f"{path}: zip archive has {len(infos)} members, above the "
                                        f"limit max_members={limits.max_members}")
            total = 0
            spans = []
            with open(path, "rb") as f:
                for info in infos:
                    if info.file_size > limits.max_member_bytes:
                        raise ConvertLimitError(
                            f"{path}: zip member {info.filename!r} declares {info.file_size} bytes, "
                            f"above the limit max_member_bytes={limits.max_member_bytes}")
                    total += info.file_size
                    if total > limits.max_total_bytes:
                        raise ConvertLimitError(
                            f"{path}: zip members declare more than {limits.max_total_bytes} bytes in "
                            "all (max_total_bytes); a zip bomb?")
                    if info.compress_type == zipfile.ZIP_STORED:
                        if info.compress_size != info.file_size:
                            raise ConvertError(f"{path}: stored zip member {info.filename!r} declares "
                                               f"{info.file_size} bytes but occupies {info.compress_size}")
                    elif info.file_size > limits.max_ratio * max(info.compress_size, 1):
                        raise ConvertLimitError(
                            f"{path}: zip member {info.filename!r} expands {info.compress_size} bytes "
                            f"to {info.file_size}, more than max_ratio={limits.max_ratio}x (a zip bomb?)")
                    if not 0 <= info.header_offset <= size - _LOCAL_HEADER.size:
                        raise ConvertError(f"{path}: zip member {info.filename!r} starts at offset "
                                           f"{info.header_offset}, outside the {size}-byte file")
                    f.seek(info.header_offset)
                    raw = f.read(_LOCAL_HEADER.size)
                    if len(raw) != _LOCAL_HEADER.size or raw[:4] != _LOCAL_MAGIC:
                        raise ConvertError(f"{path}: zip member {info.filename!r} has no local header "
                                           f"at offset {info.header_offset}")
                    fields = _LOCAL_HEADER.unpack(raw)
                    start = info.header_offset + _LOCAL_HEADER.size + fields[10] + fields[11]
                    end = start + info.compress_size
                    if end > size:
                        raise ConvertError(f"{path}: zip member {info.filename!r} ends at byte {end}, "
                                           f"past the end of the {size}-byte file (truncated?)")
                    spans.append((info.header_offset, end, info.filename))
            spans.sort()
            for (a0, a1, an), (b0, _, bn) in zip(spans, spans[1:]):
                if b0 < a1:
                    raise ConvertError(f"{path}: zip members {an!r} and {bn!r} overlap (a zip bomb?)")
            return infos
    except zipfile.BadZipFile as exc:
        raise ConvertError(f"{path}: corrupt zip archive ({exc})") from None


# ---------------------------------------------------------------------------
# Pickles
# ---------------------------------------------------------------------------

_STORAGES = {f"{t}Storage" for t in (
    "Float", "Double", "Half", "BFloat16", "Long", "Int", "Short", "Char", "Byte", "Bool",
    "ComplexFloat", "ComplexDouble", "QInt8", "QUInt8", "QInt32", "QUInt4x2", "QUInt2x4",
)}
_DTYPES = {
    "float32", "float64", "float16", "bfloat16", "int8", "int16", "int32", "int64", "uint8",
    "uint16", "uint32", "uint64", "bool", "complex64", "complex128", "float8_e4m3fn", "float8_e5m2",
    "float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e8m0fnu", "half", "float", "double", "long",
    "int", "short",
}

#: Globals a state-dict pickle may reference: ``module.qualname`` strings.
ALLOWED_GLOBALS = frozenset(
    {"collections.OrderedDict", "torch.Size", "torch.storage.UntypedStorage",
     "torch.storage.TypedStorage", "torch._utils._rebuild_tensor", "torch._utils._rebuild_tensor_v2",
     "torch._utils._rebuild_tensor_v3", "torch._utils._rebuild_parameter",
     "torch._utils._rebuild_parameter_with_state", "torch.nn.parameter.Parameter",
     "__builtin__.set", "builtins.set", "__builtin__.frozenset", "builtins.frozenset"}
    | {f"torch.{s}" for s in _STORAGES}
    | {f"torch.{d}" for d in _DTYPES}
)

_STRING_OPS = {"STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE",
               "BINUNICODE8"}
_PUT_OPS = {"PUT", "BINPUT", "LONG_BINPUT"}
_GET_OPS = {"GET", "BINGET", "LONG_BINGET"}


def pickle_globals(data: bytes, *, pickles: int = 1) -> list[str]:
    """The globals (``module.name``) the first ``pickles`` pickles in ``data`` import.

    Walks opcodes only.  A ``STACK_GLOBAL`` whose operands are not plain
    strings pushed just before it is reported as ``"<unknown>"`` (fail closed).

    Raises:
        ConvertError: the bytes are not a well-formed pickle.
    """
    found: list[str] = []
    stream = io.BytesIO(data)
    for _ in range(pickles):
        memo: dict = {}
        recent: list = []
        try:
            for op, arg, _pos in pickletools.genops(stream):
                name = op.name
                if name == "GLOBAL" or name == "INST":
                    found.append(str(arg).replace(" ", "."))
                    recent.append(None)
                elif name == "STACK_GLOBAL":
                    mod, qual = (recent[-2], recent[-1]) if len(recent) >= 2 else (None, None)
                    if isinstance(mod, str) and isinstance(qual, str):
                        found.append(f"{mod}.{qual}")
                    else:
                        found.append("<unknown>")
                    recent.append(None)
                elif name in _STRING_OPS:
                    recent.append(arg if isinstance(arg, str) else None)
                elif name == "MEMOIZE":
                    memo[len(memo)] = recent[-1] if recent else None
                elif name in _PUT_OPS:
                    memo[arg] = recent[-1] if recent else None
                elif name in _GET_OPS:
                    recent.append(memo.get(arg))
                elif op.stack_after:
                    recent.append(None)  # anything else pushed: not a plain string
                del recent[:-2]
        except (ValueError, EOFError, struct.error, UnicodeDecodeError) as exc:
            raise ConvertError(f"corrupt pickle: {exc}") from None
        if stream.tell() >= len(data):
            break
    return found


def scan_pickle(data: bytes, what: str, *, pickles: int = 1) -> None:
    """Refuse a pickle that would import anything outside :data:`ALLOWED_GLOBALS`.

    Raises:
        UnsafePickleError: naming the first offending global (nothing was executed).
    """
    for name in pickle_globals(data, pickles=pickles):
        if name not in ALLOWED_GLOBALS:
            hint = ""
            if name.startswith("torch.nn.modules."):
                hint = " (a pickled nn.Module: save model.state_dict() instead)"
            raise UnsafePickleError(
                f"{what}: refusing to load a pickle that would call or build {name}{hint}; only "
                "state dicts of tensors are read, and the pickle was not executed")

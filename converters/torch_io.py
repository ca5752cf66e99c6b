"""torch tensors and checkpoints <-> numpy storage arrays (torch is imported lazily).

* :func:`tensor_to_numpy` / :func:`numpy_to_tensor` -- one tensor, exact bits
  (bfloat16 travels as its uint16 bit patterns, because numpy has no bfloat16).
* :func:`find_aliases` -- tensors that share storage: exact aliases (tied
  weights: same storage, offset, shape, strides and dtype) are stored once;
  partial overlaps are reported and stored as separate copies.
* :func:`load_checkpoint` -- a ``.pt``/``.pth``/``.bin`` state dict, checked
  before it is loaded (zip sizes, pickle globals) and then loaded with
  ``torch.load(weights_only=True, mmap=True)``.
"""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from typing import Mapping

import numpy as np

from dcfmt.dtypes import DType

from .errors import ConvertError, ConvertLimitError, UnsafePickleError, UnsupportedInputError
from .safety import DEFAULT_CONVERT_LIMITS, ConvertLimits, check_zip, scan_pickle

__all__ = [
    "require_torch",
    "tensor_to_numpy",
    "numpy_to_tensor",
    "find_aliases",
    "load_checkpoint",
    "state_dict_of",
]

#: Keys under which training checkpoints commonly nest the model's state dict.
NESTED_KEYS = ("state_dict", "model_state_dict", "model", "module")


def require_torch():
    """Import torch, or raise UnsupportedInputError saying how to install it."""
    try:
        import torch
    except ImportError:  # pragma: no cover - depends on the environment
        raise UnsupportedInputError("this conversion needs torch: pip install torch "
                                    "(or pip install 'dcfmt[torch]')") from None
    return torch


def _dtype_table(torch) -> dict:
    return {
        torch.float32: DType.FLOAT32, torch.float64: DType.FLOAT64, torch.float16: DType.FLOAT16,
        torch.bfloat16: DType.BFLOAT16, torch.int8: DType.INT8, torch.int16: DType.INT16,
        torch.int32: DType.INT32, torch.int64: DType.INT64, torch.uint8: DType.UINT8,
        torch.bool: DType.BOOL, torch.uint16: DType.UINT16, torch.uint32: DType.UINT32,
        torch.uint64: DType.UINT64,
    }


def torch_dtype(dtype: DType):
    """The torch dtype of a .dcz element type."""
    torch = require_torch()
    return {v: k for k, v in _dtype_table(torch).items()}[dtype]


def tensor_to_numpy(t, name: str = "tensor") -> tuple[np.ndarray, DType]:
    """A CPU, C-contiguous numpy array with the exact bits of ``t``, and its DType.

    Non-contiguous tensors (transposes, slices) are copied into C order;
    contiguous CPU tensors are shared, not copied.  bfloat16 comes back as a
    uint16 array of bit patterns with ``DType.BFLOAT16``.

    Raises:
        UnsupportedInputError: fp8, complex, quantized, sparse or meta tensors.
    """
    torch = require_torch()
    if not isinstance(t, torch.Tensor):
        raise UnsupportedInputError(f"{name!r} is a {type(t).__name__}, not a tensor")
    if t.layout != torch.strided:
        raise UnsupportedInputError(f"tensor {name!r} has layout {t.layout}; only dense (strided) "
                                    "tensors can be stored (call .to_dense() first)")
    if t.is_quantized:
        raise UnsupportedInputError(f"tensor {name!r} is a quantized torch tensor ({t.dtype}); "
                                    "dequantize it first")
    if t.device.type == "meta":
        raise UnsupportedInputError(f"tensor {name!r} is on the meta device and has no data")
    dt = _dtype_table(torch).get(t.dtype)
    if dt is None:
        raise UnsupportedInputError(
            f"tensor {name!r} has dtype {str(t.dtype).replace('torch.', '')}, which .dcz cannot store "
            "(supported: " + ", ".join(d.label for d in DType) + "); fp8 and complex tensors must be "
            "converted first")
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    if t.is_conj():
        t = t.resolve_conj()
    if t.is_neg():
        t = t.resolve_neg()
    if not t.is_contiguous():
        t = t.contiguous()
    if dt is DType.BFLOAT16:
        return t.view(torch.int16).numpy().view(np.uint16), dt
    return t.numpy(), dt


def numpy_to_tensor(array: np.ndarray, dtype: DType):
    """A torch tensor (owning its memory) with the exact bits of a decoded array."""
    torch = require_torch()
    arr = np.asarray(array)
    if dtype is DType.BFLOAT16:
        bits = np.array(arr.view(np.uint16) if arr.dtype.itemsize == 2 else arr, dtype=np.uint16,
                        order="C", copy=True)
        return torch.from_numpy(bits.view(np.int16)).view(torch.bfloat16)
    native = dtype.storage.newbyteorder("=")
    return torch.from_numpy(np.array(arr, dtype=native, order="C", copy=True))


def find_aliases(state: Mapping) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """Tensors of ``state`` that share memory.

    Returns:
        ``(aliases, overlaps)``: ``aliases`` maps each name that is an exact
        alias (same storage, byte offset, shape, strides, dtype) of an earlier
        name to that earlier name; ``overlaps`` lists pairs of tensors that
        share some bytes without being aliases (they are stored as copies).
    """
    torch = require_torch()
    groups: dict = {}
    for name, t in state.items():
        if not isinstance(t, torch.Tensor) or t.numel() == 0 or t.layout != torch.strided \
                or t.device.type == "meta":
            continue
        storage = t.untyped_storage()
        key = (t.device.type, t.device.index, storage.data_ptr())
        groups.setdefault(key, []).append(name)
    aliases: dict[str, str] = {}
    overlaps: list[tuple[str, str]] = []
    for names in groups.values():
        if len(names) < 2:
            continue
        seen: list[tuple[str, tuple, tuple[int, int]]] = []
        for name in names:
            t = state[name]
            item = t.element_size()
            lo = t.storage_offset() * item
            extent = 1 + sum((d - 1) * abs(s) for d, s in zip(t.shape, t.stride()))
            sig = (lo, tuple(t.shape), tuple(t.stride()), t.dtype)
            span = (lo, lo + extent * item)
            target = next((other for other, osig, _ in seen if osig == sig), None)
            if target is not None:
                aliases[name] = target
                continue
            overlaps += [(other, name) for other, _, ospan in seen
                         if span[0] < ospan[1] and ospan[0] < span[1]]
            seen.append((name, sig, span))
    return aliases, overlaps


def state_dict_of(obj, what: str = "object") -> tuple[dict, list[str]]:
    """The flat ``name -> tensor`` mapping inside ``obj`` and notes about what was skipped.

    Accepts an ``nn.Module`` (its ``state_dict()``), a flat mapping of
    tensors, or a training checkpoint that nests one under ``state_dict``,
    ``model_state_dict``, ``model`` or ``module`` (its other entries --
    epoch, optimizer state -- are skipped and named in the notes).

    Raises:
        UnsupportedInputError: no such mapping, or non-string keys / non-tensor values.
    """
    torch = require_torch()
    if isinstance(obj, torch.nn.Module):
        return dict(obj.state_dict()), []
    if not isinstance(obj, Mapping):
        raise UnsupportedInputError(f"{what} holds a {type(obj).__name__}, not a state dict "
                                    "(a mapping of names to tensors)")

    def flat_tensors(m: Mapping) -> bool:
        return all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in m.items())

    if flat_tensors(obj):
        return dict(obj), []
    for key in NESTED_KEYS:
        inner = obj.get(key) if all(isinstance(k, str) for k in obj) else None
        if isinstance(inner, Mapping) and inner and flat_tensors(inner):
            skipped = [k for k in obj if k != key]
            notes = [f"{what}: using the state dict under {key!r}; skipped "
                     + ", ".join(repr(k) for k in skipped[:8]) + (" ..." if len(skipped) > 8 else "")]
            return dict(inner), notes if skipped else []
    for k, v in obj.items():
        if not isinstance(k, str):
            raise UnsupportedInputError(f"{what}: state dict key {k!r} is a {type(k).__name__}, "
                                        "not a string")
        if not isinstance(v, torch.Tensor):
            raise UnsupportedInputError(f"{what}: entry {k!r} is a {type(v).__name__}, not a tensor; "
                                        "only state dicts of tensors can be converted")
    raise AssertionError("unreachable")  # pragma: no cover


def _is_zip(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


def load_checkpoint(path: str, limits: ConvertLimits = DEFAULT_CONVERT_LIMITS) -> tuple[dict, list[str]]:
    """Load a torch checkpoint's state dict without ever running code from it.

    Zip checkpoints (torch >= 1.6) have their member sizes checked
    (:func:`~dcfmt.converters.safety.check_zip`) and their pickle scanned
    (:func:`~dcfmt.converters.safety.scan_pickle`) before
    ``torch.load(path, weights_only=True, mmap=True)`` maps them; tensors stay
    backed by the file.  Legacy (pre-zip) pickles are read into memory,
    scanned, and loaded with ``weights_only=True``.

    Returns:
        ``(state_dict, notes)``.

    Raises:
        UnsafePickleError: the pickle references anything but tensor rebuilding.
        ConvertLimitError: the archive declares sizes above ``limits``.
        ConvertError: the file is not a (readable) torch checkpoint.
    """
    torch = require_torch()
    path = os.fspath(path)
    if _is_zip(path):
        infos = check_zip(path, limits)
        pkls = [i for i in infos if i.filename == "data.pkl" or i.filename.endswith("/data.pkl")]
        if len(pkls) != 1:
            raise ConvertError(f"{path}: a zip archive without exactly one data.pkl: not a torch "
                               "checkpoint")
        if pkls[0].file_size > limits.max_pickle_bytes:
            raise ConvertLimitError(f"{path}: data.pkl has {pkls[0].file_size} bytes, above the limit "
                                    f"max_pickle_bytes={limits.max_pickle_bytes}")
        with zipfile.ZipFile(path) as zf:
            data = zf.read(pkls[0])
        scan_pickle(data, path)
        source, mmap = path, True
    else:
        size = os.path.getsize(path)
        if size > limits.max_pickle_bytes:
            raise ConvertLimitError(f"{path}: a legacy (non-zip) torch pickle of {size} bytes, above "
                                    f"the limit max_pickle_bytes={limits.max_pickle_bytes}; re-save it "
                                    "with a current torch")
        with open(path, "rb") as f:
            data = f.read()
        # legacy layout: magic number, protocol, system info, the object, storage keys
        scan_pickle(data, path, pickles=5)
        source, mmap = io.BytesIO(data), False
    try:
        obj = torch.load(source, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if "GLOBAL" in ln or "Unsupported" in ln]
        detail = lines[0] if lines else str(exc).splitlines()[0]
        raise UnsafePickleError(f"{path}: torch refused to load the pickle with weights_only=True "
                                f"({detail}); it was not executed") from None
    except (RuntimeError, EOFError, ValueError, KeyError, AttributeError, TypeError,
            zipfile.BadZipFile, OSError) as exc:
        if isinstance(exc, OSError) and not isinstance(exc, zipfile.BadZipFile) and exc.errno:
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConvertError(f"{path}: not a readable torch checkpoint ({first})") from None
    return state_dict_of(obj, path)

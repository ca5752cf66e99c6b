"""One-shot functions on top of the streaming Writer and Reader."""

from __future__ import annotations

from typing import Mapping

import numpy as np

from .limits import DEFAULT_LIMITS, DecodeLimits
from .reader import Reader
from .record import DEFAULT_OPTIONS, EncodeOptions, TensorCode
from .writer import Writer

__all__ = ["save", "load", "load_metadata", "encode", "decode"]


def save(tensors: Mapping[str, np.ndarray], target, *, plan=None,
         metadata: dict[str, str] | None = None,
         options: EncodeOptions = DEFAULT_OPTIONS) -> list[TensorCode]:
    """Compress ``tensors`` into a .dcz file (atomically when ``target`` is a path).

    Tensors are written sorted by name, so the same tensors and plan give the
    same bytes whatever the order of the mapping.

    Args:
        tensors: name -> array (numpy, or anything ``np.asarray`` accepts).
        target: a path or a binary file object.
        plan: compression plan or its name; default: error-bounded (1 %).
        metadata: user metadata, str -> str.
        options: Huffman stream parameters.

    Returns:
        The TensorCodes written, in file order (with their recipes and errors).

    Example:
        >>> save({"w": np.ones((3, 3), np.float32)}, "w.dcz", plan="lossless")  # doctest: +SKIP
    """
    codes = []
    with Writer(target, metadata=metadata, plan=plan, options=options) as w:
        for name in sorted(tensors):
            codes.append(w.write(name, tensors[name]))
    return codes


def load(source, *, limits: DecodeLimits = DEFAULT_LIMITS) -> dict[str, np.ndarray]:
    """Decode every tensor of a .dcz file (path, bytes or binary file object).

    Returns:
        name -> ndarray, in file order.

    Raises:
        DczError: the file is not a valid .dcz file (nothing is returned).
    """
    with Reader(source, limits=limits) as r:
        return dict(r)


def load_metadata(source, *, limits: DecodeLimits = DEFAULT_LIMITS) -> dict[str, str]:
    """The user metadata of a .dcz file, reading only its first record."""
    with Reader(source, limits=limits) as r:
        return r.metadata


def encode(tensors: Mapping[str, np.ndarray], *, plan=None, metadata=None,
           options: EncodeOptions = DEFAULT_OPTIONS) -> bytes:
    """Like :func:`save` but returns the file as bytes."""
    import io

    buf = io.BytesIO()
    save(tensors, buf, plan=plan, metadata=metadata, options=options)
    return buf.getvalue()


def decode(data: bytes, *, limits: DecodeLimits = DEFAULT_LIMITS) -> dict[str, np.ndarray]:
    """Like :func:`load` for a file held in memory."""
    return load(bytes(data), limits=limits)

"""Conversions between checkpoint formats, one tensor at a time, with a report.

:func:`convert` is what ``dcz convert`` runs; :func:`save_state_dict` and
:func:`load_state_dict` are the torch-facing Python API.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Callable

from dcfmt.plan import Plan, resolve_plan

from .formats import (
    ALIASES_KEY,
    DczSource,
    Source,
    StateDictSource,
    open_sink,
    open_source,
    output_format,
)
from .plans import describe_code
from .safety import DEFAULT_CONVERT_LIMITS, ConvertLimits

__all__ = ["TensorReport", "ConversionReport", "convert", "convert_source", "save_state_dict",
           "load_state_dict"]


@dataclasses.dataclass
class TensorReport:
    """One tensor of a conversion.

    Attributes:
        bytes_in: bytes the tensor takes in the input (its record for .dcz input,
            its raw size otherwise).
        bytes_out: bytes it takes in the output (its record, padding included,
            for .dcz; its raw size, copies for tied names included, otherwise).
        plan: name of the plan that encoded it (.dcz output), or None.
        encoding: what the plan chose, e.g. ``"codebook 64 (6 bit), relative b=4, 9.8% kept"``.
        rel_error / max_abs_error: reconstruction error of a lossy tensor, else None.
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    bytes_in: int
    bytes_out: int
    plan: str | None = None
    encoding: str = ""
    rel_error: float | None = None
    max_abs_error: float | None = None

    @property
    def lossy(self) -> bool:
        return self.rel_error is not None

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["shape"] = list(self.shape)
        return d


@dataclasses.dataclass
class ConversionReport:
    """What :func:`convert` did: per-tensor results, totals and notes."""

    source: str
    target: str
    source_format: str
    target_format: str
    plan: str | None
    tensors: list[TensorReport]
    aliases: dict[str, str]
    notes: list[str]
    input_bytes: int
    output_bytes: int
    tensor_bytes: int
    seconds: float
    verified: bool

    @property
    def ratio(self) -> float:
        """Input bytes / output bytes of the files."""
        return self.input_bytes / self.output_bytes if self.output_bytes else float("inf")

    def to_dict(self) -> dict:
        return {
            "source": self.source, "target": self.target, "source_format": self.source_format,
            "target_format": self.target_format, "plan": self.plan, "input_bytes": self.input_bytes,
            "output_bytes": self.output_bytes, "ratio": self.ratio, "tensor_bytes": self.tensor_bytes,
            "seconds": self.seconds, "verified": self.verified, "aliases": self.aliases,
            "notes": self.notes, "tensors": [t.to_dict() for t in self.tensors],
        }


def convert(source: str, target: str, *, plan=None, source_format: str | None = None,
            target_format: str | None = None, metadata: dict[str, str] | None = None,
            verify: bool = True, progress: Callable[[str, int], None] | None = None,
            limits: ConvertLimits = DEFAULT_CONVERT_LIMITS, options=None) -> ConversionReport:
    """Convert a checkpoint file (or sharded directory) into another format, tensor by tensor.

    Args:
        source: input path (.dcz, .safetensors, .pt/.pth/.bin, .npz, or a
            sharded checkpoint directory); recognised by extension and content.
        target: output path (.dcz, .safetensors, .pt/.pth/.bin or .npz); may
            be ``source`` itself.  Written atomically and verified first.
        plan: compression plan for .dcz output (a :class:`dcfmt.Plan` or a
            name); default: error-bounded, 1 % relative L2 error per tensor.
        source_format / target_format: override format detection.
        metadata: entries added to (or replacing) the input's user metadata.
        verify: re-read the written file and compare every tensor before the
            rename (default).
        progress: called as ``progress(name, nbytes)`` after each tensor.
        limits: bounds for foreign inputs (zip sizes, pickle and header sizes).
        options: :class:`dcfmt.EncodeOptions` for .dcz output (Huffman stream parameters).

    Returns:
        A :class:`ConversionReport`.

    Raises:
        ConvertError: bad or unsafe input, unsupported tensors, failed verification.
        DczError: a .dcz input is invalid.
        OSError: I/O errors.

    Example:
        >>> convert("model.safetensors", "model.dcz", plan="lossless")   # doctest: +SKIP
    """
    fmt = output_format(target, target_format)
    with open_source(source, source_format, limits=limits) as src:
        return convert_source(src, target, fmt, plan=plan, metadata=metadata, verify=verify,
                              progress=progress, options=options)


def convert_source(src: Source, target: str, fmt: str, *, plan=None, metadata=None,
                   verify: bool = True, progress=None, options=None) -> ConversionReport:
    """Write the tensors of an open :class:`~dcfmt.converters.formats.Source` to ``target``."""
    start = time.perf_counter()
    plan_obj: Plan | None = resolve_plan(plan) if fmt == "dcz" else None
    names = src.names()
    meta = src.metadata()
    meta.update(metadata or {})
    meta.pop(ALIASES_KEY, None)  # the sink records the aliases it writes
    infos = [src.info(n) for n in names]
    sink = open_sink(target, fmt, metadata=meta, aliases=src.aliases, infos=infos, plan=plan_obj,
                     verify=verify, options=options)
    reports = []
    try:
        for name in sink.order(names):
            array, dtype = src.read(name)
            written = sink.add(name, array, dtype)
            del array
            info = src.info(name)
            rep = TensorReport(name, dtype.label, info.shape, info.stored_bytes, written.bytes_out)
            code = written.code
            if code is not None:
                recipe = code.recipe
                rep.plan = recipe.plan if recipe is not None and recipe.plan else "lossless"
                rep.encoding = describe_code(code)
                if recipe is not None and recipe.rel_error is not None:
                    rep.rel_error = float(recipe.rel_error)
                    rep.max_abs_error = float(recipe.max_abs_error)
            reports.append(rep)
            del written, code  # a TensorCode can hold a tensor's worth of indices
            if progress is not None:
                progress(name, info.nbytes)
        size = sink.finish()
    except BaseException:
        sink.abort()
        raise
    order = {n: i for i, n in enumerate(names)}
    reports.sort(key=lambda r: order[r.name])
    return ConversionReport(
        source=src.path, target=os.fspath(target), source_format=src.format, target_format=fmt,
        plan=plan_obj.describe() if plan_obj is not None else None, tensors=reports,
        aliases=dict(src.aliases), notes=src.notes + sink.notes, input_bytes=src.input_bytes(),
        output_bytes=size, tensor_bytes=sum(src.info(n).nbytes for n in names),
        seconds=time.perf_counter() - start, verified=verify)


def save_state_dict(state_dict, path: str, *, plan=None, metadata: dict[str, str] | None = None,
                    verify: bool = True) -> ConversionReport:
    """Save a torch ``state_dict`` (or an ``nn.Module``) as a .dcz file.

    Tensors are converted exactly (any dtype .dcz has, bfloat16 included; non-
    contiguous tensors are copied into C order); tied tensors -- names that
    are exact aliases of one storage, like tied embeddings -- are stored once
    and recorded under the metadata key ``dcfmt.aliases``.

    Args:
        state_dict: a mapping of names to tensors, or an ``nn.Module``.
        path: output .dcz path (written atomically, verified first).
        plan: compression plan or name (default: error-bounded, 1 %).
        metadata: user metadata, str -> str.

    Returns:
        A :class:`ConversionReport` (per tensor: encoding, sizes, errors).

    Raises:
        UnsupportedInputError: a tensor is fp8, complex, quantized, sparse or meta.

    Example:
        >>> save_state_dict(model, "model.dcz", plan="paper")         # doctest: +SKIP
        >>> model.load_state_dict(load_state_dict("model.dcz"))        # doctest: +SKIP
    """
    src = StateDictSource(state_dict)
    with src:
        return convert_source(src, path, "dcz", plan=plan, metadata=metadata, verify=verify)


def load_state_dict(path: str, *, device=None, limits=None) -> dict:
    """Load a .dcz file as a ``state_dict`` of torch tensors (``model.load_state_dict`` accepts it).

    Tensors come back with their stored dtype (``torch.bfloat16`` for
    bfloat16) and shape, owning their memory; tied names recorded in
    ``dcfmt.aliases`` map to the same tensor object.

    Args:
        device: move the tensors there (default: CPU).
        limits: :class:`dcfmt.DecodeLimits` for the file.

    Raises:
        DczError: the file is invalid.
    """
    from .torch_io import numpy_to_tensor, require_torch

    require_torch()
    state = {}
    with DczSource(path, limits) as src:
        for name in src.names():
            array, dtype = src.read(name)
            t = numpy_to_tensor(array, dtype)
            state[name] = t.to(device) if device is not None else t
        for alias, target in src.aliases.items():
            state[alias] = state[target]
    return state

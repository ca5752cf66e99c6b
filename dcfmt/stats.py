"""Where the bits went: per-tensor statistics of a .dcz file, like the paper's tables.

:func:`tensor_stats` reads only a record's headers and stream headers (no
decoding), so ``dcz info`` is fast on any file.
"""

from __future__ import annotations

import dataclasses
import math

from .constants import Layout, Values
from .record import TensorRecord

__all__ = ["TensorStats", "tensor_stats"]


@dataclasses.dataclass
class TensorStats:
    """Storage accounting of one tensor.

    ``index_bits`` / ``index_bits_huffman``: bits per codebook index before
    Huffman coding (ceil(log2 k)) and after (stream payload bits per index).
    ``pos_bits`` / ``pos_bits_huffman``: the same for the relative index
    (b, and payload bits per kept element, fillers included).
    """

    name: str
    dtype: str
    shape: tuple
    layout: str
    values: str
    numel: int
    nnz: int
    codebook: int | None
    index_bits: float | None
    index_bits_huffman: float | None
    pos_bits: float | None
    pos_bits_huffman: float | None
    stored_bytes: int
    decoded_bytes: int
    recipe: dict

    @property
    def kept(self) -> float:
        return self.nnz / self.numel if self.numel else 1.0

    @property
    def ratio(self) -> float:
        return self.decoded_bytes / self.stored_bytes if self.stored_bytes else math.inf

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["shape"] = list(self.shape)
        d["kept"] = self.kept
        d["ratio"] = self.ratio
        return d


def tensor_stats(rec: TensorRecord) -> TensorStats:
    """Statistics of a parsed tensor record (nothing is decoded)."""
    k = len(rec.codebook) if rec.values is Values.CODEBOOK else None
    ib = ibh = pb = pbh = None
    nnz = rec.nnz
    if k is not None:
        ib = float(max(1, math.ceil(math.log2(k)))) if k > 1 else 0.0
        ibh = (rec.indices.bit_len / nnz) if (rec.indices is not None and nnz) else 0.0
    if rec.layout is Layout.RELATIVE:
        pb = float(rec.relative.bits)
        pbh = rec.relative.stream.bit_len / nnz if nnz else 0.0
    elif rec.layout is Layout.BITMAP:
        pb = pbh = rec.numel / nnz if nnz else 0.0
    return TensorStats(
        name=rec.name, dtype=rec.dtype.label, shape=rec.shape, layout=rec.layout.name.lower(),
        values=rec.values.name.lower(), numel=rec.numel, nnz=nnz, codebook=k, index_bits=ib,
        index_bits_huffman=ibh, pos_bits=pb, pos_bits_huffman=pbh, stored_bytes=rec.size,
        decoded_bytes=rec.decoded_bytes, recipe=rec.recipe.to_dict() if rec.recipe else {},
    )

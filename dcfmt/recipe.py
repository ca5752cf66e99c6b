"""The per-tensor compression recipe (spec 8): how a tensor was compressed.

The recipe is an optional section: decoders may ignore it, and ``dcz info``
uses it to show, layer by layer, how each tensor was pruned and quantized.  It
is a list of tagged fields (tag u8, length uvar, value); tags ascend, unknown
tags are skipped, so later versions can add fields.
"""

from __future__ import annotations

import dataclasses
import math
import struct

from .binary import Cursor, uvar
from .constants import KMeansInit, PruneMethod, RecipeTag
from .errors import FormatError

__all__ = ["Recipe"]

_F32 = struct.Struct("<f")

# tag -> (attribute, kind)
_FIELDS = {
    RecipeTag.PLAN: ("plan", "text"),
    RecipeTag.PRUNE_METHOD: ("prune_method", "u8"),
    RecipeTag.PRUNE_PARAMETER: ("prune_parameter", "f32"),
    RecipeTag.PRUNE_THRESHOLD: ("prune_threshold", "f32"),
    RecipeTag.KMEANS_INIT: ("kmeans_init", "u8"),
    RecipeTag.KMEANS_ITERATIONS: ("kmeans_iterations", "uvar"),
    RecipeTag.SEED: ("seed", "uvar"),
    RecipeTag.FINETUNED: ("finetuned", "bool"),
    RecipeTag.RETRAINED: ("retrained", "bool"),
    RecipeTag.ERROR_BOUND: ("error_bound", "f32"),
    RecipeTag.REL_ERROR: ("rel_error", "f32"),
    RecipeTag.MAX_ABS_ERROR: ("max_abs_error", "f32"),
}
_ENUMS = {"prune_method": PruneMethod, "kmeans_init": KMeansInit}


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How one tensor was compressed.  Every field is optional (None = not recorded).

    Attributes:
        plan: name of the plan that chose the encoding ("lossless", "paper", ...).
        prune_method: PruneMethod used (or an int for a value this version does not know).
        prune_parameter: the method's parameter (threshold, quality q, or sparsity).
        prune_threshold: magnitude threshold actually applied.
        kmeans_init: KMeansInit of the codebook.
        kmeans_iterations: Lloyd iterations run.
        seed: random seed of the clustering.
        finetuned: centroids were trained after clustering.
        retrained: the pruned network was retrained.
        error_bound: relative L2 error the plan allowed.
        rel_error: relative L2 error of the reconstruction, ||w - w'|| / ||w||.
        max_abs_error: largest absolute error of the reconstruction.
    """

    plan: str | None = None
    prune_method: PruneMethod | int | None = None
    prune_parameter: float | None = None
    prune_threshold: float | None = None
    kmeans_init: KMeansInit | int | None = None
    kmeans_iterations: int | None = None
    seed: int | None = None
    finetuned: bool | None = None
    retrained: bool | None = None
    error_bound: float | None = None
    rel_error: float | None = None
    max_abs_error: float | None = None

    def to_bytes(self) -> bytes:
        """Serialize the recorded fields as a RECIPE section body."""
        out = bytearray()
        for tag, (attr, kind) in sorted(_FIELDS.items()):
            value = getattr(self, attr)
            if value is None:
                continue
            if kind == "text":
                raw = str(value).encode("utf-8")
            elif kind == "u8":
                raw = bytes([int(value)])
            elif kind == "bool":
                raw = bytes([1 if value else 0])
            elif kind == "uvar":
                raw = uvar(int(value))
            else:
                raw = _F32.pack(_to_f32(float(value)))
            out += bytes([tag]) + uvar(len(raw)) + raw
        return bytes(out)

    @classmethod
    def parse(cls, cur: Cursor) -> "Recipe":
        """Parse a RECIPE section body (rules RCP-1..RCP-3); unknown tags are skipped."""
        fields = {}
        last = 0
        while cur.remaining:
            at = cur.pos
            tag = cur.u8("recipe tag")
            if tag <= last:
                raise cur.fail(FormatError, f"recipe tag {tag} after tag {last}: tags must ascend",
                               "RCP-1", at)
            last = tag
            length = cur.uvar("recipe field length")
            if length > cur.remaining:  # spec 8: a field running past its section is RCP-2
                raise cur.fail(FormatError, f"recipe field {tag} declares {length} bytes, only "
                               f"{cur.remaining} remain in the section", "RCP-2", at)
            raw = cur.take(length, f"recipe field {tag}")
            spec = _FIELDS.get(tag)
            if spec is None:
                continue
            attr, kind = spec
            # fast paths for well-formed fixed-size fields; anything else goes
            # through a Cursor, which raises the located errors
            if kind == "f32" and length == 4:
                (fields[attr],) = _F32.unpack(raw)
                continue
            if kind == "bool" and length == 1 and raw[0] <= 1:
                fields[attr] = bool(raw[0])
                continue
            value = Cursor(raw, cur.base + cur.pos - length,
                           overrun=FormatError, overrun_rule="RCP-2", tensor=cur.tensor)
            if kind == "text":
                fields[attr] = value.text(length, "recipe plan name", "RCP-2")
            elif kind in ("u8", "bool"):
                v = value.u8(f"recipe field {attr}")
                if kind == "bool":
                    if v > 1:
                        raise value.fail(FormatError, f"recipe field {attr} is {v}, not 0 or 1",
                                         "RCP-3", 0)
                    fields[attr] = bool(v)
                else:
                    enum = _ENUMS[attr]
                    fields[attr] = enum(v) if v in enum._value2member_map_ else v
            elif kind == "uvar":
                fields[attr] = value.uvar(f"recipe field {attr}")
            else:
                (fields[attr],) = _F32.unpack(bytes(value.take(4, f"recipe field {attr}")))
            value.done(f"recipe field {attr}", "RCP-2")
        return cls(**fields)

    def to_dict(self) -> dict:
        """JSON-friendly dict of the recorded fields (enums by lower-case name)."""
        out = {}
        for attr, _ in _FIELDS.values():
            value = getattr(self, attr)
            if value is None:
                continue
            if hasattr(value, "name"):
                value = value.name.lower()
            elif isinstance(value, float) and not math.isfinite(value):
                value = repr(value)
            out[attr] = value
        return out


def _to_f32(value: float) -> float:
    """Clamp to the float32 range so packing never raises."""
    if math.isnan(value) or math.isinf(value):
        return value
    limit = 3.4028234663852886e38
    return max(-limit, min(limit, value))

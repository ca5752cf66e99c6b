"""Every constant of the .dcz format, in one place.

This module mirrors the tables of ``spec/dcz.md``; each group names the section
it comes from.  Code elsewhere imports these names instead of repeating numbers.
"""

from __future__ import annotations

import enum

# --- spec 3.1 File header ----------------------------------------------------
MAGIC = b"\x89DCZ\r\n\x1a\n"
FILE_HEADER_SIZE = 16
VERSION_MAJOR = 1
VERSION_MINOR = 1
#: Header flag bits 0-7 name critical file features (none in 1.0): a reader
#: must reject a file that sets one it does not know.  Bits 8-15 name optional
#: features: unknown ones are ignored.
HEADER_CRITICAL_MASK = 0x00FF
HEADER_KNOWN_FLAGS = 0x0000

# --- spec 3.6 Trailer ----------------------------------------------------------
TRAILER_SIZE = 16
END_MAGIC = b"DCZE"

# --- spec 3.2 Records ----------------------------------------------------------
#: Records that hold a dense raw payload start at a multiple of this.
ALIGNMENT = 64
#: A dense raw payload is aligned only if it has at least this many bytes.
ALIGN_MIN_PAYLOAD = 64
CRC_SIZE = 4


class RecordKind(enum.IntEnum):
    """Record kinds (spec 3.2, table "Record kinds")."""

    TENSOR = 1
    METADATA = 2
    INDEX = 3


#: Record flag bits (spec 3.2).
RECORD_OPTIONAL = 0x01
RECORD_ALIGNED = 0x02
RECORD_KNOWN_FLAGS = RECORD_OPTIONAL | RECORD_ALIGNED


class SectionKind(enum.IntEnum):
    """Section kinds inside a tensor record, in the order they must appear (spec 4.2)."""

    RECIPE = 1
    RELATIVE = 2
    BITMAP = 3
    CODEBOOK = 4
    INDICES = 5
    RAW = 6
    # 7 is never assigned: conformance vectors use it as an unknown critical kind
    GROUPED_INDICES = 8  # format 1.1


#: Section flag bits (spec 4.2).
SECTION_OPTIONAL = 0x01
SECTION_KNOWN_FLAGS = SECTION_OPTIONAL
#: The only known section that is optional: decoders may ignore it.
OPTIONAL_SECTIONS = frozenset({SectionKind.RECIPE})


class Layout(enum.IntEnum):
    """Which elements are stored (spec 4.1)."""

    DENSE = 0
    RELATIVE = 1
    BITMAP = 2


class Values(enum.IntEnum):
    """How stored elements are represented (spec 4.1)."""

    RAW = 0
    CODEBOOK = 1


# --- spec 5 Huffman streams -----------------------------------------------------
#: Longest code length a stream may use; bounds decoder tables to 2**16 entries.
MAX_CODE_LENGTH = 16
MAX_ALPHABET = 1 << MAX_CODE_LENGTH
MIN_CHUNK_LOG = 4
MAX_CHUNK_LOG = 24
#: Encoder defaults: 1024-symbol chunks cost 32/1024 = 0.03 bits per symbol in
#: offsets; a 12-bit cap keeps decode tables in L1 and costs 0.1-0.4 % in size.
DEFAULT_CHUNK_LOG = 10
DEFAULT_MAX_CODE_LENGTH = 12
#: Grouped index streams (spec 7.4) have up to 256 symbols: a 14-bit cap costs
#: them ~0.05 %, where 12 bits would cost ~0.4 %.
DEFAULT_GROUP_MAX_CODE_LENGTH = 14

# --- spec 6 Sparse positions ------------------------------------------------------
MIN_INDEX_BITS = 1
MAX_INDEX_BITS = 16

# --- spec 7 Codebooks -----------------------------------------------------------
MAX_CODEBOOK = 1 << 16

# --- spec 3.3 Tensor header ---------------------------------------------------------
MAX_RANK = 32

# --- spec 8 Recipe -----------------------------------------------------------------


class RecipeTag(enum.IntEnum):
    """Recipe field tags (spec 8, table "Recipe fields")."""

    PLAN = 1
    PRUNE_METHOD = 2
    PRUNE_PARAMETER = 3
    PRUNE_THRESHOLD = 4
    KMEANS_INIT = 5
    KMEANS_ITERATIONS = 6
    SEED = 7
    FINETUNED = 8
    RETRAINED = 9
    ERROR_BOUND = 10
    REL_ERROR = 11
    MAX_ABS_ERROR = 12


class PruneMethod(enum.IntEnum):
    """How a tensor was pruned (spec 8)."""

    NONE = 0
    THRESHOLD = 1
    QUALITY = 2
    SPARSITY = 3
    MASK = 4


class KMeansInit(enum.IntEnum):
    """Centroid initialisation of the k-means that built a codebook (spec 8)."""

    LINEAR = 0
    DENSITY = 1
    RANDOM = 2

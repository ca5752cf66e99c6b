"""dcfmt: the .dcz format for Deep Compression weights, and its reference codec.

Pruned, weight-shared and Huffman-coded tensors in a versioned, checksummed,
streamable container (specification: ``spec/dcz.md``).  The core depends only
on numpy and bitarray, so a device can decode without torch.

Quick use::

    import dcfmt
    dcfmt.save({"fc1.weight": w}, "model.dcz")          # error-bounded plan, 1 %
    tensors = dcfmt.load("model.dcz")
    for name, array in dcfmt.Reader(pipe):                # streaming, bounded memory
        ...
"""

from .api import decode, encode, load, load_metadata, save
from .constants import Layout, Values
from .dtypes import DType
from .errors import (
    ChecksumError,
    DczError,
    EncodeError,
    FormatError,
    LimitError,
    TruncatedError,
    UnsupportedFeatureError,
    VersionError,
)
from .lazy import LazyFile, open
from .limits import DEFAULT_LIMITS, DecodeLimits
from .plan import ErrorBoundedPlan, FixedPlan, LosslessPlan, PaperPlan, Plan, RulePlan, resolve_plan
from .reader import Reader
from .recipe import Recipe
from .record import EncodeOptions, TensorCode
from .validate import Finding, Report, validate
from .writer import Writer

__version__ = "0.1.0"
FORMAT_VERSION = (1, 1)  # the newest .dcz version this package reads and writes

__all__ = [
    "save", "load", "load_metadata", "encode", "decode", "open", "LazyFile",
    "validate", "Report", "Finding",
    "Writer", "Reader",
    "Plan", "LosslessPlan", "ErrorBoundedPlan", "PaperPlan", "FixedPlan", "RulePlan", "resolve_plan",
    "TensorCode", "Recipe", "EncodeOptions", "DType", "Layout", "Values",
    "DecodeLimits", "DEFAULT_LIMITS",
    "DczError", "FormatError", "TruncatedError", "ChecksumError", "VersionError",
    "UnsupportedFeatureError", "LimitError", "EncodeError",
    "FORMAT_VERSION", "__version__",
]

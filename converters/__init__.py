"""Bridges between .dcz and the ecosystem: torch checkpoints and modules, safetensors, npz.

Installed as ``dcfmt.converters``.  torch and safetensors are imported lazily,
only here (and in training code), so the core package decodes without them.

Python API::

    from dcfmt.converters import convert, save_state_dict, load_state_dict

    convert("model.safetensors", "model.dcz")                 # error-bounded, 1 %
    convert("model.dcz", "model.safetensors")                 # and back
    save_state_dict(model, "model.dcz", plan="paper")         # nn.Module or state dict
    model.load_state_dict(load_state_dict("model.dcz"))

Command line: ``dcz convert IN OUT`` (see :mod:`dcfmt.converters.cli`).
Formats, tied tensors and verification: :mod:`dcfmt.converters.formats`;
plan files: :mod:`dcfmt.converters.plans`; what is checked before a foreign
file is loaded: :mod:`dcfmt.converters.safety`.
"""

from .convert import ConversionReport, TensorReport, convert, load_state_dict, save_state_dict
from .errors import (
    ConvertError,
    ConvertLimitError,
    UnsafePickleError,
    UnsupportedInputError,
    VerificationError,
)
from .formats import ALIASES_KEY, FORMATS, detect_input, open_source
from .plans import IndexBitsPlan, PlanError, load_plan_file, plan_from_spec
from .safety import ConvertLimits

__all__ = [
    "convert", "save_state_dict", "load_state_dict", "ConversionReport", "TensorReport",
    "open_source", "detect_input", "FORMATS", "ALIASES_KEY",
    "plan_from_spec", "load_plan_file", "IndexBitsPlan", "ConvertLimits",
    "ConvertError", "ConvertLimitError", "UnsupportedInputError", "UnsafePickleError",
    "VerificationError", "PlanError",
]

"""Compression plans for conversions: plan specs, TOML plan files, per-tensor summaries.

A *plan spec* is a dict naming a plan and its options; :func:`plan_from_spec`
turns it into a :class:`dcfmt.Plan`.  The CLI options and each rule of a TOML
plan file are plan specs.

TOML plan file (``dcz convert --plan rules.toml``)::

    # rules are tried in order; the first whose glob matches the tensor name decides
    [default]                      # optional; tensors no rule matches (default: error-bounded)
    plan = "error-bounded"
    max_error = 0.01

    [[rule]]
    match = "*.bias"               # an fnmatch glob, or a list of globs
    plan = "lossless"

    [[rule]]
    match = ["features.*.weight"]
    plan = "fixed"                 # one codebook size for every matched float tensor
    bits = 8
    quality = 0.7                  # prune |w| <= 0.7 * std(w) first (or sparsity / threshold)

    [[rule]]
    match = "classifier.*"
    plan = "paper"                 # 4-D conv 8 bit, 2-D fc 5 bit, other ranks lossless
    fc_bits = 4
    sparsity = 0.9
    index_bits = 5                 # relative-index width for sparse tensors

Keys per plan (all optional except ``plan``):

=================  ==========================================================================
``lossless``       ``index_bits``
``error-bounded``  ``max_error`` (0.01), ``max_bits`` (8), ``prune`` (true), ``codebook_dtype``,
                   ``index_bits``
``paper``          ``conv_bits`` (8), ``fc_bits`` (5), ``bits`` (sets both), one of
                   ``quality`` / ``sparsity`` / ``threshold``, ``init`` ("linear",
                   "density", "random"), ``seed``, ``codebook_dtype``, ``min_numel``,
                   ``index_bits``
``fixed``          ``bits`` (5), one of ``quality`` / ``sparsity`` / ``threshold``, ``init``,
                   ``seed``, ``codebook_dtype``, ``min_numel``, ``index_bits``
=================  ==========================================================================

``index_bits`` (1..16) forces the relative-index width b of every tensor the
plan stores sparsely (the encoder otherwise picks the b that makes each tensor
smallest; bitmap-coded tensors switch to the relative index; dense tensors
have no index and are unaffected).  Unknown keys, wrong types and values out of
range are errors.
"""

from __future__ import annotations

import dataclasses
import math
import os

from dcfmt.constants import MAX_INDEX_BITS, MIN_INDEX_BITS, Layout, Values
from dcfmt.plan import ErrorBoundedPlan, FixedPlan, LosslessPlan, PaperPlan, Plan, RulePlan

from .errors import ConvertError

__all__ = ["PlanError", "IndexBitsPlan", "plan_from_spec", "load_plan_file", "describe_code",
           "PLAN_KEYS"]


class PlanError(ConvertError):
    """A plan specification or plan file is invalid (a usage error on the command line)."""


_PRUNE = ("quality", "sparsity", "threshold")
_COMMON_FIXED = ("init", "seed", "codebook_dtype", "min_numel", "index_bits") + _PRUNE

#: Keys each plan accepts in a plan spec (besides ``plan``).
PLAN_KEYS = {
    "lossless": ("index_bits",),
    "error-bounded": ("max_error", "max_bits", "prune", "codebook_dtype", "index_bits"),
    "paper": ("conv_bits", "fc_bits", "bits") + _COMMON_FIXED,
    "fixed": ("bits",) + _COMMON_FIXED,
}

_TYPES = {
    "max_error": (float, int), "max_bits": int, "prune": bool, "codebook_dtype": str,
    "index_bits": int, "conv_bits": int, "fc_bits": int, "bits": int, "quality": (float, int),
    "sparsity": (float, int), "threshold": (float, int), "init": str, "seed": int, "min_numel": int,
}


@dataclasses.dataclass
class IndexBitsPlan(Plan):
    """Run ``inner`` and store every sparse tensor with relative-index width ``index_bits``.

    The decoded values are unchanged: only how the kept positions are coded.
    """

    inner: Plan
    index_bits: int

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.inner.name

    def describe(self) -> str:
        return f"{self.inner.describe()}, relative index {self.index_bits} bit"

    def encode(self, name, storage, dtype):
        code = self.inner.encode(name, storage, dtype)
        if code.layout is not Layout.DENSE:
            code.layout = Layout.RELATIVE
            code.index_bits = self.index_bits
        return code


def _check(spec: dict, where: str) -> str:
    plan = spec.get("plan")
    if not isinstance(plan, str) or plan not in PLAN_KEYS:
        raise PlanError(f"{where}: plan must be one of {', '.join(PLAN_KEYS)}, got {plan!r}")
    allowed = PLAN_KEYS[plan]
    for key, value in spec.items():
        if key == "plan":
            continue
        if key not in allowed:
            raise PlanError(f"{where}: {key!r} is not an option of the {plan} plan (options: "
                            f"{', '.join(allowed)})")
        want = _TYPES[key]
        if isinstance(value, bool) and want is not bool or not isinstance(value, want):
            raise PlanError(f"{where}: {key} must be "
                            f"{'a number' if want == (float, int) else want.__name__}, "
                            f"got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise PlanError(f"{where}: {key} must be finite, got {value!r}")
    given = [k for k in _PRUNE if k in spec]
    if len(given) > 1:
        raise PlanError(f"{where}: give at most one of quality, sparsity and threshold, got "
                        f"{' and '.join(given)}")
    ranges = {"max_error": (0.0, math.inf), "max_bits": (1, 16), "conv_bits": (1, 16),
              "fc_bits": (1, 16), "bits": (1, 16), "sparsity": (0.0, 1.0),
              "quality": (0.0, math.inf), "threshold": (0.0, math.inf), "seed": (0, 2**63 - 1),
              "min_numel": (0, 2**63 - 1), "index_bits": (MIN_INDEX_BITS, MAX_INDEX_BITS)}
    for key, (lo, hi) in ranges.items():
        if key in spec and not lo <= spec[key] <= hi:
            raise PlanError(f"{where}: {key} must be in [{lo}, {hi}], got {spec[key]!r}")
    if "init" in spec and spec["init"] not in ("linear", "density", "random"):
        raise PlanError(f"{where}: init must be linear, density or random, got {spec['init']!r}")
    if "codebook_dtype" in spec and spec["codebook_dtype"] not in ("float16", "bfloat16", "float32"):
        raise PlanError(f"{where}: codebook_dtype must be float16, bfloat16 or float32, got "
                        f"{spec['codebook_dtype']!r}")
    return plan


def plan_from_spec(spec: dict, where: str = "plan") -> Plan:
    """A :class:`dcfmt.Plan` from a plan spec such as ``{"plan": "fixed", "bits": 4}``.

    Raises:
        PlanError: unknown plan or key, wrong type, value out of range.

    Example:
        >>> plan_from_spec({"plan": "error-bounded", "max_error": 0.005}).max_error
        0.005
    """
    spec = dict(spec)
    kind = _check(spec, where)
    index_bits = spec.pop("index_bits", None)
    spec.pop("plan")
    pruning = {k: float(spec.pop(k)) for k in _PRUNE if k in spec}
    if kind == "lossless":
        plan: Plan = LosslessPlan()
    elif kind == "error-bounded":
        plan = ErrorBoundedPlan(max_error=float(spec.get("max_error", 0.01)),
                                max_bits=spec.get("max_bits", 8),
                                allow_pruning=spec.get("prune", True),
                                codebook_dtype=spec.get("codebook_dtype"))
    else:
        common = dict(init=spec.get("init", "linear"), seed=spec.get("seed", 0),
                      codebook_dtype=spec.get("codebook_dtype"), min_numel=spec.get("min_numel", 1),
                      **pruning)
        if kind == "paper":
            bits = spec.get("bits")
            plan = PaperPlan(conv_bits=spec.get("conv_bits", bits or 8),
                             fc_bits=spec.get("fc_bits", bits or 5), **common)
        else:
            plan = FixedPlan(bits=spec.get("bits", 5), **common)
    if index_bits is not None:
        plan = IndexBitsPlan(plan, index_bits)
    return plan


def load_plan_file(path: str, default: Plan | None = None) -> Plan:
    """Read a TOML plan file (schema in this module's docstring) into a :class:`dcfmt.RulePlan`.

    Args:
        default: the plan for unmatched tensors when the file has no
            ``[default]`` table (error-bounded, 1 %, if None).

    Raises:
        PlanError: the file is not valid TOML or breaks the schema.
        OSError: the file cannot be read.
    """
    import tomllib

    with open(path, "rb") as f:
        try:
            doc = tomllib.load(f)
        except tomllib.TOMLDecodeError as exc:
            raise PlanError(f"{path}: invalid TOML ({exc})") from None
    unknown = set(doc) - {"default", "rule"}
    if unknown:
        raise PlanError(f"{path}: unknown top-level key(s) {', '.join(sorted(unknown))} (expected "
                        "[default] and [[rule]] tables)")
    base = doc.get("default")
    if base is None:
        default_plan = default or ErrorBoundedPlan()
    elif isinstance(base, dict):
        default_plan = plan_from_spec(base, f"{path}: [default]")
    else:
        raise PlanError(f"{path}: default must be a table, e.g. [default] plan = \"lossless\"")
    rules = doc.get("rule", [])
    if not isinstance(rules, list) or not all(isinstance(r, dict) for r in rules):
        raise PlanError(f"{path}: rules are [[rule]] tables")
    pairs = []
    for i, rule in enumerate(rules, 1):
        where = f"{path}: rule {i}"
        rule = dict(rule)
        match = rule.pop("match", None)
        globs = [match] if isinstance(match, str) else match
        if not isinstance(globs, list) or not globs or not all(isinstance(g, str) and g
                                                                 for g in globs):
            raise PlanError(f"{where}: match must be a glob or a non-empty list of globs")
        plan = plan_from_spec(rule, where)
        pairs += [(g, plan) for g in globs]
    return RulePlan(pairs, default=default_plan)


def describe_code(code) -> str:
    """What a plan chose for one tensor, e.g. ``"codebook 64, relative b=4, 12.0% kept"``."""
    parts = []
    if code.values is Values.CODEBOOK:
        parts.append(f"codebook {len(code.codebook)}")
    else:
        parts.append("raw")
    if code.layout is Layout.RELATIVE:
        parts.append(f"relative b={code.index_bits}")
    elif code.layout is Layout.BITMAP:
        parts.append("bitmap")
    numel = code.numel
    if code.layout is not Layout.DENSE and numel:
        parts.append(f"{100 * code.nnz / numel:.1f}% kept")
    elif code.recipe is not None and code.recipe.prune_threshold and code.values is Values.CODEBOOK:
        parts.append("pruned to a zero centroid")
    return ", ".join(parts)


def is_plan_file(value: str) -> bool:
    """Whether a ``--plan`` value names a TOML file rather than a plan."""
    return value.lower().endswith(".toml") or os.sep in value or "/" in value

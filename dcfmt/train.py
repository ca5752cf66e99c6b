"""Deep Compression training in torch: prune, retrain, share weights, fine-tune, save.

The pieces plug into any training loop; none of them owns the loop.

* :class:`Pruner` -- magnitude pruning per layer (``quality x std``, a
  threshold, or a target sparsity), with masks that hold pruned weights at
  exactly zero through retraining: gradients are masked, and after every
  optimizer step the pruned weights (and their optimizer state: momentum,
  Adam moments) are zeroed again, so neither momentum nor weight decay can
  revive them.  :func:`sparsity_schedule` gives iterative schedules.
* :func:`share_weights` -- weight sharing (trained quantization): a k-means
  codebook per layer (linear initialisation by default, :func:`dcfmt.quantize.kmeans`).
  The layer's weight becomes a parametrization of its centroids: the forward
  pass gathers ``C[label]`` into the kept positions (pruned weights stay 0 and
  belong to no cluster), and the backward pass gives each centroid the sum of
  the gradients of its cluster, ``dL/dC_k = sum_ij dL/dW_ij [I_ij = k]``
  (Han et al. 2016, eq. 3), so the centroids train while the assignments stay
  fixed.  The forward pass uses the centroids rounded to the codebook's
  storage type (float16 by default; the gradient passes straight through),
  so the network that trains is exactly the network that is stored.
* :func:`save` -- write the model to ``.dcz``: shared layers as their exact
  trained codebook and indices (Huffman-coded, the layout chosen by
  :func:`dcfmt.plan.codebook_tensor`), with a recipe that says how they were
  pruned and quantized; everything else losslessly.
* :func:`load_state_dict` / :func:`load_model` -- a ``.dcz`` file back into torch.

This module imports torch; the core :mod:`dcfmt` package never imports it.

Example (a user's own loop)::

    from dcfmt import train as dct

    pruner = dct.Pruner(model)                       # every weight of ndim >= 2
    pruner.attach(optimizer)                         # re-zero after each step
    for sparsity in dct.sparsity_schedule(0.92, steps=3):
        pruner.prune(sparsity=sparsity)              # or quality=1.0, or per-layer dicts
        train(model, optimizer, epochs=5)            # retrain with the masks
    pruner.detach()
    dct.share_weights(model, bits=4, masks=pruner)   # k-means codebooks, linear init
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    train(model, optimizer, epochs=5)                # fine-tunes the centroids
    dct.save(model, "model.dcz", pruner=pruner)      # Huffman-coded .dcz
    dct.load_model(fresh_model, "model.dcz")
"""

from __future__ import annotations

import dataclasses
import math
from typing import Iterable, Mapping

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from .constants import KMeansInit, PruneMethod
from .dtypes import DType, codebook_dtype_allowed
from .plan import codebook_tensor, lossless_tensor, prepare
from .prune import Pruning, prune_mask
from .quantize import kmeans
from .recipe import Recipe
from .record import DEFAULT_OPTIONS, EncodeOptions, TensorCode
from .writer import Writer

__all__ = [
    "Pruner",
    "sparsity_schedule",
    "share_weights",
    "SharedWeight",
    "shared_layers",
    "unshare",
    "encode_model",
    "save",
    "load_state_dict",
    "load_model",
    "logical_state_dict",
]

PLAN_NAME = "train"

_TORCH_TO_DTYPE = {
    torch.float16: DType.FLOAT16,
    torch.bfloat16: DType.BFLOAT16,
    torch.float32: DType.FLOAT32,
    torch.float64: DType.FLOAT64,
}
_DTYPE_TO_TORCH = {v: k for k, v in _TORCH_TO_DTYPE.items()}


def _dtype_of(value) -> DType:
    if isinstance(value, DType):
        return value
    if isinstance(value, torch.dtype):
        try:
            return _TORCH_TO_DTYPE[value]
        except KeyError:
            raise ValueError(f"no .dcz codebook type for {value}") from None
    from .dtypes import from_name

    return from_name(str(value))


# ---------------------------------------------------------------------------
# Locating tensors by their state-dict names
# ---------------------------------------------------------------------------


def _split(name: str) -> tuple[str, str]:
    mod, _, attr = name.rpartition(".")
    return mod, attr


def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    """(module, attribute) of the tensor called ``name`` in ``logical_state_dict(model)``."""
    mod, attr = _split(name)
    module = model.get_submodule(mod) if mod else model
    return module, attr


def _shared_of(module: nn.Module, attr: str) -> "SharedWeight | None":
    """The SharedWeight of ``module.attr`` if it is the tensor's only parametrization."""
    if not parametrize.is_parametrized(module, attr):
        return None
    chain = list(module.parametrizations[attr])
    return chain[0] if len(chain) == 1 and isinstance(chain[0], SharedWeight) else None


def _is_shared(module: nn.Module, attr: str) -> bool:
    return _shared_of(module, attr) is not None


def logical_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's tensors under the names a plain model has (``fc1.weight``).

    Like ``model.state_dict()``, except that a parametrized tensor (a shared
    weight) appears once, as its current value, under its plain name, and the
    parametrization's internals (centroids, labels) are left out.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict(keep_vars=False).items():
        if ".parametrizations." in key or key.startswith("parametrizations."):
            head, _, rest = key.partition("parametrizations.")
            attr = rest.split(".", 1)[0]
            name = head + attr
            if name in out:
                continue
            module = model.get_submodule(head[:-1]) if head else model
            with torch.no_grad():
                out[name] = getattr(module, attr).detach()
        else:
            out[key] = value
    return out


def _default_names(model: nn.Module) -> list[str]:
    """Weights worth compressing: every parameter with 2 or more dimensions."""
    return [n for n, t in logical_state_dict(model).items()
            if t.is_floating_point() and t.dim() >= 2 and n.endswith("weight")]


def _per_layer(value, names: Iterable[str], what: str) -> dict[str, float]:
    """A scalar for every layer, or a dict naming some layers."""
    names = list(names)
    if value is None:
        return {}
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - set(names))
        if unknown:
            raise KeyError(f"{what}: no such prunable tensor {unknown[0]!r} (known: {names})")
        return {n: float(value[n]) for n in names if n in value}
    return {n: float(value) for n in names}


# ---------------------------------------------------------------------------
# Pruning
# ---------------------------------------------------------------------------


def sparsity_schedule(final, steps: int, *, initial: float = 0.0, power: float = 3.0) -> list:
    """Sparsities for iterative pruning: ``steps`` values rising from ``initial`` to ``final``.

    Uses the polynomial schedule of Zhu & Gupta (2017): step ``i`` of ``n`` has
    sparsity ``final + (initial - final) * (1 - i/n) ** power`` (``power=1``
    is linear; 3 prunes fast first, when the network has most redundancy).
    ``final`` may be a dict (per-layer targets); then each step is a dict.

    Example:
        >>> [round(s, 3) for s in sparsity_schedule(0.9, 3)]
        [0.633, 0.867, 0.9]
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")

    def at(i: int, target: float) -> float:
        return target + (initial - target) * (1.0 - i / steps) ** power

    if isinstance(final, Mapping):
        return [{k: at(i, float(v)) for k, v in final.items()} for i in range(1, steps + 1)]
    return [at(i, float(final)) for i in range(1, steps + 1)]


class Pruner:
    """Magnitude pruning with masks that survive retraining.

    Args:
        model: the network.
        names: state-dict names of the tensors to prune (default: every
            floating-point ``*weight`` with 2 or more dimensions, i.e. the
            weights of linear and convolution layers).

    After :meth:`prune`, every pruned weight is exactly 0.0 and its gradient is
    masked (a tensor hook).  :meth:`attach` an optimizer so that after each of
    its steps the pruned weights and the matching entries of its state
    (momentum buffers, Adam moments) are set to zero again: an optimizer
    created before pruning, weight decay or momentum then cannot move them.
    Without an attached optimizer, call :meth:`apply` after each step.

    Pruning is monotone: a weight pruned once stays pruned; a later
    :meth:`prune` only removes more.

    Example:
        >>> pruner = Pruner(model)                                   # doctest: +SKIP
        >>> pruner.prune(quality={"fc1.weight": 1.0, "fc2.weight": 0.8})  # doctest: +SKIP
        >>> pruner.attach(optimizer)                                 # doctest: +SKIP
    """

    def __init__(self, model: nn.Module, names: Iterable[str] | None = None) -> None:
        self.model = model
        self.names = list(names) if names is not None else _default_names(model)
        known = logical_state_dict(model)
        for n in self.names:
            if n not in known:
                raise KeyError(f"no tensor {n!r} in the model")
        self.masks: dict[str, torch.Tensor] = {}
        self.records: dict[str, Pruning] = {}
        self._hooks: dict[str, torch.utils.hooks.RemovableHandle] = {}
        self._hooked: dict[str, torch.Tensor] = {}
        self._optimizers: list = []
        self._steps_since_prune = 0

    # -- pruning ---------------------------------------------------------------
    def prune(self, *, quality=None, sparsity=None, threshold=None) -> dict[str, Pruning]:
        """Prune by one rule; each may be a number (every layer) or a dict (the layers named).

        Args:
            quality: the paper's rule, remove ``|w| <= quality * std(w)`` (std
                of the layer's current weights, pruned zeros included).
            sparsity: remove the smallest-magnitude weights until this fraction
                of the layer is pruned (pruned weights count).
            threshold: remove ``|w| <= threshold``.

        Returns:
            name -> :class:`dcfmt.prune.Pruning` for the layers pruned now
            (``kept`` counts the weights kept after this step).
        """
        rules = [("quality", quality), ("sparsity", sparsity), ("threshold", threshold)]
        given = [(k, v) for k, v in rules if v is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of quality, sparsity and threshold")
        kind, value = given[0]
        done = {}
        for name, param in _per_layer(value, self.names, kind).items():
            module, attr = _owner(self.model, name)
            if _is_shared(module, attr):
                raise RuntimeError(f"{name} is weight-shared already; prune before share_weights")
            weight = getattr(module, attr)
            with torch.no_grad():
                w = weight.detach().to(torch.float64).cpu().numpy()
            keep, rec = prune_mask(w, **{kind: param})
            keep_t = torch.from_numpy(np.ascontiguousarray(keep)).to(weight.device)
            old = self.masks.get(name)
            if old is not None:
                keep_t &= old
            kept = int(keep_t.sum())
            self.masks[name] = keep_t
            self.records[name] = dataclasses.replace(rec, kept=kept)
            self._hook(name, weight)
            done[name] = self.records[name]
        self._steps_since_prune = 0
        self.apply()
        return done

    def set_masks(self, masks: Mapping[str, torch.Tensor], method: PruneMethod = PruneMethod.MASK) -> None:
        """Use given keep-masks (True = kept), e.g. from another pruning algorithm."""
        for name, mask in masks.items():
            if name not in self.names:
                self.names.append(name)
            module, attr = _owner(self.model, name)
            weight = getattr(module, attr)
            m = torch.as_tensor(mask, dtype=torch.bool, device=weight.device).reshape(weight.shape)
            self.masks[name] = m.clone()
            self.records[name] = Pruning(method, 0.0, 0.0, int(m.sum()), m.numel())
            self._hook(name, weight)
        self._steps_since_prune = 0
        self.apply()

    def _hook(self, name: str, weight: torch.Tensor) -> None:
        if self._hooked.get(name) is weight:
            return
        if name in self._hooks:
            self._hooks.pop(name).remove()
        masks = self.masks

        def mask_grad(grad, name=name):
            mask = masks.get(name)
            if mask is None or grad.shape != mask.shape:
                # not pruned, or the parameter became a codebook (share_weights reuses it)
                return grad
            return grad * mask.to(grad.dtype)

        self._hooks[name] = weight.register_hook(mask_grad)
        self._hooked[name] = weight

    # -- holding the zeros -------------------------------------------------------
    @torch.no_grad()
    def apply(self) -> None:
        """Set every pruned weight to exactly zero (shared layers need nothing)."""
        for name, mask in self.masks.items():
            module, attr = _owner(self.model, name)
            if parametrize.is_parametrized(module, attr):
                continue
            getattr(module, attr).masked_fill_(~mask, 0.0)

    @torch.no_grad()
    def _clear_state(self, optimizer) -> None:
        for name, mask in self.masks.items():
            module, attr = _owner(self.model, name)
            if parametrize.is_parametrized(module, attr):
                continue
            state = optimizer.state.get(getattr(module, attr))
            if not state:
                continue
            for value in state.values():
                if torch.is_tensor(value) and value.shape == mask.shape:
                    value.masked_fill_(~mask, 0)

    def _after_step(self, optimizer, *args, **kwargs) -> None:
        self.apply()
        self._clear_state(optimizer)
        self._steps_since_prune += 1

    def attach(self, optimizer: torch.optim.Optimizer):
        """Re-zero pruned weights and their optimizer state after every ``optimizer.step()``.

        Returns the hook handle (``handle.remove()`` detaches this optimizer only).
        """
        self._clear_state(optimizer)
        handle = optimizer.register_step_post_hook(self._after_step)
        self._optimizers.append(handle)
        return handle

    def _unhook(self, name: str) -> None:
        handle = self._hooks.pop(name, None)
        if handle is not None:
            handle.remove()
        self._hooked.pop(name, None)

    def detach(self) -> None:
        """Remove the optimizer hooks and gradient hooks (the masks are kept)."""
        for h in self._optimizers:
            h.remove()
        self._optimizers.clear()
        for h in self._hooks.values():
            h.remove()
        self._hooks.clear()
        self._hooked.clear()

    @property
    def retrained(self) -> bool:
        """True when an attached optimizer stepped since the last pruning."""
        return self._steps_since_prune > 0

    def sparsity(self) -> dict[str, float]:
        """Fraction of pruned weights per layer."""
        return {n: 1.0 - float(m.sum()) / m.numel() for n, m in self.masks.items()}

    def recipe(self, name: str) -> Recipe | None:
        """The pruning fields of the recipe of ``name`` (None if it was not pruned)."""
        rec = self.records.get(name)
        if rec is None:
            return None
        return Recipe(prune_method=rec.method, prune_parameter=rec.parameter,
                      prune_threshold=rec.threshold, retrained=self.retrained)


# ---------------------------------------------------------------------------
# Weight sharing
# ---------------------------------------------------------------------------


class _Gather(torch.autograd.Function):
    """W[positions] = C'[labels], 0 elsewhere; dL/dC_k = sum of dL/dW over cluster k.

    ``C'`` is ``C`` rounded to the codebook's storage type; the rounding is
    transparent to the gradient (straight-through).
    """

    @staticmethod
    def forward(ctx, centroids, labels, positions, numel, round_to):
        book = centroids if round_to is None else centroids.to(round_to).to(centroids.dtype)
        out = centroids.new_zeros(numel)
        out.index_copy_(0, positions, book.index_select(0, labels))
        ctx.save_for_backward(labels, positions)
        ctx.k = centroids.numel()
        return out

    @staticmethod
    def backward(ctx, grad):
        labels, positions = ctx.saved_tensors
        g = grad.reshape(-1).index_select(0, positions)
        grad_c = grad.new_zeros(ctx.k).index_add_(0, labels, g)
        return grad_c, None, None, None, None


class SharedWeight(nn.Module):
    """Parametrization: a tensor as ``k`` trainable centroids and fixed assignments.

    Registered by :func:`share_weights`; the centroids are the parameter
    ``module.parametrizations.<attr>.original``.

    Attributes:
        labels: centroid index of each kept element (flat order), int64.
        positions: flat positions of the kept elements, int64.
        shape: the tensor's shape.
        codebook_dtype: the :class:`DType` the centroids are stored as.
        initial: centroids right after k-means (to tell whether they trained).
        recipe: how the tensor was pruned and clustered.
    """

    def __init__(self, shape, positions: torch.Tensor, labels: torch.Tensor,
                 centroids: torch.Tensor, codebook_dtype: DType, recipe: Recipe) -> None:
        super().__init__()
        self.shape = tuple(int(d) for d in shape)
        self.numel = math.prod(self.shape)
        self.register_buffer("positions", positions.to(torch.int64), persistent=False)
        self.register_buffer("labels", labels.to(torch.int64), persistent=False)
        self.codebook_dtype = codebook_dtype
        self._round_to = _DTYPE_TO_TORCH.get(codebook_dtype)
        self.register_buffer("initial", centroids.detach().clone(), persistent=False)
        self._pending: torch.Tensor | None = centroids.detach().clone()
        self.recipe = recipe

    def forward(self, centroids: torch.Tensor) -> torch.Tensor:
        round_to = self._round_to if self._round_to != centroids.dtype else None
        flat = _Gather.apply(centroids, self.labels, self.positions, self.numel, round_to)
        return flat.reshape(self.shape)

    @torch.no_grad()
    def right_inverse(self, weight: torch.Tensor) -> torch.Tensor:
        """Centroids for an assigned weight: the k-means result at registration,
        later the mean of each cluster of the assigned tensor."""
        if self._pending is not None:
            out, self._pending = self._pending.to(weight.dtype), None
            return out
        flat = weight.reshape(-1).index_select(0, self.positions).to(torch.float64)
        k = self.initial.numel()
        tot = torch.zeros(k, dtype=torch.float64, device=weight.device).index_add_(0, self.labels, flat)
        cnt = torch.bincount(self.labels, minlength=k).clamp_min(1).to(torch.float64)
        return (tot / cnt).to(weight.dtype)

    def codebook(self, centroids: torch.Tensor) -> np.ndarray:
        """The stored codebook: ``centroids`` rounded to the storage type, as float64."""
        with torch.no_grad():
            c = centroids.detach()
            if self._round_to is not None and self._round_to != c.dtype:
                c = c.to(self._round_to)
            return c.to(torch.float64).cpu().numpy()

    def keep_mask(self) -> np.ndarray:
        keep = np.zeros(self.numel, dtype=bool)
        keep[self.positions.cpu().numpy()] = True
        return keep


def share_weights(
    model: nn.Module,
    bits=4,
    *,
    names: Iterable[str] | None = None,
    masks=None,
    init: KMeansInit | str = KMeansInit.LINEAR,
    seed: int = 0,
    codebook_dtype="float16",
    max_iter: int = 30,
) -> dict[str, SharedWeight]:
    """Replace tensors by k-means codebooks whose centroids train (trained quantization).

    Args:
        model: the (pruned, retrained) network.
        bits: codebook of ``2**bits`` centroids: one number for every tensor,
            or a dict ``name -> bits`` (then only those tensors are shared,
            unless ``names`` is given).  Biases may be named too.
        names: tensors to share (default: the keys of ``bits`` if it is a
            dict, else the pruner's tensors, else every weight with 2+ dims).
        masks: a :class:`Pruner` or a dict ``name -> keep mask``; pruned
            elements stay exactly 0 and join no cluster.  Default: the
            non-zero elements are kept.
        init: k-means initialisation, ``"linear"`` (the paper's best,
            default), ``"density"`` or ``"random"``.
        seed: seed of the ``"random"`` initialisation.
        codebook_dtype: storage type of the centroids in the file
            (``"float16"`` default, ``"bfloat16"``, ``"float32"``...); the
            forward pass already uses the rounded values.
        max_iter: Lloyd iterations at most.

    Returns:
        name -> :class:`SharedWeight` for the tensors now shared.  Their
        centroids are parameters of the model (``model.parameters()``), so an
        optimizer built afterwards fine-tunes them.  Build a new optimizer:
        torch's parametrization reuses each weight's Parameter object for its
        centroids, with a new shape, so an old optimizer's state no longer fits.
    """
    pruner = masks if isinstance(masks, Pruner) else None
    mask_dict = dict(pruner.masks) if pruner is not None else dict(masks or {})
    if names is not None:
        names = list(names)
    elif isinstance(bits, Mapping):
        names = list(bits)
    elif pruner is not None:
        names = list(pruner.names)
    else:
        names = _default_names(model)
    bits_of = _per_layer(bits, names, "bits")
    init = KMeansInit[init.upper()] if isinstance(init, str) else KMeansInit(init)
    done: dict[str, SharedWeight] = {}
    for name in names:
        if name not in bits_of:
            raise KeyError(f"no codebook size for {name!r}")
        b = int(bits_of[name])
        if not 1 <= b <= 16:
            raise ValueError(f"{name}: codebook bits must be 1..16, got {b}")
        module, attr = _owner(model, name)
        if parametrize.is_parametrized(module, attr):
            raise RuntimeError(f"{name} is parametrized already")
        weight = getattr(module, attr)
        tdt = _TORCH_TO_DTYPE.get(weight.dtype)
        if tdt is None:
            raise ValueError(f"{name}: cannot share a {weight.dtype} tensor (floating point only)")
        cdt = _dtype_of(codebook_dtype) if codebook_dtype is not None else tdt
        if not codebook_dtype_allowed(tdt, cdt):
            raise ValueError(f"{name}: a {cdt.label} codebook cannot serve a {tdt.label} tensor "
                             "(spec 7.3: the same type, or a float type that widens exactly)")
        with torch.no_grad():
            w = weight.detach()
            mask = mask_dict.get(name)
            keep = (w != 0) if mask is None else torch.as_tensor(mask, device=w.device).bool()
            keep = keep.reshape(-1)
            positions = torch.nonzero(keep).reshape(-1)
            values = w.reshape(-1).index_select(0, positions).to(torch.float64).cpu().numpy()
        clus = kmeans(values, 1 << b, init=init, seed=seed, max_iter=max_iter)
        base = pruner.recipe(name) if pruner is not None else None
        recipe = dataclasses.replace(
            base or Recipe(prune_method=PruneMethod.MASK if mask is not None and not bool(keep.all())
                           else None),
            kmeans_init=clus.init, kmeans_iterations=clus.iterations,
            seed=seed if clus.init is KMeansInit.RANDOM else None)
        centroids = torch.from_numpy(clus.centroids).to(weight.dtype).to(weight.device)
        labels = torch.from_numpy(clus.labels).to(weight.device)
        p = SharedWeight(weight.shape, positions, labels, centroids, cdt, recipe)
        if pruner is not None:
            pruner._unhook(name)  # the parameter object is reused for the centroids
        parametrize.register_parametrization(module, attr, p, unsafe=True)
        done[name] = p
    return done


def shared_layers(model: nn.Module) -> dict[str, tuple[SharedWeight, torch.Tensor]]:
    """name -> (parametrization, centroid parameter) of every shared tensor."""
    out = {}
    for mod_name, module in model.named_modules():
        if not parametrize.is_parametrized(module):
            continue
        for attr in module.parametrizations:
            p = _shared_of(module, attr)
            if p is not None:
                name = f"{mod_name}.{attr}" if mod_name else attr
                out[name] = (p, module.parametrizations[attr].original)
    return out


def unshare(model: nn.Module) -> nn.Module:
    """Turn shared tensors back into plain parameters holding their current values."""
    for name in list(shared_layers(model)):
        module, attr = _owner(model, name)
        parametrize.remove_parametrizations(module, attr, leave_parametrized=True)
    return model


# ---------------------------------------------------------------------------
# Export and import
# ---------------------------------------------------------------------------


def _storage(t: torch.Tensor) -> tuple[np.ndarray, DType | None]:
    t = t.detach().cpu().contiguous()
    if t.dtype is torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16), DType.BFLOAT16
    return t.numpy(), None


def _slim(recipe: Recipe, recipes: str) -> Recipe | None:
    if recipes == "none":
        return None
    if recipes == "compact":
        # what `dcz info` needs to explain the layer; parameter only when it differs
        return dataclasses.replace(
            recipe, plan=None, kmeans_iterations=None,
            prune_parameter=None if recipe.prune_parameter == recipe.prune_threshold
            else recipe.prune_parameter)
    return recipe


def encode_model(model: nn.Module, *, pruner: Pruner | None = None, recipes: str = "full",
                 finetuned: bool | None = None) -> list[TensorCode]:
    """The TensorCodes :func:`save` writes, in state-dict order.

    Shared tensors become ``codebook_tensor(...)`` of their exact trained
    codebook (rounded to its storage type, which the forward pass already
    used) and their labels; a pruned tensor that is not shared keeps its exact
    values in a sparse layout; every other tensor is stored losslessly.

    Args:
        pruner: adds the pruning fields to the recipes of pruned tensors.
        recipes: ``"full"`` (default), ``"compact"`` (drops the plan name,
            iteration count and a parameter equal to the threshold: about 10
            bytes less per tensor) or ``"none"``.
        finetuned: the recipes' ``finetuned`` flag; default: whether each
            codebook differs from its k-means result.
    """
    if recipes not in ("full", "compact", "none"):
        raise ValueError(f"recipes must be 'full', 'compact' or 'none', got {recipes!r}")
    shared = shared_layers(model)
    codes = []
    for name, tensor in logical_state_dict(model).items():
        if name in shared:
            p, centroids = shared[name]
            book = p.codebook(centroids)
            tuned = finetuned if finetuned is not None else not torch.equal(
                centroids.detach(), p.initial.to(centroids.dtype))
            recipe = dataclasses.replace(p.recipe, plan=PLAN_NAME, finetuned=tuned)
            if pruner is not None and name in pruner.records and recipe.prune_method is None:
                recipe = dataclasses.replace(recipe, **{
                    k: v for k, v in dataclasses.asdict(pruner.recipe(name)).items() if v is not None})
            dtype = _TORCH_TO_DTYPE.get(tensor.dtype)
            if dtype is None:
                raise ValueError(f"{name}: cannot store a shared {tensor.dtype} tensor")
            code = codebook_tensor(name, dtype, tuple(tensor.shape), p.keep_mask(), book,
                                   p.labels.cpu().numpy(), recipe=_slim(recipe, recipes),
                                   codebook_dtype=p.codebook_dtype)
        else:
            storage, dt = _storage(tensor)
            storage, dt = prepare(storage, dt)
            recipe = None
            if pruner is not None and name in pruner.records:
                recipe = dataclasses.replace(pruner.recipe(name), plan=PLAN_NAME)
                recipe = _slim(recipe, recipes)
            code = lossless_tensor(name, storage, dt, recipe=recipe)
        codes.append(code)
    return codes


def save(model: nn.Module, target, *, pruner: Pruner | None = None,
         metadata: dict[str, str] | None = None, recipes: str = "full",
         options: EncodeOptions = DEFAULT_OPTIONS) -> list[TensorCode]:
    """Write ``model`` to a ``.dcz`` file (atomically for a path) or binary file object.

    See :func:`encode_model` for what each tensor becomes; ``options`` sets
    the Huffman chunk size and code-length cap.  Returns the TensorCodes
    written; ``code.reconstruct()`` of each equals, bit for bit, the tensor a
    reader will return, and for shared tensors the model's current weight.
    """
    codes = encode_model(model, pruner=pruner, recipes=recipes)
    with Writer(target, metadata=metadata, options=options) as w:
        for code in codes:
            w.write_code(code)
    return codes


def _to_torch(array: np.ndarray) -> torch.Tensor:
    arr = np.asarray(array)
    if arr.dtype.name == "bfloat16":  # ml_dtypes
        return torch.from_numpy(np.ascontiguousarray(arr).view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(np.array(arr, copy=True, order="C"))


def load_state_dict(source, *, bfloat16_names: Iterable[str] = ()) -> dict[str, torch.Tensor]:
    """Decode a ``.dcz`` file into name -> torch tensor (what ``load_state_dict`` takes).

    ``bfloat16_names``: tensors to reinterpret as bfloat16 when the decoder
    returns their bit patterns as uint16 (no ``ml_dtypes`` installed).
    """
    from .api import load

    out = {}
    bf = set(bfloat16_names)
    for name, array in load(source).items():
        if name in bf and array.dtype == np.uint16:
            out[name] = torch.from_numpy(array.view(np.int16).copy()).view(torch.bfloat16)
        else:
            out[name] = _to_torch(array)
    return out


def load_model(model: nn.Module, source, *, strict: bool = True) -> nn.Module:
    """Load a ``.dcz`` file into ``model`` (a plain, not weight-shared, instance).

    Returns the model.  Raises ``RuntimeError`` if ``model`` has shared
    tensors (call :func:`unshare` first, or build a fresh model), and what
    ``nn.Module.load_state_dict`` raises for missing or unexpected names.
    """
    if shared_layers(model):
        raise RuntimeError("load_model needs a plain model: this one has shared tensors "
                           "(build a fresh one or call dcfmt.train.unshare(model))")
    state = load_state_dict(source)
    model.load_state_dict(state, strict=strict)
    return model

"""dcfmt.train (pruning masks, trained weight sharing, .dcz export/import) and `dcz demo`."""

import io
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

import dcfmt  # noqa: E402
from dcfmt import train as dct  # noqa: E402
from dcfmt.constants import KMeansInit, PruneMethod, Values  # noqa: E402


def _mlp(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 40), nn.ReLU(), nn.Linear(40, 5)).to(dtype)


def _batch(seed=1, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(32, 12, generator=g, dtype=dtype), torch.randint(0, 5, (32,), generator=g)


def _steps(model, opt, n=5, seed=1):
    x, y = _batch(seed, next(model.parameters()).dtype)
    for _ in range(n):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()


# ---------------------------------------------------------------------------
# Pruning
# ---------------------------------------------------------------------------


def test_masks_keep_pruned_weights_exactly_zero_through_sgd_momentum_and_weight_decay():
    model = _mlp()
    # optimizer built and stepped before pruning: its momentum buffers are non-zero everywhere
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01)
    _steps(model, opt)
    pruner = dct.Pruner(model)
    assert pruner.names == ["0.weight", "2.weight"]
    pruner.attach(opt)
    pruner.prune(sparsity=0.75)
    masks = {n: m.clone() for n, m in pruner.masks.items()}
    before = model[0].weight.detach().clone()
    _steps(model, opt, n=10)
    for name, mod in (("0.weight", model[0]), ("2.weight", model[2])):
        w = mod.weight.detach()
        assert torch.all(w[~masks[name]] == 0)
        assert torch.equal(pruner.masks[name], masks[name])
        assert abs(1 - int(masks[name].sum()) / masks[name].numel() - 0.75) < 0.01
        # the momentum buffer of pruned weights is cleared as well
        assert torch.all(opt.state[mod.weight]["momentum_buffer"][~masks[name]] == 0)
    assert not torch.equal(model[0].weight.detach()[masks["0.weight"]], before[masks["0.weight"]])
    assert pruner.retrained


def test_gradients_of_pruned_weights_are_masked_without_an_optimizer():
    model = _mlp()
    pruner = dct.Pruner(model, names=["0.weight"])
    pruner.prune(threshold=0.1)
    x, y = _batch()
    F.cross_entropy(model(x), y).backward()
    mask = pruner.masks["0.weight"]
    assert torch.all(model[0].weight.grad[~mask] == 0)
    assert torch.any(model[0].weight.grad[mask] != 0)


def test_quality_rule_is_quality_times_std_and_pruning_is_monotone():
    model = _mlp()
    w = model[0].weight.detach().clone().double()
    pruner = dct.Pruner(model)
    rec = pruner.prune(quality={"0.weight": 0.5})["0.weight"]
    assert list(pruner.masks) == ["0.weight"]  # only the layer named
    t = 0.5 * float(w.std(unbiased=False))
    assert rec.method is PruneMethod.QUALITY and rec.threshold == pytest.approx(t)
    assert torch.equal(pruner.masks["0.weight"], w.abs() > t)
    first = pruner.masks["0.weight"].clone()
    schedule = dct.sparsity_schedule({"0.weight": 0.9, "2.weight": 0.5}, 3)
    assert schedule[-1] == {"0.weight": 0.9, "2.weight": 0.5}
    assert schedule[0]["0.weight"] < schedule[1]["0.weight"] < 0.9
    for step in schedule:
        pruner.prune(sparsity=step)
        assert not torch.any(pruner.masks["0.weight"] & ~first)  # never revived
    assert pruner.sparsity() == pytest.approx({"0.weight": 0.9, "2.weight": 0.5}, abs=1e-3)
    with pytest.raises(ValueError):
        pruner.prune(quality=1.0, sparsity=0.5)
    with pytest.raises(KeyError):
        pruner.prune(sparsity={"nope.weight": 0.5})


# ---------------------------------------------------------------------------
# Weight sharing
# ---------------------------------------------------------------------------


def _shared(dtype=torch.float32, codebook_dtype="float16"):
    model = _mlp(dtype=dtype)
    pruner = dct.Pruner(model)
    pruner.prune(sparsity=0.6)
    shared = dct.share_weights(model, {"0.weight": 3, "2.weight": 2, "0.bias": 3}, masks=pruner,
                               codebook_dtype=codebook_dtype)
    return model, pruner, shared


def test_centroid_gradient_is_the_sum_of_its_clusters_weight_gradients():
    model, pruner, shared = _shared(dtype=torch.float64, codebook_dtype="float64")
    x, y = _batch(dtype=torch.float64)
    F.cross_entropy(model(x), y).backward()
    layers = dct.shared_layers(model)
    for name, mod in (("0.weight", model[0]), ("2.weight", model[2])):
        p, centroids = layers[name]
        # manual: dL/dW of a plain layer holding the same weights, summed per cluster
        W = mod.weight.detach().clone().requires_grad_(True)
        plain = [W if n == name else m.weight.detach() for n, m in
                 (("0.weight", model[0]), ("2.weight", model[2]))]
        h = F.relu(F.linear(x, plain[0], model[0].bias.detach()))
        loss = F.cross_entropy(F.linear(h, plain[1], model[2].bias.detach()), y)
        (gW,) = torch.autograd.grad(loss, [W])
        flat = gW.reshape(-1).numpy()
        pos, lab = p.positions.numpy(), p.labels.numpy()
        expected = np.zeros(centroids.numel())
        for position, label in zip(pos, lab):
            expected[label] += flat[position]
        np.testing.assert_allclose(centroids.grad.numpy(), expected, rtol=1e-10, atol=1e-14)
        # pruned weights belong to no cluster
        assert set(pos.tolist()) == set(np.flatnonzero(pruner.masks[name].reshape(-1).numpy()).tolist())


def test_shared_layers_train_centroids_only_and_keep_pruned_weights_zero():
    model, pruner, shared = _shared()
    layers = dct.shared_layers(model)
    assert set(layers) == {"0.weight", "2.weight", "0.bias"}
    p, c = layers["0.weight"]
    assert c.numel() <= 8 and p.recipe.kmeans_init is KMeansInit.LINEAR
    labels_before = p.labels.clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=0.01)
    _steps(model, opt)
    assert torch.equal(p.labels, labels_before)
    w = model[0].weight.detach()
    mask = pruner.masks["0.weight"]
    assert torch.all(w[~mask] == 0)
    # every kept weight is its centroid, rounded to float16 like the stored codebook
    book = c.detach().half().float()
    assert torch.equal(w.reshape(-1)[p.positions], book[p.labels])
    assert not torch.equal(c.detach(), p.initial)


# ---------------------------------------------------------------------------
# Export and import
# ---------------------------------------------------------------------------


def test_export_stores_exactly_the_trained_codebook_and_reload_is_bit_exact(tmp_path):
    model, pruner, shared = _shared()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    _steps(model, opt)
    path = tmp_path / "m.dcz"
    codes = dct.save(model, str(path), pruner=pruner, metadata={"arch": "mlp"})
    assert dcfmt.validate(str(path)).valid
    layers = dct.shared_layers(model)
    with dcfmt.open(str(path)) as f:
        for name, (p, c) in layers.items():
            rec = f.record(name)
            assert rec.values is Values.CODEBOOK and rec.codebook_dtype is dcfmt.DType.FLOAT16
            trained = c.detach().half().numpy()
            # the trained centroids, in order (a dense layout may append a zero centroid)
            assert np.array_equal(rec.codebook[: len(trained)].view(np.uint16), trained.view(np.uint16))
            recipe = rec.recipe
            assert recipe.finetuned is True and recipe.kmeans_init is KMeansInit.LINEAR
            if name.endswith("weight"):
                assert recipe.prune_method is PruneMethod.SPARSITY and recipe.prune_threshold > 0
                assert recipe.retrained is False  # no optimizer step between pruning and sharing
    code = {c.name: c for c in codes}["0.weight"]
    if code.layout is not dcfmt.Layout.DENSE:
        assert np.array_equal(code.indices, layers["0.weight"][0].labels.numpy())
    fresh = _mlp(seed=5)
    dct.load_model(fresh, str(path))
    trained = dct.logical_state_dict(model)
    for name, value in fresh.state_dict().items():
        a, b = trained[name].numpy(), value.numpy()
        assert a.dtype == b.dtype and np.array_equal(a.view(np.uint32), b.view(np.uint32)), name
    x, _ = _batch()
    assert torch.equal(model(x), fresh(x))
    # the same through a file object, and the plain torch state dict
    buf = io.BytesIO()
    dct.save(model, buf, pruner=pruner, recipes="none")
    state = dct.load_state_dict(buf.getvalue())
    assert all(torch.equal(state[k], trained[k]) for k in trained)
    assert len(buf.getvalue()) < path.stat().st_size


def test_load_model_wants_a_plain_model_and_unshare_gives_one(tmp_path):
    model, pruner, _ = _shared()
    path = str(tmp_path / "m.dcz")
    dct.save(model, path)
    with pytest.raises(RuntimeError, match="plain model"):
        dct.load_model(model, path)
    weights = model[0].weight.detach().clone()
    dct.unshare(model)
    assert isinstance(model[0].weight, nn.Parameter) and torch.equal(model[0].weight, weights)
    dct.load_model(model, path)


def test_share_weights_rejects_a_codebook_type_the_format_forbids():
    model = _mlp().to(torch.bfloat16)
    with pytest.raises(ValueError, match="cannot serve"):
        dct.share_weights(model, 2, codebook_dtype="float16")
    shared = dct.share_weights(model, 2, codebook_dtype=None)  # bfloat16 codebook: allowed
    assert all(p.codebook_dtype is dcfmt.DType.BFLOAT16 for p in shared.values())


def test_core_package_and_cli_do_not_import_torch():
    code = ("import sys, dcfmt, dcfmt.cli, dcfmt.demo; dcfmt.cli.build_parser(); "
            "assert 'torch' not in sys.modules and 'sklearn' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------
# dcz demo
# ---------------------------------------------------------------------------


def test_demo_pipeline_on_synthetic_data(tmp_path):
    from dcfmt import demo

    rng = np.random.default_rng(0)
    centers = rng.random((10, 64)).astype(np.float32)
    y = np.repeat(np.arange(10), 20)
    x = np.clip(centers[y] + 0.1 * rng.standard_normal((200, 64)).astype(np.float32), 0, 1)
    data = (x[::2], y[::2].astype(np.int64), x[1::2], y[1::2].astype(np.int64))
    spec = demo.NETWORKS["lenet-300-100"].scaled(0.05)
    res = demo.run_network(spec, data, 0, str(tmp_path / "s.dcz"))
    assert res.exact and res.paper_ratio > res.file_ratio > 5
    text = demo.report(res)
    for word in ("ip1", "biases", "total", "paper's accounting", "whole .dcz file", "test accuracy"):
        assert word in text


def test_dcz_demo_smoke(tmp_path, capsys):
    pytest.importorskip("sklearn")
    from dcfmt.cli import main

    out = tmp_path / "out"
    assert main(["demo", "--net", "lenet-5", "--scale", "0.04", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "LeNet-5 on sklearn digits" in text and "conv1" in text and "ip2" in text
    assert "bit for bit: yes" in text
    assert dcfmt.validate(str(out / "lenet-5.dcz")).valid

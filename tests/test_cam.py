"""The CAM engine against direct autograd computations of the papers' equations (docs/design.md,
section 4)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from pipeline.cam import compute_cams, compute_method_cams, fuse_layers, normalise_max

ATOL = 1e-5
CLASSES = torch.tensor([[0, 2], [1, 2]])  # K = 2 different classes for each of N = 2 images


class TinyNet(nn.Module):
    """conv-relu (block1, 12x12) -> conv-relu (block2, stride 2, 6x6) -> GAP -> fc."""

    def __init__(self, outputs: int = 3):
        super().__init__()
        self.block1 = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU())
        self.block2 = nn.Sequential(nn.Conv2d(6, 5, 3, stride=2, padding=1), nn.ReLU())
        self.fc = nn.Linear(5, outputs)

    def features(self, x):
        a1 = self.block1(x)
        a2 = self.block2(a1)
        return a1, a2

    def forward(self, x):
        return self.fc(self.features(x)[1].mean(dim=(2, 3)))


@pytest.fixture
def net():
    torch.manual_seed(0)
    model = TinyNet().eval()
    with torch.no_grad():  # positive bias keeps most units alive, so the maps are not all zero
        model.block1[0].bias.add_(0.2)
        model.block2[0].bias.add_(0.2)
    return model


@pytest.fixture
def images():
    torch.manual_seed(1)
    return torch.randn(2, 3, 12, 12)


# ----------------------------------------------------------------- direct reference computations

def reference_grads(model, images, score_of):
    """For each image n and target k, one backward: (A1, A2, dS/dA1, dS/dA2) per (n, k)."""
    out = {}
    for n in range(images.shape[0]):
        x = images[n:n + 1].clone()
        with torch.enable_grad():
            a1, a2 = model.features(x)
            scores = score_of(model, a2, n)  # [K]
            for k in range(scores.shape[0]):
                g1, g2 = torch.autograd.grad(scores[k], [a1, a2], retain_graph=True)
                out[n, k] = (a1[0].detach(), a2[0].detach(), g1[0], g2[0])
    return out


def ref_gradcam(act, grad):
    """Selvaraju et al. 2017: a_k = mean_ij g, M = ReLU(sum_k a_k A_k)."""
    weights = grad.mean(dim=(1, 2))
    return F.relu((weights[:, None, None] * act).sum(0))


def ref_gradcam_pp(act, grad):
    """Chattopadhyay et al. 2018, eq. 19, written out channel by channel."""
    maps = torch.zeros(act.shape[1:])
    for k in range(act.shape[0]):
        g = grad[k]
        denominator = 2 * g ** 2 + act[k].sum() * g ** 3
        alpha = torch.where(g != 0, g ** 2 / torch.where(g != 0, denominator, torch.ones_like(g)),
                            torch.zeros_like(g))
        w = (alpha * F.relu(g)).sum()
        maps += w * act[k]
    return F.relu(maps)


def logit_scores(classes):
    def score_of(model, a2, n):
        return model.fc(a2.mean(dim=(2, 3)))[0, classes[n]]
    return score_of


def ref_xgradcam(act, grad):
    """Fu et al. 2020: w_k = sum_ij (A_k,ij / sum_ab A_k,ab) g_k,ij, channel by channel."""
    maps = torch.zeros(act.shape[1:])
    for k in range(act.shape[0]):
        total = act[k].sum()
        if total != 0:
            maps += (act[k] / total * grad[k]).sum() * act[k]
    return F.relu(maps)


def ref_hirescam(act, grad):
    """Draelos & Carin 2020: the gradient times the activation at each position, summed over channels."""
    return F.relu(sum(grad[k] * act[k] for k in range(act.shape[0])))


def ref_layercam(act, grad):
    """Jiang et al. 2021: the positive gradient times the activation at each position."""
    return F.relu(sum(F.relu(grad[k]) * act[k] for k in range(act.shape[0])))


REFERENCES = {"gradcam": ref_gradcam, "gradcam++": ref_gradcam_pp, "xgradcam": ref_xgradcam,
              "hirescam": ref_hirescam, "layercam": ref_layercam}


@pytest.mark.parametrize("method", list(REFERENCES))
def test_gradient_methods_match_direct_autograd(net, images, method):
    maps = compute_cams(net, images, ["block1", "block2"], method, CLASSES)
    assert set(maps) == {"block1", "block2"}
    assert maps["block1"].shape == (2, 2, 12, 12)
    assert maps["block2"].shape == (2, 2, 6, 6)
    ref = reference_grads(net, images, logit_scores(CLASSES))
    nonzero = 0
    for (n, k), (a1, a2, g1, g2) in ref.items():
        expected1 = REFERENCES[method](a1, g1)
        expected2 = REFERENCES[method](a2, g2)
        assert torch.allclose(maps["block1"][n, k], expected1, atol=ATOL), (method, n, k, "block1")
        assert torch.allclose(maps["block2"][n, k], expected2, atol=ATOL), (method, n, k, "block2")
        nonzero += int(expected1.max() > 1e-3) + int(expected2.max() > 1e-3)
    assert nonzero >= 4  # the comparison is not between zero maps
    for m in maps.values():
        assert (m >= 0).all() and torch.isfinite(m).all()


def test_cam_matches_head_weights(net, images):
    maps = compute_cams(net, images, ["block2"], "cam", CLASSES)["block2"]
    with torch.no_grad():
        a2 = net.features(images)[1]
    weight = net.fc.weight.detach()
    for n in range(2):
        for k in range(2):
            c = int(CLASSES[n, k])
            expected = F.relu(sum(weight[c, j] * a2[n, j] for j in range(a2.shape[1])))
            assert torch.allclose(maps[n, k], expected, atol=ATOL)
    # CAM is the class logit's spatial decomposition: mean over the map of the un-ReLU'd sum + bias.
    with torch.no_grad():
        logits = net(images)
        full = torch.einsum("kc,nchw->nkhw", weight, a2).mean(dim=(2, 3)) + net.fc.bias
    assert torch.allclose(full, logits, atol=ATOL)


@pytest.mark.parametrize("method", ["cam", "gradcam", "gradcam++"])
def test_returned_maps_are_plain_tensors(net, images, method):
    """Stages turn maps into numpy arrays; maps must not carry an autograd graph."""
    layers = ["block2"] if method == "cam" else ["block1", "block2"]
    maps = compute_cams(net, images, layers, method, CLASSES)
    for m in maps.values():
        assert not m.requires_grad
    fused = fuse_layers(maps, (12, 12))
    assert not fused.requires_grad
    assert fused.numpy().shape == (2, 2, 12, 12)


@pytest.mark.parametrize("method", ["cam", "gradcam", "gradcam++"])
def test_zero_gradient_class_gives_zero_map_not_nan(net, images, method):
    with torch.no_grad():
        net.fc.weight[2].zero_()  # class 2's logit is its bias alone: zero gradient everywhere
    layers = ["block2"] if method == "cam" else ["block1", "block2"]
    maps = compute_cams(net, images, layers, method, CLASSES)
    for name, m in maps.items():
        assert torch.isfinite(m).all(), name
        assert (m[:, 1] == 0).all(), name  # class 2 is the second target of both images
        assert m[:, 0].max() > 0, name  # the other classes still have maps
    fused = fuse_layers(maps, (12, 12))
    assert torch.isfinite(fused).all() and (fused[:, 1] == 0).all()


@pytest.mark.parametrize("method", ["cam", "gradcam", "gradcam++"])
def test_no_side_effects_on_the_model(net, images, method):
    layers = ["block2"] if method == "cam" else ["block1", "block2"]
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():  # the caller's no_grad must not break the gradient methods
        maps = compute_cams(net, images, layers, method, CLASSES)
    assert all(p.grad is None for p in net.parameters())
    for module in (net.block1, net.block2, net.fc):
        assert not module._forward_hooks and not module._backward_hooks
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert not net.training
    reference = compute_cams(net, images, layers, method, CLASSES)
    for name in layers:
        assert torch.equal(maps[name], reference[name])


def test_one_batched_backward_for_all_classes_and_layers(net, images, monkeypatch):
    calls = []
    original = torch.autograd.grad

    def counting(*args, **kwargs):
        calls.append(kwargs.get("is_grads_batched", False))
        return original(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", counting)
    compute_cams(net, images, ["block1", "block2"], "gradcam", CLASSES)
    assert calls == [True]


def test_unknown_layer_or_method_raises_and_leaves_no_hooks(net, images):
    with pytest.raises(ValueError, match="blockx"):
        compute_cams(net, images, ["block1", "blockx"], "gradcam", CLASSES)
    assert not net.block1._forward_hooks
    with pytest.raises(ValueError, match="scorecam"):
        compute_cams(net, images, ["block1"], "scorecam", CLASSES)
    with pytest.raises(ValueError):
        compute_cams(net, images, ["block1"], "gradcam")  # neither classes nor target

    class Boom(nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")

    net.fc2 = Boom()
    original_forward = net.forward
    net.forward = lambda x: net.fc2(original_forward(x))
    with pytest.raises(RuntimeError, match="boom"):
        compute_cams(net, images, ["block1", "block2"], "gradcam", CLASSES)
    assert not net.block1._forward_hooks and not net.block2._forward_hooks


class EmbedNet(TinyNet):
    """The same trunk with a 4-d embedding (or a 1-d regression) head instead of class logits."""

    def __init__(self, outputs):
        super().__init__(outputs)


@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
def test_target_callable_cosine_similarity(images, method):
    torch.manual_seed(2)
    model = EmbedNet(4).eval()
    with torch.no_grad():
        model.block1[0].bias.add_(0.2)
        model.block2[0].bias.add_(0.2)
    refs = torch.randn(2, 4)  # two reference embeddings -> K = 2 targets per image

    def target(embedding):
        return F.cosine_similarity(embedding[:, None, :], refs[None], dim=-1)  # [N, 2]

    maps = compute_cams(model, images, ["block1", "block2"], method, target=target)

    def score_of(m, a2, n):
        return target(m.fc(a2.mean(dim=(2, 3))))[0]

    for (n, k), (a1, a2, g1, g2) in reference_grads(model, images, score_of).items():
        assert torch.allclose(maps["block1"][n, k], REFERENCES[method](a1, g1), atol=ATOL)
        assert torch.allclose(maps["block2"][n, k], REFERENCES[method](a2, g2), atol=ATOL)


def test_target_callable_regression_output(images):
    torch.manual_seed(3)
    model = EmbedNet(1).eval()
    with torch.no_grad():
        model.block2[0].bias.add_(0.2)
    maps = compute_cams(model, images, ["block2"], "gradcam", target=lambda out: out)["block2"]
    assert maps.shape == (2, 1, 6, 6)

    def score_of(m, a2, n):
        return m.fc(a2.mean(dim=(2, 3)))[0]

    for (n, k), (a1, a2, g1, g2) in reference_grads(model, images, score_of).items():
        # The regression head is linear after GAP: g = w / (h w) everywhere, so Grad-CAM = CAM / 36.
        expected = ref_gradcam(a2, g2)
        assert torch.allclose(maps[n, k], expected, atol=ATOL)
        cam = F.relu(torch.einsum("c,chw->hw", model.fc.weight[0].detach(), a2)) / 36
        assert torch.allclose(maps[n, k], cam, atol=ATOL)


def test_normalise_max():
    maps = torch.zeros(2, 2, 3, 3)
    maps[0, 0] = torch.arange(9.0).reshape(3, 3)  # max 8
    maps[0, 1, 1, 1] = 0.5
    maps[1, 0] = 2.0
    # maps[1, 1] stays all zero
    out = normalise_max(maps)
    assert torch.allclose(out[0, 0], torch.arange(9.0).reshape(3, 3) / 8, atol=1e-5)
    assert out[0, 1, 1, 1] == pytest.approx(1.0, abs=1e-4) and out[0, 1].sum() == out[0, 1, 1, 1]
    assert torch.allclose(out[1, 0], torch.ones(3, 3), atol=1e-5)
    assert (out[1, 1] == 0).all()
    assert torch.isfinite(out).all()


def test_fuse_layers_max_and_mean_by_hand():
    # Layer a at 2x2: rows [0, 4] -> normalised [0, 1] -> bilinear (half-pixel) to 4 columns:
    # source x = (i + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25 -> clamped -> [0, .25, .75, 1].
    a = torch.tensor([[0.0, 4.0], [0.0, 4.0]])[None, None]
    # Layer b already at 4x4: a single peak of 2 at (0, 0), 1 at (3, 3) -> normalised 1 and 0.5.
    b = torch.zeros(1, 1, 4, 4)
    b[0, 0, 0, 0] = 2.0
    b[0, 0, 3, 3] = 1.0
    # Each layer alone against a computation that shares no code with fuse_layers: a upsampled
    # by numpy's linear interpolation at those clamped source positions, b divided by its peak.
    source_x = np.clip((np.arange(4) + 0.5) / 2 - 0.5, 0, 1)
    up_a = np.tile(np.interp(source_x, [0, 1], [0.0, 1.0]), (4, 1))
    a_alone = fuse_layers({"a": a}, (4, 4), "max")[0, 0].numpy()
    b_alone = fuse_layers({"b": b}, (4, 4), "max")[0, 0].numpy()
    np.testing.assert_allclose(a_alone, up_a, atol=1e-4)
    np.testing.assert_allclose(b_alone, b[0, 0].numpy() / 2, atol=1e-4)
    fused_max = fuse_layers({"a": a, "b": b}, (4, 4), "max")[0, 0]
    fused_mean = fuse_layers({"a": a, "b": b}, (4, 4), "mean")[0, 0]
    expected_max = torch.tensor([[1.0, 0.25, 0.75, 1.0],
                                 [0.0, 0.25, 0.75, 1.0],
                                 [0.0, 0.25, 0.75, 1.0],
                                 [0.0, 0.25, 0.75, 1.0]])
    expected_mean = torch.tensor([[0.5, 0.125, 0.375, 0.5],
                                  [0.0, 0.125, 0.375, 0.5],
                                  [0.0, 0.125, 0.375, 0.5],
                                  [0.0, 0.125, 0.375, 0.75]])
    assert torch.allclose(fused_max, expected_max, atol=1e-4)
    assert torch.allclose(fused_mean, expected_mean, atol=1e-4)
    with pytest.raises(ValueError, match="median"):
        fuse_layers({"a": a}, (4, 4), "median")


# --------------------------------------------------------------- pytorch-grad-cam as an oracle

def _minmax(x: np.ndarray) -> np.ndarray:
    x = x - x.min()
    return x / (1e-7 + x.max())


@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
def test_agrees_with_pytorch_grad_cam_on_resnet18(method):
    pytest.importorskip("cv2")
    from pytorch_grad_cam import GradCAM, GradCAMPlusPlus
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=5).eval()
    with torch.no_grad():
        # Their Grad-CAM++ adds eps = 1e-6 to the denominator 2 g^2 + S g^3; with a random head
        # g^2 is of that order, so scale the head until the eps no longer matters.
        model.fc.weight.mul_(1000.0)
    x = torch.randn(2, 3, 128, 128)
    classes = [3, 1]
    ours = compute_cams(model, x, ["layer4"], method, torch.tensor(classes)[:, None])["layer4"]
    assert ours.shape == (2, 1, 4, 4)
    oracle_type = GradCAM if method == "gradcam" else GradCAMPlusPlus
    with oracle_type(model=model, target_layers=[model.layer4]) as oracle:
        theirs = oracle(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in classes])
    assert theirs.shape == (2, 128, 128)
    for n in range(2):
        raw = ours[n, 0].numpy()
        assert raw.max() > 0
        # Their recipe: min-max, resize (bilinear, half-pixel centres), then min-max again.
        up = F.interpolate(torch.from_numpy(_minmax(raw))[None, None], size=(128, 128),
                           mode="bilinear", align_corners=False)[0, 0].numpy()
        np.testing.assert_allclose(_minmax(up), theirs[n], atol=2e-3)


def _pytorch_grad_cam_maps(method, model, x, layer, classes):
    """pytorch-grad-cam's maps [N, H, W] of `classes[n]` for image n, from one layer."""
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    oracle_type = {"gradcam": pgc.GradCAM, "gradcam++": pgc.GradCAMPlusPlus, "xgradcam": pgc.XGradCAM,
                   "hirescam": pgc.HiResCAM, "layercam": pgc.LayerCAM}[method]
    with oracle_type(model=model, target_layers=[dict(model.named_modules())[layer]]) as oracle:
        return oracle(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in classes])


@pytest.mark.parametrize("method", ["xgradcam", "hirescam", "layercam", "gradcam", "gradcam++"])
def test_every_gradient_method_agrees_with_pytorch_grad_cam_for_several_layers_and_classes(method):
    pytest.importorskip("cv2")
    import torchvision

    torch.manual_seed(1)
    model = torchvision.models.resnet18(weights=None, num_classes=5).eval()
    with torch.no_grad():
        model.fc.weight.mul_(1000.0)  # as above: their Grad-CAM++ eps must not matter
    x = torch.randn(2, 3, 128, 128)
    classes = torch.tensor([[3, 0], [1, 4]])  # K = 2 targets per image, one backward for all
    layers = ["layer2", "layer3", "layer4.0"]
    ours = compute_cams(model, x, layers, method, classes)
    nonzero = 0
    for layer in layers:
        for k in range(2):
            theirs = _pytorch_grad_cam_maps(method, model, x, layer, classes[:, k].tolist())
            for n in range(2):
                raw = ours[layer][n, k].numpy()
                nonzero += int(raw.max() > 0)  # a random network may give a class no positive map
                up = F.interpolate(torch.from_numpy(_minmax(raw))[None, None], size=(128, 128),
                                   mode="bilinear", align_corners=False)[0, 0].numpy()
                np.testing.assert_allclose(_minmax(up), theirs[n], atol=2e-3, err_msg=f"{method} {layer}")
    assert nonzero >= 10  # of 12: the comparison is between real maps


# ------------------------------------------------------------- test-time augmentation, CAM heads

def test_flip_adds_the_mirrored_maps_of_the_mirrored_image(net, images):
    from pipeline.cam import augmented_cams

    plain = compute_cams(net, images, ["block1", "block2"], "gradcam", CLASSES)
    mirrored = compute_cams(net, images.flip(-1), ["block1", "block2"], "gradcam", CLASSES)
    both = augmented_cams(net, images, ["block1", "block2"], "gradcam", CLASSES, flip=True)
    for name in ("block1", "block2"):
        torch.testing.assert_close(both[name], plain[name] + mirrored[name].flip(-1), atol=ATOL, rtol=0)


def test_scales_are_summed_at_the_scale_one_resolution(net, images):
    from pipeline.cam import augmented_cams

    plain = compute_cams(net, images, ["block2"], "gradcam++", CLASSES)["block2"]
    double = compute_cams(net, F.interpolate(images, size=(24, 24), mode="bilinear", align_corners=False),
                          ["block2"], "gradcam++", CLASSES)["block2"]
    assert double.shape[-2:] == (12, 12)
    summed = augmented_cams(net, images, ["block2"], "gradcam++", CLASSES, scales=[2.0, 1.0])["block2"]
    expected = plain + F.interpolate(double, size=(6, 6), mode="bilinear", align_corners=False)
    torch.testing.assert_close(summed, expected, atol=ATOL, rtol=0)
    with pytest.raises(ValueError, match="must include 1.0"):
        augmented_cams(net, images, ["block2"], "gradcam", CLASSES, scales=[0.5, 2.0])


def test_fitted_head_reproduces_logits_and_separates_the_classes():
    from pipeline.cam import fit_linear_head

    generator = torch.Generator().manual_seed(0)
    features = torch.rand(200, 4, generator=generator) * torch.tensor([1.0, 10.0, 0.1, 5.0]) + 3.0
    targets = torch.stack([features[:, 0] > 3.5, features[:, 1] > 8.0], 1).float()
    head = fit_linear_head(features, targets, weight_decay=1e-6)
    logits = head(features)
    assert ((logits > 0).float() == targets).float().mean() > 0.97
    # Fitting twice from the same data gives the same head (no random initialisation).
    torch.testing.assert_close(fit_linear_head(features, targets, weight_decay=1e-6).weight, head.weight)
    assert not head.weight.requires_grad


def test_cam_with_a_fitted_head_is_its_weights_times_the_activations(net, images):
    from pipeline.cam import fit_cam_heads

    targets = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    heads = fit_cam_heads(net, [images[:1], images[1:]], targets, ["block1"])
    assert heads["block1"].weight.shape == (3, 6)  # block1 has 6 channels; the net's own fc has 5
    maps = compute_cams(net, images, ["block1"], "cam", CLASSES, head=heads)["block1"]
    a1, _ = net.features(images)
    for n in range(2):
        for k in range(2):
            w = heads["block1"].weight[CLASSES[n, k]]
            expected = F.relu((w[:, None, None] * a1[n]).sum(0))
            torch.testing.assert_close(maps[n, k], expected.detach(), atol=ATOL, rtol=1e-5)


def test_layercam_fusion_scales_only_the_shallow_layers():
    # The same two layers as above: a (2x2) is the deepest, b (4x4) the shallow one, in either order.
    a = torch.tensor([[0.0, 4.0], [0.0, 4.0]])[None, None]
    b = torch.zeros(1, 1, 4, 4)
    b[0, 0, 0, 0] = 2.0
    b[0, 0, 3, 3] = 1.0
    up_a = np.tile([0.0, 0.25, 0.75, 1.0], (4, 1))
    scaled_b = np.tanh(2.0 * b[0, 0].numpy() / 2)  # tanh(gamma M / max M), gamma 2
    expected = np.maximum(up_a, scaled_b)
    for order in ({"a": a, "b": b}, {"b": b, "a": a}):
        fused = fuse_layers(order, (4, 4), "layercam")[0, 0].numpy()
        np.testing.assert_allclose(fused, expected, atol=1e-4)
    # b alone is the deepest of one layer: max-normalised, not scaled.
    np.testing.assert_allclose(fuse_layers({"b": b}, (4, 4), "layercam")[0, 0].numpy(),
                               b[0, 0].numpy() / 2, atol=1e-4)
    # A shallow peak of 0.3 after normalisation becomes tanh(0.6) = 0.537 where a is 0.
    c = torch.zeros(1, 1, 4, 4)
    c[0, 0, 0, 0], c[0, 0, 1, 0] = 1.0, 0.3
    fused = fuse_layers({"c": c, "a": a}, (4, 4), "layercam")[0, 0].numpy()
    assert fused[1, 0] == pytest.approx(np.tanh(0.6), abs=1e-4)
    assert fused[0, 0] == pytest.approx(np.tanh(2.0), abs=1e-4)


def test_several_methods_share_one_forward_and_one_backward(net, images, monkeypatch):
    """compute_method_cams gives each method's compute_cams maps from a single pass."""
    methods = ["cam", "gradcam", "gradcam++", "xgradcam", "hirescam", "layercam"]
    alone = {method: compute_cams(net, images, ["block2"], method, CLASSES) for method in methods}
    calls, forwards = [], []
    original = torch.autograd.grad
    monkeypatch.setattr(torch.autograd, "grad", lambda *a, **k: calls.append(1) or original(*a, **k))
    net.register_forward_hook(lambda *_: forwards.append(1))
    shared = compute_method_cams(net, images, ["block2"], methods, CLASSES)
    assert calls == [1] and forwards == [1]
    for method in methods:
        assert torch.allclose(shared[method]["block2"], alone[method]["block2"], atol=ATOL), method

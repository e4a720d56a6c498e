"""Model zoo: sizes against benchmarks.md §6, shapes on small inputs, named paths, ViT masking."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from featdistill.models import (
    MODELS,
    build_model,
    count_macs,
    count_parameters,
    latency_per_image,
    list_models,
    mask_to_keep_idx,
    register_model,
)

# benchmarks.md §6.1: params (M) for 100 classes at 32×32, stated to 3 decimals.
PARAMS_M = {
    "resnet20": 0.278,
    "resnet32": 0.473,
    "resnet56": 0.862,
    "resnet110": 1.737,
    "resnet8x4": 1.234,
    "resnet32x4": 7.434,
    "wrn_16_2": 0.703,
    "wrn_40_1": 0.570,
    "wrn_40_2": 2.255,
    "vgg8": 3.965,
    "vgg13": 9.462,
    "mobilenetv2": 0.813,
    "shufflev1": 0.949,
    "shufflev2": 1.356,
}


pytestmark = pytest.mark.usefixtures("one_thread")


# A small ViT keeps the shape tests fast; the default (DeiT-Ti) is exercised once in the masking test.
SMALL_KWARGS: dict[str, dict[str, object]] = {"vit_tiny": {"dim": 32, "depth": 2, "heads": 2}}


@pytest.mark.parametrize("name", sorted(PARAMS_M))
def test_param_counts_match_benchmarks(name: str) -> None:
    params = count_parameters(build_model(name, num_classes=100)) / 1e6
    assert round(params, 3) == pytest.approx(PARAMS_M[name], rel=1e-3, abs=1e-3)


@pytest.mark.parametrize(("name", "macs_m"), [("resnet8x4", 177.1), ("resnet56", 125.8)])
def test_macs_match_benchmarks(name: str, macs_m: float) -> None:
    model = build_model(name, num_classes=100)
    model.train()
    assert count_macs(model, (3, 32, 32)) / 1e6 == pytest.approx(macs_m, rel=0.01)
    assert model.training, "count_macs must restore the training flag"


def test_convnet3_param_count_mnist() -> None:
    # benchmarks.md §6.3: padding 1 at 28×28 → 3×3 final map, 1152-d feature, 0.309 M params (the default).
    model = build_model("convnet", num_classes=10, in_channels=1, image_size=28)
    assert model.feature_shape == (128, 3, 3)
    assert count_parameters(model) == 308_746
    # DC/DM/MTT pad the first conv by 3 on 1-channel inputs → 4×4 map, 2048-d, ≈ 0.318 M.
    dc = build_model("convnet", num_classes=10, in_channels=1, image_size=28, first_padding=3)
    assert dc.feature_shape == (128, 4, 4)
    assert count_parameters(dc) == 317_706
    assert build_model("convnet", norm="none").stage_paths == ["features.2", "features.5", "features.8"]


def _check_paths_and_shapes(name: str, c: int, s: int, num_classes: int = 7) -> None:
    torch.manual_seed(0)
    model = build_model(name, num_classes=num_classes, in_channels=c, image_size=s, **SMALL_KWARGS.get(name, {}))
    # In-place activations would overwrite tensors that forward hooks have already captured.
    assert not [n for n, m in model.named_modules() if getattr(m, "inplace", False)]
    paths = [*model.stage_paths, model.embedding_path, model.classifier_path]
    captured: dict[str, torch.Tensor] = {}
    handles = [
        model.get_submodule(p).register_forward_hook(lambda _m, _i, out, p=p: captured.__setitem__(p, out))
        for p in paths
    ]
    with torch.no_grad():
        out = model(torch.randn(2, c, s, s))
    for h in handles:
        h.remove()
    assert out.shape == (2, num_classes)
    assert list(captured) == paths, "stages must fire shallow → deep, then embedding, then classifier"
    emb = captured[model.embedding_path]
    classifier = model.get_submodule(model.classifier_path)
    assert isinstance(classifier, nn.Linear)
    assert emb.dim() == 2 and emb.shape == (2, classifier.in_features)
    assert torch.equal(captured[model.classifier_path], out)


CLASSIFIERS = [
    n for n in list_models() if n not in ("segnet", "srnet", "forecaster", "detr_tiny", "detr_small")
]  # dense models: tests/test_dense_data.py; detectors: tests/test_detr.py


@pytest.mark.parametrize("name", CLASSIFIERS)
@pytest.mark.parametrize(("c", "s"), [(3, 32), (1, 28), (1, 8)])
def test_forward_shapes_and_paths(name: str, c: int, s: int) -> None:
    _check_paths_and_shapes(name, c, s)


def test_vit_mask_all_kept_equals_unmasked_and_drops_tokens() -> None:
    torch.manual_seed(0)
    model = build_model("vit_tiny", image_size=32).eval()  # default DeiT-Ti shape, 4-px patches
    assert model.num_patches == 64 and model.depth == 12 and model.embed_dim == 192
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        full = model(x)
        kept = model(x, mask=torch.ones(2, 64, dtype=torch.bool))
    torch.testing.assert_close(kept, full, rtol=0, atol=1e-6)

    small = build_model("vit_tiny", image_size=8, patch_size=2, **SMALL_KWARGS["vit_tiny"]).eval()
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[0, [0, 3, 5, 9]] = True
    mask[1, [1, 2, 14, 15]] = True
    seen: list[tuple[int, ...]] = []
    handle = small.get_submodule("blocks.0").register_forward_hook(lambda _m, _i, o: seen.append(tuple(o.shape)))
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        out = small(x, mask=mask)
        again = small.head(small.pool(small.forward_features(x, keep_idx=mask_to_keep_idx(mask))))
    handle.remove()
    assert out.shape == (2, 10) and seen[0] == (2, 5, 32)  # cls + 4 visible patches
    torch.testing.assert_close(out, again)
    torch.testing.assert_close(small(x, keep=mask_to_keep_idx(mask)), out)  # dmae's ``keep=`` contract
    assert mask_to_keep_idx(mask).tolist() == [[0, 3, 5, 9], [1, 2, 14, 15]]
    with pytest.raises(ValueError, match="same number"):
        small(x, mask=torch.tensor([[True] * 3 + [False] * 13, [True] * 4 + [False] * 12]))


def test_vit_rejects_bad_patch_size() -> None:
    with pytest.raises(ValueError, match="does not divide"):
        build_model("vit_tiny", image_size=28, patch_size=5)


def test_registry_errors() -> None:
    with pytest.raises(KeyError, match="shufflev1"):
        build_model("ShuffleV1")
    with pytest.raises(TypeError, match="width"):
        build_model("convnet", widht=64)
    with pytest.raises(ValueError, match="already registered"):
        register_model("resnet20")(lambda **_: nn.Identity())
    assert "resnet20" in MODELS and list_models() == sorted(MODELS)


def test_mlp_vector_input_and_profile() -> None:
    model = build_model("mlp", num_classes=3, input_dim=20, hidden=(16, 8))
    assert model(torch.randn(4, 20)).shape == (4, 3)
    assert count_parameters(model) == 20 * 16 + 16 + 16 * 8 + 8 + 8 * 3 + 3
    model.body[0][0].weight.requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == count_parameters(model) - 20 * 16
    assert count_macs(model, (20,)) == 20 * 16 + 16 * 8 + 8 * 3
    assert 0.0 < latency_per_image(model, (20,), batch=4, repeats=2, warmup=1) < 1.0

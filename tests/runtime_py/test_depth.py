"""Depth Anything V2: pre/post-processing, original-layout checkpoints, the static depth component."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from runtime_py.backends.torch_backend import wrap_component
from runtime_py.checkpoints.depth_anything import (
    DepthCheckpointError,
    detect_depth_size,
    load_depth_anything,
)
from runtime_py.components import DepthComponent, depth_component
from runtime_py.model import get_config
from runtime_py.model.depth import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DepthInputError,
    DepthOutputError,
    OriginalDinov2Embeddings,
    StaticDepthAnything,
    _constrain_to_multiple,
    build_depth_model,
    estimate_depth,
    estimate_depth_static,
    network_input_shape,
    original_position_embedding,
    preprocess,
)

TINY = get_config("tiny")
S = TINY.depth_input  # 70 px: a 5 x 5 patch grid, so the position embedding is resized from 37 x 37


@pytest.fixture(scope="module")
def model():
    return build_depth_model("test", seed=0)


def _image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth gradient plus noise: enough structure for a non-constant depth map."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([yy / height, xx / width, (yy + xx) / (height + width)], axis=-1) * 200
    return np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)


def _normalize(rgb: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (rgb - mean) / std


# ----------------------------------------------------------------------------- pre-processing


def test_lower_bound_resize_shapes():
    # 480 x 640: scale 518/480; width 690.7 -> nearest multiple of 14 is 686 (>= 518).
    assert network_input_shape(480, 640) == (518, 686)
    assert network_input_shape(640, 480) == (686, 518)
    assert network_input_shape(1000, 1000) == (518, 518)
    assert network_input_shape(50, 80, 70) == (70, 112)
    # Rounding is numpy's half-to-even (511 = 36.5 * 14 -> 504); below the minimum it ceils instead.
    assert _constrain_to_multiple(511, 0) == 504
    assert _constrain_to_multiple(520, 518) == 518
    assert _constrain_to_multiple(520, 519) == 532
    with pytest.raises(ValueError, match="multiple of 14"):
        network_input_shape(100, 100, 500)


def test_preprocess_normalises_with_imagenet_stats():
    image = np.full((30, 45, 3), 128, np.uint8)  # bicubic resize of a constant image is that constant
    x = preprocess(image, 70)
    assert x.shape == (1, 3, 70, 112)  # 105 = 7.5 * 14 rounds half-to-even to 8 * 14
    expected = (128 / 255 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(x.mean(dim=(0, 2, 3)), expected, atol=1e-5, rtol=0)
    assert float(x.std(dim=(2, 3)).max()) < 1e-5


def _bicubic_1d_matrix(n_in: int, n_out: int, step: float) -> np.ndarray:
    """(n_out, n_in) weights of torch-style bicubic resampling (Keys kernel, a = -0.75, indices
    clamped at the borders, half-pixel centres) sampling source ``(i + 0.5) * step - 0.5``."""
    a = -0.75

    def kernel(x: float) -> float:
        x = abs(x)
        if x <= 1:
            return ((a + 2) * x - (a + 3)) * x * x + 1
        if x < 2:
            return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
        return 0.0

    weights = np.zeros((n_out, n_in))
    for i in range(n_out):
        src = (i + 0.5) * step - 0.5
        base = math.floor(src)
        for tap in range(base - 1, base + 3):
            weights[i, min(max(tap, 0), n_in - 1)] += kernel(src - tap)
    return weights


def test_position_embedding_resize_uses_original_offset():
    # Original DINOv2 resizes the 37 x 37 grid with scale_factor (n + 0.1) / 37, i.e. it samples
    # source (i + 0.5) * 37 / (n + 0.1) - 0.5: checked against an independent numpy bicubic.
    grid, dim, out_rows, out_cols = 37, 3, 5, 8
    embedding = torch.randn(1, 1 + grid * grid, dim, generator=torch.Generator().manual_seed(0))
    assert original_position_embedding(embedding, grid, grid) is embedding  # no resize on 37 x 37
    out = original_position_embedding(embedding, out_rows, out_cols)
    assert out.shape == (1, 1 + out_rows * out_cols, dim)
    assert torch.equal(out[0, 0], embedding[0, 0])  # the class token's embedding is kept
    patch = embedding[0, 1:].reshape(grid, grid, dim).double().numpy()
    rows = _bicubic_1d_matrix(grid, out_rows, grid / (out_rows + 0.1))
    cols = _bicubic_1d_matrix(grid, out_cols, grid / (out_cols + 0.1))
    expected = np.einsum("ri,ijd,cj->rcd", rows, patch, cols).reshape(out_rows * out_cols, dim)
    # float32 resampling of O(1) values summed over 16 taps: 1e-5 is ample.
    np.testing.assert_allclose(out[0, 1:].double().numpy(), expected, atol=1e-5)
    # transformers' own size-based resize samples (i + 0.5) * 37 / n - 0.5: measurably different.
    rows_by_size = _bicubic_1d_matrix(grid, out_rows, grid / out_rows)
    cols_by_size = _bicubic_1d_matrix(grid, out_cols, grid / out_cols)
    by_size = np.einsum("ri,ijd,cj->rcd", rows_by_size, patch, cols_by_size).reshape(out_rows * out_cols, dim)
    assert np.abs(by_size - expected).max() > 1e-2


# ----------------------------------------------------------------------------- reference inference


def test_estimate_depth_is_a_normalised_map(model):
    image = _image(50, 80)
    depth = estimate_depth(model, image, S)
    assert depth.shape == (50, 80) and depth.dtype == np.float32
    assert depth.min() == 0.0 and 0.99 < depth.max() <= 1.0
    assert depth.std() > 0.01  # a real map, not a constant
    assert np.array_equal(depth, estimate_depth(model, image, S))
    assert isinstance(model.backbone.embeddings, OriginalDinov2Embeddings)


def test_bad_images_are_refused(model):
    with pytest.raises(DepthInputError, match="uint8"):
        estimate_depth(model, _image(50, 80).astype(np.float32), S)
    with pytest.raises(DepthInputError, match="alpha"):
        estimate_depth(model, np.zeros((50, 80, 4), np.uint8), S)
    with pytest.raises(DepthInputError, match="H x W x 3"):
        estimate_depth(model, np.zeros((50, 80), np.uint8), S)
    with pytest.raises(DepthInputError, match="too small"):
        estimate_depth(model, np.zeros((10, 80, 3), np.uint8), S)
    with pytest.raises(DepthInputError, match="numpy array"):
        estimate_depth(model, [[0, 0, 0]], S)


def test_nan_network_output_is_an_error():
    broken = build_depth_model("test", seed=1)
    with torch.no_grad():
        broken.head.conv3.bias.fill_(float("nan"))
    with pytest.raises(DepthOutputError, match="non-finite"):
        estimate_depth(broken, _image(40, 40), S)


# ----------------------------------------------------------------------------- static component


def test_static_network_matches_transformers_forward(model):
    static = StaticDepthAnything(model, S).eval()
    rgb = torch.rand(1, 3, S, S, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = static(rgb)
        theirs = model(pixel_values=_normalize(rgb)).predicted_depth
    assert ours.shape == (1, 1, S, S)
    # Same modules, same order of operations: only float reassociation could differ.
    torch.testing.assert_close(ours[:, 0], theirs, atol=1e-6 * float(theirs.abs().max()) + 1e-9, rtol=1e-5)


def test_depth_component_specs_and_static_host_path(model):
    component = depth_component(model, TINY)
    assert isinstance(component, DepthComponent) and component.name == "depth"
    (rgb_spec,) = component.input_specs()
    (out_spec,) = component.output_specs()
    assert rgb_spec.name == "rgb" and rgb_spec.shape == (1, 3, S, S) and rgb_spec.value_range == (0.0, 1.0)
    assert out_spec.name == "disparity" and out_spec.shape == (1, 1, S, S)
    fn = wrap_component(component)
    # For an S x S image both paths resize S -> S (an identity) and run the same network, so the
    # static host path must reproduce the reference up to float rounding.
    square = _image(S, S, seed=3)
    torch.testing.assert_close(
        torch.from_numpy(estimate_depth_static(fn, square, S)),
        torch.from_numpy(estimate_depth(model, square, S)),
        atol=1e-5, rtol=0,
    )
    other = estimate_depth_static(fn, _image(45, 90, seed=4), S)
    assert other.shape == (45, 90) and other.min() == 0.0 and 0.99 < other.max() <= 1.0


def test_static_host_path_rejects_bad_component_outputs():
    image = _image(40, 60)
    with pytest.raises(DepthOutputError, match="non-finite"):
        estimate_depth_static(lambda x: np.full((1, 1, S, S), np.nan, np.float32), image, S)
    with pytest.raises(DepthOutputError, match="shape"):
        estimate_depth_static(lambda x: np.zeros((1, S, S), np.float32), image, S)
    with pytest.raises(ValueError, match="multiple of 14"):
        estimate_depth_static(lambda x: x, image, 71)
    with pytest.raises(ValueError, match="multiple of 14"):
        depth_component(build_depth_model("test"), TINY.replace(depth_input=71))


def test_depth_component_exports_statically(model):
    component = depth_component(model, TINY)
    example = component.example_inputs(seed=1)
    program = torch.export.export(component, example, strict=False)
    targets = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    # The position embedding is a precomputed constant: no bicubic resampling left in the graph.
    assert not any("bicubic" in t for t in targets), targets
    with torch.no_grad():
        eager = component(*example)
        exported = program.module()(*example)
    torch.testing.assert_close(exported, eager, atol=1e-6, rtol=1e-5)


# ----------------------------------------------------------------------------- original-layout checkpoints


def to_original_layout(model) -> dict[str, torch.Tensor]:
    """The inverse of the loader's mapping, written independently: transformers -> original keys."""
    out: dict[str, torch.Tensor] = {}
    for key, tensor in model.state_dict().items():
        k = key
        k = k.replace("backbone.embeddings.cls_token", "pretrained.cls_token")
        k = k.replace("backbone.embeddings.mask_token", "pretrained.mask_token")
        k = k.replace("backbone.embeddings.position_embeddings", "pretrained.pos_embed")
        k = k.replace("backbone.embeddings.patch_embeddings.projection", "pretrained.patch_embed.proj")
        k = k.replace("backbone.layernorm", "pretrained.norm")
        k = k.replace("backbone.encoder.layer.", "pretrained.blocks.")
        k = k.replace("attention.o_proj", "attn.proj")
        k = k.replace("layer_scale1.lambda1", "ls1.gamma").replace("layer_scale2.lambda1", "ls2.gamma")
        k = k.replace("neck.reassemble_stage.layers.", "depth_head.LAYER.")
        if k.startswith("depth_head.LAYER."):
            index, rest = k[len("depth_head.LAYER."):].split(".", 1)
            kind = "projects" if rest.startswith("projection") else "resize_layers"
            k = f"depth_head.{kind}.{index}.{rest.split('.', 1)[1]}"
        if k.startswith("neck.convs."):
            k = f"depth_head.scratch.layer{int(k.split('.')[2]) + 1}_rn.weight"
        if k.startswith("neck.fusion_stage.layers."):
            parts = k.split(".")
            stage = 4 - int(parts[3])
            rest = ".".join(parts[4:])
            rest = rest.replace("projection", "out_conv").replace("residual_layer", "resConfUnit")
            rest = rest.replace("convolution", "conv")
            k = f"depth_head.scratch.refinenet{stage}.{rest}"
        k = k.replace("head.conv1", "depth_head.scratch.output_conv1")
        k = k.replace("head.conv2", "depth_head.scratch.output_conv2.0")
        k = k.replace("head.conv3", "depth_head.scratch.output_conv2.2")
        out[k] = tensor.clone()
    for key in [k for k in out if ".attention.q_proj." in k]:
        param = key.rsplit(".", 1)[1]
        block = key.split(".attention.")[0]
        out[f"{block}.attn.qkv.{param}"] = torch.cat(
            [out.pop(f"{block}.attention.{name}.{param}") for name in ("q_proj", "k_proj", "v_proj")], dim=0
        )
    return out


@pytest.fixture(scope="module")
def original_state(model):
    state = to_original_layout(model)
    assert not any(k.startswith(("backbone.", "neck.", "head.")) for k in state)
    assert state["pretrained.blocks.0.attn.qkv.weight"].shape == (96, 32)
    return state


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_original_checkpoint_round_trip(model, original_state, tmp_path, suffix):
    path = tmp_path / f"DAdepth{suffix}"
    if suffix == ".pth":
        torch.save(original_state, path)
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in original_state.items()}, str(path))
    assert detect_depth_size(original_state) == "test"
    loaded = load_depth_anything(path)
    reference = model.state_dict()
    assert set(loaded.state_dict()) == set(reference)
    for key, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, reference[key]), key
    image = _image(42, 70, seed=5)
    assert np.array_equal(estimate_depth(loaded, image, S), estimate_depth(model, image, S))


def test_checkpoint_wrappers_are_unwrapped(model, original_state):
    wrapped = {"model": {f"module.{k}": v for k, v in original_state.items()}}
    loaded = load_depth_anything(wrapped, size="test")
    assert torch.equal(loaded.head.conv3.weight, model.head.conv3.weight)


def test_wrong_size_checkpoint_is_refused(original_state):
    with pytest.raises(DepthCheckpointError) as info:
        load_depth_anything(original_state, size="vits")
    message = str(info.value)
    assert "'vits'" in message and "'test'-size" in message
    assert "hidden 32, 4 blocks" in message and "hidden 384, 12 blocks" in message
    assert "wrong shape" in message and "lacks: pretrained.blocks.4." in message  # ViT-S blocks 4..11


def test_missing_and_unconsumed_keys_are_named(original_state):
    state = dict(original_state)
    del state["depth_head.scratch.refinenet2.out_conv.weight"]
    state["depth_head.scratch.stray.weight"] = torch.zeros(1)
    with pytest.raises(DepthCheckpointError) as info:
        load_depth_anything(state, size="test")
    message = str(info.value)
    assert "depth_head.scratch.stray.weight" in message and "unconsumed" in message
    assert "depth_head.scratch.refinenet2.out_conv.weight" in message and "lacks" in message
    # Missing the mask token is fine: it is only used in pre-training.
    state = dict(original_state)
    del state["pretrained.mask_token"]
    load_depth_anything(state, size="test")


def test_unreadable_or_foreign_checkpoints_are_refused(model, tmp_path):
    with pytest.raises(DepthCheckpointError, match="transformers' layout"):
        load_depth_anything(model.state_dict())
    with pytest.raises(DepthCheckpointError, match="does not exist"):
        load_depth_anything(tmp_path / "nothing.pth")
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"weights": torch.zeros(1), "factory": math.prod}, unsafe)  # needs code to unpickle
    with pytest.raises(DepthCheckpointError, match="weights-only"):
        load_depth_anything(unsafe)


@pytest.mark.slow
def test_published_sizes_build_and_count_parameters():
    # Depth Anything V2 reports 24.8M (ViT-S), 97.5M (ViT-B) and 335.3M (ViT-L) parameters.
    expected = {"vits": 24.8e6, "vitb": 97.5e6, "vitl": 335.3e6}
    for size, count in expected.items():
        net = build_depth_model(size, seed=0)
        assert math.isclose(sum(p.numel() for p in net.parameters()), count, rel_tol=0.002), size
        if size == "vits":
            component = DepthComponent(net, 518).eval()
            with torch.no_grad():
                out = component(torch.rand(1, 3, 518, 518))
            assert out.shape == (1, 1, 518, 518) and bool(torch.isfinite(out).all())
        del net

"""Depth Anything V2 (the depth module MagicBokeh derives its defocus map from).

The network is Hugging Face ``transformers``' ``DepthAnythingForDepthEstimation`` (a DINOv2 ViT
backbone with patch 14 and a DPT head) configured with the published Depth Anything V2
hyper-parameters. Two details follow the published code rather than transformers' defaults:

* the position embedding is resized the way the original DINOv2 does it (bicubic with a
  ``scale_factor`` of ``(grid + 0.1) / 37``, no antialias), because a non-square photo always
  needs a resized embedding and the user's checkpoint was trained and validated that way;
* pre- and post-processing (``estimate_depth``) match the published inference: RGB / 255,
  bicubic "lower bound" resize to multiples of 14 with the shorter side >= 518, ImageNet
  normalisation, bilinear (corners aligned) resize back, min-max normalisation.

Deployed graphs have one static square input, so ``static_disparity`` runs the same network at a
fixed ``S x S`` with a precomputed position embedding (no bicubic resampling or shape logic in the
graph), and ``estimate_depth_static`` is the host code every backend's depth goes through.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation
from transformers.models.dinov2.modeling_dinov2 import Dinov2Embeddings

PATCH_SIZE = 14
DEFAULT_INPUT_SIZE = 518
# Grid of the position embedding every published DINOv2 / Depth Anything V2 checkpoint stores
# (518 / 14 = 37 patches per side).
PRETRAINED_IMAGE_SIZE = 518
# DINOv2's "historical kludge": the resize scale factor is (grid + 0.1) / 37.
POS_EMBED_INTERPOLATE_OFFSET = 0.1
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Min-max normalisation epsilon of the published code.
NORMALIZE_EPS = 1e-8


class DepthInputError(ValueError):
    """The image handed to the depth module cannot be used (wrong type, layout or size)."""


class DepthOutputError(RuntimeError):
    """The depth network (or an exported depth component) produced an unusable result."""


@dataclass(frozen=True)
class DepthAnythingSize:
    """Hyper-parameters of one Depth Anything V2 size (names as in the original repository)."""

    name: str
    hidden_size: int  # DINOv2 embedding width
    num_layers: int  # DINOv2 blocks
    num_heads: int
    # 0-based indices of the DINOv2 blocks whose (layer-normed) outputs feed the DPT head.
    block_indices: tuple[int, int, int, int]
    features: int  # DPT fusion width ("features")
    out_channels: tuple[int, int, int, int]  # DPT projections ("out_channels")
    head_hidden: int = 32  # channels of the head's second conv (fixed to 32 in the original)
    mlp_ratio: int = 4

    @property
    def out_indices(self) -> list[int]:
        """transformers' backbone stages: stage 0 is the embedding, stage i the output of block i-1."""
        return [i + 1 for i in self.block_indices]


# Published Depth Anything V2 sizes (vitg, with its SwiGLU MLP, is not supported), plus "test": the
# same structure at toy width for unit tests and the built-in default model of small configs.
DEPTH_SIZES: dict[str, DepthAnythingSize] = {
    "vits": DepthAnythingSize("vits", 384, 12, 6, (2, 5, 8, 11), 64, (48, 96, 192, 384)),
    "vitb": DepthAnythingSize("vitb", 768, 12, 12, (2, 5, 8, 11), 128, (96, 192, 384, 768)),
    "vitl": DepthAnythingSize("vitl", 1024, 24, 16, (4, 11, 17, 23), 256, (256, 512, 1024, 1024)),
    "test": DepthAnythingSize("test", 32, 4, 2, (0, 1, 2, 3), 16, (8, 16, 32, 32), head_hidden=8),
}


def get_depth_size(size: str | DepthAnythingSize) -> DepthAnythingSize:
    """A named size (or pass a size through)."""
    if isinstance(size, DepthAnythingSize):
        return size
    try:
        return DEPTH_SIZES[size]
    except KeyError:
        raise ValueError(f"unknown Depth Anything V2 size {size!r}; choose one of {sorted(DEPTH_SIZES)}") from None


def depth_anything_config(size: str | DepthAnythingSize) -> DepthAnythingConfig:
    """The transformers config of a Depth Anything V2 size (relative depth, 37 x 37 position grid)."""
    spec = get_depth_size(size)
    return DepthAnythingConfig(
        backbone_config={
            "model_type": "dinov2",
            "image_size": PRETRAINED_IMAGE_SIZE,
            "patch_size": PATCH_SIZE,
            "hidden_size": spec.hidden_size,
            "num_hidden_layers": spec.num_layers,
            "num_attention_heads": spec.num_heads,
            "mlp_ratio": spec.mlp_ratio,
            "layerscale_value": 1.0,
            "layer_norm_eps": 1e-6,
            "out_indices": spec.out_indices,
            "apply_layernorm": True,
            "reshape_hidden_states": False,
        },
        patch_size=PATCH_SIZE,
        reassemble_hidden_size=spec.hidden_size,
        reassemble_factors=[4, 2, 1, 0.5],
        neck_hidden_sizes=list(spec.out_channels),
        fusion_hidden_size=spec.features,
        head_hidden_size=spec.head_hidden,
        depth_estimation_type="relative",
    )


# ----------------------------------------------------------------------------- position embedding


def original_position_embedding(position_embeddings: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """The position embedding for a ``rows x cols`` patch grid, resized as original DINOv2 does.

    ``position_embeddings`` is (1, 1 + M*M, D). The stored embedding is used unchanged for a square
    M x M grid; otherwise the patch part is resized bicubically (float32, no antialias) with the
    scale factors ``((rows + 0.1) / M, (cols + 0.1) / M)``. The 0.1 changes the sampling positions,
    not only the output size, which is why transformers' size-based resize differs slightly.
    """
    num_positions = position_embeddings.shape[1] - 1
    grid = int(math.isqrt(num_positions))
    if grid * grid != num_positions:
        raise ValueError(f"position embedding holds {num_positions} patch positions, not a square grid")
    if rows == grid and cols == grid:
        return position_embeddings
    dim = position_embeddings.shape[-1]
    original_dtype = position_embeddings.dtype
    embedding = position_embeddings.float()
    class_embedding = embedding[:, :1]
    patch_embedding = embedding[:, 1:].reshape(1, grid, grid, dim).permute(0, 3, 1, 2)
    scale = (
        (rows + POS_EMBED_INTERPOLATE_OFFSET) / grid,
        (cols + POS_EMBED_INTERPOLATE_OFFSET) / grid,
    )
    patch_embedding = F.interpolate(patch_embedding, scale_factor=scale, mode="bicubic", antialias=False)
    if tuple(patch_embedding.shape[-2:]) != (rows, cols):
        raise RuntimeError(f"position embedding resized to {tuple(patch_embedding.shape[-2:])}, expected {(rows, cols)}")
    patch_embedding = patch_embedding.permute(0, 2, 3, 1).reshape(1, rows * cols, dim)
    return torch.cat((class_embedding, patch_embedding), dim=1).to(original_dtype)


class OriginalDinov2Embeddings(Dinov2Embeddings):
    """transformers' DINOv2 embeddings with the original repository's position-embedding resize.

    Only ``interpolate_pos_encoding`` differs; parameters and state-dict keys are unchanged.
    """

    def interpolate_pos_encoding(self, embeddings: torch.Tensor, height: int, width: int) -> torch.Tensor:
        patch_rows, patch_cols = self.patch_embeddings.patch_size
        return original_position_embedding(self.position_embeddings, height // patch_rows, width // patch_cols)


def use_original_position_embedding(model: DepthAnythingForDepthEstimation) -> DepthAnythingForDepthEstimation:
    """Make ``model`` resize its position embedding like the published code (in place; returns it)."""
    embeddings = model.backbone.embeddings
    if not isinstance(embeddings, Dinov2Embeddings):
        raise TypeError(f"expected a DINOv2 backbone, found embeddings of type {type(embeddings).__name__}")
    embeddings.__class__ = OriginalDinov2Embeddings
    return model


def build_depth_model(size: str | DepthAnythingSize = "test", seed: int | None = 0) -> DepthAnythingForDepthEstimation:
    """A Depth Anything V2 network with seeded random weights, in eval mode.

    Real weights come from the user's checkpoint
    (``runtime_py.checkpoints.depth_anything.load_depth_anything``). The global RNG state is
    restored afterwards so that building a model never changes what other code draws.
    """
    rng_state = torch.random.get_rng_state()
    if seed is not None:
        torch.manual_seed(seed)
    try:
        model = DepthAnythingForDepthEstimation(depth_anything_config(size))
        # transformers' std-0.02 init makes a random DPT head's output vanish (~1e-7), so every
        # comparison on a random model would compare rounding noise; unit-gain fan-in init keeps the
        # random disparity of order 0.1..1 with a mix of positive and ReLU-zeroed pixels.
        for module in list(model.neck.modules()) + list(model.head.modules()):
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="linear")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
    finally:
        if seed is not None:
            torch.random.set_rng_state(rng_state)
    return use_original_position_embedding(model).eval()


def depth_size_of(model: DepthAnythingForDepthEstimation) -> str | None:
    """The name of the published size ``model`` has, or None for a custom one."""
    backbone = model.config.backbone_config
    for name, spec in DEPTH_SIZES.items():
        if (
            backbone.hidden_size == spec.hidden_size
            and backbone.num_hidden_layers == spec.num_layers
            and list(backbone.out_indices) == spec.out_indices
            and model.config.fusion_hidden_size == spec.features
            and list(model.config.neck_hidden_sizes) == list(spec.out_channels)
        ):
            return name
    return None


# ----------------------------------------------------------------------------- pre/post-processing


def check_image(image_u8: np.ndarray) -> np.ndarray:
    """Validate an H x W x 3 uint8 RGB image (returns it); raise DepthInputError otherwise."""
    if not isinstance(image_u8, np.ndarray):
        raise DepthInputError(f"depth input must be a numpy array (H x W x 3 uint8 RGB), got {type(image_u8).__name__}")
    if image_u8.dtype != np.uint8:
        raise DepthInputError(f"depth input must be uint8 RGB (0..255), got dtype {image_u8.dtype}")
    if image_u8.ndim != 3 or image_u8.shape[2] != 3:
        hint = " (drop the alpha channel first)" if image_u8.ndim == 3 and image_u8.shape[2] == 4 else ""
        raise DepthInputError(f"depth input must be H x W x 3 RGB, got shape {image_u8.shape}{hint}")
    height, width = image_u8.shape[:2]
    if min(height, width) < PATCH_SIZE:
        raise DepthInputError(f"depth input of {height} x {width} px is too small: each side must be >= {PATCH_SIZE} px")
    return image_u8


def _constrain_to_multiple(value: float, minimum: int, multiple: int = PATCH_SIZE) -> int:
    """Round to a multiple (numpy's half-to-even round, as published); ceil if that is below minimum."""
    rounded = int(np.round(value / multiple) * multiple)
    if rounded < minimum:
        rounded = int(np.ceil(value / multiple) * multiple)
    return rounded


def network_input_shape(height: int, width: int, input_size: int = DEFAULT_INPUT_SIZE) -> tuple[int, int]:
    """(rows, cols) the published "lower bound" resize gives an image of ``height x width``.

    Both sides are scaled by the larger of ``input_size / height`` and ``input_size / width`` (so
    the shorter side reaches ``input_size``), then each is constrained to a multiple of 14 no
    smaller than ``input_size``.
    """
    if input_size < PATCH_SIZE or input_size % PATCH_SIZE:
        raise ValueError(f"depth input size must be a positive multiple of {PATCH_SIZE}, got {input_size}")
    scale = max(input_size / height, input_size / width)
    return (_constrain_to_multiple(scale * height, input_size), _constrain_to_multiple(scale * width, input_size))


def _normalize_imagenet(rgb: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN, dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1)
    return (rgb - mean) / std


def _to_unit_tensor(image_u8: np.ndarray) -> torch.Tensor:
    """H x W x 3 uint8 -> (1, 3, H, W) float32 in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(image_u8)).permute(2, 0, 1)[None].float() / 255.0


def preprocess(image_u8: np.ndarray, input_size: int = DEFAULT_INPUT_SIZE) -> torch.Tensor:
    """The published pre-processing: (1, 3, rows, cols) ImageNet-normalised network input."""
    check_image(image_u8)
    rows, cols = network_input_shape(image_u8.shape[0], image_u8.shape[1], input_size)
    rgb = F.interpolate(_to_unit_tensor(image_u8), size=(rows, cols), mode="bicubic", align_corners=False)
    return _normalize_imagenet(rgb)


def normalize_depth(disparity: torch.Tensor | np.ndarray) -> np.ndarray:
    """Min-max normalise to [0, 1] as published: ``(d - min) / (max - min + 1e-8)`` (float32).

    Raises DepthOutputError on NaN/inf, so a broken backend cannot pass a garbage map downstream.
    """
    d = torch.as_tensor(disparity, dtype=torch.float32)
    if not bool(torch.isfinite(d).all()):
        bad = int((~torch.isfinite(d)).sum())
        raise DepthOutputError(f"depth network output holds {bad} non-finite values (NaN/inf) out of {d.numel()}")
    lo, hi = d.min(), d.max()
    return ((d - lo) / (hi - lo + NORMALIZE_EPS)).cpu().numpy().astype(np.float32, copy=False)


def resize_disparity(disparity: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(rows, cols) or (1, 1, rows, cols) -> (height, width), bilinear with corners aligned."""
    d = disparity.reshape(1, 1, *disparity.shape[-2:]).float()
    return F.interpolate(d, size=(height, width), mode="bilinear", align_corners=True)[0, 0]


def estimate_depth(
    model: DepthAnythingForDepthEstimation,
    image_u8: np.ndarray,
    input_size: int = DEFAULT_INPUT_SIZE,
) -> np.ndarray:
    """The reference depth map of an H x W x 3 uint8 RGB image: H x W float32 in [0, 1], larger = nearer.

    Dynamic shapes, aspect ratio kept: this is the published inference, and the yardstick the
    static deployed path (``estimate_depth_static``) is measured against.
    """
    pixel_values = preprocess(image_u8, input_size)
    parameter = next(model.parameters())
    with torch.no_grad():
        out = model(pixel_values=pixel_values.to(device=parameter.device, dtype=parameter.dtype))
    disparity = out.predicted_depth if hasattr(out, "predicted_depth") else out[0]
    height, width = image_u8.shape[:2]
    return normalize_depth(resize_disparity(disparity.float().cpu(), height, width))


# ----------------------------------------------------------------------------- static (deployable) path


def check_static_size(size: int) -> int:
    """A deployable depth input side must be a positive multiple of the patch size."""
    if not isinstance(size, (int, np.integer)) or size < PATCH_SIZE or size % PATCH_SIZE:
        raise ValueError(f"static depth input size must be a positive multiple of {PATCH_SIZE}, got {size!r}")
    return int(size)


class StaticDepthAnything(nn.Module):
    """``model`` at one fixed ``size x size`` input: rgb in [0, 1] -> (1, 1, size, size) disparity.

    Same modules and weights as ``model`` (shared, not copied). What differs from calling the
    transformers model is only what an exporter needs: ImageNet normalisation is part of the graph,
    the position embedding for the fixed grid is precomputed (a constant: no bicubic resampling in
    the graph), and the backbone is walked block by block (no output-capturing hooks).
    """

    def __init__(self, model: DepthAnythingForDepthEstimation, size: int):
        super().__init__()
        self.size = check_static_size(size)
        self.model = model
        self.grid = self.size // PATCH_SIZE
        embeddings = model.backbone.embeddings
        with torch.no_grad():
            position = original_position_embedding(embeddings.position_embeddings.detach(), self.grid, self.grid)
        self.register_buffer("position_embedding", position.clone(), persistent=False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.out_indices = tuple(int(i) for i in model.config.backbone_config.out_indices)

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        backbone = self.model.backbone
        x = (rgb - self.mean) / self.std
        tokens = backbone.embeddings.patch_embeddings(x)
        cls = backbone.embeddings.cls_token.expand(tokens.shape[0], -1, -1)
        hidden = torch.cat((cls, tokens), dim=1) + self.position_embedding
        features: list[torch.Tensor] = []
        if 0 in self.out_indices:
            features.append(backbone.layernorm(hidden))
        for index, layer in enumerate(backbone.encoder.layer, start=1):
            out = layer(hidden)
            hidden = out[0] if isinstance(out, tuple) else out
            if index in self.out_indices:
                features.append(backbone.layernorm(hidden))
            if index >= max(self.out_indices):
                break  # later blocks do not feed the head
        fused = self.model.neck(features, self.grid, self.grid)
        disparity = self.model.head(fused, self.grid, self.grid)
        return disparity.unsqueeze(1)


def estimate_depth_static(
    component_fn: Callable[..., np.ndarray],
    image_u8: np.ndarray,
    size: int,
) -> np.ndarray:
    """Depth through a static ``size x size`` depth component: H x W float32 in [0, 1].

    ``component_fn`` takes a (1, 3, size, size) float32 array (sRGB in [0, 1]) and returns a
    (1, 1, size, size) disparity array (any backend's callable). The host resizes the whole image
    to ``size x size`` bicubically (aspect ratio NOT kept: the deployed graph has one static
    square input), clamps to the declared [0, 1] range, runs the component, resizes the disparity
    back bilinearly with corners aligned and min-max normalises, exactly like ``estimate_depth``.
    """
    check_image(image_u8)
    size = check_static_size(size)
    height, width = image_u8.shape[:2]
    rgb = F.interpolate(_to_unit_tensor(image_u8), size=(size, size), mode="bicubic", align_corners=False)
    rgb = rgb.clamp(0.0, 1.0).numpy().astype(np.float32, copy=False)
    out = np.asarray(component_fn(rgb))
    if out.shape != (1, 1, size, size):
        raise DepthOutputError(f"depth component returned shape {out.shape}, expected {(1, 1, size, size)}")
    disparity = torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))
    if not bool(torch.isfinite(disparity).all()):
        raise DepthOutputError(
            f"depth component returned {int((~torch.isfinite(disparity)).sum())} non-finite values (NaN/inf)"
        )
    return normalize_depth(resize_disparity(disparity, height, width))


def depth_parameter_count(model: nn.Module, prefixes: Sequence[str] = ("",)) -> int:
    """Number of parameters whose names start with one of ``prefixes`` (all by default)."""
    return sum(p.numel() for n, p in model.named_parameters() if n.startswith(tuple(prefixes)))

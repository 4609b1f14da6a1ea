"""Deployable components: the static-shape, tensor-only graphs every exporter lowers.

``encoder(rgb) -> latent``, ``denoiser(latent, defocus, in_focus) -> x0``, ``decoder(x0) -> rgb``
and ``depth(rgb) -> disparity``. Each states its inputs and outputs once, as :class:`TensorSpec`
(shape, dtype, value range, layout, colour space); the artifact manifest is generated from these
statements, and the backends check what they load against them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import torch
from torch import nn

from .model.config import MagicBokehConfig

if TYPE_CHECKING:  # the model (and diffusers) is imported only by whoever builds one
    from .model import MagicBokeh

COMPONENT_NAMES = ("encoder", "denoiser", "decoder", "depth")
TILE_COMPONENTS = ("encoder", "denoiser", "decoder")
"""The per-tile components, in run order: the one list the pipeline, parity, calibration and benchmarks use."""


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a component, as the manifest and the apps see it."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    value_range: tuple[float, float] | None = None
    layout: str = "NCHW"
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["shape"] = list(self.shape)
        data["value_range"] = list(self.value_range) if self.value_range is not None else None
        return data

    def example(self, generator: torch.Generator | None = None) -> torch.Tensor:
        lo, hi = self.value_range if self.value_range is not None else (-1.0, 1.0)
        x = torch.rand(self.shape, generator=generator) * (hi - lo) + lo
        if self.extra.get("binary"):
            x = (x > (lo + hi) / 2).to(torch.float32)
        return x


class Component(nn.Module):
    """A deployable graph with a declared interface."""

    name: str = ""

    def input_specs(self) -> list[TensorSpec]:
        raise NotImplementedError

    def output_specs(self) -> list[TensorSpec]:
        raise NotImplementedError

    def example_inputs(self, seed: int = 0) -> tuple[torch.Tensor, ...]:
        g = torch.Generator().manual_seed(seed)
        return tuple(spec.example(g) for spec in self.input_specs())


def _latent_spec(config: MagicBokehConfig, name: str, description: str) -> TensorSpec:
    lt = config.latent_tile
    return TensorSpec(name, (1, config.latent_channels, lt, lt), description=description,
                      extra={"latent_scale": config.latent_scale})


class EncoderComponent(Component):
    """RGB tile (1, 3, T, T), sRGB in [-1, 1] -> scaled latent mean (1, C, T/f, T/f), f the VAE factor."""

    name = "encoder"

    def __init__(self, model: MagicBokeh):
        super().__init__()
        self.model = model
        self.config = model.config

    def input_specs(self) -> list[TensorSpec]:
        t = self.config.tile
        return [TensorSpec("rgb", (1, 3, t, t), value_range=(-1.0, 1.0),
                           description="sRGB tile, 2 * (uint8 / 255) - 1", extra={"colour_space": "sRGB"})]

    def output_specs(self) -> list[TensorSpec]:
        return [_latent_spec(self.config, "latent", "VAE latent mean times latent_scale")]

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        return self.model.encode(rgb)


class DenoiserComponent(Component):
    """Injector + UNet + one DDPM step: (latent, defocus, in_focus) -> x0 latent."""

    name = "denoiser"

    def __init__(self, model: MagicBokeh):
        super().__init__()
        self.model = model
        self.config = model.config

    def input_specs(self) -> list[TensorSpec]:
        t = self.config.tile
        return [
            _latent_spec(self.config, "latent", "encoder output"),
            TensorSpec("defocus", (1, 1, t, t), value_range=(0.0, 1.0),
                       description="|depth - focus| * K / 32 for the tile"),
            TensorSpec("in_focus", (1, 1, t, t), value_range=(0.0, 1.0),
                       description=f"1 where defocus <= {self.config.defocus_in_focus_threshold}, else 0",
                       extra={"binary": True}),
        ]

    def output_specs(self) -> list[TensorSpec]:
        return [_latent_spec(self.config, "x0", "denoised latent (times latent_scale)")]

    def forward(self, latent: torch.Tensor, defocus: torch.Tensor, in_focus: torch.Tensor) -> torch.Tensor:
        return self.model.denoise(latent, defocus, in_focus)


class DecoderComponent(Component):
    """Scaled latent (1, C, T/f, T/f) -> RGB tile (1, 3, T, T) in [-1, 1] (clamped)."""

    name = "decoder"

    def __init__(self, model: MagicBokeh):
        super().__init__()
        self.model = model
        self.config = model.config

    def input_specs(self) -> list[TensorSpec]:
        return [_latent_spec(self.config, "x0", "denoiser output")]

    def output_specs(self) -> list[TensorSpec]:
        t = self.config.tile
        return [TensorSpec("rgb", (1, 3, t, t), value_range=(-1.0, 1.0),
                           description="sRGB tile; uint8 = trunc((rgb + 1) / 2 * 255)",
                           extra={"colour_space": "sRGB"})]

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        return self.model.decode(x0)


def tile_components(model: MagicBokeh) -> dict[str, Component]:
    """The three per-tile components of a model (depth is built from the depth model)."""
    return {
        "encoder": EncoderComponent(model).eval(),
        "denoiser": DenoiserComponent(model).eval(),
        "decoder": DecoderComponent(model).eval(),
    }


class DepthComponent(Component):
    """Depth Anything V2 at a static square input: rgb (1, 3, S, S) in [0, 1] -> disparity (1, 1, S, S).

    S = ``config.depth_input`` (518 for sd21/small), a multiple of 14. A static square input means
    the host resizes the whole image to S x S (bicubic, aspect ratio NOT kept) before the graph and
    the disparity back to the image size afterwards (``runtime_py.model.depth.estimate_depth_static``
    does both, so every backend's depth goes through the same host code). ImageNet normalisation is
    inside the graph; the output is the network's raw relative disparity (>= 0, larger = nearer),
    min-max normalised by the host.
    """

    name = "depth"

    def __init__(self, depth_model: nn.Module, input_size: int):
        super().__init__()
        from .model.depth import StaticDepthAnything, depth_size_of

        self.static = StaticDepthAnything(depth_model, input_size)
        self.input_size = self.static.size
        self.depth_size = depth_size_of(depth_model)

    def input_specs(self) -> list[TensorSpec]:
        s = self.input_size
        return [TensorSpec("rgb", (1, 3, s, s), value_range=(0.0, 1.0),
                           description=f"sRGB uint8 / 255, whole image resized bicubically to {s} x {s} "
                                       "(aspect ratio not kept), clamped to [0, 1]",
                           extra={"colour_space": "sRGB", "host_resize": "bicubic", "keeps_aspect": False})]

    def output_specs(self) -> list[TensorSpec]:
        s = self.input_size
        return [TensorSpec("disparity", (1, 1, s, s), value_range=None,
                           description="raw relative disparity (>= 0, larger = nearer); host resizes it back "
                                       "bilinearly (align_corners=True) and min-max normalises",
                           extra={"depth_size": self.depth_size, "host_resize_back": "bilinear_align_corners"})]

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        return self.static(rgb)


def depth_component(depth_model: nn.Module, config: MagicBokehConfig) -> DepthComponent:
    """The deployable depth component of ``depth_model`` at ``config.depth_input`` pixels square."""
    return DepthComponent(depth_model, config.depth_input).eval()


def export_components(model: MagicBokeh, names: Sequence[str], depth_checkpoint: Path | str | None = None) -> dict[str, Component]:
    """The components an exporter lowers: the tile components, plus ``depth`` when ``names`` asks for it.

    Depth comes from ``depth_checkpoint`` (Depth Anything V2, original layout) or, without one, is a
    seeded network of the configuration's depth size: the toolkit ships no depth weights, and the
    tile components never need it, so it is built only on request.
    """
    components: dict[str, Component] = dict(tile_components(model))
    if "depth" in names:
        if depth_checkpoint is not None:
            from .checkpoints.depth_anything import load_depth_anything

            depth_model = load_depth_anything(depth_checkpoint)
        else:
            from .model.depth import build_depth_model

            depth_model = build_depth_model(model.config.depth_size)
        components["depth"] = depth_component(depth_model.eval(), model.config)
    return components

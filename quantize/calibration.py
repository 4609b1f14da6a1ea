"""Calibration data for post-training quantization: the inputs each component sees in real use.

Every quantizer (XNNPACK PT2E here, Core ML and ONNX/QNN in their own modules) calibrates on the
same thing: real-looking photos with their depth maps and focus masks (``runtime_py.samples``),
cut into tiles by the pipeline's tiling, with the fp32 reference run stage by stage so that the
encoder gets photo tiles, the denoiser gets the reference encoder's latents with the tile's
defocus map and in-focus mask, and the decoder gets the reference denoiser's output. The depth
component gets the host-resized photo.

Calibrating on random noise instead would set the activation ranges (and, in the denoiser's
focus attention, the mask patterns) from inputs that never occur.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from quantize.recipes import CalibrationSpec
from runtime_py.backends.base import ComponentFn
from runtime_py.backends.torch_backend import wrap_component
from runtime_py.components import TILE_COMPONENTS, Component
from runtime_py.model import MagicBokehConfig
from runtime_py.samples import RealSample, depth_inputs, gather_samples, tile_records


@dataclass
class CalibrationSet:
    """Per component, a list of input tuples (numpy float32, batch of 1) plus where they came from."""

    inputs: dict[str, list[tuple[np.ndarray, ...]]]
    samples: list[str]
    spec: dict[str, Any] = field(default_factory=dict)

    def torch_inputs(self, name: str) -> list[tuple[torch.Tensor, ...]]:
        """The batches for ``name`` as torch tensors, the form PT2E / coremltools calibration takes."""
        if name not in self.inputs:
            raise KeyError(f"no calibration inputs for component {name!r}; have {sorted(self.inputs)}")
        return [tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in batch) for batch in self.inputs[name]]

    def as_torch(self) -> dict[str, list[tuple[torch.Tensor, ...]]]:
        return {name: self.torch_inputs(name) for name in self.inputs}

    def __len__(self) -> int:
        return max((len(v) for v in self.inputs.values()), default=0)

    def describe(self) -> dict[str, Any]:
        """For a manifest: how many batches each component got, from which samples."""
        return {"batches": {k: len(v) for k, v in self.inputs.items()}, "samples": self.samples, **self.spec}


def _as_fns(reference: Mapping[str, Component | ComponentFn]) -> dict[str, ComponentFn]:
    return {name: wrap_component(c) if isinstance(c, Component) else c for name, c in reference.items()}


def collect_calibration(
    reference: Mapping[str, Component | ComponentFn],
    samples: Sequence[RealSample],
    config: MagicBokehConfig,
    *,
    components: Sequence[str] | None = None,
    max_tiles_per_image: int | None = None,
) -> CalibrationSet:
    """Run the fp32 reference over the samples' tiles and keep each component's inputs."""
    fns = _as_fns(reference)
    names = list(components) if components is not None else list(fns)
    unknown = [n for n in names if n not in fns]
    if unknown:
        raise ValueError(f"no reference for components {unknown}; reference has {sorted(fns)}")
    if not samples:
        raise ValueError("calibration needs at least one sample (a generated scene or an image with its depth)")
    inputs: dict[str, list[tuple[np.ndarray, ...]]] = {n: [] for n in names}
    tile_names = [n for n in names if n in TILE_COMPONENTS]
    if tile_names:
        missing = [n for n in TILE_COMPONENTS if n not in fns]
        if missing:
            raise ValueError(f"real tile inputs need the whole reference chain; missing {missing}")
        for record in tile_records(fns, samples, config, max_tiles_per_image=max_tiles_per_image):
            for name in tile_names:
                inputs[name].append(record.inputs(name))
    if "depth" in names:
        inputs["depth"] = [(rgb,) for _, rgb in depth_inputs(samples, config.depth_input)]
    return CalibrationSet(inputs, [s.name for s in samples], {"max_tiles_per_image": max_tiles_per_image})


def build_calibration_set(
    reference: Mapping[str, Component | ComponentFn],
    config: MagicBokehConfig,
    spec: CalibrationSpec | None = None,
    *,
    components: Sequence[str] | None = None,
    images_dir: Path | str | None = None,
) -> CalibrationSet:
    """Gather samples per ``spec`` (scenes and/or the user's images) and collect the inputs.

    The tile components get ``spec.num_scenes`` scenes cut into tiles; ``depth`` gets its own
    ``spec.depth_images`` generated photos at the depth input's size (one photo is one depth
    input, so it needs more photos than the tile components need scenes; the host resizes every
    photo to that square anyway, and smaller scenes are quicker to generate).
    """
    spec = spec or CalibrationSpec()
    folder = images_dir if images_dir is not None else spec.images_dir
    names = list(components) if components is not None else list(reference)
    tile_names = [n for n in names if n != "depth"]
    result = CalibrationSet({}, [], {})
    if tile_names:
        samples = gather_samples(config, num_scenes=spec.num_scenes, images_dir=folder, seed=spec.seed, K=spec.K)
        tiles = collect_calibration(reference, samples, config, components=tile_names,
                                    max_tiles_per_image=spec.max_tiles_per_image)
        result.inputs.update(tiles.inputs)
        result.samples += tiles.samples
    if "depth" in names:
        photos = gather_samples(config, num_scenes=spec.depth_images, images_dir=folder, seed=spec.seed,
                                scene_size=config.depth_input, K=spec.K)
        depth = collect_calibration(reference, photos, config, components=["depth"])
        result.inputs["depth"] = depth.inputs["depth"]
        result.samples += [s for s in depth.samples if s not in result.samples]
    result.spec.update(spec.to_dict() | {"images_dir": str(folder) if folder else None})
    return result

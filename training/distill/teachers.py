"""Teachers: whatever produces the target tile for a batch of inputs.

A teacher is called on a :class:`TileBatch` and returns a :class:`TeacherOutput`. Model teachers
(a user's MagicBokeh checkpoint, sampled with N steps) also give their latents, and expose their
network as ``.model`` so the trainer can tap intermediate features; a renderer teacher (the
physically based bokeh renderer, or targets a scene generator already rendered) only gives the
image. The trainer uses whatever a teacher provides, so the two kinds are interchangeable.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from runtime_py.model import MagicBokehConfig
from .data import TileBatch
from runtime_py.model.sampling import RENOISE_MODES, draw_noises, sample_latent


@dataclass
class TeacherOutput:
    """``rgb`` (B, 3, T, T) in [-1, 1]; ``x0`` the final clean latent and ``latent`` the encoded
    input (both scaled, B x C x T/f x T/f) when the teacher is a latent diffusion model."""

    rgb: torch.Tensor
    x0: torch.Tensor | None = None
    latent: torch.Tensor | None = None


class Teacher(ABC):
    """Produces targets; ``model`` is the network to tap features from (None if there is none)."""

    name: str = "teacher"
    model: nn.Module | None = None
    config: MagicBokehConfig | None = None

    @abstractmethod
    def __call__(self, batch: TileBatch, generator: torch.Generator | None = None) -> TeacherOutput:
        """Targets for ``batch``; ``generator`` drives any randomness (re-noising) reproducibly."""

    def to(self, device: torch.device | str) -> "Teacher":
        if self.model is not None:
            self.model.to(device)
        return self


class ModelTeacher(Teacher):
    """A MagicBokeh model (or a trained student) sampled with ``num_steps`` denoiser steps.

    ``renoise``: ``"ddim"`` (deterministic, the default for distillation) or ``"random"``
    (``MagicBokeh.sample``'s stochastic re-noising); see :mod:`.sampling`.
    """

    def __init__(self, model: nn.Module, num_steps: int = 1, renoise: str = "ddim"):
        if renoise not in RENOISE_MODES:
            raise ValueError(f"renoise must be one of {RENOISE_MODES}, got {renoise!r}")
        if not hasattr(model, "predict_noise") or not hasattr(model, "config"):
            raise TypeError(f"a model teacher needs a MagicBokeh-like model, got {type(model).__name__}")
        if not isinstance(num_steps, int) or num_steps < 1:
            raise ValueError(f"teacher num_steps must be an integer >= 1, got {num_steps!r}")
        self.model = model.eval().requires_grad_(False)
        self.config = model.config
        self.num_steps = num_steps
        self.renoise = renoise
        self.name = f"{model.config.name}@{num_steps}-step" + (f"-{renoise}" if num_steps > 1 else "")

    @torch.no_grad()
    def __call__(self, batch: TileBatch, generator: torch.Generator | None = None) -> TeacherOutput:
        latent = self.model.encode(batch.rgb)
        noises = draw_noises(self.config, latent.shape, self.num_steps, generator)
        x0 = sample_latent(self.model, latent, batch.defocus, batch.in_focus, self.num_steps, noises=noises,
                           renoise=self.renoise)
        rgb = self.model.decode(x0)
        return TeacherOutput(rgb=rgb, x0=x0, latent=latent)


class RendererTeacher(Teacher):
    """A non-neural teacher: ``render(batch) -> rgb`` in [-1, 1] (e.g. the physically based renderer).

    Without a ``render`` function it uses the targets the data already holds (``batch.target``,
    which the scene generator fills with the renderer's output).
    """

    def __init__(self, render: Callable[[TileBatch], torch.Tensor] | None = None, name: str = "renderer"):
        self.render = render
        self.name = name

    @torch.no_grad()
    def __call__(self, batch: TileBatch, generator: torch.Generator | None = None) -> TeacherOutput:
        if self.render is None:
            if batch.target is None:
                raise ValueError(f"teacher {self.name!r} needs data that carries teacher renders (batch.target)")
            return TeacherOutput(rgb=batch.target)
        rgb = self.render(batch)
        if rgb.shape != batch.rgb.shape:
            raise ValueError(f"renderer returned shape {tuple(rgb.shape)}, expected {tuple(batch.rgb.shape)}")
        return TeacherOutput(rgb=rgb)


def render_with_physical_renderer(batch: TileBatch) -> torch.Tensor:
    """The physically based renderer (``runtime_py.bokeh_renderer``) on each tile of a batch.

    Renders the batch's ``clean`` image with its exact ``depth``, ``focus`` and ``aperture``; the
    output is in [-1, 1] like the model's.
    """
    from runtime_py.bokeh_renderer import render_bokeh

    missing = [n for n in ("clean", "depth", "focus", "aperture") if getattr(batch, n) is None]
    if missing:
        raise ValueError(f"the physically based renderer needs the batch fields {missing}")
    outs = []
    for i in range(batch.size):
        image = batch.clean[i].permute(1, 2, 0).cpu().numpy()
        depth = batch.depth[i, 0].cpu().numpy()
        rendered = render_bokeh(image, depth, float(batch.focus[i]), float(batch.aperture[i]))
        outs.append(torch.from_numpy(rendered).permute(2, 0, 1))
    return (torch.stack(outs) * 2.0 - 1.0).to(batch.rgb.device, batch.rgb.dtype)


def renderer_teacher(precomputed: bool = False) -> RendererTeacher:
    """The physically based bokeh renderer as a teacher.

    ``precomputed``: use the renders the scene generator stored with each scene (``batch.target``)
    instead of rendering again.
    """
    if precomputed:
        return RendererTeacher(None, name="bokeh-renderer(scenes)")
    return RendererTeacher(render_with_physical_renderer, name="bokeh-renderer")


def load_model_teacher(
    checkpoint: Path | str | None = None,
    config: MagicBokehConfig | str = "tiny",
    num_steps: int = 1,
    seed: int = 0,
    renoise: str = "ddim",
    sd21: Path | str | None = None,
    lora: Path | str | None = None,
) -> ModelTeacher:
    """A MagicBokeh teacher from the user's weights, or seeded random weights when none are given.

    Sources: ``sd21`` + ``lora`` (the published weights, via ``runtime_py.checkpoints.load_model``),
    ``checkpoint`` = a native ``.safetensors`` file or a folder written by ``save_student`` (a
    trained student can teach the next one, e.g. progressive distillation). Random weights exist
    for trials and tests of the machinery only.
    """
    from runtime_py.model import build_model

    if checkpoint is None and sd21 is None and lora is None:
        return ModelTeacher(build_model(config, seed=seed), num_steps, renoise)
    if checkpoint is not None:
        path = Path(checkpoint)
        if not path.exists():
            raise FileNotFoundError(f"teacher checkpoint {path} does not exist")
        from .students import STUDENT_CONFIG, load_student

        if path.is_dir():
            if not (path / STUDENT_CONFIG).is_file():
                raise ValueError(f"teacher folder {path} has no {STUDENT_CONFIG}: not a saved student")
            if sd21 is not None or lora is not None:
                raise ValueError("give either a teacher checkpoint or sd21 + lora, not both")
            return ModelTeacher(load_student(path), num_steps, renoise)
    from runtime_py.checkpoints import load_model

    model = load_model(sd21=sd21, lora=lora, checkpoint=checkpoint, config=config if sd21 is not None else None)
    return ModelTeacher(model.eval(), num_steps, renoise)

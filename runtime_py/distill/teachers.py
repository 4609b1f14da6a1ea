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

from ..model import MagicBokeh, MagicBokehConfig
from .data import TileBatch
from .sampling import RENOISE_MODES, draw_noises, sample_latent


@dataclass
class TeacherOutput:
    """``rgb`` (B, 3, T, T) in [-1, 1]; ``x0`` the final clean latent and ``latent`` the encoded
    input (both scaled, B x 4 x T/8 x T/8) when the teacher is a latent diffusion model."""

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


def load_model_teacher(
    checkpoint: Path | str | None,
    config: MagicBokehConfig | str = "tiny",
    num_steps: int = 1,
    seed: int = 0,
    renoise: str = "ddim",
) -> ModelTeacher:
    """A MagicBokeh teacher from a checkpoint, or seeded random weights when ``checkpoint`` is None.

    Accepted checkpoints: a folder written by ``save_student``; anything
    ``runtime_py.checkpoints.load_native`` reads (when that loader is installed); a bare
    ``.safetensors`` state dict of ``MagicBokeh(config)``.
    """
    from ..model import build_model

    if checkpoint is None:
        return ModelTeacher(build_model(config, seed=seed), num_steps, renoise)
    path = Path(checkpoint)
    if not path.exists():
        raise FileNotFoundError(f"teacher checkpoint {path} does not exist")
    from .students import STUDENT_CONFIG, load_student

    if path.is_dir() and (path / STUDENT_CONFIG).is_file():
        return ModelTeacher(load_student(path), num_steps, renoise)
    try:
        from ..checkpoints import load_native  # type: ignore[attr-defined]
    except ImportError:
        load_native = None
    if load_native is not None and not (path.is_file() and path.suffix == ".safetensors"):
        return ModelTeacher(load_native(path), num_steps, renoise)
    if path.is_file() and path.suffix == ".safetensors":
        from safetensors.torch import load_file

        model = MagicBokeh(config)
        missing, unexpected = model.load_state_dict(load_file(str(path)), strict=False)
        if missing or unexpected:
            raise ValueError(f"{path} is not a MagicBokeh {model.config.name!r} state dict: "
                             f"missing {missing[:5]}, unexpected {unexpected[:5]}")
        return ModelTeacher(model.eval(), num_steps, renoise)
    raise ValueError(f"cannot read teacher checkpoint {path}: expected a student folder, a native checkpoint, "
                     "or a .safetensors state dict")

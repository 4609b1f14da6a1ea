"""Distillation losses: the teacher's outputs plus intermediate features where shapes allow.

Output terms (each used when the teacher provides what it needs):

* ``pixel``: L1 between the student's decoded tile and the teacher's (what users see);
* ``latent``: MSE between the student's and the teacher's final clean latent ``x0``, divided by the
  teacher ``x0``'s mean square (x0 magnitudes differ by orders between models, since the one-step
  update divides by ``sqrt(alpha_999)`` ~ 0.068; the relative error keeps the weight meaningful);
* ``encoder``: relative MSE (as ``latent``) between the student's and the teacher's encoded latent (the small VAE encoder
  learns the teacher's latent space, so the denoiser and decoder can be taught in it);
* ``decoder``: L1 between the student's decoding of the *teacher's* ``x0`` and the teacher's tile
  (the small VAE decoder learns alone, independent of the denoiser's errors).

Feature term: forward hooks record the first output of named blocks (VAE encoder/decoder blocks,
UNet down/up blocks) in teacher and student; pairs whose spatial sizes agree are compared after a
1x1 convolution adapter maps the student's channels to the teacher's. Each pair's MSE is divided by
the teacher feature's mean square, so that blocks of very different magnitude weigh alike.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class LossWeights:
    """Weights of the loss terms; a weight of 0 switches a term (and its work) off."""

    pixel: float = 1.0
    latent: float = 1.0
    encoder: float = 1.0
    decoder: float = 1.0
    feature: float = 0.1

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not value >= 0.0:  # also rejects NaN
                raise ValueError(f"loss weight {name!r} must be >= 0, got {value}")

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def default_tap_names(model: nn.Module) -> list[str]:
    """Blocks whose outputs are compared: VAE encoder and decoder blocks, UNet down and up blocks."""
    names = []
    names += [f"vae.encoder.down_blocks.{i}" for i in range(len(model.vae.encoder.down_blocks))]
    names += [f"unet.down_blocks.{i}" for i in range(len(model.unet.down_blocks))]
    names += [f"unet.up_blocks.{i}" for i in range(len(model.unet.up_blocks))]
    names += [f"vae.decoder.up_blocks.{i}" for i in range(len(model.vae.decoder.up_blocks))]
    return names


class FeatureTaps:
    """Forward hooks that keep the first output of each named module since the last :meth:`clear`.

    Only the first call counts: a sampler calls the UNet once per step, and the first step (at
    the one-step timestep) is the one teacher and student run on comparable inputs.
    """

    def __init__(self, model: nn.Module, names: list[str]):
        modules = dict(model.named_modules())
        missing = [n for n in names if n not in modules]
        if missing:
            raise ValueError(f"{type(model).__name__} has no modules named {missing}")
        self.names = list(names)
        self.features: dict[str, torch.Tensor] = {}
        self._handles = [modules[n].register_forward_hook(self._hook(n)) for n in names]

    def _hook(self, name: str):
        def record(_module: nn.Module, _inputs: object, output: object) -> None:
            if name in self.features:
                return
            if isinstance(output, (tuple, list)):
                output = output[0]
            if isinstance(output, torch.Tensor):
                self.features[name] = output
        return record

    def clear(self) -> None:
        self.features = {}

    def take(self) -> dict[str, torch.Tensor]:
        features, self.features = self.features, {}
        return features

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.features = {}

    @contextlib.contextmanager
    def recording(self) -> Iterator["FeatureTaps"]:
        self.clear()
        yield self


def adapter_key(name: str) -> str:
    return name.replace(".", "__")


def build_adapters(
    student_shapes: dict[str, torch.Size], teacher_shapes: dict[str, torch.Size]
) -> nn.ModuleDict:
    """One 1x1 conv per tap whose spatial size agrees in teacher and student.

    Equal channel counts start as the identity, so a student that is a copy of its teacher starts
    with zero feature loss rather than a random projection's.
    """
    adapters = nn.ModuleDict()
    for name, s_shape in student_shapes.items():
        t_shape = teacher_shapes.get(name)
        if t_shape is None or len(s_shape) != 4 or len(t_shape) != 4 or s_shape[-2:] != t_shape[-2:]:
            continue
        conv = nn.Conv2d(s_shape[1], t_shape[1], kernel_size=1)
        if s_shape[1] == t_shape[1]:
            with torch.no_grad():
                conv.weight.copy_(torch.eye(s_shape[1])[:, :, None, None])
                conv.bias.zero_()
        adapters[adapter_key(name)] = conv
    return adapters


def feature_loss(
    adapters: nn.ModuleDict, student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor]
) -> torch.Tensor | None:
    """Mean over matched taps of ``MSE(adapter(s), t) / mean(t^2)``; None when nothing matched."""
    terms = []
    for name, t in teacher.items():
        key = adapter_key(name)
        if key not in adapters or name not in student:
            continue
        s = adapters[key](student[name])
        t = t.detach().to(s.dtype)
        terms.append(F.mse_loss(s, t) / (t.pow(2).mean() + 1e-6))
    if not terms:
        return None
    return torch.stack(terms).mean()


def output_losses(
    student_rgb: torch.Tensor,
    teacher_rgb: torch.Tensor,
    student_x0: torch.Tensor | None = None,
    teacher_x0: torch.Tensor | None = None,
    student_latent: torch.Tensor | None = None,
    teacher_latent: torch.Tensor | None = None,
    student_decoded_teacher_x0: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """The output terms that can be computed from what was given (see the module docstring)."""
    parts = {"pixel": F.l1_loss(student_rgb, teacher_rgb)}
    if student_x0 is not None and teacher_x0 is not None:
        parts["latent"] = F.mse_loss(student_x0, teacher_x0) / (teacher_x0.pow(2).mean() + 1e-6)
    if student_latent is not None and teacher_latent is not None:
        parts["encoder"] = F.mse_loss(student_latent, teacher_latent) / (teacher_latent.pow(2).mean() + 1e-6)
    if student_decoded_teacher_x0 is not None:
        parts["decoder"] = F.l1_loss(student_decoded_teacher_x0, teacher_rgb)
    return parts


def weighted_total(parts: dict[str, torch.Tensor], weights: LossWeights) -> torch.Tensor:
    w = weights.to_dict()
    unknown = set(parts) - set(w)
    if unknown:
        raise ValueError(f"no weight for loss terms {sorted(unknown)}")
    used = [w[name] * value for name, value in parts.items() if w[name] > 0]
    if not used:
        raise ValueError(f"every loss term that can be computed here ({sorted(parts)}) has weight 0")
    return torch.stack(used).sum()

"""Student models for phones: fewer channels and blocks, a small VAE, the injector folded away.

Two kinds of student:

* ``"magicbokeh"``: the reference :class:`~runtime_py.model.MagicBokeh` topology at a student
  configuration (or at the teacher's own, for pure step distillation).
* ``"folded"``: :class:`FoldedMagicBokeh`, where the injector (a second copy of the UNet's down
  half, about a third of the denoiser's cost) is gone and the defocus map's conditioning embedding
  is added to the UNet's ``conv_in`` output instead.

Both keep the tile interface ``encode(rgb) / denoise(latent, defocus, in_focus) / decode(x0)``
and a ``.config``, so ``runtime_py.components.tile_components`` and every exporter take them.
Students keep the teacher's latent space shape (latent channels, VAE factor) and one-step timestep
so that the teacher's latents can be distilled into the student's small VAE directly.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers.models.controlnets.controlnet import ControlNetConditioningEmbedding
from safetensors.torch import load_file, save_file
from torch import nn

from runtime_py.atomic import atomic_path
from runtime_py.model import MagicBokeh, MagicBokehConfig, get_config
from runtime_py.model.magicbokeh import OneStepTileModel
from runtime_py.model.unet import build_unet, unet_forward
from runtime_py.model.vae import build_vae
from runtime_py.model.sampling import decode_unclamped, sample_latent

ARCHITECTURES = ("magicbokeh", "folded")

# Named student configurations; ``extra["teacher"]`` names the configuration each one is sized
# against (same tile and latent space). Widths are chosen so that every GroupNorm divides.
STUDENT_CONFIGS: dict[str, MagicBokehConfig] = {
    # SD2.1-scale teacher -> phone students at the same 512-px tile.
    "sd21-mobile": MagicBokehConfig(
        name="sd21-mobile",
        block_out_channels=(128, 256, 384, 384),
        attention_heads=(2, 4, 6, 6),
        layers_per_block=1,
        norm_num_groups=32,
        cross_attention_dim_of_base=128,
        cond_embedding_channels=(16, 32, 64, 128),
        vae_block_out_channels=(32, 64, 128, 128),
        vae_layers_per_block=1,
        vae_norm_num_groups=32,
        focus_rank=4,
        depth_size="vits",
        extra={"teacher": "sd21"},
    ),
    "sd21-mobile-xs": MagicBokehConfig(
        name="sd21-mobile-xs",
        block_out_channels=(64, 128, 192, 192),
        attention_heads=(1, 2, 3, 3),
        layers_per_block=1,
        norm_num_groups=16,
        cross_attention_dim_of_base=64,
        cond_embedding_channels=(16, 16, 32, 64),
        vae_block_out_channels=(16, 32, 64, 64),
        vae_layers_per_block=1,
        vae_norm_num_groups=16,
        focus_rank=4,
        depth_size="vits",
        extra={"teacher": "sd21"},
    ),
    # Student of the laptop-sized "small" configuration.
    "small-mobile": MagicBokehConfig(
        name="small-mobile",
        block_out_channels=(16, 32, 48, 48),
        attention_heads=(1, 1, 2, 2),
        attention_levels=(False, True, True, True),
        layers_per_block=1,
        norm_num_groups=8,
        cross_attention_dim_of_base=16,
        cond_embedding_channels=(8, 16, 16),
        vae_block_out_channels=(8, 16, 32),
        vae_layers_per_block=1,
        vae_norm_num_groups=4,
        latent_channels=16,
        timestep=50,
        focus_rank=2,
        depth_size="test",
        extra={"teacher": "small"},
    ),
    # Student of the test-sized "tiny" configuration (unit tests).
    "tiny-mobile": MagicBokehConfig(
        name="tiny-mobile",
        block_out_channels=(8, 16, 16, 16),
        attention_heads=(1, 1, 1, 1),
        layers_per_block=1,
        norm_num_groups=4,
        cross_attention_dim_of_base=8,
        cond_embedding_channels=(4, 4, 8, 8),
        vae_block_out_channels=(4, 8, 8, 8),
        vae_layers_per_block=1,
        vae_norm_num_groups=4,
        focus_rank=2,
        tile=128,
        stride=64,
        depth_size="test",
        depth_input=70,
        extra={"teacher": "tiny"},
    ),
}


def student_configs() -> dict[str, MagicBokehConfig]:
    """The named student configurations (a copy: callers may not change the registry)."""
    return dict(STUDENT_CONFIGS)


def get_student_config(name_or_config: str | MagicBokehConfig) -> MagicBokehConfig:
    """A student configuration by name; teacher configurations (``tiny``, ``sd21``...) also work."""
    if isinstance(name_or_config, MagicBokehConfig):
        return name_or_config
    if name_or_config in STUDENT_CONFIGS:
        return STUDENT_CONFIGS[name_or_config]
    try:
        return get_config(name_or_config)
    except ValueError:
        raise ValueError(
            f"unknown student configuration {name_or_config!r}; choose one of "
            f"{sorted(STUDENT_CONFIGS)} or a model configuration"
        ) from None


def check_compatible(teacher: MagicBokehConfig, student: MagicBokehConfig) -> None:
    """Raise ``ValueError`` unless a student can be trained tile for tile against the teacher.

    Same tile (same inputs), same latent shape (latent losses compare the two directly) and the
    same one-step timestep (the first denoising step is at the same noise level).
    """
    problems = []
    if student.tile != teacher.tile:
        problems.append(f"tile {student.tile} != teacher's {teacher.tile}")
    if student.latent_channels != teacher.latent_channels:
        problems.append(f"latent channels {student.latent_channels} != teacher's {teacher.latent_channels}")
    if student.vae_factor != teacher.vae_factor:
        problems.append(f"VAE factor {student.vae_factor} != teacher's {teacher.vae_factor}")
    if student.timestep != teacher.timestep:
        problems.append(f"timestep {student.timestep} != teacher's {teacher.timestep}")
    if problems:
        raise ValueError(f"student {student.name!r} cannot learn from teacher {teacher.name!r}: " + "; ".join(problems))


class FoldedMagicBokeh(OneStepTileModel, nn.Module):
    """MagicBokeh without the injector: the defocus embedding is added to the UNet's input features.

    ``h = unet.conv_in(z) + cond_embedding(2d - 1)`` is exactly where the published injector adds the
    same embedding to *its* ``conv_in`` output; folding it into the UNet drops the injector's
    whole down path while the UNet still sees the defocus map at full latent resolution.
    """

    architecture = "folded"

    def __init__(self, config: MagicBokehConfig | str = "tiny-mobile"):
        super().__init__()
        self.config = get_student_config(config)
        self.vae = build_vae(self.config)
        self.unet = build_unet(self.config)
        self.cond_embedding = ControlNetConditioningEmbedding(
            conditioning_embedding_channels=self.config.block_out_channels[0],
            conditioning_channels=3,
            block_out_channels=self.config.cond_embedding_channels,
        )
        self._register_one_step_constants()

    def embed_condition(self, defocus: torch.Tensor) -> torch.Tensor:
        cond = (2.0 * defocus - 1.0).expand(-1, 3, -1, -1)
        return self.cond_embedding(cond)

    def predict_noise(
        self, latent: torch.Tensor, defocus: torch.Tensor, in_focus: torch.Tensor, timestep: float | None = None
    ) -> torch.Tensor:
        t = self.config.timestep if timestep is None else timestep
        return unet_forward(self.unet, latent, t, None, in_focus, input_features=self.embed_condition(defocus))

    @torch.no_grad()
    def sample(
        self,
        rgb: torch.Tensor,
        defocus: torch.Tensor,
        in_focus: torch.Tensor,
        num_steps: int = 1,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """k-step sampling with the reference model's schedule (a folded student may be a step student too)."""
        x0 = sample_latent(self, self.encode(rgb), defocus, in_focus, num_steps, generator=generator)
        return decode_unclamped(self, x0).clamp(-1.0, 1.0)


def architecture_of(model: nn.Module) -> str:
    if isinstance(model, FoldedMagicBokeh):
        return "folded"
    if isinstance(model, MagicBokeh):
        return "magicbokeh"
    raise TypeError(f"{type(model).__name__} is not a MagicBokeh model or student")


def _redraw_zero_inits(model: nn.Module) -> None:
    """Random init leaves ControlNet-style convolutions at zero; make every path carry signal."""
    if isinstance(model, FoldedMagicBokeh):
        convs = [model.cond_embedding.conv_out]
    else:
        convs = list(model.injector.controlnet_down_blocks) + [model.injector.controlnet_cond_embedding.conv_out]
    for conv in convs:
        nn.init.normal_(conv.weight, std=0.02)
        nn.init.normal_(conv.bias, std=0.02)
    for proc in model.focus_processors().values():
        for pair in (proc.to_q_lora, proc.to_k_lora, proc.to_v_lora, proc.to_out_lora):
            nn.init.normal_(pair[0].weight, std=0.2)
            nn.init.normal_(pair[1].weight, std=0.2)


def build_student(
    config: MagicBokehConfig | str = "tiny-mobile",
    architecture: str = "folded",
    seed: int | None = 0,
    init_from: nn.Module | None = None,
) -> nn.Module:
    """A seeded student; ``init_from`` copies every tensor whose name and shape match (a teacher).

    Step distillation starts the student as a copy of its teacher (the usual practice: the
    student only has to learn to take bigger steps); architecture students take what fits,
    e.g. nothing at all, or the VAE when the student keeps the teacher's VAE.
    """
    if architecture not in ARCHITECTURES:
        raise ValueError(f"student architecture must be one of {ARCHITECTURES}, got {architecture!r}")
    cfg = get_student_config(config)
    state = torch.random.get_rng_state()
    if seed is not None:
        torch.manual_seed(seed)
    try:
        model = FoldedMagicBokeh(cfg) if architecture == "folded" else MagicBokeh(cfg)
        _redraw_zero_inits(model)
    finally:
        if seed is not None:
            torch.random.set_rng_state(state)
    if init_from is not None:
        copy_matching_weights(init_from, model)
    return model.eval()


def copy_matching_weights(source: nn.Module, target: nn.Module) -> list[str]:
    """Copy tensors with equal names and shapes from ``source`` into ``target``; return their names.

    A folded student's ``cond_embedding`` takes the teacher injector's conditioning embedding.
    """
    src = dict(source.state_dict())
    if isinstance(target, FoldedMagicBokeh) and isinstance(source, MagicBokeh):
        prefix = "injector.controlnet_cond_embedding."
        for name in list(src):
            if name.startswith(prefix):
                src["cond_embedding." + name[len(prefix):]] = src[name]
    tgt = target.state_dict()
    copied = [n for n, t in tgt.items() if n in src and src[n].shape == t.shape]
    target.load_state_dict({n: src[n] for n in copied}, strict=False)
    return copied


STUDENT_WEIGHTS = "model.safetensors"
STUDENT_CONFIG = "config.json"


def save_student(model: nn.Module, path: Path | str) -> Path:
    """Write a student as a folder: ``config.json`` (config + architecture) and ``model.safetensors``."""
    arch = architecture_of(model)
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.mkdir()
        state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / STUDENT_WEIGHTS))
        meta = {"architecture": arch, "config": model.config.to_dict()}
        (tmp / STUDENT_CONFIG).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return path


def load_student(path: Path | str) -> nn.Module:
    """Read a folder written by :func:`save_student` (no pickle)."""
    path = Path(path)
    cfg_file, weights = path / STUDENT_CONFIG, path / STUDENT_WEIGHTS
    if not cfg_file.is_file() or not weights.is_file():
        raise FileNotFoundError(f"{path} is not a saved student: needs {STUDENT_CONFIG} and {STUDENT_WEIGHTS}")
    try:
        meta = json.loads(cfg_file.read_text())
        arch = meta["architecture"]
        cfg = MagicBokehConfig.from_dict(meta["config"])
    except (KeyError, ValueError, TypeError) as exc:
        raise ValueError(f"{cfg_file} is not a valid student config: {exc}") from None
    model = build_student(cfg, architecture=arch, seed=None)
    state = load_file(str(weights))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{weights} does not match a {arch} student {cfg.name!r}: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    return model.eval()

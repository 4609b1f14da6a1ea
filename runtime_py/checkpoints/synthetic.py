"""Seeded random-weight checkpoints in exactly the published MagicBokeh format.

``write_synthetic_checkpoint(out, "sd21", seed=0)`` writes, atomically, ``out/`` holding

* ``out/sd21/``: a Stable-Diffusion-layout folder as diffusers' ``save_pretrained`` writes it
  (``unet/`` WITH the mid block and cross-attention, as the real SD2.1 has them, ``vae/``,
  ``scheduler/``, ``model_index.json``) at the configuration's sizes;
* ``out/lora.pkl``: ``torch.save`` (defaults: zip records, uncompressed) of the dict the authors
  publish: PEFT adapters ``default_encoder`` / ``default_decoder`` on the UNet plus ``conv_in``'s
  fully trained base layer, ``default_encoder`` on the VAE encoder, the injector as a pickled
  module of a class that cannot be imported when the file is read, and the focus-attention LoRA.

Why: every full-size measurement (memory, time, artifact sizes, quantization parity) can then be
reproduced without the released weights, by anyone, from a seed.

Statistics that matter for quantization are made realistic (:data:`REALISTIC_INIT`):

* the VAE encoder's latent mean is rescaled (rows of ``quant_conv``, base and LoRA alike) so that
  ``scaling_factor * latent`` has unit standard deviation on real-looking tiles, as SD's
  ``scaling_factor`` was chosen for its VAE; the factor in ``vae/config.json`` stays the
  configuration's, so an ``sd21``-size folder is still the ``sd21`` configuration;
* every LoRA (UNet, VAE, focus attention) is non-zero with ``||scale * B @ A||`` a fixed fraction
  of the wrapped layer's ``||W||`` (trained low-rank updates are small beside the base weight);
* the injector's zero-convolutions (zero at the start of training) get a small gain.

Memory: one component is alive at a time (the UNet with its mid block and cross-attention is the
largest: 866 M parameters at sd21, 3.5 GB in fp32); writing sd21 peaked at 4.0 GB (measured).

PEFT's names are written by hand (``<module>.lora_A.<adapter>.weight`` and ``lora_B``, a Conv2d
``lora_A`` with the layer's kernel and a 1x1 ``lora_B``; a wrapped layer's own tensors under
``base_layer``); ``tests/fixtures/official_checkpoint.py`` loads them into PEFT itself to check.
"""

from __future__ import annotations

import copy
import gc
import json
import math
import sys
import types
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from ..atomic import atomic_path
from ..model.config import MagicBokehConfig, get_config

__all__ = [
    "FOLDER_NAME",
    "REALISTIC_INIT",
    "SyntheticCheckpoint",
    "SyntheticInit",
    "UNET_TARGET_SUFFIXES",
    "VAE_TARGET_SUFFIXES",
    "lora_target_modules",
    "write_synthetic_checkpoint",
]

FOLDER_NAME = "sd21"  # the SD-layout folder inside the checkpoint (what --sd21 points at)
LORA_FILE = "lora.pkl"
PEFT_ALPHA = 8.0  # the published training code's lora_alpha: scale = 8 / rank

# PEFT target modules of the model contract: attention projections, feed-forward, proj_in/out and
# convolutions (the names are matched against the model's own modules).
UNET_TARGET_SUFFIXES = (
    "to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out",
    "conv1", "conv2", "conv_shortcut", "conv", "conv_in", "conv_out",
)
VAE_TARGET_SUFFIXES = (
    "to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2", "conv_shortcut", "conv", "conv_in", "conv_out", "quant_conv",
)
FOCUS_PROJECTIONS = ("to_q_lora", "to_k_lora", "to_v_lora", "to_out_lora")

# Seed streams: each component draws from its own generator, so that one component's weights do
# not depend on which others were written before it.
_STREAMS = {"unet": 1, "unet_lora": 2, "vae": 3, "vae_lora": 4, "injector": 5, "focus": 6, "tiles": 7}


@dataclass(frozen=True)
class SyntheticInit:
    """How the trained parts are initialised; ``None`` means the realistic, size-relative choice.

    ``lora_std``: every LoRA factor ~ N(0, std) (large, so tests see a wrong merge) instead of
    PEFT's A init with B scaled so ``||scale * B @ A|| = lora_relative_norm * ||W||``.
    ``conv_in_std`` / ``zero_conv_std`` / ``focus_std``: N(0, std) for the UNet's trained
    ``conv_in``, the injector's zero-convolutions and the focus LoRA, instead of a fresh default
    init / ``zero_conv_gain / sqrt(channels)`` / the relative rule.
    ``calibrate_latent_scale``: rescale the latent mean (see the module docstring).
    """

    lora_std: float | None = None
    lora_relative_norm: float = 0.05
    conv_in_std: float | None = None
    zero_conv_std: float | None = None
    zero_conv_gain: float = 0.1
    focus_std: float | None = None
    calibrate_latent_scale: bool = True
    calibration_tiles: int = 4


#: Statistics close to a trained checkpoint's where quantization is sensitive to them.
REALISTIC_INIT = SyntheticInit()


@dataclass
class SyntheticCheckpoint:
    """What was written: paths, sizes and the measured latent statistics."""

    root: Path
    sd_dir: Path
    lora_pkl: Path
    config: MagicBokehConfig
    seed: int
    parameters: dict[str, int]  # per written component (see write_synthetic_checkpoint)
    file_bytes: dict[str, int]
    latent_std: dict[str, float] = field(default_factory=dict)  # scaled latent std: "before" / "after" rescaling
    contents: dict[str, Any] | None = field(default=None, repr=False)  # lora.pkl's dict (injector as a state dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "root": str(self.root), "sd_dir": str(self.sd_dir), "lora_pkl": str(self.lora_pkl),
            "config": self.config.name, "seed": self.seed, "parameters": self.parameters,
            "file_bytes": self.file_bytes, "latent_std": self.latent_std,
        }


# -- naming ---------------------------------------------------------------------------------------
def _matches(name: str, suffixes: tuple[str, ...]) -> bool:
    return any(name == s or name.endswith("." + s) for s in suffixes)


def _removed_from_base(name: str) -> bool:
    """UNet modules the MagicBokeh UNet does not have: the mid block and the cross-attention."""
    return name.startswith("mid_block") or ".attn2" in name or name.endswith(".norm2") and ".transformer_blocks." in name


def lora_target_modules(module: nn.Module, suffixes: tuple[str, ...], prefixes: tuple[str, ...]) -> list[str]:
    """Names of the Linear/Conv2d layers PEFT wraps under ``prefixes`` (focus processors and the
    layers MagicBokeh removes from SD's UNet excluded), in module order."""
    return [
        name
        for name, child in module.named_modules()
        if isinstance(child, (nn.Linear, nn.Conv2d))
        and ".processor." not in name
        and not _removed_from_base(name)
        and _matches(name, suffixes)
        and any(name == p or name.startswith(p + ".") for p in prefixes)
    ]


# -- random tensors -------------------------------------------------------------------------------
def _generator(seed: int, stream: str) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1000 + _STREAMS[stream])


def _kaiming_uniform(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """PyTorch's / PEFT's default Linear/Conv weight init (kaiming uniform, a = sqrt(5))."""
    fan_in = math.prod(shape[1:])
    bound = 1.0 / math.sqrt(fan_in)
    return (torch.rand(shape, generator=generator) * 2 - 1) * bound


def _lora_pair(layer: nn.Module, rank: int, scale: float, init: SyntheticInit,
               generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(lora_A, lora_B) weights in PEFT's shapes for ``layer``."""
    weight = layer.weight.detach()
    if isinstance(layer, nn.Conv2d):
        a_shape = (rank, weight.shape[1], *weight.shape[2:])
        b_shape = (weight.shape[0], rank, 1, 1)
    else:
        a_shape, b_shape = (rank, weight.shape[1]), (weight.shape[0], rank)
    if init.lora_std is not None:
        return (torch.randn(a_shape, generator=generator) * init.lora_std,
                torch.randn(b_shape, generator=generator) * init.lora_std)
    a = _kaiming_uniform(a_shape, generator)
    b = torch.randn(b_shape, generator=generator)
    delta_norm = scale * torch.linalg.matrix_norm(b.reshape(b.shape[0], rank) @ a.reshape(rank, -1))
    b *= init.lora_relative_norm * float(weight.norm()) / float(delta_norm)
    return a, b


def _adapter_tensors(module: nn.Module, targets: list[str], adapter: str, rank: int, init: SyntheticInit,
                     generator: torch.Generator) -> dict[str, torch.Tensor]:
    modules = dict(module.named_modules())
    out: dict[str, torch.Tensor] = {}
    for name in targets:
        a, b = _lora_pair(modules[name], rank, PEFT_ALPHA / rank, init, generator)
        out[f"{name}.lora_A.{adapter}.weight"] = a
        out[f"{name}.lora_B.{adapter}.weight"] = b
    return out


# -- components -----------------------------------------------------------------------------------
def _focus_tensors(unet: nn.Module, rank: int, init: SyntheticInit, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """The focus LoRA of every up-block ``attn1``: a (dim -> rank -> dim) pair per projection."""
    out: dict[str, torch.Tensor] = {}
    for name, attn in unet.named_modules():
        if not (name.startswith("up_blocks.") and name.endswith(".attn1")):
            continue
        for projection, base in zip(FOCUS_PROJECTIONS, (attn.to_q, attn.to_k, attn.to_v, attn.to_out[0])):
            dim = base.in_features
            if init.focus_std is not None:
                down = torch.randn(rank, dim, generator=generator) * init.focus_std
                up = torch.randn(dim, rank, generator=generator) * init.focus_std
            else:
                down = _kaiming_uniform((rank, dim), generator)
                up = torch.randn(dim, rank, generator=generator)
                up *= init.lora_relative_norm * float(base.weight.norm()) / float((up @ down).norm() / rank)
            out[f"{name}.processor.{projection}.0.weight"] = down
            out[f"{name}.processor.{projection}.1.weight"] = up
    return out


def _write_unet(sd_dir: Path, config: MagicBokehConfig, seed: int, rank: int, init: SyntheticInit,
                processor_keys_in_unet_dict: bool) -> tuple[dict[str, Any], dict[str, int]]:
    """Write ``unet/``; return lora.pkl's UNet fields and parameter counts. The UNet is freed after."""
    from diffusers import UNet2DConditionModel

    from ..model.unet import unet_diffusers_config

    with torch.random.fork_rng():
        torch.manual_seed(seed * 1000 + _STREAMS["unet"])
        unet = UNet2DConditionModel(**{**unet_diffusers_config(config), "mid_block_type": "UNetMidBlock2DCrossAttn"})
    unet.save_pretrained(sd_dir / "unet", safe_serialization=True)
    counts = {
        "unet_folder": sum(p.numel() for p in unet.parameters()),
        "unet_model": sum(p.numel() for n, p in unet.named_parameters() if not _removed_from_base(n.rsplit(".", 1)[0])),
    }
    encoder = lora_target_modules(unet, UNET_TARGET_SUFFIXES, ("down_blocks", "conv_in"))
    decoder = lora_target_modules(unet, UNET_TARGET_SUFFIXES, ("up_blocks", "conv_out"))
    generator = _generator(seed, "unet_lora")
    state: dict[str, torch.Tensor] = {}
    # conv_in is trained in full: its own tensors travel in lora.pkl (under base_layer once PEFT wraps it).
    conv_in_prefix = "conv_in.base_layer" if "conv_in" in encoder + decoder else "conv_in"
    conv = unet.conv_in
    if init.conv_in_std is not None:
        state[f"{conv_in_prefix}.weight"] = torch.randn(conv.weight.shape, generator=generator) * init.conv_in_std
        state[f"{conv_in_prefix}.bias"] = torch.randn(conv.bias.shape, generator=generator) * init.conv_in_std
    else:
        state[f"{conv_in_prefix}.weight"] = _kaiming_uniform(tuple(conv.weight.shape), generator)
        bound = 1.0 / math.sqrt(math.prod(conv.weight.shape[1:]))  # PyTorch's default bias init
        state[f"{conv_in_prefix}.bias"] = (torch.rand(conv.bias.shape, generator=generator) * 2 - 1) * bound
    state.update(_adapter_tensors(unet, encoder, "default_encoder", rank, init, generator))
    state.update(_adapter_tensors(unet, decoder, "default_decoder", rank, init, generator))
    focus = _focus_tensors(unet, config.focus_rank, init, _generator(seed, "focus"))
    if processor_keys_in_unet_dict:  # some saves repeat the processors' tensors here
        state.update({k: v.clone() for k, v in focus.items()})
    counts["unet_lora"] = sum(v.numel() for k, v in state.items() if ".lora_" in k)
    counts["focus_lora"] = sum(v.numel() for v in focus.values())
    del unet
    gc.collect()
    fields = {
        "rank_unet": rank,
        "unet_lora_encoder_modules": encoder,
        "unet_lora_decoder_modules": decoder,
        "state_dict_unet": state,
        "state_dict_attn": config.focus_rank,
        "processor_state_dict": focus,
    }
    return fields, counts


def calibration_tiles(config: MagicBokehConfig, count: int, seed: int) -> torch.Tensor:
    """``count`` real-looking tiles (generated degraded photos, one per scene), RGB in [-1, 1]."""
    from ..samples import scene_samples

    samples = scene_samples(count, config.tile, seed=seed)
    images = [torch.from_numpy(s.image_u8).permute(2, 0, 1).float() / 127.5 - 1.0 for s in samples]
    return torch.stack(images)


def _scaled_latent_std(vae: nn.Module, tiles: torch.Tensor, scaling_factor: float) -> float:
    from ..model.vae import encode_mean

    with torch.no_grad():
        latents = torch.cat([encode_mean(vae, tile[None]) for tile in tiles])
    return float((latents * scaling_factor).std())


def _merged_copy(vae: nn.Module, lora: dict[str, torch.Tensor], targets: list[str], rank: int) -> nn.Module:
    """The VAE with its encoder LoRA added into the weights (to measure what the model computes)."""
    merged = copy.deepcopy(vae)
    modules = dict(merged.named_modules())
    with torch.no_grad():
        for name in targets:
            weight = modules[name].weight
            a = lora[f"{name}.lora_A.default_encoder.weight"]
            b = lora[f"{name}.lora_B.default_encoder.weight"]
            delta = (b.reshape(b.shape[0], rank) @ a.reshape(rank, -1)).reshape(weight.shape)
            weight += PEFT_ALPHA / rank * delta
    return merged


def _write_vae(sd_dir: Path, config: MagicBokehConfig, seed: int, rank: int,
               init: SyntheticInit) -> tuple[dict[str, Any], dict[str, int], dict[str, float]]:
    """Write ``vae/`` (latent mean rescaled, see the module docstring); return lora.pkl's VAE fields."""
    from diffusers import AutoencoderKL

    from ..model.vae import vae_diffusers_config

    with torch.random.fork_rng():
        torch.manual_seed(seed * 1000 + _STREAMS["vae"])
        vae = AutoencoderKL(**vae_diffusers_config(config))
    targets = lora_target_modules(vae, VAE_TARGET_SUFFIXES, ("encoder", "quant_conv"))
    lora = _adapter_tensors(vae, targets, "default_encoder", rank, init, _generator(seed, "vae_lora"))
    stats: dict[str, float] = {}
    if init.calibrate_latent_scale:
        if "quant_conv" not in targets or vae.quant_conv is None:
            raise ValueError("rescaling the latent needs the VAE's quant_conv")
        tiles = calibration_tiles(config, init.calibration_tiles, seed * 1000 + _STREAMS["tiles"])
        stats["before"] = _scaled_latent_std(_merged_copy(vae, lora, targets, rank), tiles, config.latent_scale)
        gain = 1.0 / stats["before"]
        channels = config.latent_channels  # quant_conv's first half of outputs is the mean
        with torch.no_grad():
            vae.quant_conv.weight[:channels] *= gain
            vae.quant_conv.bias[:channels] *= gain
        lora["quant_conv.lora_B.default_encoder.weight"][:channels] *= gain
        stats["after"] = _scaled_latent_std(_merged_copy(vae, lora, targets, rank), tiles, config.latent_scale)
        stats["gain"] = gain
    vae.save_pretrained(sd_dir / "vae", safe_serialization=True)
    counts = {"vae": sum(p.numel() for p in vae.parameters()), "vae_lora": sum(v.numel() for v in lora.values())}
    del vae
    gc.collect()
    return {"rank_vae": rank, "vae_lora_encoder_modules": targets, "state_dict_vae": lora}, counts, stats


# The class the injector is pickled as: it lives in a module registered only while saving, so the
# file names a module nobody can import when reading it (as the authors' source tree is absent).
AUTHORS_MODULE = "magicbokeh_authors_training"
AUTHORS_CLASS = "ControlNetInjector"


class _AuthorsModule:
    """Registers :data:`AUTHORS_MODULE` with a subclass of the injector for the ``with`` block."""

    def __enter__(self) -> type:
        from ..model.injector import Injector

        module = types.ModuleType(AUTHORS_MODULE, "stands in for the authors' source tree while pickling")
        cls = type(AUTHORS_CLASS, (Injector,), {"__module__": AUTHORS_MODULE, "__qualname__": AUTHORS_CLASS})
        setattr(module, AUTHORS_CLASS, cls)
        if AUTHORS_MODULE in sys.modules:
            raise RuntimeError(f"module {AUTHORS_MODULE} is already imported; it must not exist outside this writer")
        sys.modules[AUTHORS_MODULE] = module
        return cls

    def __exit__(self, *exc: object) -> None:
        sys.modules.pop(AUTHORS_MODULE, None)


def _init_injector(injector: nn.Module, seed: int, init: SyntheticInit) -> None:
    """Fresh default init for the copied UNet parts (seeded); small non-zero zero-convolutions."""
    generator = _generator(seed, "injector")
    zero_convs = list(injector.controlnet_down_blocks) + [injector.controlnet_cond_embedding.conv_out]
    with torch.no_grad():
        for conv in zero_convs:
            std = init.zero_conv_std if init.zero_conv_std is not None else init.zero_conv_gain / math.sqrt(
                conv.weight[0].numel())
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * std)
            conv.bias.copy_(torch.randn(conv.bias.shape, generator=generator) * std)


def _iter_sizes(root: Path) -> Iterator[tuple[str, int]]:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            yield str(path.relative_to(root)), path.stat().st_size


def write_synthetic_checkpoint(
    out: Path | str,
    config: MagicBokehConfig | str = "sd21",
    seed: int = 0,
    *,
    init: SyntheticInit = REALISTIC_INIT,
    unet_rank: int = 4,
    vae_rank: int = 4,
    focus_rank: int | None = None,
    processor_keys_in_unet_dict: bool = False,
    legacy_format: bool = False,
    keep_contents: bool = False,
) -> SyntheticCheckpoint:
    """Write ``out/sd21/`` and ``out/lora.pkl`` (see the module docstring), atomically.

    ``config``: a named configuration or any :class:`MagicBokehConfig` (its sizes are written into
    the folder's config.json files). ``focus_rank`` overrides the config's. ``legacy_format``
    writes lora.pkl with torch's pre-1.6 (non-zip) serialisation. ``keep_contents`` returns
    lora.pkl's dict (injector as a state dict) in ``contents``; it holds the injector in memory.
    """
    from ..model import make_scheduler

    config = get_config(config)
    if focus_rank is not None:
        config = config.replace(focus_rank=focus_rank)
    for name, rank in (("unet_rank", unet_rank), ("vae_rank", vae_rank), ("focus_rank", config.focus_rank)):
        if isinstance(rank, bool) or not isinstance(rank, int) or rank <= 0:
            raise ValueError(f"{name} must be a positive integer, got {rank!r}")
    out = Path(out)
    with atomic_path(out) as tmp, torch.no_grad():
        sd_dir = tmp / FOLDER_NAME
        sd_dir.mkdir(parents=True)
        unet_fields, counts = _write_unet(sd_dir, config, seed, unet_rank, init, processor_keys_in_unet_dict)
        vae_fields, vae_counts, latent_std = _write_vae(sd_dir, config, seed, vae_rank, init)
        counts.update(vae_counts)
        make_scheduler(config).save_pretrained(sd_dir / "scheduler")
        (sd_dir / "model_index.json").write_text(json.dumps({
            "_class_name": "StableDiffusionPipeline",
            "scheduler": ["diffusers", "DDPMScheduler"],
            "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"],
        }, indent=2) + "\n")
        contents: dict[str, Any] = {**unet_fields, **vae_fields}
        with _AuthorsModule() as authors_class:
            with torch.random.fork_rng():
                torch.manual_seed(seed * 1000 + _STREAMS["injector"])
                injector = authors_class(config)
            _init_injector(injector, seed, init)
            counts["injector"] = sum(p.numel() for p in injector.parameters())
            ordered = {name: contents[name] for name in (
                "rank_unet", "unet_lora_encoder_modules", "unet_lora_decoder_modules", "state_dict_unet", "rank_vae",
                "vae_lora_encoder_modules", "state_dict_vae")}
            ordered["controlnet"] = injector
            ordered["state_dict_attn"] = contents["state_dict_attn"]
            ordered["processor_state_dict"] = contents["processor_state_dict"]
            with warnings.catch_warnings():  # legacy saves look for the class's source: it has none, by design
                warnings.filterwarnings("ignore", message="Couldn't retrieve source code")
                torch.save(ordered, tmp / LORA_FILE, _use_new_zipfile_serialization=not legacy_format)
            if keep_contents:
                contents["controlnet"] = {k: v.detach().clone() for k, v in injector.state_dict().items()}
        del injector, ordered
        gc.collect()
        sizes = dict(_iter_sizes(tmp))
    result = SyntheticCheckpoint(
        root=out, sd_dir=out / FOLDER_NAME, lora_pkl=out / LORA_FILE, config=config, seed=seed,
        parameters=counts, file_bytes=sizes, latent_std=latent_std,
        contents=contents if keep_contents else None,
    )
    return result

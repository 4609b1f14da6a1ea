"""The shapes of a Stable-Diffusion-layout checkpoint, read from its own files as diffusers does.

Nothing about a checkpoint's size is assumed. ``unet/config.json`` gives the UNet's widths, layers
per block, attention heads, norm groups and tile; ``vae/config.json`` the VAE's widths, layers,
norm groups, latent channels and scaling factor; ``scheduler/scheduler_config.json`` (when present)
the noise schedule; the caller adds what only ``lora.pkl`` knows (the injector's
conditioning-embedding widths, the focus-attention rank). A key a file leaves out takes the
installed diffusers' default, as ``from_pretrained`` fills it in.

diffusers' naming quirk: ``UNet2DConditionModel``'s ``attention_head_dim`` holds the number of
attention HEADS per block (SD2.x's ``[5, 10, 20, 20]`` are 64-channel heads), not their width.

Every other key must describe what MagicBokeh builds. A value the model cannot honour
(``only_cross_attention``, a class embedding, a convolutional ``proj_in``, ...) is refused naming
the file and the field, never ignored. Unchecked are only the keys that configure what MagicBokeh
removes (the mid block, the cross-attention) or that leave the computation alone (dropout, the
VAE's tiled-decoding ``sample_size``, its half-precision hint ``force_upcast``).

A named configuration is then a check, not a source: ``--config sd21`` accepts a folder only if
it has exactly the real release's sizes, and names the field that differs.
"""

from __future__ import annotations

import inspect
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

import torch

from ..model.config import CONFIGS, MagicBokehConfig, get_config
from .errors import CheckpointMismatchError, CheckpointNotFoundError, CorruptCheckpointError

__all__ = [
    "DERIVED_CONFIG_NAME",
    "FOLDER_FIELDS",
    "FieldValue",
    "check_named_config",
    "cond_embedding_channels",
    "config_from_sd_folder",
    "read_sd_folder_fields",
]

UNET_CONFIG = "unet/config.json"
VAE_CONFIG = "vae/config.json"
SCHEDULER_CONFIG = "scheduler/scheduler_config.json"
DERIVED_CONFIG_NAME = "sd-layout"  # a folder whose sizes are no named configuration's
# Fields that are not in the files (focus-mask bias, one-step timestep, depth network) come from
# the real release's configuration.
TEMPLATE = "sd21"

# The MagicBokehConfig fields a folder (and lora.pkl) determine; a named config must equal them all.
FOLDER_FIELDS = (
    "block_out_channels", "attention_heads", "layers_per_block", "attention_levels", "norm_num_groups",
    "tile", "latent_channels", "latent_scale", "vae_block_out_channels", "vae_layers_per_block",
    "vae_norm_num_groups", "vae_mid_block_attention", "num_train_timesteps", "beta_start", "beta_end",
    "cond_embedding_channels",
)

_UNET_ATTENTION_BLOCKS = {"CrossAttnDownBlock2D": True, "DownBlock2D": False}
# Keys not checked, and why (they configure only what MagicBokeh removes or change no output).
_UNET_UNCHECKED = {
    "mid_block_type": "the mid block is removed",
    "mid_block_scale_factor": "the mid block is removed",
    "mid_block_only_cross_attention": "the mid block is removed",
    "cross_attention_dim": "sizes only the cross-attention, which is removed",
    "cross_attention_norm": "configures only the cross-attention, which is removed",
    "addition_embed_type_num_heads": "used only with addition_embed_type, which must be null",
    "dropout": "training only",
}
_VAE_UNCHECKED = {
    "sample_size": "tiled decoding only; the tile comes from the UNet's sample_size",
    "force_upcast": "a pipeline's half-precision hint",
}
_SCHEDULER_READ = ("num_train_timesteps", "beta_start", "beta_end")
# Only alphas_cumprod and the prediction type enter the one-step x0; the rest configures sampling loops.
_SCHEDULER_REQUIRED = {"beta_schedule": "scaled_linear", "trained_betas": None, "prediction_type": "epsilon",
                       "rescale_betas_zero_snr": False}
_WHY = {
    "only_cross_attention": "MagicBokeh's attn1 is self-attention",
    "dual_cross_attention": "MagicBokeh has no cross-attention",
    "use_linear_projection": "MagicBokeh's (and SD2.x's) transformer proj_in/proj_out are linear layers",
    "num_attention_heads": "diffusers itself refuses it: the head counts belong in attention_head_dim",
    "upcast_attention": "MagicBokeh's attention does not upcast",
    "in_channels": "it must equal vae/config.json latent_channels",
    "out_channels": "it must equal vae/config.json latent_channels",
    "up_block_types": "the up blocks must mirror down_block_types",
    "transformer_layers_per_block": "MagicBokeh's transformers have one block",
}


@dataclass(frozen=True)
class FieldValue:
    """One derived config field and where it was read (``unet/config.json block_out_channels``)."""

    value: Any
    source: str


@lru_cache(maxsize=None)
def _diffusers_defaults(kind: str) -> dict[str, Any]:
    """The constructor defaults ``from_pretrained`` fills absent keys with, from the installed diffusers."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    cls = {"unet": UNet2DConditionModel, "vae": AutoencoderKL, "scheduler": DDPMScheduler}[kind]
    return {
        name: param.default
        for name, param in inspect.signature(cls.__init__).parameters.items()
        if name != "self" and param.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    }


def _read_json(folder: Path, relative: str, *, required: bool = True) -> dict[str, Any] | None:
    path = folder / relative
    if not path.is_file():
        if not required:
            return None
        if not path.parent.is_dir():
            raise CheckpointNotFoundError(
                f"{folder} has no {path.parent.name}/ folder: expected a Stable Diffusion folder in the diffusers "
                "layout (unet/, vae/, scheduler/, ...)"
            )
        raise CheckpointNotFoundError(f"{path} does not exist: the model's shapes are read from it (diffusers layout)")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise CorruptCheckpointError(f"{path} is not readable JSON: {err}") from None
    if not isinstance(data, dict):
        raise CorruptCheckpointError(f"{path} holds a JSON {type(data).__name__}, expected an object")
    return data


def _normalized(value: Any) -> Any:
    return tuple(_normalized(v) for v in value) if isinstance(value, (list, tuple)) else value


def _same_scalar(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):  # True is not 1 here
        return a is b
    return a == b


def _same(folder_value: Any, built_value: Any) -> bool:
    """Equal after JSON lists become tuples; a scalar equals a per-block list of that scalar."""
    a, b = _normalized(folder_value), _normalized(built_value)
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, tuple) or isinstance(b, tuple):
        seq, scalar = (a, b) if isinstance(a, tuple) else (b, a)
        return all(_same(v, scalar) for v in seq)
    return _same_scalar(a, b)


class _ConfigFile:
    """One config.json: typed reads with one-line errors naming the file and key."""

    def __init__(self, folder: Path, relative: str, kind: str, data: Mapping[str, Any]):
        self.path = folder / relative
        self.relative = relative
        self.defaults = _diffusers_defaults(kind)
        self.data = dict(data)
        self.read: set[str] = set()

    def get(self, key: str) -> Any:
        self.read.add(key)
        return self.data.get(key, self.defaults.get(key))

    def source(self, key: str) -> str:
        return f"{self.relative} {key}" if key in self.data else f"{self.relative} {key} (diffusers' default)"

    def refuse(self, key: str, problem: str) -> CheckpointMismatchError:
        if key in self.data:
            shown = f"{key} is {self.data[key]!r}"
        else:
            shown = f"{key} is not set (diffusers' default {self.defaults.get(key)!r})"
        return CheckpointMismatchError(f"{self.path}: {shown}; {problem}")

    def positive_int(self, key: str) -> int:
        value = self.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise self.refuse(key, "expected a positive integer")
        return value

    def positive_ints(self, key: str, count: int | None = None) -> tuple[int, ...]:
        """A per-block list (an integer stands for every block, as in diffusers)."""
        value = self.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and count is not None:
            value = [value] * count
        if not isinstance(value, (list, tuple)) or not value or not all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value
        ):
            raise self.refuse(key, "expected a list of positive integers")
        if count is not None and len(value) != count:
            raise self.refuse(key, f"expected {count} entries, one per block")
        return tuple(value)

    def positive_float(self, key: str) -> float:
        value = self.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise self.refuse(key, "expected a positive number")
        return float(value)

    def check_class(self, expected: str) -> None:
        name = self.data.get("_class_name", expected)
        if name != expected:
            raise self.refuse("_class_name", f"MagicBokeh loads a diffusers {expected} here")

    def check_rest(self, built: Mapping[str, Any], unchecked: Mapping[str, str]) -> None:
        """Every key not read must equal what the model is built with; unknown keys are refused."""
        for key in sorted(self.data):
            if key.startswith("_") or key in self.read or key in unchecked:
                continue
            if key not in self.defaults:
                raise self.refuse(key, "this diffusers version has no such field, so what it would change "
                                       "cannot be checked")
        for key, default in sorted(self.defaults.items()):
            if key in self.read or key in unchecked:
                continue
            value = self.data.get(key, default)
            expected = built.get(key, default)
            if not _same(value, expected):
                why = _WHY.get(key, "the model cannot honour it")
                raise self.refuse(key, f"MagicBokeh builds {_normalized(expected)!r} ({why})")


def _divides(groups: int, widths: tuple[int, ...]) -> bool:
    return all(w % groups == 0 for w in widths)


def read_sd_folder_fields(folder: Path | str) -> dict[str, FieldValue]:
    """The MagicBokehConfig fields ``folder``'s config files determine (everything but the injector's).

    Also returns ``stride`` and ``cross_attention_dim_of_base`` (not compared with named configs:
    the stride follows the tile, and the cross-attention the width configures is removed).
    """
    from ..model.unet import unet_diffusers_config
    from ..model.vae import vae_diffusers_config

    folder = Path(folder)
    fields: dict[str, FieldValue] = {}

    # VAE first: the latent channels and the downsampling factor size the UNet's input and tile.
    vae = _ConfigFile(folder, VAE_CONFIG, "vae", _read_json(folder, VAE_CONFIG))
    vae.check_class("AutoencoderKL")
    vae_widths = vae.positive_ints("block_out_channels")
    vae_groups = vae.positive_int("norm_num_groups")
    if not _divides(vae_groups, vae_widths):
        raise vae.refuse("norm_num_groups", f"it must divide every block width {vae_widths}")
    for name, key, value in (
        ("vae_block_out_channels", "block_out_channels", vae_widths),
        ("vae_layers_per_block", "layers_per_block", vae.positive_int("layers_per_block")),
        ("vae_norm_num_groups", "norm_num_groups", vae_groups),
        ("latent_channels", "latent_channels", vae.positive_int("latent_channels")),
        ("latent_scale", "scaling_factor", vae.positive_float("scaling_factor")),
    ):
        fields[name] = FieldValue(value, vae.source(key))
    mid_attention = vae.get("mid_block_add_attention")
    if not isinstance(mid_attention, bool):
        raise vae.refuse("mid_block_add_attention", "expected true or false")
    fields["vae_mid_block_attention"] = FieldValue(mid_attention, vae.source("mid_block_add_attention"))
    vae_factor = 2 ** (len(vae_widths) - 1)

    unet = _ConfigFile(folder, UNET_CONFIG, "unet", _read_json(folder, UNET_CONFIG))
    unet.check_class("UNet2DConditionModel")
    down_types = unet.get("down_block_types")
    if not isinstance(down_types, (list, tuple)) or not down_types or any(
        t not in _UNET_ATTENTION_BLOCKS for t in down_types
    ):
        raise unet.refuse("down_block_types", f"MagicBokeh's UNet is built of {sorted(_UNET_ATTENTION_BLOCKS)} blocks")
    levels = len(down_types)
    attention_levels = tuple(_UNET_ATTENTION_BLOCKS[t] for t in down_types)
    widths = unet.positive_ints("block_out_channels")
    if len(widths) != levels:
        raise unet.refuse("block_out_channels", f"expected {levels} widths, one per entry of down_block_types")
    layers = unet.positive_ints("layers_per_block", levels)
    if len(set(layers)) != 1:
        raise unet.refuse("layers_per_block", "MagicBokeh needs the same number of layers in every block")
    heads = unet.positive_ints("attention_head_dim", levels)  # head COUNTS (diffusers' naming quirk)
    for i, (width, count) in enumerate(zip(widths, heads)):
        if attention_levels[i] and width % count:
            raise unet.refuse("attention_head_dim", f"it holds head counts per block, and {count} heads do not divide "
                                                    f"block {i}'s {width} channels")
    groups = unet.positive_int("norm_num_groups")
    if not _divides(groups, widths):
        raise unet.refuse("norm_num_groups", f"it must divide every block width {widths}")
    sample_size = unet.get("sample_size")
    if isinstance(sample_size, (list, tuple)) and len(sample_size) == 2 and sample_size[0] == sample_size[1]:
        sample_size = sample_size[0]
    if isinstance(sample_size, bool) or not isinstance(sample_size, int) or sample_size <= 0:
        raise unet.refuse("sample_size", "the tile is sample_size latent pixels square: expected a positive integer")
    if sample_size % 2 ** (levels - 1):
        raise unet.refuse("sample_size", f"the UNet halves it {levels - 1} times: it must be a multiple of "
                                         f"{2 ** (levels - 1)}")
    tile = sample_size * vae_factor  # a diffusers pipeline's default resolution
    for name, key, value in (
        ("block_out_channels", "block_out_channels", widths),
        ("attention_heads", "attention_head_dim", heads),
        ("layers_per_block", "layers_per_block", layers[0]),
        ("attention_levels", "down_block_types", attention_levels),
        ("norm_num_groups", "norm_num_groups", groups),
    ):
        fields[name] = FieldValue(value, unet.source(key))
    fields["tile"] = FieldValue(tile, f"{unet.source('sample_size')} x the VAE's {vae_factor}x downsampling")
    fields["stride"] = FieldValue(tile // 2, "half the tile")
    cross = unet.data.get("cross_attention_dim")
    if isinstance(cross, int) and not isinstance(cross, bool) and cross > 0:
        fields["cross_attention_dim_of_base"] = FieldValue(cross, unet.source("cross_attention_dim"))

    scheduler_data = _read_json(folder, SCHEDULER_CONFIG, required=False)
    if scheduler_data is not None:
        scheduler = _ConfigFile(folder, SCHEDULER_CONFIG, "scheduler", scheduler_data)
        for key in _SCHEDULER_READ:
            value = scheduler.positive_int(key) if key == "num_train_timesteps" else scheduler.positive_float(key)
            fields[key] = FieldValue(value, scheduler.source(key))
        for key, required in _SCHEDULER_REQUIRED.items():
            if not _same(scheduler.get(key), required):
                raise scheduler.refuse(key, f"MagicBokeh's one step needs {required!r}")
        if fields["num_train_timesteps"].value <= get_config(TEMPLATE).timestep:
            raise scheduler.refuse("num_train_timesteps", f"MagicBokeh's one step starts at t = "
                                                          f"{get_config(TEMPLATE).timestep}")
    else:
        template = get_config(TEMPLATE)
        for key in _SCHEDULER_READ:
            fields[key] = FieldValue(getattr(template, key), f"Stable Diffusion's schedule (no {SCHEDULER_CONFIG})")

    # What the model is built with must match every key not read above.
    probe = get_config(TEMPLATE).replace(**{k: v.value for k, v in fields.items()})
    vae.check_rest(vae_diffusers_config(probe), _VAE_UNCHECKED)
    unet.check_rest(unet_diffusers_config(probe), _UNET_UNCHECKED)
    return fields


def cond_embedding_channels(injector: Mapping[str, torch.Tensor], source: str) -> tuple[int, ...]:
    """The conditioning embedding's widths, from the injector's tensors (conv_in, then every second block)."""
    prefix = "controlnet_cond_embedding."
    first = injector.get(f"{prefix}conv_in.weight")
    if not isinstance(first, torch.Tensor) or first.ndim != 4:
        raise CheckpointMismatchError(
            f"{source}: the injector has no 4-D {prefix}conv_in.weight, so its conditioning-embedding widths are "
            "unknown"
        )
    pattern = re.compile(rf"^{re.escape(prefix)}blocks\.(\d+)\.weight$")
    blocks = sorted(int(m[1]) for key in injector if (m := pattern.match(key)))
    if blocks != list(range(len(blocks))) or len(blocks) % 2:
        raise CheckpointMismatchError(
            f"{source}: the injector's {prefix}blocks are numbered {blocks}; expected pairs 0..2n-1 "
            "(a same-width and a strided convolution per level)"
        )
    return (int(first.shape[0]),) + tuple(int(injector[f"{prefix}blocks.{j}.weight"].shape[0]) for j in blocks[1::2])


def check_named_config(named: MagicBokehConfig, fields: Mapping[str, FieldValue], where: str) -> None:
    """Refuse a checkpoint whose sizes are not ``named``'s, naming every field that differs."""
    differing = [name for name in FOLDER_FIELDS if not _same(fields[name].value, getattr(named, name))]
    if differing:
        shown = "; ".join(
            f"{name} is {fields[name].value!r} ({fields[name].source}), {named.name!r} has {getattr(named, name)!r}"
            for name in differing[:3]
        )
        if len(differing) > 3:
            shown += f"; and {', '.join(differing[3:])} differ too"
        raise CheckpointMismatchError(
            f"{where} is not the {named.name!r} configuration: {shown} (leave out --config to take the sizes "
            "from the folder)"
        )


def config_from_sd_folder(
    folder: Path | str,
    cond_channels: FieldValue,
    focus_rank: int,
    expected: MagicBokehConfig | str | None = None,
    *,
    where: str | None = None,
) -> MagicBokehConfig:
    """The configuration of an SD-layout checkpoint: its files' sizes, or ``expected`` checked against them.

    ``cond_channels`` and ``focus_rank`` are what ``lora.pkl`` holds. Without ``expected`` the
    result is named after the named configuration it equals (``sd21`` for the real release), else
    :data:`DERIVED_CONFIG_NAME`. The focus rank is always the checkpoint's (it sets the LoRA scale).
    """
    fields = {**read_sd_folder_fields(folder), "cond_embedding_channels": cond_channels}
    vae_levels = len(fields["vae_block_out_channels"].value)
    if len(cond_channels.value) != vae_levels:
        # Each level after the first halves the defocus map; it must land on the latent grid.
        vae_source = fields["vae_block_out_channels"].source
        raise CheckpointMismatchError(
            f"{cond_channels.source} has {len(cond_channels.value)} levels {cond_channels.value}, so it downsamples "
            f"the defocus map {2 ** (len(cond_channels.value) - 1)}x, but the VAE ({vae_source}) downsamples "
            f"{2 ** (vae_levels - 1)}x"
        )
    if expected is not None:
        named = get_config(expected)
        check_named_config(named, fields, where or str(folder))
        return named.replace(focus_rank=focus_rank)
    values = {name: field.value for name, field in fields.items()}
    derived = get_config(TEMPLATE).replace(name=DERIVED_CONFIG_NAME, focus_rank=focus_rank, **values)
    for named in CONFIGS.values():
        if derived.replace(name=named.name) == named.replace(focus_rank=focus_rank):
            return named.replace(focus_rank=focus_rank)
    return derived

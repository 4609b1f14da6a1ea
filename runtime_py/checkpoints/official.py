"""Load the published MagicBokeh weights: an SD2.1-base diffusers folder plus the authors' ``lora.pkl``.

The result is a plain :class:`MagicBokeh` with every LoRA merged, so that exporters see ordinary
Linear/Conv2d layers. The shapes come from the checkpoint itself (the folder's ``unet/config.json``
and ``vae/config.json``, the injector's tensors and the focus rank in ``lora.pkl``; see
:mod:`.sd_layout`), so any SD-layout folder loads; ``sd21`` names the real release's sizes. What
goes where (see the model contract):

* ``unet/``: SD2.1's UNet. The model has no mid block and no cross-attention, so exactly the keys
  ``mid_block.*`` and the transformer blocks' ``attn2.*`` / ``norm2.*`` are dropped; any other
  difference is an error naming the tensors.
* ``vae/``: SD2.1's VAE (older folders name the attention projections ``query/key/value/proj_attn``;
  they are renamed to ``to_q/to_k/to_v/to_out.0``).
* ``lora.pkl`` (read with :mod:`.safe_pickle`, nothing in it is executed):
  ``state_dict_unet`` holds the PEFT adapters ``default_encoder`` / ``default_decoder`` (scale
  ``8 / rank_unet``) and ``conv_in``'s fully trained base weight and bias; ``state_dict_vae`` the
  VAE encoder adapter ``default_encoder`` (scale ``8 / rank_vae``); ``controlnet`` the pickled
  injector module; ``processor_state_dict`` the focus-attention LoRA of rank ``state_dict_attn``.

Every entry of ``lora.pkl`` must be used; anything left over is reported by name, because an
ignored tensor means the model computes something other than the published one.
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from ..model import MagicBokeh
from ..model.config import MagicBokehConfig
from .errors import (
    CheckpointError,
    CheckpointMismatchError,
    CheckpointNotFoundError,
    CorruptCheckpointError,
    short_repr,
    summarize_names,
)
from .lora import LoraAdapter, PeftStateDict, merge_into, split_peft_state_dict
from .safe_pickle import module_tensors, safe_torch_load
from .safetensors_check import read_safetensors_header
from .sd_layout import FieldValue, cond_embedding_channels, config_from_sd_folder

__all__ = [
    "OFFICIAL_FIELDS",
    "OfficialLoadReport",
    "is_dropped_unet_key",
    "load_official",
    "load_official_with_report",
    "official_config",
    "read_diffusers_weights",
    "read_official_lora",
]

PEFT_DEFAULT_ALPHA = 8.0  # PEFT's LoraConfig default lora_alpha: scale = 8 / rank
FOCUS_LORA_ALPHA = 1.0  # the focus LoRA's scale is 1 / rank

# lora.pkl field -> what it must be.
OFFICIAL_FIELDS: dict[str, type | tuple[type, ...]] = {
    "rank_unet": int,
    "unet_lora_encoder_modules": (list, tuple),
    "unet_lora_decoder_modules": (list, tuple),
    "state_dict_unet": Mapping,
    "rank_vae": int,
    "vae_lora_encoder_modules": (list, tuple),
    "state_dict_vae": Mapping,
    "controlnet": object,
    "state_dict_attn": int,
    "processor_state_dict": Mapping,
}
# adapter name -> lora.pkl field listing the modules it wraps.
UNET_ADAPTERS = {"default_encoder": "unet_lora_encoder_modules", "default_decoder": "unet_lora_decoder_modules"}
VAE_ADAPTERS = {"default_encoder": "vae_lora_encoder_modules"}

_DROPPED_UNET_KEY = re.compile(r"^mid_block\.|\.transformer_blocks\.\d+\.(attn2|norm2)\.")
_OLD_VAE_ATTENTION = re.compile(r"^(?P<prefix>.+\.attentions\.\d+)\.(?P<old>query|key|value|proj_attn)\.(?P<param>weight|bias)$")
_NEW_ATTENTION_NAME = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
_WEIGHT_FILES = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.safetensors.index.json",
    "diffusion_pytorch_model.bin",
    "diffusion_pytorch_model.fp16.safetensors",
    "diffusion_pytorch_model.fp16.bin",
)


@dataclass
class OfficialLoadReport:
    """What :func:`load_official_with_report` took from where (for logs, manifests and tests)."""

    config: MagicBokehConfig
    unet_file: Path
    vae_file: Path
    lora_file: Path
    unet_rank: int
    vae_rank: int
    focus_rank: int
    consumed: set[str] = field(default_factory=set)  # "field" and "field/tensor-name" of lora.pkl
    dropped_unet_keys: list[str] = field(default_factory=list)
    merged_modules: dict[str, int] = field(default_factory=dict)  # "unet"/"vae" -> number of merged layers
    ignored_injector_keys: list[str] = field(default_factory=list)


def is_dropped_unet_key(key: str) -> bool:
    """True for SD2.1 UNet tensors MagicBokeh removed: the mid block and the cross-attention."""
    return bool(_DROPPED_UNET_KEY.search(key))


# -- reading the inputs -----------------------------------------------------------------------
def read_diffusers_weights(folder: Path | str, subfolder: str) -> tuple[dict[str, torch.Tensor], Path]:
    """All tensors of ``folder/subfolder`` (diffusers layout), read without executing pickles."""
    part = Path(folder) / subfolder
    if not Path(folder).is_dir():
        raise CheckpointNotFoundError(f"Stable Diffusion folder {folder} does not exist or is not a folder")
    if not part.is_dir():
        raise CheckpointNotFoundError(
            f"{folder} has no {subfolder}/ folder: expected Stable Diffusion 2.1-base in the diffusers layout "
            "(unet/, vae/, scheduler/, ...)"
        )
    for name in _WEIGHT_FILES:
        path = part / name
        if path.is_file():
            break
    else:
        raise CheckpointNotFoundError(f"{part} holds none of the weight files {', '.join(_WEIGHT_FILES)}")
    if name.endswith(".index.json"):
        try:
            shards = sorted(set(json.loads(path.read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise CorruptCheckpointError(f"{path} is not a diffusers shard index: {err}") from None
        tensors: dict[str, torch.Tensor] = {}
        for shard in shards:
            tensors.update(_read_weight_file(part / shard))
        return tensors, path
    return _read_weight_file(path), path


def _read_weight_file(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointNotFoundError(f"weight file {path} does not exist")
    try:
        if path.name.endswith(".safetensors"):
            from safetensors.torch import load_file

            read_safetensors_header(path)  # sizes and offsets checked before any data is read
            tensors = load_file(str(path))
        else:  # a torch.save archive: read by our checked reader, never by torch.load
            tensors = safe_torch_load(path)
    except CheckpointError:
        raise
    except Exception as err:  # noqa: BLE001 - any parser failure means the file is unreadable
        raise CorruptCheckpointError(f"{path} cannot be read as a weights file: {type(err).__name__}: {err}") from None
    if not isinstance(tensors, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in tensors.items()
    ):
        raise CorruptCheckpointError(f"{path} does not hold a flat dict of named tensors")
    return dict(tensors)


def read_official_lora(path: Path | str) -> dict[str, Any]:
    """Safely unpickle ``lora.pkl`` and check its fields (names and types) before anything is used."""
    data = safe_torch_load(path)
    if not isinstance(data, Mapping) or not all(isinstance(k, str) for k in data):
        raise CorruptCheckpointError(f"{path} holds a {type(data).__name__}, expected a dict with the MagicBokeh fields")
    missing = [name for name in OFFICIAL_FIELDS if name not in data]
    unknown = [name for name in data if name not in OFFICIAL_FIELDS]
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"missing fields {missing}")
        if unknown:
            shown = "[" + ", ".join(short_repr(name, 60) for name in unknown[:8]) + (", ...]" if len(unknown) > 8 else "]")
            parts.append(f"unknown fields {shown} (this loader would silently ignore them)")
        raise CheckpointMismatchError(f"{path} is not a MagicBokeh lora.pkl: {'; '.join(parts)}")
    for name, kind in OFFICIAL_FIELDS.items():
        value = data[name]
        if kind is int and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
            raise CorruptCheckpointError(f"{path}: {name} is {short_repr(value)}, expected a positive integer rank")
        if kind is not int and not isinstance(value, kind):
            raise CorruptCheckpointError(f"{path}: {name} is a {type(value).__name__}, expected {_kind_name(kind)}")
        if isinstance(value, (list, tuple)) and not all(isinstance(v, str) for v in value):
            raise CorruptCheckpointError(f"{path}: {name} must be a list of module names (strings)")
    return dict(data)


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(k.__name__ for k in kinds)


# -- assembling the state dict ----------------------------------------------------------------
class _StateBuilder:
    """Collects the model's tensors, checking every name and shape against the empty model."""

    def __init__(self, model: MagicBokeh):
        self.expected = {name: (tuple(t.shape), t.dtype) for name, t in model.state_dict().items()}
        self.config_name = model.config.name
        self.tensors: dict[str, torch.Tensor] = {}

    def has(self, name: str) -> bool:
        return name in self.expected

    def put(self, name: str, tensor: torch.Tensor, source: str) -> None:
        if name not in self.expected:
            raise CheckpointMismatchError(f"{source}: the model has no tensor {name}")
        shape, dtype = self.expected[name]
        if tuple(tensor.shape) != shape:
            raise CheckpointMismatchError(
                f"{source}: tensor {name} has shape {tuple(tensor.shape)}, the {self.config_name!r} model expects "
                f"{shape} (do the weights disagree with the folder's config.json?)"
            )
        if not tensor.is_floating_point():
            raise CorruptCheckpointError(f"{source}: tensor {name} has dtype {tensor.dtype}, expected floating point")
        self.tensors[name] = tensor.detach().to(dtype).contiguous()

    def missing(self) -> list[str]:
        return sorted(set(self.expected) - set(self.tensors))


def _rename_old_vae_attention(key: str, tensor: torch.Tensor) -> tuple[str, torch.Tensor]:
    match = _OLD_VAE_ATTENTION.match(key)
    if not match:
        return key, tensor
    new_key = f"{match['prefix']}.{_NEW_ATTENTION_NAME[match['old']]}.{match['param']}"
    if tensor.ndim == 4 and tuple(tensor.shape[2:]) == (1, 1):  # 1x1-conv form of a linear projection
        tensor = tensor[:, :, 0, 0]
    return new_key, tensor


def _apply_peft(
    builder: _StateBuilder,
    lora: Mapping[str, Any],
    *,
    part: str,
    field_name: str,
    rank_field: str,
    adapters: Mapping[str, str],
    report: OfficialLoadReport,
    duplicates_ok: Mapping[str, torch.Tensor] | None = None,
) -> int:
    """Base-layer replacements, then merged adapters, for one PEFT state dict of ``lora.pkl``."""
    source = f"{report.lora_file} {field_name}"
    parsed: PeftStateDict = split_peft_state_dict(lora[field_name], source)
    rank = lora[rank_field]
    scale = PEFT_DEFAULT_ALPHA / rank

    for key, tensor in parsed.other.items():
        if duplicates_ok is not None and key in duplicates_ok:
            # Focus-LoRA tensors can appear here too when the processor was a registered submodule.
            if tensor.shape != duplicates_ok[key].shape or not torch.equal(tensor, duplicates_ok[key]):
                raise CheckpointMismatchError(f"{source}[{key!r}] differs from the same tensor in processor_state_dict")
        elif builder.has(f"{part}.{key}") and ".processor." not in key:
            builder.put(f"{part}.{key}", tensor, f"{source}[{key!r}]")  # a fully trained, unwrapped layer
        else:
            raise CheckpointMismatchError(
                f"{source}[{key!r}] is neither a LoRA, a base_layer nor a tensor of the model's {part}"
            )
        report.consumed.add(f"{field_name}/{key}")
    for name, tensor in parsed.base.items():
        builder.put(f"{part}.{name}", tensor, f"{source}[{parsed.base_keys[name]!r}]")
        report.consumed.add(f"{field_name}/{parsed.base_keys[name]}")

    listed: dict[str, set[str]] = {}
    for adapter, list_field in adapters.items():
        listed[adapter] = set(lora[list_field])
        report.consumed.add(list_field)
    by_module: dict[str, list[LoraAdapter]] = {}
    for (module, adapter), pair in parsed.adapters.items():
        if adapter not in adapters:
            raise CheckpointMismatchError(
                f"{source}: {module} carries adapter {adapter!r}; expected only {sorted(adapters)}"
            )
        if module not in listed[adapter]:
            raise CheckpointMismatchError(
                f"{source}: {module} carries adapter {adapter!r} but is not listed in {adapters[adapter]}"
            )
        if pair.rank != rank:
            raise CheckpointMismatchError(
                f"{source}: LoRA {adapter!r} of {module} has rank {pair.rank}, but {rank_field} is {rank}"
            )
        if not builder.has(f"{part}.{module}.weight"):
            raise CheckpointMismatchError(
                f"{source}: LoRA {adapter!r} targets {part}.{module}, which this model does not have "
                "(MagicBokeh's UNet has no mid block and no cross-attention)"
            )
        by_module.setdefault(module, []).append(pair)
        report.consumed.update(f"{field_name}/{key}" for key in pair.keys)
    for adapter, modules in listed.items():
        without = sorted(m for m in modules if (m, adapter) not in parsed.adapters)
        if without:
            raise CheckpointMismatchError(
                f"{source}: {adapters[adapter]} lists {len(without)} module(s) with no {adapter!r} LoRA tensors: "
                f"{summarize_names(without)}"
            )
    for module, pairs in by_module.items():
        name = f"{part}.{module}.weight"
        if name not in builder.tensors:
            raise CheckpointMismatchError(f"{source}: no base weight for {name} to merge the LoRA into")
        builder.tensors[name] = merge_into(builder.tensors[name], pairs, scale, source)
    report.consumed.update({field_name, rank_field})
    return len(by_module)


def _empty_model(config: MagicBokehConfig) -> MagicBokeh:
    """The model with parameters on the meta device: every one is replaced by loaded weights."""
    try:
        from accelerate import init_empty_weights
    except ImportError:  # pragma: no cover - accelerate is a dependency; fall back to a real init
        return MagicBokeh(config)
    with init_empty_weights(include_buffers=False):
        return MagicBokeh(config)


def assign_state(model: MagicBokeh, tensors: dict[str, torch.Tensor], source: str) -> MagicBokeh:
    """Put a complete, checked state dict into an (empty) model."""
    model.load_state_dict(tensors, strict=True, assign=True)
    if any(p.is_meta for p in model.parameters()):  # pragma: no cover - strict loading covers every parameter
        raise CheckpointError(f"{source}: some parameters were not loaded")
    return model.eval()


# -- the configuration ------------------------------------------------------------------------
def official_config(
    sd_dir: Path | str,
    lora: Mapping[str, Any],
    lora_pkl: Path | str,
    expected: MagicBokehConfig | str | None = None,
) -> MagicBokehConfig:
    """The model's shapes: the folder's ``unet/`` and ``vae/`` config.json, plus what ``lora.pkl`` holds.

    ``lora`` is :func:`read_official_lora`'s dict: the pickled injector gives the conditioning
    embedding's widths, ``state_dict_attn`` the focus-attention rank (and with it the LoRA scale
    1/rank). ``expected`` (a name such as ``"sd21"``) is a check that the checkpoint has exactly
    that configuration's sizes; see :mod:`.sd_layout`.
    """
    where = f"{lora_pkl} controlnet"
    injector = module_tensors(lora["controlnet"], where=where)
    cond = FieldValue(cond_embedding_channels(injector, where), f"{where}.controlnet_cond_embedding")
    return config_from_sd_folder(sd_dir, cond, lora["state_dict_attn"], expected,
                                 where=f"{sd_dir} + {lora_pkl}")


# -- public entry points ----------------------------------------------------------------------
def load_official_with_report(
    sd21_dir: Path | str,
    lora_pkl: Path | str,
    config: MagicBokehConfig | str | None = None,
    *,
    allow_extra_injector_keys: bool = False,
) -> tuple[MagicBokeh, OfficialLoadReport]:
    """:func:`load_official`, plus a report of what was read, dropped and merged."""
    sd21_dir, lora_pkl = Path(sd21_dir), Path(lora_pkl)
    if not sd21_dir.is_dir():
        raise CheckpointNotFoundError(f"Stable Diffusion folder {sd21_dir} does not exist or is not a folder")
    lora = read_official_lora(lora_pkl)
    config = official_config(sd21_dir, lora, lora_pkl, config)
    focus_rank = config.focus_rank

    unet_tensors, unet_file = read_diffusers_weights(sd21_dir, "unet")
    vae_tensors, vae_file = read_diffusers_weights(sd21_dir, "vae")
    report = OfficialLoadReport(
        config=config, unet_file=unet_file, vae_file=vae_file, lora_file=lora_pkl,
        unet_rank=lora["rank_unet"], vae_rank=lora["rank_vae"], focus_rank=focus_rank,
    )
    model = _empty_model(config)
    builder = _StateBuilder(model)

    # Base weights.
    unexpected = []
    for key, tensor in unet_tensors.items():
        if is_dropped_unet_key(key):
            report.dropped_unet_keys.append(key)
        elif builder.has(f"unet.{key}") and ".processor." not in key:
            builder.put(f"unet.{key}", tensor, str(unet_file))
        else:
            unexpected.append(key)
    if unexpected:
        raise CheckpointMismatchError(
            f"{unet_file} has {len(unexpected)} tensor(s) the MagicBokeh UNet does not have (beyond the mid block "
            f"and cross-attention, which are dropped): {summarize_names(unexpected)}"
        )
    unexpected = []
    for key, tensor in vae_tensors.items():
        key, tensor = _rename_old_vae_attention(key, tensor)
        if builder.has(f"vae.{key}"):
            builder.put(f"vae.{key}", tensor, str(vae_file))
        else:
            unexpected.append(key)
    if unexpected:
        raise CheckpointMismatchError(
            f"{vae_file} has {len(unexpected)} tensor(s) the VAE does not have: {summarize_names(unexpected)}"
        )

    # Focus-attention LoRA (read first: state_dict_unet may repeat these tensors).
    focus: dict[str, torch.Tensor] = {}
    for key, tensor in lora["processor_state_dict"].items():
        source = f"{lora_pkl} processor_state_dict[{short_repr(key)}]"
        if not isinstance(key, str) or ".processor." not in key or not builder.has(f"unet.{key}"):
            raise CheckpointMismatchError(f"{source}: not a focus-attention LoRA tensor of this model's UNet")
        if not isinstance(tensor, torch.Tensor):
            raise CorruptCheckpointError(f"{source} is a {type(tensor).__name__}, expected a tensor")
        builder.put(f"unet.{key}", tensor, source)
        focus[key] = tensor
        report.consumed.add(f"processor_state_dict/{key}")
    report.consumed.update({"processor_state_dict", "state_dict_attn"})

    # UNet and VAE LoRAs.
    report.merged_modules["unet"] = _apply_peft(
        builder, lora, part="unet", field_name="state_dict_unet", rank_field="rank_unet",
        adapters=UNET_ADAPTERS, report=report, duplicates_ok=focus,
    )
    report.merged_modules["vae"] = _apply_peft(
        builder, lora, part="vae", field_name="state_dict_vae", rank_field="rank_vae",
        adapters=VAE_ADAPTERS, report=report,
    )

    # Injector: the pickled module's tensors.
    injector = module_tensors(lora["controlnet"], where=f"{lora_pkl} controlnet")
    extra = sorted(k for k in injector if not builder.has(f"injector.{k}"))
    if extra and not allow_extra_injector_keys:
        raise CheckpointMismatchError(
            f"{lora_pkl}: the pickled injector has {len(extra)} tensor(s) the MagicBokeh injector does not have "
            f"(a mid block or cross-attention?): {summarize_names(extra)}; pass allow_extra_injector_keys=True "
            "(--allow-extra-injector-keys) only if the published model does not use them"
        )
    if extra:
        warnings.warn(f"{lora_pkl}: ignoring {len(extra)} injector tensor(s): {summarize_names(extra)}", stacklevel=2)
        report.ignored_injector_keys = extra
    for key, tensor in injector.items():
        if key not in extra:
            builder.put(f"injector.{key}", tensor, f"{lora_pkl} controlnet.{key}")
            report.consumed.add(f"controlnet/{key}")
    report.consumed.add("controlnet")

    missing = builder.missing()
    if missing:
        raise CheckpointMismatchError(
            f"{len(missing)} tensor(s) of the {config.name!r} model are in none of {unet_file}, {vae_file}, "
            f"{lora_pkl}: {summarize_names(missing)}"
        )
    return assign_state(model, builder.tensors, str(lora_pkl)), report


def load_official(
    sd21_dir: Path | str,
    lora_pkl: Path | str,
    config: MagicBokehConfig | str | None = None,
    *,
    allow_extra_injector_keys: bool = False,
) -> MagicBokeh:
    """MagicBokeh from the published weights: an SD-layout folder + ``lora.pkl``, LoRAs merged.

    The shapes are read from the folder's ``unet/config.json`` and ``vae/config.json`` and from
    ``lora.pkl`` (conditioning-embedding widths, focus rank), as diffusers' ``from_pretrained``
    reads them; ``config`` (``"sd21"`` for the real release) only checks that they are that
    configuration's. Nothing in ``lora.pkl`` is executed.
    """
    model, _ = load_official_with_report(
        sd21_dir, lora_pkl, config, allow_extra_injector_keys=allow_extra_injector_keys
    )
    return model

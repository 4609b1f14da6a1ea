"""Load an original-layout Depth Anything V2 state dict (e.g. MagicBokeh's ``DAdepth.pth``).

The original repository stores the DINOv2 backbone under ``pretrained.*`` (timm-style names, one
fused ``attn.qkv`` projection per block) and the DPT head under ``depth_head.*`` (``projects``,
``resize_layers``, ``scratch.layerN_rn``, ``scratch.refinenetN``, ``scratch.output_conv1/2``).
transformers' ``DepthAnythingForDepthEstimation`` holds the same network under other names. The
mapping below is explicit, so every tensor of the file is accounted for: a key the mapping does not
consume, a key the model needs that the file lacks, or a tensor of the wrong shape is an error
naming the keys, never a silently half-loaded model.

Loading is safe: ``.pth``/``.pt``/``.bin`` go through :func:`~.safe_pickle.safe_torch_load` (the
toolkit's own checked reader of torch.save archives: nothing in the file is run, torch.load never
sees it), ``.safetensors`` through a header check and safetensors.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

import torch
from transformers import DepthAnythingForDepthEstimation

from ..model.depth import (
    DEPTH_SIZES,
    DepthAnythingSize,
    depth_anything_config,
    get_depth_size,
    use_original_position_embedding,
)
from .errors import CheckpointError, short_repr
from .safe_pickle import safe_torch_load
from .safetensors_check import read_safetensors_header

# The file may lack the DINOv2 mask token (only used in pre-training); the model's zeros then stay.
OPTIONAL_ORIGINAL_KEYS = frozenset({"pretrained.mask_token"})
# transformers' DPT fusion stage runs from the deepest feature up: its layer j is refinenet(4 - j).
_NUM_HEAD_STAGES = 4
# Attention projection names in transformers' DINOv2: 5.x names first, then 4.x names.
_ATTENTION_LAYOUTS = (
    ("attention.q_proj", "attention.k_proj", "attention.v_proj", "attention.o_proj"),
    ("attention.attention.query", "attention.attention.key", "attention.attention.value", "attention.output.dense"),
)
_BLOCK_KEY = re.compile(r"^pretrained\.blocks\.(\d+)\.")


class DepthCheckpointError(CheckpointError):
    """A Depth Anything checkpoint cannot be read or does not fit the requested network.

    A ``CheckpointError`` (hence a ``ValueError``), so callers can catch every checkpoint problem
    of the toolkit with one clause.
    """


# ----------------------------------------------------------------------------- reading files


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.pth``/``.pt``/``.bin`` (weights-only unpickling) or ``.safetensors`` file."""
    path = Path(path)
    if not path.is_file():
        raise DepthCheckpointError(f"depth checkpoint {path} does not exist or is not a file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            read_safetensors_header(path)
            return load_file(str(path), device="cpu")
        except CheckpointError as exc:
            raise DepthCheckpointError(str(exc)) from None
        except Exception as exc:  # safetensors raises its own error types
            raise DepthCheckpointError(f"cannot read {path} as safetensors: {str(exc)[:200]}") from None
    try:
        obj = safe_torch_load(path)
    except CheckpointError as exc:
        raise DepthCheckpointError(
            f"cannot read {path} as a weights-only torch checkpoint (nothing in it is run): {exc}"
        ) from None
    return unwrap_state_dict(obj, source=str(path))


def unwrap_state_dict(obj: Any, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The flat name -> tensor dict inside a checkpoint object.

    Accepts a bare state dict, one nested under ``"model"``/``"state_dict"`` (training scripts),
    and strips a ``module.`` prefix that DistributedDataParallel adds to every key.
    """
    while isinstance(obj, Mapping) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        nested = [k for k in ("model", "state_dict") if isinstance(obj.get(k), Mapping)]
        if not nested:
            break
        obj = obj[nested[0]]
    if not isinstance(obj, Mapping):
        raise DepthCheckpointError(f"{source} holds a {type(obj).__name__}, not a state dict")
    not_tensors = sorted(short_repr(k, 60) for k, v in obj.items() if not isinstance(v, torch.Tensor))
    if not_tensors:
        raise DepthCheckpointError(
            f"{source}: entries that are not tensors (a weights-only checkpoint holds only tensors): {not_tensors[:10]}"
        )
    state = {str(k): v for k, v in obj.items()}
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


# ----------------------------------------------------------------------------- size detection


def describe_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """The shape facts of an original-layout state dict that identify a Depth Anything V2 size."""
    if not any(k.startswith("pretrained.") for k in state_dict) or not any(k.startswith("depth_head.") for k in state_dict):
        hint = ""
        if any(k.startswith("backbone.") for k in state_dict):
            hint = (" It looks like transformers' layout (backbone.*/neck.*/head.*): load that with "
                    "DepthAnythingForDepthEstimation.load_state_dict instead.")
        raise DepthCheckpointError(
            "not an original-layout Depth Anything V2 state dict: expected keys under 'pretrained.' "
            f"(DINOv2) and 'depth_head.' (DPT head); first keys: {sorted(state_dict)[:5]}.{hint}"
        )
    required = ["pretrained.cls_token", "depth_head.scratch.layer1_rn.weight", "depth_head.scratch.output_conv2.0.weight"]
    required += [f"depth_head.projects.{i}.weight" for i in range(_NUM_HEAD_STAGES)]
    missing = [k for k in required if k not in state_dict]
    if missing:
        raise DepthCheckpointError(f"Depth Anything V2 state dict lacks keys needed to tell its size: {missing}")
    blocks = {int(m.group(1)) for k in state_dict if (m := _BLOCK_KEY.match(k))}
    return {
        "hidden_size": int(state_dict["pretrained.cls_token"].shape[-1]),
        "num_layers": max(blocks) + 1 if blocks else 0,
        "features": int(state_dict["depth_head.scratch.layer1_rn.weight"].shape[0]),
        "out_channels": tuple(int(state_dict[f"depth_head.projects.{i}.weight"].shape[0]) for i in range(_NUM_HEAD_STAGES)),
        "head_hidden": int(state_dict["depth_head.scratch.output_conv2.0.weight"].shape[0]),
    }


def _matches(spec: DepthAnythingSize, facts: Mapping[str, Any]) -> bool:
    return (
        spec.hidden_size == facts["hidden_size"]
        and spec.num_layers == facts["num_layers"]
        and spec.features == facts["features"]
        and tuple(spec.out_channels) == tuple(facts["out_channels"])
        and spec.head_hidden == facts["head_hidden"]
    )


def detect_depth_size(state_dict: Mapping[str, torch.Tensor]) -> str:
    """The name of the Depth Anything V2 size whose shapes the state dict has."""
    facts = describe_state_dict(state_dict)
    for name, spec in DEPTH_SIZES.items():
        if _matches(spec, facts):
            return name
    raise DepthCheckpointError(
        f"state dict shapes {facts} match no supported Depth Anything V2 size ({sorted(DEPTH_SIZES)}); "
        "vitg (SwiGLU MLP) is not supported"
    )


# ----------------------------------------------------------------------------- key mapping


def _attention_layout(model_keys: set[str]) -> tuple[str, str, str, str]:
    for layout in _ATTENTION_LAYOUTS:
        if f"backbone.encoder.layer.0.{layout[0]}.weight" in model_keys:
            return layout
    raise DepthCheckpointError("unrecognised transformers DINOv2 attention layout (no q_proj/query weight in block 0)")


def original_key_mapping(
    num_layers: int,
    attention_layout: tuple[str, str, str, str] = _ATTENTION_LAYOUTS[0],
) -> tuple[dict[str, str], dict[str, tuple[str, str, str]]]:
    """(direct, fused): original key -> transformers key, and fused qkv key -> (q, k, v) keys.

    ``attn.qkv`` stacks query, key and value rows (in that order) in one (3D, D) projection;
    transformers keeps three (D, D) projections.
    """
    q_name, k_name, v_name, o_name = attention_layout
    direct: dict[str, str] = {
        "pretrained.cls_token": "backbone.embeddings.cls_token",
        "pretrained.pos_embed": "backbone.embeddings.position_embeddings",
        "pretrained.mask_token": "backbone.embeddings.mask_token",
    }
    fused: dict[str, tuple[str, str, str]] = {}
    pairs = [
        ("pretrained.patch_embed.proj", "backbone.embeddings.patch_embeddings.projection"),
        ("pretrained.norm", "backbone.layernorm"),
    ]
    for n in range(num_layers):
        src, dst = f"pretrained.blocks.{n}", f"backbone.encoder.layer.{n}"
        pairs += [
            (f"{src}.norm1", f"{dst}.norm1"),
            (f"{src}.attn.proj", f"{dst}.{o_name}"),
            (f"{src}.norm2", f"{dst}.norm2"),
            (f"{src}.mlp.fc1", f"{dst}.mlp.fc1"),
            (f"{src}.mlp.fc2", f"{dst}.mlp.fc2"),
        ]
        direct[f"{src}.ls1.gamma"] = f"{dst}.layer_scale1.lambda1"
        direct[f"{src}.ls2.gamma"] = f"{dst}.layer_scale2.lambda1"
        for param in ("weight", "bias"):
            fused[f"{src}.attn.qkv.{param}"] = (
                f"{dst}.{q_name}.{param}",
                f"{dst}.{k_name}.{param}",
                f"{dst}.{v_name}.{param}",
            )
    for i in range(_NUM_HEAD_STAGES):
        pairs.append((f"depth_head.projects.{i}", f"neck.reassemble_stage.layers.{i}.projection"))
        if i != 2:  # stage 2 keeps the patch resolution: an identity, no weights
            pairs.append((f"depth_head.resize_layers.{i}", f"neck.reassemble_stage.layers.{i}.resize"))
        direct[f"depth_head.scratch.layer{i + 1}_rn.weight"] = f"neck.convs.{i}.weight"  # bias-free convs
        src, dst = f"depth_head.scratch.refinenet{_NUM_HEAD_STAGES - i}", f"neck.fusion_stage.layers.{i}"
        pairs.append((f"{src}.out_conv", f"{dst}.projection"))
        for unit in (1, 2):
            for conv in (1, 2):
                pairs.append((f"{src}.resConfUnit{unit}.conv{conv}", f"{dst}.residual_layer{unit}.convolution{conv}"))
    pairs += [
        ("depth_head.scratch.output_conv1", "head.conv1"),
        ("depth_head.scratch.output_conv2.0", "head.conv2"),
        ("depth_head.scratch.output_conv2.2", "head.conv3"),
    ]
    for src, dst in pairs:
        for param in ("weight", "bias"):
            direct[f"{src}.{param}"] = f"{dst}.{param}"
    return direct, fused


def _natural_order(key: str) -> list[Any]:
    """Sort key that puts blocks.2 before blocks.10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", key)]


def _listing(keys: list[str], limit: int = 12) -> str:
    keys = sorted(keys, key=_natural_order)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def convert_original_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    model: DepthAnythingForDepthEstimation,
) -> dict[str, torch.Tensor]:
    """Original-layout tensors -> a complete state dict for ``model`` (which may be on 'meta').

    Raises DepthCheckpointError naming every unconsumed key, every key the model needs that the
    file does not provide, and every tensor whose shape does not fit.
    """
    target = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    direct, fused = original_key_mapping(model.config.backbone_config.num_hidden_layers, _attention_layout(set(target)))
    converted: dict[str, torch.Tensor] = {}
    unconsumed: list[str] = []
    for key, tensor in state_dict.items():
        if key in fused:
            if tensor.shape[0] % 3:
                raise DepthCheckpointError(f"{key} has shape {tuple(tensor.shape)}: its first dimension is not 3 * width")
            for dst, part in zip(fused[key], tensor.chunk(3, dim=0)):
                converted[dst] = part
        elif key in direct:
            converted[direct[key]] = tensor
        else:
            unconsumed.append(key)
    mapped_targets = set(direct.values()) | {k for trio in fused.values() for k in trio}
    optional_targets = {direct[k] for k in OPTIONAL_ORIGINAL_KEYS}
    missing_sources = sorted(
        [k for k, dst in direct.items() if dst not in converted and k not in OPTIONAL_ORIGINAL_KEYS and dst in target]
        + [k for k, trio in fused.items() if trio[0] not in converted and trio[0] in target]
    )
    wrong_shape = sorted(
        f"{k} -> {dst}: file {tuple(state_dict[k].shape)} vs model {target[dst]}"
        for k, dst in direct.items()
        if k in state_dict and dst in target and tuple(state_dict[k].shape) != target[dst]
    ) + sorted(
        f"{k} -> {trio[0]} (one third): file {tuple(state_dict[k].shape)} vs model 3 x {target[trio[0]]}"
        for k, trio in fused.items()
        if k in state_dict and trio[0] in target and tuple(converted[trio[0]].shape) != target[trio[0]]
    )
    unmapped_model_keys = sorted(set(target) - mapped_targets)
    extra_targets = sorted(k for k in converted if k not in target)
    problems = []
    if unconsumed:
        problems.append(f"keys the model does not use (unconsumed): {_listing(sorted(unconsumed))}")
    if extra_targets:
        problems.append(f"keys mapped to nothing in this model: {_listing(extra_targets)}")
    if missing_sources:
        problems.append(f"keys the model needs but the file lacks: {_listing(missing_sources)}")
    if wrong_shape:
        problems.append(f"tensors of the wrong shape: {_listing(wrong_shape, 6)}")
    if unmapped_model_keys:
        problems.append(f"model parameters no original key maps to: {_listing(unmapped_model_keys)}")
    if problems:
        raise DepthCheckpointError("Depth Anything V2 state dict does not fit the model: " + "; ".join(problems))
    for dst in optional_targets:
        if dst not in converted and dst in target:
            converted[dst] = torch.zeros(target[dst])
    return converted


def load_depth_anything(
    source: str | Path | Mapping[str, torch.Tensor],
    size: str | DepthAnythingSize | None = None,
    dtype: torch.dtype = torch.float32,
) -> DepthAnythingForDepthEstimation:
    """A transformers Depth Anything V2 model holding an original-layout checkpoint's weights.

    ``source`` is a file path or an already loaded state dict. ``size`` ("vits", "vitb", "vitl",
    "test") is detected from the tensor shapes when omitted; when given, a file of another size
    is refused with the mismatching keys named. The returned model uses the published
    position-embedding resize and is in eval mode.
    """
    state = read_state_dict(source) if isinstance(source, (str, Path)) else unwrap_state_dict(source, "state dict")
    if size is None:
        size = detect_depth_size(state)
    spec = get_depth_size(size)
    with torch.device("meta"):
        model = DepthAnythingForDepthEstimation(depth_anything_config(spec))
    try:
        converted = convert_original_state_dict(state, model)
    except DepthCheckpointError as exc:
        try:
            facts = describe_state_dict(state)
        except DepthCheckpointError:
            facts = None
        note = ""
        if facts is not None:
            found = next((n for n, s in DEPTH_SIZES.items() if _matches(s, facts)), None)
            note = (
                f" (the file holds {'a ' + repr(found) + '-size' if found else 'an unknown-size'} network: "
                f"hidden {facts['hidden_size']}, {facts['num_layers']} blocks, features {facts['features']}; "
                f"{spec.name!r} needs hidden {spec.hidden_size}, {spec.num_layers} blocks, features {spec.features})"
            )
        raise DepthCheckpointError(f"for size {spec.name!r}{note}: {exc}") from None
    converted = {k: v.detach().to(dtype=dtype).contiguous().clone() for k, v in converted.items()}
    model.load_state_dict(converted, strict=True, assign=True)
    leftovers = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if leftovers:
        raise DepthCheckpointError(f"tensors left without values after loading: {_listing(leftovers)}")
    return use_original_position_embedding(model).eval()

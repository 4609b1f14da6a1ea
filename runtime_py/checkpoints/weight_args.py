"""The weight-source flags every command shares, and the one function that turns them into a model.

Exporters, ``parity`` and ``render`` all take the same choice: the built-in default model, the
published weights (``--sd21 DIR --lora lora.pkl``, shapes read from the folder's config.json files)
or a native checkpoint (``--checkpoint FILE``); ``--config`` sizes the built-in model and checks
the others. Parsing and loading live here once so that every command
accepts the same flags, refuses the same mistakes with the same words, and labels its outputs alike.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


class WeightArgumentError(ValueError):
    """The weight flags contradict each other or name files that do not exist."""


def add_weight_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    *,
    config_help: str = "model configuration: the built-in model's size (default small), or a check that "
                       "--sd21/--checkpoint weights have exactly that configuration's sizes (sd21: the real "
                       "release); --sd21 shapes are otherwise read from the folder",
    config_choices: bool = True,
) -> None:
    """Add ``--sd21``, ``--lora``, ``--checkpoint`` and ``--config`` to ``parser`` (or a group)."""
    from ..model.config import CONFIGS

    parser.add_argument("--sd21", type=Path, help="Stable-Diffusion-layout folder (diffusers: unet/, vae/, their "
                        "config.json give the shapes), SD2.1-base for the real release; needs --lora")
    parser.add_argument("--lora", type=Path, help="the published MagicBokeh lora.pkl (LoRAs, injector, focus LoRA); needs --sd21")
    parser.add_argument("--checkpoint", type=Path, help="a native MagicBokeh checkpoint (.safetensors, `runtime_py convert`)")
    parser.add_argument("--config", default=None, choices=sorted(CONFIGS) if config_choices else None, help=config_help)


def uses_checkpoint(args: argparse.Namespace) -> bool:
    """Whether the flags name user weights (rather than the built-in model)."""
    return any(getattr(args, name, None) is not None for name in ("sd21", "lora", "checkpoint"))


def check_weight_arguments(args: argparse.Namespace) -> None:
    """Refuse contradictory or missing weight sources before anything slow starts."""
    if (args.sd21 is None) != (args.lora is None):
        raise WeightArgumentError("--sd21 and --lora go together (the base model folder and the MagicBokeh lora.pkl)")
    if args.checkpoint is not None and args.sd21 is not None:
        raise WeightArgumentError("give --checkpoint or --sd21/--lora, not both")
    for path in (args.sd21, args.lora, args.checkpoint):
        if path is not None and not Path(path).exists():
            raise WeightArgumentError(f"weights not found: {path}")


def load_weights(args: argparse.Namespace, default_config: str | None = None) -> tuple[Any, dict[str, Any]]:
    """The fp32 model the flags name and its provenance label (the built-in model when none is named).

    ``default_config`` is the built-in model's size when ``--config`` is absent (``parity`` passes the
    manifest's). Loading errors of user files come back as :class:`WeightArgumentError` with the cause.
    """
    check_weight_arguments(args)
    if not uses_checkpoint(args):
        from ..default_model import load_default_model
        from ..model.config import CONFIGS

        name = args.config or default_config
        if name is not None and name not in CONFIGS:
            raise WeightArgumentError(f"configuration {name!r} is not built in: pass --checkpoint with its weights")
        return load_default_model(name)
    from . import load_model

    sources = {k: getattr(args, k) for k in ("sd21", "lora", "checkpoint") if getattr(args, k) is not None}
    try:
        model = load_model(**sources, config=args.config)
    except (ValueError, FileNotFoundError, OSError) as exc:
        raise WeightArgumentError(f"cannot load the MagicBokeh weights: {exc}") from exc
    label = {
        "kind": "checkpoint",
        "description": "MagicBokeh weights loaded from " + ", ".join(f"{k}={v}" for k, v in sources.items()),
        "config": model.config.name,
        **{k: str(v) for k, v in sources.items()},
    }
    return model, label

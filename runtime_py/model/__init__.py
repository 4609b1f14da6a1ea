"""The MagicBokeh model definition (one file per part)."""

from .config import CONFIGS, MagicBokehConfig, get_config
from .focus_attention import FocusAttnProcessor
from .magicbokeh import MagicBokeh, alpha_cumprod, build_model, make_scheduler

__all__ = [
    "CONFIGS",
    "FocusAttnProcessor",
    "MagicBokeh",
    "MagicBokehConfig",
    "alpha_cumprod",
    "build_model",
    "get_config",
    "make_scheduler",
]

"""The MagicBokeh model definition (one file per part).

Names are loaded on first use (PEP 562), so that ``from runtime_py.model import MagicBokehConfig``
(the manifest, the pipeline, command-line parsers) does not import diffusers; only building or
loading a model does.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from .config import CONFIGS, MagicBokehConfig, get_config

if TYPE_CHECKING:
    from .focus_attention import FocusAttnProcessor
    from .magicbokeh import MagicBokeh, alpha_cumprod, build_model, make_scheduler

_LAZY = {
    "FocusAttnProcessor": ".focus_attention",
    "MagicBokeh": ".magicbokeh",
    "alpha_cumprod": ".magicbokeh",
    "build_model": ".magicbokeh",
    "make_scheduler": ".magicbokeh",
}

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


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

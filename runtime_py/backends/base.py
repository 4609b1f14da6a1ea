"""The backend interface: an artifacts folder (or a torch model) -> component callables.

Every backend returns the same thing: a mapping from component name to a callable that takes
numpy float32 arrays (in the order of the component's declared inputs) and returns one numpy
float32 array. The whole-image pipeline and the parity module only ever see these callables, so a
new backend is one new file here plus one exporter, and nothing else changes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping, Protocol

import numpy as np

ComponentFn = Callable[..., np.ndarray]


class BackendUnavailableError(RuntimeError):
    """The backend cannot run on this machine (missing runtime, wrong OS, no SDK)."""


class Backend(Protocol):
    """A way of running exported components."""

    name: str

    def load(self, artifacts: Path | str | None = None, components: tuple[str, ...] | None = None) -> Mapping[str, ComponentFn]:
        """Load the named components (all that the artifacts hold when None) as callables."""
        ...


_REGISTRY: dict[str, Callable[[], Backend]] = {}


def register_backend(name: str, factory: Callable[[], Backend]) -> None:
    _REGISTRY[name] = factory


def available_backends() -> list[str]:
    from . import _register_all  # noqa: F401  (imports each backend module once)

    return sorted(_REGISTRY)


def get_backend(name: str) -> Backend:
    from . import _register_all  # noqa: F401

    try:
        return _REGISTRY[name]()
    except KeyError:
        raise ValueError(f"unknown backend {name!r}; available: {sorted(_REGISTRY)}") from None

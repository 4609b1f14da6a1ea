"""The fp32 torch reference backend: runs the components of an in-memory model."""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch

from ..components import Component
from .base import ComponentFn, register_backend


def wrap_component(component: Component) -> ComponentFn:
    """numpy in, numpy out, no grad, float32."""

    def run(*arrays: np.ndarray) -> np.ndarray:
        tensors = [torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)) for a in arrays]
        with torch.no_grad():
            out = component(*tensors)
        return out.detach().cpu().numpy().astype(np.float32, copy=False)

    run.component = component  # type: ignore[attr-defined]
    return run


class TorchBackend:
    """Reference backend. ``load`` takes a mapping of components rather than a folder."""

    name = "torch"

    def load(self, artifacts=None, components=None) -> Mapping[str, ComponentFn]:  # type: ignore[override]
        if artifacts is None or not isinstance(artifacts, Mapping):
            raise TypeError("the torch backend loads a mapping of components, e.g. tile_components(model)")
        names = components or tuple(artifacts)
        return {name: wrap_component(artifacts[name]) for name in names}


register_backend("torch", TorchBackend)

"""The export flow's guarantees that do not depend on a backend: atomic folders, one-line errors."""

from __future__ import annotations

import pytest

from export.flow import ExportSettings, export_target
from export.prepare import ExportError
from runtime_py.components import Component, TensorSpec, tile_components
from runtime_py.model import build_model, get_config


class _Broken(Component):
    """An encoder whose graph cannot be traced (data-dependent Python control flow)."""

    name = "encoder"
    config = get_config("tiny")

    def input_specs(self):
        return [TensorSpec("x", (1, 3, 8, 8))]

    def output_specs(self):
        return [TensorSpec("y", (1, 3, 8, 8))]

    def forward(self, x):
        if float(x.sum()) > 0:  # data-dependent branch: torch.export refuses it
            return x * 2
        return x


def test_failed_export_leaves_no_folder_and_names_the_component(tmp_path):
    out = tmp_path / "art"
    with pytest.raises(ExportError, match="component 'encoder'"):
        export_target("executorch-xnnpack-fp32", {"encoder": _Broken()}, out, weights_sha256="00" * 32,
                      settings=ExportSettings(components=("encoder",)), log=lambda _m: None)
    assert not out.exists()
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())


def test_unknown_target_and_component_are_clear(tmp_path):
    components = tile_components(build_model("tiny", seed=0))
    with pytest.raises(ValueError, match="unknown target 'executorch-xnnpack-int3'"):
        export_target("executorch-xnnpack-int3", components, tmp_path / "a", weights_sha256="0")
    with pytest.raises(ValueError, match=r"unknown components \['unet'\]"):
        export_target("executorch-xnnpack-fp32", components, tmp_path / "a", weights_sha256="0",
                      settings=ExportSettings(components=("unet",)))
    with pytest.raises(ValueError, match=r"unknown components \['depth'\]; available"):
        export_target("executorch-xnnpack-fp32", components, tmp_path / "a", weights_sha256="0",
                      settings=ExportSettings(components=("depth",)))
    assert not (tmp_path / "a").exists()

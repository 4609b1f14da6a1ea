"""Backend-neutral descriptions of how a model is made smaller.

A recipe says WHAT is done (weight/activation bit widths, per-channel or per-tensor, symmetric or
not, which float type the rest runs in, how it is calibrated); each backend's quantizer module
(``quantize/xnnpack.py``, the Core ML and QNN ones) says HOW with its own tools. The manifest
records the recipe's dictionary, so an app or a report can tell two artifacts apart without
knowing which toolkit made them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class CalibrationSpec:
    """Which real inputs calibrate activation ranges (see ``quantize/calibration.py``)."""

    num_scenes: int = 4
    max_tiles_per_image: int | None = 4
    seed: int = 1234
    images_dir: str | None = None
    K: int | None = None  # None: each scene's own aperture (varied), images folder: 24

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class QuantRecipe:
    """One precision recipe.

    ``weight_bits``/``activation_bits`` None mean float (in ``float_dtype``). ``keep_float`` lists
    module-name fragments a backend should leave unquantized (sensitive layers).
    """

    name: str
    float_dtype: str = "float32"
    weight_bits: int | None = None
    activation_bits: int | None = None
    per_channel: bool = True
    symmetric: bool = True
    calibration: CalibrationSpec | None = None
    keep_float: tuple[str, ...] = ()
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def quantized(self) -> bool:
        return self.weight_bits is not None or self.activation_bits is not None

    @property
    def needs_calibration(self) -> bool:
        return self.activation_bits is not None

    @property
    def precision_label(self) -> str:
        """Short label for manifests and tables, e.g. ``fp32``, ``fp16``, ``w8a8``."""
        if not self.quantized:
            return {"float32": "fp32", "float16": "fp16"}.get(self.float_dtype, self.float_dtype)
        w = f"w{self.weight_bits}" if self.weight_bits is not None else "wf"
        a = f"a{self.activation_bits}" if self.activation_bits is not None else "af"
        return w + a

    def with_calibration(self, **changes: Any) -> "QuantRecipe":
        base = self.calibration or CalibrationSpec()
        return replace(self, calibration=replace(base, **changes))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["keep_float"] = list(self.keep_float)
        data["precision"] = self.precision_label
        return data


RECIPES: dict[str, QuantRecipe] = {
    "fp32": QuantRecipe("fp32", notes="reference precision"),
    "fp16": QuantRecipe("fp16", float_dtype="float16", notes="weights and activations in half precision"),
    "w8a8": QuantRecipe(
        "w8a8",
        weight_bits=8,
        activation_bits=8,
        per_channel=True,
        symmetric=True,
        calibration=CalibrationSpec(),
        notes="int8 weights (per output channel, symmetric) and int8 activations calibrated on real tiles",
    ),
    "w8a16": QuantRecipe(
        "w8a16",
        weight_bits=8,
        activation_bits=16,
        per_channel=True,
        symmetric=True,
        calibration=CalibrationSpec(),
        notes="int8 weights, 16-bit activations (Qualcomm's usual choice for diffusion models)",
    ),
    "w8": QuantRecipe("w8", float_dtype="float16", weight_bits=8, notes="weight-only int8, fp16 compute"),
    "w4-palettized": QuantRecipe(
        "w4-palettized", float_dtype="float16", weight_bits=4, per_channel=False, symmetric=False,
        notes="4-bit look-up-table weights (k-means), fp16 compute",
    ),
}


def get_recipe(name: str) -> QuantRecipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise ValueError(f"unknown quantization recipe {name!r}; known: {sorted(RECIPES)}") from None

"""Backend-neutral descriptions of how a model is made smaller: the one precision vocabulary.

A recipe says WHAT is done (weight/activation bit widths, linear or palettized weights, per-channel
or per-tensor, symmetric or not, which float type the rest runs in, how it is calibrated); each
backend's quantizer module (``quantize/xnnpack.py``, ``quantize/coreml.py``, ``quantize/qnn.py``)
says HOW with its own tools. A deployment target (``export/targets.py``) pairs one of these with a
lowering recipe. The manifest records the recipe's dictionary, so an app or a report can tell two
artifacts apart without knowing which toolkit made them.

Every recipe type is versioned: ``to_dict`` writes its ``VERSION`` and ``from_dict`` refuses a
dictionary written by another version (a recipe read back with a changed meaning would produce a
different artifact under the same name).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any, ClassVar, TypeVar

T = TypeVar("T")


class QuantizationError(RuntimeError):
    """Quantization could not be set up or run; the message names the component and the reason."""


class RecipeVersionError(ValueError):
    """A recipe or target dictionary was written by another version of its type."""


def versioned_dict(obj: Any) -> dict[str, Any]:
    """``obj``'s fields plus its type name and ``VERSION`` (what :func:`check_version` reads back)."""
    return {"type": type(obj).__name__, "version": type(obj).VERSION, **asdict(obj)}


def check_version(cls: type[T], data: dict[str, Any]) -> dict[str, Any]:
    """The fields of ``data`` for ``cls(**fields)``; refuses another type, another version or unknown keys."""
    if not isinstance(data, dict):
        raise RecipeVersionError(f"{cls.__name__}: expected a dictionary, got {type(data).__name__}")
    kind = data.get("type", cls.__name__)
    if kind != cls.__name__:
        raise RecipeVersionError(f"expected a {cls.__name__} dictionary, got a {kind!r} one")
    version = data.get("version")
    if version != cls.VERSION:  # type: ignore[attr-defined]
        raise RecipeVersionError(
            f"{cls.__name__} version {version!r} is not this toolkit's version {cls.VERSION}: "  # type: ignore[attr-defined]
            "its fields may mean something else; rebuild it with this version"
        )
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    body = {k: v for k, v in data.items() if k not in ("type", "version")}
    unknown = sorted(set(body) - known)
    if unknown:
        raise RecipeVersionError(f"{cls.__name__} version {version}: unknown fields {unknown}")
    return body


class Versioned:
    """``to_dict`` / ``from_dict`` for a flat versioned dataclass (subclasses with nested parts override them)."""

    VERSION: ClassVar[int] = 1

    def to_dict(self) -> dict[str, Any]:
        return versioned_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Any:
        return cls(**check_version(cls, data))


@dataclass(frozen=True)
class CalibrationSpec(Versioned):
    """Which real inputs calibrate activation ranges (see ``quantize/calibration.py``)."""

    VERSION: ClassVar[int] = 1

    num_scenes: int = 4
    max_tiles_per_image: int | None = 4
    seed: int = 1234
    images_dir: str | None = None
    K: int | None = None  # None: each scene's own aperture (varied), images folder: 24
    #: Generated photos for the depth component: one photo is one depth input, and min/max ranges
    #: from a handful of photos did not generalise (held-out W8A16 depth: ~24 dB from 1 photo,
    #: 30-37 dB from 4, 36-44 dB from 16; test-size network, 70-px input).
    depth_images: int = 16


#: How a recipe's weights are stored: ``linear`` (scale + zero point), ``palettize`` (a k-means
#: look-up table per tensor) or ``palettize-mixed`` (per-layer table sizes from measured sensitivity).
WEIGHT_METHODS = ("linear", "palettize", "palettize-mixed")


@dataclass(frozen=True)
class QuantRecipe(Versioned):
    """One precision recipe: the quantization part of a deployment target.

    ``weight_bits``/``activation_bits`` None mean float (in ``float_dtype``). ``keep_float`` lists
    module-name fragments a backend should leave unquantized (sensitive layers).
    ``mixed_cheap_fraction`` / ``mixed_psnr_floor_db``: a sensitivity-driven mixed recipe's budget
    (``quantize.sensitivity.plan_mixed``): the exporter measures each layer group on the calibration
    tiles with the backend's own simulation and keeps the most sensitive groups in the backend's
    higher precision (XNNPACK: fp32; QNN: 16-bit activations) until the predicted component PSNR
    reaches the floor, with at least the fraction of parameters left in the recipe's format.
    """

    VERSION: ClassVar[int] = 1

    name: str
    float_dtype: str = "float32"
    weight_bits: int | None = None
    activation_bits: int | None = None
    weight_method: str = "linear"
    per_channel: bool = True
    symmetric: bool = True
    calibration: CalibrationSpec | None = None
    keep_float: tuple[str, ...] = ()
    notes: str = ""
    mixed_cheap_fraction: float | None = None
    mixed_psnr_floor_db: float | None = None

    def __post_init__(self) -> None:
        if self.weight_method not in WEIGHT_METHODS:
            raise ValueError(f"recipe {self.name!r}: weight_method must be one of {WEIGHT_METHODS}")
        if self.mixed_cheap_fraction is not None and not 0.0 <= self.mixed_cheap_fraction <= 1.0:
            raise ValueError(f"recipe {self.name!r}: mixed_cheap_fraction must lie in [0, 1]")
        if self.sensitivity_mixed and not (self.quantized and self.calibration is not None):
            raise ValueError(f"recipe {self.name!r}: a sensitivity-driven mixed recipe quantizes and calibrates")

    @property
    def sensitivity_mixed(self) -> bool:
        """Whether the exporter picks per-group precision from measured sensitivity (a mixed budget is set)."""
        return self.mixed_cheap_fraction is not None or self.mixed_psnr_floor_db is not None

    @property
    def quantized(self) -> bool:
        return self.weight_bits is not None or self.activation_bits is not None

    @property
    def needs_calibration(self) -> bool:
        """Whether the quantizer needs real inputs: activation ranges, or per-layer sensitivity."""
        return self.calibration is not None

    @property
    def precision_label(self) -> str:
        """Short label for manifests and tables: ``fp32``, ``fp16``, ``w8a8``, ``w8`` (weight-only), ``mixed``."""
        if self.weight_method == "palettize-mixed":
            return "mixed"
        if not self.quantized:
            return {"float32": "fp32", "float16": "fp16"}.get(self.float_dtype, self.float_dtype)
        w = f"w{self.weight_bits}" if self.weight_bits is not None else "wf"
        label = w if self.activation_bits is None else f"{w}a{self.activation_bits}"
        return f"{label}-mixed" if self.sensitivity_mixed else label

    def with_calibration(self, **changes: Any) -> "QuantRecipe":
        base = self.calibration or CalibrationSpec()
        return replace(self, calibration=replace(base, **changes))

    def to_dict(self) -> dict[str, Any]:
        data = versioned_dict(self)
        data["keep_float"] = list(self.keep_float)
        data["calibration"] = self.calibration.to_dict() if self.calibration else None
        data["precision"] = self.precision_label
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "QuantRecipe":
        body = check_version(cls, {k: v for k, v in data.items() if k != "precision"})
        body["keep_float"] = tuple(body.get("keep_float", ()))
        if body.get("calibration") is not None:
            body["calibration"] = CalibrationSpec.from_dict(body["calibration"])
        return cls(**body)


RECIPES: dict[str, QuantRecipe] = {r.name: r for r in (
    QuantRecipe("fp32", notes="reference precision"),
    QuantRecipe("fp16", float_dtype="float16", notes="weights and activations in half precision"),
    QuantRecipe("w8a8", weight_bits=8, activation_bits=8, calibration=CalibrationSpec(),
                notes="int8 weights (per output channel, symmetric) and int8 activations calibrated on real tiles"),
    QuantRecipe("w8a16", weight_bits=8, activation_bits=16, calibration=CalibrationSpec(),
                notes="int8 weights, 16-bit activations (Qualcomm's usual choice for diffusion models)"),
    QuantRecipe("w8a8-mixed", weight_bits=8, activation_bits=8, calibration=CalibrationSpec(),
                mixed_psnr_floor_db=35.0, mixed_cheap_fraction=0.5,
                notes="w8a8, except the layer groups whose measured sensitivity (the backend's own simulation on "
                      "real tiles) would pull the component below 35 dB: those stay in the backend's higher "
                      "precision (XNNPACK fp32, QNN 16-bit activations); at least half the parameters stay w8a8"),
    QuantRecipe("w8", float_dtype="float16", weight_bits=8, notes="weight-only int8 (per output channel), fp16 compute"),
    QuantRecipe("w6-palettized", float_dtype="float16", weight_bits=6, weight_method="palettize", per_channel=False,
                symmetric=False, notes="6-bit look-up-table weights (k-means, one table per tensor), fp16 compute"),
    QuantRecipe("w4-palettized", float_dtype="float16", weight_bits=4, weight_method="palettize", per_channel=False,
                symmetric=False, notes="4-bit look-up-table weights (k-means, one table per tensor), fp16 compute"),
    QuantRecipe("mixed-palettized", float_dtype="float16", weight_method="palettize-mixed", per_channel=False,
                symmetric=False, calibration=CalibrationSpec(num_scenes=1, max_tiles_per_image=1, depth_images=1),
                notes="per-layer 4/6/8-bit look-up tables chosen by sensitivity measured on real tiles, fp16 compute"),
)}


def get_recipe(name: str) -> QuantRecipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise ValueError(f"unknown quantization recipe {name!r}; known: {sorted(RECIPES)}") from None

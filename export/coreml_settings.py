"""The Core ML lowering's settings, kept free of heavy imports so the CLI's ``--help`` stays instant."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from quantize.coreml import PALETTE_BITS  # noqa: F401  (numpy only; the CLI's --mixed-bits choices)

DEFAULT_CHUNK_BYTES = 1 << 30
DEPLOYMENT_TARGETS = ("iOS16", "iOS17", "iOS18", "macOS13", "macOS14", "macOS15")
COMPUTE_UNITS = {
    "all": "ALL",
    "cpu_and_ne": "CPU_AND_NE",
    "cpu_and_gpu": "CPU_AND_GPU",
    "cpu_only": "CPU_ONLY",
}


@dataclass
class Options:
    """The Core ML lowering's settings (defaults from the target's lowering recipe; the precision
    and compression come from the target's quantization recipe)."""

    deployment_target: str = "iOS17"
    compute_units: str = "all"
    ane_layout: bool = True
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    compile_mlmodelc: bool = False
    mixed_average_bits: float = 5.0
    mixed_choices: tuple[int, ...] = (4, 6, 8)

    def validate(self) -> "Options":
        if self.deployment_target not in DEPLOYMENT_TARGETS:
            raise ValueError(f"deployment target must be one of {DEPLOYMENT_TARGETS}, got {self.deployment_target!r}")
        if self.compute_units not in COMPUTE_UNITS:
            raise ValueError(f"compute units must be one of {sorted(COMPUTE_UNITS)}, got {self.compute_units!r}")
        if self.chunk_bytes <= 0:
            raise ValueError(f"chunk_bytes must be positive, got {self.chunk_bytes}")
        self.mixed_choices = tuple(sorted(set(self.mixed_choices)))
        low, high = self.mixed_choices[0], self.mixed_choices[-1]
        if not low <= self.mixed_average_bits <= high:
            raise ValueError(f"mixed average bits {self.mixed_average_bits} must lie in [{low}, {high}] "
                             f"(the bit choices {list(self.mixed_choices)})")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))

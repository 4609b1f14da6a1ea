"""Export MagicBokeh to ExecuTorch ``.pte`` programs: ``python export/to_executorch.py [options]``.

    python export/to_executorch.py                            # built-in model, XNNPACK fp32
    python export/to_executorch.py --recipe xnnpack-int8      # PT2E int8 calibrated on real tiles
    python export/to_executorch.py --checkpoint magicbokeh.safetensors --out artifacts/mine

Writes OUT/<component>.pte, OUT/manifest.json, OUT/parity.json and OUT/parity.md (default OUT:
artifacts/executorch-<recipe>) and prints a summary table. The flags are the ones every exporter
shares (``export/cli.py``) plus the ExecuTorch lowering's; the library is
``export/executorch_lowering.py`` run by ``export.flow.export_target``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from export.cli import export_parser, run_export  # noqa: E402

FAMILY = "executorch"


def build_parser() -> argparse.ArgumentParser:
    parser = export_parser(FAMILY, __doc__)
    low = parser.add_argument_group("ExecuTorch lowering")
    low.add_argument("--focus", choices=["bias", "split"], default=None,
                     help="focus-attention realisation (default: the target's graph variant, export/prepare.py)")
    low.add_argument("--no-rewrites", action="store_true", help="export group/layer norm and attention untouched")
    return parser


def lowering_options(args: argparse.Namespace) -> dict[str, Any]:
    options: dict[str, Any] = {"focus": args.focus}
    if args.no_rewrites:
        options["rewrites"] = ()
    return options


def main(argv: Sequence[str] | None = None) -> int:
    return run_export(FAMILY, build_parser(), argv, lowering_options)[0]


if __name__ == "__main__":
    raise SystemExit(main())

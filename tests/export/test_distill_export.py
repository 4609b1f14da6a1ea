"""The folded distillation student through the exporters' shared graph preparation."""

from __future__ import annotations

import torch


def test_folded_student_goes_through_the_exporters_graph_preparation():
    # Exporters start from tile components; the folded student must export like the reference
    # model, for both focus-attention realisations, and the exported graph must compute the same.
    from export.prepare import prepare_for_export
    from runtime_py.components import tile_components
    from training.distill import build_student

    comps = tile_components(build_student("tiny-mobile", "folded", seed=0))
    for target in ("xnnpack", "qnn"):
        # The denoiser is the part that differs from the reference model (encoder/decoder are plain VAEs).
        prepared = prepare_for_export(comps, target=target, names=["denoiser"])
        den = prepared["denoiser"]
        with torch.no_grad():
            eager = comps["denoiser"](*den.example_inputs)
            exported = den.program.module()(*den.example_inputs)
        # Same ops up to the export-time rewrites (re-associated sums): float32 rounding only.
        assert torch.allclose(exported, eager, atol=1e-4, rtol=1e-4), target

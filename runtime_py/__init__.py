"""MagicBokeh's reference runtime: model, checkpoints, components, pipeline, backends, manifest, parity.

What an app integrator installs. It never imports ``export``, ``quantize``, ``training`` or
``benchmarks`` (import-linter contracts in pyproject.toml hold that), and heavy runtimes
(executorch, coremltools, onnxruntime; diffusers for the torch model) are imported only by the code
that uses them.
"""

from .third_party_logs import hide_known_harmless_messages

hide_known_harmless_messages()

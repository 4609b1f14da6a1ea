"""Import every backend module so that each registers itself (optional ones may fail to import)."""

from importlib import import_module

for _module in ("torch_backend", "executorch_backend", "onnxruntime_backend", "coreml_backend"):
    try:
        import_module(f"{__package__}.{_module}")
    except ModuleNotFoundError as exc:  # a backend file not written yet, or its runtime missing
        if exc.name and exc.name.startswith(__package__):
            continue
        raise

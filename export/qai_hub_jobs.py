"""Qualcomm AI Hub: compile, profile and run the exported QNN components on real phones.

For each component and device the QDQ ONNX file is compiled by AI Hub to a QNN context binary
(``--target_runtime qnn_context_binary``), then one inference job with profiling runs it on the
device with real tile inputs. The results (target model, profile, outputs) are downloaded into
``<artifacts>/hub/<device>/`` and merged into the artifacts' reports: device latency and peak
memory per component, and on-device parity (device output against the same QDQ graph on the CPU
and against the fp32 reference), in ``hub.json`` and ``parity.json``.

The job *construction* (what is submitted, with which input specs, options and inputs) is pure
and tested offline with a stand-in client; only :func:`connect` touches the network. Without an
API token it raises :class:`HubUnavailableError` with the way to configure one, and nothing else
in the export is affected.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from runtime_py.atomic import write_json

#: Phones used by default: Galaxy S24 (Snapdragon 8 Gen 3, SM8650) and S25 (8 Elite, SM8750).
DEFAULT_DEVICES = ("Samsung Galaxy S24 (Family)", "Samsung Galaxy S25 (Family)")
COMPILE_OPTIONS = "--target_runtime qnn_context_binary"
TOKEN_ENV = "QAI_HUB_API_TOKEN"
HUB_REPORT = "hub.json"


class HubUnavailableError(RuntimeError):
    """AI Hub cannot be used here (no token configured, client missing, service unreachable)."""


@dataclass(frozen=True)
class CompileRequest:
    """One compile job to submit: a component's QDQ model for one device."""

    component: str
    device: str
    model: Path
    input_specs: dict[str, tuple[tuple[int, ...], str]]
    options: str = COMPILE_OPTIONS

    @property
    def name(self) -> str:
        return f"magicbokeh-{self.component}-{_slug(self.device)}"


@dataclass
class HubJobs:
    """Submitted jobs per (component, device), as returned by the client."""

    compile: dict[tuple[str, str], Any] = field(default_factory=dict)
    inference: dict[tuple[str, str], Any] = field(default_factory=dict)
    requests: list[CompileRequest] = field(default_factory=list)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def connect(token: str | None = None, client: Any | None = None) -> Any:
    """An AI Hub client: ``client`` as given, or ``qai_hub`` configured by token / ``~/.qai_hub``.

    Raises :class:`HubUnavailableError` naming what to do when no token is configured.
    """
    if client is not None:
        return client
    try:
        import qai_hub
        from qai_hub import api_utils
    except ImportError as exc:
        raise HubUnavailableError(f"the qai-hub package is not installed: {exc}") from None
    token = token or os.environ.get(TOKEN_ENV)
    if token:
        return qai_hub.Client(config=qai_hub.ClientConfig(api_token=token))
    config_path = Path(api_utils.get_config_path())
    if not config_path.is_file():
        raise HubUnavailableError(
            "no Qualcomm AI Hub API token is configured: run `qai-hub configure --api_token <TOKEN>` "
            f"(writes {config_path}), or set {TOKEN_ENV}, or pass --hub-token (an export without --hub needs none)"
        )
    return qai_hub.Client()


def compile_requests(folder: Path | str, devices: Sequence[str], components: Sequence[str] | None = None) -> list[CompileRequest]:
    """What to compile: each component's QDQ model (from the manifest) for each device."""
    from runtime_py.manifest import read_manifest

    if not devices:
        raise ValueError("name at least one AI Hub device, e.g. 'Samsung Galaxy S24 (Family)'")
    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest.backend != "qnn":
        raise ValueError(f"{folder} holds {manifest.backend!r} artifacts; AI Hub jobs take QNN artifacts (export.to_qnn)")
    names = list(components or manifest.components)
    missing = [n for n in names if n not in manifest.components]
    if missing:
        raise ValueError(f"artifacts lack components {missing}; they hold {sorted(manifest.components)}")
    requests = []
    for name in names:
        entry = manifest.components[name]
        specs = {s["name"]: (tuple(s["shape"]), s.get("dtype", "float32")) for s in entry.inputs}
        for device in devices:
            requests.append(CompileRequest(name, device, folder / entry.file, specs))
    return requests


def submit(
    client: Any,
    requests: Sequence[CompileRequest],
    inputs: Mapping[str, Sequence[np.ndarray]],
    *,
    device_factory: Callable[[str], Any] | None = None,
) -> HubJobs:
    """Submit every compile job, then an inference job with profiling on each compiled model.

    ``inputs``: per component, one real input tuple (declared order) to run on the device.
    ``device_factory`` turns a device name into the client's device object (``qai_hub.Device``).
    """
    if device_factory is None:
        import qai_hub

        device_factory = qai_hub.Device
    jobs = HubJobs(requests=list(requests))
    for request in requests:
        if request.component not in inputs:
            raise ValueError(f"no device inputs given for component {request.component!r}")
        device = device_factory(request.device)
        jobs.compile[(request.component, request.device)] = client.submit_compile_job(
            model=str(request.model), device=device, name=request.name,
            input_specs=dict(request.input_specs), options=request.options,
        )
    for request in requests:
        key = (request.component, request.device)
        target = jobs.compile[key].get_target_model()
        if target is None:
            raise HubUnavailableError(f"AI Hub could not compile {request.component} for {request.device} "
                                      f"(compile job {getattr(jobs.compile[key], 'job_id', '?')})")
        names = list(request.input_specs)
        dataset = {n: [np.ascontiguousarray(a, dtype=np.float32)] for n, a in zip(names, inputs[request.component])}
        jobs.inference[key] = client.submit_inference_job(
            model=target, device=device_factory(request.device), inputs=dataset,
            name=request.name + "-run", profile=True,
        )
    return jobs


def _profile_figures(profile: Mapping[str, Any]) -> dict[str, Any]:
    summary = profile.get("execution_summary", {}) if isinstance(profile, Mapping) else {}
    micros = summary.get("estimated_inference_time")
    peak = summary.get("estimated_inference_peak_memory")
    return {"latency_ms": micros / 1000.0 if micros is not None else None,
            "peak_memory_bytes": peak, "compute_unit_counts": summary.get("compute_unit_counts")}


def collect(
    jobs: HubJobs,
    folder: Path | str,
    inputs: Mapping[str, Sequence[np.ndarray]],
    cpu_fns: Mapping[str, Callable[..., np.ndarray]] | None = None,
    reference_fns: Mapping[str, Callable[..., np.ndarray]] | None = None,
) -> dict[str, Any]:
    """Wait for the jobs, download results under ``<folder>/hub/``, write ``hub.json``, merge parity."""
    from runtime_py.parity import compare

    folder = Path(folder)
    results: dict[str, Any] = {"devices": {}}
    for (component, device), job in jobs.inference.items():
        target_dir = folder / "hub" / _slug(device)
        target_dir.mkdir(parents=True, exist_ok=True)
        compile_job = jobs.compile[(component, device)]
        target = compile_job.get_target_model()
        if target is not None and hasattr(target, "download"):
            target.download(str(target_dir / f"{component}.bin"))
        profile = job.download_profile()
        write_json(target_dir / f"{component}.profile.json", profile)
        row: dict[str, Any] = {"compile_job": getattr(compile_job, "job_id", None),
                               "inference_job": getattr(job, "job_id", None)} | _profile_figures(profile)
        outputs = job.download_output_data()
        if outputs:
            device_out = np.asarray(next(iter(outputs.values()))[0], dtype=np.float32)
            np.save(target_dir / f"{component}.output.npy", device_out)
            if cpu_fns and component in cpu_fns:
                row["vs_cpu_qdq"] = compare(cpu_fns[component](*inputs[component]), device_out)
            if reference_fns and component in reference_fns:
                row["vs_fp32"] = compare(reference_fns[component](*inputs[component]), device_out)
        results["devices"].setdefault(device, {})[component] = row
    write_json(folder / HUB_REPORT, results)
    merge_into_parity(folder, results)
    return results


def merge_into_parity(folder: Path, results: Mapping[str, Any]) -> None:
    """Add the on-device figures to ``parity.json`` (key ``on_device``) when the export wrote one."""
    path = folder / "parity.json"
    if not path.is_file():
        return
    data = json.loads(path.read_text())
    data["on_device"] = results
    write_json(path, data)


def run_hub(
    folder: Path | str,
    devices: Sequence[str] = DEFAULT_DEVICES,
    *,
    inputs: Mapping[str, Sequence[np.ndarray]],
    components: Sequence[str] | None = None,
    token: str | None = None,
    client: Any | None = None,
    device_factory: Callable[[str], Any] | None = None,
    cpu_fns: Mapping[str, Callable[..., np.ndarray]] | None = None,
    reference_fns: Mapping[str, Callable[..., np.ndarray]] | None = None,
) -> dict[str, Any]:
    """Connect (or fail clearly), submit, wait, download and merge: the whole ``--hub`` step."""
    hub = connect(token, client)
    requests = compile_requests(folder, devices, components)
    try:
        jobs = submit(hub, requests, inputs, device_factory=device_factory)
        return collect(jobs, folder, inputs, cpu_fns, reference_fns)
    except HubUnavailableError:
        raise
    except (OSError, ConnectionError) as exc:
        raise HubUnavailableError(f"Qualcomm AI Hub could not be reached: {exc}") from exc
    except Exception as exc:
        if type(exc).__module__.startswith("qai_hub"):
            raise HubUnavailableError(f"Qualcomm AI Hub refused the jobs: {type(exc).__name__}: {exc}") from exc
        raise

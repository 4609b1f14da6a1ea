"""Lower MagicBokeh components to Core ML ML programs (.mlpackage): the ``coreml`` family's lowering.

Route: component -> (ANE attention swap, focus "split") -> ``torch.export`` (the ``torch.jit.trace``
route fails on these graphs) -> ``coremltools.convert`` (ML program, fp16 compute, iOS 17 by
default) -> optional weight compression (``quantize.coreml``) -> save. A component whose weights
exceed ``chunk_bytes`` (1 GB by default, Core ML's practical per-model limit on phones) is cut
into chunks that run in sequence; each chunk is its own package and the manifest lists them.

The flow's verify step (``export.flow``) then EXECUTES the saved packages (``MLModel.predict`` on
macOS, the numpy Core ML interpreter elsewhere), never the torch model they came from.
"""

from __future__ import annotations

import contextlib
import platform
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from export.coreml_ane import ane_attention
from export.coreml_settings import COMPUTE_UNITS, Options  # noqa: F401  (Options: the flow builds it from here)
from export.prepare import ExportError, focus_implementation, prepare_component, static_example_inputs
from runtime_py.components import Component
from runtime_py.manifest import ComponentEntry

FOCUS_FOR_COREML = "split"


class CoreMLExportError(ExportError):
    """Core ML conversion, compression or saving failed; the message names the component."""


# -- conversion ---------------------------------------------------------------------------------

def _ct():
    import coremltools as ct

    return ct


def ct_target(name: str):
    return getattr(_ct().target, name)


def ct_compute_units(name: str):
    return getattr(_ct().ComputeUnit, COMPUTE_UNITS[name])


def convert_exported(
    program: torch.export.ExportedProgram,
    input_names: Sequence[str],
    input_shapes: Sequence[Sequence[int]],
    output_names: Sequence[str],
    *,
    precision: str = "fp16",
    deployment_target: str = "iOS17",
    compute_units: str = "all",
    label: str = "component",
):
    """``coremltools.convert`` of a ``torch.export`` program to an ML program with named I/O.

    fp16 programs take and return fp16 tensors (no cast ops at the edges; the Neural Engine works
    in fp16). fp32 is there for debugging the converter separately from fp16 effects.
    """
    ct = _ct()
    io_dtype = np.float32 if precision == "fp32" else np.float16
    inputs = [ct.TensorType(name=n, shape=tuple(s), dtype=io_dtype) for n, s in zip(input_names, input_shapes)]
    outputs = [ct.TensorType(name=n, dtype=io_dtype) for n in output_names]
    try:
        return ct.convert(
            program.run_decompositions({}),
            inputs=inputs,
            outputs=outputs,
            convert_to="mlprogram",
            minimum_deployment_target=ct_target(deployment_target),
            compute_precision=ct.precision.FLOAT32 if precision == "fp32" else ct.precision.FLOAT16,
            compute_units=ct_compute_units(compute_units),
            skip_model_load=platform.system() != "Darwin",
        )
    except Exception as exc:  # coremltools raises many types
        raise CoreMLExportError(f"coremltools could not convert {label}: {type(exc).__name__}: {_first_line(exc)}") from exc


# -- chunking ------------------------------------------------------------------------------------

@dataclass
class GraphChunk:
    """One piece of a component's graph: a module with named tensor inputs/outputs."""

    module: nn.Module
    input_names: list[str]
    output_names: list[str]
    weight_bytes: int


def _attr(root: nn.Module, target: str) -> Any:
    obj: Any = root
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def split_graph(
    program: torch.export.ExportedProgram,
    input_names: Sequence[str],
    output_names: Sequence[str],
    max_bytes: int,
    bytes_per_weight: int = 2,
) -> list[GraphChunk]:
    """Cut an exported graph into consecutive pieces of at most ``max_bytes`` of weights each.

    Nodes are taken in the graph's (topological) order; a new piece starts when the next node's
    weights would push the current one over the limit. Values crossing a cut become outputs of
    the earlier piece and inputs of the later one, so the pieces run in sequence and compose to
    the original. A single layer larger than the limit gets a piece of its own.
    """
    from torch import fx

    gm = program.module()
    graph = gm.graph
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    if len(placeholders) != len(input_names):
        raise CoreMLExportError(f"graph has {len(placeholders)} inputs, expected {len(input_names)}")
    output_node = next(n for n in graph.nodes if n.op == "output")
    outputs = output_node.args[0]
    outputs = list(outputs) if isinstance(outputs, (tuple, list)) else [outputs]
    compute = [n for n in graph.nodes if n.op in ("call_function", "call_method")]

    def weight_bytes(node: fx.Node) -> int:
        total = 0
        for arg in node.all_input_nodes:
            if arg.op == "get_attr":
                value = _attr(gm, arg.target)
                if isinstance(value, torch.Tensor):
                    total += value.numel() * bytes_per_weight
        return total

    part_of: dict[fx.Node, int] = {}
    sizes = [0]
    for node in compute:
        cost = weight_bytes(node)
        if sizes[-1] > 0 and sizes[-1] + cost > max_bytes:
            sizes.append(0)
        part_of[node] = len(sizes) - 1
        sizes[-1] += cost
    if len(sizes) == 1:
        return []  # fits: no chunking

    names = {p: n for p, n in zip(placeholders, input_names)}
    for node, name in zip(outputs, output_names):
        names[node] = name
    produced_in = dict(part_of)
    for p in placeholders:
        produced_in[p] = -1

    chunks: list[GraphChunk] = []
    for index in range(len(sizes)):
        nodes = [n for n in compute if part_of[n] == index]
        new_graph = fx.Graph()
        env: dict[fx.Node, fx.Node] = {}
        chunk_inputs: list[str] = []
        for node in nodes:
            for arg in node.all_input_nodes:
                if arg in env or arg.op == "get_attr":
                    continue
                if produced_in.get(arg, index) < index:
                    name = names.setdefault(arg, f"t_{arg.name}")
                    env[arg] = new_graph.placeholder(name)
                    chunk_inputs.append(name)
        for node in nodes:
            for arg in node.all_input_nodes:
                if arg.op == "get_attr" and arg not in env:
                    env[arg] = new_graph.get_attr(arg.target)
            env[node] = new_graph.node_copy(node, lambda n: env[n])
        later_users = []
        for node in nodes:
            used_later = any(part_of.get(u, len(sizes)) > index for u in node.users if u.op != "output") or node in outputs
            if used_later:
                later_users.append(node)
        out_names = [names.setdefault(n, f"t_{n.name}") for n in later_users]
        new_graph.output(tuple(env[n] for n in later_users))
        module = fx.GraphModule(gm, new_graph)
        chunks.append(GraphChunk(module, chunk_inputs, out_names, sizes[index]))
    missing = [n for n in output_names if n not in {o for c in chunks for o in c.output_names}]
    if missing:
        raise CoreMLExportError(f"chunking lost the outputs {missing}")
    return chunks


# -- compile (macOS) -------------------------------------------------------------------------------

def compile_mlmodelc(package: Path) -> Path | None:
    """Compile an .mlpackage to .mlmodelc beside it (macOS only), so the app skips the first-load compile."""
    if platform.system() != "Darwin":
        return None
    ct = _ct()
    compiled = Path(ct.utils.compile_model(str(package)))
    target = package.with_suffix(".mlmodelc")
    if target.exists():
        shutil.rmtree(target)
    shutil.move(str(compiled), target)
    return target


# -- one component ----------------------------------------------------------------------------------

@dataclass
class LoweredComponent:
    """What lowering one component produced."""

    name: str
    file: str  # relative to the artifacts folder: one package, or a folder of chunk packages
    precision: str
    chunks: list[dict[str, Any]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    weight_bytes_fp16: int = 0
    recipe: dict[str, Any] = field(default_factory=dict)
    op_counts: dict[str, int] = field(default_factory=dict)


@contextlib.contextmanager
def coreml_graph(component: Component, ane_layout: bool):
    """The component as the Core ML export sees it: focus "split" and, optionally, ANE attention."""
    with focus_implementation(component, FOCUS_FOR_COREML):
        if ane_layout:
            with ane_attention(component):
                yield component
        else:
            yield component


def export_graph(component: Component, inputs: Sequence[torch.Tensor], ane_layout: bool) -> torch.export.ExportedProgram:
    try:
        with coreml_graph(component, ane_layout), torch.no_grad():
            return torch.export.export(component, tuple(inputs), strict=False)
    except Exception as exc:
        raise CoreMLExportError(
            f"torch.export failed for component {component.name!r} (Core ML, ane_layout={ane_layout}): "
            f"{type(exc).__name__}: {_first_line(exc)}"
        ) from exc


def lower_component(
    component: Component,
    folder: Path,
    options: Options,
    precision: str = "fp16",
    sensitivity_inputs: Sequence[Sequence[np.ndarray]] = (),
    log: Callable[[str], None] = print,
) -> LoweredComponent:
    """Convert (and chunk, and compress) one component into ``folder``; returns what was written.

    ``precision`` is the target's label: ``fp16``, ``fp32``, or a compression of ``quantize.coreml``
    (``w8``, ``w6``, ``w4``, ``mixed``). For ``mixed`` the per-layer bits are planned first, in torch, from the component's
    measured sensitivity on ``sensitivity_inputs`` (real tiles), then applied to every piece.
    """
    from quantize.coreml import compress_mlmodel, plan_mixed_bits

    options.validate()
    name = component.name
    prepare_component(component)
    example = static_example_inputs(component)
    input_names = [s.name for s in component.input_specs()]
    input_shapes = [tuple(s.shape) for s in component.input_specs()]
    output_names = [s.name for s in component.output_specs()]
    result = LoweredComponent(name=name, file="", precision=precision)
    start = time.perf_counter()
    program = export_graph(component, example, options.ane_layout)
    result.seconds["torch_export"] = time.perf_counter() - start
    result.weight_bytes_fp16 = graph_weight_bytes(program)
    plan = None
    if precision == "mixed":
        start = time.perf_counter()
        log(f"  {name}: measuring per-layer sensitivity in torch on {len(sensitivity_inputs)} real sample(s)")
        used = used_parameter_names(program, component)
        plan = plan_mixed_bits(component, sensitivity_inputs, sorted(set(used.values())),
                               options.mixed_average_bits, options.mixed_choices, log=log, aliases=used)
        result.seconds["sensitivity"] = time.perf_counter() - start

    chunks = split_graph(program, input_names, output_names, options.chunk_bytes)
    pieces: list[tuple[str, torch.export.ExportedProgram, list[str], list[tuple[int, ...]], list[str]]] = []
    if not chunks:
        pieces.append((f"{name}.mlpackage", program, input_names, input_shapes, output_names))
    else:
        log(f"  {name}: {result.weight_bytes_fp16 / 2**20:.3f} MiB of fp16 weights > "
            f"{options.chunk_bytes / 2**20:.3f} MiB: {len(chunks)} chunks")
        values: dict[str, torch.Tensor] = dict(zip(input_names, example))
        start = time.perf_counter()
        for index, chunk in enumerate(chunks):
            chunk_inputs = tuple(values[n] for n in chunk.input_names)
            with torch.no_grad():
                outs = chunk.module(*chunk_inputs)
            values.update(zip(chunk.output_names, outs))
            try:
                chunk_program = torch.export.export(chunk.module, chunk_inputs, strict=False)
            except Exception as exc:
                raise CoreMLExportError(f"torch.export failed for {name} chunk {index}: {_first_line(exc)}") from exc
            pieces.append((
                f"{name}.chunks/chunk_{index:02d}.mlpackage",
                chunk_program,
                chunk.input_names,
                [tuple(values[n].shape) for n in chunk.input_names],
                chunk.output_names,
            ))
            result.chunks.append({
                "file": f"{name}.chunks/chunk_{index:02d}.mlpackage",
                "inputs": chunk.input_names,
                "outputs": chunk.output_names,
                "weight_bytes_fp16": chunk.weight_bytes,
            })
        result.seconds["chunking"] = time.perf_counter() - start

    result.seconds["convert"] = 0.0
    result.seconds["compress"] = 0.0
    for relative, piece_program, in_names, in_shapes, out_names in pieces:
        start = time.perf_counter()
        mlmodel = convert_exported(
            piece_program, in_names, in_shapes, out_names,
            precision="fp32" if precision == "fp32" else "fp16",
            deployment_target=options.deployment_target,
            compute_units=options.compute_units,
            label=f"component {name!r}" + (f" ({relative})" if chunks else ""),
        )
        result.seconds["convert"] += time.perf_counter() - start
        if precision not in ("fp16", "fp32"):
            start = time.perf_counter()
            mlmodel, recipe = compress_mlmodel(mlmodel, precision, mixed_plan=plan)
            result.recipe[relative] = recipe
            if precision == "mixed":
                log(f"  {relative}: {len(recipe['layers'])} weights palettized at {recipe['average_bits']:.3f} average "
                    f"bits (budget {recipe['average_bits_budget']}), {len(recipe['kept_fp16'])} kept fp16; "
                    f"torch-predicted PSNR {recipe['predicted_psnr_db']:.2f} dB")
            result.seconds["compress"] += time.perf_counter() - start
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        try:
            mlmodel.save(str(path))
        except Exception as exc:
            raise CoreMLExportError(f"saving {path} failed: {_first_line(exc)}") from exc
        result.seconds["save"] = result.seconds.get("save", 0.0) + time.perf_counter() - start
        if options.compile_mlmodelc and compile_mlmodelc(path) is None:
            log(f"  {relative}: .mlmodelc compilation skipped (needs macOS's Core ML compiler)")
        del mlmodel
    result.file = pieces[0][0] if not chunks else f"{name}.chunks"
    return result


def used_parameter_names(program: torch.export.ExportedProgram, module: nn.Module) -> dict[str, str]:
    """The parameters the exported graph really uses: export name -> name in ``module`` as it is now.

    The tile components share one model object, so the module's own parameter list would include
    the other components' weights; and the export ran with the Neural-Engine attention swapped in,
    whose wrappers rename parameters, so names are resolved through the tensors themselves.
    """
    params = set(program.graph_signature.parameters)
    gm = program.module()
    used = sorted({str(n.target) for n in gm.graph.nodes if n.op == "get_attr" and n.users and str(n.target) in params})
    by_storage = {p.data_ptr(): name for name, p in module.named_parameters()}
    out = {}
    for name in used:
        found = by_storage.get(program.state_dict[name].data_ptr())
        if found is None:
            raise CoreMLExportError(f"exported parameter {name!r} is not a parameter of component {module.name!r}")
        out[name] = found
    return out


def graph_weight_bytes(program: torch.export.ExportedProgram, bytes_per_weight: int = 2) -> int:
    """fp16 bytes of the weights the exported graph really uses (the tile components share one
    model object, so the module's own parameter count would include the other components)."""
    gm = program.module()
    total = 0
    for node in gm.graph.nodes:
        if node.op == "get_attr" and node.users:
            value = _attr(gm, node.target)
            if isinstance(value, torch.Tensor):
                total += value.numel() * bytes_per_weight
    return total


# -- the flow's lower step ------------------------------------------------------------------------------

def lower(job: Any) -> Any:
    """One package (or chunk folder) per component; ``mixed`` plans its bits on the quantize step's tiles."""
    from export.flow import LoweringOutput

    options, precision = job.options, job.target.precision
    entries = {}
    for name in job.names:
        job.log(f"[lower] {name}: converting to Core ML ({precision}, {options.deployment_target})")
        sensitivity = job.calibration.inputs.get(name, []) if job.calibration is not None else []
        low = lower_component(job.components[name], job.folder, options, precision,
                              sensitivity_inputs=sensitivity, log=job.log)
        extra: dict[str, Any] = {
            "format": "mlpackage",
            "io_dtype": "float32" if precision == "fp32" else "float16",
            "deployment_target": options.deployment_target,
            "compute_units": options.compute_units,
            "ane_layout": options.ane_layout,
            "focus_implementation": FOCUS_FOR_COREML if name == "denoiser" else None,
            "weight_bytes_fp16": low.weight_bytes_fp16,
            "seconds": low.seconds,
        }
        if low.chunks:
            extra["chunks"] = low.chunks
        if low.recipe:
            extra["compression"] = low.recipe
        entries[name] = ComponentEntry.from_component(job.components[name], low.file, precision, **extra)
    return LoweringOutput(entries)


def _first_line(exc: BaseException, limit: int = 400) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return line if len(line) <= limit else line[:limit] + "..."

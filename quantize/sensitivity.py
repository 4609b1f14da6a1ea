"""One quantization-sensitivity analysis for every backend, and mixed precision chosen from it.

A component's layers are grouped (by block: ``model.unet.down_blocks.1``, ...; plus three groups
the design singles out: the focus LoRA branch, the focus-attention mask path -- the ``-100`` bias,
softmax and attention products inside the focus processors -- and the component's own arithmetic
at its root, which for the denoiser is the ``x0`` step). Each group alone is quantized with the
BACKEND'S OWN simulation, the component runs on real pipeline tiles, and the PSNR of its output
against the fp32 output is that group's score:

* ``xnnpack``: PT2E fake quantization with the XNNPACKQuantizer (int8, per-channel weights,
  activations calibrated on the tiles), its annotation restricted to the group's nodes (a node
  belongs to the group of the innermost module in its ``nn_module_stack``);
* ``qnn``: QDQ with onnxruntime's QNN configuration (``get_qnn_qdq_config``) and
  ``nodes_to_quantize`` set to the group's ONNX nodes (owner read from the node's scope name),
  executed by onnxruntime's CPU EP;
* ``coreml``: the group's weights replaced by exactly what coremltools' k-means palettization
  (``quantize.coreml.kmeans_palettized``) or its 8-bit linear quantization gives them, in torch
  (the same scoring ``quantize.coreml``'s per-layer mixed-bit planner uses).

Groups ranked by score make the report (JSON + Markdown + a bar chart); :func:`plan_mixed` turns
it into the groups to keep in higher precision within a budget (a fraction of groups in the cheap
format, or a PSNR floor), assuming the groups' output noise adds up.
"""

from __future__ import annotations

import copy
import contextlib
import math
import re
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn

BACKENDS = ("xnnpack", "qnn", "coreml")
#: The explicit groups (besides the blocks), and what each means.
SPECIAL_GROUPS = {
    "component-root": "ops outside every block: the component's own arithmetic (the denoiser's x0 step "
                      "x0 = (z - sqrt(1-a) eps) / sqrt(a), the VAE's latent scaling and clamp) and the "
                      "glue between blocks (time embedding, output norms)",
    "focus-lora": "the focus LoRA branch (to_q/k/v/out_lora of every focus processor)",
    "focus-attention-mask": "the focus-attention mask path inside the focus processors: the -100 "
                            "bias between in- and out-of-focus tokens, softmax and the attention products",
}
SENSITIVITY_JSON = "sensitivity.json"
SENSITIVITY_MD = "sensitivity.md"
SENSITIVITY_PNG = "sensitivity.png"
_LORA = re.compile(r"_lora(\.|$)")


class SensitivityError(ValueError):
    """The analysis cannot run as asked (unknown backend, no inputs, bad budget)."""


# -- groups ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LayerGroup:
    """A set of layers scored and kept together: module-path prefixes, or one of ``SPECIAL_GROUPS``."""

    name: str
    kind: str  # "block" | one of SPECIAL_GROUPS
    prefixes: tuple[str, ...] = ()
    parameters: int = 0
    layers: int = 0

    def owns_block(self, owner: str) -> bool:
        """Whether module path ``owner`` lies in this block group."""
        return self.kind == "block" and any(owner == p or owner.startswith(p + ".") for p in self.prefixes)


def _block_key(name: str, level: int) -> str:
    """The block a layer belongs to: its path up to its ``level``-th list index (``model.unet.down_blocks.1``
    at level 1, ``...down_blocks.1.attentions.0`` at level 2); a layer that is itself a list item
    (``controlnet_down_blocks.7``) belongs to its list; a layer outside lists is its own block."""
    parts = name.split(".")
    seen = 0
    for i, part in enumerate(parts):
        if part.isdigit():
            if i == len(parts) - 1:
                return ".".join(parts[:i])
            seen += 1
            if seen == level:
                return ".".join(parts[: i + 1])
    return name


@dataclass
class GroupPlan:
    """The groups of one component and the module facts they were derived from."""

    groups: list[LayerGroup]
    processors: frozenset[str]
    _memo: dict[str, str] = field(default_factory=dict, repr=False)

    def owner_group(self, owner: str) -> str:
        """The group of an op whose innermost module path is ``owner`` (every op has exactly one)."""
        if owner not in self._memo:
            self._memo[owner] = self._owner_group(owner)
        return self._memo[owner]

    def _owner_group(self, owner: str) -> str:
        if _LORA.search(owner):
            return "focus-lora"
        if owner in self.processors:
            return "focus-attention-mask"
        for group in self.groups:
            if group.owns_block(owner):
                return group.name
        return "component-root"

    def predicate(self, names: Sequence[str]) -> Callable[[str], bool]:
        """``owner -> bool``: whether an op belongs to one of the named groups."""
        wanted = set(names)
        unknown = sorted(wanted - {g.name for g in self.groups})
        if unknown:
            raise SensitivityError(f"unknown groups {unknown}; the component has {[g.name for g in self.groups]}")
        return lambda owner: self.owner_group(owner) in wanted


def layer_groups(component: nn.Module, example: Sequence[torch.Tensor], level: int = 1) -> GroupPlan:
    """The component's groups: blocks of the Conv/Linear layers its forward pass really uses.

    ``level``: how fine the blocks are (1: ``model.unet.down_blocks.1``; 2: its resnets and
    attentions apart; see ``_block_key``).
    Modules the forward pass never calls (the VAE's decoder inside the encoder component, ...)
    are left out.
    """
    names = {id(m): n for n, m in component.named_modules()}
    used: list[str] = []
    processors: set[str] = set()
    hooks = []
    for name, module in component.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear, nn.ConvTranspose2d)) or type(module).__name__ == "FocusAttnProcessor":
            hooks.append(module.register_forward_hook(lambda m, i, o: used.append(names[id(m)])))
    try:
        with torch.no_grad():
            component(*example)
    finally:
        for hook in hooks:
            hook.remove()
    blocks: dict[str, list[str]] = {}
    lora: list[str] = []
    for name in dict.fromkeys(used):
        module = component.get_submodule(name)
        if type(module).__name__ == "FocusAttnProcessor":
            processors.add(name)
        elif _LORA.search(name):
            lora.append(name)
        else:
            blocks.setdefault(_block_key(name, level), []).append(name)

    def count(layers: Sequence[str]) -> int:
        return sum(p.numel() for n in layers for p in component.get_submodule(n).parameters(recurse=False))

    groups = [LayerGroup(key, "block", (key,), count(layers), len(layers)) for key, layers in blocks.items()]
    if lora:
        groups.append(LayerGroup("focus-lora", "focus-lora", (), count(lora), len(lora)))
    if processors:
        groups.append(LayerGroup("focus-attention-mask", "focus-attention-mask", tuple(sorted(processors))))
    groups.append(LayerGroup("component-root", "component-root"))
    return GroupPlan(groups, frozenset(processors))


# -- shared scoring -------------------------------------------------------------------------------

def output_psnr(reference: Sequence[np.ndarray], test: Sequence[np.ndarray]) -> float:
    """The lowest per-sample PSNR (``runtime_py.parity.psnr``: peak max|ref|) over the samples."""
    from runtime_py.parity import psnr

    return float(min(psnr(r, t) for r, t in zip(reference, test)))


@contextlib.contextmanager
def replaced_weights(module: nn.Module, values: Mapping[str, np.ndarray]) -> Iterator[None]:
    """Temporarily copy ``values`` (parameter name -> array) into ``module``'s parameters."""
    originals = {n: module.get_parameter(n).detach().clone() for n in values}
    try:
        with torch.no_grad():
            for name, value in values.items():
                module.get_parameter(name).copy_(torch.as_tensor(np.asarray(value, dtype=np.float32)))
        yield
    finally:
        with torch.no_grad():
            for name, value in originals.items():
                module.get_parameter(name).copy_(value)


def _torch_samples(samples: Sequence[Sequence[Any]]) -> list[tuple[torch.Tensor, ...]]:
    return [tuple(torch.as_tensor(np.asarray(a, dtype=np.float32)) for a in s) for s in samples]


def run_torch(module: Callable[..., torch.Tensor], samples: Sequence[tuple[torch.Tensor, ...]]) -> list[np.ndarray]:
    with torch.no_grad():
        return [module(*s).float().numpy() for s in samples]


# -- backend simulations: (groups to quantize) -> outputs on the evaluation samples ----------------

Simulator = Callable[[Callable[[str], bool]], list[np.ndarray]]


def _group_quantizer(config: Any, quantize_owner: Callable[[str], bool]) -> Any:
    """An XNNPACKQuantizer whose annotation covers only nodes whose owner satisfies ``quantize_owner``."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer

    class GroupXNNPACKQuantizer(XNNPACKQuantizer):
        def _annotate_for_quantization_config(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
            self._annotate_all_patterns(model, config, lambda node: quantize_owner(node_owner(node)))
            return model

    return GroupXNNPACKQuantizer()


def node_owner(node: Any) -> str:
    """The innermost module path of an FX node (``""`` for the root), from its ``nn_module_stack``."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path = list(stack.values())[-1][0]
    path = re.sub(r"^L\['self'\]\.?", "", str(path))
    return re.sub(r"\[(\d+)\]", r".\1", path).replace("._modules['", ".").replace("']", "")


def xnnpack_int8_config(per_channel: bool = True) -> Any:
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import get_symmetric_quantization_config

    return get_symmetric_quantization_config(is_per_channel=per_channel)


_QUANTIZE_OPS = ("quantize_per_tensor", "quantize_per_channel")
_DEQUANTIZE_OPS = ("dequantize_per_tensor", "dequantize_per_channel")


def _op_name(node: Any) -> str:
    target = getattr(node, "target", None)
    return str(getattr(target, "__name__", target)).split(".")[0]


def qdq_pairs(module: torch.fx.GraphModule) -> list[tuple[Any, Any, str | None, list[str]]]:
    """Every quantize -> dequantize pair of a converted PT2E module: (q, dq, producer owner, consumer owners);
    the producer is None for a weight or a graph input (the pair then belongs to its consumers)."""
    pairs = []
    for node in module.graph.nodes:
        if node.op != "call_function" or _op_name(node) not in _QUANTIZE_OPS:
            continue
        source = node.args[0]
        producer = node_owner(source) if getattr(source, "op", "") == "call_function" else None
        for dq in list(node.users):
            if _op_name(dq) in _DEQUANTIZE_OPS:
                pairs.append((node, dq, producer, [node_owner(u) for u in dq.users]))
    return pairs


def bypass_qdq(module: torch.fx.GraphModule, keep: Callable[[str | None, Sequence[str]], bool]) -> torch.fx.GraphModule:
    """A copy of ``module`` where each Q/DQ pair ``keep(producer, consumers)`` rejects is removed (fp32 there)."""
    copy_ = copy.deepcopy(module)
    for q, dq, producer, consumers in qdq_pairs(copy_):
        if not keep(producer, consumers):
            dq.replace_all_uses_with(q.args[0])
    copy_.graph.eliminate_dead_code()
    copy_.recompile()
    return copy_


def xnnpack_simulator(component: nn.Module, calibration: Sequence[tuple[torch.Tensor, ...]],
                      evaluation: Sequence[tuple[torch.Tensor, ...]],
                      program: torch.export.ExportedProgram | None = None) -> Simulator:
    """The whole component quantized ONCE (XNNPACKQuantizer, calibrated on the tiles, weights not
    folded), then per group every Q/DQ pair outside the group bypassed: the group's weights, inputs
    and outputs are exactly as in the uniform int8 program, everything else fp32 (one calibration
    instead of one per group)."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from .xnnpack import xnnpack_quantizer

    program = program or torch.export.export(component, tuple(calibration[0]), strict=False)
    prepared = prepare_pt2e(copy.deepcopy(program.module()), xnnpack_quantizer())
    with torch.no_grad():
        for batch in calibration:
            prepared(*batch)
    converted = convert_pt2e(prepared, fold_quantize=False)

    def simulate(quantize_owner: Callable[[str], bool]) -> list[np.ndarray]:
        module = bypass_qdq(converted, lambda producer, consumers: (producer is not None and quantize_owner(producer))
                            or any(quantize_owner(c) for c in consumers))
        return run_torch(module, evaluation)

    return simulate


def onnx_owner(node_name: str) -> str:
    """The module path of an ONNX node from its TorchScript-exporter scope name (``/model/unet/.../Conv``)."""
    parts = [p for p in node_name.split("/") if p]
    return ".".join(parts[:-1])


def qnn_simulator(component: nn.Module, calibration: Sequence[tuple[torch.Tensor, ...]],
                  evaluation: Sequence[tuple[torch.Tensor, ...]], activation_bits: int = 8,
                  workdir: Path | None = None, onnx_path: Path | None = None) -> Simulator:
    """QDQ (onnxruntime's QNN configuration: uint8 per-channel weights, 8/16-bit activations) of
    the group's ONNX nodes, run by onnxruntime's CPU EP. The graph is the plain TorchScript ONNX
    export of the component (the exporter's HTP rewrites live in ``export/`` and change op forms,
    not which module owns them); ``onnx_path``: score that fp32 graph instead (e.g. the exporter's
    rewritten one), whose node names keep the TorchScript scopes."""
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationMethod, QuantType, quantize
    from onnxruntime.quantization.execution_providers.qnn import get_qnn_qdq_config

    from .qnn import SampleReader

    folder = Path(workdir or tempfile.mkdtemp(prefix="sensitivity-qnn-"))
    folder.mkdir(parents=True, exist_ok=True)
    if onnx_path is None:
        fp32 = folder / "fp32.onnx"
        torch.onnx.export(component, tuple(calibration[0]), str(fp32), dynamo=False, opset_version=17,
                          input_names=[f"input_{i}" for i in range(len(calibration[0]))], output_names=["output"])
    else:
        fp32 = Path(onnx_path)
    model = onnx.load(str(fp32), load_external_data=False)
    names = [i.name for i in model.graph.input]
    nodes = [(n.name, onnx_owner(n.name)) for n in model.graph.node]
    del model
    activation = {8: QuantType.QUInt8, 16: QuantType.QUInt16}[activation_bits]
    numpy_cal = [tuple(t.numpy() for t in s) for s in calibration]
    feeds = [dict(zip(names, (t.numpy() for t in s))) for s in evaluation]

    def simulate(quantize_owner: Callable[[str], bool]) -> list[np.ndarray]:
        chosen = [name for name, owner in nodes if quantize_owner(owner)]
        if not chosen:
            session = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"])
        else:
            config = get_qnn_qdq_config(str(fp32), SampleReader(names, numpy_cal),
                                        calibrate_method=CalibrationMethod.MinMax, activation_type=activation,
                                        weight_type=QuantType.QUInt8, per_channel=True)
            config.nodes_to_quantize = chosen
            out = folder / "qdq.onnx"
            quantize(str(fp32), str(out), config)
            session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        return [np.asarray(session.run(None, f)[0], dtype=np.float32) for f in feeds]

    return simulate


def coreml_simulated_weight(weight: np.ndarray, method: str, bits: int) -> np.ndarray:
    """What Core ML's compression makes of a weight: k-means palettized or linear symmetric per channel (fp16)."""
    from .coreml import kmeans_palettized

    w16 = np.asarray(weight).astype(np.float16)
    if method == "palettize":
        return kmeans_palettized(w16, bits).astype(np.float32)
    if method == "linear":
        w = w16.astype(np.float32)
        levels = 2 ** (bits - 1) - 1
        scale = np.abs(w.reshape(w.shape[0], -1)).max(axis=1) / levels
        scale = np.where(scale == 0, 1.0, scale).reshape((-1,) + (1,) * (w.ndim - 1))
        return (np.clip(np.round(w / scale), -levels, levels) * scale).astype(np.float16).astype(np.float32)
    raise SensitivityError(f"Core ML weight method must be 'palettize' or 'linear', got {method!r}")


def coreml_simulator(component: nn.Module, evaluation: Sequence[tuple[torch.Tensor, ...]],
                     method: str = "palettize", bits: int = 4, weight_threshold: int | None = None) -> Simulator:
    """Core ML weight compression of the group's weights (larger than ``weight_threshold``), run in torch."""
    from .coreml import WEIGHT_THRESHOLD

    threshold = WEIGHT_THRESHOLD if weight_threshold is None else weight_threshold
    weights: dict[str, str] = {}
    for name, module in component.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear, nn.ConvTranspose2d)) and module.weight.numel() > threshold:
            weights[f"{name}.weight"] = name
    cache: dict[str, np.ndarray] = {}

    def simulate(quantize_owner: Callable[[str], bool]) -> list[np.ndarray]:
        chosen = [p for p, owner in weights.items() if quantize_owner(owner)]
        for p in chosen:
            if p not in cache:
                cache[p] = coreml_simulated_weight(component.get_parameter(p).detach().numpy(), method, bits)
        with replaced_weights(component, {p: cache[p] for p in chosen}):
            return run_torch(component, evaluation)

    return simulate


# -- the analysis -----------------------------------------------------------------------------------

@dataclass
class GroupScore:
    name: str
    kind: str
    parameters: int
    layers: int
    psnr_db: float  # component output vs fp32 with only this group quantized
    seconds: float


@dataclass
class SensitivityReport:
    """Per-group scores of one component on one backend, worst first, plus the uniform figure."""

    backend: str
    component: str
    settings: dict[str, Any]
    groups: list[GroupScore]
    uniform_psnr_db: float  # every group quantized: the uniform recipe's simulated figure
    samples: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def ranked(self) -> list[GroupScore]:
        return sorted(self.groups, key=lambda g: (g.psnr_db, g.name))

    def to_dict(self) -> dict[str, Any]:
        return {"schema": "magicbokeh-sensitivity", "version": 1, "backend": self.backend,
                "component": self.component, "settings": self.settings, "samples": self.samples,
                "uniform_psnr_db": self.uniform_psnr_db, "seconds": self.seconds,
                "groups": [asdict(g) for g in self.ranked()], "special_groups": SPECIAL_GROUPS}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SensitivityReport":
        if data.get("schema") != "magicbokeh-sensitivity" or data.get("version") != 1:
            raise SensitivityError("not a magicbokeh-sensitivity version 1 report")
        return cls(data["backend"], data["component"], dict(data["settings"]),
                   [GroupScore(**g) for g in data["groups"]], data["uniform_psnr_db"],
                   dict(data.get("samples", {})), data.get("seconds", 0.0))


def analyse(
    backend: str,
    component: nn.Module,
    calibration: Sequence[Sequence[Any]],
    evaluation: Sequence[Sequence[Any]] | None = None,
    *,
    name: str = "component",
    level: int = 1,
    settings: Mapping[str, Any] | None = None,
    program: torch.export.ExportedProgram | None = None,
    onnx_path: Path | None = None,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> tuple[SensitivityReport, GroupPlan]:
    """Score every group of ``component`` on ``backend`` (see the module docstring).

    ``calibration``: real input tuples (activation ranges); ``evaluation``: where the output is
    scored (default: the calibration tuples). ``settings``: ``activation_bits`` (qnn: 8 or 16),
    ``method``/``bits`` (coreml: palettize 4 by default, or linear 8; ``weight_threshold``: compress only
    weights with more elements, coremltools' 2048 by default). ``program``: an exported
    program of the component to quantize (xnnpack), e.g. the exporter's prepared graph;
    ``onnx_path``: likewise the fp32 ONNX graph for qnn.
    """
    if backend not in BACKENDS:
        raise SensitivityError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
    if not calibration:
        raise SensitivityError(f"component {name!r}: the analysis needs at least one real input sample")
    settings = dict(settings or {})
    cal = _torch_samples(calibration)
    ev = _torch_samples(evaluation) if evaluation else cal
    component.eval()
    plan = layer_groups(component, cal[0], level)
    started = time.perf_counter()
    if backend == "xnnpack":
        settings.setdefault("scheme", "int8 weights per channel, int8 activations (XNNPACKQuantizer, PT2E)")
        simulate = xnnpack_simulator(component, cal, ev, program)
    elif backend == "qnn":
        settings.setdefault("activation_bits", 8)
        settings.setdefault("scheme", f"QDQ uint8 weights per channel, {settings['activation_bits']}-bit activations")
        simulate = qnn_simulator(component, cal, ev, int(settings["activation_bits"]), onnx_path=onnx_path)
    else:
        settings.setdefault("method", "palettize")
        settings.setdefault("bits", 4 if settings["method"] == "palettize" else 8)
        simulate = coreml_simulator(component, ev, settings["method"], int(settings["bits"]),
                                    weight_threshold=settings.get("weight_threshold"))
    reference = run_torch(component, ev)
    scores = []
    groups = plan.groups
    iterator: Any = groups
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(groups, desc=f"{backend} {name}", unit="group")
    for group in iterator:
        t0 = time.perf_counter()
        value = output_psnr(reference, simulate(plan.predicate([group.name])))
        scores.append(GroupScore(group.name, group.kind, group.parameters, group.layers, value,
                                 time.perf_counter() - t0))
        if log:
            log(f"  {name} {group.name}: {value:.2f} dB")
    uniform = output_psnr(reference, simulate(lambda owner: True))
    report = SensitivityReport(backend, name, settings, scores, uniform,
                               {"calibration": len(cal), "evaluation": len(ev)}, time.perf_counter() - started)
    return report, plan


# -- mixed precision -------------------------------------------------------------------------------

def _noise(psnr_db: float) -> float:
    return 0.0 if math.isinf(psnr_db) and psnr_db > 0 else 10.0 ** (-psnr_db / 10.0)


def predicted_psnr(scores: Sequence[GroupScore], kept: Sequence[str]) -> float:
    """Output PSNR if the groups' noises add and the ``kept`` groups contribute none (a planning figure)."""
    noise = sum(_noise(s.psnr_db) for s in scores if s.name not in set(kept))
    return math.inf if noise <= 0 else -10.0 * math.log10(noise)


@dataclass
class MixedChoice:
    """Which groups stay in the backend's higher precision, why, and what was predicted."""

    kept: list[str]
    cheap: list[str]
    budget: dict[str, Any]
    predicted_psnr_db: float
    cheap_fraction: float  # of the groups' parameters, in the cheap format

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def plan_mixed(report: SensitivityReport, *, cheap_fraction: float | None = None,
               psnr_floor_db: float | None = None) -> MixedChoice:
    """The groups to keep in higher precision, most sensitive first.

    ``cheap_fraction``: at least this fraction of the groups' parameters stays in the cheap format
    (groups are kept, worst first, while that holds). ``psnr_floor_db``: keep groups, worst first,
    until the predicted output PSNR reaches the floor. With both, the floor is pursued within the
    fraction. Groups without parameters (the mask path, the root's arithmetic) cost nothing to keep
    and count as kept whenever their own score is below the floor (or the uniform figure).
    """
    if cheap_fraction is None and psnr_floor_db is None:
        raise SensitivityError("mixed precision needs a budget: a cheap fraction or a PSNR floor")
    if cheap_fraction is not None and not 0.0 <= cheap_fraction <= 1.0:
        raise SensitivityError(f"cheap fraction must lie in [0, 1], got {cheap_fraction}")
    ranked = report.ranked()
    total = sum(s.parameters for s in ranked) or 1
    kept: list[str] = []
    kept_params = 0
    for score in ranked:
        if psnr_floor_db is not None and predicted_psnr(ranked, kept) >= psnr_floor_db:
            break
        if math.isinf(score.psnr_db) and score.psnr_db > 0:
            break  # lossless groups gain nothing from being kept
        if cheap_fraction is not None and (total - kept_params - score.parameters) / total < cheap_fraction:
            continue
        kept.append(score.name)
        kept_params += score.parameters
    cheap = [s.name for s in ranked if s.name not in kept]
    return MixedChoice(kept, cheap, {"cheap_fraction": cheap_fraction, "psnr_floor_db": psnr_floor_db},
                       predicted_psnr(ranked, kept), (total - kept_params) / total)


# -- reports ----------------------------------------------------------------------------------------

def report_markdown(report: SensitivityReport, choice: MixedChoice | None = None) -> str:
    lines = [f"# Quantization sensitivity: {report.component} on {report.backend}", "",
             f"Settings: {report.settings}. Samples: {report.samples}. "
             f"Every group quantized (uniform): **{report.uniform_psnr_db:.2f} dB**. "
             f"Took {report.seconds:.0f} s.", "",
             "PSNR of the component output against fp32 with ONLY that group quantized; worst first.", "",
             "| rank | group | kind | parameters | layers | PSNR dB |", "|---|---|---|---|---|---|"]
    for i, s in enumerate(report.ranked(), 1):
        lines.append(f"| {i} | `{s.name}` | {s.kind} | {s.parameters} | {s.layers} | {s.psnr_db:.2f} |")
    if choice is not None:
        lines += ["", f"Mixed precision ({choice.budget}): keep {choice.kept} in higher precision; "
                      f"predicted {choice.predicted_psnr_db:.2f} dB, {choice.cheap_fraction:.1%} of parameters cheap."]
    lines += ["", "Special groups:", *[f"- `{k}`: {v}" for k, v in SPECIAL_GROUPS.items()], ""]
    return "\n".join(lines)


def plot_report(report: SensitivityReport, path: Path) -> Path:
    """A horizontal bar chart of the per-group PSNR (worst at the top), written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from runtime_py.atomic import atomic_path

    ranked = report.ranked()
    finite = [s.psnr_db for s in ranked if math.isfinite(s.psnr_db)]
    cap = (max(finite) + 10.0) if finite else 100.0
    values = [min(s.psnr_db, cap) if not math.isnan(s.psnr_db) else 0.0 for s in ranked]
    fig, ax = plt.subplots(figsize=(8, 0.3 * len(ranked) + 1.5))
    ax.barh([s.name for s in ranked][::-1], values[::-1], color="tab:blue")
    ax.axvline(report.uniform_psnr_db, color="tab:red", linestyle="--", label="all groups quantized")
    ax.set_xlabel("component output PSNR vs fp32 (dB), only this group quantized")
    ax.set_title(f"{report.component} on {report.backend}")
    ax.legend(loc="lower right")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path


def write_report(report: SensitivityReport, folder: Path | str, choice: MixedChoice | None = None,
                 plot: bool = True) -> dict[str, Path]:
    """``sensitivity.json``, ``sensitivity.md`` (and ``sensitivity.png``) in ``folder``, each atomically."""
    from runtime_py.atomic import write_json, write_text

    folder = Path(folder)
    data = report.to_dict()
    if choice is not None:
        data["mixed"] = choice.to_dict()
    paths = {"json": write_json(folder / SENSITIVITY_JSON, data),
             "md": write_text(folder / SENSITIVITY_MD, report_markdown(report, choice))}
    if plot:
        paths["png"] = plot_report(report, folder / SENSITIVITY_PNG)
    return paths


# -- the CLI ----------------------------------------------------------------------------------------

def _parser() -> Any:
    import argparse

    from runtime_py.checkpoints.weight_args import add_weight_arguments

    parser = argparse.ArgumentParser(
        prog="python -m quantize.sensitivity",
        description="Per-group quantization sensitivity of one component on one backend, measured on real "
                    "pipeline tiles (generated scenes); writes sensitivity.json/.md/.png to --out.")
    parser.add_argument("--backend", required=True, choices=BACKENDS,
                        help="whose simulation quantizes each group: xnnpack (PT2E int8 fake-quant), qnn (ONNX QDQ, "
                             "onnxruntime's QNN config, run on the CPU EP), coreml (palettized / linear weights in torch)")
    parser.add_argument("--component", required=True, choices=("encoder", "denoiser", "decoder", "depth"),
                        help="which component to analyse")
    parser.add_argument("--out", required=True, type=Path, help="folder for sensitivity.json, sensitivity.md, sensitivity.png")
    add_weight_arguments(parser)
    parser.add_argument("--depth-checkpoint", type=Path, default=None,
                        help="Depth Anything V2 weights for --component depth (default: the configuration's own)")
    parser.add_argument("--scenes", type=int, default=1, help="generated scenes whose tiles calibrate and score (default 1)")
    parser.add_argument("--tiles", type=int, default=1, help="tiles per scene, 0 = all (default 1)")
    parser.add_argument("--depth-images", type=int, default=2,
                        help="generated photos for --component depth (one photo is one input; default 2)")
    parser.add_argument("--seed", type=int, default=1234, help="scene generator seed (default 1234)")
    parser.add_argument("--level", type=int, default=1,
                        help="group granularity: 1 = blocks (down_blocks.1), 2 = their resnets/attentions apart (default 1)")
    parser.add_argument("--activation-bits", type=int, choices=(8, 16), default=8,
                        help="qnn: activation bits of a quantized group (default 8: W8A8)")
    parser.add_argument("--coreml-method", choices=("palettize", "linear"), default="palettize",
                        help="coreml: k-means palettization (default) or linear symmetric per-channel weights")
    parser.add_argument("--coreml-bits", type=int, default=None,
                        help="coreml: bits of a compressed weight (default 4 for palettize, 8 for linear)")
    parser.add_argument("--cheap-fraction", type=float, default=None,
                        help="also plan mixed precision: at least this fraction of parameters in the cheap format")
    parser.add_argument("--psnr-floor", type=float, default=None,
                        help="also plan mixed precision: keep groups in higher precision until the predicted PSNR (dB) reaches this")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--no-plot", action="store_true", help="skip the matplotlib bar chart")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    import sys

    parser = _parser()
    args = parser.parse_args(argv)
    if args.scenes < 1 or args.tiles < 0 or args.depth_images < 1 or args.level < 1:
        parser.error("--scenes, --depth-images and --level must be >= 1, --tiles >= 0")
    if args.cheap_fraction is not None and not 0.0 <= args.cheap_fraction <= 1.0:
        parser.error("--cheap-fraction must lie in [0, 1]")
    from runtime_py.checkpoints.weight_args import WeightArgumentError, load_weights
    from runtime_py.components import TILE_COMPONENTS, export_components

    from .calibration import build_calibration_set
    from .recipes import CalibrationSpec

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        model, _label = load_weights(args)
        names = [*TILE_COMPONENTS, *(["depth"] if args.component == "depth" else [])]
        components = export_components(model, names, args.depth_checkpoint)
        spec = CalibrationSpec(num_scenes=args.scenes, max_tiles_per_image=args.tiles or None, seed=args.seed,
                               depth_images=args.depth_images)
        inputs = build_calibration_set(components, model.config, spec, components=[args.component])
        samples = inputs.inputs[args.component]
        settings: dict[str, Any] = {}
        if args.backend == "qnn":
            settings["activation_bits"] = args.activation_bits
        if args.backend == "coreml":
            settings["method"] = args.coreml_method
            if args.coreml_bits is not None:
                settings["bits"] = args.coreml_bits
        report, _plan = analyse(args.backend, components[args.component], samples, name=args.component,
                                level=args.level, settings=settings, progress=not args.quiet)
        report.samples["scenes"] = inputs.samples
        choice = None
        if args.cheap_fraction is not None or args.psnr_floor is not None:
            choice = plan_mixed(report, cheap_fraction=args.cheap_fraction, psnr_floor_db=args.psnr_floor)
        paths = write_report(report, args.out, choice, plot=not args.no_plot)
    except WeightArgumentError as exc:
        print(f"quantize.sensitivity: error: {exc}", file=sys.stderr)
        return 2
    except (SensitivityError, ValueError, RuntimeError, FileNotFoundError) as exc:
        line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        print(f"quantize.sensitivity: error: {line}", file=sys.stderr)
        return 2
    worst = report.ranked()[:5]
    print(f"{args.component} on {args.backend}: uniform {report.uniform_psnr_db:.2f} dB; most sensitive: "
          + ", ".join(f"{g.name} {g.psnr_db:.2f} dB" for g in worst))
    if choice is not None:
        print(f"mixed: keep {choice.kept} (predicted {choice.predicted_psnr_db:.2f} dB)")
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

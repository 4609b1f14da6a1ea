"""Cut an ONNX graph into sequential parts under a weight budget, each part a valid ONNX model.

Why: a QNN context binary of the SD2.1-size denoiser (3.5 GB of fp32 weights, ~0.9 GB in W8A16)
is past what phones map (ExecuTorch reports mmap failures above ~467 MB), so Qualcomm AI Hub ships
SD's UNet in parts; the same holds for quantizing it on a 24 GB host. A part here is a contiguous
run of the graph's (topologically ordered) nodes; the cut is at tensor boundaries:

* a part's inputs are the tensors its nodes read that an earlier part (or the graph) produced;
* its outputs are the tensors it produces that a later part reads, or that are graph outputs;
* every initializer a part's nodes read is copied into that part (a weight read on both sides of
  a cut counts against both parts' budgets), and so is every weight-like node it reads (one that
  computes from weights and constants only: ``Constant``, the ``Identity`` the exporter puts on a
  shared weight), which would otherwise cross every cut.

Parts are chosen greedily in graph order: a part grows until the next node's new weights would
pass ``max_part_bytes``; the cut is then placed, within the last quarter of the part, where the
fewest activation bytes cross (so a UNet is cut between blocks rather than in the middle of an
attention). Running the parts in order, feeding each the named tensors the earlier ones made,
computes exactly what the whole graph computes: the nodes, weights and order are unchanged.

``describe()`` gives the chain as plain JSON (file, inputs, outputs with shapes, weight bytes)
for an artifact manifest. Large models are read without their external weights and each part's
weights are loaded only while that part is written, so the peak is about one part.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import onnx
from onnx import external_data_helper, helper

from runtime_py.atomic import atomic_path

__all__ = ["GraphPart", "GraphSplit", "SplitError", "plan_split", "run_parts", "split_model", "tensor_bytes"]

_ELEMENT_BYTES = {
    onnx.TensorProto.FLOAT: 4, onnx.TensorProto.FLOAT16: 2, onnx.TensorProto.BFLOAT16: 2, onnx.TensorProto.DOUBLE: 8,
    onnx.TensorProto.INT64: 8, onnx.TensorProto.INT32: 4, onnx.TensorProto.INT16: 2, onnx.TensorProto.UINT16: 2,
    onnx.TensorProto.INT8: 1, onnx.TensorProto.UINT8: 1, onnx.TensorProto.BOOL: 1,
}
CUT_WINDOW = 0.25  # look back over this fraction of a full part for the cheapest cut


class SplitError(ValueError):
    """The graph cannot be split as asked; the message names the node or the setting."""


@dataclass
class GraphPart:
    """One part: node range [start, stop) of the source graph and its interface."""

    index: int
    start: int
    stop: int
    inputs: list[str]
    outputs: list[str]
    initializers: list[str]
    initializer_bytes: int
    weight_nodes: list[int] = field(default_factory=list)  # weight-like nodes copied in front (source indices)
    body: list[int] = field(default_factory=list)  # the other nodes of [start, stop)
    file: str = ""

    def to_dict(self, shapes: dict[str, dict[str, Any]]) -> dict[str, Any]:
        return {
            "index": self.index, "file": self.file, "nodes": self.stop - self.start,
            "initializer_bytes": self.initializer_bytes,
            "inputs": [{"name": n, **shapes[n]} for n in self.inputs],
            "outputs": [{"name": n, **shapes[n]} for n in self.outputs],
        }


@dataclass
class GraphSplit:
    """The chain of parts, in execution order."""

    parts: list[GraphPart]
    graph_inputs: list[str]
    graph_outputs: list[str]
    max_part_bytes: int
    shapes: dict[str, dict[str, Any]] = field(repr=False, default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """Manifest-ready JSON: each part's file, interface (names, dtypes, shapes) and weight bytes."""
        return {
            "format": "onnx-sequential-parts/1",
            "max_part_bytes": self.max_part_bytes,
            "inputs": self.graph_inputs,
            "outputs": self.graph_outputs,
            "parts": [p.to_dict(self.shapes) for p in self.parts],
        }


def tensor_bytes(init: onnx.TensorProto) -> int:
    """Bytes of an initializer from its dims and type (also when its data is external)."""
    size = _ELEMENT_BYTES.get(init.data_type)
    if size is None:
        raise SplitError(f"initializer {init.name!r} has element type {init.data_type}, which this splitter does not size")
    return math.prod(init.dims) * size


def _value_shapes(model: onnx.ModelProto) -> dict[str, dict[str, Any]]:
    """dtype and static shape of every graph value (shape inference without the weights)."""
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    shapes: dict[str, dict[str, Any]] = {}
    for info in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        tensor = info.type.tensor_type
        if not info.type.HasField("tensor_type") or not tensor.HasField("shape"):
            continue
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
        shapes[info.name] = {"dtype": onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name,
                             "elem_type": tensor.elem_type, "shape": dims}
    return shapes


def _activation_bytes(info: dict[str, Any] | None) -> int:
    if info is None or any(d is None for d in info["shape"]):
        return 1 << 40  # unknown size: never a cheap cut
    return math.prod(info["shape"]) * _ELEMENT_BYTES.get(info["elem_type"], 4)


def plan_split(model: onnx.ModelProto, max_part_bytes: int) -> GraphSplit:
    """Choose the parts (nothing is copied): greedy in graph order, cut where the fewest bytes cross.

    ``model`` may be loaded without its external data; only initializer dims are read.
    """
    if max_part_bytes <= 0:
        raise SplitError(f"the part budget must be positive, got {max_part_bytes} bytes")
    graph = model.graph
    nodes = list(graph.node)
    if not nodes:
        raise SplitError("the graph has no nodes")
    inits = {init.name: tensor_bytes(init) for init in graph.initializer}
    graph_inputs = [i.name for i in graph.input if i.name not in inits]
    graph_outputs = [o.name for o in graph.output]
    shapes = _value_shapes(model)
    missing = [n for n in graph_inputs + graph_outputs if n not in shapes]
    if missing:
        raise SplitError(f"graph inputs/outputs without a static shape: {missing[:5]}")

    def reads(node: onnx.NodeProto) -> list[str]:
        names = [n for n in node.input if n]
        for attr in node.attribute:  # subgraphs (If/Loop) read outer values too
            for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                inner = {o for n in sub.node for o in n.output} | {i.name for i in sub.initializer}
                names += [n for sn in sub.node for n in sn.input if n and n not in inner]
        return names

    node_reads = [reads(n) for n in nodes]
    # Weight-like nodes compute only from weights and constants (Constant, an Identity of a shared
    # weight, a Reshape of one, ...): they are copied, with their weights, into every part that
    # reads them instead of crossing cuts as part inputs. roots[name]: (their nodes, their weights).
    roots: dict[str, tuple[frozenset[int], frozenset[str]]] = {}
    for i, node in enumerate(nodes):
        ins = node_reads[i]
        has_subgraph = any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)
        if has_subgraph or not all(n in inits or n in roots for n in ins) or (not ins and node.op_type != "Constant"):
            continue
        dep_nodes, dep_inits = {i}, set()
        for name in ins:
            if name in inits:
                dep_inits.add(name)
            else:
                dep_nodes |= roots[name][0]
                dep_inits |= roots[name][1]
        for out in node.output:
            if out:
                roots[out] = (frozenset(dep_nodes), frozenset(dep_inits))
    weight_like = {i for i, n in enumerate(nodes) if n.output and all(o in roots for o in n.output if o)}

    def weights_read(i: int) -> set[str]:
        """The initializers node i needs, through the weight-like nodes it reads."""
        if i in weight_like:
            return set()  # counted where its output is read
        out = set()
        for name in node_reads[i]:
            if name in inits:
                out.add(name)
            elif name in roots:
                out |= roots[name][1]
        return out

    node_weights = [weights_read(i) for i in range(len(nodes))]
    produced_at = {out: i for i, n in enumerate(nodes) for out in n.output if out and out not in roots}
    last_read = {name: len(nodes) for name in graph_outputs}  # graph outputs live to the end
    for i, names in enumerate(node_reads):
        for name in names:
            last_read[name] = max(last_read.get(name, -1), i)
    # Bytes of activations crossing a cut before node i (produced before i, read at or after i).
    delta = [0] * (len(nodes) + 2)
    for name, first in produced_at.items():
        if name in last_read and last_read[name] > first:
            size = _activation_bytes(shapes.get(name))
            delta[first + 1] += size
            delta[min(last_read[name], len(nodes) - 1) + 1] -= size
    crossing, running_total = [], 0
    for d in delta[: len(nodes) + 1]:
        running_total += d
        crossing.append(running_total)

    def part_weights(start: int, stop: int) -> tuple[list[str], int]:
        used = list(dict.fromkeys(n for i in range(start, stop) for n in sorted(node_weights[i])))
        return used, sum(inits[n] for n in used)

    cuts = [0]
    start, weights, used = 0, 0, set()
    weights_before = [0]  # weights_before[k]: weights of nodes[start:start + k]
    for i in range(len(nodes)):
        new = node_weights[i] - used
        extra = sum(inits[n] for n in new)
        if extra > max_part_bytes:
            raise SplitError(f"node {nodes[i].name or i} ({nodes[i].op_type}) alone reads {extra} bytes of weights, "
                             f"more than the part budget of {max_part_bytes} bytes")
        if weights + extra > max_part_bytes and i > start:
            # Cut before node i, or earlier within the window where fewer activation bytes cross.
            window = [start + k for k in range(1, i - start + 1) if weights_before[k] >= (1 - CUT_WINDOW) * weights]
            cut = min(window, key=lambda j: (crossing[j], -j))
            cuts.append(cut)
            start = cut
            names, weights = part_weights(start, i)
            used = set(names)
            weights_before, seen, running = [0], set(), 0
            for j in range(start, i):
                fresh = node_weights[j] - seen
                seen |= fresh
                running += sum(inits[n] for n in fresh)
                weights_before.append(running)
            new = node_weights[i] - used
            extra = sum(inits[n] for n in new)
        used |= new
        weights += extra
        weights_before.append(weights)
    cuts.append(len(nodes))

    parts = []
    for index, (a, b) in enumerate(zip(cuts[:-1], cuts[1:])):
        body = [i for i in range(a, b) if i not in weight_like]
        produced_here = {out for i in body for out in nodes[i].output if out}
        read_here = list(dict.fromkeys(n for i in body for n in node_reads[i]))
        copied = sorted(set().union(*[roots[n][0] for n in read_here if n in roots]))
        inputs = [n for n in read_here if n not in produced_here and n not in inits and n not in roots]
        later_reads = {n for i in range(b, len(nodes)) for n in node_reads[i]}
        outputs = [out for i in body for out in nodes[i].output
                   if out and (out in later_reads or out in graph_outputs)]
        names, weight_bytes = part_weights(a, b)
        unknown = [n for n in inputs + outputs if n not in shapes]
        if unknown:
            raise SplitError(f"part {index} crosses tensors without an inferred static shape: {unknown[:5]}")
        parts.append(GraphPart(index, a, b, inputs, outputs, names, weight_bytes, copied, body))
    return GraphSplit(parts, graph_inputs, graph_outputs, max_part_bytes, shapes)


def _part_model(model: onnx.ModelProto, split: GraphSplit, part: GraphPart) -> onnx.ModelProto:
    graph = model.graph
    by_name = {init.name: init for init in graph.initializer}
    info = split.shapes

    def value(name: str) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(name, info[name]["elem_type"], info[name]["shape"])

    part_graph = helper.make_graph(
        [graph.node[i] for i in part.weight_nodes + part.body],
        f"{graph.name or 'graph'}_part{part.index}",
        [value(n) for n in part.inputs],
        [value(n) for n in part.outputs],
        [by_name[n] for n in part.initializers],
    )
    out = helper.make_model(part_graph, opset_imports=list(model.opset_import), producer_name="magicbokeh qnn_split")
    out.ir_version = model.ir_version
    for entry in model.metadata_props:
        out.metadata_props.add(key=entry.key, value=entry.value)
    out.metadata_props.add(key="magicbokeh.part", value=f"{part.index + 1}/{len(split.parts)}")
    return out


def split_model(
    model_path: Path | str,
    out_dir: Path | str,
    max_part_bytes: int,
    *,
    stem: str = "part",
    external_data: bool = False,
) -> GraphSplit:
    """Write ``out_dir/<stem>_<i>.onnx`` for every part (folder written atomically); returns the chain.

    ``external_data``: each part keeps its weights in ``<file>.data`` (needed above 2 GB).
    """
    model_path, out_dir = Path(model_path), Path(out_dir)
    if not model_path.is_file():
        raise SplitError(f"{model_path} does not exist")
    model = onnx.load(str(model_path), load_external_data=False)
    split = plan_split(model, max_part_bytes)
    digits = len(str(len(split.parts) - 1))
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        for part in split.parts:
            part.file = f"{stem}_{part.index:0{digits}d}.onnx"
            part_model = _part_model(model, split, part)
            # Initializers are shared protos of `model`: load this part's external weights into a copy.
            part_model = onnx.ModelProto.FromString(part_model.SerializeToString())
            external_data_helper.load_external_data_for_model(part_model, str(model_path.parent))
            if external_data:
                onnx.save(part_model, str(tmp / part.file), save_as_external_data=True, all_tensors_to_one_file=True,
                          location=part.file + ".data", size_threshold=1024)
            else:
                onnx.save(part_model, str(tmp / part.file))
            del part_model
            onnx.checker.check_model(str(tmp / part.file))  # by path: also for parts over 2 GB
    return split


def run_parts(split: GraphSplit, folder: Path | str, feeds: dict[str, Any], providers: Sequence[str] | None = None,
              *, optimize: bool = True) -> dict[str, Any]:
    """Run the chain with onnxruntime: each part reads the named tensors earlier parts produced.

    ``optimize=False`` turns graph optimisations off (fusions across a cut are then not possible
    in the whole graph either, so the chain reproduces the whole graph bit for bit).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    values = dict(feeds)
    for part in split.parts:
        session = ort.InferenceSession(str(Path(folder) / part.file), options,
                                       providers=list(providers or ["CPUExecutionProvider"]))
        results = session.run(part.outputs, {n: values[n] for n in part.inputs})
        values.update(zip(part.outputs, results))
        del session
    return {n: values[n] for n in split.graph_outputs}

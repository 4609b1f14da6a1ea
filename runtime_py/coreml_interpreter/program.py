"""Load a saved Core ML program (.mlpackage) and execute it with numpy.

``MLModel.predict`` exists only on Apple systems, yet parity must be checked where the toolkit is
built. This module reads the package exactly as written (after compression: look-up-table and
affine-dequantisation weight ops included) through coremltools' own protobuf reader, flattens the
``main`` function into a list of steps, and runs them with the numpy kernels in ``ops.py``,
rounding every op output to the dtype the program declares (fp16 where the program computes in
fp16). Compile-time ops (``const``, ``constexpr_*``) are evaluated once at load, as Core ML does.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .ops import CONSTEXPR_OPS, OPS, InterpreterOpError

_DTYPES: dict[str, Any] = {
    "fp16": np.float16,
    "fp32": np.float32,
    "fp64": np.float64,
    "int8": np.int8,
    "uint8": np.uint8,
    "int16": np.int16,
    "uint16": np.uint16,
    "int32": np.int32,
    "uint32": np.uint32,
    "int64": np.int64,
    "bool": np.bool_,
    "float16": np.float16,
    "float32": np.float32,
    "int4": np.int8,
    "uint4": np.uint8,
}


class UnsupportedOperationError(NotImplementedError):
    """The program holds an operation this interpreter does not implement (named in the message)."""


class CoreMLProgramError(ValueError):
    """The package cannot be read as a Core ML program, or the inputs do not fit it."""


def numpy_dtype(mil_dtype: str) -> Any:
    try:
        return _DTYPES[str(mil_dtype)]
    except KeyError:
        raise CoreMLProgramError(f"Core ML dtype {mil_dtype!r} has no numpy equivalent here") from None


@dataclass(frozen=True)
class Ref:
    """A reference to a named value produced by another step (or a program input)."""

    name: str


@dataclass
class Step:
    """One operation, inputs resolved to constants or references."""

    op_type: str
    name: str
    inputs: dict[str, Any]
    outputs: list[tuple[str, str, tuple[int, ...] | None]]  # (name, dtype, shape)


@dataclass
class TensorInfo:
    name: str
    dtype: str
    shape: tuple[int, ...]


@dataclass
class CoreMLProgram:
    """A Core ML program reduced to steps numpy can execute."""

    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    steps: list[Step]
    constants: dict[str, Any] = field(default_factory=dict)
    op_counts: dict[str, int] = field(default_factory=dict)
    source: str = ""

    # -- execution --------------------------------------------------------------------------
    def __call__(self, *arrays: np.ndarray) -> np.ndarray:
        """Positional inputs in declared order -> the first output as float32 (backend contract)."""
        outputs = self.run(dict(zip([i.name for i in self.inputs], arrays, strict=True)))
        return np.asarray(outputs[self.outputs[0].name], dtype=np.float32)

    def run(self, feeds: Mapping[str, np.ndarray], keep: Sequence[str] = ()) -> dict[str, np.ndarray]:
        """Execute the program. ``keep`` names intermediate values to return as well (debugging)."""
        env: dict[str, Any] = {}
        for info in self.inputs:
            if info.name not in feeds:
                raise CoreMLProgramError(f"missing input {info.name!r}; the program takes {[i.name for i in self.inputs]}")
            value = np.asarray(feeds[info.name])
            if tuple(value.shape) != tuple(info.shape):
                raise CoreMLProgramError(
                    f"input {info.name!r} has shape {tuple(value.shape)}, the program expects {tuple(info.shape)}"
                )
            # Like MLModel.predict: the caller's array is converted to the input's declared type.
            env[info.name] = value.astype(numpy_dtype(info.dtype))
        unknown = sorted(set(feeds) - {i.name for i in self.inputs})
        if unknown:
            raise CoreMLProgramError(f"unknown inputs {unknown}; the program takes {[i.name for i in self.inputs]}")
        last_use = self._last_use
        for index, step in enumerate(self.steps):
            kwargs = {k: self._resolve(v, env) for k, v in step.inputs.items()}
            results = _execute(step, kwargs)
            for (name, dtype, _shape), value in zip(step.outputs, results):
                env[name] = value
            for name in last_use.get(index, ()):
                if name not in keep:
                    env.pop(name, None)
        wanted = [o.name for o in self.outputs] + list(keep)
        return {name: np.asarray(env[name] if name in env else self.constants[name]) for name in wanted}

    def _resolve(self, value: Any, env: dict[str, Any]) -> Any:
        if isinstance(value, Ref):
            if value.name in env:
                return env[value.name]
            return self.constants[value.name]
        if isinstance(value, list):
            return [self._resolve(v, env) for v in value]
        return value

    @property
    def _last_use(self) -> dict[int, list[str]]:
        """Step index after which each intermediate can be freed (keeps peak memory low)."""
        cached = getattr(self, "_last_use_cache", None)
        if cached is not None:
            return cached
        last: dict[str, int] = {}
        for index, step in enumerate(self.steps):
            for value in step.inputs.values():
                for ref in value if isinstance(value, list) else [value]:
                    if isinstance(ref, Ref) and ref.name not in self.constants:
                        last[ref.name] = index
        outputs = {o.name for o in self.outputs}
        table: dict[int, list[str]] = {}
        for name, index in last.items():
            if name not in outputs:
                table.setdefault(index, []).append(name)
        self._last_use_cache = table
        return table


def _round_to(value: np.ndarray, target: Any) -> np.ndarray:
    """Cast to the declared dtype. float32 -> float16 goes through torch when available: the same
    IEEE round-to-nearest-even as numpy's astype, bit for bit, but vectorised (numpy converts
    element by element, which made fp16 rounding the interpreter's largest cost)."""
    if target is np.float16 and value.dtype == np.float32 and value.size >= 4096:
        try:
            import torch
        except ImportError:  # pragma: no cover - torch is a dependency of the toolkit
            return value.astype(np.float16)
        return torch.from_numpy(np.ascontiguousarray(value)).to(torch.float16).numpy()
    return value.astype(target)


def _execute(step: Step, kwargs: dict[str, Any]) -> list[Any]:
    fn = OPS.get(step.op_type)
    if fn is None:
        raise UnsupportedOperationError(
            f"Core ML operation {step.op_type!r} (op {step.name!r}) is not implemented by the numpy interpreter"
        )
    try:
        results = fn(**kwargs)
    except InterpreterOpError as exc:
        raise UnsupportedOperationError(f"op {step.name!r} ({step.op_type}): {exc}") from None
    except TypeError as exc:  # an input name this implementation does not know
        raise UnsupportedOperationError(f"op {step.name!r} ({step.op_type}) has inputs {sorted(kwargs)}: {exc}") from None
    if len(results) != len(step.outputs):
        raise CoreMLProgramError(f"op {step.name!r} ({step.op_type}) produced {len(results)} outputs, expected {len(step.outputs)}")
    out = []
    for (name, dtype, shape), value in zip(step.outputs, results):
        value = np.asarray(value)
        target = numpy_dtype(dtype) if dtype is not None else value.dtype
        if value.dtype != target:
            value = _round_to(value, target)
        if shape is not None and tuple(value.shape) != tuple(shape):
            raise CoreMLProgramError(
                f"op {step.name!r} ({step.op_type}) produced shape {tuple(value.shape)}, the program declares {tuple(shape)}"
            )
        out.append(value)
    return out


# -- reading MIL ----------------------------------------------------------------------------------

def _dtype_name(var: Any) -> str | None:
    from coremltools.converters.mil.mil import types

    dtype = var.dtype
    if dtype is None:
        return None
    return types.builtin_to_string(dtype)


def _shape(var: Any) -> tuple[int, ...] | None:
    shape = getattr(var, "shape", None)
    if shape is None:
        return None
    try:
        return tuple(int(s) for s in shape)
    except TypeError:  # symbolic dimension
        return None


def from_mil_program(program: Any, function: str = "main", source: str = "") -> CoreMLProgram:
    """Flatten a coremltools MIL ``Program`` into numpy-executable steps.

    Constant and compile-time (``constexpr_*``) ops are evaluated here with this package's own
    kernels; every other op becomes a step. Control flow (nested blocks) is refused by name.
    """
    if function not in program.functions:
        raise CoreMLProgramError(f"the program has no function {function!r} (it has {sorted(program.functions)})")
    func = program.functions[function]
    inputs = [TensorInfo(name, _dtype_name(var) or "fp32", _shape(var) or ()) for name, var in func.inputs.items()]
    outputs = [TensorInfo(var.name, _dtype_name(var) or "fp32", _shape(var) or ()) for var in func.outputs]
    constants: dict[str, Any] = {}
    steps: list[Step] = []
    counts: dict[str, int] = {}

    def convert_input(value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return [convert_input(v) for v in value]
        return Ref(value.name)

    for mil_op in func.operations:
        counts[mil_op.op_type] = counts.get(mil_op.op_type, 0) + 1
        if getattr(mil_op, "blocks", None):
            raise UnsupportedOperationError(
                f"Core ML operation {mil_op.op_type!r} (op {mil_op.name!r}) has nested blocks (control flow), "
                "which the numpy interpreter does not implement"
            )
        outs = [(v.name, _dtype_name(v), _shape(v)) for v in mil_op.outputs]
        if mil_op.op_type == "const":
            var = mil_op.outputs[0]
            constants[var.name] = _const_value(var)
            continue
        step = Step(mil_op.op_type, mil_op.name, {k: convert_input(v) for k, v in mil_op.inputs.items()}, outs)
        if mil_op.op_type in CONSTEXPR_OPS or mil_op.op_type.startswith("constexpr_"):
            kwargs = {k: _const_lookup(v, constants, mil_op) for k, v in step.inputs.items()}
            for (name, _d, _s), value in zip(step.outputs, _execute(step, kwargs)):
                constants[name] = value
            continue
        steps.append(step)

    # Inputs that are constants become plain values (shape arguments, flags, strings).
    for step in steps:
        step.inputs = {k: _inline_small_constants(v, constants) for k, v in step.inputs.items()}
    return CoreMLProgram(inputs, outputs, steps, constants, counts, source)


def _const_value(var: Any) -> Any:
    value = var.val
    if isinstance(value, (str, bytes)):
        return value
    if isinstance(value, np.ndarray) and value.dtype.kind in "US":
        return value
    dtype = _dtype_name(var)
    if isinstance(value, (bool, np.bool_)) or dtype == "bool":
        return np.asarray(value, dtype=np.bool_) if np.ndim(value) else bool(value)
    if dtype == "str":
        return str(value)
    array = np.asarray(value)
    if dtype is not None and dtype in _DTYPES and array.dtype.kind in "biuf":
        array = array.astype(numpy_dtype(dtype), copy=False)
    return array


def _const_lookup(value: Any, constants: dict[str, Any], mil_op: Any) -> Any:
    if isinstance(value, list):
        return [_const_lookup(v, constants, mil_op) for v in value]
    if isinstance(value, Ref):
        if value.name not in constants:
            raise CoreMLProgramError(f"compile-time op {mil_op.name!r} ({mil_op.op_type}) reads non-constant {value.name!r}")
        return constants[value.name]
    return value


def _inline_small_constants(value: Any, constants: dict[str, Any]) -> Any:
    """Inline scalars/strings/small int arrays; keep large tensors as references (shared, cached)."""
    if isinstance(value, list):
        return [_inline_small_constants(v, constants) for v in value]
    if isinstance(value, Ref) and value.name in constants:
        const = constants[value.name]
        if not isinstance(const, np.ndarray) or const.size <= 16 or const.dtype.kind not in "f":
            return const
    return value


def read_mil_program(path: Path | str) -> Any:
    """The package's MIL program, read with coremltools' protobuf loader (no Apple runtime needed)."""
    import coremltools as ct
    from coremltools.converters.mil.frontend.milproto.load import load as load_milproto

    path = Path(path)
    if not path.exists():
        raise CoreMLProgramError(f"Core ML package {path} does not exist")
    try:
        spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    except Exception as exc:  # coremltools raises plain Exceptions for unreadable packages
        raise CoreMLProgramError(f"{path} is not a readable Core ML package: {exc}") from None
    if spec.WhichOneof("Type") != "mlProgram":
        raise CoreMLProgramError(f"{path} is a {spec.WhichOneof('Type')!r} model, not an ML program")
    weights = path / "Data" / "com.apple.CoreML" / "weights"
    return load_milproto(spec, specification_version=spec.specificationVersion, file_weights_dir=str(weights))


def load_mlpackage(path: Path | str, function: str = "main") -> CoreMLProgram:
    """Read an .mlpackage and return a callable numpy program."""
    started = time.perf_counter()
    program = from_mil_program(read_mil_program(path), function=function, source=str(path))
    program.load_seconds = time.perf_counter() - started  # type: ignore[attr-defined]
    return program

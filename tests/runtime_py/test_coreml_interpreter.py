"""The numpy Core ML program interpreter: every op the exported components use, against torch.

Op tests build MIL programs directly with coremltools' builder (no conversion, fast) and run them
through the interpreter in fp32 and in fp16 (inputs and weights cast to fp16 inside the program).

Tolerances:
* fp32: the interpreter and torch compute the same maths in float32 and differ only in summation
  order, so |out - ref| <= 1e-5 * max|ref| (+ a 1e-6 relative term).
* fp16: the interpreter rounds each op's float32 result to fp16 ONCE, so against torch evaluated
  in float32 on the same fp16-rounded inputs the error is at most half an fp16 ulp, 2**-11 * |ref|,
  plus the float32 summation-order term above.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

ct = pytest.importorskip("coremltools")
from coremltools.converters.mil import Builder as mb  # noqa: E402
from coremltools.converters.mil.mil import types  # noqa: E402

from runtime_py.coreml_interpreter import (  # noqa: E402
    UnsupportedOperationError,
    from_mil_program,
    load_mlpackage,
    supported_ops,
    unpack_indices,
)
from runtime_py.parity import psnr  # noqa: E402

RNG = np.random.default_rng(0)


def rand(*shape: int, scale: float = 1.0) -> np.ndarray:
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def run_mil(build, inputs: list[np.ndarray], fp16: bool) -> np.ndarray:
    """Build a program ``build(vars, const)`` over fp32 inputs, optionally computing in fp16."""
    specs = [mb.TensorSpec(shape=a.shape, dtype=types.fp32) for a in inputs]

    def const(array: np.ndarray) -> np.ndarray:
        return np.asarray(array, dtype=np.float16 if fp16 else np.float32)

    def body(*xs):
        xs = [mb.cast(x=x, dtype="fp16") for x in xs] if fp16 else list(xs)
        out = build(xs, const)
        return mb.cast(x=out, dtype="fp32") if fp16 else out

    arity = len(inputs)
    if arity == 1:
        program = mb.program(input_specs=specs, opset_version=ct.target.iOS17)(lambda a: body(a))
    elif arity == 2:
        program = mb.program(input_specs=specs, opset_version=ct.target.iOS17)(lambda a, b: body(a, b))
    else:
        program = mb.program(input_specs=specs, opset_version=ct.target.iOS17)(lambda a, b, c: body(a, b, c))
    return from_mil_program(program)(*inputs)


def fp16_round(*arrays: np.ndarray) -> list[np.ndarray]:
    return [np.asarray(a, dtype=np.float16).astype(np.float32) for a in arrays]


def check(out: np.ndarray, ref: np.ndarray, fp16: bool) -> None:
    ref = np.asarray(ref, dtype=np.float64)
    out = np.asarray(out, dtype=np.float64)
    assert out.shape == ref.shape
    peak = float(np.max(np.abs(ref))) or 1.0
    bound = 1e-5 * peak + (2.0**-11 if fp16 else 1e-6) * np.abs(ref)
    excess = np.abs(out - ref) - bound
    assert np.all(excess <= 0), f"max error {np.max(np.abs(out - ref)):.3g} exceeds the bound (peak {peak:.3g})"


def t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


# Each case: (name, inputs, MIL builder, torch reference on the (possibly fp16-rounded) inputs + consts).
W3 = rand(6, 4, 3, 3, scale=0.3)
B6 = rand(6, scale=0.1)
WG = rand(8, 2, 3, 3, scale=0.3)
WT = rand(4, 3, 2, 2, scale=0.3)
WL = rand(5, 7, scale=0.3)
BL = rand(5, scale=0.1)
GAMMA = rand(7, scale=0.5) + 1
BETA = rand(7, scale=0.1)


def _conv_cases():
    return [
        ("conv 3x3 pad 1", [rand(1, 4, 9, 9)],
         lambda v, c: mb.conv(x=v[0], weight=c(W3), bias=c(B6), strides=[1, 1], pad_type="custom", pad=[1, 1, 1, 1]),
         lambda x, c: F.conv2d(x, t(c(W3)), t(c(B6)), padding=1)),
        ("conv stride 2 asymmetric pad", [rand(1, 4, 9, 8)],
         lambda v, c: mb.conv(x=v[0], weight=c(W3), strides=[2, 2], pad_type="custom", pad=[0, 1, 1, 0]),
         lambda x, c: F.conv2d(F.pad(x, (1, 0, 0, 1)), t(c(W3)), stride=2)),
        ("conv groups + dilation", [rand(1, 4, 10, 10)],
         lambda v, c: mb.conv(x=v[0], weight=c(WG), strides=[1, 1], pad_type="valid", dilations=[2, 2], groups=2),
         lambda x, c: F.conv2d(x, t(c(WG)), dilation=2, groups=2)),
        ("conv_transpose stride 2", [rand(1, 4, 5, 5)],
         lambda v, c: mb.conv_transpose(x=v[0], weight=c(WT), strides=[2, 2], pad_type="valid"),
         lambda x, c: F.conv_transpose2d(x, t(c(WT)), stride=2)),
    ]


def _cases():
    cases = _conv_cases() + [
        ("linear", [rand(2, 3, 7)], lambda v, c: mb.linear(x=v[0], weight=c(WL), bias=c(BL)),
         lambda x, c: F.linear(x, t(c(WL)), t(c(BL)))),
        ("matmul transpose_y", [rand(2, 5, 8), rand(2, 6, 8)],
         lambda v, c: mb.matmul(x=v[0], y=v[1], transpose_y=True), lambda a, b, c: a @ b.transpose(1, 2)),
        # The one einsum form MIL has (contraction over dims -1 / -3), as the ANE attention emits it.
        ("einsum per-head values", [rand(1, 8, 1, 5), rand(1, 5, 1, 6)],
         lambda v, c: mb.einsum(values=(v[0], v[1]), equation="bchk,bkhq->bchq"),
         lambda a, b, c: torch.einsum("bchk,bkhq->bchq", a, b)),
        ("add broadcast", [rand(2, 3, 4), rand(3, 1)], lambda v, c: mb.add(x=v[0], y=v[1]), lambda a, b, c: a + b),
        ("sub", [rand(2, 3), rand(2, 3)], lambda v, c: mb.sub(x=v[0], y=v[1]), lambda a, b, c: a - b),
        ("mul", [rand(2, 3), rand(2, 3)], lambda v, c: mb.mul(x=v[0], y=v[1]), lambda a, b, c: a * b),
        ("real_div", [rand(2, 3), np.abs(rand(2, 3)) + 0.5], lambda v, c: mb.real_div(x=v[0], y=v[1]),
         lambda a, b, c: a / b),
        ("square", [rand(3, 4)], lambda v, c: mb.square(x=v[0]), lambda a, c: a * a),
        ("sqrt", [np.abs(rand(3, 4)) + 0.1], lambda v, c: mb.sqrt(x=v[0]), lambda a, c: torch.sqrt(a)),
        ("reduce_mean", [rand(1, 4, 2, 5, 5)], lambda v, c: mb.reduce_mean(x=v[0], axes=[2, 3, 4], keep_dims=True),
         lambda a, c: a.mean(dim=(2, 3, 4), keepdim=True)),
        ("silu", [rand(3, 5, scale=3)], lambda v, c: mb.silu(x=v[0]), lambda a, c: F.silu(a)),
        ("relu", [rand(3, 5)], lambda v, c: mb.relu(x=v[0]), lambda a, c: F.relu(a)),
        ("sigmoid", [rand(3, 5, scale=3)], lambda v, c: mb.sigmoid(x=v[0]), lambda a, c: torch.sigmoid(a)),
        ("gelu exact", [rand(4, 6, scale=3)], lambda v, c: mb.gelu(x=v[0], mode="EXACT"), lambda a, c: F.gelu(a)),
        ("gelu tanh", [rand(4, 6, scale=3)], lambda v, c: mb.gelu(x=v[0], mode="TANH_APPROXIMATION"),
         lambda a, c: F.gelu(a, approximate="tanh")),
        ("softmax", [rand(2, 3, 7, scale=3)], lambda v, c: mb.softmax(x=v[0], axis=1), lambda a, c: a.softmax(dim=1)),
        ("layer_norm", [rand(2, 5, 7)],
         lambda v, c: mb.layer_norm(x=v[0], axes=[-1], gamma=c(GAMMA), beta=c(BETA), epsilon=c(1e-5)),
         lambda a, c: F.layer_norm(a, (7,), t(c(GAMMA)), t(c(BETA)), 1e-5)),
        ("clip", [rand(3, 5, scale=2)], lambda v, c: mb.clip(x=v[0], alpha=c(-1.0), beta=c(1.0)), lambda a, c: a.clamp(-1, 1)),
        ("reshape", [rand(2, 3, 4)], lambda v, c: mb.reshape(x=v[0], shape=[4, 6]), lambda a, c: a.reshape(4, 6)),
        ("transpose", [rand(2, 3, 4)], lambda v, c: mb.transpose(x=v[0], perm=[2, 0, 1]), lambda a, c: a.permute(2, 0, 1)),
        ("expand_dims", [rand(2, 3)], lambda v, c: mb.expand_dims(x=v[0], axes=[1, -1]),
         lambda a, c: a[:, None, :, None]),
        ("squeeze", [rand(2, 1, 3, 1)], lambda v, c: mb.squeeze(x=v[0], axes=[1]), lambda a, c: a.squeeze(1)),
        ("concat", [rand(2, 3), rand(2, 2)], lambda v, c: mb.concat(values=[v[0], v[1]], axis=1),
         lambda a, b, c: torch.cat([a, b], dim=1)),
        ("split", [rand(2, 6)], lambda v, c: mb.split(x=v[0], num_splits=3, axis=1)[1],
         lambda a, c: a.split(2, dim=1)[1]),
        ("slice_by_index stride", [rand(1, 1, 8, 8)],
         lambda v, c: mb.slice_by_index(x=v[0], begin=[0, 0, 0, 1], end=[1, 1, 8, 8], stride=[1, 1, 2, 3]),
         lambda a, c: a[:, :, 0:8:2, 1:8:3]),
        ("slice_by_index squeeze", [rand(3, 4, 5)],
         lambda v, c: mb.slice_by_index(x=v[0], begin=[0, 2, 0], end=[3, 3, 5], squeeze_mask=[False, True, False]),
         lambda a, c: a[:, 2, :]),
        ("tile", [rand(1, 3, 2)], lambda v, c: mb.tile(x=v[0], reps=[2, 1, 3]), lambda a, c: a.repeat(2, 1, 3)),
        ("pad constant", [rand(1, 2, 3, 3)], lambda v, c: mb.pad(x=v[0], pad=[1, 0, 0, 2], mode="constant", constant_val=c(0.0)),
         lambda a, c: F.pad(a, (0, 2, 1, 0))),
        ("pad reflect", [rand(1, 2, 4, 4)], lambda v, c: mb.pad(x=v[0], pad=[1, 1, 2, 2], mode="reflect"),
         lambda a, c: F.pad(a, (2, 2, 1, 1), mode="reflect")),
        ("upsample_nearest_neighbor", [rand(1, 2, 3, 4)],
         lambda v, c: mb.upsample_nearest_neighbor(x=v[0], scale_factor_height=2, scale_factor_width=2),
         lambda a, c: F.interpolate(a, scale_factor=2, mode="nearest")),
        ("upsample_bilinear align_corners", [rand(1, 2, 4, 5)],
         lambda v, c: mb.upsample_bilinear(x=v[0], scale_factor_height=2.0, scale_factor_width=2.0, align_corners=True),
         lambda a, c: F.interpolate(a, scale_factor=2, mode="bilinear", align_corners=True)),
        ("upsample_bilinear half pixel", [rand(1, 2, 4, 5)],
         lambda v, c: mb.upsample_bilinear(x=v[0], scale_factor_height=2.0, scale_factor_width=2.0, align_corners=False,
                                           half_pixel_centers=True),
         lambda a, c: F.interpolate(a, scale_factor=2, mode="bilinear", align_corners=False)),
        ("resize_bilinear align corners", [rand(1, 2, 5, 7)],
         lambda v, c: mb.resize_bilinear(x=v[0], target_size_height=9, target_size_width=4, sampling_mode="ALIGN_CORNERS"),
         lambda a, c: F.interpolate(a, size=(9, 4), mode="bilinear", align_corners=True)),
        ("identity", [rand(2, 2)], lambda v, c: mb.identity(x=v[0]), lambda a, c: a),
    ]
    return cases


CASES = _cases()


@pytest.mark.parametrize("fp16", [False, True], ids=["fp32", "fp16"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_op_matches_torch(case, fp16: bool) -> None:
    _name, inputs, build, reference = case
    out = run_mil(build, inputs, fp16)
    ref_inputs = fp16_round(*inputs) if fp16 else inputs

    def const(array: np.ndarray) -> np.ndarray:
        return np.asarray(array, dtype=np.float16).astype(np.float32) if fp16 else np.asarray(array, np.float32)

    with torch.no_grad():
        ref = reference(*[t(a) for a in ref_inputs], const).numpy()
    check(out, ref, fp16)


@pytest.fixture(scope="module")
def exported_packages(tiny_coreml_export, tmp_path_factory) -> dict[str, list]:
    """Real Core ML packages of the tiny model's tile components: the exporter's fp16 packages (the
    session's ``coreml-fp16`` export, tests/conftest.py), and the same packages 4-bit palettized by
    the exporter's compression step (``compress_mlmodel``, what the ``coreml-w4`` target applies
    after conversion; done on the saved packages to convert once)."""
    from quantize.coreml import compress_mlmodel
    from runtime_py.components import TILE_COMPONENTS
    from runtime_py.manifest import read_manifest

    fp16_folder = tiny_coreml_export.folder
    root = tmp_path_factory.mktemp("coreml-packages")
    manifest = read_manifest(fp16_folder)
    assert set(manifest.components) == set(TILE_COMPONENTS)
    fp16 = [fp16_folder / c["file"] for entry in manifest.components.values()
            for c in (entry.extra.get("chunks") or [{"file": entry.file}])]
    palettized = []
    for package in fp16:
        compressed, _recipe = compress_mlmodel(ct.models.MLModel(str(package), skip_model_load=True), "w4")
        palettized.append(root / "w4" / package.name)
        palettized[-1].parent.mkdir(exist_ok=True)
        compressed.save(str(palettized[-1]))
    return {"fp16": fp16, "w4": palettized}


def _op_types(program) -> set[str]:
    """Every operation type in a MIL program, nested blocks included."""
    found: set[str] = set()
    pending = [op for function in program.functions.values() for op in function.operations]
    while pending:
        op = pending.pop()
        found.add(op.op_type)
        for block in getattr(op, "blocks", None) or ():
            pending.extend(block.operations)
    return found


def test_every_op_of_the_exported_packages_is_implemented(exported_packages) -> None:
    """The op types are read from the saved packages (every component, every chunk), not listed by
    hand: an exporter or coremltools change that emits a new op fails here, by name."""
    from runtime_py.coreml_interpreter import read_mil_program

    supported = set(supported_ops()) | {"const"}  # const is folded while loading, not executed
    used: dict[str, set[str]] = {}
    for precision, packages in exported_packages.items():
        for package in packages:
            ops = _op_types(read_mil_program(package))
            assert "conv" in ops, (precision, package.name)  # a real network was read
            assert not ops - supported, f"{precision} {package.name}: not implemented: {sorted(ops - supported)}"
            used[precision] = used.get(precision, set()) | ops
    # The palettized packages hold the look-up-table op, so this is not the fp16 check twice.
    assert "constexpr_lut_to_dense" in used["w4"] and "constexpr_lut_to_dense" not in used["fp16"]


def test_cast_rounds_to_fp16() -> None:
    x = np.array([[1.0 + 2.0**-12, 65504.0, 1e-8, -3.3333333]], dtype=np.float32)
    out = run_mil(lambda v, c: mb.cast(x=mb.cast(x=v[0], dtype="fp16"), dtype="fp32"), [x], fp16=False)
    np.testing.assert_array_equal(out, x.astype(np.float16).astype(np.float32))


def _pack(indices: np.ndarray, nbits: int) -> np.ndarray:
    """Pack indices LSB-first, written independently of the interpreter (bit by bit)."""
    bits = []
    for value in indices.tolist():
        bits.extend((value >> b) & 1 for b in range(nbits))
    bits += [0] * (-len(bits) % 8)
    return np.array([sum(bit << i for i, bit in enumerate(bits[k:k + 8])) for k in range(0, len(bits), 8)],
                    dtype=np.uint8)


@pytest.mark.parametrize("nbits", [2, 4, 6, 8])
def test_unpack_indices_inverts_packing(nbits: int) -> None:
    indices = RNG.integers(0, 2**nbits, size=37)
    np.testing.assert_array_equal(unpack_indices(_pack(indices, nbits), nbits, indices.size), indices)


def test_lut_to_dense_then_conv() -> None:
    """A palettized conv weight (iOS16 constexpr_lut_to_dense) feeding a conv, against torch."""
    lut = np.sort(rand(16, scale=0.3)).astype(np.float16)
    indices = RNG.integers(0, 16, size=6 * 4 * 3 * 3)
    dense = lut[indices].reshape(6, 4, 3, 3).astype(np.float32)
    x = rand(1, 4, 7, 7)

    def build(v, c):
        weight = mb.constexpr_lut_to_dense(indices=_pack(indices, 4), lut=lut, shape=np.array([6, 4, 3, 3], np.uint32))
        return mb.conv(x=v[0], weight=weight, pad_type="same")

    out = run_mil(build, [x], fp16=True)
    with torch.no_grad():
        ref = F.conv2d(t(fp16_round(x)[0]), t(dense), padding=1).numpy()
    check(out, ref, fp16=True)


def test_affine_dequantize_then_linear() -> None:
    """An int8 per-channel weight (constexpr_affine_dequantize) feeding a linear, against torch."""
    q = RNG.integers(-127, 128, size=(5, 7)).astype(np.int8)
    scale = (np.abs(rand(5)) * 0.01 + 0.001).astype(np.float16)
    zero = np.zeros(5, dtype=np.int8)
    x = rand(3, 7)

    def build(v, c):
        weight = mb.constexpr_affine_dequantize(quantized_data=q, zero_point=zero, scale=scale, axis=0)
        return mb.linear(x=v[0], weight=weight)

    out = run_mil(build, [x], fp16=True)
    dense = (q.astype(np.float32) * scale.astype(np.float32)[:, None]).astype(np.float16).astype(np.float32)
    with torch.no_grad():
        ref = F.linear(t(fp16_round(x)[0]), t(dense)).numpy()
    check(out, ref, fp16=True)


def test_unknown_op_is_named() -> None:
    program = mb.program(input_specs=[mb.TensorSpec(shape=(4,), dtype=types.fp32)], opset_version=ct.target.iOS17)(
        lambda x: mb.cumsum(x=x, axis=0))
    with pytest.raises(UnsupportedOperationError, match="'cumsum'"):
        from_mil_program(program)(np.ones(4, np.float32))


def test_wrong_input_shape_is_refused() -> None:
    program = mb.program(input_specs=[mb.TensorSpec(shape=(2, 3), dtype=types.fp32)], opset_version=ct.target.iOS17)(
        lambda x: mb.relu(x=x))
    with pytest.raises(ValueError, match="shape"):
        from_mil_program(program)(np.ones((3, 2), np.float32))


def test_converted_tiny_encoder_matches_torch(tiny_coreml_export) -> None:
    """A real converted component (fp16 ML program, saved and read back) executed by the interpreter.

    The package is the session's ``coreml-fp16`` export of the tiny model (tests/conftest.py:
    ``export_graph`` with the ANE layout, then ``convert_exported``, as the exporter does).
    >= 40 dB is the issue's bar for fp16 packages (Apple's converter bar is 35 dB).
    """
    from runtime_py.components import tile_components
    from runtime_py.manifest import read_manifest
    from runtime_py.model import build_model

    component = tile_components(build_model("tiny", seed=0))["encoder"]
    inputs = component.example_inputs(seed=1)
    entry = read_manifest(tiny_coreml_export.folder).components["encoder"]
    assert not entry.extra.get("chunks")  # one package: the whole encoder
    interpreted = load_mlpackage(tiny_coreml_export.folder / entry.file)
    assert interpreted.inputs[0].dtype == "fp16"  # the program really computes in fp16
    out = interpreted(inputs[0].numpy())
    with torch.no_grad():
        ref = component(*inputs).numpy()
    assert psnr(ref, out) >= 40.0


def _ios18_program(build, x: np.ndarray):
    spec = [mb.TensorSpec(shape=x.shape, dtype=types.fp16)]
    return from_mil_program(mb.program(input_specs=spec, opset_version=ct.target.iOS18)(build))


def test_ios18_blockwise_shift_scale_then_linear() -> None:
    """iOS18 block-wise int8 weights (two blocks along the input axis), against numpy/torch."""
    q = RNG.integers(-127, 128, size=(4, 8)).astype(np.int8)
    scale = (np.abs(rand(4, 2)) * 0.01 + 0.001).astype(np.float16)
    offset = RNG.integers(-3, 4, size=(4, 2)).astype(np.int8)
    x = rand(2, 8).astype(np.float16)
    program = _ios18_program(lambda a: mb.linear(x=a, weight=mb.constexpr_blockwise_shift_scale(
        data=q, scale=scale, offset=offset)), x)
    dense = (q.astype(np.float32) - np.repeat(offset, 4, axis=1)) * np.repeat(scale.astype(np.float32), 4, axis=1)
    dense = dense.astype(np.float16).astype(np.float32)
    with torch.no_grad():
        ref = F.linear(t(x.astype(np.float32)), t(dense)).numpy()
    check(program(x), ref, fp16=True)


def test_ios18_grouped_lut_then_linear() -> None:
    """iOS18 per-group look-up tables (two groups of output channels), against numpy/torch."""
    idx = RNG.integers(0, 256, size=(4, 6)).astype(np.uint8)  # 8-bit indices (uint8 in the builder)
    lut = rand(2, 1, 256, 1, scale=0.3).astype(np.float16)
    x = rand(3, 6).astype(np.float16)
    program = _ios18_program(lambda a: mb.linear(x=a, weight=mb.constexpr_lut_to_dense(
        indices=idx, lut=lut)), x)
    dense = np.stack([lut[i // 2, 0, idx[i], 0] for i in range(4)]).astype(np.float32)
    with torch.no_grad():
        ref = F.linear(t(x.astype(np.float32)), t(dense)).numpy()
    check(program(x), ref, fp16=True)

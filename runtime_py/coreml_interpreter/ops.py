"""numpy implementations of the Core ML program (MIL) operations the exported components use.

Each implementation receives the op's inputs by their MIL names (arrays, Python scalars, strings,
or lists of arrays for variadic inputs such as ``concat.values``) and returns a list of outputs.
The executor (``program.py``) rounds every output to the dtype the program declares for it.

Precision model (what "run in the program's declared precision" means here):

* Tensors the program declares as fp16 are stored as ``np.float16``; an op reads them as float32
  (exact), computes in float32 and the executor rounds the result to fp16 once per op output.
  For the elementwise ops (add, sub, mul, real_div, sqrt, ...) this is bit-identical to IEEE
  fp16 arithmetic, because float32 keeps more than twice fp16's 11 significant bits, so the
  double rounding cannot change the result.
* Reductions, matmul, linear and conv accumulate in float32 and round to fp16 once per output,
  which is what fp16 GPU/Neural-Engine hardware does (fp32 or wider accumulators) more closely
  than a pure fp16 running sum would.
* Transcendental ops (exp, erf, tanh, softmax, ...) are evaluated in float32 and rounded: the
  hardware uses its own approximations, so agreement is to fp16 resolution, not bit-exact.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

OpFn = Callable[..., list[Any]]
#: Largest im2col buffer a convolution may build; larger convs loop over kernel taps instead.
IM2COL_LIMIT_BYTES = 256 * 2**20
OPS: dict[str, OpFn] = {}


class InterpreterOpError(ValueError):
    """An operation's inputs or attributes are outside what this interpreter implements."""


def op(*names: str) -> Callable[[OpFn], OpFn]:
    def register(fn: OpFn) -> OpFn:
        for name in names:
            OPS[name] = fn
        return fn

    return register


def f32(x: Any) -> np.ndarray:
    """Read a tensor for float computation (fp16 -> fp32 is exact)."""
    x = np.asarray(x)
    if x.dtype == np.float32:
        return x
    return x.astype(np.float32)


def _axis(axis: Any, rank: int) -> int:
    axis = int(axis)
    return axis + rank if axis < 0 else axis


def _axes(axes: Any, rank: int) -> tuple[int, ...]:
    if axes is None:
        return tuple(range(rank))
    return tuple(sorted(_axis(a, rank) for a in np.atleast_1d(np.asarray(axes)).tolist()))


def _float_or_keep(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    return f32(x) if np.issubdtype(x.dtype, np.floating) else x


# -- elementwise binary ------------------------------------------------------------------------

_BINARY: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "add": np.add,
    "sub": np.subtract,
    "mul": np.multiply,
    "real_div": np.divide,
    "pow": np.power,
    "maximum": np.maximum,
    "minimum": np.minimum,
    "floor_div": np.floor_divide,
    "mod": np.mod,
    "equal": np.equal,
    "not_equal": np.not_equal,
    "greater": np.greater,
    "greater_equal": np.greater_equal,
    "less": np.less,
    "less_equal": np.less_equal,
    "logical_and": np.logical_and,
    "logical_or": np.logical_or,
    "logical_xor": np.logical_xor,
}


def _binary(fn: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> OpFn:
    def run(x: Any, y: Any) -> list[Any]:
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            return [fn(_float_or_keep(x), _float_or_keep(y))]

    return run


for _name, _fn in _BINARY.items():
    OPS[_name] = _binary(_fn)


# -- elementwise unary -------------------------------------------------------------------------

def _erf(x: np.ndarray) -> np.ndarray:
    """Error function (numpy has none): Abramowitz & Stegun 7.1.26 in float64.

    Its absolute error is below 1.5e-7, about one float32 ulp near 1, so gelu built on it agrees
    with torch's exact gelu to float32 resolution, far inside fp16's 1e-3 resolution.
    """
    x = np.asarray(x, dtype=np.float64)
    sign = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return sign * (1.0 - poly * np.exp(-a * a))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return (1.0 / (1.0 + np.exp(-x.astype(np.float64)))).astype(np.float32)


_UNARY: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "abs": np.abs,
    "sqrt": np.sqrt,
    "square": np.square,
    "exp": np.exp,
    "exp2": np.exp2,
    "sin": np.sin,
    "cos": np.cos,
    "tan": np.tan,
    "tanh": np.tanh,
    "atan": np.arctan,
    "asin": np.arcsin,
    "acos": np.arccos,
    "sinh": np.sinh,
    "cosh": np.cosh,
    "floor": np.floor,
    "ceil": np.ceil,
    "round": np.round,
    "sign": np.sign,
    "sigmoid": _sigmoid,
    "relu": lambda x: np.maximum(x, 0.0),
    "relu6": lambda x: np.clip(x, 0.0, 6.0),
    "silu": lambda x: x * _sigmoid(x),
    "erf": lambda x: _erf(x).astype(np.float32),
    "softplus": lambda x: np.logaddexp(0.0, x),
    "softsign": lambda x: x / (1.0 + np.abs(x)),
    "logical_not": np.logical_not,
    "identity": lambda x: x,
}


def _unary(fn: Callable[[np.ndarray], np.ndarray]) -> OpFn:
    def run(x: Any) -> list[Any]:
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            return [fn(_float_or_keep(x))]

    return run


for _name, _fn in _UNARY.items():
    OPS[_name] = _unary(_fn)


@op("rsqrt")
def _rsqrt(x: Any, epsilon: Any = 1e-12) -> list[Any]:
    return [1.0 / np.sqrt(f32(x) + np.float32(epsilon))]


@op("inverse")
def _inverse(x: Any, epsilon: Any = 1e-4) -> list[Any]:
    return [1.0 / (f32(x) + np.float32(epsilon))]


@op("log")
def _log(x: Any, epsilon: Any = 1e-45) -> list[Any]:
    with np.errstate(divide="ignore", invalid="ignore"):
        return [np.log(f32(x) + np.float32(epsilon))]


@op("clip")
def _clip(x: Any, alpha: Any, beta: Any) -> list[Any]:
    return [np.minimum(np.maximum(f32(x), np.float32(alpha)), np.float32(beta))]


@op("leaky_relu")
def _leaky_relu(x: Any, alpha: Any = 0.01) -> list[Any]:
    x = f32(x)
    return [np.where(x >= 0, x, np.float32(alpha) * x)]


@op("elu")
def _elu(x: Any, alpha: Any = 1.0) -> list[Any]:
    x = f32(x)
    return [np.where(x > 0, x, np.float32(alpha) * np.expm1(np.minimum(x, 0)))]


@op("gelu")
def _gelu(x: Any, mode: str = "EXACT") -> list[Any]:
    x64 = np.asarray(x, dtype=np.float64)
    if mode == "EXACT":
        y = 0.5 * x64 * (1.0 + _erf(x64 / math.sqrt(2.0)))
    elif mode == "TANH_APPROXIMATION":
        y = 0.5 * x64 * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x64 + 0.044715 * x64**3)))
    elif mode == "SIGMOID_APPROXIMATION":
        y = x64 / (1.0 + np.exp(-1.702 * x64))
    else:
        raise InterpreterOpError(f"gelu mode {mode!r} is not implemented")
    return [y.astype(np.float32)]


@op("cast")
def _cast(x: Any, dtype: str) -> list[Any]:
    from .program import numpy_dtype  # local: program imports this module

    target = numpy_dtype(dtype)
    x = np.asarray(x)
    if np.issubdtype(target, np.integer) and np.issubdtype(x.dtype, np.floating):
        x = np.trunc(x)  # MIL casts float -> int toward zero, like C
    return [x.astype(target)]


@op("select")
def _select(cond: Any, a: Any, b: Any) -> list[Any]:
    return [np.where(np.asarray(cond).astype(bool), _float_or_keep(a), _float_or_keep(b))]


# -- shape and data movement -------------------------------------------------------------------

@op("reshape")
def _reshape(x: Any, shape: Any) -> list[Any]:
    x = np.asarray(x)
    return [x.reshape([int(s) for s in np.asarray(shape).tolist()])]


@op("transpose")
def _transpose(x: Any, perm: Any) -> list[Any]:
    return [np.transpose(np.asarray(x), [int(p) for p in np.asarray(perm).tolist()])]


@op("expand_dims")
def _expand_dims(x: Any, axes: Any) -> list[Any]:
    x = np.asarray(x)
    out_rank = x.ndim + len(np.atleast_1d(axes))
    return [np.expand_dims(x, _axes(axes, out_rank))]


@op("squeeze")
def _squeeze(x: Any, axes: Any = None) -> list[Any]:
    x = np.asarray(x)
    if axes is None:
        return [np.squeeze(x)]
    return [np.squeeze(x, axis=_axes(axes, x.ndim))]


@op("concat")
def _concat(values: list[Any], axis: Any, interleave: Any = False) -> list[Any]:
    values = [np.asarray(v) for v in values]
    axis = _axis(axis, values[0].ndim)
    if bool(interleave):
        stacked = np.stack(values, axis=axis + 1)
        shape = list(values[0].shape)
        shape[axis] *= len(values)
        return [stacked.reshape(shape)]
    return [np.concatenate(values, axis=axis)]


@op("stack")
def _stack(values: list[Any], axis: Any) -> list[Any]:
    values = [np.asarray(v) for v in values]
    return [np.stack(values, axis=_axis(axis, values[0].ndim + 1))]


@op("split")
def _split(x: Any, axis: Any, num_splits: Any = None, split_sizes: Any = None) -> list[Any]:
    x = np.asarray(x)
    axis = _axis(axis, x.ndim)
    if split_sizes is not None:
        bounds = np.cumsum(np.asarray(split_sizes).tolist())[:-1]
        return list(np.split(x, bounds, axis=axis))
    if num_splits is None:
        raise InterpreterOpError("split needs num_splits or split_sizes")
    return list(np.split(x, int(num_splits), axis=axis))


@op("slice_by_index")
def _slice_by_index(
    x: Any,
    begin: Any,
    end: Any,
    stride: Any = None,
    begin_mask: Any = None,
    end_mask: Any = None,
    squeeze_mask: Any = None,
) -> list[Any]:
    x = np.asarray(x)
    rank = x.ndim
    begin = np.asarray(begin).tolist()
    end = np.asarray(end).tolist()
    stride = [1] * rank if stride is None else np.asarray(stride).tolist()
    begin_mask = [False] * rank if begin_mask is None else np.asarray(begin_mask).tolist()
    end_mask = [False] * rank if end_mask is None else np.asarray(end_mask).tolist()
    squeeze_mask = [False] * rank if squeeze_mask is None else np.asarray(squeeze_mask).tolist()
    index: list[Any] = []
    for d in range(rank):
        if squeeze_mask[d]:
            b = int(begin[d])
            index.append(b + x.shape[d] if b < 0 else b)
            continue
        s = int(stride[d])
        b = None if begin_mask[d] else int(begin[d])
        e = None if end_mask[d] else int(end[d])
        index.append(slice(b, e, s))
    return [x[tuple(index)]]


@op("slice_by_size")
def _slice_by_size(x: Any, begin: Any, size: Any) -> list[Any]:
    x = np.asarray(x)
    index = []
    for d, (b, n) in enumerate(zip(np.asarray(begin).tolist(), np.asarray(size).tolist())):
        b = b + x.shape[d] if b < 0 else b
        index.append(slice(b, x.shape[d] if n == -1 else b + n))
    return [x[tuple(index)]]


@op("tile")
def _tile(x: Any, reps: Any) -> list[Any]:
    return [np.tile(np.asarray(x), [int(r) for r in np.asarray(reps).tolist()])]


@op("pad")
def _pad(x: Any, pad: Any, mode: str = "constant", constant_val: Any = 0.0) -> list[Any]:
    x = np.asarray(x)
    pad = [int(p) for p in np.asarray(pad).tolist()]
    n = len(pad) // 2
    widths = [(0, 0)] * (x.ndim - n) + [(pad[2 * i], pad[2 * i + 1]) for i in range(n)]
    if mode == "constant":
        return [np.pad(x, widths, mode="constant", constant_values=np.asarray(constant_val, dtype=x.dtype))]
    if mode == "reflect":
        return [np.pad(x, widths, mode="reflect")]
    if mode == "replicate":
        return [np.pad(x, widths, mode="edge")]
    raise InterpreterOpError(f"pad mode {mode!r} is not implemented")


@op("gather")
def _gather(x: Any, indices: Any, axis: Any = 0, batch_dims: Any = 0, validate_indices: Any = False) -> list[Any]:
    if int(batch_dims) != 0:
        raise InterpreterOpError("gather with batch_dims != 0 is not implemented")
    x = np.asarray(x)
    indices = np.asarray(indices).astype(np.int64)
    axis = _axis(axis, x.ndim)
    indices = np.where(indices < 0, indices + x.shape[axis], indices)
    return [np.take(x, indices, axis=axis)]


@op("gather_along_axis")
def _gather_along_axis(x: Any, indices: Any, axis: Any = 0, validate_indices: Any = False) -> list[Any]:
    x = np.asarray(x)
    axis = _axis(axis, x.ndim)
    indices = np.asarray(indices).astype(np.int64)
    indices = np.where(indices < 0, indices + x.shape[axis], indices)
    return [np.take_along_axis(x, indices, axis=axis)]


@op("shape")
def _shape(x: Any) -> list[Any]:
    return [np.asarray(np.asarray(x).shape, dtype=np.int32)]


@op("fill")
def _fill(shape: Any, value: Any = 0.0) -> list[Any]:
    return [np.full([int(s) for s in np.asarray(shape).tolist()], value)]


@op("range_1d")
def _range_1d(end: Any, start: Any, step: Any) -> list[Any]:
    return [np.arange(start, end, step)]


@op("flatten2d")
def _flatten2d(x: Any, axis: Any = 1) -> list[Any]:
    x = np.asarray(x)
    axis = _axis(axis, x.ndim)
    return [x.reshape(int(np.prod(x.shape[:axis])), -1)]


# -- reductions ----------------------------------------------------------------------------------

def _reduction(fn: Callable[..., np.ndarray]) -> OpFn:
    def run(x: Any, axes: Any = None, keep_dims: Any = False) -> list[Any]:
        x = _float_or_keep(x)
        return [fn(x, axis=_axes(axes, x.ndim), keepdims=bool(keep_dims))]

    return run


OPS["reduce_mean"] = _reduction(np.mean)
OPS["reduce_sum"] = _reduction(np.sum)
OPS["reduce_max"] = _reduction(np.max)
OPS["reduce_min"] = _reduction(np.min)
OPS["reduce_prod"] = _reduction(np.prod)
OPS["reduce_sum_square"] = _reduction(lambda x, axis, keepdims: np.sum(x * x, axis=axis, keepdims=keepdims))
OPS["reduce_l2_norm"] = _reduction(lambda x, axis, keepdims: np.sqrt(np.sum(x * x, axis=axis, keepdims=keepdims)))
OPS["reduce_l1_norm"] = _reduction(lambda x, axis, keepdims: np.sum(np.abs(x), axis=axis, keepdims=keepdims))
OPS["reduce_log_sum_exp"] = _reduction(
    lambda x, axis, keepdims: np.log(np.sum(np.exp(x), axis=axis, keepdims=keepdims))
)


@op("reduce_argmax", "reduce_argmin")
def _reduce_arg(x: Any, axis: Any = -1, keep_dims: Any = False) -> list[Any]:
    raise InterpreterOpError("argmax/argmin reductions are not used by the exported components")


# -- neural-network ops --------------------------------------------------------------------------

@op("softmax")
def _softmax(x: Any, axis: Any = -1) -> list[Any]:
    x = f32(x)
    axis = _axis(axis, x.ndim)
    e = x - np.max(x, axis=axis, keepdims=True)  # a new array: safe to work in place below
    np.exp(e, out=e)
    e *= np.float32(1.0) / np.sum(e, axis=axis, keepdims=True)
    return [e]


@op("layer_norm")
def _layer_norm(x: Any, axes: Any = None, gamma: Any = None, beta: Any = None, epsilon: Any = 1e-5) -> list[Any]:
    x = f32(x)
    axes = _axes(axes, x.ndim)
    mean = np.mean(x, axis=axes, keepdims=True)
    var = np.mean(np.square(x - mean), axis=axes, keepdims=True)
    y = (x - mean) / np.sqrt(var + np.float32(epsilon))
    # gamma/beta have the shape of the normalised axes (trailing when axes are the last dims).
    if gamma is not None:
        y = y * _norm_param(f32(gamma), x.ndim, axes)
    if beta is not None:
        y = y + _norm_param(f32(beta), x.ndim, axes)
    return [y]


def _norm_param(p: np.ndarray, rank: int, axes: tuple[int, ...]) -> np.ndarray:
    shape = [1] * rank
    for a, n in zip(axes, p.shape):
        shape[a] = n
    return p.reshape(shape)


@op("instance_norm")
def _instance_norm(x: Any, gamma: Any = None, beta: Any = None, epsilon: Any = 1e-5) -> list[Any]:
    x = f32(x)
    axes = tuple(range(2, x.ndim))
    mean = np.mean(x, axis=axes, keepdims=True)
    var = np.mean(np.square(x - mean), axis=axes, keepdims=True)
    y = (x - mean) / np.sqrt(var + np.float32(epsilon))
    shape = (1, -1) + (1,) * (x.ndim - 2)
    if gamma is not None:
        y = y * f32(gamma).reshape(shape)
    if beta is not None:
        y = y + f32(beta).reshape(shape)
    return [y]


@op("batch_norm")
def _batch_norm(x: Any, mean: Any, variance: Any, gamma: Any = None, beta: Any = None, epsilon: Any = 1e-5) -> list[Any]:
    x = f32(x)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    y = (x - f32(mean).reshape(shape)) / np.sqrt(f32(variance).reshape(shape) + np.float32(epsilon))
    if gamma is not None:
        y = y * f32(gamma).reshape(shape)
    if beta is not None:
        y = y + f32(beta).reshape(shape)
    return [y]


@op("linear")
def _linear(x: Any, weight: Any, bias: Any = None) -> list[Any]:
    y = np.matmul(f32(x), f32(weight).T)
    if bias is not None:
        y = y + f32(bias)
    return [y]


@op("matmul")
def _matmul(x: Any, y: Any, transpose_x: Any = False, transpose_y: Any = False) -> list[Any]:
    a, b = f32(x), f32(y)
    if bool(transpose_x):
        a = np.swapaxes(a, -1, -2) if a.ndim > 1 else a
    if bool(transpose_y):
        b = np.swapaxes(b, -1, -2) if b.ndim > 1 else b
    return [np.matmul(a, b)]


@op("einsum")
def _einsum(values: list[Any], equation: str) -> list[Any]:
    return [np.einsum(equation, *[f32(v) for v in values], optimize=True)]


def _conv_padding(
    pad_type: str, pad: Any, in_sizes: tuple[int, ...], kernel: tuple[int, ...], strides: list[int], dilations: list[int]
) -> list[tuple[int, int]]:
    n = len(in_sizes)
    if pad_type == "custom":
        p = [int(v) for v in np.asarray(pad).tolist()] if pad is not None else [0] * (2 * n)
        return [(p[2 * i], p[2 * i + 1]) for i in range(n)]
    if pad_type == "valid":
        return [(0, 0)] * n
    if pad_type in ("same", "same_lower"):
        out = []
        for size, k, s, d in zip(in_sizes, kernel, strides, dilations):
            eff = (k - 1) * d + 1
            total = max((math.ceil(size / s) - 1) * s + eff - size, 0)
            small, large = total // 2, total - total // 2
            out.append((small, large) if pad_type == "same" else (large, small))
        return out
    raise InterpreterOpError(f"conv pad_type {pad_type!r} is not implemented")


@op("conv")
def _conv(
    x: Any,
    weight: Any,
    bias: Any = None,
    strides: Any = None,
    pad_type: str = "valid",
    pad: Any = None,
    dilations: Any = None,
    groups: Any = 1,
) -> list[Any]:
    """N-d convolution with fp32 accumulation, as BLAS matmuls.

    Small layers use im2col (one matmul); layers whose im2col buffer would exceed
    ``IM2COL_LIMIT_BYTES`` sum one matmul per kernel tap over strided windows instead.
    """
    x = f32(x)
    w = f32(weight)
    spatial = x.ndim - 2
    if spatial < 1:
        raise InterpreterOpError(f"conv input must have rank >= 3, got shape {x.shape}")
    strides = [1] * spatial if strides is None else [int(s) for s in np.asarray(strides).tolist()]
    dilations = [1] * spatial if dilations is None else [int(d) for d in np.asarray(dilations).tolist()]
    kernel = tuple(w.shape[2:])
    padding = _conv_padding(pad_type, pad, tuple(x.shape[2:]), kernel, strides, dilations)
    if any(p != (0, 0) for p in padding):
        x = np.pad(x, [(0, 0), (0, 0)] + padding)
    batch, cin = x.shape[:2]
    groups = int(groups)
    cout = w.shape[0]
    cin_g, cout_g = cin // groups, cout // groups
    if w.shape[1] != cin_g:
        raise InterpreterOpError(f"conv weight {w.shape} does not fit input channels {cin} with groups={groups}")
    out_sizes = [
        (x.shape[2 + i] - ((kernel[i] - 1) * dilations[i] + 1)) // strides[i] + 1 for i in range(spatial)
    ]
    positions = int(np.prod(out_sizes))
    taps = int(np.prod(kernel))
    xg = x.reshape(batch, groups, cin_g, *x.shape[2:])
    wg = w.reshape(groups, cout_g, cin_g, *kernel)
    if batch * cin * taps * positions * 4 <= IM2COL_LIMIT_BYTES:
        # im2col: one (Cout, Cin*k) @ (Cin*k, positions) matmul; best for few channels.
        windows = np.lib.stride_tricks.sliding_window_view(
            xg, [(k - 1) * d + 1 for k, d in zip(kernel, dilations)], axis=tuple(range(3, 3 + spatial)))
        index = (slice(None),) * 3 + tuple(slice(None, None, s) for s in strides) + tuple(
            slice(None, None, d) for d in dilations)
        windows = windows[index]  # (B, G, Cin_g, *out, *kernel)
        order = (0, 1, 2) + tuple(range(3 + spatial, 3 + 2 * spatial)) + tuple(range(3, 3 + spatial))
        cols = np.ascontiguousarray(windows.transpose(order)).reshape(batch, groups, cin_g * taps, positions)
        y = np.matmul(wg.reshape(groups, cout_g, cin_g * taps)[None], cols)
    else:
        # One matmul per kernel tap over a strided window: memory stays at one window.
        y = np.zeros((batch, groups, cout_g, positions), dtype=np.float32)
        for tap in np.ndindex(*kernel):
            index = [slice(None)] * 3 + [
                slice(tap[i] * dilations[i], tap[i] * dilations[i] + (out_sizes[i] - 1) * strides[i] + 1, strides[i])
                for i in range(spatial)
            ]
            window = xg[tuple(index)].reshape(batch, groups, cin_g, positions)
            y += np.matmul(wg[(slice(None), slice(None), slice(None)) + tap][None], window)
    y = y.reshape(batch, cout, *out_sizes)
    if bias is not None:
        y += f32(bias).reshape((1, cout) + (1,) * spatial)
    return [y]


@op("conv_transpose")
def _conv_transpose(
    x: Any,
    weight: Any,
    bias: Any = None,
    pad: Any = None,
    output_shape: Any = None,
    pad_type: str = "valid",
    strides: Any = None,
    dilations: Any = None,
    groups: Any = 1,
) -> list[Any]:
    """Transposed convolution by scattering one matmul per kernel tap (MIL weight: (Cin, Cout/g, k...))."""
    x = f32(x)
    w = f32(weight)
    spatial = x.ndim - 2
    strides = [1] * spatial if strides is None else [int(s) for s in np.asarray(strides).tolist()]
    dilations = [1] * spatial if dilations is None else [int(d) for d in np.asarray(dilations).tolist()]
    groups = int(groups)
    batch, cin = x.shape[:2]
    kernel = tuple(w.shape[2:])
    cin_g, cout_g = cin // groups, w.shape[1]
    full = [(x.shape[2 + i] - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 for i in range(spatial)]
    y = np.zeros((batch, groups, cout_g, *full), dtype=np.float32)
    xg = x.reshape(batch, groups, cin_g, -1)
    wg = w.reshape(groups, cin_g, cout_g, *kernel)
    for tap in np.ndindex(*kernel):
        contrib = np.matmul(np.swapaxes(wg[(slice(None), slice(None), slice(None)) + tap], 1, 2)[None], xg)
        contrib = contrib.reshape(batch, groups, cout_g, *x.shape[2:])
        index = [slice(None)] * 3 + [
            slice(tap[i] * dilations[i], tap[i] * dilations[i] + (x.shape[2 + i] - 1) * strides[i] + 1, strides[i])
            for i in range(spatial)
        ]
        y[tuple(index)] += contrib
    y = y.reshape(batch, groups * cout_g, *full)
    if pad_type == "custom" and pad is not None:
        p = [int(v) for v in np.asarray(pad).tolist()]
        index = [slice(None), slice(None)] + [slice(p[2 * i], full[i] - p[2 * i + 1]) for i in range(spatial)]
        y = y[tuple(index)]
    elif pad_type not in ("valid", "custom"):
        raise InterpreterOpError(f"conv_transpose pad_type {pad_type!r} is not implemented")
    if output_shape is not None:
        target = [int(s) for s in np.asarray(output_shape).tolist()][-spatial:]
        if list(y.shape[2:]) != target:
            raise InterpreterOpError(f"conv_transpose output_shape {target} differs from the computed {list(y.shape[2:])}")
    if bias is not None:
        y = y + f32(bias).reshape((1, -1) + (1,) * spatial)
    return [y]


def _pool_windows(x: np.ndarray, kernel: list[int], strides: list[int], padding: list[tuple[int, int]], fill: float):
    if any(p != (0, 0) for p in padding):
        x = np.pad(x, [(0, 0), (0, 0)] + padding, constant_values=fill)
    out = [(x.shape[2 + i] - kernel[i]) // strides[i] + 1 for i in range(len(kernel))]
    windows = []
    for tap in np.ndindex(*kernel):
        index = [slice(None), slice(None)] + [
            slice(tap[i], tap[i] + (out[i] - 1) * strides[i] + 1, strides[i]) for i in range(len(kernel))
        ]
        windows.append(x[tuple(index)])
    return np.stack(windows, axis=0)


@op("avg_pool")
def _avg_pool(
    x: Any, kernel_sizes: Any, strides: Any, pad_type: str, pad: Any = None, exclude_padding_from_average: Any = False,
    ceil_mode: Any = False,
) -> list[Any]:
    if bool(ceil_mode):
        raise InterpreterOpError("avg_pool with ceil_mode is not implemented")
    x = f32(x)
    kernel = [int(k) for k in np.asarray(kernel_sizes).tolist()]
    strides = [int(s) for s in np.asarray(strides).tolist()]
    padding = _conv_padding(pad_type, pad, tuple(x.shape[2:]), tuple(kernel), strides, [1] * len(kernel))
    windows = _pool_windows(x, kernel, strides, padding, 0.0)
    if bool(exclude_padding_from_average):
        ones = _pool_windows(np.ones_like(x[:1, :1]), kernel, strides, padding, 0.0)
        return [windows.sum(axis=0) / ones.sum(axis=0)]
    return [windows.mean(axis=0)]


@op("max_pool")
def _max_pool(x: Any, kernel_sizes: Any, strides: Any, pad_type: str, pad: Any = None, ceil_mode: Any = False) -> list[Any]:
    if bool(ceil_mode):
        raise InterpreterOpError("max_pool with ceil_mode is not implemented")
    x = f32(x)
    kernel = [int(k) for k in np.asarray(kernel_sizes).tolist()]
    strides = [int(s) for s in np.asarray(strides).tolist()]
    padding = _conv_padding(pad_type, pad, tuple(x.shape[2:]), tuple(kernel), strides, [1] * len(kernel))
    return [_pool_windows(x, kernel, strides, padding, -np.inf).max(axis=0)]


# -- resampling ----------------------------------------------------------------------------------

@op("upsample_nearest_neighbor")
def _upsample_nearest(x: Any, scale_factor_height: Any = 1, scale_factor_width: Any = 1) -> list[Any]:
    x = np.asarray(x)
    sh, sw = float(scale_factor_height), float(scale_factor_width)
    h, w = x.shape[-2:]
    oh, ow = int(math.floor(h * sh)), int(math.floor(w * sw))
    rows = np.minimum(np.floor(np.arange(oh) / sh).astype(np.int64), h - 1)
    cols = np.minimum(np.floor(np.arange(ow) / sw).astype(np.int64), w - 1)
    return [x[..., rows[:, None], cols[None, :]]]


@op("resize_nearest_neighbor")
def _resize_nearest(x: Any, target_size_height: Any, target_size_width: Any) -> list[Any]:
    x = np.asarray(x)
    h, w = x.shape[-2:]
    oh, ow = int(target_size_height), int(target_size_width)
    rows = np.minimum(np.floor(np.arange(oh) * (h / oh)).astype(np.int64), h - 1)
    cols = np.minimum(np.floor(np.arange(ow) * (w / ow)).astype(np.int64), w - 1)
    return [x[..., rows[:, None], cols[None, :]]]


def _grid(n_in: int, n_out: int, mode: str) -> np.ndarray:
    """Source coordinates of a 1-D bilinear resize, per MIL's sampling modes."""
    i = np.arange(n_out, dtype=np.float64)
    if mode in ("STRICT_ALIGN_CORNERS", "ALIGN_CORNERS"):
        if n_out == 1:
            g = np.array([(n_in - 1) / 2.0 if mode == "ALIGN_CORNERS" else 0.0])
        else:
            g = i * (n_in - 1) / (n_out - 1)
    elif mode == "DEFAULT":
        g = i * ((n_in - n_in / n_out) / (n_out - 1)) if n_out > 1 else np.zeros(1)
    elif mode == "UNALIGN_CORNERS":
        spacing = n_in / n_out
        g = i * spacing + 0.5 * spacing - 0.5
    elif mode == "OFFSET_CORNERS":
        delta = max(1, n_in - 1) / n_out
        g = 0.5 * delta + i * delta
    else:
        raise InterpreterOpError(f"bilinear sampling mode {mode!r} is not implemented")
    return np.clip(g, 0.0, n_in - 1)


def _bilinear(x: np.ndarray, out_h: int, out_w: int, mode: str) -> np.ndarray:
    x = f32(x)
    h, w = x.shape[-2:]
    gy, gx = _grid(h, out_h, mode), _grid(w, out_w, mode)
    y0 = np.floor(gy).astype(np.int64)
    x0 = np.floor(gx).astype(np.int64)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    wy = (gy - y0).astype(np.float32)[:, None]
    wx = (gx - x0).astype(np.float32)[None, :]
    top = x[..., y0[:, None], x0[None, :]] * (1 - wx) + x[..., y0[:, None], x1[None, :]] * wx
    bottom = x[..., y1[:, None], x0[None, :]] * (1 - wx) + x[..., y1[:, None], x1[None, :]] * wx
    return top * (1 - wy) + bottom * wy


@op("upsample_bilinear")
def _upsample_bilinear(
    x: Any, scale_factor_height: Any = 1, scale_factor_width: Any = 1, align_corners: Any = True,
    half_pixel_centers: Any = None,
) -> list[Any]:
    x = np.asarray(x)
    h, w = x.shape[-2:]
    oh = int(math.floor(h * float(scale_factor_height)))
    ow = int(math.floor(w * float(scale_factor_width)))
    if bool(align_corners):
        return [_bilinear(x, oh, ow, "STRICT_ALIGN_CORNERS")]
    if half_pixel_centers is None or bool(half_pixel_centers):
        return [_bilinear(x, oh, ow, "UNALIGN_CORNERS")]
    return [_bilinear(x, oh, ow, "DEFAULT")]


@op("resize_bilinear")
def _resize_bilinear(x: Any, target_size_height: Any = 1, target_size_width: Any = 1, sampling_mode: str = "DEFAULT") -> list[Any]:
    return [_bilinear(np.asarray(x), int(target_size_height), int(target_size_width), str(sampling_mode))]


# -- compressed weights (constexpr ops: evaluated once at load, like Core ML does) ----------------

def unpack_indices(packed: np.ndarray, nbits: int, count: int) -> np.ndarray:
    """Unpack ``count`` little-endian ``nbits``-wide indices from a uint8 byte string.

    Core ML packs bit fields LSB first within each byte, continuing into the next byte.
    """
    bits = np.unpackbits(np.asarray(packed, dtype=np.uint8), bitorder="little")[: nbits * count]
    bits = bits.reshape(count, nbits).astype(np.uint16)
    return (bits << np.arange(nbits, dtype=np.uint16)).sum(axis=1)


@op("constexpr_lut_to_dense")
def _lut_to_dense(indices: Any, lut: Any, shape: Any = None, vector_axis: Any = None) -> list[Any]:
    lut = np.asarray(lut)
    if shape is not None:
        # iOS16 form: one 1-D table, indices packed LSB-first into bytes.
        if lut.ndim != 1:
            raise InterpreterOpError(f"iOS16 constexpr_lut_to_dense needs a 1-d look-up table, got shape {lut.shape}")
        nbits = int(round(math.log2(lut.size)))
        shape = [int(s) for s in np.asarray(shape).tolist()]
        idx = unpack_indices(np.asarray(indices), nbits, int(np.prod(shape)))
        return [lut[idx].reshape(shape)]
    # iOS18 form: unpacked indices of rank K, tables of shape (groups per dim..., palettes, vector size).
    idx = np.asarray(indices).astype(np.int64)
    rank = idx.ndim
    if lut.ndim != rank + 2:
        raise InterpreterOpError(f"constexpr_lut_to_dense: look-up table rank {lut.ndim} does not fit indices rank {rank}")
    if lut.shape[-1] != 1:
        raise InterpreterOpError("constexpr_lut_to_dense with vector palettization (VECTOR_SIZE > 1) is not implemented")
    blocks = [idx.shape[i] // lut.shape[i] for i in range(rank)]
    groups = np.ix_(*[np.arange(idx.shape[i]) // blocks[i] for i in range(rank)])
    return [lut[..., 0][tuple(groups) + (idx,)]]


@op("constexpr_blockwise_shift_scale")
def _blockwise_shift_scale(data: Any, scale: Any, offset: Any = None) -> list[Any]:
    """iOS18 block-wise dequantisation: ``scale * (data - offset)``, one scale per block."""
    data = np.asarray(data).astype(np.float32)
    scale = np.asarray(scale, dtype=np.float32)

    def expand(values: np.ndarray) -> np.ndarray:
        for axis in range(data.ndim):
            values = np.repeat(values, data.shape[axis] // values.shape[axis], axis=axis)
        return values

    if offset is not None:
        data = data - expand(np.asarray(offset, dtype=np.float32))
    return [data * expand(scale)]


@op("constexpr_affine_dequantize")
def _affine_dequantize(quantized_data: Any, zero_point: Any, scale: Any, axis: Any) -> list[Any]:
    q = np.asarray(quantized_data)
    axis = _axis(axis, q.ndim)

    def along_axis(v: Any) -> np.ndarray:
        v = np.asarray(v, dtype=np.float32)
        if v.ndim == 0 or v.size == 1:
            return v.reshape(())
        shape = [1] * q.ndim
        shape[axis] = v.size
        return v.reshape(shape)

    return [(q.astype(np.float32) - along_axis(zero_point)) * along_axis(scale)]


@op("constexpr_cast")
def _constexpr_cast(source_val: Any, output_dtype: str) -> list[Any]:
    from .program import numpy_dtype

    return [np.asarray(source_val).astype(numpy_dtype(output_dtype))]


@op("constexpr_sparse_to_dense")
def _sparse_to_dense(nonzero_data: Any, mask: Any, shape: Any) -> list[Any]:
    shape = [int(s) for s in np.asarray(shape).tolist()]
    flat = np.zeros(int(np.prod(shape)), dtype=np.asarray(nonzero_data).dtype)
    bits = np.unpackbits(np.asarray(mask, dtype=np.uint8), bitorder="little")[: flat.size]
    flat[np.flatnonzero(bits)] = np.asarray(nonzero_data)
    return [flat.reshape(shape)]


CONSTEXPR_OPS = frozenset(name for name in OPS if name.startswith("constexpr_"))

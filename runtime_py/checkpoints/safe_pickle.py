"""Read a ``torch.save`` archive without executing anything from it.

The official ``lora.pkl`` stores a whole module object of the authors' own class. Unpickling it
normally imports that class (and whatever else the file names) and calls arbitrary globals: a
weights file could run ``os.system``. ``torch.load`` is never used: it hands TorchScript archives to
``torch.jit.load`` (which runs their code), reads legacy streams with any pickle module and inflates
compressed records without a limit. Instead :func:`safe_torch_load`

1. checks the file is exactly a ``torch.save`` zip archive (:mod:`.torch_archive`: stored records
   only, no TorchScript, sizes inside the file),
2. unpickles ``data.pkl`` with the restricted :class:`Unpickler` below, and
3. rebuilds every tensor itself from the storage records, checking that (size, stride, offset)
   lie inside the storage, that each storage's byte count matches its record, and that the
   tensors together do not describe more than twice the storage bytes the file holds (a stride-0
   view of a few bytes cannot become a 14 GB tensor when copied).

In the unpickler every global the pickle names goes through :meth:`Unpickler.find_class`:

* a short whitelist of tensor-rebuild functions (our checked versions) and plain data types
  resolves to a real object;
* every other global becomes an inert placeholder class that is never imported. A placeholder can
  be instantiated the way pickle rebuilds ordinary objects (``NEWOBJ`` = ``cls.__new__`` then
  ``BUILD`` = ``__setstate__``); the placeholder records the state and runs nothing. Calling a
  placeholder (``REDUCE``, ``INST``, ``OBJ``), which is how a malicious pickle runs code, raises
  :class:`UnsafeCheckpointError` naming the global. A few known data classes that pickle through a
  call (diffusers' ``FrozenDict``, ``functools.partial``, ``pathlib`` paths) are allowed to be
  "called": their placeholder records the arguments, still without importing anything.

The stack machine is also guarded: ``REDUCE``/``NEWOBJ`` only accept whitelisted callables and
placeholders, ``BUILD``/``SETITEMS``/``APPENDS`` only mutate placeholders and plain containers,
dict keys and set members must be of types whose hashing is cheap and cannot be made to collide
(strings, small ints, short tuples of strings), MARK nesting is capped, and the total work (opcodes,
with sets weighted by their size) is capped. Error messages describe pickled values with
:func:`~.errors.short_repr`, whose work is bounded.

:func:`module_tensors` then walks a placeholder ``nn.Module`` (its ``_parameters``, persistent
``_buffers`` and ``_modules``) into a flat state dict, iteratively, with cycle detection and caps
on depth and module count.
"""

from __future__ import annotations

import _compat_pickle
import collections
import io
import math
import pickle
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from .errors import CheckpointError, CheckpointNotFoundError, CorruptCheckpointError, UnsafeCheckpointError, short_repr
from .torch_archive import TorchArchive, open_torch_archive

__all__ = [
    "MAX_GLOBALS",
    "MAX_MODULE_DEPTH",
    "MAX_MODULES",
    "MAX_PICKLE_WORK",
    "MAX_TENSORS",
    "InertObject",
    "Unpickler",
    "inert_global_name",
    "load",
    "loads",
    "module_tensors",
    "safe_torch_load",
]

# Limits. A MagicBokeh lora.pkl needs ~10^5 opcodes, a few thousand tensors and a module tree
# ~10 levels deep; the caps leave a wide margin and bound the memory and time a hostile file
# can ask for (each unit of pickle work creates at most ~100 bytes of Python objects).
MAX_PICKLE_WORK = 2_000_000
MAX_MARK_DEPTH = 1_000
MAX_GLOBALS = 10_000  # distinct classes a pickle may name (a diffusers module names a few dozen)
MAX_TENSORS = 200_000
MAX_TENSOR_DIMS = 32
MAX_MODULES = 100_000
MAX_MODULE_DEPTH = 64
MAX_KEY_PARTS = 1_000  # nodes of a tuple used as a dict key / set member
TENSOR_BYTES_FACTOR = 2  # tensors may describe at most this multiple of the storage bytes (+ slack)
TENSOR_BYTES_SLACK = 1 << 20
_SMALL_INT = 1 << 60

# Globals that pickle through a call but only carry data: their placeholders accept REDUCE and
# record the arguments (still inert, nothing imported). diffusers' FrozenDict (an OrderedDict
# subclass) reduces to ``FrozenDict()``; ``functools.partial`` appears when a module was saved
# with gradient checkpointing enabled; paths may sit in a module's attributes.
DATA_GLOBALS = frozenset(
    {
        "diffusers.configuration_utils.FrozenDict",
        "functools.partial",
        "pathlib.Path",
        "pathlib.PosixPath",
        "pathlib.WindowsPath",
        "pathlib.PurePath",
        "pathlib.PurePosixPath",
        "pathlib.PureWindowsPath",
    }
)


# -- placeholders -----------------------------------------------------------------------------
class _InertType(type):
    """Metaclass of placeholders: calling a placeholder class is how a pickle runs code."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        if cls.inert_global in DATA_GLOBALS:
            return cls.__new__(cls, *args, **kwargs)
        raise UnsafeCheckpointError(
            f"the pickle calls {cls.inert_global[:200]}{_describe_args(args)}; a weights file has no reason "
            "to call it, so it was refused and nothing was executed"
        )


class InertObject(metaclass=_InertType):
    """An instance of a class named by a pickle, rebuilt without importing or running that class.

    ``inert_args`` holds the ``NEWOBJ``/data-call arguments, ``inert_state`` the ``BUILD`` state
    (for a module: its ``__dict__``), ``inert_items`` / ``inert_list`` what ``SETITEMS`` /
    ``APPENDS`` added (dict and list subclasses).
    """

    inert_global = "<unknown>"

    def __new__(cls, *args: Any, **kwargs: Any) -> "InertObject":
        obj = object.__new__(cls)
        obj.__dict__.update(inert_args=args, inert_kwargs=kwargs, inert_state=None, inert_items={}, inert_list=[])
        return obj

    def __setstate__(self, state: Any) -> None:
        self.__dict__["inert_state"] = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.__dict__["inert_items"][key] = value

    def append(self, value: Any) -> None:
        self.__dict__["inert_list"].append(value)

    def extend(self, values: Any) -> None:
        self.__dict__["inert_list"].extend(values)

    def add(self, value: Any) -> None:
        self.__dict__["inert_list"].append(value)

    def __repr__(self) -> str:
        return f"<inert {self.inert_global[:100]}>"


def inert_global_name(obj: Any) -> str | None:
    """``module.name`` of the class a placeholder instance stands for (None for other objects)."""
    return obj.inert_global if isinstance(obj, InertObject) else None


def _describe_args(args: Any) -> str:
    text = short_repr(args, 120)
    return text if text.startswith("(") else f"({text})"


# -- what hashing may see -----------------------------------------------------------------------
def _check_key(key: Any) -> None:
    """Refuse dict keys / set members whose hashing is expensive or can be made to collide.

    Hashing a tuple visits every element again for each reference (a 60-level tuple DAG takes
    2^60 steps), and ints, floats and tuples of them can be chosen to share one hash value, which
    makes dict insertion quadratic. Strings and bytes have randomised hashes; placeholders and
    dtypes hash by identity.
    """
    todo = [key]
    parts = 0
    while todo:
        item = todo.pop()
        parts += 1
        if parts > MAX_KEY_PARTS:
            raise UnsafeCheckpointError(f"the pickle uses a dict key or set member with more than {MAX_KEY_PARTS} parts")
        kind = type(item)
        if kind is str or kind is bytes or item is None or kind is bool:
            continue
        if kind is tuple:
            todo.extend(item)
            continue
        if item is key and (isinstance(item, (InertObject, torch.dtype)) or (kind is int and -_SMALL_INT < item < _SMALL_INT)):
            continue
        raise UnsafeCheckpointError(
            f"the pickle uses a {kind.__name__} {short_repr(item)} as a dict key or set member; only strings, bytes, "
            "small ints and tuples of strings are allowed (others can be crafted to hash slowly or collide)"
        )


def _check_keys(items: Any) -> None:
    for item in items:
        _check_key(item)


# -- whitelisted globals ----------------------------------------------------------------------
class _StorageType:
    """Stands for ``torch.FloatStorage`` & co. in a storage's persistent id: only its dtype matters."""

    __slots__ = ("name", "dtype")

    def __init__(self, name: str, dtype: torch.dtype):
        self.name, self.dtype = name, dtype

    def __repr__(self) -> str:
        return f"<storage type {self.name}>"


_STORAGE_TYPES = {
    name: _StorageType(name, dtype)
    for name, dtype in {
        "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
        "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
        "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
        "BoolStorage": torch.bool, "UntypedStorage": torch.uint8,
    }.items()
}


class _LoadedStorage:
    """One storage record of the archive, read into a uint8 tensor, with the dtype it holds."""

    __slots__ = ("key", "dtype", "numel", "data")

    def __init__(self, key: str, dtype: torch.dtype, numel: int, data: torch.Tensor):
        self.key, self.dtype, self.numel, self.data = key, dtype, numel, data


class _TensorBudget:
    """Counts the tensors rebuilt from one archive and the bytes they describe."""

    def __init__(self, storage_bytes: int):
        self.limit = TENSOR_BYTES_FACTOR * storage_bytes + TENSOR_BYTES_SLACK
        self.bytes = 0
        self.count = 0


def _int_in(value: Any, low: int, high: int, what: str) -> int:
    if type(value) is not int or not low <= value <= high:
        raise CorruptCheckpointError(f"malformed tensor: {what} is {short_repr(value)}, expected an int in [{low}, {high}]")
    return value


def _checked_tensor(budget: _TensorBudget | None, storage: Any, offset: Any, size: Any, stride: Any) -> torch.Tensor:
    """A tensor viewing ``storage``, after checking the view lies inside it and fits the budget."""
    if budget is None:
        raise UnsafeCheckpointError("the pickle rebuilds a tensor outside a torch.save archive")
    if not isinstance(storage, _LoadedStorage):
        raise UnsafeCheckpointError(f"the pickle rebuilds a tensor from a {type(storage).__name__}, not from a stored storage")
    if not isinstance(size, (tuple, list, torch.Size)) or not isinstance(stride, (tuple, list)):
        raise CorruptCheckpointError("malformed tensor: size and stride must be tuples")
    if len(size) != len(stride) or len(size) > MAX_TENSOR_DIMS:
        raise CorruptCheckpointError(f"malformed tensor: {len(size)} sizes, {len(stride)} strides (at most {MAX_TENSOR_DIMS})")
    offset = _int_in(offset, 0, storage.numel, "the storage offset")
    dims = [_int_in(n, 0, 1 << 62, "a size") for n in size]
    steps = [_int_in(s, 0, 1 << 62, "a stride") for s in stride]
    numel = math.prod(dims)
    if numel:
        last = offset + sum((n - 1) * s for n, s in zip(dims, steps))
        if last >= storage.numel:
            raise CorruptCheckpointError(
                f"a tensor of size {tuple(dims)}, stride {tuple(steps)} at offset {offset} reaches element {last} of "
                f"storage {storage.key}, which holds {storage.numel}"
            )
    budget.count += 1
    budget.bytes += numel * storage.dtype.itemsize
    if budget.count > MAX_TENSORS:
        raise CorruptCheckpointError(f"the archive holds more than {MAX_TENSORS} tensors")
    if budget.bytes > budget.limit:
        raise CorruptCheckpointError(
            f"the tensors describe {budget.bytes} bytes, more than the {budget.limit} allowed ({TENSOR_BYTES_FACTOR}x the "
            "storage bytes the file holds, plus 1 MiB: overlapping or stride-0 views); refused before anything is copied"
        )
    flat = storage.data.view(storage.dtype) if storage.numel else torch.empty(0, dtype=storage.dtype)
    return flat.as_strided(dims, steps, offset) if numel else torch.empty(dims, dtype=storage.dtype)


def _no_hooks(hooks: Any) -> None:
    if hooks is not None and (not isinstance(hooks, (dict, collections.OrderedDict)) or hooks):
        raise UnsafeCheckpointError("the pickle attaches backward hooks to a tensor; torch.save never stores any")


def _rebuild_tensor(budget: _TensorBudget | None, storage: Any, offset: Any, size: Any, stride: Any) -> torch.Tensor:
    return _checked_tensor(budget, storage, offset, size, stride)


def _rebuild_tensor_v2(
    budget: _TensorBudget | None, storage: Any, offset: Any, size: Any, stride: Any,
    requires_grad: Any = False, backward_hooks: Any = None, metadata: Any = None,
) -> torch.Tensor:
    """torch's ``_rebuild_tensor_v2`` without hooks or metadata; ``requires_grad`` is not needed."""
    _no_hooks(backward_hooks)
    if metadata:
        raise UnsafeCheckpointError("the pickle sets tensor metadata (conj/neg bits), which weights files do not use")
    return _checked_tensor(budget, storage, offset, size, stride)


def _rebuild_parameter(budget: _TensorBudget | None, data: Any, requires_grad: Any, backward_hooks: Any) -> torch.Tensor:
    """A parameter comes back as its plain data tensor (only the values are used)."""
    if not isinstance(data, torch.Tensor):
        raise CorruptCheckpointError(f"malformed parameter: its data is a {type(data).__name__}")
    _no_hooks(backward_hooks)
    return data


def _rebuild_parameter_with_state(
    budget: _TensorBudget | None, data: Any, requires_grad: Any, backward_hooks: Any, state: Any
) -> torch.Tensor:
    """Like :func:`_rebuild_parameter`; ``state`` (Python attributes of the parameter) is dropped, never set."""
    if state is not None and not isinstance(state, (dict, tuple)):
        raise CorruptCheckpointError(f"malformed parameter state: a {type(state).__name__}")
    return _rebuild_parameter(budget, data, requires_grad, backward_hooks)


def _rebuild_from_type_v2(budget: _TensorBudget | None, func: Any, new_type: Any, args: Any, state: Any) -> torch.Tensor:
    """torch's wrapper for tensors with Python attributes: ``func`` checked, the attributes dropped."""
    if func not in _TENSOR_REBUILDERS:
        raise UnsafeCheckpointError(f"the pickle rebuilds a tensor through {short_repr(func)}, which is not a tensor rebuild function")
    if new_type not in (torch.Tensor, torch.nn.Parameter):
        raise UnsafeCheckpointError(f"the pickle rebuilds a tensor as type {short_repr(new_type)}; only plain tensors are allowed")
    if not isinstance(args, tuple):
        raise CorruptCheckpointError("malformed tensor: rebuild arguments are not a tuple")
    return func(budget, *args)


_TENSOR_REBUILDERS: tuple[Callable[..., Any], ...] = (
    _rebuild_tensor,
    _rebuild_tensor_v2,
    _rebuild_parameter,
    _rebuild_parameter_with_state,
)


def _latin1_bytes(text: Any, encoding: Any = "latin1") -> bytes:
    """Protocol 2 pickles ``bytes`` as ``_codecs.encode(text, "latin1")``; allow only that."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise UnsafeCheckpointError(f"the pickle calls _codecs.encode with encoding {short_repr(encoding)}; only latin1 is allowed")
    return text.encode("latin1")


def _size(*args: Any) -> torch.Size:
    if len(args) != 1 or not isinstance(args[0], (tuple, list)) or len(args[0]) > MAX_TENSOR_DIMS:
        raise CorruptCheckpointError("malformed torch.Size: expected one short tuple of ints")
    return torch.Size([_int_in(n, 0, 1 << 62, "a torch.Size entry") for n in args[0]])


def _device(*args: Any) -> torch.device:
    if not 1 <= len(args) <= 2 or not isinstance(args[0], str) or len(args[0]) > 64 or (
        len(args) == 2 and (type(args[1]) is not int or not 0 <= args[1] < 1 << 16)
    ):
        raise CorruptCheckpointError(f"malformed torch.device{_describe_args(args)}")
    return torch.device(*args)


def _collection(kind: type) -> Callable[..., Any]:
    """``set`` / ``frozenset`` / ``OrderedDict`` with their members' hashing checked first."""

    def build(*args: Any) -> Any:
        if not args:
            return kind()
        if len(args) != 1 or not isinstance(args[0], (list, tuple, dict)):
            raise CorruptCheckpointError(f"malformed {kind.__name__}: expected one list, tuple or dict argument")
        items = args[0]
        if kind is collections.OrderedDict and not isinstance(items, dict):
            if not all(isinstance(pair, (tuple, list)) and len(pair) == 2 for pair in items):
                raise CorruptCheckpointError("malformed OrderedDict: expected (key, value) pairs")
            _check_keys(pair[0] for pair in items)
        elif not isinstance(items, dict):
            _check_keys(items)
        return kind(items)

    build.__name__ = kind.__name__
    return build


_REBUILD_NAMES = {
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter_with_state,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
}
_CONTEXT_CALLABLES = frozenset(_REBUILD_NAMES.values())

# (module, name) -> object that may be CALLED by REDUCE. Only what torch.save of a dict of
# tensors and a diffusers module needs: no bytearray (a 33-byte pickle could allocate gigabytes),
# no complex, nothing that touches files or imports.
_ALLOWED_CALLABLES: dict[tuple[str, str], Any] = {
    **_REBUILD_NAMES,
    ("torch", "Size"): _size,
    ("torch", "device"): _device,
    ("collections", "OrderedDict"): _collection(collections.OrderedDict),
    ("builtins", "set"): _collection(set),
    ("builtins", "frozenset"): _collection(frozenset),
    ("_codecs", "encode"): _latin1_bytes,
}

# (module, name) -> object that may only be passed around as a value (never called).
_ALLOWED_VALUES: dict[tuple[str, str], Any] = {
    ("torch", "Tensor"): torch.Tensor,
    ("torch.nn.parameter", "Parameter"): torch.nn.Parameter,
    **{("torch", name): storage_type for name, storage_type in _STORAGE_TYPES.items()},
}

_CALLABLE_OBJECTS = {id(obj) for obj in _ALLOWED_CALLABLES.values()}
_CONTAINER_TYPES = (dict, list, set, collections.OrderedDict)
_MODULE_RENAMES = {"torch.tensor": "torch._tensor"}  # names older torch versions wrote
# torch.<dtype> names a pickle may use. A fixed list: getattr(torch, <any name>) could trigger
# torch's lazy submodule imports.
_DTYPES = {
    name: getattr(torch, name)
    for name in ("float32", "float", "float64", "double", "float16", "half", "bfloat16", "int64", "long", "int32",
                 "int", "int16", "short", "int8", "uint8", "bool", "complex64", "cfloat", "complex128", "cdouble")
    if isinstance(getattr(torch, name, None), torch.dtype)
}


def _resolve_global(module: str, name: str) -> Any | None:
    key = (_MODULE_RENAMES.get(module, module), name)
    if key in _ALLOWED_CALLABLES:
        return _ALLOWED_CALLABLES[key]
    if key in _ALLOWED_VALUES:
        return _ALLOWED_VALUES[key]
    if key[0] == "torch" and name in _DTYPES:
        return _DTYPES[name]
    return None


# -- the unpickler ----------------------------------------------------------------------------
_OPCODE_COST = {
    **{op[0]: 4 for op in (pickle.EMPTY_SET, pickle.ADDITEMS, pickle.FROZENSET)},
    **{op[0]: 8 for op in (pickle.REDUCE, pickle.NEWOBJ, pickle.NEWOBJ_EX, pickle.INST, pickle.OBJ, pickle.BUILD)},
}


def _budgeted(handler: Callable[[Any], None], cost: int) -> Callable[[Any], None]:
    def run(self: "Unpickler") -> None:
        self._work += cost
        if self._work > MAX_PICKLE_WORK:
            raise UnsafeCheckpointError(
                f"the pickle asks for more than {MAX_PICKLE_WORK} steps of work; a weights file needs far fewer"
            )
        handler(self)

    return run


class Unpickler(pickle._Unpickler):  # type: ignore[name-defined]
    """Pure-Python unpickler whose globals and object-building opcodes are restricted.

    The pure-Python implementation is used (not ``_pickle``) so that every opcode that calls or
    mutates something can be checked; ``torch.save`` keeps tensor data outside the pickle, so the
    pickle itself is small and speed does not matter. Tensors can only be rebuilt by
    :func:`safe_torch_load`, which supplies the archive's storages.
    """

    dispatch = dict(pickle._Unpickler.dispatch)  # type: ignore[attr-defined]

    def __init__(self, file: Any, **kwargs: Any):
        kwargs.setdefault("encoding", "utf-8")  # what torch.load uses for Python-2 strings
        super().__init__(file, **kwargs)
        self._placeholders: dict[str, type] = {}
        self._work = 0
        self._budget: _TensorBudget | None = None

    def find_class(self, module: str, name: str) -> Any:
        if not isinstance(module, str) or not isinstance(name, str):
            raise CorruptCheckpointError("the pickle names a global with a non-string module or name")
        if self.proto < 3 and self.fix_imports:  # Python-2 names that protocol 2 writes (__builtin__.set)
            if (module, name) in _compat_pickle.NAME_MAPPING:
                module, name = _compat_pickle.NAME_MAPPING[(module, name)]
            elif module in _compat_pickle.IMPORT_MAPPING:
                module = _compat_pickle.IMPORT_MAPPING[module]
        allowed = _resolve_global(module, name)
        if allowed is not None:
            return allowed
        qualified = f"{module}.{name}"
        placeholder = self._placeholders.get(qualified)
        if placeholder is None:
            if len(self._placeholders) >= MAX_GLOBALS:  # each placeholder is a class (~1 KB)
                raise UnsafeCheckpointError(f"the pickle names more than {MAX_GLOBALS} different classes")
            placeholder = _InertType(f"Inert[{qualified[:200]}]", (InertObject,), {"inert_global": qualified})
            self._placeholders[qualified] = placeholder
        return placeholder

    def persistent_load(self, pid: Any) -> Any:
        raise CorruptCheckpointError("the pickle refers to external data outside a torch.save archive")

    # -- guarded opcodes --------------------------------------------------------------------
    def _call(self, func: Any, args: Any) -> Any:
        if isinstance(func, _InertType):
            if not isinstance(args, tuple):
                raise CorruptCheckpointError("malformed pickle: call arguments are not a tuple")
            return func(*args)  # data classes record, everything else raises UnsafeCheckpointError
        if id(func) not in _CALLABLE_OBJECTS:
            raise UnsafeCheckpointError(f"the pickle calls {short_repr(func)}, which is not on the whitelist")
        if not isinstance(args, tuple):
            raise CorruptCheckpointError("malformed pickle: REDUCE arguments are not a tuple")
        if func in _CONTEXT_CALLABLES:
            return func(self._budget, *args)
        return func(*args)

    def load_reduce(self) -> None:
        args = self.stack.pop()
        self.stack[-1] = self._call(self.stack[-1], args)

    dispatch[pickle.REDUCE[0]] = load_reduce

    def _instantiate(self, klass: Any, args: list) -> None:  # INST / OBJ (protocols 0 and 1)
        if isinstance(klass, _InertType) and not args:
            self.append(klass.__new__(klass))
        else:
            self.append(self._call(klass, tuple(args)))

    def _new(self, cls: Any, args: Any, kwargs: Any) -> Any:
        if not isinstance(args, tuple) or not isinstance(kwargs, dict):
            raise CorruptCheckpointError("malformed pickle: NEWOBJ arguments are not a tuple and a dict")
        if isinstance(cls, _InertType):
            if not all(isinstance(k, str) for k in kwargs):
                raise CorruptCheckpointError("malformed pickle: NEWOBJ keyword names are not strings")
            return cls.__new__(cls, *args, **kwargs)
        raise UnsafeCheckpointError(f"the pickle creates an object of {short_repr(cls)} with NEWOBJ, which is not allowed")

    def load_newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._new(cls, args, {}))

    dispatch[pickle.NEWOBJ[0]] = load_newobj

    def load_newobj_ex(self) -> None:
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._new(cls, args, kwargs))

    dispatch[pickle.NEWOBJ_EX[0]] = load_newobj_ex

    def load_build(self) -> None:
        state = self.stack.pop()
        inst = self.stack[-1]
        if isinstance(inst, InertObject):
            inst.__setstate__(state)
        elif state:
            raise UnsafeCheckpointError(f"the pickle sets the state of a {type(inst).__name__} object, which is not allowed")

    dispatch[pickle.BUILD[0]] = load_build

    def load_out_of_band(self) -> None:
        # Protocol 5's BYTEARRAY8 allocates its declared length (up to 2**63) BEFORE reading the
        # bytes, so 9 bytes of pickle could ask for gigabytes; torch.save writes protocol 2 and
        # never uses these opcodes (nor out-of-band buffers).
        raise UnsafeCheckpointError("the pickle uses protocol-5 bytearray/buffer opcodes, which torch.save never writes")

    for _opcode in (pickle.BYTEARRAY8, pickle.NEXT_BUFFER, pickle.READONLY_BUFFER):
        dispatch[_opcode[0]] = load_out_of_band
    del _opcode

    def load_mark(self) -> None:
        if len(self.metastack) >= MAX_MARK_DEPTH:
            raise UnsafeCheckpointError(f"the pickle nests more than {MAX_MARK_DEPTH} MARKs")
        super().load_mark()

    dispatch[pickle.MARK[0]] = load_mark

    def _check_container(self, target: Any, opcode: str) -> None:
        if not isinstance(target, (InertObject, *_CONTAINER_TYPES)):
            raise UnsafeCheckpointError(f"the pickle applies {opcode} to a {type(target).__name__} object, which is not allowed")

    def _marked_target(self) -> Any:
        return self.metastack[-1][-1] if self.metastack and self.metastack[-1] else None

    def load_dict(self) -> None:
        items = self.stack
        _check_keys(items[0::2])
        super().load_dict()

    dispatch[pickle.DICT[0]] = load_dict

    def load_setitem(self) -> None:
        self._check_container(self.stack[-3], "SETITEM")
        _check_key(self.stack[-2])
        super().load_setitem()

    dispatch[pickle.SETITEM[0]] = load_setitem

    def load_setitems(self) -> None:
        self._check_container(self._marked_target(), "SETITEMS")
        _check_keys(self.stack[0::2])
        super().load_setitems()

    dispatch[pickle.SETITEMS[0]] = load_setitems

    def load_append(self) -> None:
        self._check_container(self.stack[-2], "APPEND")
        super().load_append()

    dispatch[pickle.APPEND[0]] = load_append

    def load_appends(self) -> None:
        self._check_container(self._marked_target(), "APPENDS")
        super().load_appends()

    dispatch[pickle.APPENDS[0]] = load_appends

    def load_additems(self) -> None:
        self._check_container(self._marked_target(), "ADDITEMS")
        _check_keys(self.stack)
        super().load_additems()

    dispatch[pickle.ADDITEMS[0]] = load_additems

    def load_frozenset(self) -> None:
        _check_keys(self.stack)
        super().load_frozenset()

    dispatch[pickle.FROZENSET[0]] = load_frozenset

    # Every opcode counts one unit of work, those that build bigger objects more, so that a unit
    # stands for at most ~80 bytes of Python objects: a set costs about four list slots, an
    # object (a placeholder with its state dicts) about eight.
    dispatch = {code: _budgeted(handler, _OPCODE_COST.get(code, 1)) for code, handler in dispatch.items()}


class _ArchiveUnpickler(Unpickler):
    """Reads ``data.pkl`` of a checked archive: storages come from its records, read once each."""

    def __init__(self, file: Any, archive: TorchArchive):
        super().__init__(file)
        self._archive = archive
        self._storages: dict[str, _LoadedStorage] = {}
        self._budget = _TensorBudget(archive.storage_bytes)

    def persistent_load(self, pid: Any) -> Any:
        if not isinstance(pid, tuple) or len(pid) != 5 or pid[0] not in ("storage", b"storage"):
            raise CorruptCheckpointError(f"unsupported persistent id {short_repr(pid)} (torch.save writes ('storage', ...))")
        _, storage_type, key, location, numel = pid
        if not isinstance(storage_type, _StorageType):
            raise UnsafeCheckpointError(f"the pickle names storage type {short_repr(storage_type)}, not a torch storage type")
        if not isinstance(key, str) or not isinstance(location, str) or len(location) > 64:
            raise CorruptCheckpointError(f"malformed storage id {short_repr(pid)}")
        nbytes = self._archive.storage_size(key)
        numel = _int_in(numel, 0, nbytes, "a storage's element count")
        if numel * storage_type.dtype.itemsize != nbytes:
            raise CorruptCheckpointError(
                f"storage {key[:20]} claims {numel} {storage_type.dtype} elements, but its record holds {nbytes} bytes"
            )
        loaded = self._storages.get(key)
        if loaded is None:
            data = torch.empty(nbytes, dtype=torch.uint8)
            if nbytes:
                self._archive.read(f"data/{key}", into=data.numpy())
            loaded = self._storages[key] = _LoadedStorage(key, storage_type.dtype, numel, data)
        elif loaded.dtype != storage_type.dtype:
            raise CorruptCheckpointError(f"storage {key[:20]} is used as both {loaded.dtype} and {storage_type.dtype}")
        return loaded


def _run(unpickler: Unpickler) -> Any:
    try:
        return unpickler.load()
    except CheckpointError:
        raise
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as err:  # noqa: BLE001 - every other parser failure means a malformed pickle
        raise CorruptCheckpointError(f"malformed pickle: {type(err).__name__}: {short_repr(str(err), 160)}") from None


def load(file: Any, **kwargs: Any) -> Any:
    """``pickle.load`` with the restricted :class:`Unpickler` (no tensors: they need an archive)."""
    return _run(Unpickler(file, **kwargs))


def loads(data: bytes, **kwargs: Any) -> Any:
    """``pickle.loads`` with the restricted :class:`Unpickler`."""
    return load(io.BytesIO(data), **kwargs)


# -- the torch.save front end -----------------------------------------------------------------
def safe_torch_load(path: Path | str) -> Any:
    """Read a ``torch.save`` zip archive without ``torch.load``; tensors come back on the CPU.

    Raises :class:`CheckpointNotFoundError`, :class:`UnsafeCheckpointError` (TorchScript, refused
    globals and calls) or :class:`CorruptCheckpointError` (any other format or damage), each with
    a one-line message that names the file.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointNotFoundError(f"checkpoint {path} does not exist")
    if not path.is_file():
        raise CheckpointNotFoundError(f"checkpoint {path} is not a file")
    try:
        with open_torch_archive(path) as archive:
            data = archive.read("data.pkl")
            return _run(_ArchiveUnpickler(io.BytesIO(data), archive))
    except CheckpointError as err:
        message = str(err)
        if str(path) not in message:
            message = f"{path}: {message}"
        raise type(err)(message) from None
    except OSError as err:
        raise CorruptCheckpointError(f"{path} cannot be read: {err.strerror or err}") from None


# -- recovering tensors from a pickled module --------------------------------------------------
def _short_name(name: str) -> str:
    return name if len(name) <= 60 else name[:57] + "..."


def _plain_tensor(value: Any, where: str, clones: dict[int, torch.Tensor]) -> torch.Tensor:
    """A fresh CPU tensor with no Python attributes or hooks (one copy per distinct tensor)."""
    if not isinstance(value, torch.Tensor) or type(value) not in (torch.Tensor, torch.nn.Parameter):
        raise CorruptCheckpointError(f"{where} is a {type(value).__name__}, expected a tensor")
    if value.layout != torch.strided or value.is_meta:
        raise CorruptCheckpointError(f"{where} is a {value.layout} / meta tensor, expected a dense tensor with data")
    clone = clones.get(id(value))
    if clone is None:
        clone = clones[id(value)] = value.detach().clone()  # detach() drops Parameter-ness, hooks, attributes
    return clone


def _unpack_state(state: Any) -> Any:
    if isinstance(state, tuple) and len(state) == 2:  # (dict, slotstate)
        return state[0]
    return state


def _state_mapping(state: Any, field: str, where: str) -> Mapping[str, Any]:
    state = _unpack_state(state)
    if not isinstance(state, Mapping):
        raise CorruptCheckpointError(f"{where} has no recoverable state (got {type(state).__name__})")
    value = state.get(field, {})
    if value is None:
        return {}
    if isinstance(value, InertObject):
        value = value.inert_items
    if not isinstance(value, Mapping):
        raise CorruptCheckpointError(f"{where}.{field} is a {type(value).__name__}, expected a dict")
    for key in value:
        if not isinstance(key, str):
            raise CorruptCheckpointError(f"{where}.{field} has a non-string key {short_repr(key)}")
    return value


def _non_persistent_names(state: Any, where: str) -> set[str]:
    state = _unpack_state(state)
    value = state.get("_non_persistent_buffers_set", set()) if isinstance(state, Mapping) else set()
    if isinstance(value, InertObject):
        value = value.inert_list
    if not isinstance(value, (set, frozenset, list, tuple)) or not all(isinstance(v, str) for v in value):
        raise CorruptCheckpointError(f"{where}._non_persistent_buffers_set is not a set of names")
    return set(value)


def module_tensors(obj: Any, prefix: str = "", *, where: str = "module") -> dict[str, torch.Tensor]:
    """Flat ``state_dict`` of a placeholder ``nn.Module`` (parameters + persistent buffers).

    Accepts a plain mapping of tensors too (a checkpoint that stored a state dict instead of a
    module object). Names follow ``nn.Module.state_dict``: ``<child>.<child>.<tensor>``. The tree
    is walked without recursion; a module that contains itself, a tree deeper than
    :data:`MAX_MODULE_DEPTH` or with more than :data:`MAX_MODULES` modules (or
    :data:`MAX_TENSORS` tensors) is a :class:`CorruptCheckpointError`. A tensor reached under
    several names is copied once.
    """
    out: dict[str, torch.Tensor] = {}
    clones: dict[int, torch.Tensor] = {}
    visited = 0
    # (object, name prefix, description, ids of its ancestors)
    todo: list[tuple[Any, str, str, tuple[int, ...]]] = [(obj, prefix, where, ())]
    while todo:
        node, pre, at, ancestors = todo.pop()
        visited += 1
        if visited > MAX_MODULES:
            raise CorruptCheckpointError(f"{where} has more than {MAX_MODULES} modules")
        if isinstance(node, Mapping):
            for key, value in node.items():
                if not isinstance(key, str):
                    raise CorruptCheckpointError(f"{at} has a non-string key {short_repr(key)}")
                out[pre + key] = _plain_tensor(value, f"{at}[{short_repr(key)}]", clones)
        else:
            if not isinstance(node, InertObject):
                raise CorruptCheckpointError(
                    f"{at} is a {type(node).__name__}, expected a pickled nn.Module or a dict of tensors"
                )
            state = node.inert_state
            if state is None or (isinstance(state, Mapping) and "_parameters" not in state):
                raise CorruptCheckpointError(
                    f"{at} ({short_repr(node.inert_global)}) is not a pickled nn.Module: it has no _parameters"
                )
            for name, value in _state_mapping(state, "_parameters", at).items():
                if value is not None:
                    out[pre + name] = _plain_tensor(value, f"{at}.{_short_name(name)}", clones)
            non_persistent = _non_persistent_names(state, at)
            for name, value in _state_mapping(state, "_buffers", at).items():
                if value is not None and name not in non_persistent:
                    out[pre + name] = _plain_tensor(value, f"{at}.{_short_name(name)}", clones)
            children = [(name, child) for name, child in _state_mapping(state, "_modules", at).items() if child is not None]
            if children and len(ancestors) + 2 > MAX_MODULE_DEPTH:  # the children would be one level too deep
                raise CorruptCheckpointError(f"{where}: the module tree is deeper than {MAX_MODULE_DEPTH} levels (at {at[:200]})")
            lineage = ancestors + (id(node),)
            for name, child in reversed(children):
                if id(child) in lineage:
                    raise CorruptCheckpointError(f"{at}.{_short_name(name)} contains itself (a cycle in the module tree)")
                todo.append((child, f"{pre}{name}.", f"{at}.{_short_name(name)}", lineage))
        if len(out) > MAX_TENSORS:
            raise CorruptCheckpointError(f"{where} has more than {MAX_TENSORS} tensors")
    return out

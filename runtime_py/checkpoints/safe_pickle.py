"""Read a ``torch.save`` pickle without executing anything from it.

The official ``lora.pkl`` stores a whole module object of the authors' own class. Unpickling it
normally imports that class (and whatever else the file names) and calls arbitrary globals: a
weights file could run ``os.system``. Here torch still handles the container (zip archive or the
legacy stream, storages, byte order) because this module is passed as ``torch.load``'s
``pickle_module``, but every global the pickle names goes through :meth:`Unpickler.find_class`:

* a short whitelist of tensor-rebuild functions and plain data types resolves to the real object;
* every other global becomes an inert placeholder class that is never imported. A placeholder can
  be instantiated the way pickle rebuilds ordinary objects (``NEWOBJ`` = ``cls.__new__`` then
  ``BUILD`` = ``__setstate__``); the placeholder records the state and runs nothing. Calling a
  placeholder (``REDUCE``, ``INST``, ``OBJ``), which is how a malicious pickle runs code, raises
  :class:`UnsafeCheckpointError` naming the global. A few known data classes that pickle through a
  call (diffusers' ``FrozenDict``, ``functools.partial``, ``pathlib`` paths) are allowed to be
  "called": their placeholder records the arguments, still without importing anything.

The stack machine is also guarded: ``REDUCE``/``NEWOBJ`` only accept whitelisted callables and
placeholders, and ``BUILD``/``SETITEMS``/``APPENDS`` only mutate placeholders and plain containers.

:func:`module_tensors` then walks a placeholder ``nn.Module`` (its ``_parameters``, persistent
``_buffers`` and ``_modules``) into a flat state dict.
"""

from __future__ import annotations

import _compat_pickle
import collections
import io
import os
import pickle
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from .errors import CheckpointNotFoundError, CorruptCheckpointError, UnsafeCheckpointError

__all__ = [
    "InertObject",
    "Unpickler",
    "inert_global_name",
    "load",
    "module_tensors",
    "safe_torch_load",
]

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
            obj = cls.__new__(cls, *args, **kwargs)
            return obj
        raise UnsafeCheckpointError(
            f"the pickle calls {cls.inert_global}{_describe_args(args)}; a weights file has no reason to "
            "call it, so it was refused and nothing was executed"
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
        return f"<inert {self.inert_global}>"


def inert_global_name(obj: Any) -> str | None:
    """``module.name`` of the class a placeholder instance stands for (None for other objects)."""
    return obj.inert_global if isinstance(obj, InertObject) else None


def _describe_args(args: tuple) -> str:
    text = repr(args)
    return text if len(text) <= 120 else text[:117] + "...)"


# -- whitelisted globals ----------------------------------------------------------------------
def _latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    """Protocol 2 pickles ``bytes`` as ``_codecs.encode(text, "latin1")``; allow only that."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise UnsafeCheckpointError(f"the pickle calls _codecs.encode with encoding {encoding!r}; only latin1 is allowed")
    return text.encode("latin1")


def _rebuild_from_type_v2(func: Any, new_type: Any, args: tuple, state: Any) -> Any:
    """torch's wrapper for tensors with Python attributes, with ``func`` checked first."""
    if func not in _TENSOR_REBUILDERS:
        raise UnsafeCheckpointError(f"the pickle rebuilds a tensor through {func!r}, which is not a tensor rebuild function")
    if new_type not in (torch.Tensor, torch.nn.Parameter):
        raise UnsafeCheckpointError(f"the pickle rebuilds a tensor as type {new_type!r}; only plain tensors are allowed")
    return torch._tensor._rebuild_from_type_v2(func, new_type, args, state)


_TENSOR_REBUILDERS: tuple[Callable[..., Any], ...] = (
    torch._utils._rebuild_tensor,
    torch._utils._rebuild_tensor_v2,
    torch._utils._rebuild_parameter,
    torch._utils._rebuild_parameter_with_state,
)

# (module, name) -> object that may be CALLED by REDUCE / NEWOBJ.
_ALLOWED_CALLABLES: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor"): torch._utils._rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): torch._utils._rebuild_parameter_with_state,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch", "Size"): torch.Size,
    ("torch", "device"): torch.device,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "bytearray"): bytearray,
    ("builtins", "complex"): complex,
    ("_codecs", "encode"): _latin1_bytes,
}

# (module, name) -> object that may only be passed around as a value (never called).
_ALLOWED_VALUES: dict[tuple[str, str], Any] = {
    ("torch", "Tensor"): torch.Tensor,
    ("torch.nn.parameter", "Parameter"): torch.nn.Parameter,
    ("torch", "UntypedStorage"): torch.UntypedStorage,
}

_CALLABLE_OBJECTS = {id(obj) for obj in _ALLOWED_CALLABLES.values()}
_CONTAINER_TYPES = (dict, list, set, collections.OrderedDict)


def _resolve_global(module: str, name: str) -> Any | None:
    key = (module, name)
    if key in _ALLOWED_CALLABLES:
        return _ALLOWED_CALLABLES[key]
    if key in _ALLOWED_VALUES:
        return _ALLOWED_VALUES[key]
    if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
        return getattr(torch, name)
    return None


# -- the unpickler ----------------------------------------------------------------------------
class Unpickler(pickle._Unpickler):  # type: ignore[name-defined]
    """Pure-Python unpickler whose globals and object-building opcodes are restricted.

    The pure-Python implementation is used (not ``_pickle``) so that every opcode that calls or
    mutates something can be checked; ``torch.save`` keeps tensor data outside the pickle, so the
    pickle itself is small and speed does not matter.
    """

    dispatch = dict(pickle._Unpickler.dispatch)  # type: ignore[attr-defined]

    def __init__(self, file: Any, **kwargs: Any):
        super().__init__(file, **kwargs)
        self._placeholders: dict[str, type] = {}

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
            placeholder = _InertType(f"Inert[{qualified}]", (InertObject,), {"inert_global": qualified})
            self._placeholders[qualified] = placeholder
        return placeholder

    # -- guarded opcodes --------------------------------------------------------------------
    def _call(self, func: Any, args: tuple) -> Any:
        if isinstance(func, _InertType):
            return func(*args)  # data classes record, everything else raises UnsafeCheckpointError
        if id(func) not in _CALLABLE_OBJECTS:
            raise UnsafeCheckpointError(f"the pickle calls {func!r}, which is not on the whitelist")
        if not isinstance(args, tuple):
            raise CorruptCheckpointError("malformed pickle: REDUCE arguments are not a tuple")
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
        if isinstance(cls, _InertType):
            return cls.__new__(cls, *args, **kwargs)
        if cls in (collections.OrderedDict, set, frozenset, torch.Size):
            return cls.__new__(cls, *args, **kwargs)
        raise UnsafeCheckpointError(f"the pickle creates an object of {cls!r} with NEWOBJ, which is not allowed")

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

    def _check_container(self, target: Any, opcode: str) -> None:
        if not isinstance(target, (InertObject, *_CONTAINER_TYPES)):
            raise UnsafeCheckpointError(f"the pickle applies {opcode} to a {type(target).__name__} object, which is not allowed")

    def load_setitem(self) -> None:
        self._check_container(self.stack[-3], "SETITEM")
        super().load_setitem()

    dispatch[pickle.SETITEM[0]] = load_setitem

    def load_setitems(self) -> None:
        self._check_container(self.metastack[-1][-1] if self.metastack and self.metastack[-1] else None, "SETITEMS")
        super().load_setitems()

    dispatch[pickle.SETITEMS[0]] = load_setitems

    def load_append(self) -> None:
        self._check_container(self.stack[-2], "APPEND")
        super().load_append()

    dispatch[pickle.APPEND[0]] = load_append

    def load_appends(self) -> None:
        self._check_container(self.metastack[-1][-1] if self.metastack and self.metastack[-1] else None, "APPENDS")
        super().load_appends()

    dispatch[pickle.APPENDS[0]] = load_appends

    def load_additems(self) -> None:
        self._check_container(self.metastack[-1][-1] if self.metastack and self.metastack[-1] else None, "ADDITEMS")
        super().load_additems()

    dispatch[pickle.ADDITEMS[0]] = load_additems


def load(file: Any, **kwargs: Any) -> Any:
    """``pickle.load`` with the restricted :class:`Unpickler` (torch calls this for legacy files)."""
    return Unpickler(file, **kwargs).load()


def loads(data: bytes, **kwargs: Any) -> Any:
    """``pickle.loads`` with the restricted :class:`Unpickler`."""
    return Unpickler(io.BytesIO(data), **kwargs).load()


# -- torch.load front end ---------------------------------------------------------------------
def safe_torch_load(path: Path | str) -> Any:
    """``torch.load`` a file with this module as the pickle module; tensors come back on the CPU.

    ``weights_only=False`` is required by torch for a custom ``pickle_module``; it is safe here
    because the unpickler itself decides every global and call.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointNotFoundError(f"checkpoint {path} does not exist")
    if not path.is_file():
        raise CheckpointNotFoundError(f"checkpoint {path} is not a file")
    if os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "0") in ("1", "y", "yes", "true"):  # torch's own test
        raise CorruptCheckpointError(
            f"cannot read {path}: TORCH_FORCE_WEIGHTS_ONLY_LOAD is set, which stops torch from using the safe "
            "unpickler that reads the pickled module; unset it (loading stays safe: nothing in the file is executed)"
        )
    module = sys.modules[__name__]  # torch.load wants a module with Unpickler and load
    try:
        with warnings.catch_warnings():
            # Legacy (non-zip) files make torch compare the source of pickled nn.Module classes;
            # placeholders have none. Nothing to warn the user about.
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", pickle_module=module, weights_only=False, mmap=False)
    except UnsafeCheckpointError as err:
        raise UnsafeCheckpointError(f"{path}: {err}") from None
    except CorruptCheckpointError as err:
        raise CorruptCheckpointError(f"{path}: {err}") from None
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as err:  # noqa: BLE001 - every parser failure means the file is unreadable
        raise CorruptCheckpointError(
            f"{path} is not a readable torch checkpoint (truncated or not written by torch.save): "
            f"{type(err).__name__}: {err}"
        ) from err


# -- recovering tensors from a pickled module --------------------------------------------------
def _plain_tensor(value: Any, where: str) -> torch.Tensor:
    """A fresh CPU tensor with no Python attributes or hooks carried over from the pickle."""
    if not isinstance(value, torch.Tensor) or type(value) not in (torch.Tensor, torch.nn.Parameter):
        raise CorruptCheckpointError(f"{where} is a {type(value).__name__}, expected a tensor")
    if value.layout != torch.strided or value.is_meta:
        raise CorruptCheckpointError(f"{where} is a {value.layout} / meta tensor, expected a dense tensor with data")
    return value.detach().clone()  # detach() drops Parameter-ness, hooks and Python attributes


def _state_mapping(state: Any, field: str, where: str) -> Mapping[str, Any]:
    if isinstance(state, tuple) and len(state) == 2:  # (dict, slotstate)
        state = state[0]
    if not isinstance(state, Mapping):
        raise CorruptCheckpointError(f"{where} has no recoverable state (got {type(state).__name__})")
    value = state.get(field, {})
    if value is None:
        return {}
    if isinstance(value, InertObject):
        value = value.inert_items
    if not isinstance(value, Mapping):
        raise CorruptCheckpointError(f"{where}.{field} is a {type(value).__name__}, expected a dict")
    return value


def module_tensors(obj: Any, prefix: str = "", *, where: str = "module") -> dict[str, torch.Tensor]:
    """Flat ``state_dict`` of a placeholder ``nn.Module`` (parameters + persistent buffers).

    Accepts a plain mapping of tensors too (a checkpoint that stored a state dict instead of a
    module object). Names follow ``nn.Module.state_dict``: ``<child>.<child>.<tensor>``.
    """
    if isinstance(obj, Mapping):
        out = {}
        for key, value in obj.items():
            if not isinstance(key, str):
                raise CorruptCheckpointError(f"{where} has a non-string key {key!r}")
            out[prefix + key] = _plain_tensor(value, f"{where}[{key!r}]")
        return out
    if not isinstance(obj, InertObject):
        raise CorruptCheckpointError(f"{where} is a {type(obj).__name__}, expected a pickled nn.Module or a dict of tensors")
    state = obj.inert_state
    if state is None or (isinstance(state, Mapping) and "_parameters" not in state):
        raise CorruptCheckpointError(f"{where} ({obj.inert_global}) is not a pickled nn.Module: it has no _parameters")
    out: dict[str, torch.Tensor] = {}
    for name, value in _state_mapping(state, "_parameters", where).items():
        if value is not None:
            out[prefix + name] = _plain_tensor(value, f"{where}.{name}")
    non_persistent = _state_mapping_set(state, where)
    for name, value in _state_mapping(state, "_buffers", where).items():
        if value is not None and name not in non_persistent:
            out[prefix + name] = _plain_tensor(value, f"{where}.{name}")
    for name, child in _state_mapping(state, "_modules", where).items():
        if child is not None:
            out.update(module_tensors(child, f"{prefix}{name}.", where=f"{where}.{name}"))
    return out


def _state_mapping_set(state: Any, where: str) -> set[str]:
    if isinstance(state, tuple) and len(state) == 2:
        state = state[0]
    value = state.get("_non_persistent_buffers_set", set()) if isinstance(state, Mapping) else set()
    if isinstance(value, InertObject):
        value = value.inert_list
    if not isinstance(value, (set, frozenset, list, tuple)):
        raise CorruptCheckpointError(f"{where}._non_persistent_buffers_set is a {type(value).__name__}, expected a set")
    return {str(v) for v in value}

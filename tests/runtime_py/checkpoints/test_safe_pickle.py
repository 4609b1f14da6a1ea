"""The safe unpickler runs nothing from a checkpoint and still recovers pickled modules' tensors.

Every malicious payload is first shown to WORK with an ordinary ``torch.load`` / ``pickle.loads``
(the marker file appears), so that "refused and no marker" really means the loader stopped it.
"""

from __future__ import annotations

import functools
import importlib
import io
import os
import pickle
import shlex
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

from runtime_py.checkpoints import (
    CheckpointNotFoundError,
    CorruptCheckpointError,
    UnsafeCheckpointError,
    module_tensors,
    safe_torch_load,
)
from runtime_py.checkpoints.safe_pickle import InertObject, inert_global_name, loads
from runtime_py.model import build_model


class _Payload:
    """Pickles as ``func(*args)``: the classic way a pickle runs code."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _write_marker_code(marker: Path) -> str:
    return f"open({str(marker)!r}, 'w').close()"


def _payloads(marker: Path) -> dict[str, object]:
    return {
        "posix.system": _Payload(os.system, f"touch {shlex.quote(str(marker))}"),
        "subprocess.call": _Payload(subprocess.call, ["touch", str(marker)]),
        "builtins.exec": _Payload(exec, _write_marker_code(marker)),
        "builtins.eval": _Payload(eval, _write_marker_code(marker)),
        "builtins.open": _Payload(open, str(marker), "w"),
        # A module outside the whitelist, reached through an allowed data class (a path).
        "pathlib.Path.touch": _Payload(Path.touch, Path(marker)),
    }


def _getattr_trick(marker: Path) -> bytes:
    """Protocol 0 by hand: ``getattr(__import__('os'), 'system')('touch MARKER')``."""
    command = f"touch {shlex.quote(str(marker))}"
    return (
        b"cbuiltins\ngetattr\n(cbuiltins\n__import__\n(Vos\ntRVsystem\ntR(V"
        + command.encode("raw_unicode_escape")
        + b"\ntR."
    )


def _assert_refused(path: Path, marker: Path, global_name: str) -> None:
    with pytest.raises(UnsafeCheckpointError) as info:
        safe_torch_load(path)
    assert global_name.split(".")[-1] in str(info.value), info.value
    assert str(path) in str(info.value)
    assert not marker.exists(), "the payload ran"


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("name", sorted(_payloads(Path("x"))))
def test_reduce_payloads_are_refused_and_not_run(tmp_path: Path, name: str, legacy: bool) -> None:
    marker = tmp_path / "marker"
    path = tmp_path / "lora.pkl"
    payload = _payloads(marker)[name]
    torch.save({"rank_unet": 4, "evil": payload}, path, _use_new_zipfile_serialization=not legacy)

    torch.load(path, weights_only=False)  # positive control: an ordinary load runs the payload
    assert marker.exists()
    marker.unlink()

    if legacy:  # the legacy stream is refused as a format, before any byte of it is unpickled
        with pytest.raises(CorruptCheckpointError, match="legacy torch.save stream"):
            safe_torch_load(path)
        assert not marker.exists(), "the payload ran"
    else:
        _assert_refused(path, marker, name)


def test_getattr_import_trick_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    data = _getattr_trick(marker)
    pickle.loads(data)  # positive control
    assert marker.exists()
    marker.unlink()

    path = tmp_path / "raw.pkl"
    path.write_bytes(data)  # not a zip: refused as a format, nothing unpickled
    with pytest.raises(CorruptCheckpointError, match="plain pickle"):
        safe_torch_load(path)
    with pytest.raises(UnsafeCheckpointError, match=r"builtins\.(__import__|getattr)"):
        loads(data)
    assert not marker.exists()


def test_malicious_data_pkl_inside_a_torch_zip_is_refused(tmp_path: Path) -> None:
    """A valid torch archive whose data.pkl was swapped for a payload."""
    marker = tmp_path / "marker"
    clean = tmp_path / "clean.pkl"
    torch.save({"x": torch.ones(2)}, clean)
    evil = tmp_path / "evil.pkl"
    with zipfile.ZipFile(clean) as src, zipfile.ZipFile(evil, "w", zipfile.ZIP_STORED) as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename.endswith("/data.pkl"):
                data = _getattr_trick(marker)
            dst.writestr(item, data)
    _assert_refused(evil, marker, "builtins.__import__")


class Booby:
    """Importable at load time, with a ``__setstate__`` that would write a file."""

    def __init__(self, marker: str):
        self.marker = marker

    def __getstate__(self):
        return {"marker": self.marker}

    def __setstate__(self, state):
        open(state["marker"], "w").close()


def test_known_class_with_side_effects_is_never_imported(tmp_path: Path) -> None:
    """NEWOBJ + BUILD of a real, importable class: the placeholder records the state instead."""
    marker = tmp_path / "marker"
    data = pickle.dumps({"obj": Booby(str(marker))}, protocol=2)
    pickle.loads(data)
    assert marker.exists()
    marker.unlink()

    loaded = loads(data)
    assert not marker.exists()
    assert isinstance(loaded["obj"], InertObject)
    assert inert_global_name(loaded["obj"]).endswith("Booby")
    assert loaded["obj"].inert_state == {"marker": str(marker)}


def test_data_classes_stay_inert(tmp_path: Path) -> None:
    """functools.partial (gradient checkpointing) may be rebuilt but is never called."""
    marker = tmp_path / "marker"
    module = nn.Linear(2, 2)
    module.checkpoint_fn = functools.partial(open, str(marker), "w")
    path = tmp_path / "m.pkl"
    torch.save({"m": module}, path)
    loaded = safe_torch_load(path)
    assert not marker.exists()
    assert inert_global_name(loaded["m"]) == "torch.nn.modules.linear.Linear"
    assert set(module_tensors(loaded["m"])) == {"weight", "bias"}


def test_codecs_encode_is_limited_to_latin1() -> None:
    data = pickle.dumps(b"\x00\xffbytes", protocol=2)  # protocol 2 writes _codecs.encode(..., 'latin1')
    assert loads(data) == b"\x00\xffbytes"
    evil = data.replace(b"latin1", b"rot_13")
    with pytest.raises(UnsafeCheckpointError, match="latin1"):
        loads(evil)


_AUTHORS_MODULE = '''
import torch
from torch import nn


class AuthorsBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.norm = nn.GroupNorm(2, 4)
        self.register_buffer("running", torch.arange(4.0))
        self.register_buffer("scratch", torch.ones(4), persistent=False)


class AuthorsNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([AuthorsBlock(), AuthorsBlock()])
        self.head = nn.Linear(4, 2)
        self.unused = None
        self.scale = nn.Parameter(torch.tensor([2.0]), requires_grad=False)
'''


def _unimportable_module_object(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    code = tmp_path / "code"
    code.mkdir()
    (code / "authors_net_mod.py").write_text(textwrap.dedent(_AUTHORS_MODULE))
    sys.path.insert(0, str(code))
    try:
        net = importlib.import_module("authors_net_mod").AuthorsNet()
        path = tmp_path / "net.pkl"
        torch.save({"controlnet": net, "rank": 3}, path)
        state = {k: v.clone() for k, v in net.state_dict().items()}
    finally:
        sys.path.remove(str(code))
        sys.modules.pop("authors_net_mod", None)
        (code / "authors_net_mod.py").unlink()
        importlib.invalidate_caches()
    return path, state


def test_module_of_an_unimportable_class_gives_its_state_dict(tmp_path: Path) -> None:
    path, state = _unimportable_module_object(tmp_path)
    with pytest.raises(ModuleNotFoundError):  # the ordinary route needs the authors' source tree
        torch.load(path, weights_only=False)

    loaded = safe_torch_load(path)
    assert loaded["rank"] == 3
    assert inert_global_name(loaded["controlnet"]) == "authors_net_mod.AuthorsNet"
    tensors = module_tensors(loaded["controlnet"])
    assert set(tensors) == set(state)  # persistent buffers in, "scratch" (non-persistent) out
    assert "blocks.0.scratch" not in tensors
    for name, tensor in tensors.items():
        assert torch.equal(tensor, state[name]), name
        assert type(tensor) is torch.Tensor and not tensor.requires_grad and tensor._backward_hooks is None


def test_diffusers_modules_with_frozen_configs(tmp_path: Path) -> None:
    """Our injector is built from diffusers blocks (FrozenDict configs, attention processors)."""
    injector = build_model("tiny").injector
    path = tmp_path / "inj.pkl"
    torch.save({"controlnet": injector}, path)
    tensors = module_tensors(safe_torch_load(path)["controlnet"])
    reference = injector.state_dict()
    assert set(tensors) == set(reference)
    assert all(torch.equal(tensors[k], reference[k]) for k in reference)


def test_a_state_dict_is_accepted_where_a_module_is_expected() -> None:
    assert set(module_tensors({"a.weight": torch.ones(1)})) == {"a.weight"}


@pytest.mark.parametrize("bad", [5, "text", [torch.ones(1)], {"a": 3}])
def test_malformed_module_content_is_a_clear_error(bad: object) -> None:
    with pytest.raises(CorruptCheckpointError, match="controlnet"):
        module_tensors(bad, where="controlnet")


def test_missing_and_corrupt_files(tmp_path: Path) -> None:
    with pytest.raises(CheckpointNotFoundError, match="nope.pkl"):
        safe_torch_load(tmp_path / "nope.pkl")
    with pytest.raises(CheckpointNotFoundError, match="not a file"):
        safe_torch_load(tmp_path)

    good = tmp_path / "good.pkl"
    torch.save({"x": torch.arange(1000.0)}, good)
    data = good.read_bytes()
    for name, content in {"truncated": data[: len(data) // 2], "empty": b"", "garbage": os.urandom(256)}.items():
        bad = tmp_path / f"{name}.pkl"
        bad.write_bytes(content)
        with pytest.raises(CorruptCheckpointError, match=f"{name}.pkl"):
            safe_torch_load(bad)


def test_whitelisted_functions_cannot_be_misused() -> None:
    """NEWOBJ of a rebuild function and BUILD on a plain container are refused, not executed."""
    newobj_on_function = b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n)\x81."
    with pytest.raises(UnsafeCheckpointError, match="NEWOBJ"):
        loads(newobj_on_function)
    build_on_dict = b"\x80\x02}}(X\x01\x00\x00\x00aK\x01ub."
    with pytest.raises(UnsafeCheckpointError, match="state"):
        loads(build_on_dict)
    buf = io.BytesIO()
    pickle.dump(torch.Size([2, 3]), buf, protocol=2)
    assert loads(buf.getvalue()) == torch.Size([2, 3])

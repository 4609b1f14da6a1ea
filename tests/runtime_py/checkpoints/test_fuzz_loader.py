"""Property-based fuzzing (hypothesis) of the restricted unpickler and the torch.save archive checks.

Seeds: every hostile file of :mod:`tests.fixtures.hostile_files` (issue 16's threat table, the
1 GiB deflate bomb scaled to 16 MiB, the 2 MB work floods left out because each takes seconds by
design) plus genuine ``torch.save`` archives of a dict of tensors and of a pickled module.
Mutations: byte flips, overwrites with interesting values, insertions of random pickle opcodes,
deletions, truncation and splices from another seed.

Properties, for every mutated input:

* the loader returns or raises a :class:`CheckpointError` (never another exception, never runs
  anything: the marker file stays absent),
* within :data:`SECONDS_PER_EXAMPLE`,
* and what it returns describes at most ``2 x storage bytes + 1 MiB`` of tensors.

Run size: :data:`BRIEF_EXAMPLES` per property in the suite (~20-40 s in all on a 2-core machine);
``--fuzz-examples N`` or ``MAGICBOKEH_FUZZ_EXAMPLES=N`` for a longer run. Runs are derandomised
in the brief mode (the same examples every time) and random otherwise.
"""

from __future__ import annotations

import io
import os
import time
import zipfile
import zlib
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime_py.checkpoints import CheckpointError, module_tensors, safe_torch_load
from runtime_py.checkpoints.safe_pickle import loads
from runtime_py.model import build_model
from tests.fixtures import hostile_files

BRIEF_EXAMPLES = 400
SECONDS_PER_EXAMPLE = 10.0
_OPCODES = b"()}]\x8fcRbsuaet.\x81\x85\x86\x87\x94hqjrKJMX\x8c\x8aQN\x88\x89\x92\x91\x93"
_INTERESTING = [b"\x00", b"\xff", b"\x7f", b"\x80", b"\xff\xff\xff\x7f", b"\x00\x00\x00\x80", b"\xff" * 8]


@pytest.fixture(scope="module")
def fuzz_examples(request: pytest.FixtureRequest) -> tuple[int, bool]:
    """(examples per property, derandomise)."""
    wanted = request.config.getoption("--fuzz-examples") or os.environ.get("MAGICBOKEH_FUZZ_EXAMPLES")
    return (int(wanted), False) if wanted else (BRIEF_EXAMPLES, True)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    folder = tmp_path_factory.mktemp("fuzz")
    marker = folder / "marker"
    seeds = {
        name: path for name, path in hostile_files.all_seeds(folder / "seeds", marker, deflate_size=1 << 24).items()
        if not name.startswith("flood")
    }
    genuine = folder / "genuine.pkl"
    torch.save({"rank": 4, "names": ["a", "b"], "sd": {"w": torch.arange(6.0).reshape(2, 3), "b": torch.ones(2)}},
               genuine)
    module = folder / "module.pkl"
    injector = build_model("tiny").injector.controlnet_cond_embedding
    torch.save({"controlnet": injector, "rank": 2}, module)
    seeds.update(genuine=genuine, module=module)
    archives = {name: path.read_bytes() for name, path in seeds.items()}
    pickles = {}
    for name, data in archives.items():
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                pickles[name] = next(archive.read(n) for n in archive.namelist() if n.endswith("/data.pkl"))
        except (zipfile.BadZipFile, StopIteration):
            pickles[name] = data
    pickles["hash_bomb_raw"] = hostile_files.tuple_hash_bomb_pickle()
    pickles["laughs_raw"] = hostile_files.billion_laughs_pickle()
    pickles["bytearray_raw"] = hostile_files.bytearray_bomb_pickle()
    return {"archives": archives, "pickles": pickles, "marker": marker, "folder": folder}


@st.composite
def mutated(draw: st.DrawFn, seeds: dict[str, bytes]) -> bytes:
    names = sorted(seeds)
    data = bytearray(seeds[draw(st.sampled_from(names))])
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["flip", "overwrite", "opcode", "delete", "truncate", "splice"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "overwrite":
            value = draw(st.sampled_from(_INTERESTING) | st.binary(min_size=1, max_size=8))
            data[at:at + len(value)] = value
        elif kind == "opcode":
            data[at:at] = bytes(draw(st.lists(st.sampled_from(_OPCODES), min_size=1, max_size=6)))
        elif kind == "delete":
            del data[at:at + draw(st.integers(1, 16))]
        elif kind == "truncate":
            del data[at:]
        elif kind == "splice":
            other = seeds[draw(st.sampled_from(names))]
            start = draw(st.integers(0, max(len(other) - 1, 0)))
            data[at:at] = other[start:start + draw(st.integers(1, 64))]
    return bytes(data)


def _check_result(value: object, file_bytes: int) -> None:
    """What a load returns describes a bounded number of tensor bytes."""
    total = 0
    todo, seen = [value], set()
    while todo:
        item = todo.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, torch.Tensor):
            total += item.numel() * item.element_size()
        elif isinstance(item, dict):
            todo.extend(item.values())
        elif isinstance(item, (list, tuple)):
            todo.extend(item)
    assert total <= 2 * file_bytes + (1 << 20), total


def _run(settings_args: tuple[int, bool], strategy: st.SearchStrategy, check) -> None:
    examples, derandomize = settings_args

    @settings(max_examples=examples, deadline=None, database=None, derandomize=derandomize,
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def property_(data: bytes) -> None:
        start = time.perf_counter()
        check(data)
        assert time.perf_counter() - start < SECONDS_PER_EXAMPLE

    property_()


@pytest.mark.timeout(1800)
def test_fuzz_unpickler_on_mutated_opcode_streams(corpus, fuzz_examples) -> None:
    def check(data: bytes) -> None:
        try:
            _check_result(loads(data), len(data))
        except CheckpointError as err:
            assert "\n" not in str(err) and len(str(err)) < 1000
        assert not corpus["marker"].exists()

    _run(fuzz_examples, mutated(corpus["pickles"]), check)


def _rezip(data_pkl: bytes, template: bytes) -> bytes:
    """A genuine archive with ``data_pkl`` swapped in (CRC recomputed, so the pickle is reached)."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(template)) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for item in src.infolist():
            dst.writestr(item.filename, data_pkl if item.filename.endswith("/data.pkl") else src.read(item))
    return out.getvalue()


@pytest.mark.timeout(1800)
def test_fuzz_archive_checks_on_mutated_files(corpus, fuzz_examples, tmp_path_factory) -> None:
    path = tmp_path_factory.mktemp("fuzz-archive") / "lora.pkl"

    def check(data: bytes) -> None:
        path.write_bytes(data)
        try:
            loaded = safe_torch_load(path)
            _check_result(loaded, len(data))
            if isinstance(loaded, dict) and "controlnet" in loaded:
                try:
                    _check_result(module_tensors(loaded["controlnet"]), len(data))
                except CheckpointError:
                    pass
        except CheckpointError as err:
            assert "\n" not in str(err) and len(str(err)) < 1000
        assert not corpus["marker"].exists()

    _run(fuzz_examples, mutated(corpus["archives"]), check)


@pytest.mark.timeout(1800)
def test_fuzz_data_pkl_inside_valid_archives(corpus, fuzz_examples, tmp_path_factory) -> None:
    """Mutated data.pkl in an otherwise valid archive with real storages (the tensor checks)."""
    path = tmp_path_factory.mktemp("fuzz-pkl") / "lora.pkl"
    template = corpus["archives"]["module"]

    def check(data_pkl: bytes) -> None:
        data = _rezip(data_pkl, template)
        path.write_bytes(data)
        try:
            loaded = safe_torch_load(path)
            _check_result(loaded, len(data))
            if isinstance(loaded, dict) and "controlnet" in loaded:
                try:
                    _check_result(module_tensors(loaded["controlnet"]), len(data))
                except CheckpointError:
                    pass
        except CheckpointError as err:
            assert "\n" not in str(err) and len(str(err)) < 1000
        assert not corpus["marker"].exists()

    pickles = {k: v for k, v in corpus["pickles"].items() if k in ("module", "genuine", "stride0", "cycle",
                                                                     "parameter_state", "outside", "billion_laughs")}
    _run(fuzz_examples, mutated(pickles), check)


def test_seed_archives_are_valid_zips_with_crc(corpus) -> None:
    """The genuine seeds load (the fuzzer starts from files that pass every check)."""
    for name in ("genuine", "module"):
        data = corpus["archives"][name]
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            assert all(zlib.crc32(archive.read(i)) == i.CRC for i in archive.infolist())
        path = Path(corpus["folder"]) / f"{name}.pkl"
        assert isinstance(safe_torch_load(path), dict)

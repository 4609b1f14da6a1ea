"""The backend-agnostic parity runner, its report files, and the ``parity`` CLI's exit status.

The runner's logic is tested on torch models (the reference, an identical copy, and a copy with
perturbed weights). The CLI runs on real artifacts: the session's tiny ExecuTorch export and a
copy of it with one constant of the decoder changed inside its ``.pte``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from runtime_py.backends.torch_backend import TorchBackend
from runtime_py.cli import main as cli_main
from runtime_py.components import tile_components
from runtime_py.contract import depth_to_u8
from runtime_py.manifest import ComponentEntry, Manifest, write_manifest
from runtime_py.model import build_model, get_config
from runtime_py.parity import PARITY_JSON, PARITY_MD, ParityThresholds, psnr, run_parity, write_parity_report
from runtime_py.samples import gather_samples

CONFIG = get_config("tiny")


def _perturbed(scale: float):
    model = build_model("tiny", seed=0)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale * (p.abs().mean() + 1e-3))
    return model


@pytest.fixture(scope="module")
def reference():
    return TorchBackend().load(tile_components(build_model("tiny", seed=0)))


@pytest.fixture(scope="module")
def samples():
    # One generated scene of 1.5 tiles: 4 overlapping tiles (grid 2x2) at tile 128 / stride 64.
    return gather_samples(CONFIG, num_scenes=1)


def test_identical_backends_are_exact(reference, samples):
    copy = TorchBackend().load(tile_components(build_model("tiny", seed=0)))
    result = run_parity(reference, copy, samples, config=CONFIG, max_tiles_per_image=2,
                        thresholds=ParityThresholds(60, 60, 0.999))
    assert result.passed, result.failures
    for name in ("encoder", "denoiser", "decoder"):
        assert result.components[name]["psnr_db"] == math.inf
        assert result.components[name]["count"] == 2
    assert result.end_to_end["psnr_db"] == math.inf and result.end_to_end["ssim"] == pytest.approx(1.0)


def test_perturbed_backend_is_measured_and_fails_thresholds(reference, samples, tmp_path):
    tested = TorchBackend().load(tile_components(_perturbed(1e-3)))
    result = run_parity(reference, tested, samples, config=CONFIG, max_tiles_per_image=2,
                        thresholds=ParityThresholds(min_psnr_component=200.0, min_psnr_end_to_end=200.0, min_ssim=1.0))
    assert not result.passed
    # A 0.1% weight perturbation gives errors far from both float32 rounding (~140 dB) and
    # garbage (< 20 dB); every figure must be finite and in that band.
    for name, figures in result.components.items():
        assert 20.0 < figures["psnr_db"] < 120.0, (name, figures["psnr_db"])
        assert figures["count"] == 2 and figures["psnr_db_worst"] <= figures["psnr_db"] + 1e-9
    assert len(result.failures) == 5  # three components, end-to-end PSNR, SSIM
    assert 0.5 < result.end_to_end["ssim"] < 1.0

    json_path, md_path = write_parity_report(result, tmp_path / "report")
    data = json.loads(json_path.read_text())
    assert data["passed"] is False
    assert set(data["components"]) == {"encoder", "denoiser", "decoder"}
    for name in data["components"]:
        assert {"psnr_db", "max_abs"} <= set(data["components"][name])
    assert {"psnr_db", "ssim", "max_abs"} <= set(data["end_to_end"])
    text = md_path.read_text()
    assert "| denoiser |" in text and "FAIL" in text
    assert not [p for p in (tmp_path / "report").iterdir() if p.name not in (PARITY_JSON, PARITY_MD)]


def test_per_component_figures_isolate_the_component(reference, samples):
    # Only the decoder differs: the encoder and denoiser must be exact even though the decoder
    # is fed the reference's x0 (stage isolation), while end to end sees the decoder's error.
    perturbed = tile_components(_perturbed(1e-3))
    exact = tile_components(build_model("tiny", seed=0))
    tested = TorchBackend().load({"encoder": exact["encoder"], "denoiser": exact["denoiser"], "decoder": perturbed["decoder"]})
    result = run_parity(reference, tested, samples, config=CONFIG, max_tiles_per_image=1)
    assert result.components["encoder"]["psnr_db"] == math.inf
    assert result.components["denoiser"]["psnr_db"] == math.inf
    assert math.isfinite(result.components["decoder"]["psnr_db"])
    assert math.isfinite(result.end_to_end["psnr_db"])


def test_pooled_psnr_definition():
    ref = np.array([[1.0, -2.0], [0.5, 0.0]])
    test = ref + np.array([[0.0, 0.02], [0.0, 0.0]])
    expected = 20 * math.log10(2.0 / math.sqrt(0.02**2 / 4))  # peak max|ref| = 2
    assert psnr(ref, test) == pytest.approx(expected)


def test_psnr_peak_is_stated_and_mask_selects():
    ref = np.array([[0.5, 0.25], [0.0, 1.0]])
    test = ref + np.array([[0.1, 0.0], [0.0, 0.0]])
    # peak 1.0 (images in [0, 1]): 10 log10(1 / MSE)
    assert psnr(ref, test, peak=1.0) == pytest.approx(10 * math.log10(1.0 / (0.1**2 / 4)))
    # the default peak is max|ref| (here also 1.0) and 255 scales by 20 log10(255)
    assert psnr(ref, test) == pytest.approx(psnr(ref, test, peak=1.0))
    assert psnr(ref, test, peak=255.0) == pytest.approx(psnr(ref, test, peak=1.0) + 20 * math.log10(255.0))
    mask = np.array([[False, True], [True, True]])  # leaves out the only differing pixel
    assert psnr(ref, test, peak=1.0, mask=mask) == math.inf
    assert psnr(ref, test, peak=1.0, mask=~mask) == pytest.approx(20.0)  # one pixel off by 0.1
    assert math.isnan(psnr(ref, test, peak=1.0, mask=np.zeros_like(mask)))
    with pytest.raises(ValueError, match="peak"):
        psnr(ref, test, peak=0.0)


def test_bad_inputs_are_clear(reference, samples):
    with pytest.raises(ValueError, match="at least one sample"):
        run_parity(reference, reference, [], config=CONFIG)
    with pytest.raises(ValueError, match=r"components \['depth'\] are not in both"):
        run_parity(reference, reference, samples, config=CONFIG, components=["depth"])


# -- the CLI --------------------------------------------------------------------------------------

ET_TARGET = "executorch-xnnpack-fp32"


def _artifacts(folder: Path, backend: str, config_name: str = "tiny") -> Path:
    """A folder with a real manifest (files, hashes, config, weights hash) and placeholder files,
    for the checks the CLI makes before it loads anything."""
    from runtime_py.checkpoints import weights_sha256

    model = build_model(config_name, seed=0)
    components = tile_components(model)
    folder.mkdir(parents=True)
    entries = {}
    for name, component in components.items():
        (folder / f"{name}.bin").write_bytes(name.encode())
        entries[name] = ComponentEntry.from_component(component, f"{name}.bin", "fp32")
    write_manifest(folder, Manifest(backend=backend, config=model.config.to_dict(),
                                    weights_sha256=weights_sha256(model), components=entries, precision="fp32"))
    return folder


def _perturb_the_decoder_output_bias(folder: Path, offset: float = 0.02) -> None:
    """Shift the decoder's last bias (``conv_out.bias``, so nothing after it can normalise the change
    away) by ``offset`` where it sits, as float32 bytes, inside decoder.pte, then rewrite the
    manifest's hashes: what an exporter that wrote one wrong constant would leave behind."""
    from runtime_py.manifest import read_manifest

    manifest = read_manifest(folder)
    pte = folder / manifest.components["decoder"].file
    data = bytearray(pte.read_bytes())
    bias = build_model("tiny", seed=0).vae.decoder.conv_out.bias.detach().numpy().astype("<f4")
    needle = bias.tobytes()
    at = data.find(needle)
    assert at >= 0 and data.find(needle, at + 1) < 0, f"conv_out.bias is not stored once, verbatim, in {pte}"
    data[at:at + len(needle)] = (bias + np.float32(offset)).astype("<f4").tobytes()
    pte.write_bytes(bytes(data))
    write_manifest(folder, read_manifest(folder, verify_files=False))


@pytest.fixture(scope="module")
def executorch_pair(tiny_executorch_artifacts: Path, tmp_path_factory) -> tuple[Path, Path]:
    """The session's real tiny ExecuTorch export and a copy with one decoder constant changed."""
    import shutil

    clean = tiny_executorch_artifacts / ET_TARGET
    perturbed = tmp_path_factory.mktemp("perturbed") / ET_TARGET
    shutil.copytree(clean, perturbed)
    _perturb_the_decoder_output_bias(perturbed)
    return clean, perturbed


def _run_cli(args: list[str]) -> int:
    return cli_main(["parity", "--num-scenes", "1", "--max-tiles", "1", *args])


def test_cli_measures_real_artifacts_and_a_perturbed_copy(executorch_pair, tmp_path, capsys):
    clean, perturbed = executorch_pair
    thresholds = ["--min-psnr-component", "60", "--min-psnr-end-to-end", "40"]
    assert _run_cli(["--artifacts", str(clean), "--out", str(tmp_path / "clean"), *thresholds]) == 0
    good = json.loads((tmp_path / "clean" / PARITY_JSON).read_text())
    assert good["passed"] and (tmp_path / "clean" / PARITY_MD).is_file()
    # XNNPACK fp32 against eager torch: float rounding only (the 60 dB fp32 bar), never bit-identical.
    for name in ("encoder", "denoiser", "decoder"):
        assert 60.0 <= good["components"][name]["psnr_db"] < math.inf, name
    # The conditioning check is on by default: fp32 XNNPACK keeps the reference's response to
    # K and focus (float rounding moves the ratio by far less than the 0.8-1.25 band).
    for part in ("denoiser", "end_to_end"):
        for axis in ("aperture", "focus"):
            assert 0.8 <= good["conditioning"][part][axis]["norm_ratio"] <= 1.25, (part, axis)
    assert "response ratio" in capsys.readouterr().out

    # (the conditioning check is left to the clean run: this one is about the plain figures)
    status = _run_cli(["--artifacts", str(perturbed), "--out", str(tmp_path / "perturbed"), "--no-conditioning",
                       *thresholds])
    bad = json.loads((tmp_path / "perturbed" / PARITY_JSON).read_text())
    err = capsys.readouterr().err
    assert status == 1 and bad["passed"] is False and "threshold missed: component decoder" in err
    # Only the decoder's file changed: the other components' figures are the clean run's exactly
    # (same inputs, same programs). A 0.02 shift of an output in [-1, 1] is an error of about
    # 20 * log10(1 / 0.02) = 34 dB (less where the output clips), far below the clean figure.
    for name in ("encoder", "denoiser"):
        assert bad["components"][name]["psnr_db"] == good["components"][name]["psnr_db"], name
    assert bad["conditioning"] is None
    assert bad["components"]["decoder"]["psnr_db"] < min(40.0, good["components"]["decoder"]["psnr_db"] - 20.0)
    assert bad["end_to_end"]["psnr_db"] < good["end_to_end"]["psnr_db"]


def test_cli_refuses_artifacts_of_another_model(tmp_path, capsys):
    art = _artifacts(tmp_path / "copy", "executorch")
    status = _run_cli(["--artifacts", str(art), "--config", "small"])
    assert status == 2
    assert "exported from config 'tiny'" in capsys.readouterr().err
    assert _run_cli(["--artifacts", str(tmp_path / "nowhere")]) == 2
    capsys.readouterr()
    assert _run_cli(["--artifacts", str(art), "--conditioning-band", "1.1", "1.3"]) == 2
    assert "conditioning ratio band" in capsys.readouterr().err


def test_split_parity_feeds_every_part_the_reference_chains_inputs(reference, samples):
    # The device must see each tile-component input once for "backend" and "total" together (the
    # simulated NPU takes minutes per tile): both parts take their tile inputs from the fp32 chain.
    from runtime_py.parity import run_split_parity

    seen: dict[str, set[bytes]] = {}

    def recording(fns):
        def wrap(name, fn):
            def run(*arrays):
                seen.setdefault(name, set()).add(b"".join(np.ascontiguousarray(a).tobytes() for a in arrays))
                return fn(*arrays)
            return run
        return {n: wrap(n, f) for n, f in fns.items()}

    cpu = TorchBackend().load(tile_components(_perturbed(1e-3)))
    results = run_split_parity(reference, cpu, recording(TorchBackend().load(tile_components(_perturbed(2e-3)))),
                               samples, config=CONFIG, max_tiles_per_image=1, end_to_end=False)
    assert set(results) == {"quantization", "backend", "total"}
    for name in ("encoder", "denoiser", "decoder"):
        assert len(seen[name]) == 1, name  # one tile, one distinct input across both parts
        assert math.isfinite(results["backend"].components[name]["psnr_db"])


# -- conditioning sensitivity -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def one_tile_sample():
    # One generated scene of exactly one tile: each extra end-to-end render is a single tile.
    return gather_samples(CONFIG, num_scenes=1, scene_size=CONFIG.tile)


def _collapsed(denoiser):
    """A denoiser that ignores the conditioning: for each latent it answers with the defocus maps
    of the first call it saw for that latent (the base setting, which parity runs first), so its
    plain parity at that setting is exact while its response to K or the focus is zero."""
    first_maps: dict[bytes, tuple[np.ndarray, np.ndarray]] = {}

    def run(latent, defocus, in_focus):
        defocus, in_focus = first_maps.setdefault(np.ascontiguousarray(latent).tobytes(), (defocus, in_focus))
        return denoiser(latent, defocus, in_focus)
    return run


def _amplified(denoiser, gain: float = 2.0):
    """A denoiser whose response to the conditioning is ``gain`` times the reference's: the
    K-independent part is x0 at zero defocus (K -> 0: everything in focus), and only x0's
    deviation from it is scaled, so every difference between two settings scales by ``gain``."""
    def run(latent, defocus, in_focus):
        still = np.asarray(denoiser(latent, np.zeros_like(defocus), np.ones_like(in_focus)), np.float64)
        return (still + gain * (np.asarray(denoiser(latent, defocus, in_focus), np.float64) - still)).astype(np.float32)
    return run


def test_conditioning_of_identical_backends_is_exact(reference, one_tile_sample, tmp_path):
    copy = TorchBackend().load(tile_components(build_model("tiny", seed=0)))
    result = run_parity(reference, copy, one_tile_sample, config=CONFIG, max_tiles_per_image=1, conditioning=True)
    assert result.passed, result.failures
    cond = result.conditioning
    for part in ("denoiser", "end_to_end"):
        assert set(cond[part]) == {"aperture", "focus"}
        for axis, figures in cond[part].items():
            assert figures["norm_ratio"] == 1.0 and figures["psnr_db"] == math.inf, (part, axis)
            # The settings really differ: the reference responds, so the ratio is not 0 / 0.
            assert figures["reference_norm"] > 0 and figures["psnr_peak"] > 0, (part, axis)
    # One extra setting per axis: the farther of K = 8 / 32 from the sample's K, and the farther
    # of the 5th / 95th depth percentiles (of the 8-bit depth the pipeline uses) from the focus.
    (setting,) = cond["settings"].values()
    assert setting["aperture"]["K"] == max((8, 32), key=lambda k: abs(k - one_tile_sample[0].K))
    base_f, far_f = setting["focus"]["base_focus_value"], setting["focus"]["focus_value"]
    ends = np.percentile(depth_to_u8(one_tile_sample[0].depth) / 255.0, [5, 95])
    assert far_f in ends and abs(far_f - base_f) == max(abs(ends - base_f))

    json_path, md_path = write_parity_report(result, tmp_path)
    data = json.loads(json_path.read_text())
    assert data["thresholds"]["conditioning_ratio_band"] == [0.8, 1.25]
    assert data["conditioning"]["denoiser"]["aperture"]["norm_ratio"] == 1.0
    assert "## Conditioning sensitivity" in md_path.read_text()


def test_collapsed_conditioning_passes_plain_parity_but_fails_the_check(reference, one_tile_sample):
    tested = dict(reference, denoiser=_collapsed(reference["denoiser"]))
    result = run_parity(reference, tested, one_tile_sample, config=CONFIG, max_tiles_per_image=1, conditioning=True,
                        thresholds=ParityThresholds(60, 60, 0.999))
    # Plain parity at the sample's own setting is exact: the plain check alone would pass it.
    for name in ("encoder", "denoiser", "decoder"):
        assert result.components[name]["psnr_db"] == math.inf, name
    assert result.end_to_end["psnr_db"] == math.inf
    assert not result.passed
    for part in ("denoiser", "end_to_end"):
        for axis in ("aperture", "focus"):
            assert result.conditioning[part][axis]["norm_ratio"] < 0.8, (part, axis)
            assert any(f.startswith(f"conditioning {part} {axis}") for f in result.failures), result.failures
    assert len(result.failures) == 4  # only the conditioning checks


def test_overdriven_conditioning_fails_high_and_the_band_is_data(reference, one_tile_sample):
    tested = dict(reference, denoiser=_amplified(reference["denoiser"], gain=2.0))
    result = run_parity(reference, tested, one_tile_sample, config=CONFIG, max_tiles_per_image=1, end_to_end=False,
                        conditioning=True)
    for axis in ("aperture", "focus"):
        # The differences scale by the gain exactly, up to float32 rounding of x0 (~1e-7 relative).
        assert result.conditioning["denoiser"][axis]["norm_ratio"] == pytest.approx(2.0, rel=1e-4)
        assert math.isfinite(result.conditioning["denoiser"][axis]["psnr_db"])
    assert result.conditioning["end_to_end"] is None
    assert sorted(result.failures) == [
        "conditioning denoiser aperture: response norm ratio 2.000 outside [0.8, 1.25]",
        "conditioning denoiser focus: response norm ratio 2.000 outside [0.8, 1.25]",
    ]
    # The band is a threshold like the others: widened, the same figures pass; None reports only.
    for band in ((0.5, 2.5), None):
        widened = run_parity(reference, tested, one_tile_sample, config=CONFIG, max_tiles_per_image=1, end_to_end=False,
                             conditioning=True, thresholds=ParityThresholds(conditioning_ratio_band=band))
        assert widened.passed, (band, widened.failures)
    with pytest.raises(ValueError, match="band"):
        ParityThresholds(conditioning_ratio_band=(1.1, 1.25))


def test_conditioning_is_off_unless_asked(reference, one_tile_sample):
    result = run_parity(reference, reference, one_tile_sample, config=CONFIG, max_tiles_per_image=1, end_to_end=False)
    assert result.conditioning is None and result.to_dict()["conditioning"] is None

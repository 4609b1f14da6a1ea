"""The one sensitivity analysis: a deliberately broken layer ranks first on every backend, and the
mixed recipe built from the ranking keeps it in higher precision and beats the uniform recipe."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from quantize.recipes import QuantRecipe, get_recipe
from quantize.sensitivity import (
    GroupScore,
    SensitivityReport,
    analyse,
    layer_groups,
    plan_mixed,
    predicted_psnr,
    write_report,
)

BROKEN = "blocks.1"


class Block(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(torch.relu(self.conv1(x)))


class Toy(nn.Module):
    """conv_in -> 3 residual blocks -> conv_out. Feature channel 0 is always zero, and block 1's first
    conv reads it through weights 1000x its others: the outliers change nothing in fp32 but set every
    output channel's 8-bit weight scale, so quantized, that conv loses all its real weights."""

    def __init__(self, width: int = 8):
        super().__init__()
        self.conv_in = nn.Conv2d(3, width, 3, padding=1)
        self.blocks = nn.ModuleList([Block(width) for _ in range(3)])
        self.conv_out = nn.Conv2d(width, 3, 3, padding=1)
        with torch.no_grad():
            for conv in (self.conv_in, self.blocks[0].conv2):  # channel 0 stays zero up to block 1
                conv.weight[0].zero_()
                conv.bias[0] = 0.0
            w = self.blocks[1].conv1.weight
            w[:, 0, 1, 1] = 1000.0 * w.abs().max()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for block in self.blocks:
            h = block(h)
        return self.conv_out(h) * 0.5


@pytest.fixture(scope="module")
def toy() -> tuple[Toy, list[tuple[np.ndarray]]]:
    torch.manual_seed(0)
    model = Toy().eval()
    rng = np.random.default_rng(0)
    samples = [(rng.uniform(-1, 1, (1, 3, 16, 16)).astype(np.float32),) for _ in range(2)]
    return model, samples


def test_groups_are_blocks_plus_the_root(toy):
    model, samples = toy
    plan = layer_groups(model, (torch.from_numpy(samples[0][0]),))
    names = [g.name for g in plan.groups]
    assert names == ["conv_in", "blocks.0", "blocks.1", "blocks.2", "conv_out", "component-root"]
    assert plan.owner_group("blocks.1.conv2") == "blocks.1" and plan.owner_group("") == "component-root"
    assert next(g for g in plan.groups if g.name == "blocks.1").layers == 2


@pytest.mark.parametrize("backend,settings", [("xnnpack", {}), ("qnn", {"activation_bits": 8}),
                                              # the toy's weights are below coremltools' 2048-element
                                              # threshold: compress them all, as a larger model's would be
                                              ("coreml", {"method": "linear", "bits": 8, "weight_threshold": 0})])
def test_broken_layer_ranks_first(toy, backend, settings, tmp_path):
    model, samples = toy
    report, _ = analyse(backend, model, samples, name="toy", settings=settings)
    ranked = report.ranked()
    assert ranked[0].name == BROKEN, [(s.name, round(s.psnr_db, 1)) for s in ranked]
    # the broken group alone costs at least 10 dB more than any other block (its real weights are lost)
    others = [s.psnr_db for s in ranked[1:] if s.kind == "block"]
    assert ranked[0].psnr_db + 10.0 < min(others)
    # quantizing everything is no better than the worst group alone (noise adds up)
    assert report.uniform_psnr_db <= ranked[0].psnr_db + 0.5
    paths = write_report(report, tmp_path, plan_mixed(report, psnr_floor_db=40.0))
    data = json.loads(paths["json"].read_text())
    assert data["groups"][0]["name"] == BROKEN and data["mixed"]["kept"][0] == BROKEN
    assert SensitivityReport.from_dict(data).ranked()[0].name == BROKEN
    assert paths["png"].stat().st_size > 0 and BROKEN in paths["md"].read_text()


def test_plan_mixed_budgets():
    scores = [GroupScore("a", "block", 100, 1, 20.0, 0.0), GroupScore("b", "block", 100, 1, 30.0, 0.0),
              GroupScore("c", "block", 800, 1, 50.0, 0.0), GroupScore("d", "block", 10, 1, math.inf, 0.0)]
    report = SensitivityReport("xnnpack", "x", {}, scores, 19.0)
    floor = plan_mixed(report, psnr_floor_db=29.0)
    assert floor.kept == ["a"] and floor.predicted_psnr_db == pytest.approx(predicted_psnr(scores, ["a"]))
    assert plan_mixed(report, psnr_floor_db=45.0).kept == ["a", "b"]
    # at least 90% of the parameters cheap: only "d"-sized groups fit, and "d" is lossless (never kept)
    assert plan_mixed(report, cheap_fraction=0.95).kept == []
    assert plan_mixed(report, cheap_fraction=0.8).kept == ["a", "b"]
    assert predicted_psnr(scores, ["a", "b", "c"]) == math.inf


def test_mixed_recipe_keeps_the_broken_layer_and_beats_uniform(toy):
    from quantize.xnnpack import quantize_program
    from runtime_py.parity import psnr

    model, samples = toy
    batches = [tuple(torch.from_numpy(a) for a in s) for s in samples]
    program = torch.export.export(model, batches[0], strict=False)
    with torch.no_grad():
        reference = model(*batches[0]).numpy()
    uniform = quantize_program(program, batches, recipe=get_recipe("w8a8"), name="toy")
    mixed_recipe = get_recipe("w8a8-mixed")
    mixed = quantize_program(program, batches, recipe=mixed_recipe, name="toy", component=model)
    assert BROKEN in mixed.mixed["kept_fp32"]
    assert mixed.mixed["special_groups"]["component-root"] in ("fp32", "int8")
    with torch.no_grad():
        out_uniform = uniform.program.module()(*batches[0]).numpy()
        out_mixed = mixed.program.module()(*batches[0]).numpy()
    assert psnr(reference, out_mixed) > psnr(reference, out_uniform) + 10.0


def test_mixed_recipe_round_trips_with_its_label():
    recipe = get_recipe("w8a8-mixed")
    assert recipe.sensitivity_mixed and recipe.precision_label == "w8a8-mixed"
    assert QuantRecipe.from_dict(json.loads(json.dumps(recipe.to_dict()))) == recipe
    with pytest.raises(ValueError, match="quantizes and calibrates"):
        QuantRecipe("bad", mixed_psnr_floor_db=30.0)


def test_mixed_targets_round_trip_through_the_registry_and_a_manifest_recipe():
    from export.targets import TARGETS, Target, check_registry, target_for

    assert check_registry() == []
    for family, recipe, name in (("executorch", "xnnpack-int8-mixed", "executorch-xnnpack-int8-mixed"),
                                 ("qnn", "w8a8-mixed", "qnn-w8a8-mixed")):
        target = target_for(family, recipe)
        assert target.name == name and target.precision == "w8a8-mixed" and "quantize" in target.steps
        data = json.loads(json.dumps(target.to_dict()))  # what the manifest's "recipe" records
        assert Target.from_dict(data) == TARGETS[name]
        assert data["recipe"]["quantization"]["mixed_psnr_floor_db"] == get_recipe("w8a8-mixed").mixed_psnr_floor_db

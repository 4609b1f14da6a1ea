"""Distillation: N-step teachers into k-step students, big models into phone-sized students.

* :mod:`.teachers`: interchangeable teachers (a MagicBokeh checkpoint sampled with N steps, or a
  physically based renderer / pre-rendered scene targets).
* :mod:`.students`: student configurations, the injector-free :class:`FoldedMagicBokeh`, save/load.
* :mod:`.data`: indexed, deterministic tile sources (synthetic smooth-noise tiles, generated scenes).
* :mod:`.losses`: output, latent and feature losses (hooks + 1x1 adapters).
* :mod:`.trainer`: the accelerate-based, resumable trainer.
* :mod:`.cost`: params and FLOPs per tile of teacher and students (meta device, no memory).
"""

from .cost import DEFAULT_STUDENTS, ModelCost, StudentSpec, cost_report, model_cost, write_cost_report
from .data import SceneTiles, SyntheticTiles, TileBatch, TileSource, scene_generator_from_runtime
from .losses import LossWeights
from runtime_py.model.sampling import sample_latent, sampling_timesteps
from .students import (
    STUDENT_CONFIGS,
    FoldedMagicBokeh,
    build_student,
    check_compatible,
    load_student,
    save_student,
    student_configs,
)
from .teachers import ModelTeacher, RendererTeacher, Teacher, TeacherOutput, load_model_teacher, renderer_teacher
from .trainer import DistillConfig, DistillResult, DistillTrainer

__all__ = [
    "DEFAULT_STUDENTS",
    "STUDENT_CONFIGS",
    "DistillConfig",
    "DistillResult",
    "DistillTrainer",
    "FoldedMagicBokeh",
    "LossWeights",
    "ModelCost",
    "ModelTeacher",
    "RendererTeacher",
    "SceneTiles",
    "StudentSpec",
    "SyntheticTiles",
    "Teacher",
    "TeacherOutput",
    "TileBatch",
    "TileSource",
    "build_student",
    "check_compatible",
    "cost_report",
    "load_model_teacher",
    "load_student",
    "model_cost",
    "sample_latent",
    "sampling_timesteps",
    "renderer_teacher",
    "save_student",
    "scene_generator_from_runtime",
    "student_configs",
    "write_cost_report",
]

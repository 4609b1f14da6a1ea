"""Training and distillation: how the built-in default model was made, and how to make students.

Kept out of ``runtime_py`` so that the runtime an app integrator installs holds no training code
and none of its dependencies (accelerate, peft); this package builds on ``runtime_py`` (the one
model definition, the input contract, the scene generator and the bokeh renderer) and never on
``export``, ``quantize`` or ``benchmarks``. Its command lines are ``export/train_default.py`` and
``export/distill.py``.

* :mod:`training.default_model`: the default model's scene pool, losses, trainer, evaluation,
  analytic VAE start and model card.
* :mod:`training.distill`: teachers, students, distillation data, losses, trainer and cost.
"""

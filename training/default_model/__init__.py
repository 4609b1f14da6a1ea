"""Training the built-in default MagicBokeh model from generated scenes and the bokeh teacher.

``data``: a pool of generated scenes and the tile-input dataset built on it; ``losses``: L1, SSIM,
gradient terms and PSNR/SSIM metrics; ``trainer``: the accelerate-compatible training loop with
resumable checkpoints; ``evaluate``: held-out quality figures; ``model_card``: the card and figure.
"""

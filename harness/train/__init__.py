"""The one trainer: AdamW, warm-up, clipping, EMA, AMP, DDP, atomic checkpoints, MLflow."""
from harness.train.loop import draw_batch, load_unit_field_parts, step_generator, train_unit

__all__ = ["draw_batch", "load_unit_field_parts", "step_generator", "train_unit"]

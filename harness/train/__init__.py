"""The one trainer: AdamW, warm-up, clipping, EMA (EDM2 power-function or fixed), AMP, DDP, atomic checkpoints, MLflow."""
from harness.train.batches import draw_batch, step_generator
from harness.train.loop import load_unit_field_parts, train_unit

__all__ = ["draw_batch", "load_unit_field_parts", "step_generator", "train_unit"]

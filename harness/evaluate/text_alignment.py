"""Text-alignment stand-in for the CPU twin: does a sample show the class its caption names?

Why a stand-in: seed 003 (Table 3) scores text-image alignment with a CLIP score, which needs
CLIP.  The CPU twin's captions name a class ("a photo of a Bag"), so alignment is measurable
with the harness's trained classifier (:class:`harness.evaluate.feature_extractors.SmallCNN`
with ``train_on=<dataset>``): the fraction of samples whose predicted class is the caption's.
It is reported as ``caption_class_accuracy``, never as a CLIP score.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

NAME = "caption_class_accuracy"


def caption_class_accuracy(images: torch.Tensor, caption_classes: torch.Tensor, classifier: Any) -> dict[str, Any]:
    """Images uint8 (N, C, H, W) generated from captions of ``caption_classes`` (N,) -> accuracy and its record.

    ``classifier``: anything with ``logits(images) -> (N, K)`` (a trained ``SmallCNN``); its
    ``weights_source`` goes into the record so the number says which classifier judged it.
    """
    if len(images) != len(caption_classes):
        raise ValueError(f"{len(images)} images but {len(caption_classes)} caption classes")
    logits = np.asarray(classifier.logits(images))
    hits = logits.argmax(axis=1) == np.asarray(caption_classes).reshape(-1)
    return {NAME: float(hits.mean()) if len(hits) else float("nan"), "n": int(len(hits)),
            "classifier": str(getattr(classifier, "weights_source", type(classifier).__name__)),
            "note": "text-alignment stand-in (classifier accuracy on the caption's class), not a CLIP score"}

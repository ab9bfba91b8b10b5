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

from harness.core.errors import ConfigError
from harness.data.captions import CaptionedDataset
from harness.field.captions import CaptionConditioned

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


def caption_field(field: Any, dataset: Any) -> Any:
    """The field to sample from: a caption twin's field maps each drawn class to its caption's embedding.

    Caption-shard data (one caption per item, no class captions) needs prompt embeddings to sample
    from, which are not wired in yet: a one-line error instead of an integer label reaching a text model.
    """
    if not isinstance(dataset, CaptionedDataset):
        return field
    if "captions" not in dataset.caption_meta or len(dataset.table) != 1 or dataset.num_classes != len(dataset.table[0]):
        raise ConfigError(f"sampling {dataset.name}: its captions are per-item shards, and sampling from held-out "
                          "prompt embeddings is not implemented yet",
                          hint="evaluate the class-caption twin (data=fashion_mnist_captioned) or set eval.metrics=[]")
    return CaptionConditioned(field, torch.as_tensor(dataset.table[0]))


def alignment_metrics(images: torch.Tensor, labels: torch.Tensor | None, extractor: Any) -> dict[str, Any]:
    """``caption_class_accuracy`` of the sampled images, judged by the configured trained classifier."""
    source = str(getattr(extractor, "weights_source", ""))
    if labels is None or not hasattr(extractor, "logits") or not source.startswith("trained-classifier"):
        raise ConfigError("eval.metrics: caption_class_accuracy needs captions with classes and a trained classifier",
                          hint="data=fashion_mnist_captioned, eval.extractor=smallcnn, "
                               "eval.extractor_kwargs.train_on=fashion_mnist")
    return caption_class_accuracy(images, labels, extractor)

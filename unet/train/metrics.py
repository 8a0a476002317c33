"""Segmentation scores: IoU and Dice per class from a confusion matrix, and object-level precision, recall
and F1 at IoU 0.5 of the predicted objects (by default the connected components of the predicted
foreground).

Scores add up (``a + b``) so that a validation set is scored as one pooled image. A ratio whose denominator
is 0 counts as 1: nothing was there to get wrong (an absent class predicted nowhere has IoU 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from unet.errors import UNetError

MATCH_IOU = 0.5


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den else 1.0


@dataclass(frozen=True)
class ObjectScores:
    """Counts of matched (tp), unmatched predicted (fp) and unmatched true (fn) objects."""

    tp: int = 0
    fp: int = 0
    fn: int = 0

    def __add__(self, other: ObjectScores) -> ObjectScores:
        return ObjectScores(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn)

    @property
    def precision(self) -> float:
        return _ratio(self.tp, self.tp + self.fp)

    @property
    def recall(self) -> float:
        return _ratio(self.tp, self.tp + self.fn)

    @property
    def f1(self) -> float:
        return _ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn)

    def to_dict(self) -> dict[str, float]:
        return {"tp": self.tp, "fp": self.fp, "fn": self.fn, "precision": self.precision,
                "recall": self.recall, "f1": self.f1}


@dataclass(frozen=True)
class Scores:
    """A confusion matrix (K, K), rows the truth and columns the prediction, and optional object counts."""

    confusion: np.ndarray
    objects: ObjectScores | None = None

    def __add__(self, other: Scores) -> Scores:
        objects = (None if self.objects is None or other.objects is None else self.objects + other.objects)
        return Scores(self.confusion + other.confusion, objects)

    @property
    def iou(self) -> tuple[float, ...]:
        """Intersection over union per class."""
        tp, fp, fn = self._counts()
        return tuple(_ratio(t, t + p + n) for t, p, n in zip(tp, fp, fn))

    @property
    def dice(self) -> tuple[float, ...]:
        """Dice (F1 of pixels) per class."""
        tp, fp, fn = self._counts()
        return tuple(_ratio(2 * t, 2 * t + p + n) for t, p, n in zip(tp, fp, fn))

    @property
    def foreground_iou(self) -> float:
        """IoU of the foreground, all classes but 0 pooled: the validation score training maximises."""
        both = self.confusion[1:, 1:].sum()
        return _ratio(both, self.confusion.sum() - self.confusion[0, 0])

    @property
    def foreground_dice(self) -> float:
        both = self.confusion[1:, 1:].sum()
        return _ratio(2 * both, self.confusion[1:, :].sum() + self.confusion[:, 1:].sum())

    def _counts(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        tp = np.diag(self.confusion)
        return tp, self.confusion.sum(axis=0) - tp, self.confusion.sum(axis=1) - tp

    def to_dict(self, class_names: Sequence[str]) -> dict:
        """JSON-ready: per-class IoU and Dice keyed by class name, foreground scores, object scores."""
        out = {"iou": dict(zip(class_names, self.iou)), "dice": dict(zip(class_names, self.dice)),
               "foreground_iou": self.foreground_iou, "foreground_dice": self.foreground_dice}
        if self.objects is not None:
            out["objects"] = self.objects.to_dict()
        return out


def confusion_matrix(pred: np.ndarray, target: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts (K, K) of pixels with true class i (row) predicted as j (column)."""
    index = target.astype(np.int64).ravel() * num_classes + pred.astype(np.int64).ravel()
    return np.bincount(index, minlength=num_classes**2).reshape(num_classes, num_classes)


def match_objects(pred_foreground: np.ndarray, instances: np.ndarray, threshold: float = MATCH_IOU) -> ObjectScores:
    """Label the predicted foreground's connected components (4-connected) and match them to the true
    instances (see ``match_instances``)."""
    return match_instances(ndimage.label(pred_foreground)[0], instances, threshold)


def match_instances(predicted: np.ndarray, instances: np.ndarray, threshold: float = MATCH_IOU) -> ObjectScores:
    """Match predicted objects (labels > 0) one-to-one to the true instances (labels > 0) with IoU >
    ``threshold``; above 0.5 a match is necessarily unique."""
    if threshold < 0.5:
        raise UNetError(f"object matching: expected an IoU threshold >= 0.5 (unique matches), found {threshold}")
    pred, n_pred = _renumber(predicted)                         # (H, W) 1..n_pred
    truth, n_true = _renumber(instances)                        # (H, W) 1..n_true
    both = (truth > 0) & (pred > 0)
    codes, inter = np.unique(truth[both] * (n_pred + 1) + pred[both], return_counts=True)
    t, p = np.divmod(codes, n_pred + 1)                         # overlapping pairs only: sparse
    true_area = np.bincount(truth.ravel(), minlength=n_true + 1)
    pred_area = np.bincount(pred.ravel(), minlength=n_pred + 1)
    tp = int((inter > threshold * (true_area[t] + pred_area[p] - inter)).sum())
    return ObjectScores(tp=tp, fp=n_pred - tp, fn=n_true - tp)


def _renumber(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Labels (H, W) int64 renumbered 1..n in order of their values, 0 kept; and n."""
    ids = np.unique(labels[labels > 0])
    return np.where(labels > 0, np.searchsorted(ids, labels) + 1, 0), len(ids)


def score(pred: np.ndarray, target: np.ndarray, num_classes: int, instances: np.ndarray | None = None,
          predicted_objects: np.ndarray | None = None) -> Scores:
    """Scores of a predicted label image against the true one; object scores when ``instances`` is given,
    of ``predicted_objects`` (labels, 0 = none) or else of the predicted foreground's connected components."""
    if instances is None:
        return Scores(confusion_matrix(pred, target, num_classes))
    found = predicted_objects if predicted_objects is not None else ndimage.label(pred > 0)[0]
    return Scores(confusion_matrix(pred, target, num_classes), match_instances(found, instances))

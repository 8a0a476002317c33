"""IoU and Dice per class, and object-level precision, recall and F1 at IoU 0.5."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from unet.train.metrics import ObjectScores, Scores, confusion_matrix, match_objects, score


def test_iou_and_dice_by_hand():
    target = np.array([[0, 0, 1, 1],
                       [0, 2, 2, 1]])
    pred = np.array([[0, 1, 1, 1],
                     [0, 2, 0, 1]])
    s = score(pred, target, 3)
    np.testing.assert_array_equal(s.confusion, [[2, 1, 0], [0, 3, 0], [1, 0, 1]])
    assert s.iou == pytest.approx((2 / 4, 3 / 4, 1 / 2))
    assert s.dice == pytest.approx((4 / 6, 6 / 7, 2 / 3))
    assert s.foreground_iou == pytest.approx(4 / 6)             # foreground pooled: 4 of 6 pixels in the union
    assert s.foreground_dice == pytest.approx(8 / 10)


def test_absent_class_predicted_nowhere_counts_as_perfect():
    s = score(np.zeros((3, 3), int), np.zeros((3, 3), int), 2)
    assert s.iou == (1.0, 1.0) and s.foreground_iou == 1.0 and s.foreground_dice == 1.0


def test_scores_pool_like_one_image():
    rng = np.random.default_rng(0)
    a_pred, a_true, b_pred, b_true = (rng.integers(0, 3, (9, 11)) for _ in range(4))
    pooled = score(a_pred, a_true, 3) + score(b_pred, b_true, 3)
    joined = score(np.hstack([a_pred, b_pred]), np.hstack([a_true, b_true]), 3)
    np.testing.assert_array_equal(pooled.confusion, joined.confusion)
    assert pooled.iou == joined.iou


def two_objects() -> np.ndarray:
    instances = np.zeros((20, 30), np.int64)
    instances[2:10, 2:10] = 4                                   # labels need not be consecutive
    instances[12:18, 15:25] = 9
    return instances


def test_perfect_prediction_matches_every_object():
    instances = two_objects()
    objects = match_objects(instances > 0, instances)
    assert objects == ObjectScores(tp=2, fp=0, fn=0)
    assert (objects.precision, objects.recall, objects.f1) == (1.0, 1.0, 1.0)


def test_missed_spurious_and_poorly_overlapping_objects():
    instances = two_objects()
    pred = np.zeros_like(instances, bool)
    pred[2:10, 2:10] = True                                     # exact match
    pred[12:18, 15:19] = True                                   # 24 of 60 px of the second object: IoU 0.4
    pred[0:2, 27:30] = True                                     # spurious
    objects = match_objects(pred, instances)
    assert objects == ObjectScores(tp=1, fp=2, fn=1)
    assert objects.precision == pytest.approx(1 / 3) and objects.recall == pytest.approx(1 / 2)
    assert objects.f1 == pytest.approx(2 / 5)


def test_merged_touching_objects_match_neither():
    """The failure the border weights fight: two touching nuclei predicted as one blob."""
    instances = np.zeros((10, 20), np.int64)
    instances[2:8, 2:10], instances[2:8, 10:18] = 1, 2
    assert match_objects(instances > 0, instances) == ObjectScores(tp=0, fp=1, fn=2)


def test_empty_prediction_and_empty_truth():
    instances = two_objects()
    nothing = np.zeros_like(instances, bool)
    assert match_objects(nothing, instances) == ObjectScores(tp=0, fp=0, fn=2)
    assert match_objects(nothing, instances).f1 == 0.0
    assert match_objects(nothing, np.zeros_like(instances)).f1 == 1.0


def test_score_with_instances_carries_object_scores_and_dict():
    instances = two_objects()
    s = score((instances > 0).astype(int), (instances > 0).astype(int), 2, instances)
    d = s.to_dict(["background", "nucleus"])
    assert d["iou"] == {"background": 1.0, "nucleus": 1.0}
    assert d["objects"]["f1"] == 1.0 and d["objects"]["tp"] == 2
    assert "objects" not in score(np.zeros((2, 2), int), np.zeros((2, 2), int), 2).to_dict(["a", "b"])


def test_threshold_below_one_half_is_refused():
    with pytest.raises(ValueError, match="IoU threshold >= 0.5"):
        match_objects(np.zeros((2, 2), bool), np.zeros((2, 2), int), threshold=0.3)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000))
def test_object_scores_are_consistent_with_a_brute_force_matching(seed):
    rng = np.random.default_rng(seed)
    instances = ndimage.zoom(rng.integers(0, 5, (5, 6)), 4, order=0) * (rng.random((20, 24)) < 0.97)
    pred = ndimage.binary_opening(rng.random((20, 24)) < 0.5) if seed % 2 else instances > 0
    labelled, n_pred = ndimage.label(pred)
    ids = [v for v in np.unique(instances) if v]
    ious = np.array([[np.sum((instances == t) & (labelled == p)) / np.sum((instances == t) | (labelled == p))
                      for p in range(1, n_pred + 1)] for t in ids]).reshape(len(ids), n_pred)
    tp = int((ious > 0.5).sum())
    assert (ious > 0.5).sum(axis=0).max(initial=0) <= 1 and (ious > 0.5).sum(axis=1).max(initial=0) <= 1
    assert match_objects(pred, instances) == ObjectScores(tp=tp, fp=n_pred - tp, fn=len(ids) - tp)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.integers(2, 5))
def test_per_class_bounds(seed, k):
    rng = np.random.default_rng(seed)
    pred, target = rng.integers(0, k, (2, 13, 7))
    s = Scores(confusion_matrix(pred, target, k))
    assert s.confusion.sum() == pred.size
    for iou, dice in zip(s.iou, s.dice):
        assert 0 <= iou <= dice <= 1
        assert dice == pytest.approx(2 * iou / (1 + iou))

"""Label pyramids and class indices against brute force: odd sizes, few and many labels, ties."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from unet.infer.predict import class_index
from unet.job.pyramid import mode2x2


def _mode_brute_force(labels: np.ndarray) -> np.ndarray:
    """Count each 2x2 quad (edge-repeated at odd sizes); most frequent first, then the larger label."""
    h, w = labels.shape
    padded = np.pad(labels, ((0, h % 2), (0, w % 2)), mode="edge")
    out = np.empty((padded.shape[0] // 2, padded.shape[1] // 2), labels.dtype)
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            counts = Counter(padded[2 * i:2 * i + 2, 2 * j:2 * j + 2].ravel().tolist())
            out[i, j] = max(counts, key=lambda v: (counts[v], v))
    return out


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (7, 1), (8, 8), (13, 21), (40, 33)])
@pytest.mark.parametrize("classes", [1, 2, 3, 5, 16, 17, 256])  # each path: ones, table, sorting
def test_mode2x2_equals_counting(shape, classes):
    labels = np.random.default_rng(classes * 100 + shape[0]).integers(0, classes, shape).astype(np.uint8)
    np.testing.assert_array_equal(mode2x2(labels), _mode_brute_force(labels))


def test_mode2x2_ties_go_to_the_larger_label():
    quads = np.array([[1, 2], [2, 1]], np.uint8), np.array([[0, 3], [1, 2]], np.uint8)
    assert [mode2x2(q)[0, 0] for q in quads] == [2, 3]


@pytest.mark.parametrize("classes", [1, 2, 3, 7])
def test_class_index_equals_argmax_first_on_ties(classes):
    probs = np.random.default_rng(classes).random((classes, 31, 17)).astype(np.float32)
    probs[:, :5] = probs[:1, :5]  # ties across every class on the first rows
    labels = class_index(probs)
    assert labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, probs.argmax(axis=0))

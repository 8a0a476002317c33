"""Classes taken on the device (``TilePredictor.predict_classes``) equal ``class_index`` of the probabilities
taken on the host, ties included (the first class wins), on odd sizes and tiles."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unet import TilePredictor, UNet
from unet.infer.predict import class_index


@pytest.mark.parametrize("classes, shape, tile", [(2, (61, 97), 44), (3, (50, 33), 60)])
def test_device_classes_equal_class_index_of_probabilities(classes, shape, tile):
    torch.manual_seed(3)
    model = UNet(num_classes=classes, depth=2, base_channels=2).eval()
    image = np.random.default_rng(0).random((1, *shape), dtype=np.float32)
    predictor = TilePredictor(model, tile=tile, device="cpu")
    args = (lambda r, c: image[:, r, c], shape, (0, shape[0]), (0, shape[1]))
    np.testing.assert_array_equal(predictor.predict_classes(*args), class_index(predictor.predict_region(*args)))


def test_ties_go_to_the_first_class_on_the_device_too():
    torch.manual_seed(0)
    model = UNet(num_classes=3, depth=2, base_channels=2).eval()
    with torch.no_grad():                       # every class gets the same logit: all ties
        model.outc.weight.zero_()
        model.outc.bias.zero_()
    predictor = TilePredictor(model, tile=44, device="cpu")
    labels = predictor.forward(np.zeros((1, 1, 44, 44), np.float32), classes=True)   # (1, 1, n, n)
    assert labels.dtype == np.uint8 and not labels.any()


@pytest.mark.parametrize("classes", [1, 2, 3, 7])
def test_class_index_tensor_equals_torch_argmax_first_on_ties(classes):
    """The per-class comparison that replaces torch's slow argmax along the class axis: the same labels,
    ties among some or all classes included."""
    from unet.infer.predict import class_index_tensor

    rng = np.random.default_rng(classes)
    probs = torch.from_numpy(rng.random((2, classes, 23, 19)).astype(np.float32))   # (B, K, h, w)
    probs[:, :, :4] = probs[:, :1, :4]                           # ties across every class
    if classes > 2:
        probs[:, 2, 4:8] = probs[:, 1, 4:8]                      # ties between two classes, maybe the best
    labels = class_index_tensor(probs)                           # (B, 1, h, w)
    assert labels.dtype == torch.uint8 and labels.shape == (2, 1, 23, 19)
    torch.testing.assert_close(labels, probs.argmax(dim=1, keepdim=True).to(torch.uint8), rtol=0, atol=0)

"""The paper's weighted loss: pixel-wise softmax cross-entropy with the weight map
w = w_c + w0 * exp(-(d1 + d2)^2 / (2 sigma^2)), and the background gaps that separate touching instances.

w_c balances the class frequencies; d1 and d2 are the distances to the nearest and the second-nearest
instance. The border term is applied to background pixels only, the separation borders of the paper's
Fig. 3: inside an instance d1 = 0 and the term would merely up-weight its rim.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from unet.errors import UNetError

NEGLIGIBLE = 1e-3      # border weights below this fraction of w0 are left out (set to 0)


@dataclass(frozen=True)
class LossConfig:
    """w0 and sigma (pixels) of the border term; whether to balance class frequencies (None: yes, except
    for the contour recipe, whose rare boundary class would be over-predicted) and to add border weights
    (instance masks only); and the weight of an optional soft Dice term (0 = none)."""

    w0: float = 10.0
    sigma: float = 5.0
    class_balance: bool | None = None
    border_weights: bool = True
    dice: float = 0.0

    def __post_init__(self) -> None:
        for name in ("w0", "sigma", "dice"):
            if getattr(self, name) < 0:
                raise UNetError(f"loss: expected {name} >= 0, found {getattr(self, name)}")
        if self.sigma == 0:
            raise UNetError("loss: expected sigma > 0 pixels, found 0")


def separate_instances(instances: np.ndarray) -> np.ndarray:
    """Instance labels with a one-pixel background gap drawn between touching instances: of two touching
    instances, the one with the larger label gives up its pixels that touch the other (8-neighbourhood),
    so that no two instances stay 8-connected."""
    labels = instances.astype(np.int64)
    big = int(labels.max()) + 1                                 # stands for "no instance"
    others_min = ndimage.minimum_filter(np.where(labels > 0, labels, big), size=3, mode="constant", cval=big)
    touching_smaller = (labels > 0) & (others_min < labels)     # a smaller label in the neighbourhood
    out = instances.copy()
    out[touching_smaller] = 0
    return out


def border_weights(instances: np.ndarray, w0: float = 10.0, sigma: float = 5.0) -> np.ndarray:
    """w0 * exp(-(d1 + d2)^2 / (2 sigma^2)) on background pixels, 0 on instances, float32 (H, W).

    Each instance's distance transform is computed only within its bounding box grown by the largest
    distance that can still give a weight of at least NEGLIGIBLE * w0, so the cost grows with the number
    of instances times their size, not with the image area.
    """
    reach = int(math.ceil(sigma * math.sqrt(2 * math.log(1 / NEGLIGIBLE))))  # d1 + d2 beyond: negligible
    d1 = np.full(instances.shape, np.inf)
    d2 = np.full(instances.shape, np.inf)
    for label, box in enumerate(ndimage.find_objects(instances), start=1):
        if box is None:
            continue
        window = tuple(slice(max(0, s.start - reach), s.stop + reach) for s in box)
        distance = ndimage.distance_transform_edt(instances[window] != label)  # (h, w) exact in the window
        near, second = d1[window], d2[window]                   # views: updated in place
        second[...] = np.minimum(second, np.maximum(near, distance))
        near[...] = np.minimum(near, distance)
    weights = w0 * np.exp(-((d1 + d2) ** 2) / (2 * sigma**2))  # inf distances give 0
    weights[(instances > 0) | (weights < NEGLIGIBLE * w0)] = 0
    return weights.astype(np.float32)


def class_frequency_weights(masks: Sequence[np.ndarray], num_classes: int) -> np.ndarray:
    """Per-class weights (K,) inversely proportional to the class frequencies over all ``masks``,
    scaled so that the mean weight over all pixels is 1; a class that never occurs gets 1."""
    counts = np.sum([np.bincount(m.ravel(), minlength=num_classes)[:num_classes] for m in masks], axis=0)
    present = counts > 0
    weights = np.ones(num_classes)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return weights


def weighted_cross_entropy(logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Softmax cross-entropy of logits (B, K, h, w) against target (B, h, w), averaged with the per-pixel
    weights (B, h, w): sum(w * ce) / sum(w), so the loss scale does not depend on the weights' scale."""
    ce = F.cross_entropy(logits, target, reduction="none")     # (B, h, w)
    return (weights * ce).sum() / weights.sum().clamp_min(1e-12)


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - the mean soft Dice of the foreground classes (1..K-1), over the whole batch."""
    probs = torch.softmax(logits, dim=1)[:, 1:]                 # (B, K-1, h, w)
    onehot = F.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2)[:, 1:].to(probs.dtype)  # (B, K-1, h, w)
    inter = (probs * onehot).sum(dim=(0, 2, 3))                 # (K-1,)
    total = probs.sum(dim=(0, 2, 3)) + onehot.sum(dim=(0, 2, 3))
    return 1 - ((2 * inter + eps) / (total + eps)).mean()


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor,
                      dice: float = 0.0) -> torch.Tensor:
    """Weighted cross-entropy plus ``dice`` times the soft Dice loss."""
    loss = weighted_cross_entropy(logits, target, weights)
    return loss + dice * soft_dice_loss(logits, target) if dice else loss

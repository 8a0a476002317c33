"""OME-NGFF 0.5 metadata for a label image: multiscales with axes and per-level transforms, and the
image-label block with one colour and class name per label value."""

from __future__ import annotations

from typing import Any

NGFF_VERSION = "0.5"
_PALETTE = [(0, 0, 0, 0), (230, 25, 75, 255), (60, 180, 75, 255), (255, 225, 25, 255), (0, 130, 200, 255),
            (245, 130, 48, 255), (145, 30, 180, 255), (70, 240, 240, 255), (240, 50, 230, 255)]


def class_colors(num_classes: int) -> list[tuple[int, int, int, int]]:
    """One RGBA colour per class value; value 0 (background) transparent."""
    return [_PALETTE[v % len(_PALETTE)] for v in range(num_classes)]


def label_metadata(levels: int, scale: tuple[float, float], translation: tuple[float, float],
                   units: tuple[str | None, str | None], class_names: list[str] | None, name: str,
                   source_image: str | None = None) -> dict[str, Any]:
    """The ``ome`` attributes of a label group whose level k is level 0 halved k times by 2x2 blocks.
    Without ``class_names`` (an instance image: one value per object) no colours or properties are listed."""
    axes = [{"name": axis, "type": "space", **({"unit": unit} if unit else {})}
            for axis, unit in zip("yx", units)]
    datasets = []
    for k in range(levels):
        factor = 2 ** k  # a level-k pixel covers 2^k level-0 pixels; its centre moves by (2^k - 1) / 2
        datasets.append({"path": str(k), "coordinateTransformations": [
            {"type": "scale", "scale": [s * factor for s in scale]},
            {"type": "translation", "translation": [t + (factor - 1) / 2 * s for t, s in zip(translation, scale)]},
        ]})
    image_label: dict[str, Any] = {} if class_names is None else {
        "colors": [{"label-value": v, "rgba": list(rgba)} for v, rgba in enumerate(class_colors(len(class_names)))],
        "properties": [{"label-value": v, "class": c} for v, c in enumerate(class_names)],
    }
    if source_image:
        image_label["source"] = {"image": source_image}
    return {"version": NGFF_VERSION,
            "multiscales": [{"name": name, "axes": axes, "datasets": datasets}],
            "image-label": image_label}

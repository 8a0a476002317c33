"""Reading OME-NGFF multiscales metadata of an input image (0.4 in Zarr 2 `.zattrs`, 0.5 under
`attributes["ome"]` in Zarr 3): which array holds a level, its axes, and its pixel size and offset."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from unet.errors import UNetError

_TYPE_ROLES = {"time": "t", "channel": "c"}


def find_multiscales(attrs: Mapping[str, Any]) -> Mapping | None:
    """The first ``multiscales`` entry of a group's attributes (NGFF 0.5, else 0.4), or None."""
    ome = attrs.get("ome")
    entries = (ome if isinstance(ome, Mapping) else attrs).get("multiscales")
    return entries[0] if isinstance(entries, list) and entries and isinstance(entries[0], Mapping) else None


def level_path(multiscale: Mapping, level: int, name: str) -> str:
    """The array path of ``level``; UNetError naming the levels there are."""
    datasets = multiscale.get("datasets") or []
    if level >= len(datasets):
        available = ", ".join(f"{i} ({d.get('path')!r})" for i, d in enumerate(datasets)) or "none"
        raise UNetError(f"input {name}: expected pyramid level {level}, found levels {available}; "
                        f"choose one of them with --level")
    return str(datasets[level]["path"])


def axis_roles(multiscale: Mapping, ndim: int, name: str) -> str:
    """One role per axis: 't', 'c', 'z', 'y' or 'x', from the axis names, else from their types.

    NGFF 0.1/0.2 have no axes: then they are the last ``ndim`` of "tczyx".
    """
    axes = multiscale.get("axes") or list("tczyx"[-ndim:])
    if len(axes) != ndim:
        raise UNetError(f"input {name}: expected as many OME axes as the level array has dimensions "
                        f"({ndim}), found {len(axes)}")
    roles = []
    for axis in axes:
        axis_name = (axis if isinstance(axis, str) else axis.get("name", "")).lower()
        axis_type = "" if isinstance(axis, str) else axis.get("type", "")
        role = axis_name if axis_name in ("t", "c", "z", "y", "x") else _TYPE_ROLES.get(axis_type)
        if role is None:
            raise UNetError(f"input {name}: expected OME axes named t, c, z, y, x (or of type time or "
                            f"channel), found axis {axis_name!r} of type {axis_type!r}")
        roles.append(role)
    return "".join(roles)


def axis_units(multiscale: Mapping, ndim: int) -> list[str | None]:
    """The unit of each axis, None where not given."""
    axes = multiscale.get("axes") or [None] * ndim
    return [axis.get("unit") if isinstance(axis, Mapping) else None for axis in axes]


def level_transform(multiscale: Mapping, level: int, ndim: int, name: str) -> tuple[list[float], list[float]]:
    """Per-axis (scale, translation) of ``level``: its own transforms, then the multiscale-wide ones."""
    scale, translation = [1.0] * ndim, [0.0] * ndim
    dataset = multiscale["datasets"][level]
    for transform in [*dataset.get("coordinateTransformations", []),
                      *multiscale.get("coordinateTransformations", [])]:
        kind = transform.get("type")
        if kind == "identity":
            continue
        values = transform.get(kind)
        if kind not in ("scale", "translation") or not isinstance(values, list) or len(values) != ndim:
            raise UNetError(f"input {name}: expected coordinateTransformations of type scale or translation "
                            f"with {ndim} values, found {transform}")
        for i, value in enumerate(values):  # x -> a*x + b, composed in the listed order
            if kind == "scale":
                scale[i], translation[i] = scale[i] * value, translation[i] * value
            else:
                translation[i] += value
    return scale, translation

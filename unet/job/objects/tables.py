"""The files --objects writes beside the label image: objects.parquet and, for georeferenced inputs,
objects.geojson (outlines unioned across blocks, in the input's CRS)."""

from __future__ import annotations

import json
import posixpath
from collections import defaultdict
from typing import Any

import numpy as np
from affine import Affine

from unet.io.output import OutputSpec, filesystem
from unet.job.plan import BlockPlan
from unet.job.spec import SHAPES

TABLE, POLYGONS = "objects.parquet", "objects.geojson"


def write_table(out: OutputSpec, columns: dict[str, np.ndarray], units: tuple[str | None, str | None], crs: str | None) -> Any:
    """objects.parquet, with the units of the physical columns and the CRS in the schema metadata; returns
    the pyarrow table."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(columns)
    meta = {"units": {"y": units[0], "x": units[1]}, "coordinates": "pixel centres; bbox stops exclusive",
            "crs": crs}
    table = table.replace_schema_metadata({"unet": json.dumps(meta)})
    fs, path = filesystem(out.url, out.storage_options)
    with fs.open(posixpath.join(path, TABLE), "wb") as f:
        pq.write_table(table, f)
    return table


def write_polygons(out: OutputSpec, instances: OutputSpec, plan: BlockPlan, rows: list[dict[str, Any]],
                   transform: Affine, crs: str | None) -> None:
    """objects.geojson: the pieces of each object (one per block it touches) unioned with shapely in pixel
    coordinates, where shared edges match exactly, then mapped to the input's CRS. A piece that touches
    itself at a corner (8-connectivity) is made valid first, so an outline may be a MultiPolygon."""
    import shapely
    from shapely.geometry import mapping, shape

    fs, path = filesystem(instances.url, instances.storage_options)
    pieces: dict[int, list] = defaultdict(list)
    for data in fs.cat([posixpath.join(path, SHAPES, b.key) for b in plan]).values():
        for object_id, polygon in json.loads(data):
            pieces[object_id].append(shapely.make_valid(shape(polygon)))
    matrix = [transform.a, transform.b, transform.d, transform.e, transform.c, transform.f]
    header = {"type": "FeatureCollection", **({"crs": _geojson_crs(crs)} if crs else {})}
    out_fs, out_path = filesystem(out.url, out.storage_options)
    with out_fs.open(posixpath.join(out_path, POLYGONS), "w") as f:  # streamed: one line per object
        f.write(json.dumps(header)[:-1] + ', "features": [\n')
        for n, row in enumerate(rows):
            outline = shapely.affinity.affine_transform(shapely.union_all(pieces[row["id"]]), matrix)
            feature = {"type": "Feature", "id": row["id"], "geometry": mapping(outline), "properties": row}
            f.write(("," if n else "") + json.dumps(feature) + "\n")
        f.write("]}\n")


def _geojson_crs(crs: str) -> dict:
    """The (pre-RFC 7946) ``crs`` member that GDAL and QGIS read: an OGC URN when the CRS has an EPSG code."""
    from rasterio.crs import CRS

    try:
        code = CRS.from_user_input(crs).to_epsg()
    except Exception:  # noqa: BLE001 - rasterio raises its own CRSError for anything it cannot parse
        code = None
    return {"type": "name", "properties": {"name": f"urn:ogc:def:crs:EPSG::{code}" if code else crs}}

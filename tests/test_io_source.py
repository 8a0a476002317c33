"""open_source on real stores: Zarr 2 and 3 arrays and groups, OME-Zarr 0.4/0.5, TIFF pyramids, S3 (moto);
every window is compared with the NumPy array that was written."""

from __future__ import annotations

import functools
import http.server
import json
import pickle
import shutil
import threading
import time

import numpy as np
import pytest
import s3fs
import tifffile
import zarr
from zarr.storage import FsspecStore, LocalStore

from unet.errors import UNetError
from unet.io import SourceSpec, open_source

H, W = 301, 517
WINDOWS = [(slice(0, H), slice(0, W)), (slice(250, H), slice(400, W)), (slice(0, 1), slice(W - 1, W)),
           (slice(37, 163), slice(91, 92)), (slice(None), slice(500, None)), (slice(5, 5), slice(0, 10))]
OME_AXES = [{"name": "t", "type": "time"}, {"name": "c", "type": "channel"}, {"name": "z", "type": "space"},
            {"name": "y", "type": "space", "unit": "micrometer"}, {"name": "x", "type": "space", "unit": "micrometer"}]


def random_image(shape, dtype, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        return rng.normal(size=shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)


def write_zarr(url_or_path, data, chunks, zarr_format=3, storage_options=None, **kwargs) -> zarr.Array:
    store = (FsspecStore.from_url(url_or_path, storage_options=storage_options) if storage_options
             else LocalStore(url_or_path))
    array = zarr.create_array(store, shape=data.shape, chunks=chunks, dtype=data.dtype, zarr_format=zarr_format,
                              **kwargs)
    array[...] = data
    return array


def assert_windows_match(source, expected_cyx):
    for rows, cols in WINDOWS:
        out = source.read(rows, cols)
        np.testing.assert_array_equal(out, expected_cyx[:, rows, cols])
        assert out.dtype == expected_cyx.dtype and out.flags.writeable and out.flags.c_contiguous


# --- plain arrays ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("zarr_format", [2, 3])
@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "int32", "float32", "float64"])
def test_plain_2d_array_round_trips_every_dtype(tmp_path, zarr_format, dtype):
    data = random_image((H, W), dtype)
    write_zarr(tmp_path / "m.zarr", data, chunks=(64, 100), zarr_format=zarr_format)
    source = open_source(SourceSpec(str(tmp_path / "m.zarr")))
    assert (source.shape, source.channels, source.dtype, source.chunks) == ((H, W), 1, np.dtype(dtype), (64, 100))
    assert (source.scale, source.translation, source.units, source.georef, source.is_ome) == (
        (1.0, 1.0), (0.0, 0.0), (None, None), {}, False)
    assert_windows_match(source, data[np.newaxis])


@pytest.mark.parametrize("zarr_format", [2, 3])
@pytest.mark.parametrize("shape, axes, to_cyx", [
    ((3, H, W), None, lambda a: a),
    ((H, W, 4), None, lambda a: a.transpose(2, 0, 1)),
    ((16, H, 17), None, lambda a: a),                     # both small: channels first wins
    ((H, 40, 16), None, lambda a: a.transpose(2, 0, 1)),
    ((H, W, 2), "yxc", lambda a: a.transpose(2, 0, 1)),
    ((5, H, 3), "yxc", lambda a: a.transpose(2, 0, 1)),   # explicit axes override the rule
    ((H, W), "yx", lambda a: a[np.newaxis]),
])
def test_plain_array_axes_given_or_inferred(tmp_path, zarr_format, shape, axes, to_cyx):
    data = random_image(shape, "uint8", seed=1)
    write_zarr(tmp_path / "m.zarr", data, chunks=tuple(min(s, 70) for s in shape), zarr_format=zarr_format)
    source = open_source(SourceSpec(f"file://{tmp_path}/m.zarr", axes=axes))
    expected = to_cyx(data)
    assert (source.channels, *source.shape) == expected.shape
    for rows, cols in [(slice(0, shape[0]), slice(1, 3)), (slice(2, 3), slice(0, None))]:
        rows = slice(rows.start, min(rows.stop, source.shape[0]))
        np.testing.assert_array_equal(source.read(rows, cols), expected[:, rows, cols])


def test_big_endian_zarr2_reads_in_native_byte_order(tmp_path):
    data = random_image((H, W), "uint16").astype(">u2")
    write_zarr(tmp_path / "be.zarr", data, chunks=(100, 100), zarr_format=2)
    source = open_source(SourceSpec(str(tmp_path / "be.zarr")))
    out = source.read(slice(10, 20), slice(500, W))
    assert source.dtype == out.dtype == np.dtype("=u2")
    np.testing.assert_array_equal(out[0], data[10:20, 500:])


def test_sharded_array_reports_inner_chunks(tmp_path):
    data = random_image((2, H, W), "uint8")
    write_zarr(tmp_path / "s.zarr", data, chunks=(2, 32, 48), shards=(2, 128, 192))
    source = open_source(SourceSpec(str(tmp_path / "s.zarr")))
    assert source.chunks == (32, 48)
    assert_windows_match(source, data)


def test_group_with_one_image_array_and_coordinates_opens_the_image(tmp_path):
    data = random_image((3, H, W), "uint8")
    group = zarr.open_group(LocalStore(tmp_path / "g.zarr"), mode="w", zarr_format=2)
    group.attrs.update({"crs": "EPSG:32633", "proj:epsg": 32633, "title": "scene"})
    group.create_array("band", shape=(3,), dtype="i4")
    group.create_array("spatial_ref", shape=(), dtype="i4")
    image = group.create_array("image", shape=data.shape, chunks=(3, 100, 100), dtype="uint8")
    image[...] = data
    image.attrs["transform"] = [10.0, 0.0, 500000.0, 0.0, -10.0, 4000000.0]
    source = open_source(SourceSpec(str(tmp_path / "g.zarr")))
    assert source.georef == {"crs": "EPSG:32633", "proj:epsg": 32633,
                             "transform": [10.0, 0.0, 500000.0, 0.0, -10.0, 4000000.0]}
    assert_windows_match(source, data)


def test_source_window_must_lie_inside_the_image(tmp_path):
    write_zarr(tmp_path / "m.zarr", np.zeros((H, W), "uint8"), chunks=(64, 64))
    source = open_source(SourceSpec(str(tmp_path / "m.zarr")))
    for rows, cols in [(slice(-1, 5), slice(0, 5)), (slice(0, H + 1), slice(0, 5)), (slice(0, 5), slice(0, 9, 2)),
                       (slice(6, 5), slice(0, 5))]:
        with pytest.raises(IndexError, match="not a unit-step range inside"):
            source.read(rows, cols)


# --- bad inputs -----------------------------------------------------------------------------------------------

def _make_bad_input(tmp_path, kind):
    path = tmp_path / "in"
    if kind == "missing":
        pass
    elif kind == "text file":
        path.write_text("hello")
    elif kind == "fake tiff":
        path = tmp_path / "in.tif"
        path.write_bytes(b"II*\x00" + b"\xff" * 20)
    elif kind == "empty dir":
        path.mkdir()
    elif kind == "two arrays":
        group = zarr.open_group(LocalStore(path), mode="w")
        group.create_array("a", shape=(9, 9), dtype="u1")
        group.create_array("b", shape=(9, 9), dtype="u1")
    elif kind == "empty group":
        zarr.open_group(LocalStore(path), mode="w", zarr_format=2)
    elif kind == "corrupt metadata":
        path.mkdir()
        (path / "zarr.json").write_text("{not json")
    else:
        shape, dtype = {"1-D": ((50,), "u1"), "4-D": ((1, 2, 30, 40), "u1"), "no channel dim": ((20, 30, 40), "u1"),
                        "complex": ((30, 40), "c8")}[kind]
        write_zarr(path, np.zeros(shape, dtype), chunks=shape)
    return str(path)


@pytest.mark.parametrize("kind, message", [
    ("missing", r"input \S+/in: not found \(expected a Zarr array"),
    ("text file", "expected a Zarr store .* or a TIFF file, found a file that is neither"),
    ("fake tiff", "expected a readable TIFF image"),
    ("empty dir", "expected a Zarr array or group, found no zarr.json/.zarray/.zgroup"),
    ("two arrays", "expected an OME-Zarr image or a group holding one image array, found arrays a, b"),
    ("empty group", "found no array of 2 or more dimensions"),
    ("corrupt metadata", "expected valid Zarr metadata"),
    ("1-D", r"expected a 2-D \(y, x\) or 3-D .* found shape \(50,\)"),
    ("4-D", r"found shape \(1, 2, 30, 40\)"),
    ("no channel dim", r"cannot tell which dimension of shape \(20, 30, 40\) holds channels .*; pass axes"),
    ("complex", "found dtype complex64"),
])
def test_bad_inputs_give_one_line_errors(tmp_path, kind, message):
    with pytest.raises(UNetError, match=message) as error:
        open_source(SourceSpec(_make_bad_input(tmp_path, kind)))
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("shape, spec_kwargs, message", [
    ((30, 40), {"axes": "cyx"}, "axes 'cyx' name 3 dimensions, found a 2-D array"),
    ((3, 30, 40), {"axes": "yx"}, "axes 'yx' name 2 dimensions, found a 3-D array"),
    ((30, 40), {"level": 1}, "expected level 0 of a plain array"),
])
def test_plain_array_spec_mismatches(tmp_path, shape, spec_kwargs, message):
    write_zarr(tmp_path / "m.zarr", np.zeros(shape, "u1"), chunks=shape)
    with pytest.raises(UNetError, match=message):
        open_source(SourceSpec(str(tmp_path / "m.zarr"), **spec_kwargs))


@pytest.mark.parametrize("spec_kwargs, message", [
    ({"axes": "xy"}, "expected axes yx, cyx, yxc, found 'xy'"),
    ({"axes": "tczyx"}, "expected axes yx, cyx, yxc"),
    ({"level": -1}, "expected a pyramid level >= 0, found -1"),
])
def test_spec_refuses_unknown_axes_and_negative_levels(spec_kwargs, message):
    with pytest.raises(UNetError, match=message):
        SourceSpec("/x.zarr", **spec_kwargs)


def test_spec_hides_storage_options_and_pickles():
    spec = SourceSpec("s3://AKIAKEY:s3cr3t@bucket/m.zarr?X-Amz-Signature=s1gn",
                      storage_options={"key": "AKIAKEY", "secret": "s3cr3t", "token": "t0ken"})
    assert repr(spec) == "SourceSpec(url='s3://bucket/m.zarr', level=None, axes=None)"
    assert "s3cr3t" not in str(spec)
    clone = pickle.loads(pickle.dumps(spec))
    assert clone == spec and clone.storage_options["secret"] == "s3cr3t"
    assert spec == SourceSpec(spec.url) and hash(spec) == hash(SourceSpec(spec.url))


# --- OME-Zarr -------------------------------------------------------------------------------------------------

def write_ome(path, base_tczyx, version, n_levels=3, image_path="", axes=OME_AXES):
    """An OME-NGFF image (0.4: Zarr 2, 0.5: Zarr 3) whose level k is base[..., ::2**k, ::2**k]."""
    root = zarr.open_group(LocalStore(path), mode="w", zarr_format=2 if version == "0.4" else 3)
    image = root.create_group(image_path) if image_path else root
    datasets = []
    for k in range(n_levels):
        level = base_tczyx[..., :: 2**k, :: 2**k]
        array = image.create_array(str(k), shape=level.shape, chunks=(1, 1, 1, 64, 100), dtype=level.dtype)
        array[...] = level
        datasets.append({"path": str(k), "coordinateTransformations": [
            {"type": "scale", "scale": [1.0, 1.0, 1.0, 0.5 * 2**k, 0.25 * 2**k]},
            {"type": "translation", "translation": [0.0, 0.0, 0.0, 1.5, 2.5]}]})
    multiscale = {"axes": axes, "datasets": datasets, "name": "img", "coordinateTransformations": [
        {"type": "scale", "scale": [1.0, 1.0, 1.0, 2.0, 3.0]}]}
    if version == "0.4":
        image.attrs["multiscales"] = [{"version": "0.4", **multiscale}]
    else:
        image.attrs["ome"] = {"version": "0.5", "multiscales": [multiscale]}
    return root


@pytest.mark.parametrize("version", ["0.4", "0.5"])
@pytest.mark.parametrize("level", [0, 1, 2])
def test_ome_zarr_levels_axes_and_transforms(tmp_path, version, level):
    base = random_image((1, 2, 1, H, W), "uint16")
    write_ome(tmp_path / "img.zarr", base, version)
    source = open_source(SourceSpec(str(tmp_path / "img.zarr"), level=level))
    expected = base[0, :, 0, :: 2**level, :: 2**level]
    assert (source.channels, *source.shape) == expected.shape
    assert source.is_ome and source.ome_path == ""
    assert source.scale == (0.5 * 2**level * 2.0, 0.25 * 2**level * 3.0)
    assert source.translation == (1.5 * 2.0, 2.5 * 3.0)  # the multiscale-wide scale applies after it
    assert source.units == ("micrometer", "micrometer") and source.chunks == (64, 100)
    assert_windows_match(source, expected) if level == 0 else np.testing.assert_array_equal(
        source.read(slice(3, source.shape[0]), slice(0, source.shape[1])), expected[:, 3:])


def test_bioformats2raw_layout_opens_image_zero(tmp_path):
    base = random_image((1, 3, 1, H, W), "uint8")
    root = write_ome(tmp_path / "b2r.zarr", base, "0.4", n_levels=1, image_path="0")
    root.attrs["bioformats2raw.layout"] = 3
    root.create_group("OME")
    source = open_source(SourceSpec(str(tmp_path / "b2r.zarr")))
    assert source.is_ome and source.ome_path == "0"
    assert_windows_match(source, base[0, :, 0])


def test_ome_zarr_yx_only_has_one_channel(tmp_path):
    base = random_image((H, W), "float32")
    axes = [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}]
    root = zarr.open_group(LocalStore(tmp_path / "yx.zarr"), mode="w")
    root.create_array("s0", shape=base.shape, chunks=(128, 128), dtype=base.dtype)[...] = base
    root.attrs["ome"] = {"version": "0.5", "multiscales": [{"axes": axes, "datasets": [{"path": "s0"}]}]}
    source = open_source(SourceSpec(str(tmp_path / "yx.zarr")))
    assert source.channels == 1 and source.units == (None, None) and source.scale == (1.0, 1.0)
    assert_windows_match(source, base[np.newaxis])


@pytest.mark.parametrize("version", ["0.4", "0.5"])
@pytest.mark.parametrize("shape, spec_kwargs, message", [
    ((1, 1, 1, 40, 60), {"level": 5}, r"expected pyramid level 5, found levels 0 \('0'\), 1 \('1'\), 2 \('2'\)"),
    ((1, 1, 4, 40, 60), {}, "expected one 2-D image, found a stack of 4 along axis 'z'"),
    ((3, 1, 1, 40, 60), {}, "expected one 2-D image, found a time series of 3 along axis 't'"),
    ((1, 2, 1, 40, 60), {"axes": "yxc"}, "axes 'yxc' given, but its metadata says 'cyx'"),
])
def test_ome_zarr_refuses_volumes_series_and_missing_levels(tmp_path, version, shape, spec_kwargs, message):
    write_ome(tmp_path / "img.zarr", np.zeros(shape, "u1"), version)
    with pytest.raises(UNetError, match=message):
        open_source(SourceSpec(str(tmp_path / "img.zarr"), **spec_kwargs))


def test_ome_zarr_with_a_listed_level_missing_or_unknown_axes(tmp_path):
    root = write_ome(tmp_path / "img.zarr", np.zeros((1, 1, 1, 40, 60), "u1"), "0.5")
    shutil.rmtree(tmp_path / "img.zarr" / "1")
    with pytest.raises(UNetError, match="expected the array '1' of level 1 listed in the multiscales metadata"):
        open_source(SourceSpec(str(tmp_path / "img.zarr"), level=1))
    axes = [{"name": "q", "type": "space"}, *OME_AXES[1:]]
    root.attrs["ome"] = {**root.attrs["ome"], "multiscales": [{**root.attrs["ome"]["multiscales"][0], "axes": axes}]}
    with pytest.raises(UNetError, match="expected OME axes named t, c, z, y, x .* found axis 'q' of type 'space'"):
        open_source(SourceSpec(str(tmp_path / "img.zarr")))


# --- TIFF -----------------------------------------------------------------------------------------------------

GEOTAGS = [(33550, 12, 3, (0.5, 0.25, 0.0), True), (33922, 12, 6, (0.0, 0.0, 0.0, 100.0, 200.0, 0.0), True),
           (34735, 3, 8, (1, 1, 0, 1, 1024, 0, 1, 1), True), (34737, 2, 0, "WGS 84|", True)]


def write_rgb_pyramid(path, rgb, extratags=()):
    with tifffile.TiffWriter(path) as tif:
        tif.write(rgb, tile=(64, 64), subifds=2, photometric="rgb", extratags=list(extratags))
        for k in (1, 2):
            tif.write(rgb[:: 2**k, :: 2**k], tile=(64, 64), subfiletype=1, photometric="rgb")


@pytest.mark.parametrize("level", [0, 1, 2])
def test_tiff_pyramid_levels_channels_last_and_geotiff_tags(tmp_path, level):
    rgb = random_image((H, W, 3), "uint8")
    write_rgb_pyramid(tmp_path / "scene.tif", rgb, GEOTAGS)
    source = open_source(SourceSpec(str(tmp_path / "scene.tif"), level=level))
    expected = rgb[:: 2**level, :: 2**level].transpose(2, 0, 1)
    assert (source.channels, *source.shape) == expected.shape
    assert source.chunks == (64, 64) and source.scale == (2.0**level, 2.0**level) and not source.is_ome
    assert json.loads(json.dumps(source.georef)) == {"geotiff": {
        "ModelPixelScaleTag": [0.5, 0.25, 0.0], "ModelTiepointTag": [0.0, 0.0, 0.0, 100.0, 200.0, 0.0],
        "GeoKeyDirectoryTag": [1, 1, 0, 1, 1024, 0, 1, 1], "GeoAsciiParamsTag": "WGS 84|"}}
    np.testing.assert_array_equal(source.read(slice(0, None), slice(0, None)), expected)
    rows, cols = slice(source.shape[0] - 7, source.shape[0]), slice(60, min(131, source.shape[1]))  # edges, seams
    np.testing.assert_array_equal(source.read(rows, cols), expected[:, rows, cols])


@pytest.mark.parametrize("data, kwargs, channels", [
    (random_image((H, W), "uint16"), {"tile": (64, 64)}, 1),
    (random_image((H, W), "int8"), {}, 1),  # strips
    (random_image((2, H, W), "float32"), {"tile": (32, 32), "photometric": "minisblack",
                                          "metadata": {"axes": "CYX"}}, 2),
])
def test_tiff_gray_and_multichannel(tmp_path, data, kwargs, channels):
    tifffile.imwrite(tmp_path / "img.tiff", data, **kwargs)
    source = open_source(SourceSpec(f"file://{tmp_path}/img.tiff"))
    assert source.channels == channels and source.georef == {} and source.scale == (1.0, 1.0)
    assert_windows_match(source, data.reshape(channels, H, W))


@pytest.mark.parametrize("axes, message", [("ZYX", "found a stack of 5 along axis 'Z'"),
                                           ("TYX", "found a time series of 5 along axis 'T'")])
def test_tiff_stacks_are_refused(tmp_path, axes, message):
    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((5, 30, 40), "u1"), metadata={"axes": axes})
    with pytest.raises(UNetError, match=message):
        open_source(SourceSpec(str(tmp_path / "stack.tif")))


def test_tiff_missing_level_and_given_axes_are_refused(tmp_path):
    write_rgb_pyramid(tmp_path / "p.svs", random_image((H, W, 3), "uint8"))
    with pytest.raises(UNetError, match=r"expected pyramid level 3, found levels 0 \(301, 517, 3\), 1 .*, 2 "):
        open_source(SourceSpec(str(tmp_path / "p.svs"), level=3))
    with pytest.raises(UNetError, match="axes 'cyx' given, but its metadata says 'yxc'"):
        open_source(SourceSpec(str(tmp_path / "p.svs"), axes="cyx"))


# --- S3 -------------------------------------------------------------------------------------------------------

def test_zarr_v3_round_trip_in_any_store(store):
    data = random_image((3, H, W), "uint8")
    url = store.url("dir/m.zarr")
    zarr.create_array(store.zarr_store("dir/m.zarr"), data=data, chunks=(3, 64, 100))
    source = open_source(SourceSpec(url, storage_options=store.storage_options))
    assert source.chunks == (64, 100)
    assert all(secret not in repr(source) for secret in store.storage_options.values() if isinstance(secret, str))
    assert_windows_match(source, data)


def test_s3_tiff_reads_through_a_file_handle(s3_server, s3_bucket, tmp_path):
    rgb = random_image((H, W, 3), "uint8")
    write_rgb_pyramid(tmp_path / "p.tif", rgb)
    s3fs.S3FileSystem(**s3_server.storage_options).put(str(tmp_path / "p.tif"), f"{s3_bucket}/p.tif")
    source = open_source(SourceSpec(f"{s3_bucket}/p.tif", level=1, storage_options=s3_server.storage_options))
    np.testing.assert_array_equal(source.read(slice(100, 151), slice(0, 259)),
                                  rgb[::2, ::2][100:151].transpose(2, 0, 1))


def test_s3_missing_bucket_key_and_unreachable_endpoint_fail_fast(s3_server, s3_bucket):
    write_zarr(f"{s3_bucket}/m.zarr", np.zeros((9, 9), "u1"), chunks=(9, 9), storage_options=s3_server.storage_options)
    cases = [("s3://no-such-bucket-here/m.zarr", s3_server.storage_options, "not found \\(expected a Zarr array"),
             (f"{s3_bucket}/missing.zarr", s3_server.storage_options, "not found \\(expected a Zarr array"),
             (f"{s3_bucket}/m.zarr", {"key": "k", "secret": "s3cr3t",
                                      "client_kwargs": {"endpoint_url": "http://user:s3cr3t@127.0.0.1:9"}},
              "cannot reach the storage .*check the endpoint URL")]
    for url, options, message in cases:
        start = time.monotonic()
        with pytest.raises(UNetError, match=message) as error:
            open_source(SourceSpec(url, storage_options=options))
        assert time.monotonic() - start < 10
        assert "s3cr3t" not in str(error.value) and "\n" not in str(error.value)


# --- HTTP -----------------------------------------------------------------------------------------------------

@pytest.fixture
def http_root(tmp_path):
    """``(directory, base URL)`` of a local read-only HTTP server over a temporary directory."""
    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    class QuietServer(http.server.ThreadingHTTPServer):
        def handle_error(self, request, client_address):  # clients close ranged reads early: broken pipes
            pass

    server = QuietServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(tmp_path)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield tmp_path, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    thread.join()


def test_http_zarr_and_tiff_open_although_http_has_no_directories(http_root):
    root, base = http_root
    data = random_image((2, H, W), "int16")
    write_zarr(root / "m.zarr", data, chunks=(2, 128, 128), zarr_format=2)
    assert_windows_match(open_source(SourceSpec(f"{base}/m.zarr")), data)
    rgb = random_image((H, W, 3), "uint8")
    write_rgb_pyramid(root / "p.tif", rgb)
    source = open_source(SourceSpec(f"{base}/p.tif?sig=s3cr3t", level=1))
    np.testing.assert_array_equal(source.read(slice(0, 151), slice(200, 259)),
                                  rgb[::2, ::2][:, 200:].transpose(2, 0, 1))
    with pytest.raises(UNetError, match=r"input http://127.0.0.1:\d+/none.zarr: not found \(expected a Zarr array"):
        open_source(SourceSpec(f"{base}/none.zarr"))

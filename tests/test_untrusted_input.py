"""Property tests at the trust boundary: random and mutated bytes at the checkpoint loader, random manifests
at the manifest reader, random URLs at redaction, random option combinations at the parser. The only
outcomes allowed are success or a UNetError of one line: never another exception type, a hang, or a
secret in the text. Example counts keep the whole module well under a minute."""

from __future__ import annotations

import contextlib
import io
import json
import signal
import struct
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from unet import UNet, UNetError, load_checkpoint
from unet.nn.checkpoint import checkpoint_bytes
from unet.cli import run
from unet.errors import redact, redact_text
from unet.io.urls import check_url
from unet.job.manifest import read_manifest
from unet.job.options import build_parser, parse_options

SECRET = "Zq9SECRETzq9"  # no generated host, path or option name contains "Zq9"
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])



@contextlib.contextmanager
def time_limit(seconds: float):
    """Fail (rather than hang) when the body runs longer than ``seconds``."""
    def expire(signum, frame):
        raise TimeoutError(f"took longer than {seconds} s")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def refused_in_one_line(call) -> object:
    """``call()``'s result, or None after a UNetError of one line without the secret; anything else fails."""
    with time_limit(30):
        try:
            return call()
        except UNetError as e:
            message = str(e)
            assert "\n" not in message and SECRET not in redact_text(message), message
            return None


# -- the checkpoint loader ------------------------------------------------------------------------------
def _checkpoint() -> bytes:
    torch.manual_seed(0)
    return checkpoint_bytes(UNet(depth=2, base_channels=1, batch_norm=True).eval(), class_names=["a", "b"])


VALID = _checkpoint()
(HEADER_SIZE,) = struct.unpack("<Q", VALID[:8])
HEADER = json.loads(VALID[8:8 + HEADER_SIZE])
JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                        max_size=3), max_leaves=6)


def _with_header(header: dict) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + VALID[8 + HEADER_SIZE:]


@st.composite
def mutated_checkpoints(draw) -> bytes:
    """A valid checkpoint with its bytes flipped, cut or spliced, or its header's entries replaced."""
    kind = draw(st.sampled_from(["flip", "cut", "splice", "config", "tensor", "length"]))
    data = bytearray(VALID)
    if kind == "flip":
        for _ in range(draw(st.integers(1, 8))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    elif kind == "cut":
        data = data[:draw(st.integers(0, len(data) - 1))]
    elif kind == "splice":
        at = draw(st.integers(0, len(data)))
        data[at:at] = draw(st.binary(min_size=1, max_size=64))
    elif kind == "config":
        header = json.loads(json.dumps(HEADER))
        config = json.loads(header["__metadata__"]["config"])
        config[draw(st.sampled_from(sorted(config)) | st.text(max_size=6))] = draw(JSON_VALUES)
        header["__metadata__"]["config"] = json.dumps(config)
        data = bytearray(_with_header(header))
    elif kind == "tensor":
        header = json.loads(json.dumps(HEADER))
        name = draw(st.sampled_from(sorted(k for k in header if k != "__metadata__")))
        header[name][draw(st.sampled_from(["dtype", "shape", "data_offsets"]))] = draw(JSON_VALUES)
        data = bytearray(_with_header(header))
    else:
        data[:8] = struct.pack("<Q", draw(st.integers(0, 2**64 - 1)))
    return bytes(data)


@FAST
@given(st.one_of(st.binary(max_size=512), mutated_checkpoints()))
def test_checkpoint_loader_loads_or_refuses_random_and_mutated_bytes(data):
    loaded = refused_in_one_line(lambda: load_checkpoint(data))
    if loaded is not None:
        model, metadata = loaded
        assert isinstance(model, UNet) and isinstance(metadata, dict)


def test_the_unmutated_checkpoint_loads():
    """The mutations start from a checkpoint that loads, so refusals above are about the mutations."""
    assert isinstance(load_checkpoint(VALID)[0], UNet)


# -- URLs and redaction ---------------------------------------------------------------------------------
HOSTS = st.from_regex(r"[a-z0-9.-]{0,12}(:[0-9]{1,5})?", fullmatch=True)
PATHS = st.from_regex(r"(/[a-z0-9._@~+-]{0,8}){0,4}/?", fullmatch=True)
SECRET_TEXT = st.from_regex(r"[A-Za-z0-9/+=:@%!$&*]{0,10}", fullmatch=True).map(lambda s: SECRET + s)


@st.composite
def urls_with_secrets(draw) -> str:
    """URLs of any scheme whose user info and query hold the secret, in any chain ("a::b")."""
    def one() -> str:
        scheme = draw(st.sampled_from(["s3", "https", "http", "gs", "file", "memory", "abfs"])
                      | st.from_regex(r"[a-z][a-z0-9+.-]{0,6}", fullmatch=True))
        # a password may hold any character; a token without a password holds no '/': "s3://to/ken@x" is a
        # bucket and a path, as every storage library reads it
        password = f"{draw(st.sampled_from(['AKIAEXAMPLE', 'user', '']))}:{draw(SECRET_TEXT)}"
        userinfo = draw(st.sampled_from(["", f"{password}@", f"{draw(SECRET_TEXT).replace('/', '')}@"]))
        query = draw(st.sampled_from(["", f"?X-Amz-Signature={draw(SECRET_TEXT)}&X-Amz-Credential=k",
                                      f"?sig={draw(SECRET_TEXT)}#frag"]))
        return f"{scheme}://{userinfo}{draw(HOSTS)}{draw(PATHS)}{query}"
    return "::".join(one() for _ in range(draw(st.integers(1, 2))))


@FAST
@given(urls_with_secrets(), st.sampled_from(["{}", "failed: '{}'", "error ({}) at <{}>", 'url="{}"\n{}']))
def test_redaction_never_shows_a_secret(url, message):
    assert SECRET not in redact(url)
    assert SECRET not in redact_text(message.format(url, url))


@FAST
@given(urls_with_secrets(), st.booleans())
def test_checked_urls_are_used_or_refused_without_their_secret(url, output):
    refused_in_one_line(lambda: check_url(url, "INPUT", output=output))
    # once seen, its secrets are masked even where a library prints the URL without its scheme
    assert SECRET not in redact_text(f"NoSuchBucket: {url.split('://', 1)[-1]}")


# -- Zarr metadata --------------------------------------------------------------------------------------
ZARR_JSON = {"shape": [50, 60], "data_type": "uint8", "chunk_grid": {"name": "regular", "configuration":
             {"chunk_shape": [16, 16]}}, "chunk_key_encoding": {"name": "default"}, "fill_value": 0,
             "codecs": [{"name": "bytes"}], "attributes": {}, "zarr_format": 3, "node_type": "array"}
SIZES = st.lists(st.integers(-2, 10**16), min_size=1, max_size=3)


@st.composite
def zarr_metadata(draw) -> dict:
    """An array's zarr.json with one entry replaced: by sizes (absurd ones too) or by any JSON value."""
    meta = json.loads(json.dumps(ZARR_JSON))
    key = draw(st.sampled_from(sorted(meta)))
    if key == "shape" or draw(st.booleans()) and key == "chunk_grid":
        meta["shape"] = draw(SIZES)
        meta["chunk_grid"]["configuration"]["chunk_shape"] = draw(SIZES)
    else:
        meta[key] = draw(JSON_VALUES)
    return meta


@settings(max_examples=100, deadline=None)
@given(zarr_metadata())
def test_zarr_metadata_opens_or_is_refused_before_a_plan(meta):
    from unet.io.source import SourceSpec, open_source
    from unet.job.limits import check_plan

    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "zarr.json").write_text(json.dumps(meta))

        def plan():
            source = open_source(SourceSpec(folder))
            check_plan(folder, source.shape, source.chunks, 4096)
            return source
        refused_in_one_line(plan)


# -- the manifest reader --------------------------------------------------------------------------------
WORDS = st.one_of(urls_with_secrets(), PATHS, st.text(max_size=12), st.sampled_from(["#", "# note", "\t", "\x00"]))
LINES = st.lists(st.lists(WORDS, max_size=3).map(" ".join), max_size=6).map("\n".join)


@FAST
@given(st.one_of(LINES.map(str.encode), st.binary(max_size=200)))
def test_manifest_reader_reads_or_refuses_random_manifests(data):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "manifest.txt"
        path.write_bytes(data)
        pairs = refused_in_one_line(lambda: read_manifest(str(path), {}))
    for pair in pairs or ():
        assert len(pair) == 2 and all(isinstance(word, str) and word for word in pair)


# -- the command line parser ----------------------------------------------------------------------------
OPTIONS = sorted(o for action in build_parser()._actions for o in action.option_strings  # --debug: a traceback
                 if o not in ("-h", "--help", "--debug"))
VALUES = st.one_of(st.integers(-10, 10**10).map(str), st.sampled_from(["nan", "inf", "-0", "1e9", "0.5", "0,1",
                                                                       "9,1", "cuda:1", "tpu", "yx", ""]),
                   st.text(max_size=8), urls_with_secrets(),
                   st.sampled_from(["key", "secret", "token", "client_kwargs.endpoint_url"]).map(
                       lambda k: f"{k}={SECRET}"))
ARGUMENTS = st.lists(st.one_of(st.sampled_from(OPTIONS), VALUES), max_size=10)


@FAST
@given(ARGUMENTS)
def test_parser_accepts_or_refuses_random_option_combinations(argv):
    refused_in_one_line(lambda: parse_options(argv))
    printed = io.StringIO()
    with contextlib.redirect_stderr(printed), time_limit(30):
        code = run(lambda args: parse_options(args) and 0, argv)
    assert code in (0, 2) and SECRET not in printed.getvalue()
    assert code == 0 or len(printed.getvalue().strip().splitlines()) == 1

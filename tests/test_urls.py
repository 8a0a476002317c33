"""URL redaction, --storage-option parsing, AWS environment folding and location comparison."""

from __future__ import annotations

import logging
import os

import pytest

from unet.errors import (RedactingFilter, UNetError, redact, redact_json, redact_text, remember_argv_secrets,
                         remember_environment_secrets)
from unet.io.urls import (check_storage_options, check_url, fs_and_path, is_inside, parse_storage_options,
                          resolve_storage_options, same_store)


@pytest.mark.parametrize("url, expected", [
    ("/data/mosaic.zarr", "/data/mosaic.zarr"),
    ("s3://bucket/mosaic.zarr", "s3://bucket/mosaic.zarr"),
    ("s3://AKIAXXX:s3cr3t@bucket/m.zarr", "s3://bucket/m.zarr"),
    ("https://user:s3cr3t@host:8443/m.zarr", "https://host:8443/m.zarr"),
    ("https://ghp_s3cr3t@host/m.zarr", "https://host/m.zarr"),
    ("https://b.s3.amazonaws.com/m.tif?X-Amz-Credential=AKIA&X-Amz-Signature=s3cr3t",
     "https://b.s3.amazonaws.com/m.tif"),
    ("https://acct.blob.core.windows.net/c/m.zarr?sv=2022&sig=s3cr3t#frag",
     "https://acct.blob.core.windows.net/c/m.zarr"),
    ("simplecache::https://u:s3cr3t@host/m.tif?token=s3cr3t", "simplecache::https://host/m.tif"),
    ("s3://AKIAXXX:s3cr3t/with+slash@bucket/m.zarr", "s3://bucket/m.zarr"),  # AWS secret keys may hold '/'
    ("s3://AKIAXXX:s3cr3t@with@at@bucket/m.zarr", "s3://bucket/m.zarr"),
    ("s3://bucket/scene@2x.zarr", "s3://bucket/scene@2x.zarr"),              # an '@' in a path is a path
    ("http://host:9000/bucket/a@b", "http://host:9000/bucket/a@b"),
    ("s3://[broken/m.zarr?x=s3cr3t", "s3://[broken/m.zarr"),                  # unparsable, still redacted
])
def test_redact_removes_credentials_and_queries(url, expected):
    assert redact(url) == expected
    assert "s3cr3t" not in redact(url)


def test_redact_text_redacts_every_url_in_a_message():
    message = 'Could not connect to "http://u:s3cr3t@h:9/b/k?X-Amz-Signature=s3cr3t" nor to s3://b/k'
    assert redact_text(message) == 'Could not connect to "http://h:9/b/k" nor to s3://b/k'


@pytest.mark.parametrize("pairs, expected", [
    ([], {}),
    (["anon=true"], {"anon": True}),
    (["key=AKIA123", "secret=abc/def+ghi="], {"key": "AKIA123", "secret": "abc/def+ghi="}),
    (["max_concurrency=4", "x=1.5", "y=null", "z=[1, 2]"], {"max_concurrency": 4, "x": 1.5, "y": None, "z": [1, 2]}),
    (['client_kwargs={"endpoint_url": "http://h:9000"}'], {"client_kwargs": {"endpoint_url": "http://h:9000"}}),
    (["client_kwargs.endpoint_url=http://h:9000", "client_kwargs.region_name=eu-west-1"],
     {"client_kwargs": {"endpoint_url": "http://h:9000", "region_name": "eu-west-1"}}),
    (['client_kwargs={"region_name": "r"}', "client_kwargs.endpoint_url=http://h"],
     {"client_kwargs": {"region_name": "r", "endpoint_url": "http://h"}}),
    (["client_kwargs.endpoint_url=http://h", 'client_kwargs={"region_name": "r"}'],
     {"client_kwargs": {"endpoint_url": "http://h", "region_name": "r"}}),
    (["config_kwargs.s3.addressing_style=path"], {"config_kwargs": {"s3": {"addressing_style": "path"}}}),
    (["token="], {"token": ""}),
    (["a=b=c"], {"a": "b=c"}),
])
def test_parse_storage_options(pairs, expected):
    assert parse_storage_options(pairs) == expected


@pytest.mark.parametrize("pairs, message", [
    (["anon=true", "s3cr3t"], "storage option #2: expected KEY=VALUE"),
    (["=s3cr3t"], "storage option #1: expected KEY=VALUE"),
    (["anon=true", "anon.x=1"], "key 'anon' was already given a value"),
])
def test_parse_storage_options_refuses_bad_pairs_without_echoing_them(pairs, message):
    with pytest.raises(UNetError, match=message) as error:
        parse_storage_options(pairs)
    assert "s3cr3t" not in str(error.value)


def test_resolve_storage_options_folds_aws_environment_into_s3_options(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "env-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "env-token")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://generic:1")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://s3-only:2")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.delenv("AWS_REGION", raising=False)
    given = {"client_kwargs": {"verify": False}}
    resolved = resolve_storage_options("s3://b/m.zarr", given)
    assert resolved == {"key": "env-key", "secret": "env-secret", "token": "env-token",
                        "client_kwargs": {"verify": False, "endpoint_url": "http://s3-only:2",
                                          "region_name": "eu-west-1"}}
    assert given == {"client_kwargs": {"verify": False}}  # not mutated


def test_resolve_storage_options_keeps_explicit_options_and_anonymous_access(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "env-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://env:1")
    for name in ("AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    explicit = {"key": "k", "secret": "s", "endpoint_url": "http://explicit:2"}
    assert resolve_storage_options("s3://b/m.zarr", explicit) == explicit
    assert resolve_storage_options("s3://b/m.zarr", {"anon": True}) == {
        "anon": True, "client_kwargs": {"endpoint_url": "http://env:1"}}
    assert resolve_storage_options("/local/m.zarr", {}) == {}
    assert resolve_storage_options("gs://b/m.zarr", {"token": "t"}) == {"token": "t"}


def test_same_store_and_is_inside_normalise_local_paths(tmp_path):
    (tmp_path / "real").mkdir()
    os.symlink(tmp_path / "real", tmp_path / "link")
    real = str(tmp_path / "real")
    assert same_store(real, f"{tmp_path}/link/")
    assert same_store(f"file://{real}", f"{tmp_path}/real/../real")
    assert is_inside(f"{tmp_path}/link/in.zarr/labels/x", real)
    assert is_inside(real, f"file://{real}/")
    assert not is_inside(f"{tmp_path}/real2", real)
    assert not is_inside(real, f"{real}/sub")
    assert not same_store(real, f"{real}/sub")


@pytest.mark.parametrize("child, parent, inside", [
    ("s3://b/in.zarr/out", "s3://b/in.zarr", True),
    ("s3a://b/in.zarr/", "s3://b/in.zarr", True),
    ("s3://key:secret@b/in.zarr/x", "s3://b/in.zarr/", True),
    ("s3://b/in.zarr2", "s3://b/in.zarr", False),
    ("s3://other/in.zarr", "s3://b/in.zarr", False),
    ("gs://b/in.zarr/x", "s3://b/in.zarr", False),
    ("s3://b/in.zarr", "/b/in.zarr", False),
])
def test_is_inside_for_object_stores(child, parent, inside):
    assert is_inside(child, parent) is inside


def test_fs_and_path_gives_the_filesystem_and_its_path(tmp_path):
    fs, path = fs_and_path(f"file://{tmp_path}/m.zarr")
    assert fs.protocol[0] == "file" and path == f"{tmp_path}/m.zarr"
    fs, path = fs_and_path("memory://b/m.zarr", {})
    assert "memory" in fs.protocol and path == "/b/m.zarr"


@pytest.mark.parametrize("url, output, words", [
    ("s3://AKIAXXX:s3cr3t@bucket/m.zarr", False, "expected no credentials in the URL"),
    ("https://ghp_s3cr3t0@host/m.tif", False, "expected no credentials in the URL"),
    ("simplecache::s3://k:s3cr3t/x@b/m.zarr", False, "expected no credentials in the URL"),
    ("nosuch://bucket/m.zarr", False, "expected a storage protocol fsspec knows"),
    ("s3:///m.zarr", False, "expected a bucket or host after s3://"),
    ("s3://bucket/m.zarr?versionId=s3cr3t", False, "expected no query string on s3:// URLs"),
    ("https://host/out.zarr?sig=s3cr3t", True, "expected no query string on an OUTPUT"),
])
def test_check_url_refuses_in_one_line_without_the_secret(url, output, words):
    with pytest.raises(UNetError, match=words) as error:
        check_url(url, "INPUT", output=output)
    assert "s3cr3t" not in str(error.value) and "\n" not in str(error.value)
    assert str(error.value).startswith(f"INPUT {redact(url)}: ")


@pytest.mark.parametrize("url", ["/data/m.zarr", "s3://bucket/m.zarr", "https://b.s3.amazonaws.com/m.tif?X-Amz-Signature=x",
                                 "memory://m.zarr", "simplecache::https://host/m.tif", "s3://bucket/scene@2x.zarr",
                                 "http://127.0.0.1:9000/bucket/m.zarr"])
def test_check_url_accepts_usable_urls(url):
    check_url(url, "INPUT")


def test_secrets_given_anywhere_are_masked_in_any_text(monkeypatch):
    """Libraries print paths without their scheme ("KEY:SECRET@bucket/…") and options in their own words:
    the values themselves are masked, wherever they appear."""
    with pytest.raises(UNetError):
        check_url("s3://AKIAURLKEY:url-s3cr3t@bucket/m.zarr", "INPUT")
    check_storage_options({"key": "AKIAOPTION", "client_kwargs": {"aws_session_token": "token-s3cr3t"},
                           "anon": False, "endpoint_url": "http://127.0.0.1:9000"})
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-s3cr3t")
    remember_environment_secrets()
    remember_argv_secrets(["--storage-option=secret=argv-s3cr3t", "s3://bucket/x?sig=query-s3cr3t"])
    text = ("Invalid bucket name AKIAURLKEY:url-s3cr3t@bucket: key AKIAOPTION, token token-s3cr3t, "
            "env-s3cr3t, argv-s3cr3t, query-s3cr3t at http://127.0.0.1:9000")
    assert redact_text(text) == ("Invalid bucket name ***@bucket: key ***, token ***, ***, ***, *** "
                                 "at http://127.0.0.1:9000")
    assert redact_json({"error": [text], "n": 3}) == {"error": [redact_text(text)], "n": 3}


def test_short_values_and_locations_are_not_taken_for_secrets(monkeypatch, tmp_path):
    check_storage_options({"key": "k", "secret": "s3", "anon": "abcdefgh"})
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path))
    remember_environment_secrets()
    assert redact_text(f"k s3 abcdefgh {tmp_path}") == f"k s3 abcdefgh {tmp_path}"


def test_redacting_filter_redacts_messages_and_tracebacks(caplog):
    check_storage_options({"secret": "log-s3cr3t"})
    log = logging.getLogger("unet.test-redaction")
    log.addFilter(RedactingFilter())
    try:
        raise RuntimeError("cannot write s3://k:log-s3cr3t@b/x?sig=1 with log-s3cr3t")
    except RuntimeError:
        log.exception("failed: %s", "log-s3cr3t")
    assert "log-s3cr3t" not in caplog.text and "sig=" not in caplog.text
    assert "failed: ***" in caplog.text and "RuntimeError: cannot write s3://b/x with ***" in caplog.text

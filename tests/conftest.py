"""Shared fixtures: one local Ray cluster per test session, a local S3 server, a ``store`` parametrised over
local and S3, and the small checkpoint and mosaic the job's tests run on. Helpers: helpers.py."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
import zarr

from unet import UNet, save_checkpoint


@pytest.fixture(scope="session", autouse=True)
def calibration_cache(tmp_path_factory):
    """The tiles' calibrations (``unet.infer.calibrate``) go to a cache of this session, not the user's;
    set before the Ray cluster starts, so that its workers inherit it."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("UNET_CACHE_DIR", str(tmp_path_factory.mktemp("calibration-cache")))
        yield


@pytest.fixture(autouse=True)
def own_secrets(monkeypatch):
    """The redaction registry as it was before the test: secrets a test registers (random ones in property
    tests among them) mask no later test's text."""
    from unet import errors

    monkeypatch.setattr(errors, "_secrets", set(errors._secrets))


@pytest.fixture(scope="session")
def ray_cluster():
    """A real local Ray cluster with 2 CPUs, shared by every test that needs one."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


# --- S3: one local moto server per session, a fresh bucket per test -----------------------------------------

_S3_TEST_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1",
                "AWS_CONFIG_FILE": "/nonexistent/aws-config", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-creds"}
_S3_HOST_ENV = ("AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")


class S3Server:
    """A running moto S3 endpoint; ``storage_options`` is a fresh s3fs options dict on every access."""

    def __init__(self, endpoint_url: str):
        self.endpoint_url = endpoint_url

    @property
    def storage_options(self) -> dict:
        # no region_name: s3fs would send it as a LocationConstraint, which us-east-1 buckets refuse
        return {"key": "testing", "secret": "testing", "client_kwargs": {"endpoint_url": self.endpoint_url}}


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 HTTP endpoint (moto) on 127.0.0.1, with dummy credentials in the environment meanwhile.

    The host's AWS profile, config files and endpoint variables are hidden, so no test can reach real AWS
    through them; the environment is restored at the end of the session.
    """
    import logging

    from moto.server import ThreadedMotoServer

    request_log = logging.getLogger("werkzeug")  # one line per S3 request would bury failing tests' logs
    with pytest.MonkeyPatch.context() as env:
        env.setattr(request_log, "level", logging.WARNING)
        for name in _S3_HOST_ENV:
            env.delenv(name, raising=False)
        for name, value in _S3_TEST_ENV.items():
            env.setenv(name, value)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        try:
            yield S3Server(f"http://{host}:{port}")
        finally:
            server.stop()


@pytest.fixture
def s3_bucket(s3_server):
    """``s3://NAME`` of a new, empty bucket on the session's S3 server; s3fs's instance cache is cleared
    before and after, so no test sees another's cached listings."""
    import uuid

    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    bucket = f"test-{uuid.uuid4().hex[:16]}"
    s3fs.S3FileSystem(**s3_server.storage_options, skip_instance_cache=True).mkdir(bucket)
    yield f"s3://{bucket}"
    s3fs.S3FileSystem.clear_instance_cache()


# --- stores: every test that takes ``store`` runs on a local folder and on S3 -----------------------------------

@dataclass(frozen=True)
class Store:
    """A root location (a folder, or an S3 bucket) and what the job and zarr need to reach it."""

    kind: str
    root: str
    storage_options: dict = field(default_factory=dict)

    def url(self, name: str) -> str:
        return f"{self.root}/{name}"

    @property
    def cli_options(self) -> list[str]:
        """The job's --storage-option flags for this store."""
        endpoint = self.storage_options.get("client_kwargs", {}).get("endpoint_url")
        return ["--storage-option", f"client_kwargs.endpoint_url={endpoint}"] if endpoint else []

    def zarr_store(self, name: str) -> zarr.storage.StoreLike:
        return zarr.storage.FsspecStore.from_url(self.url(name), storage_options=self.storage_options) \
            if self.storage_options else self.url(name)


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path) -> Store:
    """A fresh, empty local folder or S3 bucket (as zarr-python's tests parametrise their stores)."""
    if request.param == "local":
        return Store("local", str(tmp_path / "store"))
    s3_server = request.getfixturevalue("s3_server")
    return Store("s3", request.getfixturevalue("s3_bucket"), s3_server.storage_options)


# --- the job's inputs ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A small He-initialised U-Net (depth 3, valid padding) and its checkpoint path."""
    torch.manual_seed(7)
    model = UNet(depth=3, base_channels=4).eval()
    path = tmp_path_factory.mktemp("ckpt") / "model.safetensors"
    save_checkpoint(model, path, class_names=["background", "thing"])
    return model, str(path)


@pytest.fixture(scope="module")
def mosaic(tmp_path_factory):
    """An odd-sized random float32 image as a plain Zarr v3 array, with chunks unlike the output's."""
    image = np.random.default_rng(3).random((301, 517), dtype=np.float32)
    path = tmp_path_factory.mktemp("in") / "mosaic.zarr"
    zarr.create_array(str(path), data=image, chunks=(70, 90))
    return image, str(path)

"""Shared fixtures: one local Ray cluster per test session, started on first use and stopped at the end."""

from __future__ import annotations

import pytest


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

"""The driver's resource requests to Ray's autoscaler (on the session's local cluster, which records them
the same way an autoscaling cluster's head does)."""

from __future__ import annotations

import json

import pytest
from ray.autoscaler._private.constants import AUTOSCALER_RESOURCE_REQUEST_CHANNEL
from ray.experimental.internal_kv import _internal_kv_get

from unet.job.driver import WorkerResources, request_workers, worker_resources

pytestmark = pytest.mark.usefixtures("ray_cluster")


def requested() -> list[dict]:
    return json.loads(_internal_kv_get(AUTOSCALER_RESOURCE_REQUEST_CHANNEL) or b"[]")


def test_gpu_workers_are_requested_although_the_cluster_has_no_gpu_yet():
    res = worker_resources(workers=3, cpus=None, gpus=1.0)
    assert res == WorkerResources(3, 1.0, 1.0)
    request_workers(res)
    try:
        assert requested() == [{"CPU": 1.0, "GPU": 1.0}] * 3
    finally:
        request_workers(None)
    assert requested() == []


def test_cpu_workers_default_to_the_cluster_cores():
    res = worker_resources(workers=None, cpus=None, gpus=0.0)
    assert res == WorkerResources(1, 2.0, 0.0)          # the session cluster has 2 CPUs and no GPU
    request_workers(res)
    try:
        assert requested() == [{"CPU": 2.0}]
    finally:
        request_workers(None)

"""cluster.yaml: valid for Ray's own cluster-launcher checks, and shaped as the design needs (no cloud calls)."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER_YAML = Path(__file__).resolve().parents[1] / "cluster.yaml"
RAY_SCHEMA = Path(ray.autoscaler.__file__).parent / "ray-schema.json"


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def ray_up_checks(config: dict) -> dict:
    """What `ray up` checks before it calls AWS: defaults merged (prepare_config), then validate_config."""
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def gpu_worker_types(config: dict) -> dict[str, dict]:
    return {name: node for name, node in config["available_node_types"].items()
            if name != config["head_node_type"] and node.get("resources", {}).get("GPU", 0) >= 1}


def test_ray_accepts_the_file_as_written_and_with_defaults(config):
    jsonschema.validate(config, json.loads(RAY_SCHEMA.read_text()))      # the file itself, before defaults
    prepared = ray_up_checks(config)
    assert prepared["head_node_type"] in prepared["available_node_types"]


@pytest.mark.parametrize("mistake", [
    lambda c: c.update(max_worker=8),                                             # misspelt top-level key
    lambda c: gpu_worker_types(c)[next(iter(gpu_worker_types(c)))].update(min_worker=0),  # in a node type
    lambda c: c["available_node_types"][c["head_node_type"]].pop("resources"),   # required field missing
    lambda c: c["available_node_types"][c["head_node_type"]]["resources"].update(GPU=-1),
])
def test_ray_rejects_a_copy_with_a_mistake(config, mistake):
    broken = copy.deepcopy(config)
    mistake(broken)
    with pytest.raises(jsonschema.ValidationError):
        ray_up_checks(broken)


def test_head_is_a_cpu_node_with_no_gpu(config):
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"]["GPU"] == 0 and head["resources"]["CPU"] >= 2
    assert not re.match(r"(g|p)\d", head["node_config"]["InstanceType"])     # not a GPU instance family
    assert head.get("max_workers", 0) == 0


def test_gpu_workers_scale_from_zero_and_reach_s3_through_an_instance_profile(config):
    workers = gpu_worker_types(config)
    assert workers, "expected a worker node type with resources {'GPU': 1} or more"
    for node in workers.values():
        assert node["min_workers"] == 0
        assert 1 <= node["max_workers"] <= config["max_workers"]
        assert re.match(r"(g|p)\d", node["node_config"]["InstanceType"])
        assert node["node_config"]["IamInstanceProfile"]


def test_every_node_gets_the_project_installed_with_the_amis_torch(config):
    assert config["file_mounts"] == {"~/unet": "."}
    commands = config["setup_commands"]                    # run on the head and on every worker
    assert any(re.search(r"pip install .*-e ~/unet\b", command) for command in commands)
    every_command = " ".join(commands + config["head_setup_commands"] + config["worker_setup_commands"])
    assert "whl/cpu" not in every_command and not re.search(r"\btorch[=<>~]", every_command)
    assert f'ray[default]=={ray.__version__}"' in every_command, "nodes must run the local Ray version"


def test_standard_ray_start_commands(config):
    assert any("ray start --head" in c and "--autoscaling-config=~/ray_bootstrap_config.yaml" in c
               for c in config["head_start_ray_commands"])
    assert any("ray start --address=$RAY_HEAD_IP:6379" in c for c in config["worker_start_ray_commands"])


def test_no_credentials_in_the_file(config):
    text = CLUSTER_YAML.read_text()
    assert "aws_credentials" not in config["provider"]
    assert not re.search(r"aws_(access_key_id|secret_access_key|session_token)\s*[:=]", text, re.I)
    assert not re.search(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b", text)                # an AWS access key id

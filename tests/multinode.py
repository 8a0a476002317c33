"""A local multi-node Ray cluster in its own process, driven over stdin: for tests that lose a node.

    python tests/multinode.py WORKERS   # prints {"address": ...} once the head (0 CPUs) and WORKERS nodes of
                                        # 1 CPU each are up; then reads commands, one per line:
    remove                              # kills the first worker node's processes (raylet, object store,
                                        # its workers) without grace, as a lost machine; answers "removed"
    (end of input)                      # stops every process of the cluster and exits

It runs apart from the test session, whose own ``ray.init`` cluster a second cluster in-process would clash
with; it does not write the machine's "current cluster" file, so no other ``ray.init("auto")`` finds it.
"""

from __future__ import annotations

import json
import sys

import ray._private.utils
from ray.cluster_utils import Cluster


def main(workers: int) -> None:
    ray._private.utils.write_ray_address = lambda *args, **kwargs: None
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        nodes = [cluster.add_node(num_cpus=1) for _ in range(workers)]
        cluster.wait_for_nodes()
        print(json.dumps({"address": cluster.address}), flush=True)
        for line in sys.stdin:
            if line.strip() == "remove":
                cluster.remove_node(nodes.pop(0), allow_graceful=False)
                print("removed", flush=True)
    finally:
        cluster.shutdown()


if __name__ == "__main__":
    main(int(sys.argv[1]))

"""A local Ray cluster (head + worker nodes, each with a custom resource naming it) and worker builds for the
cluster tests and the cluster bench.  Builds are module-level so Ray workers import them by name."""
from __future__ import annotations

import contextlib
import time

# node death is noticed after period × threshold; Ray's defaults (3 s × 5) suit a real network, a test wants less
FAST_FAILURE_DETECTION = {"health_check_initial_delay_ms": 1000, "health_check_period_ms": 500,
                          "health_check_failure_threshold": 3}


@contextlib.contextmanager
def local_ray_cluster(node_names=("node_a", "node_b"), *, slots_per_node: int = 4, system_config=None):
    """A head node (1 CPU, no ``engine`` slots) and one worker node per name with ``{engine: slots_per_node,
    <name>: 1}``; yields ``(cluster, {name: node})`` with this process connected as the driver."""
    import ray
    from ray.cluster_utils import Cluster

    head_args = {"num_cpus": 1, "include_dashboard": False}
    if system_config:
        head_args["_system_config"] = system_config
    cluster = Cluster(initialize_head=True, head_node_args=head_args)
    try:
        nodes = {name: cluster.add_node(num_cpus=1, resources={"engine": slots_per_node, name: 1})
                 for name in node_names}
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, namespace="amodal", log_to_driver=False)
        yield cluster, nodes
    finally:
        ray.shutdown()
        cluster.shutdown()


def person_worker(stream_index: int, gallery: str, seed: int = 11, frames: int = 6, interval_s: float = 0.05):
    """The build of a worker that plays camera ``stream_index`` of a synthetic person scene (exact person tracks,
    then the ``reid`` stage on the shipped MBF weights using the gallery service ``gallery``)."""
    from amodal.engine.stages.reid import ReidSettings, ReidStage
    from tests.support.person_streams import PersonStreamSource, TruthPrimary, render_person_streams

    scene = render_person_streams(cameras=2, identities=3, frames=frames, seed=seed)
    stream = scene[stream_index]
    pipelines = {"people": [TruthPrimary(scene), ReidStage(ReidSettings(gallery=gallery))]}
    return pipelines, [PersonStreamSource(stream, interval_s=interval_s)]


def wait_until(predicate, timeout_s: float, what: str, poll_s: float = 0.1):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(poll_s)

"""Shared fixtures: one Ray session for the whole test run, a 2-node local cluster.

The cluster is joined by address, exactly as a user joins a real cluster, so the same fixture
serves the multi-node test and every other Ray test (one Ray start-up per run keeps CI fast).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")


def shared_path(*parts: str) -> Path:
    """A path under ../shared/data, or a clean skip naming what is missing."""
    p = SHARED_DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"shared test data not present: {p} (needs ../shared/data beside the repo)")
    return p


@pytest.fixture(scope="session")
def ray_cluster():
    """A 2-node local Ray cluster (head + 1 worker node); yields its address."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 2,
            "num_gpus": 0,
            "object_store_memory": 80 * 1024 * 1024,
            "include_dashboard": False,
        },
    )
    cluster.add_node(num_cpus=2, num_gpus=0, object_store_memory=80 * 1024 * 1024)
    ray.init(address=cluster.address, include_dashboard=False)
    try:
        yield cluster.address
    finally:
        ray.shutdown()
        cluster.shutdown()

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


#: the running test cluster (``ray_cluster``), for tests that add a node of their own
CLUSTER: list = []


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
    CLUSTER.append(cluster)
    try:
        yield cluster.address
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.fixture(scope="session")
def ray_test_cluster(ray_cluster):
    """The ``ray.cluster_utils.Cluster`` behind ``ray_cluster`` (to add or remove a node)."""
    return CLUSTER[0]


#: what the S3 tests sign with; moto accepts any key unless its authentication is switched on
S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
          "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 API (moto's standalone server) on 127.0.0.1, a free port; sets the standard AWS
    environment variables (endpoint, keys, region) for this process and its subprocesses, and
    yields the endpoint. Skips cleanly when moto[server] is not installed."""
    server_mod = pytest.importorskip("moto.server", reason="needs moto[server] (dev extra)")
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    saved = {k: os.environ.get(k) for k in [*S3_ENV, "AWS_ENDPOINT_URL"]}
    os.environ.update(S3_ENV, AWS_ENDPOINT_URL=endpoint)
    try:
        yield endpoint
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


#: three small clips of the bundled sample's kind (forward, pan, orbit; 12 frames each)
SAMPLE_CLIPS = [
    {"clip_id": "e2e_fwd", "split": "train", "seed": 71, "kind": "forward", "rel_scale": 0.25},
    {"clip_id": "e2e_pan", "split": "train", "seed": 72, "kind": "pan", "rel_scale": 1.7},
    {"clip_id": "e2e_orbit", "split": "test", "seed": 73, "kind": "orbit", "rel_scale": 4.0},
]


@pytest.fixture(scope="session")
def sample_pipeline(tmp_path_factory, ray_cluster):
    """One ingest -> curate run of ``SAMPLE_CLIPS`` (one clip per shard), made once per test run
    and shared by the modules that need a finished work dir: they read ``work`` as it is and
    copy it before changing anything. ``common`` are the overrides of that run but the work dir.
    """
    from omegaconf import OmegaConf

    from pipeline.config import load_config
    from pipeline.runner import Runner

    base = tmp_path_factory.mktemp("sample_pipeline")
    definition = base / "definition.yaml"
    defn = OmegaConf.to_container(OmegaConf.load(ROOT / "data_manifests" / "sample.yaml"))
    defn["defaults"].update({"n_frames": 12})
    defn["clips"] = SAMPLE_CLIPS
    OmegaConf.save(OmegaConf.create(defn), definition)
    data, work = base / "data", base / "ref"
    common = [f"dataset.root={data}", f"dataset.definition={definition}", "shards.size=1",
              "progress=false"]
    summary = Runner(load_config([f"paths.work_dir={work}", *common])).run("curate")
    return {"base": base, "work": work, "data": data, "definition": definition,
            "summary": summary, "common": common}

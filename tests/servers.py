"""The test session's one local Ray cluster (2 CPUs declared: an actor pool with one CPU
declared has none left for the rest of a pipeline) and one S3 server on loopback that its
workers can reach: both started on first use, stopped at the end of the session."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest

S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """moto's S3 server on a free loopback port; its URL."""
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture(scope="session")
def ray_cluster(s3_server: str) -> Iterator[dict[str, str]]:
    """A local Ray cluster whose workers (and this process) reach `s3_server` with test
    credentials, as a real cluster's nodes would reach their bucket; the environment it set."""
    from serving.runtime.ray_engine import ray_module

    ray = ray_module()  # as the command imports it: without Ray's `uv run` hook
    env = {**S3_ENV, "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": s3_server}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": env},
    )
    yield env
    ray.shutdown()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value

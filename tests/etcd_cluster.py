"""A real 3-member etcd cluster on loopback ports, for the etcd backend's tests.

Members run as child processes with data in a temporary directory. The
binary comes from PATH (Debian's etcd-server; .ci/run installs it): tests
skip when it is missing, except under CI, where a missing etcd fails them.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from actorlock.testing.etcd_cluster import EtcdCluster, free_ports

__all__ = ["EtcdCluster", "etcd_binary", "etcd_cluster_fixture", "fault_cluster_fixture", "free_ports"]


def etcd_binary() -> str:
    """The etcd binary, or skip (fail under CI) with the reason."""
    found = shutil.which("etcd")
    missing = []
    if found is None:
        missing.append("the etcd binary is not on PATH (apt-get install etcd-server)")
    try:
        import httpx  # noqa: F401
    except ImportError:
        missing.append("httpx is not installed (pip install -e '.[test]')")
    if missing:
        reason = "; ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the etcd tests: {reason}")
        pytest.skip(reason)
    assert found is not None
    return found


@pytest.fixture(scope="session", name="etcd_cluster")
def etcd_cluster_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    """A cluster shared by the tests that leave it as they found it."""
    cluster = EtcdCluster(etcd_binary(), tmp_path_factory.mktemp("etcd"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module", name="fault_cluster")
def fault_cluster_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    """A cluster of its own for tests that kill, stop and restart members."""
    cluster = EtcdCluster(etcd_binary(), tmp_path_factory.mktemp("etcd-faults"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()

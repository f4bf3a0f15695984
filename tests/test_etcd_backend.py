"""The etcd backend against a real 3-member cluster: conformance, config, and the client."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from actorlock.testing import conformance

from .etcd_cluster import EtcdCluster, etcd_binary
from .etcd_support import conformance_factory

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="session")
def etcd_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    cluster = EtcdCluster(etcd_binary(), tmp_path_factory.mktemp("etcd"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


CHECKS = pytest.mark.parametrize("check", conformance.ALL_CHECKS, ids=lambda c: c.__name__)


@CHECKS
async def test_conformance(check: conformance.Check, etcd_cluster: EtcdCluster) -> None:
    await check(conformance_factory(etcd_cluster.endpoints))  # type: ignore[arg-type]

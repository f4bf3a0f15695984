"""The etcd backend against a real 3-member cluster: conformance, config, and the client."""

from __future__ import annotations

import pytest

from actorlock.testing import conformance

from .etcd_cluster import EtcdCluster, etcd_cluster_fixture  # noqa: F401  (a fixture)
from .etcd_support import conformance_factory

pytestmark = pytest.mark.anyio


CHECKS = pytest.mark.parametrize("check", conformance.ALL_CHECKS, ids=lambda c: c.__name__)


@CHECKS
async def test_conformance(check: conformance.Check, etcd_cluster: EtcdCluster) -> None:
    await check(conformance_factory(etcd_cluster.endpoints))  # type: ignore[arg-type]

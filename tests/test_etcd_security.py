"""The etcd backend on clusters that ask for credentials: user/password auth, TLS with client certificates."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import actorlock
from actorlock.backends import HostAdvert, make_backend
from actorlock.errors import BackendError
from actorlock.model import HostIdentity, LeaseMode, LeaseOwner, LeaseRequest
from actorlock.testing.etcd_cluster import EtcdCluster, ServerTls

from .etcd_cluster import etcd_binary
from .etcd_support import new_prefix

pytestmark = pytest.mark.anyio


def config(endpoints: list[str], io_timeout: float = 3.0, **etcd: Any) -> actorlock.Config:
    return actorlock.load_config(
        {
            "locking": {"backend": "etcd"},
            "timing": {"io_timeout": io_timeout},
            "etcd": {"endpoints": endpoints, "prefix": new_prefix(), "request_timeout": 0.5, **etcd},
        }
    )


async def take_one_lease(cfg: actorlock.Config) -> int:
    backend = make_backend(cfg)
    try:
        await backend.join(HostIdentity("a", 1), "inc-a", HostAdvert())
        (lease,) = await backend.acquire(LeaseOwner("a", 1, "vm"), [LeaseRequest("x", LeaseMode.EXCLUSIVE)])
        await backend.renew(HostAdvert())
        return lease.token
    finally:
        await backend.aclose()


def _post(url: str, body: dict[str, Any], token: str = "") -> dict[str, Any]:
    headers = {"Authorization": token} if token else {}
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=5) as response:
        data = json.loads(response.read())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def auth_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    cluster = EtcdCluster(etcd_binary(), tmp_path_factory.mktemp("etcd-auth"), size=1)
    try:
        cluster.start()
        url = cluster.endpoints[0]
        _post(f"{url}/v3/auth/user/add", {"name": "root", "password": "rootpw"})
        _post(f"{url}/v3/auth/user/grant", {"user": "root", "role": "root"})
        _post(f"{url}/v3/auth/enable", {})
        yield cluster
    finally:
        cluster.stop()


async def test_user_and_password_are_required_and_used(auth_cluster: EtcdCluster) -> None:
    ends = auth_cluster.endpoints
    assert await take_one_lease(config(ends, user="root", password="rootpw")) == 1
    with pytest.raises(BackendError, match=r"authentication failed|invalid"):
        await take_one_lease(config(ends, user="root", password="wrong"))
    with pytest.raises(BackendError, match=r"user name is empty|permission denied|token"):
        await take_one_lease(config(ends))


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)


def _signed(directory: Path, name: str, ca: tuple[Path, Path], extension: str) -> tuple[Path, Path]:
    key, csr, cert, ext = (directory / f"{name}{suffix}" for suffix in (".key", ".csr", ".pem", ".ext"))
    ext.write_text(extension + "\n")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, "-subj", f"/CN={name}")
    _openssl(
        "x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1], "-CAcreateserial",
        "-out", cert, "-days", "1", "-extfile", ext,
    )  # fmt: skip
    return cert, key


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EtcdCluster, Path, Path, Path]]:
    binary = etcd_binary()
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make the test certificates")
    directory = tmp_path_factory.mktemp("etcd-tls")
    ca = (directory / "ca.pem", directory / "ca.key")
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca[1], "-out", ca[0],
        "-days", "1", "-subj", "/CN=actorlock-test-ca",
    )  # fmt: skip
    server = _signed(directory, "server", ca, "subjectAltName=IP:127.0.0.1")
    client = _signed(directory, "client", ca, "extendedKeyUsage=clientAuth")
    tls = ServerTls(cert=server[0], key=server[1], ca=ca[0], client_ca=ca[0], client_cert=client)
    (directory / "data").mkdir()
    cluster = EtcdCluster(binary, directory / "data", size=1, tls=tls)
    try:
        cluster.start()
        yield cluster, ca[0], client[0], client[1]
    finally:
        cluster.stop()


async def test_tls_with_a_client_certificate(tls_cluster: tuple[EtcdCluster, Path, Path, Path]) -> None:
    cluster, ca, cert, key = tls_cluster
    ends = cluster.endpoints
    assert ends[0].startswith("https://")
    assert await take_one_lease(config(ends, ca_file=str(ca), cert_file=str(cert), key_file=str(key))) == 1
    # Without the client certificate the members refuse the handshake: no member answers.
    with pytest.raises(BackendError):
        await take_one_lease(config(ends, io_timeout=0.5, ca_file=str(ca)))

"""The peer service: this host's end of the migration protocol over ZeroMQ.

It serves requests from peer coordinators (decode, authenticate, route to
the migration's driver, answer) and opens connections to them with the
same keys. The transport stays a thin shell: what a request means is the
migration machine's business.
"""

from __future__ import annotations

import logging
from contextlib import AbstractAsyncContextManager

import anyio
from anyio.abc import TaskGroup

from ..config import PeerConfig
from ..errors import ActorlockError, ProtocolError
from ..protocol import Prepare, Request, answer_unknown
from ..transport import codec
from ..transport.zmq import KeyPair, PeerClient, PeerServer, connect, load_keypair
from .lifeline import Membership
from .migrations import MigrationRegistry
from .peer_directory import PeerDirectory
from .peer_limits import RefusalLog

__all__ = ["PeerService"]

log = logging.getLogger(__name__)


class PeerService:
    """Serves peers' requests and connects to peers, with this host's keys."""

    def __init__(
        self,
        peer: PeerConfig,
        membership: Membership,
        peers: PeerDirectory,
        migrations: MigrationRegistry,
    ) -> None:
        self._peer = peer
        self._membership = membership
        self._peers = peers
        self._migrations = migrations
        self._keys: KeyPair | None = None
        self._refusals = RefusalLog()

    @property
    def configured(self) -> bool:
        return bool(self._peer.endpoint)

    async def start(self, task_group: TaskGroup) -> None:
        """Load our keys, bind the endpoint and serve in ``task_group``; the bound endpoint is advertised."""
        peer = self._peer
        if not peer.plaintext:
            assert peer.key_file is not None
            self._keys = await anyio.to_thread.run_sync(load_keypair, peer.key_file)
            self._membership.public_key = self._keys.public
        else:
            log.warning(
                "host %s: peer.plaintext is set: CURVE is off, so migration traffic on %s is "
                "neither encrypted nor authenticated; any process that can reach it may speak "
                "for a host of the lockspace",
                self._membership.identity.name,
                peer.endpoint,
            )
        server = PeerServer(
            peer.endpoint,
            keys=self._keys,
            allowed_clients=peer.allowed_keys,
            plaintext=peer.plaintext,
            max_in_flight_per_peer=peer.max_requests_per_peer,
        )
        endpoint = await task_group.start(server.serve, self._handle, name="peer service")
        self._membership.peer_endpoint = endpoint

    def connect(self, endpoint: str, server_key: str) -> AbstractAsyncContextManager[PeerClient]:
        if self._peer.plaintext:
            return connect(endpoint, plaintext=True)
        return connect(endpoint, server_key=server_key, keys=self._keys)

    async def _handle(self, identity: bytes, user_id: str | None, frame: bytes) -> bytes | None:
        """One request from a peer coordinator: decode, authenticate, route, answer."""
        name = self._membership.identity.name
        try:
            message = codec.decode(frame)
            if not isinstance(message, Request):
                return None
            await self._authenticate(message.sender, user_id)
            driver = self._migrations.get(message.migration_id)
            if driver is None and isinstance(message, Prepare):
                driver = await self._migrations.start_incoming(message, user_id or "")
        except ActorlockError as exc:
            self._refusals.warn(name, exc)
            return codec.encode(codec.error_reply_for(frame, exc, sender=name))
        if driver is None:
            response = answer_unknown(message, local=name)
            return codec.encode(response) if response is not None else None
        peer = self._peer
        # Whatever deadline the peer claims, a handler waits no longer than a migration may last.
        wait = min(
            max(message.deadline_remaining, peer.request_timeout),
            peer.prepare_timeout + peer.migration_timeout,
        )
        with anyio.move_on_after(wait):
            response = await driver.request(message)
            return codec.encode(response) if response is not None else None
        return None

    async def _authenticate(self, sender: str, user_id: str | None) -> None:
        """The sender named in the payload must be a host of our lockspace, and (CURVE) the
        host whose key signed the connection; plain text has no key to compare."""
        record = await self._peers.lookup(sender)
        if record is None:
            raise ProtocolError(f"peer {sender!r} is not a host of lockspace {self._membership.lockspace_id}")
        if not self._peer.plaintext and record.public_key != user_id:
            raise ProtocolError(f"peer {sender!r} signed with a key that host does not advertise")

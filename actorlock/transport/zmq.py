"""Peer-to-peer request/reply between coordinators over ZeroMQ, on anyio.

The only module that imports ``zmq``. It works on asyncio and trio alike:
instead of ``zmq.asyncio`` (asyncio only), each socket is owned by exactly
one task that waits on the socket's file descriptor with
``anyio.wait_readable`` and moves messages with non-blocking calls.

Why one owner task per socket: the descriptor is *edge*-triggered (it
signals that ``ZMQ_EVENTS`` may have changed, not that a message is ready),
any send or receive may consume the edge, and only one task may wait on a
descriptor at a time. So the owner re-reads ``ZMQ_EVENTS`` after every
send/receive and before every wait, and other tasks never touch the socket:
they queue frames and wake the owner by cancelling its wait.

Envelope: a request is ``[request-id, payload]`` from a DEALER; the reply is
``[request-id, b"R", payload]``, or ``[request-id, b"E", text]`` when the
server's handler failed. Payloads are opaque bytes (see ``codec``).

Security: CURVE encrypts, and a ZAP handler (pyzmq's ThreadAuthenticator)
admits only client keys on an allow-list; the server learns who called from
the frame's ``User-Id`` property (the client's Z85 public key), never from
the payload. Plain text is used only when asked for explicitly.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import time
import tomllib
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager
from functools import partial
from itertools import count
from pathlib import Path
from typing import Any, Final

import anyio
import attrs
import zmq
import zmq.auth.thread
from anyio.abc import TaskStatus
from zmq.utils import z85

from ..errors import ConfigError, InvalidParameterError, PeerRefusedError, PeerUnreachableError
from .limits import LIMITS
from .ratelimit import LogLimiter

log = logging.getLogger(__name__)

Handler = Callable[[bytes, str | None, bytes], Awaitable[bytes | None]]

MAX_MESSAGE_SIZE: Final = LIMITS.message_size  # a codec frame plus room for the envelope
_REPLY: Final = b"R"
_FAILED: Final = b"E"
_ID_LEN: Final = 8
_ZAP_DOMAIN: Final = "actorlock"  # pyzmq matches credential providers by this exact domain


# --- keys ----------------------------------------------------------------------


@attrs.frozen
class KeyPair:
    """A CURVE key pair as Z85 text (40 characters each). The secret never shows in repr."""

    public: str = attrs.field()
    secret: str = attrs.field(repr=False)

    @public.validator
    def _check_public(self, _attr: object, value: str) -> None:
        _check_z85("public key", value)

    @secret.validator
    def _check_secret(self, _attr: object, value: str) -> None:
        _check_z85("secret key", value)
        if zmq.curve_public(value.encode("ascii")).decode("ascii") != self.public:
            raise InvalidParameterError("the public key does not belong to the secret key")


def _check_z85(what: str, value: object) -> None:
    if not isinstance(value, str) or len(value) != 40:
        raise InvalidParameterError(f"a CURVE {what} is 40 characters of Z85")
    try:
        z85.decode(value.encode("ascii"))
    except (ValueError, UnicodeEncodeError, KeyError):
        raise InvalidParameterError(f"the CURVE {what} is not valid Z85") from None


def generate_keypair() -> tuple[str, str]:
    """A fresh CURVE key pair: ``(public_z85, secret_z85)``."""
    public, secret = zmq.curve_keypair()
    return public.decode("ascii"), secret.decode("ascii")


def save_keypair(path: str | os.PathLike[str], keys: KeyPair) -> None:
    """Write ``keys`` to ``path`` (mode 0600), replacing it atomically.

    The format is TOML with ``public-key`` and ``secret-key``, so the public
    half can be read off the same file by tools and people.
    """
    target = Path(path)
    text = (
        "# actorlock CURVE key pair. Whoever reads this file can act as this host.\n"
        f'public-key = "{keys.public}"\n'
        f'secret-key = "{keys.secret}"\n'
    )
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)  # an existing leftover may have had another mode
        os.write(fd, text.encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, target)


def load_keypair(path: str | os.PathLike[str]) -> KeyPair:
    """Read a key pair written by :func:`save_keypair`.

    Raises:
        ConfigError: the file is missing, readable by others than its owner,
            or does not hold a matching pair. The message never shows the secret.
    """
    where = str(path)
    try:
        fd = os.open(where, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise ConfigError(where, f"cannot open key file: {exc.strerror}") from None
    try:
        mode = os.fstat(fd).st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(where, f"key file mode {stat.S_IMODE(mode):04o} lets others read it; use 0600")
        with os.fdopen(fd, "rb", closefd=False) as f:
            raw = f.read(4096)
    finally:
        os.close(fd)
    try:
        data = tomllib.loads(raw.decode("utf-8"))
        return KeyPair(public=data["public-key"], secret=data["secret-key"])
    except (tomllib.TOMLDecodeError, UnicodeDecodeError):
        raise ConfigError(where, "not a key file (expected public-key and secret-key)") from None
    except KeyError as exc:
        raise ConfigError(where, f"missing {exc.args[0]}") from None
    except InvalidParameterError as exc:
        raise ConfigError(where, str(exc)) from None


# --- deadlines -----------------------------------------------------------------


@contextmanager
def unreachable_after(delay: float, *, peer: str) -> Iterator[None]:
    """Like ``anyio.fail_after``, but a missed deadline is a PeerUnreachableError.

    Wrap a request (its send included) so that a slow, absent or refusing
    peer comes out as the error callers handle for peers::

        with unreachable_after(2.0, peer="host-b"):
            reply = await client.request(frame)
    """
    with anyio.move_on_after(delay) as scope:
        yield
    if scope.cancelled_caught:
        raise PeerUnreachableError(f"no answer from {peer} within {delay:g}s")


# --- the socket owner ------------------------------------------------------------


class _Pump:
    """One socket, driven by the one task that runs :meth:`run`.

    Other tasks call :meth:`post` (queue frames, wake the owner); replies and
    requests are handed to ``on_message`` from the owner task.
    """

    def __init__(self, sock: zmq.Socket[bytes], on_message: Callable[[list[zmq.Frame]], None]) -> None:
        self.sock = sock
        fd = sock.getsockopt(zmq.FD)
        assert isinstance(fd, int)
        self.fd = fd
        self._on_message = on_message
        self._outbox: dict[int, list[bytes]] = {}
        self._ids = count()
        self._wait_scope: anyio.CancelScope | None = None
        self.closed = False

    def post(self, frames: list[bytes]) -> int:
        """Queue a message; returns a ticket for :meth:`withdraw`."""
        ticket = next(self._ids)
        self._outbox[ticket] = frames
        self.wake()
        return ticket

    def withdraw(self, ticket: int) -> None:
        """Forget a queued message that is not sent yet (its sender gave up)."""
        self._outbox.pop(ticket, None)

    def wake(self) -> None:
        if self._wait_scope is not None:
            self._wait_scope.cancel()

    def _flush(self, *, drop_unroutable: bool) -> bool:
        moved = False
        while self._outbox:
            ticket, frames = next(iter(self._outbox.items()))
            try:
                self.sock.send_multipart(frames, zmq.NOBLOCK)
            except zmq.Again:
                if not drop_unroutable:
                    return moved
                log.warning("dropping a reply: the peer's queue is full")
            except zmq.ZMQError as exc:
                if exc.errno != zmq.EHOSTUNREACH:
                    raise
                log.info("dropping a reply: the peer has gone")  # router_mandatory says so
            del self._outbox[ticket]
            moved = True
        return moved

    def _drain(self) -> bool:
        moved = False
        while True:
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return moved
            moved = True
            self._on_message(frames)

    async def run(self, *, drop_unroutable: bool) -> None:
        """Move messages until cancelled; then the socket is closed."""
        try:
            while True:
                if self._flush(drop_unroutable=drop_unroutable) | self._drain():
                    continue
                events = self.sock.getsockopt(zmq.EVENTS)
                assert isinstance(events, int)
                if events & zmq.POLLIN or (self._outbox and events & zmq.POLLOUT):
                    continue
                # No checkpoint since EVENTS was read, so no edge can be missed.
                with anyio.CancelScope() as self._wait_scope:
                    await anyio.wait_readable(self.fd)
                self._wait_scope = None
        finally:
            self._wait_scope = None
            self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._outbox.clear()
        with contextlib.suppress(RuntimeError):  # no event loop any more: nobody can be waiting
            anyio.notify_closing(self.fd)
        self.sock.close(linger=0)


def _user_id(frame: zmq.Frame) -> str | None:
    try:
        value = frame.get("User-Id")
    except zmq.ZMQError:
        return None  # no ZAP handler ran for this connection (plain text)
    return value if isinstance(value, str) and value else None


# --- server ----------------------------------------------------------------------


class _AllowList:
    """The ZAP credentials provider: admit exactly the listed client keys.

    Called on the authenticator's thread, once per connection attempt.
    Anyone who can reach the port can make up keys, so what it keeps and
    logs about refused ones is bounded.
    """

    REMEMBERED: Final = 1024  # refused keys kept to log each one once (oldest forgotten first)
    LOG_BURST: Final = 10
    LOG_INTERVAL: Final = 60.0  # after the burst, one warning a minute

    def __init__(self, keys: Iterable[str], *, clock: Callable[[], float] = time.monotonic) -> None:
        self.keys = frozenset(keys)
        self._refused: OrderedDict[str, None] = OrderedDict()
        self._log = LogLimiter(self.LOG_BURST, self.LOG_INTERVAL, clock)

    def remembered(self) -> int:
        return len(self._refused)

    def callback(self, domain: str, key: bytes) -> bool:
        text = key.decode("ascii", "replace")[:40]
        if text in self.keys:
            return True
        if text in self._refused:
            # A refused client reconnects every 100 ms or so: say it once.
            self._refused.move_to_end(text)
            log.debug("refused a peer with CURVE key %s again", text)
            return False
        self._refused[text] = None
        if len(self._refused) > self.REMEMBERED:
            self._refused.popitem(last=False)
        dropped = self._log.take()
        if dropped is not None:
            more = f" ({dropped} more refused since the last warning)" if dropped else ""
            log.warning("refused a peer with CURVE key %s: not on the allow-list%s", text, more)
        return False


class PeerServer:
    """The ROUTER side: answers requests from peer coordinators.

    Args:
        endpoint: where to bind: ``tcp://HOST:PORT`` (``*`` for any port) or ``ipc://PATH``.
        keys: this server's CURVE key pair; required unless ``plaintext``.
        allowed_clients: Z85 public keys of the peers that may connect.
        plaintext: no encryption and no authentication; must be asked for.
        max_in_flight: requests handled at once; more are dropped (the
            client times out and may retry).
        max_in_flight_per_peer: requests from one peer handled at once (a
            peer is its CURVE key, or its connection in plain text), so one
            peer cannot take every slot from the others; default: no more
            than ``max_in_flight``.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        keys: KeyPair | None = None,
        allowed_clients: Iterable[str] = (),
        plaintext: bool = False,
        max_in_flight: int = 1024,
        max_in_flight_per_peer: int | None = None,
    ) -> None:
        if plaintext and keys is not None:
            raise InvalidParameterError("choose CURVE keys or plaintext, not both")
        if not plaintext and keys is None:
            raise InvalidParameterError("a PeerServer needs CURVE keys (or plaintext=True, explicitly)")
        allowed = frozenset(allowed_clients)
        for key in allowed:
            _check_z85("client public key", key)
        self.endpoint = endpoint
        self.keys = keys
        self.allowed_clients = allowed
        self.plaintext = plaintext
        self.max_in_flight = max_in_flight
        self.max_in_flight_per_peer = (
            max_in_flight if max_in_flight_per_peer is None else max_in_flight_per_peer
        )
        self.dropped = 0  # requests dropped for a limit (for tests and metrics)

    async def serve(
        self, handler: Handler, *, task_status: TaskStatus[str] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Bind, report the bound endpoint through ``task_status``, answer until cancelled.

        ``handler(peer_identity, user_id, frame)`` runs in its own task per
        request; its bytes are the reply, None sends none. ``user_id`` is the
        client's authenticated Z85 public key (None in plain text). A
        handler that raises is logged and answered with a failure; the
        server keeps going. Malformed envelopes are dropped.
        """
        context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        auth: zmq.auth.thread.ThreadAuthenticator | None = None
        try:
            if not self.plaintext:
                auth = zmq.auth.thread.ThreadAuthenticator(context, log=log)
                auth.start()
                auth.configure_curve_callback(
                    _ZAP_DOMAIN, credentials_provider=_AllowList(self.allowed_clients)
                )
            sock = context.socket(zmq.ROUTER)
            try:
                sock.setsockopt(zmq.LINGER, 0)
                sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
                sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_SIZE)
                if self.keys is not None:
                    sock.setsockopt(zmq.CURVE_SERVER, 1)
                    sock.setsockopt(zmq.CURVE_SECRETKEY, self.keys.secret.encode("ascii"))
                    sock.setsockopt_string(zmq.ZAP_DOMAIN, _ZAP_DOMAIN)
                sock.bind(self.endpoint)
                bound = sock.getsockopt_string(zmq.LAST_ENDPOINT)
            except BaseException:
                sock.close(linger=0)
                raise
            async with anyio.create_task_group() as tg:
                in_flight = 0
                per_peer: dict[str | bytes, int] = {}
                drop_log = LogLimiter(burst=10, interval=60.0)

                def on_message(frames: list[zmq.Frame]) -> None:
                    nonlocal in_flight
                    if len(frames) != 3 or len(frames[1].bytes) != _ID_LEN:
                        log.warning("dropping a malformed request envelope (%d frames)", len(frames))
                        return
                    identity, user_id = frames[0].bytes, _user_id(frames[1])
                    peer: str | bytes = user_id if user_id is not None else identity
                    if in_flight >= self.max_in_flight:
                        self.dropped += 1
                        held_back = drop_log.take()  # a flood must not flood the log too
                        if held_back is not None:
                            log.warning(
                                "dropping a request: %d already in flight (%d more dropped unlogged)",
                                in_flight,
                                held_back,
                            )
                        return
                    if per_peer.get(peer, 0) >= self.max_in_flight_per_peer:
                        self.dropped += 1
                        log.debug("dropping a request: the peer has %d in flight", per_peer[peer])
                        return
                    in_flight += 1
                    per_peer[peer] = per_peer.get(peer, 0) + 1
                    tg.start_soon(answer, identity, user_id, peer, frames[1].bytes, frames[2].bytes)

                async def answer(
                    identity: bytes, user_id: str | None, peer: str | bytes, request_id: bytes, payload: bytes
                ) -> None:
                    nonlocal in_flight
                    try:
                        reply = await handler(identity, user_id, payload)
                    except Exception:
                        log.exception("peer request handler failed")
                        pump.post([identity, request_id, _FAILED, b"the peer failed to handle the request"])
                    else:
                        if reply is not None:
                            pump.post([identity, request_id, _REPLY, reply])
                    finally:
                        in_flight -= 1
                        if per_peer[peer] <= 1:
                            del per_peer[peer]  # the map holds only peers with work, so it stays small
                        else:
                            per_peer[peer] -= 1

                pump = _Pump(sock, on_message)
                tg.start_soon(partial(pump.run, drop_unroutable=True))
                task_status.started(bound)
        finally:
            if auth is not None:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(auth.stop)
            context.term()


# --- client ----------------------------------------------------------------------


@attrs.define
class _Waiter:
    done: anyio.Event = attrs.Factory(anyio.Event)
    reply: bytes | None = None
    failure: str | None = None


class PeerClient:
    """The DEALER side: requests to one peer, replies matched by request id.

    Use :func:`connect`; ``request`` only works inside its ``async with``.
    """

    def __init__(self, endpoint: str, pump: _Pump) -> None:
        self.endpoint = endpoint
        self._pump = pump
        self._waiters: dict[bytes, _Waiter] = {}
        self._ids = count(1)

    @property
    def usable(self) -> bool:
        """False once the connection's socket was closed (its ``async with`` ended or failed)."""
        return not self._pump.closed

    async def request(self, frame: bytes) -> bytes:
        """Send ``frame`` and wait for the reply, for as long as the caller's deadline allows.

        Bound it with :func:`unreachable_after` (or ``anyio.fail_after``); the
        deadline covers the send too, which never completes when the peer
        refuses our key.

        Raises:
            PeerRefusedError: the peer's handler failed on this request.
            PeerUnreachableError: the client is closed.
        """
        if self._pump.closed:
            raise PeerUnreachableError(f"connection to {self.endpoint} is closed")
        request_id = next(self._ids).to_bytes(_ID_LEN, "big")
        waiter = self._waiters[request_id] = _Waiter()
        ticket = self._pump.post([request_id, frame])
        try:
            await waiter.done.wait()
        finally:
            del self._waiters[request_id]
            self._pump.withdraw(ticket)
        if waiter.failure is not None:
            raise PeerRefusedError(f"{self.endpoint}: {waiter.failure}")
        if waiter.reply is None:
            raise PeerUnreachableError(f"connection to {self.endpoint} closed before the reply")
        return waiter.reply

    def _on_message(self, frames: list[zmq.Frame]) -> None:
        if len(frames) != 3:
            log.warning("dropping a malformed reply (%d frames)", len(frames))
            return
        waiter = self._waiters.get(frames[0].bytes)
        if waiter is None:
            return  # its caller gave up; a late reply is no one's business
        kind, body = frames[1].bytes, frames[2].bytes
        if kind == _REPLY:
            waiter.reply = body
        else:
            waiter.failure = body.decode("utf-8", "replace")[:500] if kind == _FAILED else "malformed reply"
        waiter.done.set()

    def _close(self) -> None:
        self._pump.close()
        for waiter in self._waiters.values():
            waiter.done.set()


@asynccontextmanager
async def connect(
    endpoint: str,
    *,
    server_key: str | None = None,
    keys: KeyPair | None = None,
    plaintext: bool = False,
    context: zmq.Context[Any] | None = None,
) -> AsyncIterator[PeerClient]:
    """A client for the server at ``endpoint``, open for the ``async with`` body.

    Args:
        endpoint: the server's endpoint.
        server_key: the server's Z85 public key (CURVE).
        keys: this client's key pair (CURVE); the server must allow its public key.
        plaintext: no encryption; must be asked for.
        context: the zmq context (default: the process-wide one).
    """
    if plaintext and (keys is not None or server_key is not None):
        raise InvalidParameterError("choose CURVE keys or plaintext, not both")
    if not plaintext and (keys is None or server_key is None):
        raise InvalidParameterError("a client needs its key pair and the server's key (or plaintext=True)")
    ctx = context if context is not None else zmq.Context.instance()
    sock: zmq.Socket[bytes] = ctx.socket(zmq.DEALER)
    try:
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_SIZE)
        if keys is not None and server_key is not None:
            _check_z85("server public key", server_key)
            sock.setsockopt(zmq.CURVE_SERVERKEY, server_key.encode("ascii"))
            sock.setsockopt(zmq.CURVE_PUBLICKEY, keys.public.encode("ascii"))
            sock.setsockopt(zmq.CURVE_SECRETKEY, keys.secret.encode("ascii"))
        sock.connect(endpoint)
    except BaseException:
        sock.close(linger=0)
        raise
    client = PeerClient(endpoint, _Pump(sock, lambda frames: client._on_message(frames)))
    failure: BaseException | None = None
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(partial(client._pump.run, drop_unroutable=False))
            try:
                yield client
            except BaseException as exc:
                # Raised again below, outside the task group, so callers see the
                # error itself rather than an exception group around it.
                failure = exc
            finally:
                tg.cancel_scope.cancel()
    finally:
        client._close()
    if failure is not None:
        raise failure

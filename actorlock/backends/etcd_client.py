"""A small etcd v3 client over the JSON gateway, on anyio (asyncio and trio alike).

Why the gateway and httpx: etcd serves every v3 call as JSON over HTTP on
its client port (``/v3/kv/txn``, ``/v3/lease/grant``...), so the client
needs no gRPC stack or protobuf pins, and httpx runs on whichever event loop
anyio runs. The gateway encodes keys and values in base64 and 64-bit
integers as strings; this module hides both.

Failover: requests go to one member until it fails (refused, reset, a 5xx,
or no answer within ``request_timeout``), then to the next one in the list.
A request that timed out may still be applied later by the member it went
to (a stopped member resumes, a slow leader commits): every write the
backend sends is a compare-and-swap on revisions, so a late or repeated one
either finds nothing changed and is the same write, or changes nothing.
Callers bound a whole operation with ``io_timeout``; the loop here stops
at that deadline too.
"""

from __future__ import annotations

import base64
import json
import ssl
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio
import httpx  # the etcd extra; actorlock.backends imports this module only for the etcd backend

from ..errors import BackendError, ConfigError, EtcdRequestError, EtcdUnavailableError

Json = dict[str, Any]

# Between two passes over every member when all of them refused at once: a
# short pause keeps a dead cluster from becoming a busy loop.
_ROUND_PAUSE = 0.05
# Lease-record requests in flight per client (the rest wait in the limiter).
_IN_FLIGHT = 16
# The share of the time left that an attempt leaves to the deadlines around it.
_MARGIN = 0.1
# Answers that mean "this member cannot serve now, another may".
_RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})


def b64(data: str | bytes) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.b64encode(raw).decode("ascii")


def unb64(text: str) -> bytes:
    return base64.b64decode(text)


def prefix_end(prefix: str) -> str:
    """The range end that selects every key starting with ``prefix`` (base64)."""
    raw = bytearray(prefix.encode())
    raw[-1] += 1  # prefixes here end in "/", never in 0xff
    return b64(bytes(raw))


def as_int(value: object) -> int:
    """The gateway writes int64 as strings and leaves zero values out."""
    if value is None:
        return 0
    if isinstance(value, (int, str)):
        return int(value)
    raise BackendError(f"etcd answered a non-integer {value!r}")


def _ssl_context(ca_file: Path | None, cert_file: Path | None, key_file: Path | None) -> ssl.SSLContext:
    try:
        context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        if cert_file is not None and key_file is not None:
            context.load_cert_chain(str(cert_file), str(key_file))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError("etcd.ca_file", f"cannot load the TLS files: {exc}") from None
    return context


class EtcdClient:
    """Calls on an etcd cluster's v3 JSON gateway with member failover."""

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        io_timeout: float,
        request_timeout: float = 2.0,
        ca_file: Path | None = None,
        cert_file: Path | None = None,
        key_file: Path | None = None,
        user: str = "",
        password: str = "",
    ) -> None:
        if not endpoints:
            raise ConfigError("etcd.endpoints", "must list at least one client URL")
        self.endpoints = tuple(url.rstrip("/") for url in endpoints)
        self.io_timeout = io_timeout
        self.request_timeout = min(request_timeout, io_timeout)
        self._current = 0
        self._user, self._password = user, password
        # Simple auth tokens live in the memory of the member that issued them.
        self._tokens: dict[str, str] = {}
        verify: ssl.SSLContext | bool = True
        if any(url.startswith("https://") for url in self.endpoints):
            verify = _ssl_context(ca_file, cert_file, key_file)
        # Two lanes. httpcore's pool costs CPU per request in proportion to
        # the requests it holds, so lease traffic waits in an anyio limiter
        # instead (FIFO, cheap) and keeps few requests in flight; renewals
        # have a pool of their own and never queue behind it.
        self._limiter = anyio.CapacityLimiter(_IN_FLIGHT)
        self._http = self._pool(_IN_FLIGHT, verify=verify)
        self._urgent = self._pool(2, verify=verify)
        self._closed = False

    def _pool(self, size: int, *, verify: ssl.SSLContext | bool) -> httpx.AsyncClient:
        limits = httpx.Limits(max_connections=size, max_keepalive_connections=size)
        # httpx's own timeouts end an attempt first, and close its connection
        # cleanly; the anyio deadline around each attempt is the second net.
        return httpx.AsyncClient(
            verify=verify, timeout=httpx.Timeout(self.request_timeout), limits=limits, trust_env=False
        )

    @property
    def endpoint(self) -> str:
        """The member requests go to now."""
        return self.endpoints[self._current]

    async def call(self, path: str, body: Mapping[str, Any], *, urgent: bool = False) -> Json:
        """POST ``body`` to ``path`` on the current member, failing over until io_timeout.

        Raises:
            EtcdUnavailableError: no member answered in time.
            EtcdRequestError: a member answered with a refusal that another would repeat.
        """
        if self._closed:
            raise BackendError(f"etcd {path}: the client was closed")
        failures: list[str] = []
        with anyio.move_on_after(self.io_timeout):
            # Bounded twice: by the deadline above and by this many passes.
            for attempt in range(10_000):
                if attempt and attempt % len(self.endpoints) == 0:
                    await anyio.sleep(_ROUND_PAUSE)
                url = self.endpoint
                try:
                    return await self._attempt(url, path, body, urgent=urgent)
                except _Timeout as exc:
                    failures.append(f"{url}: no answer within {exc}s")
                except (httpx.TransportError, OSError) as exc:  # ssl.SSLError can escape httpx
                    failures.append(f"{url}: {type(exc).__name__}: {exc}")
                except _Retry as exc:
                    failures.append(f"{url}: {exc}")
                except _NoTime:
                    break
                self._current = (self._current + 1) % len(self.endpoints)
        last = "; ".join(failures[-len(self.endpoints) :]) or "no attempt finished"
        raise EtcdUnavailableError(f"etcd {path}: no member answered within {self.io_timeout}s ({last})")

    async def _attempt(self, url: str, path: str, body: Mapping[str, Any], *, urgent: bool) -> Json:
        if urgent:
            return await self._bounded_post(url, path, body, self._urgent)
        async with self._limiter:
            return await self._bounded_post(url, path, body, self._http)

    async def _bounded_post(
        self, url: str, path: str, body: Mapping[str, Any], http: httpx.AsyncClient
    ) -> Json:
        # End the attempt by httpx's own timeout before any enclosing deadline
        # cancels it: httpcore does not always close a socket whose connect or
        # TLS handshake is cancelled.
        left = anyio.current_effective_deadline() - anyio.current_time()
        budget = min(self.request_timeout, left * (1 - _MARGIN))
        if budget <= 0:
            raise _NoTime
        try:
            with anyio.fail_after(2 * budget):
                return await self._post(url, path, body, budget, http)
        except TimeoutError:
            raise _Timeout(f"{budget:.3g}") from None

    async def _post(
        self, url: str, path: str, body: Mapping[str, Any], budget: float, http: httpx.AsyncClient
    ) -> Json:
        token = await self._token(url, budget, http) if self._user else ""
        response = await self._send(http, url + path, body, budget, token)
        text = response.text
        if response.status_code in _RETRY_STATUS:
            raise _Retry(f"HTTP {response.status_code}: {text[:200]}")
        # A streaming call (lease keep-alive) answers one JSON object per line.
        first = text.split("\n", 1)[0] if text else "{}"
        try:
            data = json.loads(first)
        except ValueError:
            raise _Retry(f"HTTP {response.status_code}: not JSON: {text[:200]!r}") from None
        if not isinstance(data, dict):
            raise _Retry(f"HTTP {response.status_code}: unexpected answer {text[:200]!r}")
        if "error" in data and ("result" not in data or isinstance(data["error"], dict)):
            error = data["error"]
            message = str(
                error.get("message", error) if isinstance(error, dict) else data.get("message", error)
            )
            if _transient(message):
                raise _Retry(message)
            if "token" in message and self._user:
                self._tokens.pop(url, None)
                raise _Retry(message)
            raise EtcdRequestError(path, response.status_code, message)
        if response.status_code != 200:
            raise EtcdRequestError(path, response.status_code, text[:200])
        result = data.get("result", data)
        return result if isinstance(result, dict) else {}

    async def _send(
        self, http: httpx.AsyncClient, url: str, body: Mapping[str, Any], budget: float, token: str
    ) -> httpx.Response:
        payload = json.dumps(body).encode()
        headers = {"Content-Type": "application/json", "Content-Length": str(len(payload))}
        if token:
            headers["Authorization"] = token
        request = http.build_request("POST", url, headers=headers, timeout=budget)
        request.stream = _OneChunk(payload)
        return await http.send(request)

    async def _token(self, url: str, budget: float, http: httpx.AsyncClient) -> str:
        token = self._tokens.get(url)
        if token is None:
            body = {"name": self._user, "password": self._password}
            response = await self._send(http, url + "/v3/auth/authenticate", body, budget, "")
            if response.status_code in _RETRY_STATUS:
                raise _Retry(f"authenticate: HTTP {response.status_code}")
            data = response.json()
            if response.status_code != 200 or "token" not in data:
                raise EtcdRequestError("/v3/auth/authenticate", response.status_code, response.text[:200])
            token = self._tokens[url] = str(data["token"])
        return token

    # --- the calls the backend uses ---------------------------------------------

    async def txn(
        self,
        compare: Sequence[Json] = (),
        success: Sequence[Json] = (),
        failure: Sequence[Json] = (),
        *,
        urgent: bool = False,
    ) -> Json:
        """One txn; ``urgent`` ones (renewals) take the lane that lease traffic never fills."""
        body: Json = {"compare": list(compare), "success": list(success), "failure": list(failure)}
        return await self.call("/v3/kv/txn", body, urgent=urgent)

    async def grant(self, ttl: int) -> int:
        answer = await self.call("/v3/lease/grant", {"TTL": str(ttl)}, urgent=True)
        lease = as_int(answer.get("ID"))
        if lease == 0:
            raise BackendError(f"etcd granted no lease: {answer}")
        return lease

    async def keepalive(self, lease: int) -> int:
        """Renew ``lease``; returns its TTL, 0 when the lease no longer exists."""
        answer = await self.call("/v3/lease/keepalive", {"ID": str(lease)}, urgent=True)
        return as_int(answer.get("TTL"))

    async def revoke(self, lease: int) -> None:
        """Revoke ``lease``; one that already expired is not an error."""
        try:
            await self.call("/v3/lease/revoke", {"ID": str(lease)})
        except EtcdRequestError as exc:
            if "not found" not in exc.message:
                raise

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            with anyio.CancelScope(shield=True), anyio.move_on_after(self.request_timeout):
                await self._http.aclose()
                await self._urgent.aclose()


class _OneChunk(httpx.AsyncByteStream):
    """A request body that is no async generator.

    httpx wraps bytes in an async generator; a request cancelled while it
    is being sent (the host's renewal deadline) leaves that generator for
    the event loop to finalize, which trio reports as an error.
    """

    def __init__(self, payload: bytes) -> None:
        self._payload: bytes | None = payload

    def __aiter__(self) -> _OneChunk:  # an iterator, not a generator
        return self

    async def __anext__(self) -> bytes:
        if self._payload is None:
            raise StopAsyncIteration
        chunk, self._payload = self._payload, None
        return chunk

    async def aclose(self) -> None:
        self._payload = None


class _Retry(Exception):
    """This member cannot answer now; try the next one."""


class _Timeout(Exception):
    """No answer within the attempt's budget (the budget is the message)."""


class _NoTime(Exception):
    """The enclosing deadline leaves no time for another attempt."""


def _transient(message: str) -> bool:
    # Raft states during which another member (or a second try) can succeed.
    words = ("no leader", "leader changed", "timed out", "not capable", "too many requests", "stopped")
    return any(word in message for word in words)


# --- request builders (the gateway's JSON shapes) ---------------------------------


def range_op(key: str, *, prefix: bool = False) -> Json:
    body: Json = {"key": b64(key)}
    if prefix:
        body["range_end"] = prefix_end(key)
    return {"request_range": body}


def put_op(key: str, value: str, *, lease: int = 0) -> Json:
    body: Json = {"key": b64(key), "value": b64(value)}
    if lease:
        body["lease"] = str(lease)
    return {"request_put": body}


def mod_is(key: str, revision: int) -> Json:
    """Compare: the key was last modified at ``revision`` (0: the key does not exist)."""
    return {"key": b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": str(revision)}


def value_is(key: str, value: str) -> Json:
    return {"key": b64(key), "target": "VALUE", "result": "EQUAL", "value": b64(value)}


def range_kvs(response: Json) -> list[tuple[str, bytes, int]]:
    """``(key, value, mod_revision)`` of every key in one response_range."""
    body = response.get("response_range", {})
    return [
        (unb64(kv["key"]).decode(), unb64(kv.get("value", "")), as_int(kv.get("mod_revision")))
        for kv in body.get("kvs", [])
    ]

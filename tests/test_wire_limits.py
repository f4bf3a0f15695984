"""One table of wire limits: what the encoder sends, the peer's decoder reads (issue 10)."""

from __future__ import annotations

import pytest

from actorlock.errors import ProtocolError
from actorlock.model import DomainIdentity, Lease, LeaseMode, LockState
from actorlock.protocol import CommitReply, Outcome, Prepare
from actorlock.transport import codec
from actorlock.transport.limits import LIMITS, check_lock_state


def prepare(leases: list[Lease], *, sender: str = "a") -> Prepare:
    return Prepare(
        migration_id="m1",
        sender=sender,
        seq=1,
        deadline_remaining=5.0,
        domain=DomainIdentity("uuid-1", "vm"),
        source_host_id=1,
        lockspace_kind="memory",
        lockspace_id="ls",
        lock_state=LockState(tuple(leases)),
    )


def many(count: int, key_len: int = 20) -> list[Lease]:
    return [Lease(f"disk:/{i:06d}".ljust(key_len, "x"), LeaseMode.EXCLUSIVE, i + 1) for i in range(count)]


def test_the_codec_uses_the_shared_table() -> None:
    assert LIMITS.frame_size == codec.MAX_FRAME_SIZE
    assert LIMITS.leases == codec.MAX_LEASES
    assert LIMITS.string == codec.MAX_STR_LEN


def test_more_leases_than_the_decoder_reads_are_refused_on_encode() -> None:
    frame = codec.encode(prepare(many(LIMITS.leases)))
    assert len(codec.decode(frame).lock_state.leases) == LIMITS.leases  # type: ignore[attr-defined]
    with pytest.raises(ProtocolError, match=f"{LIMITS.leases + 1} leases.*{LIMITS.leases}"):
        codec.encode(prepare(many(LIMITS.leases + 1)))


def test_a_string_longer_than_the_decoder_reads_is_refused_on_encode() -> None:
    with pytest.raises(ProtocolError, match="sender"):
        codec.encode(prepare(many(1), sender="h" * (LIMITS.string + 1)))
    key = "disk:/" + "k" * LIMITS.string
    with pytest.raises(ProtocolError, match="lock_state"):
        codec.encode(prepare([Lease(key, LeaseMode.SHARED, 1)]))


def test_whatever_encodes_decodes() -> None:
    # Keys at the string limit, as many as fit in one frame.
    leases = many(100, key_len=LIMITS.string)
    frame = codec.encode(prepare(leases))
    assert codec.decode(frame) == prepare(leases)


def test_a_lock_state_too_big_to_send_is_named_before_any_message() -> None:
    small = LockState(tuple(many(10)))
    check_lock_state(small)
    with pytest.raises(ProtocolError, match=r"lock state of \d+ leases .* bytes.*limit"):
        check_lock_state(LockState(tuple(many(200, key_len=6000))))
    with pytest.raises(ProtocolError, match=f"{LIMITS.leases}"):
        check_lock_state(LockState(tuple(many(LIMITS.leases + 1))))
    # What passes the check fits in every message that carries it, even with
    # the largest tokens the transfer may hand out.
    fits = LockState(tuple(many(150, key_len=6000)))
    check_lock_state(fits)
    grown = LockState(tuple(Lease(x.key, x.mode, 2**63 - 1) for x in fits.leases))
    reply = CommitReply(
        migration_id="m" * 32,
        sender="s" * 255,
        seq=2**63 - 1,
        deadline_remaining=1.0,
        outcome=Outcome.COMMITTED,
        reason="r" * 5000,
        lock_state=grown,
    )
    codec.decode(codec.encode(reply))


@pytest.mark.anyio
async def test_prepare_migrate_names_a_lock_state_too_big_for_the_wire() -> None:
    import actorlock
    from actorlock import ObjectType, ResourceType

    from .support import guest_process, unique
    from .test_migration import UUID, peer_config

    space = unique()
    # 300 paths of 3,900 bytes: each under PATH_MAX, together over one frame.
    paths = [f"/d/{i:04d}-" + "p" * 3890 for i in range(300)]
    with guest_process() as guest:
        async with (
            await actorlock.plugin_load("memory", peer_config("a", 1, space)) as a,
            await actorlock.plugin_load("memory", peer_config("b", 2, space)) as b,
        ):
            manager = await a.new_manager(ObjectType.DOMAIN)
            manager.set_parameter("uuid", UUID)
            manager.set_parameter("name", "vm")
            manager.set_parameter("pid", guest.pid)
            for path in paths:
                manager.register_resource(ResourceType.DISK, path)
            await manager.acquire_object()
            with pytest.raises(ProtocolError, match=r"over the .*-byte limit"):
                await manager.prepare_migrate(b.host.peer_endpoint)
            # Nothing was offered and nothing moved: the guest still holds every lease.
            assert b.host.incoming_migration(UUID, finished=True) is None
            held = {r.key for r in await a.host.leases() if r.holders}
            assert held == {f"disk:{p}" for p in paths}

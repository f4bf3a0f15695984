"""The msgpack wire format: exact round trips, and nothing but ProtocolError for bad frames."""

from __future__ import annotations

import contextlib
import math
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actorlock import errors
from actorlock.errors import ActorlockError, ProtocolError
from actorlock.model import DomainIdentity, Lease, LeaseMode, LockState
from actorlock.protocol import (
    Cancel,
    CancelReply,
    Commit,
    CommitReply,
    ErrorReply,
    MigrationCommittedError,
    MigrationLeasesLostError,
    MigrationRefusedError,
    Outcome,
    Prepare,
    PrepareReply,
    Query,
    Refuse,
    Status,
)
from actorlock.protocol._errors import PROTOCOL_ERRORS
from actorlock.transport import codec

names = st.text(min_size=1, max_size=24)
texts = st.text(max_size=40)
uints = st.integers(0, 2**63 - 1)
seconds = st.floats(0, 1e9, allow_nan=False, allow_infinity=False)
leases = st.builds(Lease, names, st.sampled_from(LeaseMode), uints)
lock_states = st.lists(leases, max_size=6).map(lambda items: LockState(tuple(items)))
outcomes = st.sampled_from(Outcome)
envelope: dict[str, Any] = {
    "migration_id": texts,
    "sender": names,
    "seq": uints,
    "deadline_remaining": seconds,
}

messages = st.one_of(
    st.builds(
        Prepare,
        **envelope,
        domain=st.builds(DomainIdentity, names, texts),
        source_host_id=uints,
        lockspace_kind=texts,
        lockspace_id=texts,
        lock_state=lock_states,
    ),
    st.builds(PrepareReply, **envelope, host_id=uints, incarnation=texts),
    st.builds(Refuse, **envelope, code=names, message=texts),
    st.builds(Commit, **envelope, host_id=uints, incarnation=texts),
    st.builds(CommitReply, **envelope, outcome=outcomes, lock_state=lock_states, reason=texts),
    st.builds(Cancel, **envelope, reason=texts),
    st.builds(CancelReply, **envelope, outcome=outcomes, reason=texts),
    st.builds(Query, **envelope),
    st.builds(Status, **envelope, outcome=outcomes, reason=texts),
    st.builds(ErrorReply, **envelope, code=names, message=texts),
)

SAMPLE = Prepare(
    migration_id="mig-1",
    sender="src",
    seq=1,
    deadline_remaining=9.5,
    domain=DomainIdentity("uuid-1", "vm1"),
    source_host_id=1,
    lockspace_kind="memory",
    lockspace_id="ls",
    lock_state=LockState.of([Lease("disk:/a", LeaseMode.EXCLUSIVE, 3)]),
)


def body_of(message: Any) -> dict[str, Any]:
    decoded: dict[str, Any] = msgpack.unpackb(codec.encode(message))
    return decoded


def packed(body: object) -> bytes:
    frame: bytes = msgpack.packb(body, use_bin_type=True)
    return frame


@given(messages)
def test_every_message_round_trips(message: Any) -> None:
    frame = codec.encode(message)
    assert len(frame) <= codec.MAX_FRAME_SIZE
    assert codec.decode(frame) == message


def test_every_message_type_is_covered() -> None:
    assert set(codec.TYPES.values()) == {
        Prepare,
        PrepareReply,
        Refuse,
        Commit,
        CommitReply,
        Cancel,
        CancelReply,
        Query,
        Status,
        ErrorReply,
    }


def test_frame_is_a_tagged_map_with_version() -> None:
    body = body_of(SAMPLE)
    assert body["type"] == "prepare"
    assert body["version"] == 1
    assert body["domain"] == {"uuid": "uuid-1", "name": "vm1"}
    assert body["lock_state"] == [["disk:/a", "exclusive", 3]]


@settings(max_examples=500)
@given(st.binary(max_size=300))
def test_random_bytes_raise_only_protocol_error(frame: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        codec.decode(frame)


json_like = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64 - 1)
    | st.floats()
    | st.text(max_size=10)
    | st.binary(max_size=10),
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(st.text(max_size=8) | st.integers(), children, max_size=5)
    ),
    max_leaves=20,
)


@settings(max_examples=500)
@given(json_like)
def test_random_msgpack_objects_raise_only_protocol_error(obj: object) -> None:
    try:
        frame = msgpack.packb(obj, use_bin_type=True)
    except (ValueError, TypeError, OverflowError):
        return
    with contextlib.suppress(ProtocolError):
        codec.decode(frame)


@settings(max_examples=500)
@given(messages, st.data())
def test_perturbed_messages_raise_only_protocol_error(message: Any, data: st.DataObject) -> None:
    body = body_of(message)
    key = data.draw(st.sampled_from(sorted(body)))
    how = data.draw(st.sampled_from(["drop", "retype", "add"]))
    if how == "drop":
        del body[key]
    elif how == "retype":
        body[key] = data.draw(json_like)
    else:
        body[data.draw(st.text(min_size=1, max_size=8).filter(lambda k: k not in body))] = 1
    try:
        frame = packed(body)
    except (ValueError, TypeError, OverflowError):
        return
    try:
        codec.decode(frame)
    except ProtocolError:
        return
    assert how == "retype"  # only a retyped value that happens to be valid can decode


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"type": "launch"}, "unknown message type"),
        ({"type": 7}, "unknown message type"),
        ({"version": 2}, "version"),
        ({"version": True}, "version"),
        ({"version": 1.0}, "version"),
        ({"seq": -1}, "'seq'"),
        ({"seq": True}, "'seq'"),
        ({"seq": 2**64 - 1}, "'seq'"),
        ({"deadline_remaining": math.nan}, "'deadline_remaining'"),
        ({"deadline_remaining": math.inf}, "'deadline_remaining'"),
        ({"deadline_remaining": -1.0}, "'deadline_remaining'"),
        ({"sender": ""}, "'sender'"),
        ({"domain": {"uuid": "u", "name": "n", "id": 3}}, "'domain'"),
        ({"domain": {"uuid": "", "name": "n"}}, "'domain'"),
        ({"lock_state": [["k", "sideways", 1]]}, "'lock_state'"),
        ({"lock_state": [["k", "shared"]]}, "'lock_state'"),
        ({"lock_state": {"k": 1}}, "'lock_state'"),
        ({"surprise": 1}, "unexpected field"),
    ],
)
def test_bad_fields_are_named(change: dict[str, object], words: str) -> None:
    body = body_of(SAMPLE)
    body.update(change)
    with pytest.raises(ProtocolError, match=words):
        codec.decode(packed(body))


def test_missing_field_is_named() -> None:
    body = body_of(SAMPLE)
    del body["lockspace_id"]
    with pytest.raises(ProtocolError, match=r"missing field.*lockspace_id"):
        codec.decode(packed(body))


@pytest.mark.parametrize(
    ("frame", "words"),
    [
        (b"", "truncated"),
        (b"\x92\x01\x02", "must be a map"),
        (packed({"type": "query"}) + b"\xc0", "trailing"),
        (packed(msgpack.ExtType(3, b"xyz")), "malformed"),
        (b"\xc7\x00\x05", "malformed"),  # an empty extension reaches the hook
        (packed(msgpack.Timestamp(1, 0)), "malformed"),
        (packed({1: 2}), "malformed"),
        (packed({b"": 1}), "strings"),
        (packed({"type": b"\x00" * 5}), "malformed"),
        (packed({"type": "x" * 10_000}), "malformed"),
        (packed({"type": list(range(5000))}), "malformed"),
        (packed({str(i): i for i in range(40)}), "malformed"),
        (b"\x91" * 100_000, "malformed"),
        (b"\xd9\x01\xff", "malformed"),  # invalid UTF-8
        (b"\x00" * (codec.MAX_FRAME_SIZE + 1), "exceeds"),
    ],
)
def test_malformed_frames(frame: bytes, words: str) -> None:
    with pytest.raises(ProtocolError, match=words):
        codec.decode(frame)


def test_decode_rejects_non_bytes() -> None:
    with pytest.raises(ProtocolError):
        codec.decode("text")  # type: ignore[arg-type]


def test_encode_refuses_what_the_peer_would_refuse() -> None:
    from attrs import evolve

    with pytest.raises(ProtocolError, match="deadline_remaining"):
        codec.encode(evolve(SAMPLE, deadline_remaining=math.nan))
    with pytest.raises(ProtocolError, match="seq"):
        codec.encode(evolve(SAMPLE, seq=-3))
    with pytest.raises(ProtocolError, match="not a protocol message"):
        codec.encode(object())  # type: ignore[arg-type]
    huge = LockState.of(Lease(f"disk:/{i:04d}/" + "x" * 300, LeaseMode.EXCLUSIVE, i) for i in range(4000))
    with pytest.raises(ProtocolError, match="exceeds"):
        codec.encode(evolve(SAMPLE, lock_state=huge))


def test_long_reasons_are_cut_not_refused() -> None:
    long = Cancel(migration_id="m", sender="s", seq=1, deadline_remaining=0.0, reason="r" * 50_000)
    decoded = codec.decode(codec.encode(long))
    assert isinstance(decoded, Cancel)
    assert len(decoded.reason) == codec.MAX_TEXT


def _all_errors() -> list[type[ActorlockError]]:
    found: list[type[ActorlockError]] = []
    todo: list[type[ActorlockError]] = [ActorlockError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return found


@pytest.mark.parametrize("cls", _all_errors(), ids=lambda c: c.code)
def test_errors_travel_as_code_and_message(cls: type[ActorlockError]) -> None:
    original = cls.__new__(cls)
    Exception.__init__(original, f"something about {cls.code}")
    code, text = codec.error_to_wire(original)
    assert code == cls.code
    assert "." not in code  # a code, never a class path
    rebuilt = codec.error_from_wire(code, text)
    assert type(rebuilt) is cls
    assert str(rebuilt) == text


def test_protocol_error_codes_are_unique_and_distinct_from_core_ones() -> None:
    codes = [cls.code for cls in PROTOCOL_ERRORS if issubclass(cls, ActorlockError)]
    assert len(codes) == len(set(codes))
    core = {cls.code for cls in _all_errors() if cls.__module__ == errors.__name__}
    assert not core & set(codes)


def test_rebuilt_errors_have_their_attributes() -> None:
    refused = codec.error_from_wire(MigrationRefusedError.code, "no")
    assert isinstance(refused, MigrationRefusedError)
    assert refused.remote_code == ""
    lost = codec.error_from_wire(MigrationLeasesLostError.code, "gone")
    assert isinstance(lost, MigrationLeasesLostError)
    assert lost.resources == ()
    unknown = codec.error_from_wire("from-the-future", "??")
    assert type(unknown) is ActorlockError
    assert isinstance(codec.error_from_wire(MigrationCommittedError.code, "x"), MigrationCommittedError)


def test_error_reply_for_salvages_what_it_can() -> None:
    body = body_of(SAMPLE)
    body["version"] = 9
    reply = codec.error_reply_for(packed(body), ProtocolError("bad version"), sender="dst")
    assert (reply.migration_id, reply.seq, reply.code) == ("mig-1", 1, "protocol")
    junk = codec.error_reply_for(b"\xc1", ProtocolError("junk"), sender="dst")
    assert (junk.migration_id, junk.seq) == ("", 0)
    assert codec.decode(codec.encode(junk)) == junk

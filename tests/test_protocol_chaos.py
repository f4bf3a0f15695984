"""Random schedules against the migration protocol: loss, duplication, delay, reordering, crashes.

Whatever hypothesis does to the network, the backend and the hosts, the
lockspace never has two owners, a running guest always owns its leases, a
cancel leaves the source owning everything, and once things settle each
live side agrees with the lockspace.
"""

from __future__ import annotations

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from actorlock._verify.migration_world import DESTINATION, SOURCE
from actorlock._verify.pair import Fault, Simulation
from actorlock.protocol import DestinationState, Outcome, Side, SourceState

ACTIONS = (
    "deliver",
    "deliver",
    "deliver",
    "drop",
    "duplicate",
    "advance",
    "complete-op",
    "call-source",
    "call-destination",
    "crash",
)


def _call(sim: Simulation, role: str, decision: str) -> None:
    host = sim.hosts[role]
    if host.crashed or host.called or host.machine is None:
        return
    if role == SOURCE and sim.source.state in (SourceState.IDLE, SourceState.PREPARING):
        return  # prepare_migrate has not returned yet: libvirt would not confirm
    dest = sim.dest
    early = dest is not None and dest.state in (DestinationState.IDLE, DestinationState.VERIFYING)
    if role == DESTINATION and early and decision == "commit":
        return  # the incoming guest cannot be ready before PREPARE was accepted
    if decision == "commit":
        sim.commit(role)
    else:
        sim.cancel(role)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_schedules_keep_one_owner_and_agree(data: st.DataObject) -> None:
    sim = Simulation(defer_backend=data.draw(st.booleans(), label="defer_backend"))
    sim.faults = data.draw(st.lists(st.sampled_from(list(Fault)), max_size=6), label="backend faults")
    decisions = {
        SOURCE: data.draw(st.sampled_from(["commit", "cancel", "commit"]), label="source decides"),
        DESTINATION: data.draw(st.sampled_from(["commit", "cancel", "commit"]), label="destination decides"),
    }
    crashed_once = False
    sim.start()
    sim.check_invariants()
    for _ in range(data.draw(st.integers(0, 60), label="steps")):
        action = data.draw(st.sampled_from(ACTIONS))
        if action in ("deliver", "drop", "duplicate") and sim.net:
            index = data.draw(st.integers(0, len(sim.net) - 1))
            getattr(sim, action)(index)
        elif action == "advance":
            sim.advance()
        elif action == "complete-op" and sim.pending_ops:
            sim.complete_op(data.draw(st.integers(0, len(sim.pending_ops) - 1)))
        elif action == "call-source":
            _call(sim, SOURCE, decisions[SOURCE])
        elif action == "call-destination":
            _call(sim, DESTINATION, decisions[DESTINATION])
        elif action == "crash" and not crashed_once:
            crashed_once = True
            role = data.draw(st.sampled_from([SOURCE, DESTINATION]))
            sim.crash(role, transfer_landed=data.draw(st.booleans()))
        sim.check_invariants()

    # Then a reliable network, and every live caller that has not spoken does.
    sim.faults.clear()
    for _ in range(1_000):
        for role in (SOURCE, DESTINATION):
            _call(sim, role, decisions[role])
        if sim.net:
            sim.deliver(0)
        elif sim.pending_ops:
            sim.complete_op(0)
        elif not sim.advance():
            break
        sim.check_invariants()
    sim.settle()
    sim.check_invariants()
    sim.check_agreement()
    if not sim.hosts[SOURCE].crashed and sim.source.outcome is Outcome.CANCELLED:
        assert sim.owner() is Side.SOURCE
    dest = sim.dest
    event(f"source {sim.source.state.value}{' (crashed)' if sim.hosts[SOURCE].crashed else ''}")
    event(f"destination {dest.state.value if dest else 'never prepared'}")
    event(f"owner {sim.owner().value}")

"""A worker cut off behind a broker partition is failed over and gets the leader's obituary;
when the partition heals it is alive, and puts its own birth back over the obituary. The leader
must not fight it (each obituary it put back was answered by the same birth again: hundreds a
second until the worker counted as back), nor take a late copy of its own obituary for a
death (that failed the worker over a second time)."""

from __future__ import annotations

from unit.test_coordinator_core import Sim, _obituaries, events, sim

from coordinator.events import BrokerHeard, WorkerBirth, WorkerOffline
from faillite import messages

__all__ = ["sim"]


def _cut_off_and_obituaried(sim: Sim) -> tuple[str, messages.WorkerStatus, float]:
    w = sim.route("a1").worker
    m = sim.core.membership.get(w)
    assert m is not None
    birth_ts = m.birth_ts
    sim.workers[w].beating = False  # its heartbeats stay on the other side of the cut
    out = sim.run_until(_obituaries, sim.core._obituary_after_s + 3.0, "the obituary")
    (obit,) = _obituaries(out)
    sim.feed(WorkerOffline(sim.now, sim.ts, obit.status))  # our own publish comes back
    return w, obit.status, birth_ts


def _birth(sim: Sim, w: str, ts: float) -> messages.WorkerStatus:
    return messages.WorkerStatus(
        worker=w, incarnation=sim.workers[w].incarnation, state="online", ts=ts
    )


def test_a_healed_worker_putting_its_birth_back_is_not_fought(sim: Sim) -> None:
    w, obit, birth_ts = _cut_off_and_obituaried(sim)
    sim.workers[w].beating = True  # the heal: its heartbeats reach us again
    sim.run(0.25)
    out = sim.feed(WorkerBirth(sim.now, sim.ts, _birth(sim, w, birth_ts)))
    assert _obituaries(out) == []  # no obituary back over a worker we hear
    out = sim.run_until(lambda o: events(o, "worker_recovered"), 5.0, "the worker back")
    assert _obituaries(out) == []
    # A copy of the obituary still on its way (the other broker's) is no death.
    out = sim.feed(WorkerOffline(sim.now, sim.ts, obit))
    assert events(out, "failure_detected") == [] and events(out, "failover") == []
    assert [e.detail["reason"] for e in events(out, "stale_offline_ignored")] == ["silent"]
    assert events(sim.run(1.0), "failure_detected") == []


def test_a_healed_worker_that_falls_silent_again_gets_a_new_obituary(sim: Sim) -> None:
    w, _obit, birth_ts = _cut_off_and_obituaried(sim)
    sim.workers[w].beating = True
    sim.run(0.25)
    sim.feed(WorkerBirth(sim.now, sim.ts, _birth(sim, w, birth_ts)))
    sim.workers[w].beating = False  # gone again before it counted as back
    out = sim.run(sim.core._obituary_after_s + 1.0)
    (again,) = _obituaries(out)
    assert (again.status.worker, again.status.state, again.status.reason) == (
        w,
        "offline",
        "silent",
    )


def test_the_old_birth_of_a_silent_worker_still_gets_its_obituary_back(sim: Sim) -> None:
    """Nothing heard since it failed: a replayed birth is a broker's copy, put right."""
    w, obit, birth_ts = _cut_off_and_obituaried(sim)
    out = sim.feed(WorkerBirth(sim.now, sim.ts, _birth(sim, w, birth_ts)))
    assert [d.status for d in _obituaries(out)] == [obit]


def test_the_fight_over_a_status_is_bounded_while_the_worker_is_not_heard(sim: Sim) -> None:
    """Its births come back (the bridge is up) before its heartbeats do: its obituary goes
    back at most once a second, and once it is heard, not at all."""
    w, obit, birth_ts = _cut_off_and_obituaried(sim)
    put_back = []
    for _ in range(50):  # it answers each obituary within 10 ms
        put_back += _obituaries(sim.feed(WorkerBirth(sim.now, sim.ts, _birth(sim, w, birth_ts))))
        sim.run(0.01)
    assert [d.status for d in put_back] == [obit]
    out = sim.run(1.0)  # still not heard a second later: it is put right once more
    assert [(d.status.state, d.status.reason) for d in _obituaries(out)] == [("offline", "silent")]
    sim.workers[w].beating = True
    sim.run(0.25)
    out = sim.feed(WorkerBirth(sim.now, sim.ts, _birth(sim, w, birth_ts)))
    out += sim.run_until(lambda o: events(o, "worker_recovered"), 5.0, "the worker back")
    assert _obituaries(out) == []


def test_another_leaders_obituary_of_a_worker_we_hear_is_no_death(sim: Sim) -> None:
    """Both sides of a cut bridge led: the far side's leader judged our worker silent. After the
    heal its obituary reaches us while we hear the worker: a stale judgement, not a death."""
    w = sim.route("a1").worker
    m = sim.core.membership.get(w)
    assert m is not None
    sim.run(0.5)
    obit = messages.WorkerStatus(
        worker=w, incarnation=m.incarnation, state="offline", ts=sim.ts, reason="silent"
    )
    out = sim.feed(WorkerOffline(sim.now, sim.ts, obit))
    assert events(out, "failure_detected") == [] and events(out, "failover") == []
    assert [e.detail["reason"] for e in events(out, "stale_offline_ignored")] == ["silent"]
    # A last-will is the worker's own word: still a death.
    will = messages.WorkerStatus(
        worker=w, incarnation=m.incarnation, state="offline", ts=m.birth_ts, reason="lost"
    )
    sim.feed(WorkerOffline(sim.now, sim.ts, will))
    assert events(sim.feed(BrokerHeard(sim.now, sim.ts)), "failure_detected")  # the broker lived on

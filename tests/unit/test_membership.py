"""Membership transitions: births, last-wills of old incarnations, silence, stalls, recovery."""

from __future__ import annotations

from dataclasses import replace

from coordinator.detectors import DetectorConfig
from coordinator.membership import RECOVERY_HEARTBEATS, Membership
from faillite import messages
from faillite.presence import will_seal

CFG = DetectorConfig.for_interval(0.1)


def _status(
    inc: str, state: str = "online", reason: str = "", ts: float = 0.0
) -> messages.WorkerStatus:
    return messages.WorkerStatus(
        worker="w1",
        incarnation=inc,
        state=state,  # type: ignore[arg-type]
        ts=ts,
        reason=reason,
    )


def _hb(
    inc: str, seq: int, processed: int = 0, received: int = 0, depth: int = 0
) -> messages.Heartbeat:
    return messages.Heartbeat(
        worker="w1",
        incarnation=inc,
        seq=seq,
        ts=0.0,
        frames_received=received,
        frames_processed=processed,
        queue_depth=depth,
    )


def test_old_incarnation_last_will_never_kills_the_new_one() -> None:
    m = Membership(CFG)
    assert m.on_status(_status("a"), 0.0).kind == "joined"  # type: ignore[union-attr]
    assert m.on_status(_status("b"), 1.0).kind == "joined"  # type: ignore[union-attr]
    late = m.on_status(_status("a", "offline", "lost"), 1.1)
    assert late is not None and late.kind == "stale"
    assert m.alive() == {"w1"} and m.get("w1").incarnation == "b"  # type: ignore[union-attr]


def test_last_will_and_graceful_are_immediate_failures() -> None:
    m = Membership(CFG)
    m.on_status(_status("a"), 0.0)
    t = m.on_status(_status("a", "offline", "lost"), 0.5)
    assert t is not None and (t.kind, t.cause) == ("failed", "last_will")
    assert m.alive() == set()
    m.on_status(_status("b"), 1.0)
    t = m.on_status(_status("b", "offline", "graceful"), 2.0)
    assert t is not None and t.cause == "graceful"


def test_silence_detected_by_tick_then_recovery_on_steady_heartbeats() -> None:
    m = Membership(CFG)
    m.on_status(_status("a"), 0.0)
    t = 0.0
    for seq in range(1, 30):
        t = seq * 0.1
        m.on_heartbeat(_hb("a", seq), t)
    assert m.tick(t + 0.1) == []
    now = t
    fails = []
    while not fails:
        now += 0.01
        fails = m.tick(now)
    assert fails[0].cause == "heartbeat_silence" and 0.4 <= now - t <= 0.5
    # Heartbeats resume (SIGCONT): recovered after a steady run, not before.
    seq = 30
    kinds = []
    for i in range(RECOVERY_HEARTBEATS):
        seq += 1
        tr = m.on_heartbeat(_hb("a", seq), now + 0.1 * (i + 1))
        kinds.append(tr.kind if tr else None)
    assert kinds[-1] == "recovered" and kinds.count("recovered") == 1
    assert m.alive() == {"w1"}


def test_reconnect_after_premature_last_will_recovers() -> None:
    m = Membership(CFG)
    m.on_status(_status("a", ts=100.0), 0.0)
    m.on_status(_status("a", "offline", "lost", ts=100.0), 1.0)  # a will carries its birth's ts
    t = m.on_status(_status("a", ts=102.0), 2.0)  # a new connection: a new birth
    assert t is not None and (t.kind, t.cause) == ("recovered", "reconnected")


def test_the_last_will_of_an_earlier_connection_kills_nobody() -> None:
    # Connected to broker A (birth 100), then to B (birth 105); A comes back and hands over
    # the will it kept of the first connection: history, not a death.
    m = Membership(CFG)
    m.on_status(_status("a", ts=100.0), 0.0)
    m.on_status(_status("a", ts=105.0), 1.0)
    t = m.on_status(_status("a", "offline", "lost", ts=100.0), 2.0)
    assert t is not None and t.kind == "stale" and m.alive() == {"w1"}
    t = m.on_status(_status("a", "offline", "lost", ts=105.0), 3.0)  # this connection's will
    assert t is not None and (t.kind, t.cause) == ("failed", "last_will")


def test_a_replayed_birth_revives_nobody() -> None:
    # A broker that comes back with the births it stored, bridged over to the survivor: the
    # dead incarnation's own birth, and an older incarnation's, change nobody's state.
    m = Membership(CFG)
    m.on_status(_status("a", ts=100.0), 0.0)
    m.on_status(_status("a", "offline", "silent", ts=105.0), 1.0)  # the obituary
    t = m.on_status(_status("a", ts=100.0), 2.0)
    assert t is not None and (t.kind, t.cause) == ("replayed", "birth_replayed")
    assert m.alive() == set() and m.get("w1").status.state == "offline"  # type: ignore[union-attr]
    assert m.on_status(_status("b", ts=110.0), 3.0).kind == "joined"  # type: ignore[union-attr]
    t = m.on_status(_status("a", ts=100.0), 4.0)
    assert t is not None and (t.kind, t.cause) == ("replayed", "replaced_incarnation_replayed")
    assert m.get("w1").incarnation == "b" and m.alive() == {"w1"}  # type: ignore[union-attr]
    # Its own birth again (the coordinator reconnected and got it retained): nothing changes.
    t = m.on_status(_status("b", ts=110.0), 5.0)
    assert t is not None and t.kind == "replayed" and m.alive() == {"w1"}


def test_stall_with_heartbeats_is_a_failure() -> None:
    m = Membership(CFG)
    m.on_status(_status("a"), 0.0)
    out = []
    for seq in range(1, 40):
        m.on_heartbeat(_hb("a", seq, processed=5, received=5 + seq, depth=2), seq * 0.1)
        out += m.tick(seq * 0.1 + 0.01)
    assert [t.cause for t in out] == ["stalled"]


def test_duplicate_and_foreign_heartbeats_ignored() -> None:
    m = Membership(CFG)
    m.on_status(_status("a"), 0.0)
    m.on_heartbeat(_hb("a", 5), 0.1)
    m.on_heartbeat(_hb("a", 5), 0.2)
    m.on_heartbeat(_hb("zzz", 6), 0.3)
    member = m.get("w1")
    assert member is not None and member.last_heartbeat is not None
    assert member.last_heartbeat.seq == 5


def test_detectors_follow_each_workers_interval_and_the_given_knobs() -> None:
    m = Membership(cfg_for=lambda i: DetectorConfig.for_interval(i, phi_threshold=3.0))
    st = messages.WorkerStatus(
        worker="w1", incarnation="a", state="online", ts=0.0, heartbeat_interval_s=0.5
    )
    m.on_status(st, 0.0)
    member = m.get("w1")
    assert member is not None
    assert member.silence.cfg.min_silence_s == 2.0  # 4 intervals of a WiFi worker
    assert member.silence.cfg.phi_threshold == 3.0


def test_a_forged_seq_far_ahead_cannot_silence_the_real_heartbeats() -> None:
    """A heartbeat with seq 2^53-1 once made every later real one look old, so the worker
    was judged silent while it was beating. A jump past the window is ignored instead."""
    m = Membership(CFG)
    m.on_status(_status("a"), 0.0)
    m.on_heartbeat(_hb("a", 1), 0.1)
    m.on_heartbeat(_hb("a", messages.MAX_COUNT), 0.2)
    t = 0.2
    for seq in range(2, 40):  # the real worker goes on counting, 3.8 s of heartbeats
        t += 0.1
        m.on_heartbeat(_hb("a", seq), t)
        assert m.tick(t) == []
    member = m.get("w1")
    assert member is not None and member.last_heartbeat is not None
    assert member.last_heartbeat.seq == 39 and member.seq_jumps_ignored == 1
    assert m.alive() == {"w1"}


def test_a_worker_back_from_a_partition_is_not_judged_stalled_on_its_old_queue() -> None:
    """Chaos soak: a worker reconnected after a partition was judged stalled 9 ms later, on
    frames that had queued before it failed."""
    m = Membership(CFG)
    m.on_status(_status("a", ts=1.0), 0.0)
    t = 0.0
    for seq in range(1, 20):  # frames pile up, nothing processed: the stall clock runs
        t = seq * 0.1
        m.on_heartbeat(_hb("a", seq, received=seq, depth=3), t)
    m.on_status(_status("a", "offline", "lost", ts=1.0), t)  # the link is cut: last-will
    t += 3.0
    tr = m.on_status(_status("a", ts=5.0), t)  # same incarnation, a new connection
    assert tr is not None and tr.kind == "recovered"
    assert m.tick(t + 0.01) == []
    m.on_heartbeat(_hb("a", 20, processed=25, received=25), t + 0.1)
    assert m.tick(t + 0.2) == [] and m.alive() == {"w1"}


# -- sealed wills: an offline must unseal the birth it ends ------------------------------------


def _sealed(inc: str, key: str, ts: float = 0.0) -> messages.WorkerStatus:
    return replace(_status(inc, ts=ts), will_seal=will_seal(key))


def test_an_offline_that_does_not_unseal_the_birth_is_forged() -> None:
    """A coordinator account may write a worker's status (obituaries): its offline in the
    worker's name is refused, whatever its reason; the worker's own will still fails it."""
    key = "00" * 15 + "2a"
    m = Membership(CFG)
    m.on_status(_sealed("a", key), 0.0)
    for forged in (
        _status("a", "offline", "lost"),  # no key at all
        replace(_status("a", "offline", "lost"), will_key="11" * 16),  # a guess
        replace(_status("a", "offline", "graceful"), will_key="zz"),  # not even hex
    ):
        t = m.on_status(forged, 0.5)
        assert t is not None and (t.kind, t.cause) == ("forged", forged.reason)
        assert m.alive() == {"w1"}
    t = m.on_status(replace(_status("a", "offline", "lost"), will_key=key), 0.6)
    assert t is not None and (t.kind, t.cause) == ("failed", "last_will")


def test_a_reconnect_reseals_and_the_old_connections_key_no_longer_unseals() -> None:
    old, new = "01" * 16, "02" * 16
    m = Membership(CFG)
    m.on_status(_sealed("a", old, ts=1.0), 0.0)
    m.on_status(_sealed("a", new, ts=2.0), 1.0)  # the same process, a new connection
    # The old key with the new birth's ts: not the old connection's will (that is stale by
    # its ts), and not the new one's: forged.
    t = m.on_status(replace(_status("a", "offline", "lost", ts=2.0), will_key=old), 1.5)
    assert t is not None and t.kind == "forged"
    t = m.on_status(replace(_status("a", "offline", "lost", ts=2.0), will_key=new), 1.6)
    assert t is not None and t.kind == "failed"


def test_an_unsealed_birth_keeps_the_old_rule() -> None:
    """A worker of an earlier version seals nothing: its will is believed as before."""
    m = Membership(CFG)
    m.on_status(_status("a"), 0.0)
    t = m.on_status(_status("a", "offline", "lost"), 0.5)
    assert t is not None and t.kind == "failed"


def test_a_core_verdict_is_not_lifted_by_a_birth_again_only_by_probation() -> None:
    """A thief with the worker's secret republishes its birth (a newer ts): for a last-will
    that is a reconnect, but a core verdict (results missing, gray) is not about the link."""
    m = Membership(CFG)
    m.on_status(_status("a", ts=1.0), 0.0)
    for seq in range(1, 10):
        m.on_heartbeat(_hb("a", seq), seq * 0.1)
    t = m.condemn("w1", "results_missing", 1.0)
    assert t is not None and (t.kind, t.cause) == ("failed", "results_missing")
    assert m.on_status(_status("a", ts=2.0), 1.5) is None
    assert m.alive() == set()
    for seq in range(10, 10 + 2 * RECOVERY_HEARTBEATS):
        assert m.on_heartbeat(_hb("a", seq), seq * 0.1) is None  # beating lifts nothing
    back = m.absolve("w1", "probation_over", 5.0)
    assert back is not None and (back.kind, back.cause) == ("recovered", "probation_over")


def test_a_worker_unwell_when_its_probation_ends_is_brought_back_by_its_heartbeats() -> None:
    m = Membership(CFG)
    m.on_status(_status("a"), 0.0)
    m.on_heartbeat(_hb("a", 1), 0.1)
    m.condemn("w1", "slo_gray", 0.2)
    assert m.absolve("w1", "probation_over", 30.0) is None  # silent since 0.1 s
    assert m.get("w1").cause == "heartbeat_silence"  # type: ignore[union-attr]
    kinds = [m.on_heartbeat(_hb("a", 2 + i), 30.0 + 0.1 * i) for i in range(RECOVERY_HEARTBEATS)]
    assert kinds[-1] is not None and kinds[-1].kind == "recovered"


def test_a_new_incarnation_of_a_worker_we_hear_must_reveal_its_handover_key() -> None:
    """A thief with the worker's secret publishes a birth of a new incarnation: refused while
    the live one is heard, unless it reveals the live one's handover key (--replace on its
    board); once the live one is silent, a restart needs none."""
    key = "cd" * 16
    m = Membership(CFG)
    m.on_status(replace(_status("a"), handover_seal=will_seal(key)), 0.0)
    m.on_heartbeat(_hb("a", 1), 0.1)
    t = m.on_status(_status("thief", ts=1.0), 0.2)
    assert t is not None and (t.kind, t.cause) == ("forged", "birth_without_handover")
    assert m.get("w1").incarnation == "a"  # type: ignore[union-attr]
    t = m.on_status(replace(_status("b", ts=2.0), handover_key=key), 0.3)
    assert t is not None and t.kind == "joined" and m.get("w1").incarnation == "b"  # type: ignore[union-attr]
    m.on_status(replace(_status("c", ts=3.0), handover_seal=will_seal(key)), 0.4)  # silent since
    t = m.on_status(_status("d", ts=4.0), 5.0)
    assert t is not None and t.kind == "joined"

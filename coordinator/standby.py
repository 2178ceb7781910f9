"""A standby coordinator: watches the leader's retained status and takes over when it is gone.

The leader's status is retained with a last-will, so a crashed leader reads ``offline`` at
once and a frozen one once the broker's keepalive expires. A standby of rank ``r`` waits until
the leader has been gone ``r * takeover_delay_s`` (ranks keep two standbys from racing), then
the caller starts a full coordinator: it takes the next term (workers fence the old leader's
assignments by term), inherits the retained placement and keeps apps where they are.

A late last-will of an older leader (lower term than the newest leader seen) is not a vacancy.
The standby has no last-will of its own: it must never overwrite the leader's status.
"""

from __future__ import annotations

import threading
import time
import uuid

import paho.mqtt.client as paho

from faillite import messages
from faillite.badinput import BadInput
from faillite.config import MeshConfig
from faillite.log import get_logger
from faillite.mqtt import MeshClient
from faillite.topics import Role, Topics

log = get_logger("standby")
STARTUP_GRACE_S = 2.0  # a leader's term acquisition waits up to 1.2 s for retained state


class StandbyWatch:
    def __init__(self, mesh: MeshConfig, coordinator_id: str, rank: int = 1) -> None:
        self.mesh = mesh
        self.id = coordinator_id
        self.rank = max(1, rank)
        self.delay_s = mesh.coordinator.takeover_delay_s * self.rank
        self.topics = Topics(mesh.mesh)
        self.bad = BadInput()
        self._cond = threading.Condition()
        self._leader: messages.CoordinatorStatus | None = None  # newest leader seen
        self._vacant_since: float | None = None
        self.client = MeshClient(
            f"faillite-{mesh.mesh}-standby-{coordinator_id}-{uuid.uuid4().hex[:6]}",
            mesh.broker,
            role=Role.COORDINATOR,
        )
        self.client.subscribe(self.topics.coordinator_status, self._on_status)
        self.client.on_connect(self._on_connect)
        self.client.on_disconnect(self._on_disconnect)
        self.grace_s = max(STARTUP_GRACE_S, mesh.coordinator.reconnect_grace_s) + self.delay_s

    def _on_connect(self) -> None:
        # After any (re)connect, vacant or not is judged afresh, after a grace: a leader
        # starting beside us must claim its term, and after a broker restart the leader must
        # reconnect (its last-will may have fired as the broker went down). Nothing retained
        # then (no leader ever, or a broker that lost it) reads as vacant.
        with self._cond:
            self._vacant_since = time.monotonic() + self.grace_s

    def _on_disconnect(self) -> None:
        with self._cond:
            self._vacant_since = None  # we cannot tell while we cannot see

    @property
    def highest_term(self) -> int:
        """The newest leader's term we saw: a successor must take a higher one, whatever the
        broker still retains."""
        return self._leader.term if self._leader is not None else 0

    def _on_status(self, msg: paho.MQTTMessage) -> None:
        now = time.monotonic()
        with self._cond:
            if not msg.payload:
                self._vacant_since = self._vacant_since or now
                self._cond.notify_all()
                return
            st = self.bad.decode(messages.CoordinatorStatus, msg)
            if st is None:
                return
            newest = self._leader
            if st.state == "leader":
                if newest is None or st.term >= newest.term:
                    self._leader = st
                    self._vacant_since = None
            elif newest is None or (st.incarnation == newest.incarnation) or st.term > newest.term:
                # The newest leader (or one we never saw lead) is gone.
                if self._vacant_since is None:
                    log.warning(
                        "leader_gone",
                        leader=st.coordinator,
                        leader_incarnation=st.incarnation,
                        term=st.term,
                        takeover_in_s=self.delay_s,
                    )
                self._vacant_since = max(self._vacant_since or now, now)
            else:
                log.info("stale_leader_offline_ignored", stale=st.incarnation, term=st.term)
            self._cond.notify_all()

    @property
    def leader(self) -> messages.CoordinatorStatus | None:
        return self._leader

    def wait_for_vacancy(self, stop: threading.Event) -> float | None:
        """Block until the leadership has been vacant ``delay_s``; returns the seconds since
        the vacancy was seen, or None when ``stop`` was set first."""
        self.client.start()
        log.info("standby", coordinator=self.id, rank=self.rank, takeover_delay_s=self.delay_s)
        try:
            with self._cond:
                while not stop.is_set():
                    since = self._vacant_since
                    now = time.monotonic()
                    if since is not None and now - since >= self.delay_s and self.client.connected:
                        return now - since
                    self._cond.wait(0.05)
                return None
        finally:
            self.client.stop()

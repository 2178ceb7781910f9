"""The uplink's policy: a bounded queue that drops the oldest with a count and coalesces
retained state, the down allow-list, its config and its broker account's ACL."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from broker._acl import AccessPolicy, Operation
from faillite.config import BrokerConfig, ConfigError, load_mesh_config
from faillite.identity import AclScope, Identity, identity_acl
from faillite.topics import Access, Role
from faillite.uplink_policy import (
    DownGate,
    FilterError,
    Outbound,
    RearQueue,
    check_filter,
    down_problem,
    filters_overlap,
    is_retained,
    kind_of,
    up_topic,
)


def _msg(topic: str, payload: bytes = b"x" * 10, *, retain: bool = False, kind: str = "results"):
    return Outbound(topic=topic, payload=payload, retain=retain, kind=kind, queued_at=0.0)


def _drain(q: RearQueue) -> list[Outbound]:
    out = []
    while (m := q.pop()) is not None:
        out.append(m)
    return out


def test_queue_is_fifo_within_its_bound() -> None:
    q = RearQueue(10, 10_000)
    for i in range(5):
        q.put(_msg(f"r/a/{i}"))
    assert [m.topic for m in _drain(q)] == [f"r/a/{i}" for i in range(5)]
    assert q.stats.dropped == 0 and len(q) == 0 and q.bytes == 0


def test_queue_drops_oldest_first_with_a_count_per_kind() -> None:
    q = RearQueue(3, 10_000)
    for i in range(5):
        q.put(_msg(f"r/res/{i}", kind="results" if i < 4 else "events"))
    assert [m.topic for m in _drain(q)] == ["r/res/2", "r/res/3", "r/res/4"]
    assert q.stats.dropped == 2
    assert q.stats.dropped_by_kind == {"results": 2}
    assert q.stats.high_water == 3
    assert q.stats.accepted == 5


def test_queue_byte_bound_drops_oldest() -> None:
    q = RearQueue(1000, 100)  # each message: 5-char topic + 40 bytes = 45
    for i in range(4):
        q.put(_msg(f"r/t/{i}", b"y" * 40))
    assert q.bytes <= 100
    assert [m.topic for m in _drain(q)] == ["r/t/2", "r/t/3"]
    assert q.stats.dropped == 2


def test_a_message_larger_than_the_whole_queue_is_dropped_and_counted() -> None:
    q = RearQueue(10, 50)
    q.put(_msg("r/ok", b"a"))
    q.put(_msg("r/huge", b"z" * 100, kind="events"))
    assert [m.topic for m in _drain(q)] == ["r/ok"]
    assert q.stats.dropped_by_kind == {"events": 1}


def test_retained_state_coalesces_latest_wins_in_order() -> None:
    q = RearQueue(100, 10_000)
    q.put(_msg("r/workers/w1/status", b"online-1", retain=True, kind="statuses"))
    q.put(_msg("r/res/1"))
    q.put(_msg("r/workers/w1/status", b"offline", retain=True, kind="statuses"))
    q.put(_msg("r/workers/w1/status", b"online-2", retain=True, kind="statuses"))
    out = _drain(q)
    # The result was queued before the status's latest value: it goes first.
    assert [(m.topic, m.payload) for m in out] == [
        ("r/res/1", b"x" * 10),
        ("r/workers/w1/status", b"online-2"),
    ]
    assert q.stats.coalesced == 2 and q.stats.dropped == 0
    assert all(m.retain for m in out[1:])


def test_bound_drops_streaming_messages_before_retained_state() -> None:
    q = RearQueue(3, 10_000)
    q.put(_msg("r/placement", b"plan", retain=True, kind="placement"))
    for i in range(5):
        q.put(_msg(f"r/res/{i}"))
    topics = [m.topic for m in _drain(q)]
    assert topics == ["r/placement", "r/res/3", "r/res/4"]
    assert q.stats.dropped_by_kind == {"results": 3}


def test_retained_state_alone_over_the_bound_drops_its_oldest() -> None:
    q = RearQueue(2, 10_000)
    for w in ("w1", "w2", "w3"):
        q.put(_msg(f"r/workers/{w}/status", retain=True, kind="statuses"))
    assert [m.topic for m in _drain(q)] == ["r/workers/w2/status", "r/workers/w3/status"]
    assert q.stats.dropped_by_kind == {"statuses": 1}


def test_oldest_age() -> None:
    now = [10.0]
    q = RearQueue(10, 1000, clock=lambda: now[0])
    assert q.oldest_age_s() == 0.0
    m = _msg("r/a")
    m.queued_at = 7.0
    q.put(m)
    assert q.oldest_age_s() == pytest.approx(3.0)


def test_down_gate_lets_only_allowed_topics_in_size_limited() -> None:
    gate = DownGate("kit1", "rear/kit1", ("apps/+/tasking",), max_bytes=8)
    assert gate.upstream_filters == ("rear/kit1/apps/+/tasking",)
    assert gate.admit("rear/kit1/apps/a1/tasking", b"go") == (
        "faillite/kit1/apps/a1/tasking",
        None,
    )
    assert gate.admit("rear/kit1/workers/w1/assignment", b"{}") == (None, "not_allowed")
    assert gate.admit("rear/kit2/apps/a1/tasking", b"go") == (None, "not_allowed")
    assert gate.admit("rear/kit1", b"go") == (None, "not_allowed")
    assert gate.admit("rear/kit1/apps/a1/tasking", b"x" * 9) == (None, "too_large")
    assert gate.passed == 1
    assert gate.refused == {"not_allowed": 3, "too_large": 1}


def test_down_gate_with_nothing_allowed_refuses_everything() -> None:
    gate = DownGate("kit1", "rear/kit1", (), max_bytes=1000)
    assert gate.upstream_filters == ()
    assert gate.admit("rear/kit1/events", b"{}") == (None, "not_allowed")


@pytest.mark.parametrize(
    ("a", "b", "overlap"),
    [
        ("apps/+/results/+", "apps/a/results/w", True),
        ("apps/+/results/+", "apps/+/route", False),
        ("#", "events", True),
        ("apps/#", "apps", True),
        ("events", "events/x", False),
        ("+/+", "placement", False),
        ("+", "placement", True),
        ("uplink/#", "+/rear/status", True),
    ],
)
def test_filters_overlap(a: str, b: str, overlap: bool) -> None:
    assert filters_overlap(a, b) is overlap
    assert filters_overlap(b, a) is overlap


@pytest.mark.parametrize("bad", ["", "/apps", "apps/", "a//b", "a/#/b", "a+/b", "$SYS/x", "a/b#"])
def test_bad_filters_are_refused(bad: str) -> None:
    with pytest.raises(FilterError):
        check_filter(bad)


def test_down_filters_that_would_loop_are_refused() -> None:
    assert down_problem(("apps/+/tasking",), ("results", "events")) is None
    assert "loop" in (down_problem(("events/#",), ("events",)) or "")
    assert "loop" in (down_problem(("#",), ("results",)) or "")
    assert "loop" in (down_problem(("uplink/+/status",), ("results",)) or "")
    # What the kit acts on never comes down, whatever goes up: a rear site cannot steer it.
    for steering in (
        "sensors/+/frames",
        "sensors/cam1/frames",
        "workers/+/assignment",
        "workers/w1/status",
        "coordinator/beat",
        "coordinator/+",
        "apps/+/route",
        "placement",
        "+",
    ):
        why = down_problem((steering,), ("results",)) or ""
        assert "loop" in why or "the mesh's own" in why, steering
    assert "the mesh's own" in (down_problem(("sensors/+/frames",), ("results",)) or "")
    assert down_problem(("workers/+/assignment",), ("assignments",)) is not None


def test_kinds_and_retained_follow_the_topic_scheme() -> None:
    kinds = ("results", "statuses", "placement", "events")
    assert kind_of("apps/a1/results/w1", kinds) == "results"
    assert kind_of("workers/w1/status", kinds) == "statuses"
    assert kind_of("apps/a1/route", kinds) == "placement"
    assert kind_of("sensors/cam1/frames", kinds) is None  # frames never go up
    assert kind_of("workers/w1/heartbeat", kinds) is None  # not asked for
    assert is_retained("workers/w1/status") and is_retained("placement")
    assert not is_retained("events") and not is_retained("apps/a1/results/w1")
    assert up_topic("kit1", "rear/kit1", "faillite/kit1/events") == "rear/kit1/events"
    assert up_topic("kit1", "rear/kit1", "faillite/other/events") is None


UPLINK_YAML = """
mesh: kit1
uplink:
  upstream:
    host: rear.example
    port: 8883
    username: kit1-up
    password_file: secrets/rear.secret
    tls: {ca_certs: tls/rear-ca.crt}
  down: ["apps/+/tasking"]
  max_queued_messages: 500
"""


def test_config_section_resolves_paths_and_defaults(tmp_path: Path) -> None:
    p = tmp_path / "mesh.yaml"
    p.write_text(UPLINK_YAML)
    cfg = load_mesh_config(p)
    u = cfg.uplink
    assert u is not None
    assert u.upstream.password_file == tmp_path / "secrets/rear.secret"
    assert u.upstream.tls is not None and u.upstream.tls.ca_certs == tmp_path / "tls/rear-ca.crt"
    assert u.up == ("results", "statuses", "placement", "events")
    assert u.topic_prefix(cfg.mesh) == "rear/kit1"
    assert u.qos == 1 and u.max_queued_messages == 500


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        ("  max_queue: 5\n", "unknown key 'max_queue'"),
        ('  down: ["events/#"]\n', "loop"),
        ('  down: ["apps//x"]\n', "empty level"),
        ('  prefix: "rear/+/x"\n', "wildcards"),
        ("  up: [results, frames]\n", "up.1"),
        ("  up: [results, results]\n", "repeats"),
    ],
)
def test_config_refuses_bad_sections(tmp_path: Path, extra: str, problem: str) -> None:
    text = UPLINK_YAML.replace('  down: ["apps/+/tasking"]\n', "") + extra
    p = tmp_path / "mesh.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=problem.replace("+", r"\+")):
        load_mesh_config(p)


def test_upstream_refuses_a_server_certificate_or_a_secret_without_a_user(tmp_path: Path) -> None:
    p = tmp_path / "mesh.yaml"
    p.write_text(UPLINK_YAML.replace("    username: kit1-up\n", ""))
    with pytest.raises(ConfigError, match="without username"):
        load_mesh_config(p)


def test_uplink_account_reads_what_goes_up_and_writes_only_what_may_come_down() -> None:
    ident = Identity("kit1", Role.UPLINK, "rear")
    scope = AclScope.of(["w1"], ["a1"], ["apps/+/tasking"])
    rules = identity_acl(ident, scope)
    writes = [f for a, f in rules if a is Access.WRITE]
    assert writes == ["faillite/kit1/apps/+/tasking"]
    assert not any("frames" in f for _a, f in rules)
    # None of the scope: read-only.
    assert all(a is Access.READ for a, _f in identity_acl(ident, None))

    policy = AccessPolicy(BrokerConfig(), "kit1", scope)
    assert policy.allowed(ident, Operation.PUBLISH, "faillite/kit1/apps/a1/tasking")
    assert not policy.allowed(ident, Operation.PUBLISH, "faillite/kit1/workers/w1/assignment")
    assert not policy.allowed(ident, Operation.PUBLISH, "faillite/kit1/coordinator/status")
    assert policy.allowed(ident, Operation.SUBSCRIBE, "faillite/kit1/apps/+/results/+")
    assert not policy.allowed(ident, Operation.SUBSCRIBE, "faillite/kit1/sensors/+/frames")
    assert not policy.allowed(ident, Operation.SUBSCRIBE, "faillite/kit1/#")


# -- the kit description -------------------------------------------------------------------


def _kit_with_uplink(tmp_path: Path, **uplink: object) -> Path:
    from field_kit.kit.model import EXAMPLE

    rear = tmp_path / "rear"
    rear.mkdir(exist_ok=True)
    (rear / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\nrear\n")
    (rear / "uplink.secret").write_text("s3cret\n")
    doc = yaml.safe_load(EXAMPLE)
    doc["uplink"] = {
        "node": "orin1",
        "host": "rear.example.net",
        "username": "recon1-uplink",
        "ca_certs": "rear/ca.crt",
        "secret_file": "rear/uplink.secret",
        "down": ["apps/+/tasking"],
        **uplink,
    }
    path = tmp_path / "kit.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_kit_uplink_renders_its_unit_config_files_and_acl(tmp_path: Path) -> None:
    from field_kit.kit.model import load_kit
    from field_kit.kit.render import WATCHDOG_SEC, render

    kit = load_kit(_kit_with_uplink(tmp_path))
    out = tmp_path / "build"
    render(kit, out)
    etc = out / "orin1/etc/faillite"
    unit = (out / "orin1/etc/systemd/system/faillite-uplink.service").read_text().splitlines()
    assert (
        "ExecStart=/opt/faillite/venv/bin/faillite uplink --config /etc/faillite/mesh.yaml" in unit
    )
    assert "Type=notify" in unit and f"WatchdogSec={WATCHDOG_SEC}" in unit
    assert "After=network-online.target faillite-broker.service" in unit
    assert not (out / "orin2/etc/systemd/system/faillite-uplink.service").exists()
    # The rear site's files on the uplink's node only, the secret private.
    assert (etc / "uplink/rear.secret").read_text().strip() == "s3cret"
    assert (etc / "uplink/rear.secret").stat().st_mode & 0o077 == 0
    assert (etc / "uplink/rear-ca.crt").exists()
    assert not (out / "orin2/etc/faillite/uplink").exists()
    assert (etc / "secrets/recon1.uplink.rear.secret").exists()
    assert not (out / "orin2/etc/faillite/secrets/recon1.uplink.rear.secret").exists()
    cfg = load_mesh_config(etc / "mesh.yaml")
    assert cfg.uplink is not None
    assert cfg.uplink.upstream.host == "rear.example.net"
    assert cfg.uplink.upstream.password_file == Path("/etc/faillite/uplink/rear.secret")
    assert cfg.uplink.upstream.tls is not None
    assert cfg.uplink.down == ("apps/+/tasking",)
    # The kit broker's ACL: the uplink writes the allowed down topic and nothing else.
    acl = (etc / "broker/acl").read_text()
    block = acl.split("user recon1.uplink.rear\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert [r for r in block if r.startswith("topic write")] == [
        "topic write faillite/recon1/apps/+/tasking"
    ]
    assert "topic read faillite/recon1/apps/+/results/+" in block
    assert not any("frames" in r or r.endswith("/#") for r in block)
    readme = (out / "orin1/README.md").read_text()
    assert "faillite-uplink.service" in readme and "/etc/faillite/uplink" in readme


def test_kit_uplink_is_validated(tmp_path: Path) -> None:
    from field_kit.kit.model import load_kit

    with pytest.raises(ConfigError, match="not a node"):
        load_kit(_kit_with_uplink(tmp_path, node="orin9"))
    with pytest.raises(ConfigError, match="loop"):
        load_kit(_kit_with_uplink(tmp_path, down=["events/#"]))
    with pytest.raises(ConfigError, match="unknown key 'downlink'"):
        load_kit(_kit_with_uplink(tmp_path, downlink=["x"]))
    kit = load_kit(_kit_with_uplink(tmp_path))
    assert kit.uplink is not None and kit.uplink.down == ("apps/+/tasking",)


def test_accounts_init_covers_the_uplink(tmp_path: Path) -> None:
    from faillite.accounts import mesh_identities

    p = tmp_path / "mesh.yaml"
    p.write_text(UPLINK_YAML)
    cfg = load_mesh_config(p)
    names = {i.name for i in mesh_identities(cfg)}
    assert Identity(cfg.mesh, Role.UPLINK, "rear").name in names
    p.write_text(UPLINK_YAML.split("uplink:")[0])
    assert not any(".uplink." in i.name for i in mesh_identities(load_mesh_config(p)))

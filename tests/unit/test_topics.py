"""topics.md is the contract: it and faillite/topics.py must agree, examples must decode."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from faillite import messages, topics

DOC = Path(__file__).resolve().parents[2] / "topics.md"


def _table_rows() -> dict[str, list[str]]:
    rows = {}
    for line in DOC.read_text().splitlines():
        m = re.match(r"^\| `(faillite/\{mesh\}/[^`]+)` \|(.*)\|$", line)
        if m:
            rows[m.group(1)] = [c.strip() for c in m.group(2).split("|")]
    return rows


def _doc_pattern(spec: topics.TopicSpec) -> str:
    return f"faillite/{{mesh}}/{spec.pattern}"


def test_every_topic_documented_and_nothing_else() -> None:
    rows = _table_rows()
    assert set(rows) == {_doc_pattern(s) for s in topics.ALL_TOPICS}


@pytest.mark.parametrize("spec", topics.ALL_TOPICS, ids=lambda s: s.name)
def test_table_row_matches_spec(spec: topics.TopicSpec) -> None:
    publisher, _subscribers, qos, retained, payload = _table_rows()[_doc_pattern(spec)]
    assert publisher == (spec.publisher.value if spec.publisher else "any")
    assert int(qos) == spec.qos
    assert retained.startswith("yes") == spec.retained
    if spec.schema:
        assert payload == f"`{spec.schema}`"
        assert spec.schema in messages.MESSAGE_TYPES
    else:
        assert "binary" in payload


def _examples() -> dict[str, str]:
    """Map each documented topic to the JSON example in its section."""
    text = DOC.read_text()
    out = {}
    for m in re.finditer(r"^### `([^`]+)`\n(.*?)(?=^### |\Z)", text, re.S | re.M):
        block = re.search(r"```json\n(.*?)```", m.group(2), re.S)
        if block:
            out[m.group(1)] = block.group(1)
    return out


@pytest.mark.parametrize("spec", [s for s in topics.ALL_TOPICS if s.schema], ids=lambda s: s.name)
def test_example_decodes_with_real_codec(spec: topics.TopicSpec) -> None:
    example = _examples()[_doc_pattern(spec)]
    assert spec.schema is not None
    msg = messages.decode(messages.MESSAGE_TYPES[spec.schema], example)
    # Round trip: what the code writes decodes to the same message.
    again = messages.decode(type(msg), messages.encode(msg))
    assert again == msg


def test_builders_and_parse_agree() -> None:
    t = topics.Topics("kit-7")
    built = {
        t.sensor_frames("cam1"): ("sensor_frames", {"sensor": "cam1"}),
        t.worker_status("jetson-02"): ("worker_status", {"worker": "jetson-02"}),
        t.worker_heartbeat("w1"): ("worker_heartbeat", {"worker": "w1"}),
        t.worker_assignment("w1"): ("worker_assignment", {"worker": "w1"}),
        t.worker_profile("w1"): ("worker_profile", {"worker": "w1"}),
        t.app_results("det", "w1"): ("app_results", {"app": "det", "worker": "w1"}),
        t.app_route("det"): ("app_route", {"app": "det"}),
        t.coordinator_status: ("coordinator_status", {}),
        t.coordinator_beat: ("coordinator_beat", {}),
        t.placement: ("placement", {}),
        t.events_of(topics.Role.WORKER, "w1"): ("events", {"role": "worker", "id": "w1"}),
        t.sensor_status("cam1"): ("sensor_status", {"sensor": "cam1"}),
    }
    assert len(built) == len(topics.ALL_TOPICS)
    for topic, (name, ids) in built.items():
        parsed = topics.parse(topic)
        assert parsed is not None, topic
        mesh, p = parsed
        assert mesh == "kit-7" and p.spec.name == name and p.ids == ids


def test_filters_use_single_level_wildcards() -> None:
    assert topics.APP_RESULTS.filter("demo") == "faillite/demo/apps/+/results/+"
    assert topics.PLACEMENT.filter("demo") == "faillite/demo/placement"


@pytest.mark.parametrize("bad", ["", "Cam1", "cam/1", "cam+1", "#", "-x", "a" * 65, "cam 1"])
def test_invalid_ids_rejected(bad: str) -> None:
    with pytest.raises(topics.InvalidIdError):
        topics.Topics("demo").sensor_frames(bad)


def test_parse_rejects_foreign_topics() -> None:
    assert topics.parse("other/demo/placement") is None
    assert topics.parse("faillite/demo/unknown/x") is None
    assert topics.parse("faillite/demo/apps/a/results/w1/extra") is None


def test_identity_acl_covers_every_publisher() -> None:
    from faillite.identity import Identity, identity_acl

    for spec in topics.ALL_TOPICS:
        if spec.publisher is None:
            continue
        ids = {k: "x1" for k in ("sensor", "worker", "app")}
        me = ids.get(spec.publisher.value, "x1")
        topic = f"faillite/demo/{spec.pattern.format(**ids)}"
        rules = identity_acl(Identity("demo", spec.publisher, me))
        writes = [p for a, p in rules if a in (topics.Access.WRITE, topics.Access.READWRITE)]
        assert any(topics.matches(p, topic) for p in writes), spec.name

"""``faillite kit check --drill``'s pure parts: the kill command from its template, the app."""

from __future__ import annotations

import pytest

from faillite.config import MeshConfig
from field_kit.kit.cli import DEFAULT_KILL_WITH
from field_kit.kit.livedrill import DrillError, kill_argv, pick_app


def _cfg(*apps: tuple[str, bool]) -> MeshConfig:
    return MeshConfig.model_validate(
        {
            "sensors": [{"id": "cam1"}],
            "apps": [
                {"id": a, "sensor": "cam1", "family": "efficientnet_lite", "critical": c}
                for a, c in apps
            ],
        }
    )


def test_the_default_template_kills_the_worker_unit_on_its_node() -> None:
    assert kill_argv(DEFAULT_KILL_WITH, "n3") == [
        "ssh", "n3", "sudo", "systemctl", "kill", "--signal=SIGKILL", "faillite-worker.service",
    ]  # fmt: skip


def test_a_template_is_split_like_a_shell_then_formatted_word_by_word() -> None:
    template = "sh -c 'kill -KILL $(cat /logs/{node}-w.pid) # {worker} {{x}}'"
    assert kill_argv(template, "n1") == ["sh", "-c", "kill -KILL $(cat /logs/n1-w.pid) # n1 {x}"]


@pytest.mark.parametrize(
    ("template", "says"),
    [
        ("ssh {host} kill", "unknown placeholder(s) {host}; known: {node}, {worker}, {unit}"),
        ("ssh {} kill", "unknown placeholder(s) {}"),
        ("ssh {node.x} kill", "unknown placeholder(s) {node.x}"),
        ("ssh 'n1", "No closing quotation"),
        ("ssh {node", "expected '}'"),
        ("ssh {node:d}", "Unknown format code"),
        ("  ", "empty"),
    ],
)
def test_a_bad_template_is_refused_with_what_is_wrong(template: str, says: str) -> None:
    with pytest.raises(DrillError, match="kill-with") as err:
        kill_argv(template, "n1")
    assert says in str(err.value)


def test_the_drilled_app_is_the_one_asked_else_the_first_critical_else_the_first() -> None:
    cfg = _cfg(("a1", False), ("a2", True), ("a3", True))
    assert pick_app(cfg, None) == "a2"
    assert pick_app(cfg, "a3") == "a3"
    assert pick_app(_cfg(("a1", False), ("a2", False)), None) == "a1"
    with pytest.raises(DrillError, match=r"--drill-app a9: not an app of mesh demo \(a1, a2, a3\)"):
        pick_app(cfg, "a9")
    with pytest.raises(DrillError, match="no apps"):
        pick_app(_cfg(), None)

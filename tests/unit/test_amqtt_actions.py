"""amqtt's ``Action`` read as the broker's ACL Operation on every Python the mesh supports.

On Python 3.10 (JetPack 6), amqtt's StrEnum backport gives ``str(Action.PUBLISH) ==
"Action.PUBLISH"``: the embedded broker once took ``str(action)`` and refused every publish
and subscription there with a ValueError. The stand-in below has that 3.10 ``str()`` on any
Python, so this runs everywhere."""

from __future__ import annotations

from enum import Enum

import pytest
from amqtt.contexts import Action

from broker._acl import Operation
from broker._amqtt_hooks import operation_of


class LegacyAction(str, Enum):
    """What amqtt's Action is on Python 3.10: a str mixin whose str() is its qualified name."""

    PUBLISH = "publish"
    SUBSCRIBE = "subscribe"
    RECEIVE = "receive"

    def __str__(self) -> str:
        return f"{type(self).__name__}.{self.name}"


@pytest.mark.parametrize("action", [*Action, *LegacyAction])
def test_each_action_is_its_operation(action: Enum) -> None:
    assert str(LegacyAction.PUBLISH) == "LegacyAction.PUBLISH"  # the 3.10 shape holds here
    assert operation_of(action) is Operation(action.value)


def test_every_amqtt_action_has_an_operation() -> None:
    assert {operation_of(a) for a in Action} == set(Operation)


def test_an_unknown_action_is_an_error() -> None:
    with pytest.raises(ValueError, match="not a valid Operation"):
        operation_of("unsubscribe")

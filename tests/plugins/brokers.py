"""Real brokers for tests: the embedded amqtt broker and Mosquitto, on free loopback ports.

Fixtures:

- ``broker``: parametrized over both kinds (ids ``amqtt``, ``mosquitto``); a
  :class:`BrokerEndpoint`. Brokers with the default config (anonymous, no ACL) are shared by the
  whole session, so tests use mesh ids or topics of their own; a shared broker found dead is
  started again.
- ``amqtt_broker`` / ``mosquitto_broker``: one kind only.
- ``broker_launcher``: a :class:`BrokerLauncher` for brokers with a config of the test's own
  (accounts, ACL, limits); everything it started is stopped at the end of the test.

The launching itself lives in ``field_kit.brokers`` (the benchmarks and drills use it too).
Mosquitto tests are skipped with a message when the binary is missing (CI installs it).
"""

from __future__ import annotations

import resource
from collections.abc import Iterator
from pathlib import Path

import pytest

from field_kit.brokers import BROKER_KINDS, BrokerEndpoint, BrokerLauncher, BrokerUnavailableError


def _shared(launcher: BrokerLauncher, kind: str) -> BrokerEndpoint:
    try:
        return launcher.shared(kind)
    except BrokerUnavailableError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def shared_brokers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerLauncher]:
    launcher = BrokerLauncher(tmp_path_factory.mktemp("brokers"))
    try:
        yield launcher
    finally:
        launcher.stop_all()


@pytest.fixture
def amqtt_broker(shared_brokers: BrokerLauncher) -> BrokerEndpoint:
    return _shared(shared_brokers, "amqtt")


@pytest.fixture
def mosquitto_broker(shared_brokers: BrokerLauncher) -> BrokerEndpoint:
    return _shared(shared_brokers, "mosquitto")


@pytest.fixture(params=BROKER_KINDS, ids=BROKER_KINDS)
def broker(request: pytest.FixtureRequest, shared_brokers: BrokerLauncher) -> BrokerEndpoint:
    return _shared(shared_brokers, str(request.param))


@pytest.fixture
def broker_launcher(tmp_path: Path) -> Iterator[BrokerLauncher]:
    launcher = BrokerLauncher(tmp_path / "brokers")
    try:
        yield launcher
    finally:
        launcher.stop_all()


FLOOD_SOCKETS = 1000  # a connection flood of the tests: what a kit's broker must shrug off


@pytest.fixture
def descriptors() -> Iterator[None]:
    """Room for a flood's sockets in this process (restored after)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 4 * FLOOD_SOCKETS
    if hard != resource.RLIM_INFINITY and hard < want:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {want}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

"""Shared fixtures: brokers (amqtt and Mosquitto on free loopback ports) and built models."""

from fixtures_brokers import *  # noqa: F403
from fixtures_models import *  # noqa: F403

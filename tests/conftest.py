"""Fixtures come from plugins (``tests/plugins``): real brokers on free loopback ports, and the
catalog's models built once. Tests: ``unit/`` (no broker, no process), ``integration/`` (real
brokers, real worker and coordinator processes), ``drills/`` (whole meshes under faults)."""

pytest_plugins = ("plugins.brokers", "plugins.models")

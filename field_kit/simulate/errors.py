"""Errors of the simulator: bad input (scenario, trace, policy names) as one-line messages."""

from __future__ import annotations


class SimulationError(ValueError):
    """Input the simulator cannot use; the message says what and where, in one line."""


class ScenarioError(SimulationError):
    """A scenario that cannot be built: unknown name, bad profiles or catalog, bad numbers."""


class TraceError(SimulationError):
    """A failure trace that cannot be read or names servers or domains the scenario lacks."""


class PolicyError(SimulationError):
    """An unknown policy name."""

"""FailLite Mesh: failure-resilient ML inference over MQTT."""

__version__ = "0.1.0"

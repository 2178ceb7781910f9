"""A field kit described once (``kit.yaml``), rendered into one folder per node."""

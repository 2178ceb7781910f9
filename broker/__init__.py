"""The broker layer.

- :mod:`broker.embedded`: the embedded amqtt broker (``serve``, ``run_broker``), also
  ``python -m broker``;
- :mod:`broker.mosquitto`: Mosquitto configuration, ACL and password files for a mesh;
- :mod:`broker._acl` / :mod:`broker._amqtt_hooks`: the access policy and the
  hooks into amqtt 0.12 (keepalive enforcement and the rest).

Nothing is imported here, so importing the Mosquitto generator does not load amqtt.
"""

"""One measurement of ``faillite profile`` in a fresh process: ``python -m workers.profile_probe
REQUEST`` (JSON, see :func:`workers.profile.probe`); the answer is one JSON line on stdout."""

from __future__ import annotations

import json
import sys


def main(argv: list[str]) -> int:
    from workers.profile import probe

    if len(argv) != 1:
        print("usage: python -m workers.profile_probe REQUEST_JSON", file=sys.stderr)
        return 2
    try:
        answer = probe(json.loads(argv[0]))
    except Exception as exc:  # one line for the parent: it reports it with the variant's name
        print(f"{type(exc).__name__}: {exc}".replace("\n", " "), file=sys.stderr)
        return 1
    print(json.dumps(answer), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

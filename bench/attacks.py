"""What attacks cost, measured: password guessing per source address, and refusing an image bomb.

Run: ``python bench/attacks.py [--brokers amqtt,mosquitto] [--seconds 5] [--threads 8]
[--json PATH]``.

1. **Brute force per source.** A broker with one account per device (each with a random
   256-bit secret) on loopback. ``--threads`` guessers on one address (127.0.0.5) send CONNECTs
   with wrong passwords as fast as they are answered, for ``--seconds``; meanwhile a device on
   another address (127.0.0.6) logs in with its own secret once a second. Reported: guesses
   answered per second from the guessing address, those the broker judged (the embedded
   broker refuses at once, without looking at the password, past 8 waiting from one address:
   its count at stop says how many it judged), and the device's login time (p50, max).
   Brokers: the embedded broker with its default slow-down, the same without one
   (``login_delay_s: 0``, the hash cost alone), Mosquitto (no slow-down setting in 2.0), and,
   as root with ``nft``, Mosquitto in a network namespace behind the nftables rules generated
   beside its config (per-source connection rate).
2. **Refusing an image bomb.** A 661-byte JPEG whose SOF declares 32767x32767 (6.2 GB and
   seconds to decode): the worker's pre-decode check (:func:`faillite.envelope.check_image`),
   time per refusal and peak memory (``tracemalloc``), against decoding an honest 640x480
   frame, side by side.
"""

from __future__ import annotations

import argparse
import json
import statistics
import struct
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

from faillite import envelope
from faillite.accounts import add_account
from faillite.config import BrokerConfig
from faillite.identity import Identity
from faillite.topics import Role
from field_kit.brokers import BrokerLauncher
from field_kit.guessing import Guesses, firewall_problem, firewalled_mosquitto, guess, login

MESH = "bench"
GUESSER_ADDRESS = "127.0.0.5"
DEVICE_ADDRESS = "127.0.0.6"
VICTIM = Identity(MESH, Role.WORKER, "w1")
DEVICE = Identity(MESH, Role.SENSOR, "cam1")


def brute_force(
    kind: str, cfg: BrokerConfig, secret: str, seconds: float, threads: int, workdir: Path
) -> dict[str, Any]:
    with BrokerLauncher(workdir) as launcher:
        ep = launcher.start(kind, cfg, mesh=MESH)
        found: list[Guesses] = []
        guesser = threading.Thread(
            target=lambda: found.append(
                guess(
                    ep.host,
                    ep.port,
                    VICTIM.name,
                    source=GUESSER_ADDRESS,
                    seconds=seconds,
                    threads=threads,
                )
            )
        )
        guesser.start()
        device_s: list[float] = []
        start = time.monotonic()
        while guesser.is_alive() and time.monotonic() - start < seconds:
            t0 = time.monotonic()
            if login(ep.host, ep.port, DEVICE.name, secret, source=DEVICE_ADDRESS, timeout=60) == 0:
                device_s.append(time.monotonic() - t0)
            time.sleep(max(0.0, 1.0 - (time.monotonic() - t0)))
        guesser.join()
    g = found[0]
    # The guesses the broker judged: the embedded broker refuses at once, unjudged, past 8
    # waiting from one address, which a guesser cannot tell from a wrong password.
    judged = g.answered
    if kind == "amqtt":
        refused = _stopped_refusals(workdir)
        judged = refused.get("auth_bad_password", 0)
    return {
        "broker": kind,
        "judged": judged,
        "judged_per_s": round(judged / g.seconds, 1),
        "slow_down": f"{cfg.login_delay_s} s x2"
        if kind == "amqtt" and cfg.login_delay_s
        else "none",
        "guesses": g.answered,
        "guesses_per_s": round(g.per_s, 1),
        "guesses_accepted": g.accepted,
        "device_logins": len(device_s),
        "device_login_ms_p50": round(statistics.median(device_s) * 1000, 1) if device_s else None,
        "device_login_ms_max": round(max(device_s) * 1000, 1) if device_s else None,
    }


def _stopped_refusals(workdir: Path) -> dict[str, int]:
    for log in workdir.glob("*/broker.log"):
        for line in log.read_text().splitlines():
            if '"broker_stopped"' in line:
                refused: dict[str, int] = json.loads(line).get("refused", {})
                return refused
    return {}


def firewalled(cfg: BrokerConfig, secret: str, seconds: float, workdir: Path) -> dict[str, Any]:
    """Mosquitto behind its generated nftables rules, in a network namespace (root)."""
    run = firewalled_mosquitto(
        cfg,
        MESH,
        workdir,
        victim=VICTIM.name,
        device=(DEVICE.name, secret),
        seconds=(seconds / 2, seconds),
    )
    return {
        "broker": "mosquitto",
        "slow_down": (
            f"nftables {cfg.connects_per_source_s:g}/s burst {cfg.connect_burst_per_source}"
        ),
        "guesses": run.with_rules["answered"],
        "judged": run.with_rules["answered"],
        "judged_per_s": run.with_rules["per_s"],
        "guesses_per_s": run.with_rules["per_s"],
        "guesses_accepted": run.with_rules["accepted"],
        "guesses_per_s_without_rules": run.without["per_s"],
        "device_logins": 1,
        "device_login_ms_p50": round(run.device_s * 1000, 1),
        "device_login_ms_max": round(run.device_s * 1000, 1),
    }


def image_bomb(repeats: int) -> dict[str, Any]:
    import numpy as np

    rng = np.random.default_rng(1)
    honest_img = rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)
    honest = envelope.encode_jpeg(honest_img)
    small = bytearray(envelope.encode_jpeg(honest_img[:16, :16]))
    sof = min(i for i in (small.find(b"\xff\xc0"), small.find(b"\xff\xc2")) if i > 0)
    small[sof + 5 : sof + 9] = struct.pack("!HH", 32767, 32767)
    bomb = bytes(small)
    bomb_frame = envelope.unpack(
        envelope.pack(bomb, seq=1, capture_ns=0, width=640, height=480), max_bytes=1 << 21
    )
    honest_frame = envelope.unpack(
        envelope.pack(honest, seq=1, capture_ns=0, width=640, height=480), max_bytes=1 << 21
    )
    limit = 640 * 480

    def refuse() -> None:
        try:
            envelope.check_image(bomb_frame, max_pixels=limit)
        except envelope.FrameError:
            return
        raise AssertionError("the bomb was not refused")

    tracemalloc.start()
    refuse()
    _cur, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    t0 = time.perf_counter()
    for _ in range(repeats):
        refuse()
    refuse_us = (time.perf_counter() - t0) / repeats * 1e6
    t0 = time.perf_counter()
    n = max(1, repeats // 100)
    for _ in range(n):
        envelope.decode_image(honest_frame)
    decode_us = (time.perf_counter() - t0) / n * 1e6
    return {
        "bomb_bytes": len(bomb),
        "declared": "32767x32767",
        "refusal_us": round(refuse_us, 2),
        "refusal_peak_kib": round(peak / 1024, 1),
        "honest_640x480_decode_us": round(decode_us, 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--brokers", default="amqtt,mosquitto")
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--threads", type=int, default=8)
    p.add_argument("--repeats", type=int, default=20000)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    out: dict[str, Any] = {"brute_force": [], "image_bomb": image_bomb(args.repeats)}
    with tempfile.TemporaryDirectory(prefix="faillite-attacks-") as tmp:
        d = Path(tmp)
        pw = d / "passwd"
        for who in (VICTIM, DEVICE):
            add_account(pw, d / "secrets", who)
        secret = (d / "secrets" / f"{DEVICE.name}.secret").read_text().strip()
        base = BrokerConfig(password_file=pw)
        runs: list[tuple[str, BrokerConfig]] = []
        for kind in args.brokers.split(","):
            if kind == "amqtt":
                runs += [("amqtt", base), ("amqtt", base.model_copy(update={"login_delay_s": 0.0}))]
            else:
                runs.append((kind, base))
        for i, (kind, cfg) in enumerate(runs):
            row = brute_force(kind, cfg, secret, args.seconds, args.threads, d / f"run{i}")
            out["brute_force"].append(row)
            print(json.dumps(row), file=sys.stderr)
        if "mosquitto" in args.brokers.split(","):
            problem = firewall_problem()
            if problem is None:
                row = firewalled(base, secret, args.seconds, d / "firewalled")
                out["brute_force"].append(row)
                print(json.dumps(row), file=sys.stderr)
            else:
                print(f"mosquitto + nftables: skipped ({problem})", file=sys.stderr)
    print(
        "\nPassword guessing from one address "
        f"({args.threads} in parallel, {args.seconds:.0f} s), a device on another address:"
    )
    print(
        f"{'broker':<10} {'slow-down':>26} {'answered/s':>10} {'judged/s':>9} "
        f"{'accepted':>9} {'device login p50 / max (ms)':>28}"
    )
    for r in out["brute_force"]:
        print(
            f"{r['broker']:<10} {r['slow_down']:>26} {r['guesses_per_s']:>10} "
            f"{r['judged_per_s']:>9} {r['guesses_accepted']:>9} "
            f"{r['device_login_ms_p50']!s:>16} / {r['device_login_ms_max']!s}"
        )
    b = out["image_bomb"]
    print(
        f"\nImage bomb ({b['bomb_bytes']} bytes declaring {b['declared']}): refused in "
        f"{b['refusal_us']} us, peak {b['refusal_peak_kib']} KiB; an honest 640x480 frame "
        f"decodes in {b['honest_640x480_decode_us']} us"
    )
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Drill reports: ``drills.json``, ``report.md`` and one PNG timeline per case."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from field_kit.drill.cases import DrillOptions

METRIC_COLUMNS = (
    ("detection_ms", "detection"),
    ("decision_ms", "decision"),
    ("loading_ms", "loading"),
    ("reconfiguration_ms", "reconfig."),
    ("mttr_ms", "MTTR"),
)


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.2f}" if v < 1 else f"{v:.1f}" if v < 100 else f"{v:.0f}"
    return str(v)


def _metrics_of(r: dict[str, Any]) -> dict[str, Any]:
    m = r.get("metrics") or {}
    # KILL_COORDINATOR's failover figures are the new leader's.
    return m.get("failover_by_new_leader") or m


def _recovered(m: dict[str, Any]) -> str:
    apps = m.get("apps") or {}
    if not apps:
        return "–"
    return f"{sum(1 for a in apps.values() if a.get('recovered'))} / {len(apps)}"


def _accuracy(m: dict[str, Any]) -> str:
    parts = []
    for app, a in (m.get("apps") or {}).items():
        if a.get("accuracy_while_degraded") is not None:
            parts.append(f"{app} {a['accuracy_before']:.1f}→{a['accuracy_while_degraded']:.1f}")
    return ", ".join(parts) or "–"


def _notes(r: dict[str, Any]) -> str:
    m = r.get("metrics") or {}
    out = []
    attack = m.get("attack")
    if attack:
        out.append(
            f"attack: {attack['attempted']} forged, {attack['refused']} refused by the broker, "
            f"{attack['ignored']} ignored by the mesh"
        )
    for key in ("takeover_ms", "reprotect_ms", "broker_down_ms"):
        if m.get(key) is not None:
            out.append(f"{key.removesuffix('_ms')} {m[key]:.0f} ms")
    if "false_suspicions" in m:
        out.append(f"false suspicions {m['false_suspicions']}")
    elif "liveness_suspicions" in m:
        out.append(f"false suspicions {m['liveness_suspicions']}")
    if "held_s" in m:
        out.append(f"held {m['held_s']:.0f} s")
    if m.get("order"):
        out.append(f"boot order {m['order']}, {m.get('delay_s', 0):g} s apart")
    if m.get("workers_late_s") is not None:
        out.append(f"workers {m['workers_late_s']:.0f} s after the coordinators")
    if "served_after_last_role_s" in m:
        v = m["served_after_last_role_s"]
        out.append(
            "every app served "
            + (f"{v:.1f} s after the last role up" if v is not None else "never (not in time)")
        )
    for key, what in (("unserved_s", "unserved"), ("shed_s", "shed")):
        if m.get(key):
            out.append(f"{what} " + ", ".join(f"{a} {s:.1f} s" for a, s in m[key].items()))
    degraded = (m.get("degradation") or {}).get("count")
    if degraded:
        out.append("degradation: " + ", ".join(f"{k} x{v}" for k, v in degraded.items()))
    if m.get("slow_loads"):
        out.append("slow loads: " + ", ".join(m["slow_loads"]))
    if m.get("impairment"):
        out.append(m["impairment"])
    failed = [c["name"] for c in r.get("checks", []) if not c["ok"]]
    if failed:
        out.append("failed: " + ", ".join(failed))
    if r.get("status") == "skipped":
        out.append(r.get("reason", ""))
    return "; ".join(out)


def write_report(results: list[dict[str, Any]], out: Path, opts: DrillOptions) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "drills.json").write_bytes(
        orjson.dumps(
            {"options": {"broker": opts.broker, "short": opts.short}, "cases": results},
            option=orjson.OPT_INDENT_2,
        )
    )
    lines = [
        "# FailLite Mesh failure drills",
        "",
        f"Broker: {opts.broker}; form: {'short (CI)' if opts.short else 'long'}. Times in ms, "
        "from the fault's injection (wall clock of this machine). Accuracy: ImageNet top-1 of "
        "the variant before the fault → mean while degraded.",
        "",
        "| case | result | apps recovered | "
        + " | ".join(h for _k, h in METRIC_COLUMNS)
        + " | accuracy while degraded | notes |",
        "|---" * (len(METRIC_COLUMNS) + 5) + "|",
    ]
    for r in results:
        m = _metrics_of(r)
        cells = [_fmt(m.get(k)) for k, _h in METRIC_COLUMNS]
        lines.append(
            f"| {_cell(_name(r))} | {r['status']} | {_recovered(m)} | "
            + " | ".join(cells)
            + f" | {_accuracy(m)} | {_notes(r)} |"
        )
    lines += _attack_lines(results)
    lines += ["", "## Checks", ""]
    for r in results:
        lines.append(f"### {_name(r)}: {r['status']}")
        lines.append("")
        lines.append(r.get("summary", ""))
        lines.append("")
        for c in r.get("checks", []):
            lines.append(f"- {'✅' if c['ok'] else '❌'} **{c['name']}**: {c['detail']}")
        if r.get("timeline"):
            png = f"{_slug(_name(r))}.png"
            _plot(r, out / png)
            lines += ["", f"![{_name(r)} timeline]({png})"]
        lines.append("")
    (out / "report.md").write_text("\n".join(lines))


def _name(r: dict[str, Any]) -> str:
    """The case with its parameters (BOOT_ORDER's order), and its run number when repeated."""
    name = str(r.get("label") or r["case"])
    return f"{name} #{r['run']}" if r.get("run") else name


def _slug(name: str) -> str:
    return "_".join("".join(ch if ch.isalnum() else " " for ch in name.lower()).split())


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _attack_lines(results: list[dict[str, Any]]) -> list[str]:
    """Per attack case: every kind of forged message, how many were attempted, refused by the
    broker (never delivered to anyone), delivered, and ignored by the mesh (counted)."""
    attacks = [r for r in results if (r.get("metrics") or {}).get("attack")]
    if not attacks:
        return []
    lines = [
        "",
        "## Attacks",
        "",
        "A mesh with one account per device, attacked with a stolen device secret. "
        "Refused: the broker delivered it to nobody (an admin watcher following the whole "
        "mesh never saw it). Ignored: delivered, and the mesh did not act on it, as counted "
        "by whoever refused it (a worker's heartbeat errors, the route filter, the leader's "
        "log) or shown by the case's checks.",
    ]
    for r in attacks:
        a = r["metrics"]["attack"]
        thieves = ", ".join(f"{k} (as {v})" for k, v in a.get("thieves", {}).items())
        lines += [
            "",
            f"### {r['case']} ({r['status']})",
            "",
            f"Stolen: {thieves or '–'}.",
            "",
            "| forged | attempted | refused by the broker | delivered | ignored by the mesh "
            "| how |",
            "|---|---|---|---|---|---|",
        ]
        for t in a["attempts"]:
            lines.append(
                f"| {_cell(t['what'])} | {t['attempted']} | {t['refused']} | {t['delivered']} "
                f"| {_fmt(t['ignored'])} | {_cell(t['how'])} |"
            )
    return lines


def _plot(r: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tl = r["timeline"]
    apps = list(tl["apps"])
    fig, axes = plt.subplots(len(apps), 1, figsize=(10, 2.6 * len(apps) + 0.6), sharex=True)
    axes = list(axes) if len(apps) > 1 else [axes]
    workers = sorted({p[1] for pts in tl["apps"].values() for p in pts})
    variants = sorted({p[2] for pts in tl["apps"].values() for p in pts})
    colors = {w: f"C{i}" for i, w in enumerate(workers)}
    markers = {v: m for v, m in zip(variants, "o^sDvP*X", strict=False)}
    for ax, app in zip(axes, apps, strict=True):
        pts = tl["apps"][app]
        for w in workers:
            for v in variants:
                sel = [p for p in pts if p[1] == w and p[2] == v]
                if sel:
                    ax.scatter(
                        [p[0] for p in sel],
                        [p[3] for p in sel],
                        s=9,
                        color=colors[w],
                        marker=markers[v],
                        label=f"{w} / {v}",
                    )
        for kind, targets, t_in, t_out in tl["faults"]:
            ax.axvline(t_in, color="red", lw=1.2)
            ax.axvspan(t_in, t_out if t_out is not None else t_in, color="red", alpha=0.08)
            ax.text(
                t_in,
                1.0,
                f" {kind} {','.join(targets)}",
                color="red",
                fontsize=7,
                transform=ax.get_xaxis_transform(),
                va="top",
            )
        for t, kind, _w, _a in tl["events"]:
            if kind in ("failover", "coordinator_takeover", "failure_detected"):
                ax.axvline(t, color="gray", lw=0.6, ls="--")
        ax.set_ylabel(f"{app}\nlatency (ms)")
        ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # nothing served (a boot case that failed)
            ax.legend(fontsize=6, loc="upper right", ncol=2)
    axes[-1].set_xlabel("seconds since the drill's start (red: fault; dashed: detection, failover)")
    fig.suptitle(f"{_name(r)} ({r['status']}): serving worker / variant and latency per app")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

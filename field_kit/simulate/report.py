"""Outputs of a simulation: ``results.json``, ``report.md`` and PNG plots (matplotlib, Agg).

``results.json`` is deterministic for a seed; planner wall-clock times go to ``timings.json``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from field_kit.simulate.metrics import PolicyMetrics, Protection, Reduction
from field_kit.simulate.simulation import SimulationResult

_NUM = r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?|null"
_NUMBER_LIST = re.compile(rf"\[\s*((?:{_NUM})(?:,\s*(?:{_NUM}))*)\s*\]")


def matplotlib_null() -> Any:
    from matplotlib.ticker import NullFormatter

    return NullFormatter()


_MODE_TITLES = {
    "sweep": "Single-server failure sweep",
    "random": "Random failures",
    "trace": "Trace",
}
_COLORS = {
    "none": "#999999",
    "full-warm": "#1f77b4",
    "cold": "#9467bd",
    "greedy": "#ff7f0e",
    "lp": "#2ca02c",
}


def _f(x: float | None, fmt: str = ".0f", none: str = "-") -> str:
    return none if x is None else format(x, fmt)


def _red(r: Reduction) -> str:
    if r.points is None:
        return "-"
    return f"{r.points:.2f} / {_f(r.pct, '.2f')} %"


class ReportWriter:
    """Writes one simulation's JSON, markdown and plots into a folder."""

    def __init__(self, out_dir: str | Path, *, plots: bool = True) -> None:
        self.out = Path(out_dir)
        self.plots = plots

    def write(self, result: SimulationResult) -> list[Path]:
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OSError(f"cannot create output folder {self.out}: {exc.strerror}") from exc
        written = [self._json(result), self._timings(result), self._markdown(result)]
        if self.plots:
            written += self._plots(result)
        return written

    # -- JSON --------------------------------------------------------------------------------

    def _json(self, result: SimulationResult) -> Path:
        path = self.out / "results.json"
        text = json.dumps(result.to_json(), indent=1, allow_nan=False)
        # Lists of numbers (MTTR lists for the CDF) on one line each.
        text = _NUMBER_LIST.sub(lambda m: "[" + re.sub(r",\s*", ", ", m.group(1)) + "]", text)
        path.write_text(text + "\n")
        return path

    def _timings(self, result: SimulationResult) -> Path:
        path = self.out / "timings.json"
        t = {n: {k: round(v, 3) for k, v in d.items()} for n, d in result.timings().items()}
        path.write_text(json.dumps({"wall_clock_s": t}, indent=1) + "\n")
        return path

    # -- markdown ----------------------------------------------------------------------------

    def _markdown(self, result: SimulationResult) -> Path:
        sc = result.scenario
        cfg = result.config
        p = sc.params()
        lines = [
            f"# `faillite simulate`: scenario {sc.name}",
            "",
            sc.description or "",
            "",
            f"**{sc.budget_statement()}**",
            "",
            "| parameter | value |",
            "|---|---|",
        ]
        for key in (
            "seed",
            "apps",
            "critical_apps",
            "servers",
            "failure_domains",
            "servers_per_domain",
            "families",
            "variants",
            "rates_fps",
            "slos_ms",
            "server_memory_mb",
            "total_memory_mb",
            "primary_need_mb",
            "full_replication_mb",
            "memory_scale",
            "detection_ms",
            "reroute_ms",
        ):
            v = p[key]
            if isinstance(v, list):
                v = ", ".join(f"{x:g}" for x in v)
            elif isinstance(v, float):
                v = f"{v:,.1f}" if key.endswith("_mb") else f"{v:g}"
            lines.append(f"| {key} | {v} |")
        lines.append(f"| re-plan delay (decision to new plan) | {cfg.replan_delay_ms / 1000:g} s |")
        lines.append(f"| profiles | `{Path(sc.profiles).name or '-'}` |")
        lines.append("")
        lines += self._protection_table(result)
        for mode in ("sweep", "random", "trace"):
            ms = {n: pr.metrics[mode] for n, pr in result.policies.items() if mode in pr.metrics}
            if not ms:
                continue
            lines += ["", f"## {_MODE_TITLES[mode]}", "", self._mode_line(result, mode), ""]
            lines += self._metrics_table(
                ms, {n: pr.protection for n, pr in result.policies.items()}
            )
        lines += ["", "## Goal", "", *self._goal_lines(result)]
        lines += ["", "## Definitions", "", *_DEFINITIONS]
        path = self.out / "report.md"
        path.write_text("\n".join(lines) + "\n")
        return path

    @staticmethod
    def _mode_line(result: SimulationResult, mode: str) -> str:
        cfg = result.config
        if mode == "sweep":
            n = len(next(iter(result.policies.values())).runs.get("sweep", ()))
            return (
                f"Each of {n} servers fails alone once from the initial plan; its window ends "
                f"at repair after {cfg.sweep_repair_ms / 60_000:g} min (no failback)."
            )
        if mode == "random":
            fm = cfg.failure_model
            return (
                f"{len(result.random_failures)} seeded Poisson failures over "
                f"{cfg.duration_h:g} h (server MTBF {fm.server_mtbf_h:g} h, domain MTBF "
                f"{fm.domain_mtbf_h:g} h, lognormal repair with median "
                f"{fm.repair_median_min:g} min), re-plans and failback included."
            )
        return f"{len(cfg.trace)} failures from the trace, re-plans and failback included."

    @staticmethod
    def _protection_table(result: SimulationResult) -> list[str]:
        out = [
            "## Initial plans",
            "",
            "| policy | solver | unplaced | unprotected | warm / cold backups | primaries MB | "
            "warm MB (share) | cold reserve MB (share) | cold disk MB | mean primary acc. % |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for n, pr in result.policies.items():
            pt = pr.protection
            out.append(
                f"| {n} | {pr.initial_solver} | {pt.unplaced} | {pt.unprotected} | "
                f"{pt.warm_backups} / {pt.cold_backups} | {pt.primaries_mb:,.0f} | "
                f"{pt.warm_mb:,.0f} ({100 * pt.warm_share:.1f} %) | "
                f"{pt.cold_reserve_mb:,.0f} ({100 * pt.reserve_share:.1f} %) | "
                f"{pt.cold_disk_mb:,.0f} | {pt.primary_accuracy:.2f} |"
            )
        return out

    @staticmethod
    def _metrics_table(
        ms: Mapping[str, PolicyMetrics], prot: Mapping[str, Protection]
    ) -> list[str]:
        out = [
            "| policy | recovered (by failover) / failed apps (failures fully recovered) "
            "| recovery rate "
            "| MTTR p50 / p90 / p99 / max (ms) | acc. reduction over window (pts / %) "
            "| right after failover (pts / %) | end of window (pts / %) "
            "| fleet acc. % (reference) | protection memory MB (share) "
            "| unprotected before / after re-plan (max) | planned moves over memory |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for n, m in ms.items():
            pt = prot[n]
            mt = m.mttr
            mttr = (
                "-" if mt.n == 0 else f"{_f(mt.p50)} / {_f(mt.p90)} / {_f(mt.p99)} / {_f(mt.max)}"
            )
            mem = pt.warm_mb + pt.cold_reserve_mb
            out.append(
                f"| {n} | {m.recovered} ({m.recovered_by_failover}) / {m.failed_apps} "
                f"({m.failures_fully_recovered}/"
                f"{m.failures}) | "
                f"{_f(None if m.recovery_rate is None else 100 * m.recovery_rate, '.1f')} % | "
                f"{mttr} | {_red(m.window)} | {_red(m.after_failover)} | "
                f"{_red(m.end_of_window)} | {m.fleet_accuracy:.3f} ({m.fleet_reference:.3f}) | "
                f"{mem:,.0f} ({100 * mem / pt.total_memory_mb:.1f} %) | {pt.unprotected} / "
                f"{_f(m.unprotected_after_replan.max)} | {m.migration_overflows} |"
            )
        return out

    @staticmethod
    def _goal_lines(result: SimulationResult) -> list[str]:
        g = result.goal()
        if not g.get("evaluated"):
            return [f"Not evaluated: {g.get('why')}."]
        verdict = "**met**" if g["met"] else "**not met**"
        lines = [
            "Bar: at a memory budget where full replication does not fit, `lp` recovers every "
            "app of each single-server failure with at most 0.6 % accuracy reduction and beats "
            f"`greedy`. On this run: {verdict}.",
            "",
            f"- full replication fits: {g['full_replication_fits']}",
            f"- lp recovery rate: {100 * (g['lp_recovery_rate'] or 0):.1f} % "
            f"(all recovered: {g['lp_recovers_all']})",
            f"- lp accuracy reduction over the degraded window: "
            f"{_f(g['lp_window_reduction_pct'], '.3f')} % (within 0.6 %: "
            f"{g['within_0_6_pct_window']})",
            f"- lp accuracy reduction right after failover, before the re-plan: "
            f"{_f(g['lp_after_failover_reduction_pct'], '.3f')} % (within 0.6 %: "
            f"{g['within_0_6_pct_after_failover']})",
        ]
        if "beats_greedy" in g:
            lines.append(
                f"- greedy: recovery rate {100 * (g['greedy_recovery_rate'] or 0):.1f} %, "
                f"window reduction {_f(g['greedy_window_reduction_pct'], '.3f')} %, right after "
                f"failover {_f(g['greedy_after_failover_reduction_pct'], '.3f')} %; lp beats "
                f"greedy (recovery rate, then window reduction): {g['beats_greedy']}"
            )
            lines.append(
                f"- accuracy the fleet serves (time-averaged, every app): lp "
                f"{g['lp_fleet_accuracy']:.3f} %, greedy {g['greedy_fleet_accuracy']:.3f} % "
                f"(best plan without failures: {g['best_fleet_reference']:.3f} %); lp serves "
                f"more: {g['lp_serves_more_accuracy']}"
            )
            lines.append(
                f"- MTTR p50 / max: lp {_f(g['lp_mttr_p50_ms'])} / {_f(g['lp_mttr_max_ms'])} ms, "
                f"greedy {_f(g['greedy_mttr_p50_ms'])} / {_f(g['greedy_mttr_max_ms'])} ms"
            )
        return lines

    # -- plots -------------------------------------------------------------------------------

    def _plots(self, result: SimulationResult) -> list[Path]:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        names = list(result.policies)
        colors = [_COLORS.get(n, "#333333") for n in names]
        modes = [
            m
            for m in ("sweep", "random", "trace")
            if any(m in pr.metrics for pr in result.policies.values())
        ]
        title = f"{result.scenario.name} (memory scale {result.scenario.memory_scale:g})"
        return [
            self._plot_mttr(plt, result, names, colors, modes, title),
            *self._plot_accuracy(plt, result, names, colors, modes, title),
            self._plot_memory(plt, result, names, title),
        ]

    def _plot_mttr(
        self,
        plt: Any,
        result: SimulationResult,
        names: list[str],
        colors: list[str],
        modes: list[str],
        title: str,
    ) -> Path:
        """MTTR CDF, one panel per mode; a curve ends below 1 where apps stayed down."""
        n = max(1, len(modes))
        fig, axes = plt.subplots(1, n, figsize=(6 * n, 4.2), squeeze=False)
        styles = ["-", "--", "-.", ":"]
        for ax, mode in zip(axes[0], modes, strict=False):
            hi = 1000.0
            # Reversed: the baselines are drawn over lp and greedy where they coincide.
            for i, (name, c) in reversed(list(enumerate(zip(names, colors, strict=True)))):
                m = result.policies[name].metrics.get(mode)
                if m is None:
                    continue
                if not m.mttr_ms:
                    ax.plot([], [], color=c, label=f"{name} (0/{m.failed_apps})")
                    continue
                xs = list(m.mttr_ms)
                hi = max(hi, xs[-1])
                ys = [(k + 1) / m.failed_apps for k in range(len(xs))]
                ax.step(
                    [xs[0], *xs],
                    [0.0, *ys],
                    where="post",
                    color=c,
                    lw=2.2 - 0.3 * (i % 3),
                    ls=styles[i % len(styles)],
                    label=f"{name} ({m.recovered}/{m.failed_apps})",
                )
            ax.set_xscale("log")
            ticks = [t for t in (100, 300, 1000, 3000, 10_000, 30_000, 100_000) if t <= hi * 3]
            ax.set_xticks(ticks, [f"{t / 1000:g} s" for t in ticks])
            ax.xaxis.set_minor_formatter(matplotlib_null())
            ax.set_ylim(0, 1.02)
            ax.set_xlabel("MTTR (log)")
            ax.set_ylabel("share of failed apps recovered")
            ax.set_title(f"{_MODE_TITLES[mode]}: MTTR CDF")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8, loc="lower right")
        fig.suptitle(title)
        fig.tight_layout()
        path = self._save(fig, "mttr_cdf.png")
        plt.close(fig)
        return path

    def _plot_accuracy(
        self,
        plt: Any,
        result: SimulationResult,
        names: list[str],
        colors: list[str],
        modes: list[str],
        title: str,
    ) -> list[Path]:
        """Recovery rate and accuracy reduction of the headline mode (sweep if run)."""
        head = "sweep" if "sweep" in modes else (modes[0] if modes else "")
        if not head:
            return []
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
        rates = [
            100 * (result.policies[n].metrics[head].recovery_rate or 0.0)
            if head in result.policies[n].metrics
            else 0.0
            for n in names
        ]
        a1.bar(names, rates, color=colors)
        a1.set_ylim(0, 108)
        a1.set_ylabel("recovery rate (%)")
        a1.set_title(f"{_MODE_TITLES[head]}: failed apps recovered before repair", fontsize=10)
        for i, v in enumerate(rates):
            a1.text(i, v + 1, f"{v:.0f}", ha="center", fontsize=8)
        win = [self._pct(result, n, head, "window") for n in names]
        afo = [self._pct(result, n, head, "after_failover") for n in names]
        # Linear scale around the 0.6 % bar; taller bars are clipped and labelled.
        small = [v for v in win + afo if v <= 5.0]
        top = max(1.2, 1.25 * max(small, default=1.0))
        x = list(range(len(names)))
        for off, vals, alpha, hatch, label in (
            (-0.2, win, 1.0, None, "over degraded window"),
            (0.2, afo, 0.45, "//", "right after failover"),
        ):
            a2.bar(
                [i + off for i in x],
                [min(v, top) for v in vals],
                0.4,
                color=colors,
                alpha=alpha,
                hatch=hatch,
                label=label,
            )
            for i, v in enumerate(vals):
                if v > top:  # clipped: the value inside the bar
                    a2.text(i + off, top * 0.5, f"{v:.1f} %", ha="center", va="center",
                            fontsize=7, rotation=90, color="white")  # fmt: skip
                else:
                    a2.text(i + off, v + top * 0.01, f"{v:.2f}", ha="center", fontsize=6.5,
                            va="bottom")  # fmt: skip
        a2.set_ylim(0, top * 1.35)
        a2.set_xticks(x, names)
        a2.axhline(0.6, color="red", lw=0.8, ls="--", label="0.6 %")
        a2.set_ylabel("accuracy reduction vs full replication (%)")
        a2.set_title("failed apps: reduction against full replication", fontsize=10)
        a2.legend(fontsize=7, loc="upper center", ncol=3)
        fig.suptitle(title)
        fig.tight_layout()
        path = self._save(fig, "recovery_accuracy.png")
        plt.close(fig)
        return [path]

    def _plot_memory(
        self, plt: Any, result: SimulationResult, names: list[str], title: str
    ) -> Path:
        fig, ax = plt.subplots(figsize=(8.5, 4.4))
        total = result.scenario.total_memory_mb
        warm = [result.policies[n].protection.warm_mb / 1024 for n in names]
        res = [result.policies[n].protection.cold_reserve_mb / 1024 for n in names]
        disk = [result.policies[n].protection.cold_disk_mb / 1024 for n in names]
        x = list(range(len(names)))
        ax.bar([i - 0.27 for i in x], warm, 0.27, color="#1f77b4", label="warm (resident)")
        ax.bar(x, res, 0.27, color="#aec7e8", label="cold reserve (memory on failure)")
        ax.bar([i + 0.27 for i in x], disk, 0.27, color="#c7c7c7", label="cold files (disk)")
        labels = [
            f"{n}\n{100 * (warm[i] + res[i]) * 1024 / total if total else 0.0:.1f} % of memory"
            for i, n in enumerate(names)
        ]
        ax.set_xticks(x, labels, fontsize=8)
        ax.set_ylabel("GB")
        ax.set_ylim(0, max([*warm, *res, *disk, 0.1]) * 1.3)
        ax.set_title(
            f"{title}: memory spent on protection\n(total {total / 1024:,.1f} GB of model "
            f"memory; full replication needs {result.scenario.full_replication_mb / 1024:,.1f} "
            "GB)",
            fontsize=9,
        )
        ax.legend(fontsize=8, loc="upper left")
        fig.tight_layout()
        path = self._save(fig, "protection_memory.png")
        plt.close(fig)
        return path

    @staticmethod
    def _pct(result: SimulationResult, name: str, mode: str, which: str) -> float:
        m = result.policies[name].metrics.get(mode)
        if m is None:
            return 0.0
        r: Reduction = getattr(m, which)
        return r.pct if r.pct is not None else 0.0

    def _save(self, fig: Any, name: str) -> Path:
        path = self.out / name
        fig.savefig(path, dpi=110, metadata={"Software": None})
        return path


_DEFINITIONS = [
    "- **Recovered**: a failed app served again before its server's repair, by the failover "
    "or by a later re-plan. **MTTR**: failure to the first result from the new place "
    "(detection + reroute for a warm backup; + load + first inference of each model queued on "
    "that device for a cold one).",
    "- **Accuracy reduction** is against full replication: each failed app back with the "
    "variant it served before, after detection + reroute. *Over window*: time-averaged over "
    "failure to repair, down time counting 0 (points, and % of the reference). *Right after "
    "failover*: the variant the failover's ladder ends at, before any re-plan, over the apps "
    "it recovered. *End of window*: what runs when the server comes back, all failed apps.",
    "- **Fleet acc.**: every app's accuracy averaged over the whole run (unplaced or down: 0); "
    "in brackets the same with full replication of each policy's own primaries.",
    "- **Protection memory**: resident memory of warm backups plus the cold reserve (per "
    "server, the largest memory one failure's cold backups would load there); cold files "
    "take disk only. Shares are of the fleet's total model memory.",
    "- `none`, `full-warm` and `cold` share the planner's stage-1 primaries (method lp); "
    "`greedy` and `lp` are the planner's own plan, failover table, re-plan (replan_after) and "
    "failback with that method.",
]

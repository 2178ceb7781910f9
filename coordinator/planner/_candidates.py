"""Numpy view of a problem and the pruned candidate lists of both stages.

A candidate is one way to place one app: (app, variant, server) for a primary, plus a kind
(hot, warm or cold) for a backup. Candidates are generated with array operations per model family,
pruned before any solver sees them (SLO, memory, compute, disk, failure domain, variants
dominated on that server, backups worth nothing), and kept sorted by app so that each app's
options are one contiguous segment.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from coordinator.planner.placement import Assign, Backup, Kind
from coordinator.planner.problem import Problem

FArr = npt.NDArray[np.float64]
IArr = npt.NDArray[np.int64]
BArr = npt.NDArray[np.bool_]

WARM, COLD, HOT = 0, 1, 2
KIND_NAME: dict[int, Kind] = {WARM: "warm", COLD: "cold", HOT: "hot"}
KIND_CODE = {name: code for code, name in KIND_NAME.items()}


class Index:
    """Arrays over servers, apps, variants and device classes of one problem."""

    def __init__(self, p: Problem) -> None:
        self.problem = p
        self.srv_ids = [s.id for s in p.servers]
        self.srv_pos = {s: i for i, s in enumerate(self.srv_ids)}
        self.S = len(self.srv_ids)
        self.srv_mem = np.array([s.memory_mb for s in p.servers], dtype=np.float64)
        self.srv_comp = np.array([s.compute_budget for s in p.servers], dtype=np.float64)
        self.srv_disk = np.array([s.disk_mb for s in p.servers], dtype=np.float64)
        self.dom_names = sorted({s.domain for s in p.servers})
        dom_pos = {d: i for i, d in enumerate(self.dom_names)}
        self.srv_dom = np.array([dom_pos[s.domain] for s in p.servers], dtype=np.int64)
        self.F = len(self.dom_names)
        classes = sorted({s.device_class for s in p.servers})
        cls_pos = {c: i for i, c in enumerate(classes)}
        self.srv_cls = np.array([cls_pos[s.device_class] for s in p.servers], dtype=np.int64)

        self.var_names = [v.name for v in p.variants]
        self.var_pos = {v: i for i, v in enumerate(self.var_names)}
        self.V = len(self.var_names)
        fam_names = sorted({v.family for v in p.variants})
        self.fam_pos = {f: i for i, f in enumerate(fam_names)}
        self.var_fam = np.array([self.fam_pos[v.family] for v in p.variants], dtype=np.int64)
        self.var_acc = np.array([v.accuracy for v in p.variants], dtype=np.float64)
        self.var_file = np.array([v.file_size_mb for v in p.variants], dtype=np.float64)
        self.fam_vars: list[IArr] = [
            np.array(
                sorted(np.flatnonzero(self.var_fam == f), key=lambda i: self.var_acc[i]),
                dtype=np.int64,
            )
            for f in range(len(fam_names))
        ]

        self.app_ids = [a.id for a in p.apps]
        self.app_pos = {a: i for i, a in enumerate(self.app_ids)}
        self.A = len(self.app_ids)
        self.app_fam = np.array([self.fam_pos[a.family] for a in p.apps], dtype=np.int64)
        self.app_rate = np.array([a.rate_fps for a in p.apps], dtype=np.float64)
        self.app_slo = np.array([a.slo_ms for a in p.apps], dtype=np.float64)
        self.app_w = np.array([a.weight for a in p.apps], dtype=np.float64)
        self.app_crit = np.array([a.protected_warm for a in p.apps], dtype=np.bool_)
        self.app_hot = np.array([a.hot for a in p.apps], dtype=np.bool_)
        self.fam_apps: list[IArr] = [
            np.flatnonzero(self.app_fam == f).astype(np.int64) for f in range(len(fam_names))
        ]

        C = len(classes)
        self.c_mem = np.full((C, self.V), np.nan)
        self.c_lat = np.full((C, self.V), np.nan)
        self.c_restore = np.full((C, self.V), np.nan)
        for (vname, dc), c in p.costs.items():
            if dc in cls_pos and vname in self.var_pos:
                ci, vi = cls_pos[dc], self.var_pos[vname]
                self.c_mem[ci, vi] = c.memory_mb
                self.c_lat[ci, vi] = c.latency_ms
                self.c_restore[ci, vi] = c.restore_ms
        self.on_disk = np.zeros((self.S, self.V), dtype=np.bool_)
        for si, s in enumerate(p.servers):
            for vname in s.models_on_disk:
                vi = self.var_pos.get(vname, -1)
                if vi >= 0:
                    self.on_disk[si, vi] = True

    def server_table(self, vars_f: IArr, table: FArr) -> FArr:
        """(S, Vf) costs of the family's variants on every server, NaN where unknown."""
        out: FArr = table[self.srv_cls][:, vars_f]
        return out


@dataclass
class Cands:
    """Candidates of one stage, sorted by app; ``starts[a]:starts[a+1]`` is app a's segment."""

    app: IArr
    var: IArr
    srv: IArr
    kind: IArr  # HOT / WARM / COLD for backups, WARM (0) for primaries
    dom: IArr  # failure domain of the app's primary (backups), -1 for primaries
    first: IArr  # cold backups: variant loaded first (ladder), -1: none
    score: FArr  # what the solver maximizes: value + preference bonuses
    value: FArr  # the objective's term
    mem: FArr
    comp: FArr
    disk: FArr
    starts: IArr

    def __len__(self) -> int:
        return len(self.app)

    def seg(self, a: int) -> slice:
        return slice(int(self.starts[a]), int(self.starts[a + 1]))


def _empty(A: int) -> Cands:
    z = np.zeros(0, dtype=np.int64)
    f = np.zeros(0, dtype=np.float64)
    return Cands(z, z, z, z, z, z, f, f, f, f, f, np.zeros(A + 1, dtype=np.int64))


def _dominated(gain: list[FArr], cost: list[FArr]) -> BArr:
    """(S, Vf): True where another variant on that server is as good in every respect (higher
    gain, lower cost) and better in one, or identical with a lower index. NaN never dominates."""
    S, Vf = gain[0].shape
    out = np.zeros((S, Vf), dtype=np.bool_)
    for j in range(Vf):
        for i in range(Vf):
            if i == j:
                continue
            ge = np.ones(S, dtype=np.bool_)
            strict = np.zeros(S, dtype=np.bool_)
            for g in gain:
                ge &= g[:, i] >= g[:, j]
                strict |= g[:, i] > g[:, j]
            for c in cost:
                ge &= c[:, i] <= c[:, j]
                strict |= c[:, i] < c[:, j]
            out[:, j] |= ge & (strict | (i < j))
    return out


def _finish(parts: list[dict[str, npt.NDArray[np.generic]]], A: int) -> Cands:
    if not parts:
        return _empty(A)
    cat = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    # Each family's block is already app-major: a stable sort merges the blocks cheaply.
    order = np.argsort(cat["app"], kind="stable")
    c = {k: v[order] for k, v in cat.items()}
    app = c["app"].astype(np.int64, copy=False)
    starts = np.searchsorted(app, np.arange(A + 1)).astype(np.int64)

    def i64(k: str) -> IArr:
        return c[k].astype(np.int64, copy=False)

    def f64(k: str) -> FArr:
        return c[k].astype(np.float64, copy=False)

    return Cands(
        app=app,
        var=i64("var"),
        srv=i64("srv"),
        kind=i64("kind"),
        dom=i64("dom"),
        first=i64("first"),
        score=f64("score"),
        value=f64("value"),
        mem=f64("mem"),
        comp=f64("comp"),
        disk=f64("disk"),
        starts=starts,
    )


def _sticky_arrays(ix: Index, sticky: Mapping[str, Assign] | None) -> tuple[IArr, IArr]:
    srv = np.full(ix.A, -1, dtype=np.int64)
    var = np.full(ix.A, -1, dtype=np.int64)
    for app, a in (sticky or {}).items():
        ai = ix.app_pos.get(app, -1)
        if ai >= 0 and a.server in ix.srv_pos and a.variant in ix.var_pos:
            srv[ai], var[ai] = ix.srv_pos[a.server], ix.var_pos[a.variant]
    return srv, var


def primary_candidates(
    ix: Index,
    cap_mem: FArr,
    cap_comp: FArr,
    cap_disk: FArr,
    sticky: Mapping[str, Assign] | None = None,
) -> Cands:
    k = ix.problem.knobs
    st_srv, st_var = _sticky_arrays(ix, sticky)
    parts: list[dict[str, npt.NDArray[np.generic]]] = []
    for f, vars_f in enumerate(ix.fam_vars):
        apps_f = ix.fam_apps[f]
        if len(apps_f) == 0 or ix.S == 0:
            continue
        mem = ix.server_table(vars_f, ix.c_mem)
        lat = ix.server_table(vars_f, ix.c_lat)
        fcost = np.where(ix.on_disk[:, vars_f], 0.0, ix.var_file[vars_f][None, :])
        acc = np.broadcast_to(ix.var_acc[vars_f][None, :], mem.shape)
        with np.errstate(invalid="ignore"):
            ok = (
                np.isfinite(lat)
                & (mem <= cap_mem[:, None])
                & (fcost <= cap_disk[:, None])
                & ~_dominated([acc], [mem, lat, fcost])
            )
            latT = lat.T[None, :, :]  # (1, Vf, S)
            rate = ix.app_rate[apps_f][:, None, None]
            m = (
                ok.T[None, :, :]
                & (latT <= ix.app_slo[apps_f][:, None, None])
                & (rate * latT / 1000.0 <= cap_comp[None, None, :])
            )
        ai, vi, si = np.nonzero(m)
        app = apps_f[ai]
        var = vars_f[vi]
        w = ix.app_w[app]
        value = w * ix.var_acc[var]
        bonus = w * k.placement_bonus + np.where(
            (st_srv[app] == si) & (st_var[app] == var), w * k.stickiness, 0.0
        )
        n = len(app)
        parts.append(
            {
                "app": app,
                "var": var,
                "srv": si.astype(np.int64),
                "kind": np.zeros(n, dtype=np.int64),
                "dom": np.full(n, -1, dtype=np.int64),
                "first": np.full(n, -1, dtype=np.int64),
                "score": value + bonus,
                "value": value,
                "mem": mem[si, vi],
                "comp": ix.app_rate[app] * lat[si, vi] / 1000.0,
                "disk": fcost[si, vi],
            }
        )
    return _finish(parts, ix.A)


def _ladder_base(mem: FArr, lat: FArr, restore: FArr) -> IArr:
    """(S, Vf) index of the variant to load first for a cold backup of each variant: the one
    that restores service soonest among those no larger and no slower; -1 if none beats it."""
    S, Vf = mem.shape
    best = np.full((S, Vf), -1, dtype=np.int64)
    best_t = restore.copy()
    with np.errstate(invalid="ignore"):
        for j in range(Vf):
            for i in range(Vf):
                if i == j:
                    continue
                better = (
                    (mem[:, i] <= mem[:, j])
                    & (lat[:, i] <= lat[:, j])
                    & (restore[:, i] < best_t[:, j])
                )
                best[better, j] = i
                best_t[better, j] = restore[better, i]
    return best


def backup_candidates(
    ix: Index,
    prim_srv: IArr,
    cap_mem: FArr,
    cap_comp: FArr,
    cap_disk: FArr,
    sticky: Mapping[str, Backup] | None = None,
) -> Cands:
    """Backups of the placed apps (``prim_srv[a] >= 0``), capacities left after primaries."""
    k = ix.problem.knobs
    st_srv = np.full(ix.A, -1, dtype=np.int64)
    st_var = np.full(ix.A, -1, dtype=np.int64)
    st_kind = np.full(ix.A, -1, dtype=np.int64)
    for app_id, bk in (sticky or {}).items():
        pos = ix.app_pos.get(app_id, -1)
        if pos >= 0 and bk.server in ix.srv_pos and bk.variant in ix.var_pos:
            st_srv[pos], st_var[pos] = ix.srv_pos[bk.server], ix.var_pos[bk.variant]
            st_kind[pos] = KIND_CODE[bk.kind]
    app_dom = np.where(prim_srv >= 0, ix.srv_dom[np.maximum(prim_srv, 0)], -1)
    base_mttr = k.detection_ms + k.reroute_ms
    parts: list[dict[str, npt.NDArray[np.generic]]] = []
    for f, vars_f in enumerate(ix.fam_vars):
        apps_f = ix.fam_apps[f]
        apps_f = apps_f[prim_srv[apps_f] >= 0]
        if len(apps_f) == 0 or ix.S == 0:
            continue
        mem = ix.server_table(vars_f, ix.c_mem)
        lat = ix.server_table(vars_f, ix.c_lat)
        restore = ix.server_table(vars_f, ix.c_restore)
        fcost = np.where(ix.on_disk[:, vars_f], 0.0, ix.var_file[vars_f][None, :])
        acc = np.broadcast_to(ix.var_acc[vars_f][None, :], mem.shape)
        if k.prestage_ladder:
            base = _ladder_base(mem, lat, restore)
            srows = np.arange(ix.S)[:, None]
            extra = np.where(base >= 0, fcost[srows, np.maximum(base, 0)], 0.0)
        else:
            base = np.full(mem.shape, -1, dtype=np.int64)
            extra = np.zeros(mem.shape)
        cold_fcost = fcost + extra
        # A cold backup with a ladder restores service with its first rung: that is its MTTR.
        srows_all = np.arange(ix.S)[:, None]
        restore_c = np.where(base >= 0, restore[srows_all, np.maximum(base, 0)], restore)
        val_w = acc - k.mttr_weight * base_mttr
        val_c = acc - k.mttr_weight * (base_mttr + restore_c)
        with np.errstate(invalid="ignore"):
            fits = np.isfinite(lat) & (mem <= cap_mem[:, None])
            okw = (
                fits
                & (fcost <= cap_disk[:, None])
                & (val_w > 0)
                & ~_dominated([acc], [mem, lat, fcost])
            )
            okc = (
                fits
                & (cold_fcost <= cap_disk[:, None])
                & (val_c > 0)
                & ~_dominated([acc], [mem, lat, cold_fcost, restore_c])
            )
            latT = lat.T[None, :, :]
            rate = ix.app_rate[apps_f][:, None, None]
            common = (
                (ix.srv_dom[None, None, :] != app_dom[apps_f][:, None, None])
                & (latT <= ix.app_slo[apps_f][:, None, None])
                & (rate * latT / 1000.0 <= cap_comp[None, None, :])
            )
        # Hot: as warm (loaded), only for apps that ask for it; its compute runs all the time.
        hot_ok = common & okw.T[None, :, :] & ix.app_hot[apps_f][:, None, None]
        m = np.stack([common & okw.T[None, :, :], common & okc.T[None, :, :], hot_ok], axis=1)
        ai, ki, vi, si = np.nonzero(m)
        app = apps_f[ai]
        var = vars_f[vi]
        w = ix.app_w[app]
        cold = ki == COLD
        hot = ki == HOT
        # A hot backup saves the wait for the next frame and the inference (Problem.mttr_ms).
        saved = 500.0 / ix.app_rate[app] + lat[si, vi]
        val_h = acc[si, vi] - k.mttr_weight * np.maximum(base_mttr - saved, 0.0)
        value = w * np.where(cold, val_c[si, vi], np.where(hot, val_h, val_w[si, vi]))
        bonus = (
            np.where(~cold & ix.app_crit[app], w * k.critical_bonus, 0.0)
            + np.where(hot, w * k.hot_bonus, 0.0)
        ) + np.where(
            (st_srv[app] == si) & (st_var[app] == var) & (st_kind[app] == ki),
            w * k.stickiness,
            0.0,
        )
        b = base[si, vi]
        parts.append(
            {
                "app": app,
                "var": var,
                "srv": si.astype(np.int64),
                "kind": ki.astype(np.int64),
                "dom": app_dom[app],
                "first": np.where(cold & (b >= 0), vars_f[np.maximum(b, 0)], -1),
                "score": value + bonus,
                "value": value,
                "mem": mem[si, vi],
                "comp": ix.app_rate[app] * lat[si, vi] / 1000.0,
                "disk": np.where(cold, cold_fcost[si, vi], fcost[si, vi]),
            }
        )
    return _finish(parts, ix.A)


# -- capacity bookkeeping for rounding and greedy --------------------------------------------

_TOL = 1e-9


class PrimaryState:
    """Memory, compute and disk used per server by the primaries chosen so far."""

    def __init__(self, c: Cands, cap_mem: FArr, cap_comp: FArr, cap_disk: FArr) -> None:
        self.c = c
        self.cap = (cap_mem, cap_comp, cap_disk)
        S = len(cap_mem)
        self.mem = np.zeros(S)
        self.comp = np.zeros(S)
        self.disk = np.zeros(S)

    def fits(self, j: int) -> bool:
        c, s = self.c, int(self.c.srv[j])
        cm, cc, cd = self.cap
        return bool(
            self.mem[s] + c.mem[j] <= cm[s] * (1 + _TOL) + _TOL
            and self.comp[s] + c.comp[j] <= cc[s] * (1 + _TOL) + _TOL
            and self.disk[s] + c.disk[j] <= cd[s] * (1 + _TOL) + _TOL
        )

    def fits_many(self, J: IArr) -> BArr:
        c = self.c
        s = c.srv[J]
        cm, cc, cd = self.cap
        out: BArr = (
            (self.mem[s] + c.mem[J] <= cm[s] * (1 + _TOL) + _TOL)
            & (self.comp[s] + c.comp[J] <= cc[s] * (1 + _TOL) + _TOL)
            & (self.disk[s] + c.disk[J] <= cd[s] * (1 + _TOL) + _TOL)
        )
        return out

    def free_mem(self, J: IArr) -> FArr:
        s = self.c.srv[J]
        out: FArr = self.cap[0][s] - self.mem[s]
        return out

    def add(self, j: int, sign: float = 1.0) -> None:
        c, s = self.c, int(self.c.srv[j])
        self.mem[s] += sign * c.mem[j]
        self.comp[s] += sign * c.comp[j]
        self.disk[s] += sign * c.disk[j]

    def remove(self, j: int) -> None:
        self.add(j, -1.0)


class BackupState:
    """Per server: loaded (hot and warm) memory, the compute hot backups spend all the time,
    and per (failure domain, server) the cold memory and the compute that the domain's failure
    would activate there; plus disk."""

    def __init__(self, c: Cands, F: int, cap_mem: FArr, cap_comp: FArr, cap_disk: FArr) -> None:
        self.c = c
        self.cap = (cap_mem, cap_comp, cap_disk)
        S = len(cap_mem)
        self.warm = np.zeros(S)
        self.cold = np.zeros((max(F, 1), S))
        self.max_cold = np.zeros(S)
        self.hot_comp = np.zeros(S)
        self.comp = np.zeros((max(F, 1), S))
        self.max_comp = np.zeros(S)
        self.disk = np.zeros(S)

    def _other(self, J: IArr) -> tuple[FArr, FArr]:
        """Memory and compute already promised on each candidate's server, in the worst case
        it must fit beside: loaded backups beside any one domain's cold ones, hot compute
        beside any one domain's failover compute."""
        c = self.c
        s, f, k = c.srv[J], c.dom[J], c.kind[J]
        mem = self.warm[s] + np.where(k == COLD, self.cold[f, s], self.max_cold[s])
        comp = self.hot_comp[s] + np.where(k == HOT, self.max_comp[s], self.comp[f, s])
        return mem, comp

    def fits(self, j: int) -> bool:
        return bool(self.fits_many(np.array([j], dtype=np.int64))[0])

    def fits_many(self, J: IArr) -> BArr:
        c = self.c
        s = c.srv[J]
        cm, cc, cd = self.cap
        mem, comp = self._other(J)
        out: BArr = (
            (mem + c.mem[J] <= cm[s] * (1 + _TOL) + _TOL)
            & (comp + c.comp[J] <= cc[s] * (1 + _TOL) + _TOL)
            & (self.disk[s] + c.disk[J] <= cd[s] * (1 + _TOL) + _TOL)
        )
        return out

    def free_mem(self, J: IArr) -> FArr:
        s = self.c.srv[J]
        out: FArr = self.cap[0][s] - self._other(J)[0]
        return out

    def add(self, j: int, sign: float = 1.0) -> None:
        c = self.c
        s, f, k = int(c.srv[j]), int(c.dom[j]), int(c.kind[j])
        if k == COLD:
            self.cold[f, s] += sign * c.mem[j]
            self.max_cold[s] = float(self.cold[:, s].max())
        else:
            self.warm[s] += sign * c.mem[j]
        if k == HOT:
            self.hot_comp[s] += sign * c.comp[j]
        else:
            self.comp[f, s] += sign * c.comp[j]
            self.max_comp[s] = float(self.comp[:, s].max())
        self.disk[s] += sign * c.disk[j]

    def remove(self, j: int) -> None:
        self.add(j, -1.0)

"""The two-stage placement: primaries, then backups; LP + rounding, exact MILP, or greedy.

Stage 1 gives every app one (server, variant) maximizing weighted accuracy within memory,
compute and SLOs. Stage 2 gives each placed app at most one backup, warm (loaded) or cold (on
disk), outside its primary's failure domain, such that for every failure domain the backups it
would activate fit the memory and compute left on each surviving server (DESIGN.md §5).

Preferences are bonuses in the solver's score: placing an app at all, a warm backup for a
critical app, keeping an app where it is on a re-plan. Reports give the objective without them,
and the bound as ``LP bound - bonuses of the returned plan``: an upper bound on the objective of
any plan that earns at least the same bonuses (the same apps placed, as many critical apps warm).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np

from coordinator.planner import _lp
from coordinator.planner._candidates import (
    COLD,
    HOT,
    KIND_NAME,
    WARM,
    BackupState,
    Cands,
    FArr,
    IArr,
    Index,
    PrimaryState,
    backup_candidates,
    primary_candidates,
)
from coordinator.planner.placement import Assign, Backup, Placement, StageReport
from coordinator.planner.problem import InfeasibleError, Problem

Method = Literal["lp", "milp", "greedy"]
_State = PrimaryState | BackupState


@dataclass(frozen=True, slots=True)
class Options:
    """Solver settings (the objective's weights are in :class:`Knobs`)."""

    full_lp_max_columns: int = 2000  # up to this many candidates the LP takes all of them
    top_k: int = 2  # otherwise: servers per app in the first restricted LP
    pricing_rounds: int = 1  # LP re-solves adding left-out columns with positive reduced cost
    pricing_per_app: int = 2
    # ... unless the bound is already within this share of the objective of the best plan.
    pricing_tol: float = 0.002
    incumbent: bool = True  # keep the greedy plan if rounding ends up below it
    improve: bool = True  # local search after rounding: single moves, ejection chains
    eject_budget: int = 20_000  # pushes tried by ejection chains, per stage
    restarts: int = 4  # instances of at most 16 apps: random-order restarts of the search
    milp_time_limit_s: float = 120.0
    seed: int = 0  # jitter of the top-k server choice (deterministic)


@dataclass(frozen=True, slots=True)
class _Outcome:
    choice: IArr  # candidate index per app, -1: none
    report: StageReport


def _picked_score(c: Cands, choice: IArr) -> tuple[float, float]:
    j = choice[choice >= 0]
    return float(c.score[j].sum()), float(c.value[j].sum())


# -- selection heuristics --------------------------------------------------------------------


def _greedy(
    c: Cands, st: _State, order: IArr, acc: FArr, kinds: Callable[[int], tuple[int, ...]]
) -> IArr:
    """FailLite-style: per app in ``order``, the most accurate option that fits (then the
    server with the most free memory), trying kinds in the order ``kinds(app)`` gives."""
    choice = np.full(len(c.starts) - 1, -1, dtype=np.int64)
    for a in order:
        seg = c.seg(int(a))
        if seg.start == seg.stop:
            continue
        J = np.arange(seg.start, seg.stop)
        for kind in kinds(int(a)):
            Jk = J[c.kind[J] == kind]
            if len(Jk) == 0:
                continue
            Jk = Jk[st.fits_many(Jk)]
            if len(Jk) == 0:
                continue
            j = int(Jk[np.lexsort((st.free_mem(Jk), acc[Jk]))[-1]])
            st.add(j)
            choice[a] = j
            break
    return choice


def _round(c: Cands, x: FArr, st: _State, fill_order: IArr) -> IArr:
    """Each app takes its largest LP fraction that still fits (apps with the surest fractions
    first), else its next fractions; apps left over get the best option that fits."""
    A = len(c.starts) - 1
    choice = np.full(A, -1, dtype=np.int64)
    nonempty = np.flatnonzero(c.starts[1:] > c.starts[:-1])
    xa = np.zeros(A)
    if len(nonempty):
        xa[nonempty] = np.maximum.reduceat(x, c.starts[nonempty])
    sa = np.zeros(A)
    if len(nonempty):
        sa[nonempty] = np.maximum.reduceat(c.score, c.starts[nonempty])
    for a in np.lexsort((-sa, -np.round(xa, 6))):
        if xa[a] <= 1e-6:
            break
        seg = c.seg(int(a))
        J = np.arange(seg.start, seg.stop)
        J = J[x[J] > 1e-6]
        for j in J[np.argsort(-x[J], kind="stable")]:
            if st.fits(int(j)):
                st.add(int(j))
                choice[a] = j
                break
    _fill(c, st, choice, fill_order)
    return choice


def _fill(c: Cands, st: _State, choice: IArr, order: IArr) -> None:
    for a in order:
        if choice[a] >= 0:
            continue
        seg = c.seg(int(a))
        if seg.start == seg.stop:
            continue
        J = np.arange(seg.start, seg.stop)
        J = J[st.fits_many(J)]
        if len(J):
            j = int(J[np.argmax(c.score[J])])
            st.add(j)
            choice[a] = j


def _improve(c: Cands, st: _State, choice: IArr, order: IArr, passes: int = 3) -> None:
    """Single-app moves: each app takes its best option that fits beside the rest; repeated
    while a pass changes something (a move can free room for an app seen earlier)."""
    nonempty = np.flatnonzero(c.starts[1:] > c.starts[:-1])
    best = np.full(len(choice), -np.inf)
    if len(nonempty):
        best[nonempty] = np.maximum.reduceat(c.score, c.starts[nonempty])
    for _ in range(passes):
        moved = False
        for a in order:
            cur = int(choice[a])
            if not np.isfinite(best[a]) or (cur >= 0 and c.score[cur] >= best[a] - 1e-9):
                continue
            if cur >= 0:
                st.remove(cur)
            seg = c.seg(int(a))
            J = np.arange(seg.start, seg.stop)
            J = J[st.fits_many(J)]
            if len(J) == 0:
                if cur >= 0:  # cannot happen (it fitted before), but never lose an option
                    st.add(cur)
                continue
            j = int(J[np.argmax(c.score[J])])
            st.add(j)
            if j != cur and (cur < 0 or c.score[j] > c.score[cur] + 1e-9):
                moved = True
            choice[a] = j
        if not moved:
            return


def _eject(
    c: Cands, st: _State, choice: IArr, order: IArr, budget: int, depth: int, per_app: int = 0
) -> None:
    """Ejection chains, for what single moves cannot fix: an app takes a better option on a
    server by pushing an app there to its best other option, which may push a third one
    (``depth`` pushes at most). A chain is applied when the total score rises. ``budget``
    caps the number of pushes tried, so that large instances stay fast; ``per_app`` (if set)
    caps them per app, so that one app with many hopeless options does not use them all."""
    on_server: dict[int, set[int]] = {}
    for a in range(len(choice)):
        if choice[a] >= 0:
            on_server.setdefault(int(c.srv[choice[a]]), set()).add(a)
    tries = 0
    limit = budget
    Moves = list[tuple[int, int]]

    def place(a: int, j: int) -> None:
        if choice[a] >= 0:
            st.remove(int(choice[a]))
            on_server[int(c.srv[choice[a]])].discard(a)
        choice[a] = j
        if j >= 0:
            st.add(j)
            on_server.setdefault(int(c.srv[j]), set()).add(a)

    def top(a: int, above: float, n: int) -> list[int]:
        """The app's n best options above a score, the best one of each server first (pushes
        happen per server, so trying many servers matters more than many variants)."""
        seg = c.seg(a)
        J = np.arange(seg.start, seg.stop)
        J = J[c.score[J] > above + 1e-9]
        J = J[np.argsort(-c.score[J], kind="stable")]
        _, first = np.unique(c.srv[J], return_index=True)
        lead = np.zeros(len(J), dtype=np.bool_)
        lead[first] = True
        J = np.concatenate([J[lead], J[~lead]])
        return [int(j) for j in J[:n]]

    def reinsert(a: int, depth: int) -> tuple[float, Moves]:
        """Best (score change, moves) giving the unplaced app ``a`` an option."""
        seg = c.seg(a)
        J = np.arange(seg.start, seg.stop)
        J = J[st.fits_many(J)]
        best: tuple[float, Moves] = (0.0, [])
        if len(J):
            j = int(J[np.argmax(c.score[J])])
            best = (float(c.score[j]), [(a, j)])
        if depth <= 0:
            return best
        for j in top(a, best[0], 10 if depth > 1 else 5):
            g, mv = insert(a, j, depth)
            if g > best[0] + 1e-9:
                best = (g, mv)
        return best

    def insert(a: int, j: int, depth: int) -> tuple[float, Moves]:
        """Place the unplaced app ``a`` on option ``j`` by pushing one app off j's server."""
        nonlocal tries
        best: tuple[float, Moves] = (-np.inf, [])
        for b in sorted(on_server.get(int(c.srv[j]), ()))[: 8 if depth > 1 else 6]:
            if tries >= limit:
                break
            tries += 1
            jb = int(choice[b])
            place(b, -1)
            if st.fits(j):
                place(a, j)
                g_b, mv_b = reinsert(b, depth - 1)
                g = float(c.score[j]) + g_b - float(c.score[jb])
                if g > best[0]:
                    best = (g, [(b, -1), (a, j), *mv_b])
                place(a, -1)
            place(b, jb)
        return best

    for a in (int(x) for x in order):
        if tries >= budget:
            return
        limit = min(budget, tries + per_app) if per_app else budget
        cur = int(choice[a])
        cur_score = float(c.score[cur]) if cur >= 0 else 0.0
        place(a, -1)
        g, mv = reinsert(a, depth)
        if g > cur_score + 1e-9:
            for app, j in mv:
                place(app, j)
        else:
            place(a, cur)


def _drop_refill(c: Cands, st: _State, choice: IArr, budget: int, depth: int) -> None:
    """Destroy and repair, for trades chains cannot see (one or two apps' options for others',
    a knapsack move): take the options of one app, or of two apps on one server, away; repair
    with ejection chains for every app without an option (the dropped ones last); keep the
    result when the total score rises. Pairs only on small instances (quadratic)."""
    empty = c.starts[1:] == c.starts[:-1]
    nonempty = np.flatnonzero(~empty)
    best = np.zeros(len(choice))
    dense = np.zeros(len(choice))
    if len(nonempty):
        # Per app: its best score, and the best score per MB of memory among its options.
        best[nonempty] = np.maximum.reduceat(c.score, c.starts[nonempty])
        per_mb = c.score / np.maximum(c.mem, 1e-9)
        dense[nonempty] = np.maximum.reduceat(per_mb, c.starts[nonempty])

    def attempt(drop: tuple[int, ...], key: FArr) -> bool:
        lacking = np.flatnonzero((choice < 0) & ~empty)
        if len(lacking) == 0:
            return False
        saved = choice.copy()
        before = float(c.score[saved[saved >= 0]].sum())
        for b in drop:
            st.remove(int(choice[b]))
            choice[b] = -1
        lacking = lacking[np.argsort(-key[lacking], kind="stable")]
        _eject(c, st, choice, np.append(lacking, drop), 2000, depth, per_app=150)
        after = float(c.score[choice[choice >= 0]].sum())
        if after > before + 1e-9:
            return True
        for j in choice[choice >= 0]:
            st.remove(int(j))
        choice[:] = saved
        for j in choice[choice >= 0]:
            st.add(int(j))
        return False

    def attempts(drop: tuple[int, ...]) -> None:
        # Repair in knapsack order (score per MB) first, then by score.
        if not attempt(drop, dense):
            attempt(drop, best)

    by_score = np.argsort(np.where(choice >= 0, c.score[np.maximum(choice, 0)], np.inf))
    tries = 0
    for b in (int(x) for x in by_score):
        if choice[b] >= 0 and tries < budget:
            tries += 1
            attempts((b,))
    if len(choice) > 16:
        return
    for b1 in range(len(choice)):
        for b2 in range(b1 + 1, len(choice)):
            if tries >= budget:
                return
            j1, j2 = int(choice[b1]), int(choice[b2])
            if j1 >= 0 and j2 >= 0 and c.srv[j1] == c.srv[j2]:
                tries += 1
                attempts((b1, b2))


def _polish(c: Cands, st: _State, choice: IArr, order: IArr, big: FArr, budget: int) -> None:
    """Single moves; then ejection chains and destroy-repair. Small instances search every app
    below its best option; larger ones only apps without an option or missing a preference
    bonus (a shortfall above ``big``), where the search pays for itself."""
    _improve(c, st, choice, order)
    if budget <= 0:
        return
    nonempty = np.flatnonzero(c.starts[1:] > c.starts[:-1])
    best = np.zeros(len(choice))
    if len(nonempty):
        best[nonempty] = np.maximum.reduceat(c.score, c.starts[nonempty])
    cur = np.where(choice >= 0, c.score[np.maximum(choice, 0)], 0.0)
    small = len(choice) <= 50
    short = best - cur > (1e-9 if small else big)
    short &= c.starts[1:] > c.starts[:-1]
    if not short.any():
        return
    todo = np.flatnonzero(short)
    depth = 2 if small else 1
    worst_first = todo[np.argsort(-(best - cur)[todo], kind="stable")]
    _eject(c, st, choice, worst_first, budget, depth, per_app=max(200, budget // len(todo)))
    _improve(c, st, choice, order)
    if small:
        _drop_refill(c, st, choice, budget // 200, depth)
        _improve(c, st, choice, order)


def _restricted(ix: Index, c: Cands, server_score: FArr, k: int, seed: int) -> IArr:
    """Columns of each app on its k best-scored eligible servers (score x random jitter, so
    that apps do not all pick the same few servers)."""
    rng = np.random.default_rng(seed)
    elig = np.zeros((ix.A, ix.S), dtype=np.bool_)
    elig[c.app, c.srv] = True
    score = np.where(elig, server_score[None, :] * rng.uniform(0.5, 1.5, (ix.A, ix.S)), -np.inf)
    kk = min(k, ix.S)
    top = np.argpartition(-score, kk - 1, axis=1)[:, :kk]
    sel = np.zeros_like(elig)
    sel[np.arange(ix.A)[:, None], top] = True
    sel &= elig
    out: IArr = np.flatnonzero(sel[c.app, c.srv])
    return out


def _run_stage(
    stage: Literal["primaries", "backups"],
    ix: Index,
    c: Cands,
    fams: list[_lp.RowFamily],
    aux: _lp.AuxColumns | None,
    new_state: Callable[[], _State],
    greedy: Callable[[_State], IArr],
    server_score: FArr,
    method: Method,
    opts: Options,
    t_start: float,
    build_s: float,
) -> _Outcome:
    order = np.lexsort((-ix.app_w, ~ix.app_crit)).astype(np.int64)  # critical, then heavy
    k = ix.problem.knobs
    big = 0.5 * min(k.placement_bonus, k.critical_bonus) * ix.app_w
    if len(c) == 0 or method == "greedy":
        choice = greedy(new_state())
        score, value = _picked_score(c, choice)
        total = time.perf_counter() - t_start
        exact = len(c) == 0 and method != "greedy"  # nothing to place: 0 is optimal
        return _Outcome(
            choice,
            StageReport(
                stage,
                method,
                value,
                0.0 if exact else None,
                0.0 if exact else None,
                "empty" if len(c) == 0 else "greedy",
                build_s=build_s,
                round_s=total - build_s,
                total_s=total,
                candidates=len(c),
            ),
        )
    if method == "milp":
        rel = _lp.exact(c, fams, aux, opts.milp_time_limit_s)
        t_r = time.perf_counter()
        choice = np.full(ix.A, -1, dtype=np.int64)
        on = np.flatnonzero(rel.x > 0.5)
        choice[c.app[on]] = on
        score, value = _picked_score(c, choice)
        exact = rel.status == "optimal"
        bound = rel.bound - (score - value) if exact else None
        total = time.perf_counter() - t_start
        return _Outcome(
            choice,
            StageReport(
                stage,
                method,
                value,
                bound,
                0.0 if exact else None,
                "milp",
                build_s=build_s + rel.build_s,
                solve_s=rel.solve_s,
                round_s=time.perf_counter() - t_r,
                total_s=total,
                candidates=len(c),
                columns=rel.columns,
                rows=rel.rows,
                status=rel.status,
                score=score,
                score_bound=rel.bound if exact else None,
                score_gap=0.0 if exact else None,
            ),
        )
    # LP relaxation + rounding, against the greedy plan (improved) as incumbent.
    g_choice: IArr | None = None
    g_score = g_value = -np.inf
    if opts.incumbent:
        gst = new_state()
        g_choice = greedy(gst)
        if opts.improve:
            _polish(c, gst, g_choice, order, big, opts.eject_budget)
        g_score, g_value = _picked_score(c, g_choice)
    if len(c) <= opts.full_lp_max_columns:
        J0 = np.arange(len(c))
    else:
        J0 = _restricted(ix, c, server_score, opts.top_k, opts.seed)
        if g_choice is not None:  # the restricted LP then contains the incumbent
            J0 = np.union1d(J0, g_choice[g_choice >= 0])
    rel = _lp.relax(
        c, fams, aux, J0, pricing_rounds=opts.pricing_rounds, per_app=opts.pricing_per_app,
        incumbent=g_score, good_enough=opts.pricing_tol * abs(g_value) if opts.incumbent else 0.0,
    )  # fmt: skip
    t_r = time.perf_counter()
    st = new_state()
    choice = _round(c, rel.x, st, order)
    if opts.improve:
        _polish(c, st, choice, order, big, opts.eject_budget)
    picked = "lp-rounded"
    score, value = _picked_score(c, choice)
    if g_choice is not None and g_score > score + 1e-9:
        choice, score, value, picked = g_choice, g_score, g_value, "greedy-incumbent"
    if opts.improve and ix.A <= 16:
        # Tiny instances are knapsacks where one app decides the score: a few random-order
        # restarts of fill + local search are cheap there and catch most packings it misses.
        rng = np.random.default_rng(opts.seed)
        for _ in range(opts.restarts):
            rst = new_state()
            perm = rng.permutation(ix.A).astype(np.int64)
            alt = np.full(ix.A, -1, dtype=np.int64)
            _fill(c, rst, alt, perm)
            _polish(c, rst, alt, perm, big, opts.eject_budget // 20)
            a_score, a_value = _picked_score(c, alt)
            if a_score > score + 1e-9:
                choice, score, value, picked = alt, a_score, a_value, "restart"
    bound = rel.bound - (score - value)
    gap = (bound - value) / abs(bound) if abs(bound) > 1e-12 else 0.0
    score_gap = (rel.bound - score) / abs(rel.bound) if abs(rel.bound) > 1e-12 else 0.0
    total = time.perf_counter() - t_start
    return _Outcome(
        choice,
        StageReport(
            stage, method, value, bound, gap, picked,
            build_s=build_s + rel.build_s, solve_s=rel.solve_s,
            round_s=time.perf_counter() - t_r, total_s=total, candidates=len(c),
            columns=rel.columns, rows=rel.rows, lp_value=rel.lp_value, pricing_rounds=rel.rounds,
            status=rel.status, score=score, score_bound=rel.bound, score_gap=score_gap,
        ),
    )  # fmt: skip


# -- stage 1 ---------------------------------------------------------------------------------


def _why_unplaced(ix: Index, a: int, cap_mem: FArr, cap_comp: FArr, cap_disk: FArr) -> str:
    p = ix.problem
    app = p.apps[a]
    if ix.S == 0:
        return "no server is alive"
    vars_f = ix.fam_vars[int(ix.app_fam[a])]
    lat = ix.server_table(vars_f, ix.c_lat)
    mem = ix.server_table(vars_f, ix.c_mem)
    if not np.isfinite(lat).any():
        return f"no variant of family {app.family} is profiled for the alive servers' devices"
    with np.errstate(invalid="ignore"):
        slo_ok = lat <= app.slo_ms
        if not slo_ok.any():
            s, v = np.unravel_index(np.nanargmin(lat), lat.shape)
            return (
                f"no variant of family {app.family} meets the {app.slo_ms:g} ms SLO on an alive "
                f"server (fastest: {ix.var_names[vars_f[v]]}, {lat[s, v]:.2f} ms on "
                f"{ix.srv_ids[s]})"
            )
        mem_ok = slo_ok & (mem <= cap_mem[:, None])
        if not mem_ok.any():
            need = float(np.nanmin(np.where(slo_ok, mem, np.nan)))
            return (
                f"no server has {need:.0f} MB of memory for the smallest variant of "
                f"{app.family} that meets the SLO (largest: {float(cap_mem.max()):.0f} MB)"
            )
        comp_ok = mem_ok & (app.rate_fps * lat / 1000.0 <= cap_comp[:, None])
        if not comp_ok.any():
            need = float(np.nanmin(np.where(mem_ok, app.rate_fps * lat / 1000.0, np.nan)))
            return (
                f"at {app.rate_fps:g} fps the lightest fitting variant of {app.family} needs "
                f"{need:.2f} of a device, more than any server's compute budget"
            )
    return "every server that could host it is full (memory, compute or disk)"


def plan_primaries(
    problem: Problem,
    method: Method = "lp",
    *,
    sticky: Mapping[str, Assign] | None = None,
    options: Options | None = None,
) -> tuple[dict[str, Assign], dict[str, str], StageReport]:
    """Stage 1: (primaries, unplaced app -> reason, report)."""
    opts = options or Options()
    t0 = time.perf_counter()
    ix = Index(problem)
    share = problem.knobs.primary_share
    cap_mem, cap_comp, cap_disk = ix.srv_mem * share, ix.srv_comp * share, ix.srv_disk
    c = primary_candidates(ix, cap_mem, cap_comp, cap_disk, sticky)
    fams = [
        _lp.RowFamily("mem", c.srv, c.mem, cap_mem),
        _lp.RowFamily("comp", c.srv, c.comp, cap_comp),
        _lp.RowFamily("disk", c.srv, c.disk, cap_disk),
    ]
    acc = ix.var_acc[c.var]
    w_order = np.argsort(-ix.app_w, kind="stable").astype(np.int64)

    def new_state() -> _State:
        return PrimaryState(c, cap_mem, cap_comp, cap_disk)

    def greedy(st: _State) -> IArr:
        return _greedy(c, st, w_order, acc, lambda a: (0,))

    def norm(v: FArr) -> FArr:
        fin = np.where(np.isfinite(v), v, np.nan)
        m = float(np.nanmean(fin)) if np.isfinite(fin).any() else 1.0
        return np.where(np.isfinite(v), v / (m or 1.0), 1.0)

    out = _run_stage(
        "primaries", ix, c, fams, None, new_state, greedy, norm(cap_mem) * norm(cap_comp),
        method, opts, t0, time.perf_counter() - t0,
    )  # fmt: skip
    primary: dict[str, Assign] = {}
    unplaced: dict[str, str] = {}
    for a in range(ix.A):
        j = int(out.choice[a])
        if j >= 0:
            primary[ix.app_ids[a]] = Assign(ix.srv_ids[c.srv[j]], ix.var_names[c.var[j]])
        else:
            unplaced[ix.app_ids[a]] = _why_unplaced(ix, a, cap_mem, cap_comp, cap_disk)
    return primary, unplaced, out.report


# -- stage 2 ---------------------------------------------------------------------------------


def plan_backups(
    problem: Problem,
    primary: Mapping[str, Assign],
    method: Method = "lp",
    *,
    sticky: Mapping[str, Backup] | None = None,
    options: Options | None = None,
) -> tuple[dict[str, Backup], StageReport]:
    """Stage 2: at most one backup per placed app, given the primaries."""
    opts = options or Options()
    t0 = time.perf_counter()
    ix = Index(problem)
    used_mem = np.zeros(ix.S)
    used_comp = np.zeros(ix.S)
    used_disk = np.zeros(ix.S)
    prim_srv = np.full(ix.A, -1, dtype=np.int64)
    for app, p in primary.items():
        ai, si = ix.app_pos.get(app, -1), ix.srv_pos.get(p.server, -1)
        cost = problem.cost_on(p.variant, p.server) if si >= 0 else None
        if ai < 0 or cost is None:
            continue
        prim_srv[ai] = si
        used_mem[si] += cost.memory_mb
        used_comp[si] += ix.app_rate[ai] * cost.latency_ms / 1000.0
        if p.variant not in problem.server(p.server).models_on_disk:
            used_disk[si] += problem.variant(p.variant).file_size_mb
    cap_mem = np.maximum(ix.srv_mem - used_mem, 0.0)
    cap_comp = np.maximum(ix.srv_comp - used_comp, 0.0)
    cap_disk = np.maximum(ix.srv_disk - used_disk, 0.0)
    c = backup_candidates(ix, prim_srv, cap_mem, cap_comp, cap_disk, sticky)
    S, F = ix.S, max(ix.F, 1)
    loaded = c.kind != COLD
    hot = c.kind == HOT
    fkey = c.dom * S + c.srv
    fams = [
        # Σ loaded memory + K_s <= memory left, with K_s >= cold memory of each domain's apps:
        # one row per server instead of one per (domain, server) for every loaded column.
        _lp.RowFamily("warm_mem", np.where(loaded, c.srv, -1), c.mem, cap_mem, droppable=False),
        _lp.RowFamily("cold_mem", np.where(loaded, -1, fkey), c.mem, np.zeros(F * S), False),
        # The same for compute: hot backups run all the time, the others once their
        # primary's domain fails: Σ hot compute + L_s <= compute left, L_s >= each domain's.
        _lp.RowFamily("hot_comp", np.where(hot, c.srv, -1), c.comp, cap_comp, droppable=False),
        _lp.RowFamily("failover_comp", np.where(hot, -1, fkey), c.comp, np.zeros(F * S), False),
        _lp.RowFamily("disk", c.srv, c.disk, cap_disk),
    ]
    srv_all = np.arange(S, dtype=np.int64)
    fs_keys = np.repeat(np.arange(F), S) * S + np.tile(srv_all, F)
    aux = _lp.AuxColumns(
        ub=np.concatenate([cap_mem, cap_comp]),
        col=np.concatenate([srv_all, np.tile(srv_all, F), S + srv_all, S + np.tile(srv_all, F)]),
        fam=np.concatenate([np.zeros(S), np.ones(F * S), np.full(S, 2), np.full(F * S, 3)]).astype(
            np.int64
        ),
        key=np.concatenate([srv_all, fs_keys, srv_all, fs_keys]),
        coef=np.concatenate([np.ones(S), -np.ones(F * S), np.ones(S), -np.ones(F * S)]),
    )
    acc = ix.var_acc[c.var]
    crit_order = np.lexsort((-ix.app_w, ~ix.app_crit, ~ix.app_hot)).astype(np.int64)

    def new_state() -> _State:
        return BackupState(c, ix.F, cap_mem, cap_comp, cap_disk)

    def greedy(st: _State) -> IArr:
        return _greedy(
            c,
            st,
            crit_order,
            acc,
            lambda a: (
                (HOT, WARM, COLD) if ix.app_hot[a] else (WARM, COLD) if ix.app_crit[a] else (COLD,)
            ),
        )

    mean_mem = float(cap_mem.mean()) if S else 1.0
    mean_comp = float(cap_comp.mean()) if S else 1.0
    server_score = (cap_mem / (mean_mem or 1.0) + 1e-3) * (cap_comp / (mean_comp or 1.0) + 1e-3)
    out = _run_stage(
        "backups", ix, c, fams, aux, new_state, greedy, server_score, method, opts, t0,
        time.perf_counter() - t0,
    )  # fmt: skip
    backups: dict[str, Backup] = {}
    for a in range(ix.A):
        j = int(out.choice[a])
        if j < 0:
            continue
        kind = KIND_NAME[int(c.kind[j])]
        first = ix.var_names[c.first[j]] if c.first[j] >= 0 else None
        backups[ix.app_ids[a]] = Backup(ix.srv_ids[c.srv[j]], ix.var_names[c.var[j]], kind, first)
    return backups, out.report


# -- both ------------------------------------------------------------------------------------


def warm_up(method: Method = "lp") -> None:
    """Load the solver ``method`` needs now (importing it takes about a second), so that the
    first plan of a coordinator that just took over is not the one that pays for it."""
    if method != "greedy":
        _lp.warm_up()


def plan(
    problem: Problem,
    method: Method = "lp",
    *,
    sticky: Mapping[str, Assign] | None = None,
    sticky_backups: Mapping[str, Backup] | None = None,
    allow_unplaced: bool = True,
    options: Options | None = None,
) -> Placement:
    """Primaries then backups. ``sticky``: where apps run now (a re-plan keeps them there unless
    moving gains more than ``knobs.stickiness``). With ``allow_unplaced=False`` an app that
    cannot be placed raises :class:`InfeasibleError` naming it and why."""
    t0 = time.perf_counter()
    primary, unplaced, r1 = plan_primaries(problem, method, sticky=sticky, options=options)
    if unplaced and not allow_unplaced:
        raise InfeasibleError(
            "cannot place: " + "; ".join(f"app {a}: {why}" for a, why in sorted(unplaced.items()))
        )
    backups, r2 = plan_backups(problem, primary, method, sticky=sticky_backups, options=options)
    total = time.perf_counter() - t0
    value = r1.objective + r2.objective
    bound = None
    gap = None
    if r1.lp_bound is not None and r2.lp_bound is not None:
        bound = r1.lp_bound + r2.lp_bound
        gap = (bound - value) / abs(bound) if abs(bound) > 1e-12 else 0.0
    return Placement(
        primary=primary,
        backups=backups,
        unplaced=unplaced,
        objective=value,
        lp_bound=bound,
        gap=gap,
        solver=f"{method}:{r1.picked}+{r2.picked}",
        timings={
            "total_s": total,
            "primaries_s": r1.total_s,
            "backups_s": r2.total_s,
            "build_s": r1.build_s + r2.build_s,
            "solve_s": r1.solve_s + r2.solve_s,
            "round_s": r1.round_s + r2.round_s,
        },
        stages=(r1, r2),
    )

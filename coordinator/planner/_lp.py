"""The LP relaxation (and the exact MILP) of one stage, built flat and solved with CVXPY + HiGHS.

One variable vector x over the chosen candidate columns, one scipy.sparse matrix for every
constraint (``A @ x <= b``), capacities as a cvxpy Parameter on the right-hand side only.

Large instances do not put every candidate in the LP (HiGHS needs about 15 s for the 400 k
columns of 1000 apps x 100 servers x 4 variants). The LP starts from a few columns per app and
grows by pricing: the duals of the restricted LP give every left-out candidate a reduced cost,
and the best positive ones join the next round. Whatever the rounds, the duals also give a
valid upper bound over *all* candidates (Lagrangian relaxation of the capacity rows):

    bound = Σ_rows y·b + Σ_apps max(0, max_j (c_j - yᵀA_j)) + Σ_aux max(0, rc_aux)·ub_aux

which equals the full LP's optimum once pricing finds nothing more to add.
"""

from __future__ import annotations

import atexit
import functools
import os
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sparse

from coordinator.planner._candidates import BArr, Cands, FArr, IArr


@dataclass
class RowFamily:
    """A family of capacity rows: candidate j puts ``coef[j]`` into row ``key[j]`` (-1: none)."""

    name: str
    key: IArr
    coef: FArr
    rhs: FArr  # capacity per key; inf: no row
    droppable: bool = True  # rows that cannot bind (even with every column at 1) may be left out


@dataclass
class AuxColumns:
    """Continuous helper columns in [0, ub]; entry e puts ``coef[e]`` of column ``col[e]`` into
    row ``key[e]`` of family ``fam[e]`` (an index into the stage's families)."""

    ub: FArr
    col: IArr
    fam: IArr
    key: IArr
    coef: FArr


@dataclass
class Relaxation:
    x: FArr  # value per candidate (0 outside the columns built)
    lp_value: float  # restricted LP (or MILP) objective, score units
    bound: float  # valid upper bound on the score over all candidates
    rounds: int = 0
    columns: int = 0
    rows: int = 0
    build_s: float = 0.0
    solve_s: float = 0.0
    status: str = ""
    in_lp: BArr = field(default_factory=lambda: np.zeros(0, dtype=np.bool_))


class SolverFailed(RuntimeError):
    """HiGHS returned no usable solution."""


@dataclass
class _Built:
    A: sparse.csr_matrix
    b: FArr
    n_x: int
    aux_ub: FArr
    app_rows: IArr  # app index of each app row (rows 0..len-1)
    fam_rows: list[tuple[IArr, int]]  # per family: (keys kept, first row)


def _build(c: Cands, fams: list[RowFamily], aux: AuxColumns | None, J: IArr) -> _Built:
    n = len(J)
    cols = np.arange(n)
    apps, app_inv = np.unique(c.app[J], return_inverse=True)
    r_parts = [app_inv.astype(np.int64)]
    c_parts = [cols]
    v_parts = [np.ones(n)]
    b_parts = [np.ones(len(apps))]
    m = len(apps)
    fam_rows: list[tuple[IArr, int]] = []
    for fam in fams:
        key, coef = fam.key[J], fam.coef[J]
        sel = np.flatnonzero((key >= 0) & (coef != 0))
        uk, inv = np.unique(key[sel], return_inverse=True)
        rhs = np.maximum(fam.rhs[uk], 0.0)
        keep = np.isfinite(rhs)
        if fam.droppable:
            load = np.bincount(inv, weights=coef[sel], minlength=len(uk))
            keep &= load > rhs * (1 + 1e-9) + 1e-9
        new = np.cumsum(keep) - 1
        e = keep[inv]
        r_parts.append(m + new[inv[e]])
        c_parts.append(sel[e])
        v_parts.append(coef[sel[e]])
        b_parts.append(rhs[keep])
        fam_rows.append((uk[keep], m))
        m += int(keep.sum())
    n_aux = 0
    aux_ub = np.zeros(0)
    if aux is not None and len(aux.ub):
        # Keep an aux column only where one of its rows exists; map (family, key) -> row.
        rows = np.full(len(aux.col), -1, dtype=np.int64)
        for fi, (keys, first) in enumerate(fam_rows):
            ent = np.flatnonzero(aux.fam == fi)
            if len(ent) == 0 or len(keys) == 0:
                continue
            pos = np.searchsorted(keys, aux.key[ent])
            pos = np.minimum(pos, len(keys) - 1)
            hit = keys[pos] == aux.key[ent]
            rows[ent[hit]] = first + pos[hit]
        live = rows >= 0
        used_cols, col_inv = np.unique(aux.col[live], return_inverse=True)
        n_aux = len(used_cols)
        aux_ub = aux.ub[used_cols]
        r_parts.append(rows[live])
        c_parts.append(n + col_inv)
        v_parts.append(aux.coef[live])
    A = sparse.csr_matrix(
        (np.concatenate(v_parts), (np.concatenate(r_parts), np.concatenate(c_parts))),
        shape=(m, n + n_aux),
    )
    return _Built(A, np.concatenate(b_parts), n, aux_ub, apps.astype(np.int64), fam_rows)


# One solve at a time per process; at exit, the solve in flight is waited for (this long at
# most) and HiGHS's worker threads are stopped. Left running, their C++ thread objects are
# destroyed at exit while joinable: std::terminate, SIGABRT (a plan on a daemon thread when a
# role is stopped).
_SOLVING = threading.Lock()
EXIT_WAIT_S = 10.0


def _stop_highs_at_exit() -> None:
    if not _SOLVING.acquire(timeout=EXIT_WAIT_S):
        return
    # Never released: a planner thread that starts another solve now waits out the exit.
    import highspy

    highspy.Highs.resetGlobalScheduler(True)


@functools.cache
def _swallow_highs_banner() -> None:
    """HiGHS prints a copyright banner on stdout (not through its logger) the first time a
    solver is made in a process, which would break JSON-lines logs: make that first one
    with stdout pointed at /dev/null. Also where its threads get stopped at exit."""
    try:
        import highspy
    except ImportError:
        return
    atexit.register(_stop_highs_at_exit)
    sys.stdout.flush()
    saved = os.dup(1)
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        highspy.Highs()  # type: ignore[no-untyped-call]
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
        os.close(null)


def warm_up() -> None:
    """Import the solver now (about a second), not at the first plan."""
    import cvxpy  # noqa: F401


def _solve(
    built: _Built, score: FArr, integer: bool, time_limit_s: float | None
) -> tuple[FArr, FArr | None, float, str]:
    """(x, duals or None, objective, status) of max score·x s.t. A [x; aux] <= b."""
    import cvxpy as cp  # ~1 s to import: only planners that solve an LP pay it

    n = built.n_x
    Ax = built.A[:, :n]
    x = cp.Variable(n, boolean=True) if integer else cp.Variable(n, bounds=[0.0, 1.0])
    lhs = Ax @ x
    if built.A.shape[1] > n:
        k = cp.Variable(built.A.shape[1] - n, bounds=[np.zeros(len(built.aux_ub)), built.aux_ub])
        lhs = lhs + built.A[:, n:] @ k
    # Capacities are a Parameter: the compiled problem can be re-solved for new capacities.
    b = cp.Parameter(len(built.b), value=built.b)
    con = lhs <= b
    prob = cp.Problem(cp.Maximize(score @ x), [con])
    opts: dict[str, float | str] = {}
    if time_limit_s is not None:
        opts["time_limit"] = float(time_limit_s)
    if integer:
        opts["mip_rel_gap"] = 1e-6
    _swallow_highs_banner()
    try:
        with warnings.catch_warnings(), _SOLVING:
            # "Solution may be inaccurate": the status says so, and the caller reads it.
            warnings.simplefilter("ignore", UserWarning)
            prob.solve(solver=cp.HIGHS, **opts)  # type: ignore[no-untyped-call]
    except cp.error.SolverError as exc:
        raise SolverFailed(f"HiGHS failed: {exc}") from exc
    if x.value is None:
        raise SolverFailed(f"HiGHS returned no solution (status {prob.status})")
    duals = None
    if not integer and con.dual_value is not None:
        duals = np.maximum(np.asarray(con.dual_value, dtype=np.float64).ravel(), 0.0)
    xv = np.clip(np.asarray(x.value, dtype=np.float64).ravel(), 0.0, 1.0)
    return xv, duals, float(prob.value), str(prob.status)


def _lagrangian(
    c: Cands, fams: list[RowFamily], aux: AuxColumns | None, built: _Built, y: FArr
) -> tuple[float, FArr]:
    """(bound, reduced cost of every candidate without its app row's dual)."""
    rc = c.score.copy()
    bound = 0.0
    ys: list[FArr] = []
    for fam, (keys, first) in zip(fams, built.fam_rows, strict=True):
        yf = np.zeros(len(fam.rhs))
        yf[keys] = y[first : first + len(keys)]
        ys.append(yf)
        if len(keys):
            bound += float(yf[keys] @ np.maximum(fam.rhs[keys], 0.0))
        sel = fam.key >= 0
        rc[sel] -= yf[fam.key[sel]] * fam.coef[sel]
    nonempty = np.flatnonzero(c.starts[1:] > c.starts[:-1])
    if len(nonempty):
        best = np.maximum.reduceat(rc, c.starts[nonempty])
        bound += float(np.maximum(best, 0.0).sum())
    if aux is not None and len(aux.ub):
        rc_aux = np.zeros(len(aux.ub))
        for fi, yf in enumerate(ys):
            ent = np.flatnonzero(aux.fam == fi)
            np.add.at(rc_aux, aux.col[ent], -yf[aux.key[ent]] * aux.coef[ent])
        bound += float((np.maximum(rc_aux, 0.0) * aux.ub).sum())
    return bound, rc


def _price(c: Cands, rc: FArr, pi: FArr, in_lp: BArr, per_app: int) -> IArr:
    """Left-out candidates with positive reduced cost, at most ``per_app`` best per app."""
    tol = 1e-7 * max(1.0, float(np.abs(c.score).max(initial=0.0)))
    gain = rc - pi[c.app]
    cand = np.flatnonzero((gain > tol) & ~in_lp)
    if len(cand) == 0:
        return cand
    order = np.lexsort((-gain[cand], c.app[cand]))
    cand = cand[order]
    apps = c.app[cand]
    first = np.r_[True, apps[1:] != apps[:-1]]
    grp_start = np.maximum.accumulate(np.where(first, np.arange(len(cand)), 0))
    rank = np.arange(len(cand)) - grp_start
    picked: IArr = cand[rank < per_app]
    return picked


def relax(
    c: Cands,
    fams: list[RowFamily],
    aux: AuxColumns | None,
    J0: IArr,
    *,
    pricing_rounds: int = 2,
    per_app: int = 2,
    incumbent: float = -np.inf,
    good_enough: float = 0.0,
) -> Relaxation:
    """LP relaxation over the columns ``J0``, grown by pricing, with a valid bound.

    Pricing stops early once the bound is within ``good_enough`` of the best known score
    (``incumbent``, a plan found before, or the LP's own value): more rounds could only prove
    what is already close enough.
    """
    in_lp = np.zeros(len(c), dtype=np.bool_)
    in_lp[J0] = True
    build_s = solve_s = 0.0
    rounds = 0
    best_bound = np.inf
    while True:
        J = np.flatnonzero(in_lp)
        t0 = time.perf_counter()
        built = _build(c, fams, aux, J)
        t1 = time.perf_counter()
        xj, y, value, status = _solve(built, c.score[J], integer=False, time_limit_s=None)
        t2 = time.perf_counter()
        build_s += t1 - t0
        solve_s += t2 - t1
        assert y is not None
        pi = np.zeros(len(c.starts) - 1)
        pi[built.app_rows] = y[: len(built.app_rows)]
        bound, rc = _lagrangian(c, fams, aux, built, y)
        # Every round's duals give a valid bound: keep the smallest. Numerically it can sit a
        # hair under the LP value, which it can never truly be.
        best_bound = max(min(best_bound, bound), value)
        if rounds >= pricing_rounds or best_bound - max(value, incumbent) <= good_enough:
            break
        new = _price(c, rc, pi, in_lp, per_app)
        if len(new) == 0:
            break
        in_lp[new] = True
        rounds += 1
    x = np.zeros(len(c))
    x[J] = xj
    return Relaxation(
        x=x,
        lp_value=value,
        bound=best_bound,
        rounds=rounds,
        columns=len(J),
        rows=built.A.shape[0],
        build_s=build_s,
        solve_s=solve_s,
        status=status,
        in_lp=in_lp,
    )


def exact(
    c: Cands, fams: list[RowFamily], aux: AuxColumns | None, time_limit_s: float | None
) -> Relaxation:
    """The MILP over every candidate (boolean x), for small instances and for checking."""
    J = np.arange(len(c))
    t0 = time.perf_counter()
    built = _build(c, fams, aux, J)
    t1 = time.perf_counter()
    xj, _, value, status = _solve(built, c.score, integer=True, time_limit_s=time_limit_s)
    t2 = time.perf_counter()
    return Relaxation(
        x=xj,
        lp_value=value,
        bound=value,
        columns=len(J),
        rows=built.A.shape[0],
        build_s=t1 - t0,
        solve_s=t2 - t1,
        status=status,
        in_lp=np.ones(len(c), dtype=np.bool_),
    )

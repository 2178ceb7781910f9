"""GPU memory as a first-class resource (issue 12, part 4): NVML figures in the worker's birth
and heartbeats, and a planner that places by GPU memory on GPU workers, by host memory on CPU
ones.

This machine has no NVIDIA GPU or driver: NVML is mocked by a stand-in ``pynvml`` module put in
``sys.modules`` (the real package, nvidia-ml-py, only fails to find its library here). The
worker, its backend (real ONNX Runtime, CPU) and the planner are real.
"""

from __future__ import annotations

import os
import sys
import types
from collections.abc import Iterator
from typing import Any

import pytest
from structlog.testing import capture_logs

from coordinator.planner import Problem, ProblemError, plan, validate
from faillite import gpu, messages
from faillite import log as flog
from faillite.catalog import Catalog, load_catalog
from faillite.config import MeshConfig, packaged_config

MB = 2**20


class FakeNvml(types.ModuleType):
    """Mocked NVML: ``devices`` GPUs of 80 GB; this process holds ``used`` bytes on GPU 0 and
    64 MB on GPU 1, another process 1 GB."""

    def __init__(self, devices: int = 2, name: str | bytes = "NVIDIA H200") -> None:
        super().__init__("pynvml")
        self.devices, self.name, self.inits = devices, name, 0
        self.used: int | None = 512 * MB

    def nvmlInit(self) -> None:
        self.inits += 1

    def nvmlDeviceGetCount(self) -> int:
        return self.devices

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        if not 0 <= i < self.devices:
            raise RuntimeError(f"NVML: invalid index {i}")
        return i

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> int:
        return {"GPU-bbbb": 1}[uuid]

    def nvmlDeviceGetIndex(self, h: int) -> int:
        return h

    def nvmlDeviceGetName(self, h: int) -> str | bytes:
        return self.name

    def nvmlDeviceGetMemoryInfo(self, h: int) -> Any:
        return types.SimpleNamespace(total=80 * 1024 * MB, used=0)

    def nvmlDeviceGetComputeRunningProcesses(self, h: int) -> list[Any]:
        me = os.getpid()
        if h == 0:
            return [
                types.SimpleNamespace(pid=me, usedGpuMemory=self.used),
                types.SimpleNamespace(pid=1, usedGpuMemory=1024 * MB),
            ]
        return [types.SimpleNamespace(pid=me, usedGpuMemory=64 * MB)]


@pytest.fixture(autouse=True)
def fresh_gpu(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    gpu.reset()
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    yield
    gpu.reset()


def nvml(monkeypatch: pytest.MonkeyPatch, fake: FakeNvml | None) -> FakeNvml | None:
    monkeypatch.setitem(sys.modules, "pynvml", fake)  # None: "not installed"
    return fake


def test_probe_reads_name_and_total_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Mocked NVML (no GPU here)."""
    fake = nvml(monkeypatch, FakeNvml(name=b"NVIDIA A2"))  # older pynvml: bytes
    assert fake is not None
    with capture_logs() as logs:
        first = gpu.probe()
        assert gpu.probe() is first
    assert first == gpu.GpuInfo(name="NVIDIA A2", total_mb=81920.0, index=0)
    assert fake.inits == 1
    assert [e["event"] for e in logs] == ["gpu_found"]


def test_probe_follows_cuda_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    """Mocked NVML: the GPU CUDA sees first, by index or UUID."""
    nvml(monkeypatch, FakeNvml())
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,0")
    info = gpu.probe()
    assert info is not None and info.index == 1
    gpu.reset()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-bbbb")
    info = gpu.probe()
    assert info is not None and info.index == 1


def test_used_mb_is_this_process_on_every_gpu_sampled_once_a_second(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Mocked NVML: this process holds 512 MB on GPU 0 and 64 MB on GPU 1."""
    fake = nvml(monkeypatch, FakeNvml())
    assert fake is not None
    assert gpu.process_used_mb() == 576.0
    assert gpu.used_mb() == 576.0
    fake.used = 1024 * MB
    assert gpu.used_mb() == 576.0  # the sample of less than a second ago
    assert gpu.used_mb(max_age_s=0) == 1088.0
    fake.used = None  # the driver cannot say (WDDM)
    assert gpu.process_used_mb() == 64.0
    assert gpu.process_used_mb(pid=1) == 1024.0


@pytest.mark.parametrize("how", ["not installed", "no driver", "no device"])
def test_no_gpu_is_none_with_one_info_line(monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    """Mocked NVML that fails, or no pynvml at all."""
    fake: FakeNvml | None = None
    if how != "not installed":
        fake = FakeNvml(devices=0)
        if how == "no driver":

            def fail() -> None:
                raise RuntimeError("NVML Shared Library Not Found")

            monkeypatch.setattr(fake, "nvmlInit", fail)
    nvml(monkeypatch, fake)
    with capture_logs() as logs:
        assert gpu.probe() is None
        assert gpu.probe() is None
        assert gpu.used_mb() == 0.0
    assert [(e["event"], e["log_level"]) for e in logs] == [("gpu_none", "info")]


# -- the worker's birth and heartbeat --------------------------------------------------------


def test_birth_and_heartbeat_carry_the_gpu_figures(monkeypatch: pytest.MonkeyPatch) -> None:
    """Mocked NVML; a real worker object (real CPU backend, no broker: nothing is started)."""
    from workers.service import Worker

    monkeypatch.setattr(flog, "_ids", dict(flog._ids))  # the worker binds its ids
    nvml(monkeypatch, FakeNvml())
    mesh = MeshConfig.model_validate({"workers": [{"id": "w1", "gpu_memory_mb": 4096}]})
    w = Worker(mesh, mesh.workers[0], load_catalog(packaged_config("catalog.yaml")))
    birth = messages.decode(messages.WorkerStatus, messages.encode(w._birth(1.0)))
    assert (birth.gpu, birth.gpu_memory_mb) == ("NVIDIA H200", 81920.0)
    hb = messages.decode(messages.Heartbeat, messages.encode(w.heartbeat()))
    assert hb.gpu_used_mb == 576.0


def test_worker_without_a_gpu_reports_zeros(monkeypatch: pytest.MonkeyPatch) -> None:
    from workers.service import Worker

    monkeypatch.setattr(flog, "_ids", dict(flog._ids))
    nvml(monkeypatch, None)
    mesh = MeshConfig.model_validate({"workers": [{"id": "w1"}]})
    w = Worker(mesh, mesh.workers[0], load_catalog(packaged_config("catalog.yaml")))
    birth = w._birth(1.0)
    assert (birth.gpu, birth.gpu_memory_mb, w.heartbeat().gpu_used_mb) == ("", 0.0, 0.0)
    # Older peers' messages (no GPU fields) still decode.
    old = b'{"worker":"w1","incarnation":"i","seq":1,"ts":1.0,"v":1}'
    assert messages.decode(messages.Heartbeat, old).gpu_used_mb == 0.0


# -- the planner -----------------------------------------------------------------------------


def _catalog() -> Catalog:
    pre = {"size": [8, 8]}
    return Catalog.model_validate(
        {
            "families": [
                {
                    "name": "fam",
                    "variants": [
                        {
                            "name": "small",
                            "file": "small.onnx",
                            "accuracy": 70,
                            "memory_mb": 50,
                            "file_size_mb": 5,
                            "preprocess": pre,
                            "profiles": {
                                "a2": {"latency_ms": 2, "memory_mb": 60, "gpu_memory_mb": 200},
                                "cpu": {"latency_ms": 20, "memory_mb": 50},
                            },
                        },
                        {
                            "name": "big",
                            "file": "big.onnx",
                            "accuracy": 80,
                            "memory_mb": 100,
                            "file_size_mb": 10,
                            "preprocess": pre,
                            "profiles": {
                                # Fits the GPU box's host memory many times, not its GPU budget.
                                "a2": {"latency_ms": 4, "memory_mb": 120, "gpu_memory_mb": 800},
                                "cpu": {"latency_ms": 40, "memory_mb": 100},
                            },
                        },
                    ],
                }
            ]
        }
    )


def _mesh(gpu_budget: float | None) -> MeshConfig:
    return MeshConfig.model_validate(
        {
            "sensors": [{"id": "cam", "fps": 5}],
            "apps": [
                {"id": f"app{i}", "sensor": "cam", "family": "fam", "critical": True}
                for i in range(3)
            ],
            "workers": [
                {
                    "id": "g1",
                    "device_class": "a2",
                    "memory_mb": 16000,
                    "gpu_memory_mb": gpu_budget,
                },
                {"id": "c1", "device_class": "cpu", "memory_mb": 4000},
            ],
        }
    )


def _mem(p: Problem, variant: str, device_class: str) -> float:
    cost = p.cost(variant, device_class)
    assert cost is not None
    return cost.memory_mb


def test_planner_places_by_gpu_memory_on_gpu_workers() -> None:
    catalog = _catalog()
    p = Problem.from_config(_mesh(700.0), catalog)
    assert p.server("g1").memory_mb == 700.0  # the GPU budget, not the 16 GB of host memory
    assert p.server("c1").memory_mb == 4000.0
    assert _mem(p, "big", "a2") == 800.0
    assert _mem(p, "small", "a2") == 200.0
    assert _mem(p, "big", "cpu") == 100.0
    placement = plan(p)
    assert validate(p, placement) == []
    on_g1 = [a.variant for a in placement.primary.values() if a.server == "g1"]
    on_g1 += [b.variant for b in placement.backups.values() if b.server == "g1"]
    assert on_g1 and "big" not in on_g1  # the GPU box is used, within its GPU memory
    assert "big" in {a.variant for a in placement.primary.values() if a.server == "c1"}
    # The same mesh planned by host memory would put the big variant on the GPU box.
    host = Problem.from_config(_mesh(None), catalog)
    assert host.server("g1").memory_mb == 16000.0
    assert _mem(host, "big", "a2") == 120.0
    hp = plan(host)
    used = [*hp.primary.values(), *hp.backups.values()]
    assert "big" in {x.variant for x in used if x.server == "g1"}


def test_a_device_class_is_planned_by_one_kind_of_memory() -> None:
    mesh = _mesh(700.0)
    other = mesh.workers[0].model_copy(update={"id": "g2", "gpu_memory_mb": None})
    mixed = mesh.model_copy(update={"workers": (*mesh.workers, other)})
    with pytest.raises(ProblemError, match=r"device class 'a2'.*gpu_memory_mb.*\(g2\)"):
        Problem.from_config(mixed, _catalog())

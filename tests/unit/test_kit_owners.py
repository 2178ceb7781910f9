"""One service user per role on a kit's node: each reads its own secrets, nobody else's."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import yaml

from field_kit.kit.installer import NodeInstall, apply_owners, missing_prerequisites
from field_kit.kit.model import EXAMPLE, Kit
from field_kit.kit.owners import ROLE_USERS, ownership, users
from field_kit.kit.render import identities, render


def _kit(**broker: str) -> Kit:
    data = yaml.safe_load(EXAMPLE)
    data["broker"].update(broker)
    data["cameras"][0]["source"] = "/dev/video0"  # orin2 reads a local camera
    return Kit.model_validate(data)


def _unit_user(folder: Path, unit: str) -> str:
    text = (folder / "etc/systemd/system" / unit).read_text()
    return next(x.split("=", 1)[1] for x in text.splitlines() if x.startswith("User="))


def test_each_secret_belongs_to_the_role_that_reads_it(tmp_path: Path) -> None:
    kit = _kit()
    render(kit, tmp_path)
    orin2 = kit.node("orin2")  # coordinator (standby), worker, camera
    owners = ownership(kit, orin2, identities(kit, orin2))
    secret = {p: o for p, (o, m) in owners.items() if p.endswith(".secret")}
    assert secret == {
        "etc/faillite/secrets/recon1.coordinator.orin2.secret": "faillite-coordinator",
        "etc/faillite/secrets/recon1.worker.orin2.secret": "faillite-worker",
        "etc/faillite/secrets/recon1.sensor.cam-north.secret": "faillite-sensor",
    }
    assert owners["etc/faillite/signing/signing.key"] == ("faillite-coordinator", 0o600)
    # The units run as the users that own their secrets: the camera's cannot read the key.
    folder = tmp_path / "orin2"
    assert _unit_user(folder, "faillite-coordinator.service") == "faillite-coordinator"
    assert _unit_user(folder, "faillite-worker.service") == "faillite-worker"
    assert _unit_user(folder, "faillite-sensor-cam-north.service") == "faillite-sensor"
    # Rendered with the modes: folders of secrets can be passed through, not listed.
    for rel, (_owner, mode) in owners.items():
        if (folder / rel).exists():  # state folders are made at install
            assert stat.S_IMODE((folder / rel).stat().st_mode) == mode, rel


def test_the_broker_key_is_the_brokers_whichever_broker() -> None:
    for kind, user in (("mosquitto", "mosquitto"), ("amqtt", "faillite-broker")):
        kit = _kit(kind=kind)
        orin1 = kit.node("orin1")
        owners = ownership(kit, orin1, identities(kit, orin1))
        assert owners["etc/faillite/tls/broker.key"] == (user, 0o600)
        assert owners["etc/faillite/broker/passwd"] == (user, 0o600)
        assert (ROLE_USERS["broker"] in users(kit, orin1)) is (kind == "amqtt")
    mosq = _kit()
    owners = ownership(mosq, mosq.node("orin1"), identities(mosq, mosq.node("orin1")))
    assert owners["var/lib/faillite/mosquitto"] == ("mosquitto", 0o700)  # not Debian's folder


def test_gpu_workers_and_local_cameras_join_the_video_group() -> None:
    kit = _kit()
    assert users(kit, kit.node("orin2")) == {
        "faillite-coordinator": (),
        "faillite-worker": ("video",),  # a Jetson's GPU
        "faillite-sensor": ("video",),  # /dev/video0
    }
    assert users(kit, kit.node("orin3"))["faillite-sensor"] == ()  # an RTSP camera


def test_owners_and_modes_are_applied_and_missing_folders_made(tmp_path: Path) -> None:
    (tmp_path / "etc/faillite/secrets").mkdir(parents=True)
    secret = tmp_path / "etc/faillite/secrets/x.secret"
    secret.write_text("s")
    secret.chmod(0o644)
    seen: list[str] = []

    def ids(user: str) -> tuple[int, int]:  # this test's own user stands in for each
        seen.append(user)
        return os.getuid(), os.getgid()

    apply_owners(
        tmp_path,
        {
            "etc/faillite/secrets": ("root", 0o711),
            "etc/faillite/secrets/x.secret": ("faillite-worker", 0o600),
            "var/lib/faillite/engines": ("faillite-worker", 0o700),
        },
        ids,
    )
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "etc/faillite/secrets").stat().st_mode) == 0o711
    assert (tmp_path / "var/lib/faillite/engines").is_dir()
    assert sorted(set(seen)) == ["faillite-worker", "root"]


@pytest.mark.parametrize(
    ("have", "mosquitto", "missing"),
    [
        ({"mosquitto", "nft", "systemctl", "openssl"}, True, []),
        ({"systemctl", "openssl"}, True, ["mosquitto", "nftables"]),
        ({"openssl"}, False, ["systemd"]),
    ],
)
def test_missing_os_packages_are_named(have: set[str], mosquitto: bool, missing: list[str]) -> None:
    spec = NodeInstall("n", (), False, (), mosquitto=mosquitto)
    found = missing_prerequisites(
        spec, systemd=True, which=lambda tool: f"/usr/bin/{tool}" if tool in have else None
    )
    assert found == missing  # this machine has python3-venv; the rest is what `which` says

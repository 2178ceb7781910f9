"""The kit description (kit.yaml) and what ``faillite kit render`` makes of it: validation with
paths, one folder per node holding only its own secrets, deterministic output, configs every
role and Mosquitto accept. Files only; nothing is installed or started."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest
import yaml

from faillite.accounts import read_password_file
from faillite.compat import python_module
from faillite.config import ConfigError, load_mesh_config
from field_kit.kit.model import EXAMPLE, Kit, load_kit
from field_kit.kit.rekey import rekey
from field_kit.kit.render import WATCHDOG_SEC, mesh_document, render


@pytest.fixture
def kit_file(tmp_path: Path) -> Path:
    path = tmp_path / "kit.yaml"
    path.write_text(EXAMPLE)
    return path


def _edit(path: Path, change: dict[str, object]) -> Path:
    data = yaml.safe_load(path.read_text())
    data.update(change)
    out = path.with_name("edited.yaml")
    out.write_text(yaml.safe_dump(data))
    return out


def _files(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_the_example_is_a_five_board_wifi_kit(kit_file: Path) -> None:
    kit = load_kit(kit_file)
    assert len(kit.nodes) == 5 and {n.link for n in kit.nodes} == {"wifi"}
    assert {n.arch for n in kit.nodes} == {"aarch64"}
    assert [n.id for n in kit.with_role("broker")] == [kit.broker.node]


def test_unknown_keys_and_bad_references_are_refused_with_their_place(kit_file: Path) -> None:
    data = yaml.safe_load(kit_file.read_text())
    data["nodes"][2]["gpu_memroy_mb"] = 1
    bad = kit_file.with_name("bad.yaml")
    bad.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"nodes\.2\.gpu_memroy_mb"):
        load_kit(bad)
    cases = {
        "names unknown camera": {"apps": [{"id": "x", "camera": "nope", "family": "f"}]},
        "must have role sensor": {"cameras": [{"id": "c", "node": "orin4", "source": "0"}]},
        "must be a node with role broker": {"broker": {"node": "orin3"}},
    }
    for why, change in cases.items():
        with pytest.raises(ConfigError, match=why):
            load_kit(_edit(kit_file, change))


@pytest.mark.parametrize(
    ("host", "why"),
    [
        ("10.42.0.12", r"nodes share an address: 10\.42\.0\.12 \(orin1, orin2\)"),
        ("10.42.0.999", "neither an IP address nor a host name"),
        ("orin_2.local", "neither an IP address nor a host name"),
        ("-orin2", "neither an IP address nor a host name"),
        ("10.42.0.12 ", "neither an IP address nor a host name"),
    ],
)
def test_node_addresses_are_valid_and_distinct(kit_file: Path, host: str, why: str) -> None:
    data = yaml.safe_load(kit_file.read_text())
    data["nodes"][0]["host"] = "10.42.0.12" if "share" in why else data["nodes"][0]["host"]
    data["nodes"][1]["host"] = host
    with pytest.raises(ConfigError, match=why):
        load_kit(_edit(kit_file, data))


def test_node_addresses_may_be_names_or_ipv6(kit_file: Path) -> None:
    data = yaml.safe_load(kit_file.read_text())
    data["nodes"][0]["host"] = "Orin1.Kit.Local"
    data["nodes"][1]["host"] = "fd00::12"
    kit = load_kit(_edit(kit_file, data))
    assert [n.host for n in kit.nodes[:2]] == ["orin1.kit.local", "fd00::12"]


def test_each_node_gets_its_own_secrets_and_nothing_of_another(
    kit_file: Path, tmp_path: Path
) -> None:
    kit = load_kit(kit_file)
    out = tmp_path / "build"
    render(kit, out)
    prov = out / "_provisioning"
    hashes = read_password_file(prov / "accounts" / "passwd")
    seen: dict[str, str] = {}
    for node in kit.nodes:
        folder = out / node.id
        secrets = sorted((folder / "etc/faillite/secrets").iterdir())
        expected = {f"recon1.worker.{node.id}"} if "worker" in node.roles else set()
        expected |= {f"recon1.coordinator.{node.id}"} if "coordinator" in node.roles else set()
        expected |= {f"recon1.sensor.{c.id}" for c in kit.cameras if c.node == node.id}
        assert {p.name.removesuffix(".secret") for p in secrets} == expected
        for p in secrets:
            name = p.name.removesuffix(".secret")
            assert hashes[name].verify(p.read_text().strip())  # the broker will admit it
            assert name not in seen, f"{name} on {seen.get(name)} and {node.id}"
            seen[name] = node.id
            assert p.stat().st_mode & 0o777 == 0o600
        names = {p.name for p in folder.rglob("*") if p.is_file()}
        assert "ca.key" not in names and "recon1.observer.ops.secret" not in names
        assert ("signing.key" in names) == ("coordinator" in node.roles)
        assert ("passwd" in names) == ("broker" in node.roles)
        assert ("broker.key" in names) == ("broker" in node.roles)


def test_rendering_is_deterministic_keys_included_until_rotated(
    kit_file: Path, tmp_path: Path
) -> None:
    kit = load_kit(kit_file)
    out = tmp_path / "build"
    render(kit, out)
    first = {n.id: _files(out / n.id) for n in kit.nodes}
    render(kit, out)
    assert {n.id: _files(out / n.id) for n in kit.nodes} == first
    render(kit, out, rotate=True)
    rotated = _files(out / "orin1")
    assert rotated["etc/faillite/mesh.yaml"] == first["orin1"]["etc/faillite/mesh.yaml"]
    assert rotated["etc/faillite/tls/ca.crt"] != first["orin1"]["etc/faillite/tls/ca.crt"]
    secret = "etc/faillite/secrets/recon1.worker.orin1.secret"
    assert rotated[secret] != first["orin1"][secret]


def test_rendered_configs_load_and_follow_each_nodes_link(kit_file: Path, tmp_path: Path) -> None:
    data = yaml.safe_load(kit_file.read_text())
    data["nodes"][4]["link"] = "lan"  # orin5 on a cable
    kit = Kit.model_validate(data)
    out = tmp_path / "build"
    render(kit, out)
    broker = load_mesh_config(out / "orin1/etc/faillite/mesh.yaml")
    assert broker.broker.password_file is not None and broker.broker.tls is not None
    assert broker.broker.tls.server is not None and not broker.broker.open_to_anyone
    node5 = load_mesh_config(out / "orin5/etc/faillite/mesh.yaml")
    assert node5.broker.host == "10.42.0.11" and node5.broker.password_file is None
    assert node5.broker.keepalive_s == 3  # its link's
    assert node5.coordinator.signing is not None and node5.coordinator.signing.private_key is None
    workers = {w.id: w for w in node5.workers}
    assert (
        workers["orin5"].heartbeat_interval_s == 0.1
        and workers["orin1"].heartbeat_interval_s == 0.25
    )
    assert workers["orin4"].backend.type == "tensorrt"
    assert node5.coordinator.ids == ("orin1", "orin2")


def test_broker_and_units(kit_file: Path, tmp_path: Path) -> None:
    kit = load_kit(kit_file)
    out = tmp_path / "build"
    render(kit, out)
    conf = (out / "orin1/etc/faillite/broker/mosquitto.conf").read_text()
    for line in (
        "listener 8883 10.42.0.11",
        "allow_anonymous false",
        "use_username_as_clientid true",
        "password_file /etc/faillite/broker/passwd",
        "cafile /etc/faillite/tls/ca.crt",
        "user mosquitto",
    ):
        assert line in conf.splitlines(), line
    acl = (out / "orin1/etc/faillite/broker/acl").read_text()
    assert "user recon1.worker.orin5\n" in acl and "user recon1.observer.ops\n" in acl
    assert "topic write faillite/recon1/apps/north-watch/results/orin3" in acl
    units = out / "orin2/etc/systemd/system"
    assert sorted(p.name for p in units.iterdir()) == [
        "faillite-coordinator.service",
        "faillite-sensor-cam-north.service",
        "faillite-worker.service",
    ]
    coord = (units / "faillite-coordinator.service").read_text()
    assert "--id orin2 --standby --rank 1" in coord and "Restart=always" in coord
    leader = (out / "orin1/etc/systemd/system/faillite-coordinator.service").read_text()
    assert "--standby" not in leader and "After=network-online.target faillite-broker" in leader
    broker_unit = (out / "orin1/etc/systemd/system/faillite-broker.service").read_text()
    # The login firewall is loaded outside the sandbox ("+"); Mosquitto keeps what it takes to
    # drop to its own user, and nothing else.
    assert "ExecStartPre=+/usr/sbin/nft -f /etc/faillite/broker/nftables.conf" in broker_unit
    assert "CapabilityBoundingSet=CAP_SETUID CAP_SETGID" in broker_unit.splitlines()
    # FailLite roles tell systemd when they are ready and ping its watchdog; Mosquitto does not.
    notify = ["Type=notify", "NotifyAccess=main", f"WatchdogSec={WATCHDOG_SEC}"]
    for path in units.iterdir():
        lines = path.read_text().splitlines()
        assert all(x in lines for x in notify) and "Restart=always" in lines, path.name
    assert not any(
        x.startswith(("Type=", "NotifyAccess=", "Watchdog")) for x in broker_unit.splitlines()
    )
    embedded = Kit.model_validate(
        {**yaml.safe_load(kit_file.read_text()), "broker": {"node": "orin1", "kind": "amqtt"}}
    )
    render(embedded, tmp_path / "embedded")
    unit = (tmp_path / "embedded/orin1/etc/systemd/system/faillite-broker.service").read_text()
    assert "faillite broker --config /etc/faillite/mesh.yaml" in unit
    assert all(x in unit.splitlines() for x in notify)
    assert not (tmp_path / "embedded/orin1/etc/faillite/broker/mosquitto.conf").exists()


def test_kit_cli_init_and_render(tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*python_module("faillite"), "kit", *args],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
        )

    assert run("init").returncode == 0 and (tmp_path / "kit.yaml").exists()
    again = run("init")
    assert again.returncode == 2 and "exists" in again.stderr
    rendered = run("render", "kit.yaml", "--out", "build")
    assert rendered.returncode == 0, rendered.stderr
    assert len(rendered.stdout.split()) == 5 and "rendered 5 nodes" in rendered.stderr
    rehearsal = run("render", "kit.yaml", "--out", "here", "--in-place")
    assert rehearsal.returncode == 0, rehearsal.stderr
    doc = yaml.safe_load((tmp_path / "here/orin3/etc/faillite/mesh.yaml").read_text())
    assert doc["broker"]["secrets_dir"] == str(tmp_path / "here/orin3/etc/faillite/secrets")
    # Re-keying a kit that has keys is asked for twice: it cuts every installed node off.
    key = (tmp_path / "build/_provisioning/ca/ca.crt").read_bytes()
    refused = run("render", "kit.yaml", "--out", "build", "--rotate")
    assert refused.returncode == 2 and "--yes" in refused.stderr
    assert (tmp_path / "build/_provisioning/ca/ca.crt").read_bytes() == key
    rotated = run("render", "kit.yaml", "--out", "build", "--rotate", "--yes")
    assert rotated.returncode == 0 and "reinstall every node" in rotated.stderr
    assert (tmp_path / "build/_provisioning/ca/ca.crt").read_bytes() != key
    (tmp_path / "bad.yaml").write_text("kit: x\nnodes: []\n")
    bad = run("render", "bad.yaml", "--out", "b2")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def test_a_second_broker_is_bridged_and_every_node_lists_it(kit_file: Path, tmp_path: Path) -> None:
    doc = yaml.safe_load(kit_file.read_text())
    doc["broker"]["fallback_nodes"] = ["orin2"]
    doc["nodes"][1]["roles"] = ["broker", *doc["nodes"][1]["roles"]]
    kit = Kit.model_validate(doc)
    out = tmp_path / "build"
    render(kit, out)
    second = out / "orin2/etc/faillite/broker/mosquitto.conf"
    lines = second.read_text().splitlines()
    assert "listener 8883 10.42.0.12" in lines and "address 10.42.0.11:8883" in lines
    assert "remote_username recon1.bridge.orin2" in lines
    assert "topic faillite/recon1/# both 1" in lines and "bridge_insecure false" in lines
    secret = (out / "orin2/etc/faillite/secrets/recon1.bridge.orin2.secret").read_text().strip()
    assert f"remote_password {secret}" in lines and second.stat().st_mode & 0o077 == 0
    first = (out / "orin1/etc/faillite/broker/mosquitto.conf").read_text()
    assert "connection " not in first and "remote_password" not in first
    assert not (out / "orin1/etc/faillite/secrets/recon1.bridge.orin2.secret").exists()
    assert "user recon1.bridge.orin2\n" in (out / "orin1/etc/faillite/broker/acl").read_text()
    for node in ("orin1", "orin3", "orin5"):
        cfg = load_mesh_config(out / node / "etc/faillite/mesh.yaml")
        assert cfg.broker.addresses[1:] == (("10.42.0.12", 8883),), node
    # Clients on the second broker's node still prefer the first (one order kit-wide).
    assert load_mesh_config(out / "orin2/etc/faillite/mesh.yaml").broker.addresses == (
        ("10.42.0.11", 8883),
        ("10.42.0.12", 8883),
    )
    cert = subprocess.run(
        ["openssl", "x509", "-noout", "-ext", "subjectAltName", "-in",
         str(out / "orin2/etc/faillite/tls/broker.crt")],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "10.42.0.11" in cert and "10.42.0.12" in cert
    doc["broker"]["kind"] = "amqtt"
    with pytest.raises(ValueError, match="needs kind: mosquitto"):
        Kit.model_validate(doc)


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def test_units_are_sandboxed_by_what_each_role_touches(kit_file: Path, tmp_path: Path) -> None:
    data = yaml.safe_load(kit_file.read_text())
    # orin2 reads a local camera; orin3 is a CPU worker.
    data["cameras"][0]["source"] = "/dev/video0"
    for n in data["nodes"]:
        if n["id"] == "orin3":
            n["accelerator"] = "none"
    kit = Kit.model_validate(data)
    out = tmp_path / "build"
    render(kit, out)
    every = [
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "ReadWritePaths=/var/lib/faillite",
        "SystemCallFilter=@system-service",
        "UMask=0077",
        "StartLimitIntervalSec=300",
        "StartLimitBurst=30",
        "RestartSec=2",
    ]
    for unit in out.glob("*/etc/systemd/system/faillite-*.service"):
        lines = _lines(unit)
        if unit.name == "faillite-broker.service":
            assert "ReadWritePaths=/var/lib/faillite/mosquitto" in lines, unit
            continue
        assert all(x in lines for x in every), (unit, [x for x in every if x not in lines])
        assert "CapabilityBoundingSet=" in lines and "AmbientCapabilities=" in lines, unit
    sys_ = "etc/systemd/system"
    gpu = _lines(out / "orin1" / sys_ / "faillite-worker.service")  # TensorRT
    assert "SupplementaryGroups=video" in gpu
    assert "PrivateDevices=yes" not in gpu and "MemoryDenyWriteExecute=yes" not in gpu
    cpu = _lines(out / "orin3" / sys_ / "faillite-worker.service")
    assert "PrivateDevices=yes" in cpu and "MemoryDenyWriteExecute=yes" in cpu
    cam = _lines(out / "orin2" / sys_ / "faillite-sensor-cam-north.service")
    assert "DevicePolicy=closed" in cam and "DeviceAllow=char-video4linux rw" in cam
    assert "PrivateDevices=yes" not in cam
    rtsp = _lines(out / "orin3" / sys_ / "faillite-sensor-cam-south.service")
    assert "PrivateDevices=yes" in rtsp and "DeviceAllow=char-video4linux rw" not in rtsp


def test_rendering_again_replaces_its_files_and_keeps_the_staged_models(
    kit_file: Path, tmp_path: Path
) -> None:
    kit = load_kit(kit_file)
    out = tmp_path / "build"
    render(kit, out)
    stale = out / "orin3/etc/systemd/system/faillite-old-role.service"
    stale.write_text("[Service]\n")
    staged = out / "orin3/var/lib/faillite/models/efficientnet_lite0.onnx"
    staged.parent.mkdir(parents=True)
    staged.write_bytes(b"model")
    render(kit, out)
    assert not stale.exists()  # a role the node no longer has leaves no unit behind
    assert staged.read_bytes() == b"model"  # what `kit stage` put there stays


def test_rekeying_a_lost_board_changes_its_secrets_and_the_brokers_list_only(
    kit_file: Path, tmp_path: Path
) -> None:
    kit = load_kit(kit_file)
    out = tmp_path / "build"
    render(kit, out)
    secret = out / "orin3/etc/faillite/secrets/recon1.worker.orin3.secret"
    old = secret.read_text().strip()
    passwd = out / "_provisioning/accounts/passwd"
    done = rekey(kit, out, "orin3")  # a worker and a camera: no kit key on it
    assert done.rotated == () and set(done.secrets) == {
        "recon1.worker.orin3",
        "recon1.sensor.cam-south",
    }
    assert done.changed == ("orin1", "orin3")  # its folder, and the broker's password file
    new = secret.read_text().strip()
    hashes = read_password_file(passwd)
    assert new != old and hashes["recon1.worker.orin3"].verify(new)
    assert not hashes["recon1.worker.orin3"].verify(old)  # what the lost board holds: refused
    # A coordinator's board held the signing key: a new one, and every node is reinstalled.
    pub = (out / "orin4/etc/faillite/signing/signing.pub").read_bytes()
    done = rekey(kit, out, "orin2")
    assert done.rotated == ("signing key",) and len(done.changed) == 5
    assert (out / "orin4/etc/faillite/signing/signing.pub").read_bytes() != pub


def test_the_operators_laptop_gets_a_config_with_no_key_of_the_kit(
    kit_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "build"
    render(load_kit(kit_file), out)
    cfg = load_mesh_config(out / "_operator/mesh.yaml")
    assert cfg.broker.host == "10.42.0.11" and cfg.broker.port == 8883
    assert cfg.broker.tls is not None and cfg.broker.tls.ca_certs.is_file()
    assert cfg.broker.tls.server is None and cfg.broker.password_file is None
    assert (cfg.broker.secrets_dir / "recon1.observer.ops.secret").is_file()  # type: ignore[operator]
    assert cfg.coordinator.signing is not None and cfg.coordinator.signing.private_key is None


def test_bundling_offline_says_it_needs_an_index() -> None:
    from field_kit.kit.bundle import BundleError, _online_hint

    pip = BundleError("resolving every dependency failed:\nERROR: No matching distribution found")
    assert "needs PyPI, or a mirror in PIP_INDEX_URL" in str(_online_hint(pip))
    other = BundleError("building the faillite wheel failed:\nsyntax error")
    assert _online_hint(other) is other


def test_a_jetsons_jetpack_sets_the_tensorrt_its_worker_expects(kit_file: Path) -> None:
    data = yaml.safe_load(kit_file.read_text())
    data["nodes"][1]["jetpack"] = "6.0"
    kit = Kit.model_validate(data)
    docs = {n.id: mesh_document(kit, n) for n in kit.nodes}
    workers = {w["id"]: w for w in docs["orin1"]["workers"]}
    assert workers["orin1"]["backend"]["expect_major"] == 10  # JetPack 6.1 and later
    assert workers["orin2"]["backend"]["expect_major"] == 8  # JetPack 6.0: TensorRT 8.6
    assert workers["orin1"]["fallback_backend"]["type"] == "onnxruntime"
    data["nodes"][2].update(arch="x86_64", accelerator="none", jetpack="6.1")
    with pytest.raises(ValueError, match="jetpack is for aarch64 nodes with a GPU"):
        Kit.model_validate(data)


def test_kit_upgrade_wants_an_installed_node(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from faillite.cli import main

    rc = main(["kit", "upgrade", str(tmp_path / "faillite-kit-k-n1.tar"), "--root", str(tmp_path)])
    assert rc == 2
    assert "nothing installed under" in capsys.readouterr().err


def test_a_bundle_carries_the_os_packages_of_its_architecture(tmp_path: Path) -> None:
    from field_kit.kit.bundle import BundleError, debs_for

    for name in (
        "mosquitto_2.0.11-1.2+deb12u1_amd64.deb",
        "mosquitto_2.0.11-1.2+deb12u1_arm64.deb",
        "python3-venv_3.11.2-1+b1_amd64.deb",
        "tzdata_2024a-0+deb12u1_all.deb",
        "notes.txt",
    ):
        (tmp_path / name).write_bytes(b"x")
    assert [d.name for d in debs_for(tmp_path, "x86_64")] == [
        "mosquitto_2.0.11-1.2+deb12u1_amd64.deb",
        "python3-venv_3.11.2-1+b1_amd64.deb",
        "tzdata_2024a-0+deb12u1_all.deb",
    ]
    assert [d.name for d in debs_for(tmp_path, "aarch64")] == [
        "mosquitto_2.0.11-1.2+deb12u1_arm64.deb",
        "tzdata_2024a-0+deb12u1_all.deb",
    ]
    with pytest.raises(BundleError, match="no such folder"):
        debs_for(tmp_path / "none", "x86_64")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(BundleError, match=r"no \.deb file"):
        debs_for(empty, "x86_64")


@pytest.mark.parametrize("filters", [True, False], ids=["tarfile-filters", "python-3.11.2"])
def test_a_bundle_unpacks_only_inside_its_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, filters: bool
) -> None:
    """On a node's own Python, with or without tarfile's extraction filters (Debian 12 has
    3.11.2, which lacks them)."""
    import contextlib
    import io
    import tarfile

    from field_kit.kit.installer import BundleError, extract_all

    if not filters:
        monkeypatch.delattr(tarfile, "data_filter", raising=False)

    def archive(*members: tarfile.TarInfo) -> tarfile.TarFile:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for m in members:
                tar.addfile(m, io.BytesIO(b"x" * m.size) if m.isfile() else None)
        buf.seek(0)
        return tarfile.open(fileobj=buf)

    def member(name: str, kind: bytes = tarfile.REGTYPE, mode: int = 0o4755) -> tarfile.TarInfo:
        m = tarfile.TarInfo(name)
        m.type, m.mode = kind, mode
        m.size = 1 if kind == tarfile.REGTYPE else 0
        if kind == tarfile.SYMTYPE:
            m.linkname = "/etc/shadow"
        return m

    extract_all(archive(member("b/install.py"), member("b/x", mode=0o644)), tmp_path / "ok")
    assert (tmp_path / "ok/b/install.py").read_bytes() == b"x"
    assert not (tmp_path / "ok/b/install.py").stat().st_mode & 0o4000  # no setuid kept
    extract_all(archive(member("b/install.py"), member("b/x")), tmp_path / "one", only="b/x")
    assert [p.name for p in (tmp_path / "one/b").iterdir()] == ["x"]
    for bad in (member("../evil"), member("b/link", tarfile.SYMTYPE)):
        with pytest.raises((BundleError, tarfile.TarError)):
            extract_all(archive(bad), tmp_path / "bad")
    # Refused, or (tarfile's filter) made relative: never written outside.
    with contextlib.suppress(BundleError):
        extract_all(archive(member("/etc/evil")), tmp_path / "abs")
    assert not (tmp_path / "evil").exists() and not Path("/etc/evil").exists()

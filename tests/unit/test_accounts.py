"""One account per device: identities, secrets and hashes, the broker's admission and per-identity
ACL, and the slow-down of failed logins. Pure logic and files; no broker (the brokers run in
tests/integration/test_accounts_brokers.py)."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import pytest

from broker import mosquitto as mq
from broker._acl import AccessPolicy, LoginThrottle, Operation
from faillite import accounts
from faillite.compat import python_module
from faillite.config import BrokerConfig, load_mesh_config
from faillite.identity import AclScope, Identity, InvalidIdentityError, identity_acl
from faillite.topics import Access, Role, Topics

W1 = Identity("demo", Role.WORKER, "w1")
W2 = Identity("demo", Role.WORKER, "w2")
CAM = Identity("demo", Role.SENSOR, "cam-gate")
COORD = Identity("demo", Role.COORDINATOR, "main")
OPS = Identity("demo", Role.OBSERVER, "ops")
T = Topics("demo")
SCOPE = AclScope.of(["w1", "w2"], ["gate-watch", "dock"])


def test_identity_names_round_trip() -> None:
    assert W1.name == "demo.worker.w1" and W1.probe_name == "demo.worker.w1.probe"
    assert Identity.parse("demo.worker.w1") == W1 == Identity.parse("demo.worker.w1.probe")
    for bad in ("w1", "demo.worker", "demo.boss.w1", "Demo.worker.w1", "demo.worker.w/1", ""):
        with pytest.raises(InvalidIdentityError):
            Identity.parse(bad)


def _policy(tmp_path: Path, *identities: Identity, **kw: object) -> AccessPolicy:
    pw = tmp_path / "passwd"
    for i in identities:
        accounts.add_account(pw, tmp_path / "secrets", i)
    cfg = BrokerConfig(password_file=pw, login_delay_s=0, **kw)  # type: ignore[arg-type]
    return AccessPolicy(cfg, "demo", SCOPE)


def _secret(tmp_path: Path, identity: Identity) -> str:
    return accounts.secret_path(tmp_path / "secrets", identity).read_text().strip()


def test_secrets_are_private_and_the_password_file_holds_hashes_only(tmp_path: Path) -> None:
    path = accounts.add_account(tmp_path / "passwd", tmp_path / "secrets", W1)
    secret = path.read_text().strip()
    assert len(secret) >= 40
    passwd = (tmp_path / "passwd").read_text()
    assert secret not in passwd
    assert [line.split(":")[0] for line in passwd.splitlines()] == list(W1.usernames)
    for p in (path, tmp_path / "passwd"):
        assert stat.S_IMODE(p.stat().st_mode) == 0o600
    hashes = accounts.read_password_file(tmp_path / "passwd")
    assert hashes[W1.name].verify(secret) and not hashes[W1.name].verify(secret + "x")
    with pytest.raises(accounts.AccountsError, match="already has an account"):
        accounts.add_account(tmp_path / "passwd", tmp_path / "secrets", W1)


def test_mosquitto_reads_our_hashes_and_we_read_its(tmp_path: Path) -> None:
    ours = accounts.hash_password("pa:ss w0rd")
    assert accounts.verify_password("pa:ss w0rd", ours)
    assert not accounts.verify_password("pa:ss w0rd!", ours)
    passwd = tmp_path / "theirs"
    passwd.write_text("")
    tool = subprocess.run(
        ["mosquitto_passwd", "-b", str(passwd), "u", "pa:ss w0rd"], capture_output=True
    )
    if tool.returncode != 0:
        pytest.skip("mosquitto_passwd is not installed")
    theirs = passwd.read_text().strip().split(":", 1)[1]
    assert accounts.verify_password("pa:ss w0rd", theirs)
    assert not accounts.verify_password("other", theirs)


def test_a_malformed_or_ruinous_hash_line_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "passwd"
    for line in ("nocolon", "u:$6$x$y", "u:$7$999999999$AAAA$AAAA", "u:$7$10$!!$AAAA"):
        p.write_text(line + "\n")
        with pytest.raises(accounts.AccountsError, match=r"passwd:1"):
            accounts.read_password_file(p)


def test_revoking_one_account_touches_no_other(tmp_path: Path) -> None:
    pw = tmp_path / "passwd"
    for i in (W1, W2, CAM):
        accounts.add_account(pw, tmp_path / "secrets", i)
    before = {line for line in pw.read_text().splitlines() if not line.startswith("demo.worker.w1")}
    assert accounts.revoke_account(pw, W1.name)
    assert set(pw.read_text().splitlines()) == before
    assert [i.name for i in accounts.list_accounts(pw)] == [W2.name, CAM.name]
    assert not accounts.revoke_account(pw, W1.name)


def test_admission_binds_the_client_id_to_the_account(tmp_path: Path) -> None:
    policy = _policy(tmp_path, W1, W2)
    s1 = _secret(tmp_path, W1)
    ok = policy.admit(W1.name, s1, client_id=W1.name)
    assert ok.admitted and ok.identity == W1
    assert policy.admit(W1.probe_name, s1, client_id=W1.probe_name).admitted
    # w1's own secret, but w2's client id: the session hijack every account could do before.
    assert policy.admit(W1.name, s1, client_id=W2.name).reason == "client_id_not_account"
    assert policy.admit(W2.name, s1, client_id=W2.name).reason == "bad_password"
    assert policy.admit(W1.name, None, client_id=W1.name).reason == "bad_password"
    assert policy.admit(None, None, client_id="x").reason == "no_username"
    assert policy.admit("admin", "x", client_id="admin").reason == "not_an_identity"
    assert policy.admit(CAM.name, "x", client_id=CAM.name).reason == "unknown_user"
    other = Identity("kit2", Role.WORKER, "w1")
    assert policy.admit(other.name, s1, client_id=other.name).reason == "other_mesh"


def test_an_open_mesh_admits_everyone_unrestricted() -> None:
    policy = AccessPolicy(BrokerConfig(), "demo")
    assert not policy.accounts_enabled
    admission = policy.admit(None, None, client_id="anything")
    assert admission.admitted and admission.identity is None
    assert policy.allowed(None, Operation.PUBLISH, T.worker_assignment("w1"))


def test_the_password_file_is_reloaded_when_it_changes(tmp_path: Path) -> None:
    policy = _policy(tmp_path, W1)
    assert policy.admit(CAM.name, "x", client_id=CAM.name).reason == "unknown_user"
    accounts.add_account(tmp_path / "passwd", tmp_path / "secrets", CAM)
    assert policy.try_reload() is None
    assert policy.admit(CAM.name, _secret(tmp_path, CAM), client_id=CAM.name).admitted
    accounts.revoke_account(tmp_path / "passwd", W1.name)
    policy.reload()
    assert policy.admit(W1.name, _secret(tmp_path, W1), client_id=W1.name).reason == (
        "unknown_user"
    )
    (tmp_path / "passwd").write_text("garbage\n")
    assert policy.try_reload() is not None  # kept the accounts it had
    assert policy.admit(CAM.name, _secret(tmp_path, CAM), client_id=CAM.name).admitted


def _can(policy: AccessPolicy, who: Identity, op: Operation, topic: str) -> bool:
    return policy.allowed(who, op, topic)


P, S, R = Operation.PUBLISH, Operation.SUBSCRIBE, Operation.RECEIVE


def test_a_worker_writes_only_its_own_topics(tmp_path: Path) -> None:
    p = AccessPolicy(BrokerConfig(), "demo", SCOPE)
    for topic in (
        T.worker_status("w1"),
        T.worker_heartbeat("w1"),
        T.app_results("gate-watch", "w1"),
        T.events_of(Role.WORKER, "w1"),
    ):
        assert _can(p, W1, P, topic), topic
    for topic in (
        T.worker_status("w2"),  # forged birth of another worker
        T.worker_heartbeat("w2"),  # forged heartbeats with a huge seq
        T.app_results("gate-watch", "w2"),  # results in another worker's name
        T.app_results("made-up", "w1"),  # retained junk under made-up apps
        T.worker_assignment("w1"),
        T.coordinator_status,
        T.sensor_frames("cam-gate"),
        T.events_of(Role.WORKER, "w2"),  # events in another worker's name
        T.events_of(Role.COORDINATOR, "main"),  # or a coordinator's: forged failovers
    ):
        assert not _can(p, W1, P, topic), topic
    assert _can(p, W1, S, T.worker_assignment("w1"))
    assert not _can(p, W1, S, T.worker_assignment("w2"))
    assert _can(p, W1, S, f"{T.prefix}/sensors/+/frames")
    assert not _can(p, W1, S, T.everything)


def test_a_sensor_writes_only_its_own_frames_and_status() -> None:
    p = AccessPolicy(BrokerConfig(), "demo", SCOPE)
    assert _can(p, CAM, P, T.sensor_frames("cam-gate"))
    assert _can(p, CAM, P, T.sensor_status("cam-gate"))
    assert not _can(p, CAM, P, T.sensor_frames("cam-dock"))
    assert not _can(p, CAM, P, T.sensor_status("cam-dock"))
    assert _can(p, CAM, S, T.app_results_filter("gate-watch"))
    assert not _can(p, CAM, P, T.app_results("gate-watch", "w1"))


def test_a_camera_reads_only_its_own_apps_where_the_mesh_knows_them(tmp_path: Path) -> None:
    """Least privilege on reads: the gate camera's process has no business with the dock's."""
    scope = AclScope.of(
        ["w1"], ["gate-watch", "dock"], (), [("cam-gate", "gate-watch"), ("cam-dock", "dock")]
    )
    p = AccessPolicy(BrokerConfig(), "demo", scope)
    for topic in (T.app_results_filter("gate-watch"), T.app_route("gate-watch")):
        assert _can(p, CAM, S, topic)
    for topic in (T.app_results_filter("dock"), T.app_route("dock"), T.app_results_filter()):
        assert not _can(p, CAM, S, topic), topic
    quiet = Identity("demo", Role.SENSOR, "cam-spare")  # a camera no app uses reads none
    assert not any(a is Access.READ for a, _f in identity_acl(quiet, scope))
    # The same rules in Mosquitto's ACL file.
    pw = tmp_path / "passwd"
    accounts.add_account(pw, tmp_path / "secrets", CAM)
    cfg = BrokerConfig(password_file=pw)
    conf = mq.write_mosquitto_config(cfg, "demo", tmp_path / "out", scope=scope)
    block = (conf.parent / "acl").read_text().split(f"user {CAM.name}\n")[1].split("user ")[0]
    assert f"topic read {T.app_route('gate-watch')}" in block
    assert "dock" not in block and "apps/+/" not in block


def test_only_coordinators_steer_and_only_the_mesh_s_own_ids() -> None:
    p = AccessPolicy(BrokerConfig(), "demo", SCOPE)
    for topic in (T.worker_assignment("w1"), T.app_route("dock"), T.coordinator_status):
        assert _can(p, COORD, P, topic)
        for who in (W1, CAM, OPS):
            assert not _can(p, who, P, topic), (who, topic)
    assert not _can(p, COORD, P, T.worker_assignment("w9"))  # no such worker: no retained junk
    assert not _can(p, COORD, P, T.app_route("made-up"))
    assert _can(p, OPS, S, T.everything)
    assert not _can(p, OPS, P, T.events_of(Role.OBSERVER, OPS.id))
    # Without a scope, rules use "+" (the embedded broker then caps retained messages).
    assert any("workers/+/assignment" in f for _a, f in identity_acl(COORD))


def test_mosquitto_acl_has_a_block_per_identity_and_binds_client_ids(tmp_path: Path) -> None:
    acl = mq.render_acl("demo", [W1, CAM], SCOPE)
    blocks = {b.split("\n", 1)[0]: b for b in acl.split("user ")[1:]}
    assert set(blocks) == {W1.name, W1.probe_name, CAM.name, CAM.probe_name}
    assert f"topic write {T.app_results('dock', 'w1')}" in blocks[W1.name]
    assert "results/w2" not in blocks[W1.name]
    pw = tmp_path / "passwd"
    accounts.add_account(pw, tmp_path / "secrets", W1)
    conf = mq.write_mosquitto_config(BrokerConfig(password_file=pw), "demo", tmp_path / "out")
    text = conf.read_text()
    assert "allow_anonymous false" in text and "use_username_as_clientid true" in text
    assert f"password_file {pw}" in text
    assert (tmp_path / "out" / "acl").read_text().count("user ") == 2


def test_login_throttle_doubles_per_failure_and_forgets() -> None:
    th = LoginThrottle(0.1, 1.0, forget_s=60.0, max_sources=2)
    assert th.delay("a", 0.0) == 0.0
    assert [th.failed("a", float(t)) for t in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert th.delay("b", 5.0) == 0.0  # another source is not slowed
    assert th.delay("a", 70.0) == 0.0  # a quiet minute forgets
    # A valid login from the same address does not forget them: one stolen device's secret
    # must not buy a guesser beside it a fresh budget of fast guesses. (Only refusals wait.)
    th.failed("a", 100.0)
    th.failed("a", 101.0)
    assert th.delay("a", 102.0) == 0.2
    for src in ("x", "y", "z"):
        th.failed(src, 0.0)
    assert th.delay("x", 0.0) == 0.0 and th.delay("z", 0.0) == 0.1  # bounded memory


def test_accounts_cli_init_add_revoke_list(tmp_path: Path) -> None:
    mesh = tmp_path / "mesh.yaml"
    mesh.write_text(
        "mesh: demo\n"
        "broker: {password_file: broker/passwd, secrets_dir: secrets}\n"
        "sensors: [{id: cam-gate, source: 'scene:chelsea', fps: 5}]\n"
        "apps: [{id: gate-watch, sensor: cam-gate, family: efficientnet}]\n"
        "workers: [{id: w1}, {id: w2}]\n"
    )
    load_mesh_config(mesh)  # the config is valid

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*python_module("faillite"), "accounts", *args, "-c", str(mesh)],
            capture_output=True,
            text=True,
            timeout=60,
        )

    init = run("init", "--observer", "ops")
    assert init.returncode == 0, init.stderr
    names = {Path(line).name for line in init.stdout.split()}
    assert names == {
        f"demo.{n}.secret"
        for n in ("sensor.cam-gate", "worker.w1", "worker.w2", "coordinator.main", "observer.ops")
    }
    assert run("add", "worker", "w3").returncode == 0
    assert run("revoke", "demo.worker.w1").returncode == 0
    listed = run("list").stdout.split()
    assert "demo.worker.w3" in listed and "demo.worker.w1" not in listed
    bad = run("revoke", "nonsense")
    assert bad.returncode == 2 and "not an identity" in bad.stderr and "Traceback" not in bad.stderr

"""Signed assignments and coordinator status: what a signature covers, keys, replays."""

from __future__ import annotations

import stat
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from faillite import messages
from faillite.config import SigningConfig
from faillite.pki_cli import cmd_signing_key
from faillite.signing import (
    SignatureError,
    Signer,
    SigningError,
    generate_key,
    load_signer,
    load_verifier,
    signed_bytes,
)
from faillite.topics import Topics
from workers.fencing import Fence

T = Topics("demo")
W1, W2 = T.worker_assignment("w1"), T.worker_assignment("w2")


def _a(term: int = 3, gen: int = 1, worker: str = "w1") -> messages.Assignment:
    return messages.Assignment(
        worker=worker,
        term=term,
        generation=gen,
        ts=1795459200.9,
        serve=(messages.Serve("gate-watch", "cam-gate", "efficientnet_lite0"),),
    )


@pytest.fixture
def signer() -> Signer:
    return Signer(Ed25519PrivateKey.generate(), "demo")


def test_signed_messages_verify_after_the_wire(signer: Signer) -> None:
    a = signer.sign(W1, _a())
    assert a.sig is not None and len(a.sig) == 88
    back = messages.decode(messages.Assignment, messages.encode(a))
    signer.verifier.verify(W1, back)
    st = signer.sign(
        T.coordinator_status,
        messages.CoordinatorStatus("main", "c0ffee12ab34", "leader", 3, 1795459200.8),
    )
    signer.verifier.verify(
        T.coordinator_status,
        messages.decode(messages.CoordinatorStatus, messages.encode(st)),
    )
    assert signer.sign(W1, a) == a  # an old sig is replaced, never signed over


def test_unsigned_tampered_and_foreign_key_are_refused(signer: Signer) -> None:
    v = signer.verifier
    with pytest.raises(SignatureError, match="unsigned") as info:
        v.verify(W1, _a())
    assert info.value.reason == "bad_signature"
    a = signer.sign(W1, _a())
    with pytest.raises(SignatureError, match="does not verify"):
        v.verify(W1, replace(a, serve=()))  # fenced everything: not what was signed
    with pytest.raises(SignatureError, match="does not verify"):
        v.verify(W1, replace(a, term=2**50))
    with pytest.raises(SignatureError, match="not base64"):
        v.verify(W1, replace(a, sig="!" * 88))
    other = Signer(Ed25519PrivateKey.generate(), "demo")
    assert not v.valid(W1, other.sign(W1, _a()))  # a key that is not the mesh's


def test_a_signature_holds_for_one_topic_and_one_mesh(signer: Signer) -> None:
    a = signer.sign(W1, _a())
    assert not signer.verifier.valid(W2, a)  # replayed on another worker's topic
    assert not signer.verifier.valid(W2, replace(a, worker="w2"))
    key = Ed25519PrivateKey.generate()  # the same key in two meshes
    assert signed_bytes("demo", W1, a) != signed_bytes("other", W1, a)
    assert not Signer(key, "demo").verifier.valid(W1, Signer(key, "other").sign(W1, _a()))


def test_a_signed_older_assignment_replayed_is_refused_by_the_fence(signer: Signer) -> None:
    f = Fence()
    f.status(
        signer.sign(T.coordinator_status, messages.CoordinatorStatus("m", "i", "leader", 3, 0.0))
    )
    old, new = signer.sign(W1, _a(gen=1)), signer.sign(W1, _a(gen=2))
    for a in (old, new):
        assert signer.verifier.valid(W1, a)
    assert f.assignment(old) == "apply" and f.assignment(new) == "apply"
    assert f.assignment(old) == "old"  # a good signature, an old version: not applied
    f.status(messages.CoordinatorStatus("m", "j", "leader", 4, 0.0))
    assert f.assignment(new) == "stale"  # the previous leader's, replayed


def test_keys_written_loaded_and_checked(tmp_path: Path, signer: Signer) -> None:
    private, public = generate_key(tmp_path / "keys")
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert stat.S_IMODE(public.stat().st_mode) == 0o644
    with pytest.raises(SigningError, match="exists"):
        generate_key(tmp_path / "keys")
    cfg = SigningConfig(public_key=public, private_key=private)
    s = load_signer(cfg, "demo")
    load_verifier(SigningConfig(public_key=public), "demo").verify(W1, s.sign(W1, _a()))
    with pytest.raises(SigningError, match="no private_key"):
        load_signer(SigningConfig(public_key=public), "demo")
    _, other_pub = generate_key(tmp_path / "other")
    with pytest.raises(SigningError, match="does not belong"):
        load_signer(SigningConfig(public_key=other_pub, private_key=private), "demo")
    with pytest.raises(SigningError, match="not a PEM public key"):
        load_verifier(SigningConfig(public_key=private), "demo")
    with pytest.raises(SigningError, match="cannot read"):
        load_verifier(SigningConfig(public_key=tmp_path / "nope.pub"), "demo")
    # --force replaces the pair, still 0600
    private2, _ = generate_key(tmp_path / "keys", overwrite=True)
    assert private2.read_bytes() != b"" and stat.S_IMODE(private2.stat().st_mode) == 0o600


def test_pki_signing_key_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    args = argparse.Namespace(out=str(tmp_path), name="mesh-sign", force=False)
    assert cmd_signing_key(args) == 0
    out = capsys.readouterr().out.split()
    assert out == [str(tmp_path / "mesh-sign.key"), str(tmp_path / "mesh-sign.pub")]
    assert cmd_signing_key(args) == 2  # exists: not overwritten
    assert "exists" in capsys.readouterr().err


def test_routes_placement_and_obituaries_are_signed_for_their_topic(signer: Signer) -> None:
    route_t, obit_t = T.app_route("gate-watch"), T.worker_status("w1")
    route = messages.Route("gate-watch", "w1", "efficientnet_lite0", 3, 7, 1795459200.0)
    placement = messages.Placement(term=3, generation=7, ts=1795459200.0)
    obituary = messages.WorkerStatus(
        worker="w1", incarnation="abc", state="offline", ts=1795459200.0, reason="silent"
    )
    cases: list[tuple[str, messages.Route | messages.Placement | messages.WorkerStatus]] = [
        (route_t, route),
        (T.placement, placement),
        (obit_t, obituary),
    ]
    for topic, msg in cases:
        signed = signer.sign(topic, msg)
        signer.verifier.verify(topic, messages.decode(type(msg), messages.encode(signed)))
        with pytest.raises(SignatureError):
            signer.verifier.verify(topic, msg)  # unsigned
    forged = replace(signer.sign(route_t, route), worker="w9")  # steered to a rogue worker
    with pytest.raises(SignatureError):
        signer.verifier.verify(route_t, forged)
    with pytest.raises(SignatureError):  # another app's route replayed here
        signer.verifier.verify(T.app_route("yard"), signer.sign(route_t, route))

"""The data plane's security (``agents.security``), with real processes and sockets: a cloud
with its run's CURVE keys lets the run's edge alone through, an edge that reconnects under
its routing id keeps its session, a sim run with CURVE leaves no key behind, and the rule
that turns ``auto`` into curve or plain."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
import yaml
import zmq
import zmq.auth

from agents.protocol import Message
from agents.security import (chosen_security, create_run_keys, key_file, new_routing_id,
                             secure_data_socket)
from orchestrator.lifecycle.launch import make_link
from shaping.clock import now
from shaping.profile import ProfileFile, resolve
from tests.cloud_process import cloud_process, raw_frames

OPEN_FIELDS = {"strategy": "fixed-k", "k": 5, "max_new_tokens": 8, "codec": "ids", "seed": 0,
               "sampling": {"decoding": "greedy", "temperature": 1.0, "top_k": 0, "top_p": 1.0}}
REFUSED_WAIT_S = 1.0     # how long a peer without the run's edge key waits for any answer


@pytest.fixture(scope="module")
def cloud(tmp_path_factory):
    with cloud_process(tmp_path_factory.mktemp("curve"), curve=True) as cloud:
        yield cloud


def attackers(keys: Path, other_run: Path) -> dict:
    """Peers' key setups that must not get through to a cloud with the run's ``keys``."""
    cloud_public, _ = zmq.auth.load_certificate(key_file(keys, "cloud"))
    edge_public, _ = zmq.auth.load_certificate(key_file(keys, "edge"))

    def client_key(public: bytes, secret: bytes):
        def apply(socket: zmq.Socket) -> None:
            socket.curve_publickey, socket.curve_secretkey = public, secret
            socket.curve_serverkey = cloud_public
        return apply

    fresh_public, fresh_secret = zmq.curve_keypair()
    return {
        "no keys": lambda socket: None,
        "another run's keys": lambda socket: secure_data_socket(socket, "edge", other_run),
        "the cloud's public key, a fresh client key": client_key(fresh_public, fresh_secret),
        "the edge's public key without its secret": client_key(edge_public, fresh_secret),
    }


def test_only_the_runs_edge_gets_through(cloud, tmp_path):
    """Each peer sends a ``close`` of a session it does not hold, which a cloud answers with
    an error to every peer it hears: the run's edge gets that error; the others get nothing,
    the cloud never sees their messages, stays up and serves a whole query afterwards."""
    assert "data plane CURVE-authenticated and encrypted" in cloud.log()
    heard = cloud.counts().get("messages", 0)
    peers = {name: cloud.peer(keys=keys) for name, keys in
             attackers(cloud.settings.curve_keys, create_run_keys(tmp_path / "other")).items()}
    for peer in peers.values():
        peer.send(Message("close", "legit/x/0"))
    deadline = now() + REFUSED_WAIT_S
    answered = [name for name, peer in peers.items() if peer.poll(deadline - now())]
    assert answered == []
    assert cloud.alive() and cloud.counts().get("messages", 0) == heard
    edge = cloud.peer()
    edge.send(Message("close", "legit/x/0"))
    assert edge.recv()[0].type == "error"
    assert cloud.legit_query().n_tokens == 12


def test_a_reconnecting_edge_keeps_its_session(cloud):
    """A broken TCP connection the cloud has not yet seen end: the edge's DEALER connects
    again under the same routing id while the old connection is still up (one that never
    reconnects, as a dead one); the ROUTER hands the id over, and the session opened on the
    old connection goes on on the new one."""
    routing_id = new_routing_id()
    before = cloud.peer(options={zmq.ROUTING_ID: routing_id, zmq.RECONNECT_IVL: -1})
    spec, prompt = ["prompt", "int32", [3]], b"\x01\x00\x00\x00" * 3
    before.socket.send_multipart(raw_frames("open", "kept", fields=OPEN_FIELDS, arrays=[spec],
                                            buffers=(prompt,)))
    opened, _, _ = before.recv()
    assert opened.type == "opened"
    after = cloud.peer(options={zmq.ROUTING_ID: routing_id})
    draft = {"ids": np.array([opened.fields["token"]], dtype=np.int32)}
    after.send(Message("draft", "kept", 1, {}, draft))
    verdict, _, _ = after.recv()
    assert verdict.type == "verdict", verdict.fields
    before.socket.close(linger=0)
    after.send(Message("draft", "kept", 2, {}, draft))
    assert after.recv()[0].type == "verdict"


def test_a_sim_run_with_curve_uses_it_and_leaves_no_key_behind(tmp_path, monkeypatch, capsys):
    from orchestrator.cli import main
    temporary = Path(tempfile.mkdtemp(prefix="t-"))     # short: ipc:// paths stop at 107 bytes
    monkeypatch.setattr(tempfile, "tempdir", str(temporary))
    try:
        code = main(["run", "--mode", "sim", "--profile", "lan", "--job", "smoke", "--strategy",
                     "fixed-k", "--queries", "1", "--max-new-tokens", "8",
                     "--data-plane-security", "curve", "--results", str(tmp_path)])
        assert code == 0, capsys.readouterr().err
        assert not any(temporary.iterdir()), "the run's socket folder (and keys) outlived it"
    finally:
        temporary.rmdir()
    folder, = tmp_path.iterdir()
    resolved = yaml.safe_load((folder / "config.yaml").read_text())
    assert resolved["data_plane_security"] == "curve"
    assert resolved["job"]["data_plane_security"] == "curve"
    for side in ("cloud", "edge"):
        assert "data plane CURVE-authenticated" in (folder / f"{side}.log").read_text()
        settings = yaml.safe_load((folder / f"{side}.settings.json").read_text())
        assert Path(settings["curve_keys"]).is_relative_to(temporary)
    files = [path for path in folder.rglob("*") if path.is_file()]
    assert not [path for path in files if "key" in path.name or b"secret-key" in path.read_bytes()]
    assert (folder / "queries.jsonl").read_text().count("\n") == 1


@pytest.mark.parametrize("data_host, own_namespaces, chosen", [
    ("127.0.0.1", False, "plain"), ("::1", False, "plain"), ("localhost", False, "plain"),
    ("10.77.3.2", True, "plain"),            # the far end of the run's own veth pair or router
    ("10.77.3.2", False, "curve"), ("192.0.2.10", False, "curve"),
    ("cloud.example.org", False, "curve"),
])
def test_auto_is_curve_once_the_data_plane_leaves_loopback_and_the_runs_namespaces(
        data_host, own_namespaces, chosen):
    assert chosen_security("auto", data_host, own_namespaces) == chosen
    for forced in ("curve", "plain"):
        assert chosen_security(forced, data_host, own_namespaces) == forced


@pytest.mark.parametrize("mode", ["sim", "emulated", "vm"])
def test_auto_is_plain_on_every_link_of_a_mode(mode):
    """Nothing is created: a link is only made, not entered (vm: a router VM of its own, not
    booted)."""
    link = make_link(mode, resolve(ProfileFile(rtt_ms=10.0), "test"), seed=0)
    assert chosen_security("auto", link.data_host, link.own_namespaces) == "plain"

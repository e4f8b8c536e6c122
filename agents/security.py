"""The data plane's security: ZeroMQ CURVE with keys made for each run, the rule that says
when a run uses it, and the edge's routing id.

- ``chosen_security``: ``auto`` (the default) is ``curve`` whenever the data plane leaves
  this host's loopback and the network namespaces the run made (its veth pair, or the router
  VM joining them), ``plain`` otherwise; ``curve`` and ``plain`` force it.
- ``create_run_keys``: a new CURVE key pair per agent, written by pyzmq's ``zmq.auth``
  into a folder the run keeps private (its socket folder, mode 0700, removed at teardown);
  agent settings hold only the folder's path, never a key.
- ``secure_data_socket``: applies them to an agent's data socket before it binds or
  connects.  The cloud's ROUTER is the CURVE server, and a ``zmq.auth``
  ``ThreadAuthenticator`` (ZAP) lets only the run's edge key in: a peer without it (no
  keys, another run's keys, a fresh key pair, the edge's public key without its secret)
  never completes the handshake, so not one of its messages reaches the cloud.  The edge
  pins the cloud's public key.  Everything on the wire is then encrypted too.
- ``new_routing_id``: the name the edge's DEALER gives itself.  The cloud binds sessions to
  it (``agents.cloud``) and its ROUTER hands it over to the newest connection
  (``agents.protocol.Channel``), so an edge that reconnects after a broken TCP connection
  keeps its sessions.
"""

from __future__ import annotations

import ipaddress
import secrets
from pathlib import Path
from typing import Literal

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from shaping.profile import Side

DataPlaneSecurity = Literal["auto", "curve", "plain"]   # what a job asks for
Security = Literal["curve", "plain"]                    # what a run uses
ROUTING_ID_BYTES = 16


def leaves_the_run(data_host: str, own_namespaces: bool) -> bool:
    """Whether the data plane can be reached from outside the run: not when it is on this
    host's loopback, nor when it crosses only network namespaces the run made."""
    if own_namespaces:
        return False
    try:
        return not ipaddress.ip_address(data_host).is_loopback
    except ValueError:                      # a host name: only ``localhost`` is loopback
        return data_host != "localhost"


def chosen_security(requested: DataPlaneSecurity, data_host: str,
                    own_namespaces: bool) -> Security:
    """What a run asking for ``requested`` uses on a data plane served at ``data_host``."""
    if requested != "auto":
        return requested
    return "curve" if leaves_the_run(data_host, own_namespaces) else "plain"


def key_file(keys: Path, side: Side, secret: bool = False) -> Path:
    """``side``'s public key (``<side>/<side>.key``) or secret key (``.key_secret``)."""
    return keys / side / f"{side}.key{'_secret' if secret else ''}"


def create_run_keys(folder: Path) -> Path:
    """A new CURVE key pair for each agent, under ``folder`` (made here, mode 0700): the
    folder ``AgentSettings.curve_keys`` names.  ``folder/edge`` holds no public key but the
    edge's: it is what the cloud's authenticator accepts."""
    folder.mkdir(mode=0o700)
    for side in ("cloud", "edge"):
        (folder / side).mkdir(mode=0o700)
        zmq.auth.create_certificates(folder / side, side)
    return folder


def secure_data_socket(socket: zmq.Socket, side: Side,
                       keys: Path) -> ThreadAuthenticator | None:
    """CURVE on ``side``'s data socket, with the run's ``keys``; call before bind or
    connect.  The cloud gets its authenticator (started; stop it before the context
    terminates), which accepts the edge's key alone."""
    public, secret = zmq.auth.load_certificate(key_file(keys, side, secret=True))
    socket.curve_publickey, socket.curve_secretkey = public, secret
    if side == "edge":
        socket.curve_serverkey, _ = zmq.auth.load_certificate(key_file(keys, "cloud"))
        return None
    allowed = key_file(keys, "edge")
    if not allowed.is_file():       # the authenticator would only log it, and let no one in
        raise FileNotFoundError(f"no edge key to accept: {allowed}")
    authenticator = ThreadAuthenticator(socket.context)
    authenticator.start()
    authenticator.configure_curve(domain="*", location=str(allowed.parent))
    socket.curve_server = True
    return authenticator


def describe_data_plane(side: Side, keys: Path | None) -> str:
    """What the data plane of ``side`` is, for the agent's start-up log line."""
    if keys is None:
        return "plain: neither authenticated nor encrypted"
    whom = "accepts only this run's edge key" if side == "cloud" else "the cloud's key pinned"
    return f"CURVE-authenticated and encrypted (keys of this run; {whom})"


def new_routing_id() -> bytes:
    """A routing id for the edge's DEALER: 16 random bytes, the first never 0 (ZeroMQ
    reserves ids starting with a zero byte for the ones it assigns)."""
    # Unguessable: nearly 128 bits from the OS's CSPRNG, new in every process, sent
    # only to the cloud in the ZMTP handshake (encrypted under CURVE; in clear text only on
    # a plain data plane, which ``auto`` keeps to paths no one outside the run sees) and never
    # in a message, so no other peer can claim it and be handed the edge's sessions.
    return bytes([1 + secrets.randbelow(255)]) + secrets.token_bytes(ROUTING_ID_BYTES - 1)

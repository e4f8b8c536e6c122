"""LinkTopology and leftover cleanup, against the real kernel where it can be.

Tests that create namespaces skip (with the reason) unless we are root and
network namespaces work.  Every namespace, veth and owner file they make
carries a prefix of the form ``tp<8 hex>``, and the ``leak_guard`` fixture
checks, from ``ip netns list``, ``ip -o link show type veth`` and the owner
folder, that none of them outlives its test.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import threading

import pytest

pyroute2 = pytest.importorskip("pyroute2")
from pyroute2 import IPRoute, netns  # noqa: E402

from shaping import cleanup, topology  # noqa: E402
from shaping.topology import OWNER_DIR, LinkTopology  # noqa: E402
from tests.netns_helpers import PrefixTracker, ip as _ip  # noqa: E402

PREFIXES = PrefixTracker("tp")
fresh_prefix = PREFIXES.fresh


@pytest.fixture
def leak_guard(netns_ok):
    before = PREFIXES.ours()
    yield
    assert PREFIXES.ours() == before, "namespaces, veths or owner files left behind"


@pytest.fixture(scope="module", autouse=True)
def nothing_left_at_the_end():
    yield
    if os.geteuid() == 0:
        assert PREFIXES.ours() == ([], [], []), "left behind by test_topology"


def _remove_namespace(name: str) -> None:
    if name in netns.listnetns():
        netns.remove(name)


# Naming, without the kernel ------------------------------------------------------

def test_prefix_rules():
    assert topology.validate_prefix("es1234") == "es1234"
    for bad in ("", "e", "1abc", "Es12", "es-12", "es_12", "a" * 13, None):
        with pytest.raises(ValueError):
            topology.validate_prefix(bad)
    assert re.fullmatch(topology.DEFAULT_PREFIX_PATTERN, topology.new_prefix())


def test_names_fit_interface_names():
    prefix = "a" + "b" * 11
    assert len(topology.veth_name(prefix, "e")) <= 15
    topo = LinkTopology(prefix)
    assert (topo.edge_ns, topo.cloud_ns) == (f"{prefix}-edge", f"{prefix}-cloud")
    assert (topo.edge_if, topo.cloud_if) == (f"{prefix}-e", f"{prefix}-c")


def test_addresses_come_from_a_private_slash30_of_the_prefix():
    topo = LinkTopology("es1234")
    subnet = topology.subnet_for("es1234")
    assert subnet == topology.subnet_for("es1234")           # deterministic
    assert subnet.prefixlen == 30 and subnet.is_private
    assert str(subnet).startswith("10.77.")
    assert topo.edge_ip == str(subnet.network_address + 1)
    assert topo.cloud_ip == str(subnet.network_address + 2)
    assert len({topology.subnet_for(f"es{i}") for i in range(200)}) > 100


def test_run_in_prefixes_ip_netns_exec():
    argv = ["python", "-m", "agents.edge"]
    assert topology.run_in("es1-edge", argv) == ["ip", "netns", "exec", "es1-edge", *argv]
    topo = LinkTopology("es1")
    assert topo.run_in("cloud", argv) == ["ip", "netns", "exec", "es1-cloud", *argv]


# The topology on the real kernel ------------------------------------------------

def _echo_once(topo: LinkTopology, payload: bytes) -> bytes:
    server = topo.socket("cloud")
    client = topo.socket("edge")
    try:
        server.settimeout(5)
        client.settimeout(5)
        server.bind((topo.cloud_ip, 0))
        server.listen(1)
        client.connect((topo.cloud_ip, server.getsockname()[1]))
        conn, (peer_ip, _) = server.accept()
        with conn:
            assert peer_ip == topo.edge_ip
            conn.settimeout(5)
            client.sendall(payload)
            client.shutdown(socket.SHUT_WR)
            received = b""
            while chunk := conn.recv(65536):
                received += chunk
            conn.sendall(received[::-1])
        reply = b""
        while chunk := client.recv(65536):
            reply += chunk
        return reply
    finally:
        client.close()
        server.close()


def test_topology_is_built_and_torn_down(leak_guard):
    prefix = fresh_prefix()
    with LinkTopology(prefix) as topo:
        assert topo.is_up
        namespaces = _ip("netns", "list")
        assert f"{prefix}-edge" in namespaces and f"{prefix}-cloud" in namespaces
        assert topology.owner_alive(prefix)
        # nothing appears in the root namespace
        assert f"{prefix}-e" not in _ip("-o", "link", "show", "type", "veth")
        for side in ("edge", "cloud"):
            namespace, ifname = topo.namespace(side), topo.interface(side)
            links = _ip("-n", namespace, "-o", "link", "show")
            assert re.search(r"\d+: lo: <[^>]*\bUP\b", links)
            assert re.search(rf"\d+: {re.escape(ifname)}@\S+: <[^>]*\bUP\b", links)
            addresses = _ip("-n", namespace, "-o", "addr", "show", "dev", ifname)
            assert f"inet {topo.ip(side)}/30" in addresses
            assert "inet6" not in addresses              # no IPv6 chatter on the link
            flags = topology.offload_state(namespace, ifname)
            assert not any(flags[name] for name in topology.OFFLOAD_FLAGS), flags
            with topo.ipr(side) as ipr:
                link = ipr.link("get", index=topo.ifindex(side))[0]
                assert link.get_attr("IFLA_GSO_MAX_SEGS") == 1
        assert _echo_once(topo, b"hello over veth") == b"hello over veth"[::-1]
    assert not topo.is_up
    assert f"{prefix}-edge" not in _ip("netns", "list")
    assert not topology.owner_file(prefix).exists()


def test_teardown_runs_on_exceptions_and_is_idempotent(leak_guard):
    prefix = fresh_prefix()
    topo = LinkTopology(prefix)
    with pytest.raises(KeyError):
        with topo:
            assert prefix + "-edge" in netns.listnetns()
            raise KeyError("boom")
    assert prefix + "-edge" not in netns.listnetns()
    assert prefix + "-cloud" not in netns.listnetns()
    topo.close()
    topo.close()


def test_a_failure_half_way_removes_what_was_made(leak_guard, monkeypatch):
    prefix = fresh_prefix()

    def broken(namespace, ifname):
        raise RuntimeError("ethtool says no")

    monkeypatch.setattr(topology, "disable_offloads", broken)
    with pytest.raises(RuntimeError, match="ethtool says no"):
        LinkTopology(prefix).create()
    assert not [name for name in netns.listnetns() if name.startswith(prefix)]
    assert not topology.owner_file(prefix).exists()


def test_a_namespace_it_did_not_create_is_left_alone(leak_guard):
    prefix = fresh_prefix()
    foreign = f"{prefix}-cloud"
    netns.create(foreign)
    try:
        topo = LinkTopology(prefix)
        with pytest.raises(FileExistsError, match="already|in use"):
            topo.create()
        topo.close()
        assert foreign in netns.listnetns()
        assert f"{prefix}-edge" not in netns.listnetns()
    finally:
        _remove_namespace(foreign)


# Cleanup of leftovers -------------------------------------------------------------

def test_cleanup_removes_only_leftovers_of_the_scheme(leak_guard):
    dead, live = fresh_prefix(), fresh_prefix()
    pattern = f"(?:{dead}|{live})"
    fake_namespaces = [f"{dead}-edge", f"{dead}-cloud", f"{dead}-probe"]
    bystanders = [f"{dead}-other", f"{dead}x-edge", f"x{dead}-edge"]
    try:
        for name in fake_namespaces + bystanders:
            netns.create(name)
        with IPRoute() as ipr:      # a veth pair a kill -9 left in the root namespace
            ipr.link("add", ifname=f"{dead}-e", kind="veth", peer=f"{dead}-c")
        OWNER_DIR.mkdir(parents=True, exist_ok=True)
        topology.owner_file(dead).write_text("999999999 0\n")   # a dead owner

        with LinkTopology(live):
            found = cleanup.leftovers(pattern)
            assert found.namespaces == sorted(fake_namespaces)
            assert found.veths == sorted([f"{dead}-e", f"{dead}-c"])
            assert found.owner_files == [dead]
            everything = cleanup.leftovers(pattern, include_live=True)
            assert f"{live}-edge" in everything.namespaces

            removed = cleanup.remove_leftovers(pattern)
            assert sorted(removed.namespaces) == sorted(fake_namespaces)
            assert sorted(removed.veths) == sorted([f"{dead}-e", f"{dead}-c"])
            assert not cleanup.leftovers(pattern)
            still_there = netns.listnetns()
            assert all(name in still_there for name in bystanders)
            assert f"{live}-edge" in still_there and f"{live}-cloud" in still_there
            assert topology.owner_alive(live)
        assert not topology.owner_file(dead).exists()
    finally:
        for name in fake_namespaces + bystanders:
            _remove_namespace(name)
        with IPRoute() as ipr:
            for name in (f"{dead}-e", f"{dead}-c"):
                if ipr.link_lookup(ifname=name):
                    ipr.link("del", index=ipr.link_lookup(ifname=name)[0])
        topology.remove_owner(dead)


def test_cleanup_with_the_default_pattern_ignores_test_names(netns_ok):
    prefix = fresh_prefix()
    netns.create(f"{prefix}-edge")
    try:
        assert f"{prefix}-edge" not in cleanup.leftovers().namespaces
    finally:
        _remove_namespace(f"{prefix}-edge")


def test_leftovers_reports_processes_inside(leak_guard):
    prefix = fresh_prefix()
    name = f"{prefix}-edge"
    netns.create(name)
    sleeper = None
    try:
        sleeper = subprocess.Popen(topology.run_in(name, ["sleep", "30"]))
        ready = threading.Event()
        for _ in range(100):                       # up to 2 s for `ip netns exec` to switch
            found = cleanup.leftovers(re.escape(prefix))
            if sleeper.pid in found.processes.get(name, []):
                ready.set()
                break
            ready.wait(0.02)
        assert ready.is_set(), found
    finally:
        if sleeper is not None:
            sleeper.kill()
            sleeper.wait(timeout=10)
        _remove_namespace(name)

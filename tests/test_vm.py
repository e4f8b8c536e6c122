"""The VM: its pure parts, the vm mode's router VM for real, and commands run inside.

The router tests share the session's one router VM (``router_vm`` in
``tests/conftest.py``; software emulation: ~10-15 s to boot); the tests of the
command line boot their own (one each), and the two ``orchestrator vm --``
tests boot the VM that runs a command.  The full runs and probes through the
router are in ``tests/test_emulated.py`` (``netem_mode``); what timing
targets the router meets is measured by ``benchmarks/vm_router.py``.
"""

from __future__ import annotations

import ast
import math
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from pyroute2 import netns
from pyroute2.netlink import NLM_F_DUMP, NLM_F_REQUEST
from pyroute2.netlink.rtnl import RTM_GETNEIGH
from pyroute2.netlink.rtnl.ndmsg import NUD_PERMANENT, ndmsg

from orchestrator.lifecycle import vm
from orchestrator.lifecycle.doctor import Capability, HostReport, choose_mode
from orchestrator.lifecycle.launch import process_cpus
from shaping import router_guest
from shaping.link import EmulatedLink
from shaping.link_model import DirectionLink, JitterSource
from shaping.profile import DirectionSpec, LinkState, NetworkProfile, TimedLinkState
from shaping.qdisc.operations import current_qdiscs
from shaping.router import MTU, RouterTopology, TapEnd, router_mac
from shaping.topology import DEFAULT_PREFIX_PATTERN, offload_state, open_netns
from tests.conftest import qemu_processes
from tests.loaded_host import late_allowance_ms
from tests.netns_helpers import made_by_the_suite, snapshot, taps
from validation.link_probe import (
    BASELINE_FLOOR_MS,
    KernelPaths,
    ProbePlan,
    measure_packets,
    measure_path_baseline,
    robust_sigma,
    sigma_se,
)

ROOT = Path(__file__).resolve().parent.parent

MODULES_DEP = """\
kernel/fs/9p/9p.ko: kernel/net/9p/9pnet.ko kernel/fs/netfs/netfs.ko
kernel/net/9p/9pnet.ko:
kernel/fs/netfs/netfs.ko:
kernel/net/9p/9pnet_virtio.ko.xz: kernel/net/9p/9pnet.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/net/sched/sch_netem.ko:
"""


# Pure parts ------------------------------------------------------------------------------------

def test_module_load_order_puts_dependencies_first_once():
    order = vm.module_load_order(MODULES_DEP, ("virtio_pci", "9pnet_virtio", "9p"))
    assert order == ["kernel/drivers/virtio/virtio_ring.ko", "kernel/drivers/virtio/virtio_pci.ko",
                     "kernel/net/9p/9pnet.ko", "kernel/net/9p/9pnet_virtio.ko.xz",
                     "kernel/fs/netfs/netfs.ko", "kernel/fs/9p/9p.ko"]
    with pytest.raises(vm.VmError, match="nosuch"):
        vm.module_load_order(MODULES_DEP, ("nosuch",))


def test_find_kernel_wants_netem_in_the_modules(tmp_path):
    boot, modules = tmp_path / "boot", tmp_path / "modules"
    boot.mkdir()
    for version, dep in (("6.1.0-9-amd64", MODULES_DEP), ("6.12.0-1-amd64", "kernel/x.ko:\n")):
        (boot / f"vmlinuz-{version}").write_bytes(b"kernel")
        (modules / version).mkdir(parents=True)
        (modules / version / "modules.dep").write_text(dep)
    kernel = vm.find_kernel(boot, modules)
    assert kernel.version == "6.1.0-9-amd64"     # the newer one has no sch_netem
    assert vm.find_kernel(tmp_path / "nothing", modules) is None


def test_static_busybox_is_told_from_a_dynamic_binary():
    assert vm._is_static(Path(sys.executable).resolve()) is False
    busybox = vm.find_busybox()
    if busybox is None:
        pytest.skip("no busybox-static installed")
    assert vm._is_static(busybox)


KERNEL = vm.GuestKernel("6.1.0-9-amd64", Path("/boot/vmlinuz-6.1.0-9-amd64"),
                        Path("/lib/modules/6.1.0-9-amd64"))


def test_qemu_command_line_shares_root_read_only_and_results_writable(tmp_path):
    argv = vm.qemu_argv("qemu-system-x86_64", KERNEL, tmp_path / "i.cpio", tmp_path,
                        [Path("/work/results")], accel="tcg", cpus=2, memory_mib=1024)
    shares = [argv[i + 1] for i, arg in enumerate(argv) if arg == "-virtfs"]
    assert shares[0].startswith("local,path=/,mount_tag=hostroot") and "readonly=on" in shares[0]
    assert "readonly" not in shares[2] and "path=/work/results,mount_tag=rw0" in shares[2]
    assert argv[argv.index("-accel") + 1] == "tcg,thread=multi"
    assert "-no-reboot" in argv and argv[argv.index("-nic") + 1] == "none"
    assert vm.accel_args("kvm", 1) == ["-accel", "kvm", "-cpu", "host"]


def test_router_qemu_gets_a_nic_per_tap_by_fd_and_a_control_port(tmp_path):
    taps = [TapEnd("edge", "es1-e", 7, "52:54:00:00:00:01"),
            TapEnd("cloud", "es1-c", 8, "52:54:00:00:00:02")]
    argv = vm.qemu_argv("qemu", KERNEL, tmp_path / "i.cpio", tmp_path, [], accel="tcg", cpus=1,
                        memory_mib=384, devices=vm.router_devices(taps, tmp_path / "c.sock"))
    assert "-nic" not in argv
    netdevs = [argv[i + 1] for i, arg in enumerate(argv) if arg == "-netdev"]
    assert netdevs == ["tap,id=edge,fd=7", "tap,id=cloud,fd=8"]
    devices = [argv[i + 1] for i, arg in enumerate(argv) if arg == "-device"]
    assert "virtio-net-pci,netdev=edge,mac=52:54:00:00:00:01" in devices
    assert f"virtserialport,bus=serial.0,chardev=control,name={vm.GUEST_PORT}" in devices
    assert f"socket,id=control,path={tmp_path / 'c.sock'},server=off" in argv


def test_router_topology_layout_without_booting():
    topo = RouterTopology(boot=None, prefix="es1234")
    edge, cloud = topo.subnets["edge"], topo.subnets["cloud"]
    assert edge.prefixlen == cloud.prefixlen == 30 and not edge.overlaps(cloud)
    assert (topo.edge_ip, topo.router_ips["edge"]) == (str(edge[1]), str(edge[2]))
    assert (topo.cloud_ip, topo.router_ips["cloud"]) == (str(cloud[1]), str(cloud[2]))
    assert (topo.edge_if, topo.cloud_if) == ("es1234-e", "es1234-c")      # the TAP ends
    assert router_mac("es1234", "edge") != router_mac("es1234", "cloud")
    assert int(router_mac("es1234", "edge").split(":")[0], 16) & 0b10      # locally administered


def test_the_guest_program_needs_only_the_standard_library():
    tree = ast.parse(Path(router_guest.__file__).read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree)
                if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert imported - {"__future__"} <= set(sys.stdlib_module_names)


def test_the_guest_knows_where_the_kernels_answer_ends():
    last = router_guest._last
    error, done, new_qdisc = 2, 3, 36
    multi, ack, dump = 2, 4, 0x300
    assert last(error, 0, ack)                       # an ACK (or a NACK) ends any request
    assert not last(new_qdisc, multi, dump) and last(done, multi, dump)
    assert last(16, 0, 0) and not last(16, 0, ack)   # a get without ACK: its one answer


def test_guest_script_quotes_every_argument():
    script = vm.guest_script(["echo", "a b", "$HOME", "it's"], Path("/x y"), {"K": "v w"})
    assert "export K='v w'" in script and "cd '/x y'" in script
    assert script.rstrip().endswith("""exec echo 'a b' '$HOME' 'it'"'"'s'""")


def _report(**ok: bool) -> HostReport:
    names = ("netns", "veth", "sch_netem", "sch_tbf", "qemu", "vm kernel")
    return HostReport(root=ok.pop("root", True), in_vm=ok.pop("in_vm", False),
                      checks=[Capability(name, ok.get(name.replace(" ", "_"), True), name)
                              for name in names])


def test_mode_choice_follows_the_issue_rule():
    assert choose_mode("auto", _report())[0] == "emulated"
    assert choose_mode("auto", _report(sch_netem=False))[0] == "vm"
    assert choose_mode("auto", _report(sch_netem=False), needs_netem=False)[0] == "emulated"
    assert choose_mode("auto", _report(sch_netem=False, qemu=False))[0] == "sim"
    assert choose_mode("auto", _report(root=False))[0] == "sim"
    assert choose_mode("auto", _report(in_vm=True))[0] == "emulated"   # the guest has netem
    assert choose_mode("sim", _report())[0] == "sim"
    with pytest.raises(ValueError, match="sch_netem"):
        choose_mode("emulated", _report(sch_netem=False))
    with pytest.raises(ValueError, match="qemu"):
        choose_mode("vm", _report(qemu=False, sch_netem=False))
    with pytest.raises(ValueError, match="inside"):
        choose_mode("vm", _report(in_vm=True))
    mode, reason = choose_mode("auto", _report(sch_netem=False))
    assert "lacks sch_netem" in reason and "natively" in reason


# The router VM (the session's) -----------------------------------------------------------------

def _link(ifname: str, namespace: str) -> dict:
    with open_netns(namespace) as ipr:
        msg = ipr.link("get", index=ipr.link_lookup(ifname=ifname)[0])[0]
    stats = msg.get_attr("IFLA_STATS64")
    return {"mtu": msg.get_attr("IFLA_MTU"), "kind": msg.get_nested("IFLA_LINKINFO",
                                                                    "IFLA_INFO_KIND"),
            "packets": stats["rx_packets"] + stats["tx_packets"]}


def _ping(topo, side: str, address: str, timeout_s: float = 1.0) -> bool:
    """One ICMP echo from ``side``'s namespace; whether a reply came."""
    with netns.create_socket(topo.namespace(side), socket.AF_INET, socket.SOCK_RAW,
                             socket.IPPROTO_ICMP) as sock:
        body = struct.pack("!BBHHH", 8, 0, 0, 0x4553, 1) + b"edgespec"
        checksum = _inet_checksum(body)
        sock.sendto(body[:2] + struct.pack("!H", checksum) + body[4:], (address, 0))
        sock.settimeout(timeout_s)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                packet, (source, _) = sock.recvfrom(2048)
            except socket.timeout:
                return False
            icmp = packet[(packet[0] & 0x0F) * 4:]
            if source == address and icmp[0] == 0 and icmp[4:6] == b"\x45\x53":
                return True
    return False


def _inet_checksum(data: bytes) -> int:
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    return ~(total + (total >> 16)) & 0xFFFF


def test_the_router_is_a_plain_router_with_offloads_off(router_vm):
    topo = router_vm
    for side in ("edge", "cloud"):
        namespace, ifname = topo.namespace(side), topo.interface(side)
        link = _link(ifname, namespace)
        assert (link["kind"], link["mtu"]) == ("tun", MTU)
        assert not any(offload_state(namespace, ifname)[flag] for flag in
                       ("tcp-segmentation-offload", "generic-segmentation-offload",
                        "generic-receive-offload"))
        with open_netns(namespace) as ipr:        # no link-local address, hence no DAD
            index = ipr.link_lookup(ifname=ifname)[0]
            assert [a for a in ipr.get_addr(family=socket.AF_INET6) if a["index"] == index] == []
    if process_cpus():          # the router forwards on the edge agent's CPUs
        assert os.sched_getaffinity(topo.router.pid) == process_cpus()["router"]
    for name, interface in topo.guest["interfaces"].items():
        assert interface["mtu"] == MTU, name
        assert not any(interface["offloads"].values()), (name, interface)
    sysctls = topo.guest["sysctls"]
    assert sysctls["net/ipv4/ip_forward"] == "1"
    assert sysctls["net/ipv6/conf/all/disable_ipv6"] == "1"
    assert sysctls["net/ipv4/conf/all/send_redirects"] == "0"
    # nothing on the shaped path waits for ARP: every end knows its next hop's MAC
    for side in ("edge", "cloud"):
        with open_netns(topo.namespace(side)) as ipr:
            neighbours = {(n.get_attr("NDA_DST"), n.get_attr("NDA_LLADDR"), n["state"])
                          for n in ipr.get_neighbours(family=socket.AF_INET,
                                                      ifindex=topo.ifindex(side))}
        assert (topo.router_ips[side], router_mac(topo.prefix, side),
                NUD_PERMANENT) in neighbours
    dump = ndmsg()
    dump["family"] = socket.AF_INET
    guest_neighbours = {(n.get_attr("NDA_DST"), n.get_attr("NDA_LLADDR"), n["state"])
                        for n in topo.netlink.nlm_request(dump, RTM_GETNEIGH,
                                                          NLM_F_REQUEST | NLM_F_DUMP)}
    for side in ("edge", "cloud"):
        assert (topo.ip(side), topo.tap_macs[side], NUD_PERMANENT) in guest_neighbours
    # an entry the guest already holds (it makes one when an agent's packet arrives before
    # wait_ready gets to that side: CI saw EEXIST) is replaced, not an error
    for side in ("edge", "cloud"):
        index = topo.netlink.link_lookup(ifname=topo.guest_interfaces[side])[0]
        topo.netlink.neighbour_add(index, topo.ip(side), topo.tap_macs[side])
    # it forwards, and answers nothing itself
    assert _ping(topo, "edge", topo.cloud_ip)
    assert not _ping(topo, "edge", topo.router_ips["edge"])
    # an idle link carries nothing: no IPv6 autoconf, no chatter of the guest's own
    before = [_link(topo.interface(side), topo.namespace(side))["packets"]
              for side in ("edge", "cloud")]
    time.sleep(3.0)
    after = [_link(topo.interface(side), topo.namespace(side))["packets"]
             for side in ("edge", "cloud")]
    assert after == before


JITTER_PLAN = {"packets": 2000, "interval_s": 0.002, "delay_ms": 40}


def _jitter_profile(distribution: str) -> NetworkProfile:
    """The plan's delay each way; 10 ms of jitter drawn from ``distribution`` on the uplink
    only: the downlink carries netem's timer alone, so it measures, at the same moments, the
    router's own noise, whose timer lateness on a loaded host (above all in a TCG guest) the
    unshaped path does not contain."""
    jittered = DirectionSpec(delay_ms=JITTER_PLAN["delay_ms"], jitter_ms=10,
                             jitter_distribution=distribution,
                             allow_reordering=True)       # the raw law, no in-order release
    return NetworkProfile(name=f"jitter-{distribution}", initial=LinkState(
        uplink=jittered, downlink=DirectionSpec(delay_ms=JITTER_PLAN["delay_ms"])))


def _one_way_ms(paths) -> dict[str, np.ndarray]:
    samples = measure_packets(paths, JITTER_PLAN["packets"], JITTER_PLAN["interval_s"], 64, 1.5)
    return {direction: np.asarray(owd) for direction, owd in samples.owd_ms.items()}


@pytest.fixture(scope="module")
def unshaped_router_ms(router_vm) -> dict[str, np.ndarray]:
    """The router's own one-way delay each way, no qdisc: the path's offset."""
    return _one_way_ms(KernelPaths(router_vm))


def _sim_leg_ms(spec: DirectionSpec, n: int) -> np.ndarray:
    """One-way delays of the sim link's model (``DirectionLink``) for single-packet messages
    sent a second apart (TCP's in-order delivery never binds)."""
    link = DirectionLink(spec, np.random.default_rng(3), srtt_s=0.1)
    return np.array([(link.transit(float(i), 100).deliver_at_s - i) * 1000 for i in range(n)])


@pytest.mark.slow
@pytest.mark.parametrize("distribution", ["uniform", "normal", "pareto", "paretonormal"])
def test_one_jitter_law_on_the_kernel_and_the_sim_link(distribution, router_vm, unshaped_router_ms,
                                                       record_property):
    """Median and sigma (the standard deviation, and IQR / 1.349) of the one-way delay netem
    delivers (in the router VM, the raw law: no in-order release) and of the sim link's model,
    each against the law both draw from.  Bounds: where 99.98 % of runs of 2000 packets drawn
    from the law fall, at least +-5 % (a heavy tail's sample std is skewed: a symmetric
    standard error misses its upper side), widened by the router's own noise, measured on the
    unjittered downlink during the same seconds (``_jitter_profile``): its std, stalls
    included, added linearly for the std (a bound that holds however the router's delay
    correlates with the law's, e.g. under load); its IQR sigma for the IQR sigma.  The
    kernel's median may also be late by the timer allowance of a loaded host
    (``tests/loaded_host.py``)."""
    profile = _jitter_profile(distribution)
    spec = profile.initial.uplink
    source = JitterSource(spec, np.random.default_rng(1))
    law = np.array([source.sample_ms() for _ in range(200_000)])
    with EmulatedLink(profile, topology=router_vm).create():
        shaped = _one_way_ms(KernelPaths(router_vm))
    kernel = shaped["uplink"] - np.median(unshaped_router_ms["uplink"])
    router_noise = shaped["downlink"] - np.median(shaped["downlink"])
    # the law as the router delivers it: each packet late by a draw of the router's own noise
    law_through_router = law + np.random.default_rng(4).choice(router_noise, len(law))
    n = JITTER_PLAN["packets"]
    run_stds = np.random.default_rng(2).choice(law, (4000, n)).std(axis=1)
    std_low, std_high = np.quantile(run_stds, [0.0001, 0.9999])
    std_low, std_high = min(std_low, 0.95 * law.std()), max(std_high, 1.05 * law.std())
    iqr_se = sigma_se(law, n)                           # SE of the IQR sigma, over runs of n
    for leg, measured, expected, noise, std_noise in (
            ("kernel", kernel, law_through_router, robust_sigma(router_noise),
             float(router_noise.std())),
            ("sim", _sim_leg_ms(spec, n), law, 0.0, 0.0)):
        median_bound = 3 * 1.2533 * law.std() / math.sqrt(n) + 2 * noise + 0.3
        late = late_allowance_ms(spec.delay_ms) if leg == "kernel" else 0.0
        iqr_sigma = robust_sigma(measured)
        iqr_bound = 3 * iqr_se + noise
        record_property(leg, {"median": float(np.median(measured)), "sigma": float(measured.std()),
                              "iqr_sigma": iqr_sigma, "law_median": float(np.median(law)),
                              "law_sigma": float(law.std()), "law_iqr_sigma": robust_sigma(law),
                              "expected_iqr_sigma": robust_sigma(expected),
                              "noise_iqr_sigma": noise, "noise_std": std_noise})
        assert len(measured) >= 0.99 * n, leg
        assert -median_bound <= np.median(measured) - np.median(law) <= median_bound + late, leg
        # std(law + router) lies within std(law) -+ std(router), independent or not
        assert std_low - std_noise <= measured.std() <= std_high + std_noise, (
            leg, std_low, std_high, std_noise)
        assert abs(iqr_sigma - robust_sigma(expected)) <= iqr_bound, leg
    # the configured sigma, not iproute2's 0.82 of it
    assert abs(law.std() / (10 if distribution != "uniform" else 10 / math.sqrt(3)) - 1) < 0.01


def test_a_schedule_changes_the_guests_netem_live(router_vm):
    fast = DirectionSpec(delay_ms=5)
    profile = NetworkProfile(name="steps", initial=LinkState(uplink=fast, downlink=fast), timeline=[
        TimedLinkState(at_s=0.5, uplink=DirectionSpec(delay_ms=30), downlink=fast),
        TimedLinkState(at_s=1.0, uplink=DirectionSpec(delay_ms=60, bandwidth_mbps=5),
                       downlink=fast)])
    with EmulatedLink(profile, topology=router_vm).create() as link:
        time.sleep(1.5)
        stats = link.counters()
        handle, ifname = router_vm.egress("uplink")
        root = [q for q in current_qdiscs(handle, handle.link_lookup(ifname=ifname)[0])
                if q.kind == "netem"][0]
    assert stats["timeline"]["error"] is None
    assert [change["at_s"] for change in stats["timeline"]["changes"]] == [0.5, 1.0]
    for change in stats["timeline"]["changes"]:
        assert change["at_s"] <= change["sent_s"] <= change["applied_s"] < change["at_s"] + 0.5
    assert stats["uplink"]["layout"] == "netem+tbf" and stats["uplink"]["qdiscs"] == ["netem", "tbf"]
    assert root.options["delay"] == 60_000_000 // 64                   # psched ticks


def test_the_baseline_crosses_netems_timer_and_leaves_the_guest_bare(router_vm):
    """The probe's baseline holds every packet ``BASELINE_FLOOR_MS`` a direction in the guest's
    netem (never released early: no one-way delay below the floor, which the bare TCG path
    undercuts) and takes the floor off again; afterwards no qdisc of its is left."""
    baseline = measure_path_baseline(router_vm, ProbePlan(baseline_packets=50, interval_s=0.005,
                                                          baseline_bulk_bytes=1024 * 1024))
    assert baseline.floor_ms == BASELINE_FLOOR_MS == baseline.summary()["floor_ms"]
    for direction, delays in baseline.samples.owd_ms.items():
        assert len(delays) >= 45 and min(delays) >= -0.01, direction
    assert baseline.goodput_mbps > 10
    for direction in ("uplink", "downlink"):
        handle, ifname = router_vm.egress(direction)
        assert not [q.kind for q in current_qdiscs(handle, handle.link_lookup(ifname=ifname)[0])
                    if q.kind in ("netem", "tbf")]


# The command line (each boots its own router) ---------------------------------------------------

def vm_ready() -> None:
    if os.geteuid() != 0:
        pytest.skip("the vm mode needs root")
    missing = vm.VmHost.missing()
    if missing:
        pytest.skip("the vm mode needs " + "; ".join(missing) + " (./setup.sh as root)")


def orchestrator(*argv: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *argv], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def run_leftovers() -> list[str]:
    """Namespaces, veths, TAPs and owner files of the tool's scheme that this suite made, but
    the session's router."""
    pattern = re.compile(DEFAULT_PREFIX_PATTERN + r"(-(edge|cloud|e|c)|\.owner)")
    shared = vm.current_router()
    keep = ({shared.edge_ns, shared.cloud_ns, f"{shared.prefix}.owner"}
            if shared is not None else set())
    return made_by_the_suite(name for name in [*sum(snapshot(), []), *taps()]
                             if pattern.fullmatch(name) and name not in keep)


LONG_JOB = {"name": "long", "model_pair": "synthetic", "prompts": "default", "max_queries": 1,
            "strategies": ["edge-only", "fixed-k"], "k_values": [5], "max_new_tokens": 3000,
            "warmup_tokens": 0, "receive_timeout_s": 3}


def start_vm_run(tmp_path: Path) -> subprocess.Popen:
    """A vm-mode run that has finished its first query (edge-only) and is mid-way through its
    second (fixed-k, long) when this returns."""
    job = tmp_path / "long.yaml"
    job.write_text(yaml.safe_dump(LONG_JOB))
    child = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", "run", "--mode", "vm", "--profile",
         "rtt010-bw010", "--job", str(job), "--results", str(tmp_path / "results")],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and child.poll() is None:
        queries = list(tmp_path.glob("results/*/queries.jsonl"))
        if queries and queries[0].read_text().strip():      # edge-only is done, fixed-k runs
            time.sleep(1.0)
            return child
        time.sleep(0.1)
    child.kill()
    pytest.fail("the vm run never got to its second query: " + child.communicate()[0][-3000:])


def router_qemu_of(pid: int) -> int:
    found = subprocess.run(["pgrep", "-P", str(pid), "qemu-system"], capture_output=True,
                           text=True).stdout.split()
    assert len(found) == 1, found
    return int(found[0])


@pytest.mark.slow
def test_qemu_killed_mid_run_ends_the_run_naming_the_router(tmp_path):
    vm_ready()
    before, qemu_before = run_leftovers(), set(qemu_processes())
    child = start_vm_run(tmp_path)
    os.kill(router_qemu_of(child.pid), signal.SIGKILL)
    output = child.communicate(timeout=120)[0]
    assert child.returncode == 1, output[-3000:]
    assert re.search(r"error: the link failed mid-run: router VM \(qemu pid \d+\) exited with "
                     r"code -9", output), output[-3000:]
    queries = next(tmp_path.glob("results/*/queries.jsonl")).read_text().splitlines()
    assert len(queries) == 1 and '"edge-only"' in queries[0]        # the finished one is kept
    assert run_leftovers() == before and set(qemu_processes()) == qemu_before


@pytest.mark.slow
def test_a_signal_mid_vm_run_tears_everything_down(tmp_path):
    """SIGTERM (SIGINT takes the same path: tests/test_interrupts.py) tears the router down."""
    vm_ready()
    before, qemu_before = run_leftovers(), set(qemu_processes())
    child = start_vm_run(tmp_path)
    child.send_signal(signal.SIGTERM)
    output = child.communicate(timeout=60)[0]
    assert child.returncode == 128 + signal.SIGTERM, output[-3000:]
    assert run_leftovers() == before and set(qemu_processes()) == qemu_before


def test_bad_input_after_the_router_started_leaves_nothing(tmp_path):
    vm_ready()
    before, qemu_before = run_leftovers(), set(qemu_processes())
    done = orchestrator("run", "--mode", "vm", "--job", "no-such-job", "--results",
                        str(tmp_path), timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.count("\n") == 1 and "no-such-job" in done.stderr
    assert run_leftovers() == before and set(qemu_processes()) == qemu_before


# Commands inside the VM -----------------------------------------------------------------------

@pytest.mark.slow
def test_vm_passes_output_and_exit_code_and_only_writable_folders_are(tmp_path):
    vm_ready()
    before = set(qemu_processes())
    forbidden = ROOT / f"written-from-the-vm-{os.getpid()}"
    script = (f"echo to-stdout; echo to-stderr >&2; uname -r; touch {tmp_path}/made; "
              f"touch {forbidden} 2>/dev/null && echo WROTE-THE-HOST; "
              "lsmod | grep -c sch_netem; "
              "python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", 9))' "
              "2>&1 | grep -o 'Connection refused'; exit 3")
    done = orchestrator("vm", "--writable", str(tmp_path), "--", "sh", "-c", script)
    assert done.returncode == 3, done.stdout + done.stderr
    assert "to-stdout" in done.stdout and "to-stderr" in done.stdout
    assert vm.find_kernel().version in done.stdout
    assert (tmp_path / "made").exists()
    assert "WROTE-THE-HOST" not in done.stdout and not forbidden.exists()
    assert re.search(r"^1$", done.stdout, re.M), "sch_netem is not loaded in the guest"
    # loopback is up: a closed port refuses, not unreachable
    assert "Connection refused" in done.stdout
    assert "tcg VM" in done.stderr or "kvm VM" in done.stderr
    assert set(qemu_processes()) == before


@pytest.mark.slow
def test_vm_timeout_stops_qemu(tmp_path):
    vm_ready()
    before = set(qemu_processes())
    done = orchestrator("vm", "--timeout", "4", "--writable", str(tmp_path), "--",
                        "sleep", "120", timeout=120)
    assert done.returncode == vm.EXIT_TIMEOUT, done.stderr
    assert "timed out" in done.stderr
    assert set(qemu_processes()) == before

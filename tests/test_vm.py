"""The VM mode: the pure parts (initramfs contents, qemu command line, mode choice) and real boots.

The boots are slow tests (software emulation: ~5 s to boot, Python a few
times slower inside).  ``test_netem_suite_inside_the_vm`` runs every
``needs_netem`` test of the suite in one VM, the CI's real netem path: kernel
netem + tbf probed and a full ``orchestrator run`` for each profile issue 4
names; what those tests measure is printed as the figures of the run.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator import vm
from orchestrator.doctor import Check, HostReport, choose_mode
from tests.conftest import qemu_processes

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


def test_qemu_command_line_shares_root_read_only_and_results_writable(tmp_path):
    kernel = vm.GuestKernel("6.1.0-9-amd64", Path("/boot/vmlinuz-6.1.0-9-amd64"),
                            Path("/lib/modules/6.1.0-9-amd64"))
    argv = vm.qemu_argv("qemu-system-x86_64", kernel, tmp_path / "i.cpio", tmp_path,
                        [Path("/work/results")], accel="tcg", cpus=2, memory_mib=1024)
    shares = [argv[i + 1] for i, arg in enumerate(argv) if arg == "-virtfs"]
    assert shares[0].startswith("local,path=/,mount_tag=hostroot") and "readonly=on" in shares[0]
    assert "readonly" not in shares[2] and "path=/work/results,mount_tag=rw0" in shares[2]
    assert argv[argv.index("-accel") + 1] == "tcg,thread=multi"
    assert "-no-reboot" in argv and argv[argv.index("-nic") + 1] == "none"
    assert vm.accel_args("kvm", 1) == ["-accel", "kvm", "-cpu", "host"]


def test_guest_script_quotes_every_argument():
    script = vm.guest_script(["echo", "a b", "$HOME", "it's"], Path("/x y"), {"K": "v w"})
    assert "export K='v w'" in script and "cd '/x y'" in script
    assert script.rstrip().endswith("""exec echo 'a b' '$HOME' 'it'"'"'s'""")


def _report(**ok: bool) -> HostReport:
    names = ("netns", "veth", "sch_netem", "sch_tbf", "qemu", "vm kernel")
    return HostReport(root=ok.pop("root", True), in_vm=ok.pop("in_vm", False),
                      checks=[Check(name, ok.get(name.replace(" ", "_"), True), name)
                              for name in names])


def test_mode_choice_follows_the_issue_rule():
    assert choose_mode("auto", _report())[0] == "emulated"
    assert choose_mode("auto", _report(sch_netem=False))[0] == "vm"
    assert choose_mode("auto", _report(sch_netem=False), needs_netem=False)[0] == "emulated"
    assert choose_mode("auto", _report(sch_netem=False, qemu=False))[0] == "sim"
    assert choose_mode("auto", _report(root=False))[0] == "sim"
    assert choose_mode("auto", _report(in_vm=True))[0] == "vm"
    assert choose_mode("sim", _report())[0] == "sim"
    with pytest.raises(ValueError, match="sch_netem"):
        choose_mode("emulated", _report(sch_netem=False))
    with pytest.raises(ValueError, match="qemu"):
        choose_mode("vm", _report(qemu=False, sch_netem=False))
    mode, reason = choose_mode("auto", _report(sch_netem=False))
    assert "lacks sch_netem" in reason


# Real boots ------------------------------------------------------------------------------------

def vm_ready() -> None:
    if os.geteuid() != 0:
        pytest.skip("the vm mode needs root")
    missing = vm.VmHost.missing()
    if missing:
        pytest.skip("the vm mode needs " + "; ".join(missing) + " (./setup.sh as root)")


def orchestrator(*argv: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *argv], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


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
    # loopback is up (the sim mode runs in the VM too): a closed port refuses, not unreachable
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


@pytest.mark.slow
def test_netem_suite_inside_the_vm(tmp_path):
    """Every needs_netem test, in the VM: the real netem path, run by CI."""
    vm_ready()
    evidence = tmp_path / "evidence"
    evidence.mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "vm", "--timeout", "540",
         "--writable", str(evidence), "--", "env", f"EDGESPEC_EVIDENCE_DIR={evidence}",
         sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-m", "needs_netem",
         "-rs", "tests/test_qdisc.py", "tests/test_emulated.py"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    output = done.stdout + done.stderr
    print(output[-6000:])
    for path in sorted(evidence.glob("*.json")):
        print(path.name, json.dumps(_figures(json.loads(path.read_text()))))
    assert done.returncode == 0, output[-4000:]
    passed = re.search(r"(\d+) passed", output)
    assert passed and int(passed.group(1)) >= 11, output[-2000:]
    assert "skipped" not in output.split("short test summary")[-1], output[-2000:]
    assert len(list(evidence.glob("probe-*.json"))) == 5
    assert len(list(evidence.glob("run-*.json"))) == 6      # five profiles and the baseline


def _figures(data: dict) -> dict:
    """The few numbers of a probe or run record worth printing."""
    if "rows" in data:
        return {f"{row['direction']} {row['metric']}": [
                    None if row["measured"] is None else round(row["measured"], 3),
                    None if row["error"] is None else round(row["error"], 3), row["ok"]]
                for row in data["rows"]} | {"baseline_owd_ms": data["baseline_owd_ms"]}
    return {key: data.get(key) for key in ("expected_rtt_ms", "agent_overhead_ms",
                                           "measured_rtt_p50_ms", "cycles")}

"""What this host can do, and which mode ``orchestrator run`` picks from that.

``HostReport.inspect()`` checks each capability for real (a namespace, a
veth pair and the qdiscs are created and removed again; nothing is guessed
from file names; a signal meanwhile ends the command once the check at hand has removed
what it made), and ``choose_mode`` is the pure rule that turns a report
and ``--mode`` into a mode and the one line that says why:

- ``emulated`` when running as root on a kernel with ``sch_netem``;
- ``vm`` when root and the VM's parts (qemu, a kernel image with netem, a
  static busybox) are there, outside the edgespec VM (the router VM shapes,
  the agents run natively);
- ``sim`` otherwise.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field

from orchestrator import interrupts
from orchestrator.lifecycle import vm
from orchestrator.lifecycle.launch import process_cpus
from shaping import topology
from shaping.qdisc.probes import netem_available, tbf_available

MODES = ("auto", "sim", "emulated", "vm")


@dataclass(frozen=True)
class Capability:
    """One thing this host can or cannot do, as `orchestrator doctor` prints it."""

    name: str
    ok: bool
    detail: str


@dataclass
class HostReport:
    root: bool
    in_vm: bool
    checks: list[Capability] = field(default_factory=list)

    def ok(self, name: str) -> bool:
        return any(check.name == name and check.ok for check in self.checks)

    def can_emulate(self, needs_netem: bool = True) -> bool:
        return (self.root and self.ok("netns") and self.ok("veth")
                and (self.ok("sch_netem") if needs_netem else self.ok("sch_tbf")))

    @property
    def can_vm(self) -> bool:
        return self.root and not self.in_vm and self.ok("qemu") and self.ok("vm kernel")

    @classmethod
    def inspect(cls, probe_kvm: bool = False) -> "HostReport":
        report = cls(root=os.geteuid() == 0, in_vm=vm.in_vm())
        add = report.checks.append
        add(Capability("root", report.root, "yes" if report.root else
                  "no: the emulated and vm modes need root (sudo)"))
        with interrupts.shielded():       # each check removes what it made before a signal ends it
            netns_ok, veth_ok, detail = (_namespace_checks() if report.root
                                         else (False, False, "needs root"))
            netem = report.root and netem_available()
            tbf = report.root and tbf_available()
        add(Capability("netns", netns_ok, detail if not netns_ok else "network namespaces work"))
        add(Capability("veth", veth_ok, "a veth pair between two namespaces works" if veth_ok else detail))
        add(Capability("sch_netem", netem, "netem qdisc works" if netem else
                  "missing from this kernel (delay, jitter and loss need it)" if report.root
                  else "needs root to check"))
        add(Capability("sch_tbf", tbf, "tbf qdisc works" if tbf else
                  "missing" if report.root else "needs root to check"))
        missing = vm.VmHost.missing()
        qemu_gap = [gap for gap in missing if gap.startswith("qemu")]
        add(Capability("qemu", not qemu_gap, qemu_gap[0] if qemu_gap else "qemu-system-x86_64"))
        other_gaps = [gap for gap in missing if not gap.startswith("qemu")]
        kernel = vm.find_kernel()
        add(Capability("vm kernel", not other_gaps,
                  "; ".join(other_gaps) if other_gaps else f"{kernel.image} with sch_netem"))
        add(Capability("kvm", *_kvm(probe_kvm and not missing)))
        add(_placement())
        torch = importlib.util.find_spec("torch") is not None
        add(Capability("torch", torch, "installed (hf backend)" if torch else
                  "not installed: only the synthetic pair runs (./setup.sh installs it)"))
        return report


def _placement() -> Capability:
    """Where a run's processes compute (``launch.process_cpus``)."""
    cpus = process_cpus()
    if not cpus:
        return Capability("cpus", False, "one CPU: the two agents share it, and each one's "
                                         "compute waits for the other's")
    def listed(side: str) -> str:
        return ",".join(map(str, sorted(cpus[side])))
    return Capability("cpus", True, f"edge agent on CPUs {listed('edge')}, cloud agent on "
                                    f"{listed('cloud')}, the router VM with the edge")


def _namespace_checks() -> tuple[bool, bool, str]:
    try:
        with topology.LinkTopology(offloads_off=False):
            return True, True, ""
    except OSError as error:
        return False, False, f"cannot create a namespace/veth: {error}"
    except Exception as error:    # a veth that the kernel refuses is not an OSError
        return True, False, f"veth: {error}"


def _kvm(probe: bool) -> tuple[bool, str]:
    if not vm.kvm_device_usable():
        return False, "/dev/kvm absent or not accessible: the VM uses software emulation (TCG)"
    recorded = vm.recorded_kvm_probe()
    if not probe and recorded is None:
        return True, "/dev/kvm present (a probe boot at the first VM run decides KVM or TCG)"
    works = recorded if recorded is not None else vm.kvm_works(vm.VmHost.find())
    return works, ("a probe boot under KVM worked: the VM uses KVM" if works else
                   "a probe boot under KVM failed or crawled: the VM uses software emulation")


def choose_mode(requested: str, report: HostReport, needs_netem: bool = True) -> tuple[str, str]:
    """The mode a run uses and why, or ``ValueError`` when ``requested`` cannot run here.

    ``needs_netem``: whether the profile has delay, jitter or loss; a rate-only
    profile runs emulated with tbf alone on a kernel without netem.
    """
    if requested == "sim":
        return "sim", "asked for with --mode sim"
    if requested == "emulated":
        if not report.can_emulate(needs_netem):
            raise ValueError("--mode emulated needs root and a kernel with sch_netem "
                             f"({_why_not_emulated(report)}); try --mode vm")
        return "emulated", "asked for with --mode emulated"
    if requested == "vm":
        if not report.can_vm:
            raise ValueError(f"--mode vm needs {_why_not_vm(report)}")
        return "vm", "asked for with --mode vm"
    if report.can_emulate(needs_netem):
        if not report.ok("sch_netem"):
            return "emulated", "auto: root, and this rate-only profile needs tbf, not sch_netem"
        return "emulated", "auto: root and sch_netem are available"
    if report.can_vm:
        return "vm", (f"auto: {_why_not_emulated(report)}, so a qemu VM whose kernel has it "
                      "shapes the link; the agents run natively")
    return "sim", (f"auto: {_why_not_emulated(report)} and {_why_not_vm(report)}; "
                   "sim is the Python link model (see `orchestrator doctor`)")


def _why_not_emulated(report: HostReport) -> str:
    if not report.root:
        return "not root"
    failing = [c.name for c in report.checks if c.name in ("netns", "veth", "sch_netem") and not c.ok]
    return "this kernel lacks " + ", ".join(failing) if failing else "nothing missing"


def _why_not_vm(report: HostReport) -> str:
    if not report.root:
        return "root for the vm mode"
    if report.in_vm:
        return "a host outside the edgespec VM (no VM inside the VM)"
    failing = [c.detail for c in report.checks if c.name in ("qemu", "vm kernel") and not c.ok]
    return "; ".join(failing) if failing else "nothing missing"

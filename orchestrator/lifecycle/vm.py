"""The VM: a small qemu VM booting a stock kernel that has netem, in two roles.

Hosts whose kernel lacks ``sch_netem`` (containers, WSL, micro-VMs such as
the ones this project is built on) boot the distribution kernel that the
project's setup installs (``/boot/vmlinuz-*`` with its ``/lib/modules``).
The initramfs is built per boot from busybox (``busybox-static``) and the
kernel's own modules (dependency order from ``modules.dep``); its ``/init``
mounts the host's root file system over 9p **read-only**, puts tmpfs on
``/run`` (with ``/run/tmp`` as ``TMPDIR``) and ``/dev/shm``, mounts each
writable folder read-write at its own path, and runs one command chrooted
into the host root, so the same venv, code and configs run inside.

1. **The vm mode's router** (``RouterVm``, ``router_topology``,
   ``shared_router``): the link, not the host.  The guest gets one virtio NIC
   on a TAP in each of the run's two namespaces and runs only
   ``shaping/router_guest.py``, which forwards between them and relays the
   netlink requests that shape them (``shaping.router``); the agents run
   natively in the namespaces, so only packets pay for the emulation.
2. **Any command inside** (``VmHost.run``, ``orchestrator vm -- CMD``): the
   way to test the guest itself.  The guest has no network interface; the
   command's stdout and stderr (merged, as on a terminal) reach this
   process's stdout through the second serial port as they are written, the
   kernel's console goes to ``console.log`` in the job folder (printed when
   the boot fails), the command's exit code is passed through (124 when the
   VM outlived its timeout).

qemu is always reaped, and dies with the orchestrator (PR_SET_PDEATHSIG).
Acceleration: KVM when ``/dev/kvm`` exists and a quick probe boot under it
completes (its verdict is kept for the host's uptime in
``/run/edgespec/kvm-probe``), software emulation (TCG) otherwise.
"""

from __future__ import annotations

import contextlib
import functools
import json
import lzma
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from orchestrator import interrupts
from orchestrator.lifecycle.launch import ChildProcess, process_cpus
from shaping import router_guest
from shaping.router import GUEST_PORT, RouterError, RouterTopology, TapEnd

IN_VM_ENV = "EDGESPEC_IN_VM"
HOST_TTY_ENV = "EDGESPEC_HOST_TTY"    # whether the host's stdout (the guest's output) is a terminal
BOOT_DIR = Path("/boot")
MODULES_ROOT = Path("/lib/modules")
BUSYBOX_CANDIDATES = (Path("/bin/busybox"), Path("/usr/bin/busybox"))
KVM_PROBE_FILE = Path("/run/edgespec/kvm-probe")
KVM_PROBE_TIMEOUT_S = 30.0
KVM_PROBE_BUDGET_S = 15.0   # a KVM boot slower than this "crawls": use TCG
DEFAULT_TIMEOUT_S = 1800.0

# Modules the guest needs before the root is mounted (virtio + 9p), and those
# the runs inside use (loaded up front: the kernel's own module autoloading
# would run the initramfs' modprobe).
BOOT_MODULES = ("virtio_pci", "9pnet_virtio", "9p")
RUN_MODULES = ("sch_netem", "sch_tbf", "veth")
ROUTER_MODULES = ("virtio_net", "virtio_console")     # the router's NICs and its control port
ROUTER_MEMORY_MIB = 384
GUEST_ENV_PASSED = ("PATH", "HOME", "LANG", "LC_ALL", "TERM", "CI", "COLUMNS",
                    "PYTHONPATH", "PYTHONHASHSEED")
# The host's /tmp stays visible (read-only: a checkout may live there); temporary files go to
# the guest's own tmpfs through TMPDIR, which Python's tempfile (and pytest) follow.
GUEST_TMP = "/run/tmp"
GUEST_ENV_SET = {IN_VM_ENV: "1", "PYTHONDONTWRITEBYTECODE": "1", "TMPDIR": GUEST_TMP,
                 "XDG_CACHE_HOME": f"{GUEST_TMP}/.cache", "MPLCONFIGDIR": f"{GUEST_TMP}/.matplotlib"}
EXIT_TIMEOUT = 124
EXIT_BOOT_FAILED = 125


class VmError(RuntimeError):
    """The VM could not be set up or booted (not the command's own failure)."""


def in_vm() -> bool:
    return os.environ.get(IN_VM_ENV) == "1"


# The guest kernel ---------------------------------------------------------------------------

@dataclass(frozen=True)
class GuestKernel:
    version: str
    image: Path
    modules_dir: Path


def _version_key(version: str) -> list[int]:
    return [int(part) for part in re.findall(r"\d+", version)]


def find_kernel(boot_dir: Path = BOOT_DIR, modules_root: Path = MODULES_ROOT) -> GuestKernel | None:
    """The newest installed kernel image whose modules include netem, or None."""
    found = []
    for image in boot_dir.glob("vmlinuz-*"):
        version = image.name.removeprefix("vmlinuz-")
        modules_dir = modules_root / version
        dep = modules_dir / "modules.dep"
        if dep.is_file() and re.search(r"(^|/)sch_netem\.ko", dep.read_text(), re.M):
            found.append(GuestKernel(version, image, modules_dir))
    return max(found, key=lambda kernel: _version_key(kernel.version), default=None)


def find_busybox() -> Path | None:
    """A statically linked busybox (a dynamic one would need its libraries in the initramfs)."""
    for path in BUSYBOX_CANDIDATES:
        if path.is_file() and _is_static(path):
            return path
    return None


def _is_static(path: Path) -> bool:
    """Whether an ELF file has no program interpreter (PT_INTERP), i.e. is statically linked."""
    with path.open("rb") as elf:
        header = elf.read(64)
        if header[:4] != b"\x7fELF" or header[4] != 2:     # 64-bit ELF only
            return False
        phoff = int.from_bytes(header[32:40], "little")
        phentsize = int.from_bytes(header[54:56], "little")
        phnum = int.from_bytes(header[56:58], "little")
        elf.seek(phoff)
        table = elf.read(phentsize * phnum)
    return all(int.from_bytes(table[i:i + 4], "little") != 3          # PT_INTERP
               for i in range(0, len(table), phentsize))


def module_name(path: str) -> str:
    """``kernel/net/9p/9pnet_virtio.ko[.xz]`` -> ``9pnet_virtio`` (dashes read as underscores)."""
    return Path(path).name.split(".ko")[0].replace("-", "_")


def module_load_order(modules_dep: str, wanted: tuple[str, ...]) -> list[str]:
    """Paths (relative to the modules folder) of ``wanted`` and their dependencies, dependencies first.

    ``modules_dep`` is the text of ``modules.dep``.  A module missing from it
    raises ``VmError`` (it may be built in, which ``builtin`` checks first).
    """
    deps: dict[str, list[str]] = {}
    path_of: dict[str, str] = {}
    for line in modules_dep.splitlines():
        if ":" not in line:
            continue
        path, rest = line.split(":", 1)
        path_of[module_name(path)] = path
        deps[path] = rest.split()
    order: list[str] = []

    def visit(path: str) -> None:
        if path in order:
            return
        for dependency in deps.get(path, []):
            visit(dependency)
        order.append(path)

    for name in wanted:
        if name.replace("-", "_") not in path_of:
            raise VmError(f"kernel module {name} is not in modules.dep")
        visit(path_of[name.replace("-", "_")])
    return order


def _builtin(modules_dir: Path) -> set[str]:
    path = modules_dir / "modules.builtin"
    return {module_name(line) for line in path.read_text().split()} if path.is_file() else set()


# The initramfs ------------------------------------------------------------------------------

INIT_SCRIPT = r"""#!/bin/busybox sh
# edgespec VM init: mount the host root read-only over 9p, run the job, power off.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for module in $(cat /modules.order); do insmod "/modules/$module" || echo "init: insmod $module failed"; done
echo /sbin/modprobe > /proc/sys/kernel/modprobe
ip link set lo up
H=/host
mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=262144 hostroot $H || { echo "init: no host root"; poweroff -f; }
mount -t tmpfs -o mode=0755 tmpfs $H/run
mkdir -m 1777 $H/run/tmp
mount -t proc proc $H/proc
mount -t sysfs sysfs $H/sys
mount -t devtmpfs devtmpfs $H/dev
mkdir -p $H/dev/shm && mount -t tmpfs -o mode=1777 tmpfs $H/dev/shm
mkdir -p $H/run/edgespec-vm
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 job $H/run/edgespec-vm
while read -r tag path; do
  mkdir -p "$H$path" 2>/dev/null; mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 "$tag" "$H$path" || echo "init: cannot mount $path"
done < $H/run/edgespec-vm/mounts
for module in __RUN_MODULES__; do chroot $H /sbin/modprobe $module 2>/dev/null; done
stty -F /dev/ttyS1 raw -echo
chroot $H /bin/sh /run/edgespec-vm/run.sh > /dev/ttyS1 2>&1 < /dev/null
echo $? > $H/run/edgespec-vm/exit_code
sync
umount $H/run/edgespec-vm
poweroff -f
"""

# The kernel's module autoloader runs /sbin/modprobe in the initramfs; hand it to the host root's.
MODPROBE_SCRIPT = "#!/bin/busybox sh\nexec chroot /host /sbin/modprobe \"$@\"\n"


def _write_module(source: Path, dest: Path) -> None:
    if source.suffix == ".xz":
        dest.write_bytes(lzma.decompress(source.read_bytes()))
    elif source.suffix == ".ko":
        shutil.copyfile(source, dest)
    else:
        raise VmError(f"{source}: compressed kernel modules other than .xz are not supported")


def build_initramfs(kernel: GuestKernel, busybox: Path, dest: Path,
                    modules: tuple[str, ...] = BOOT_MODULES) -> Path:
    """An uncompressed newc cpio with busybox, ``modules`` and ``/init``; returns its path."""
    staging = Path(tempfile.mkdtemp(prefix="initramfs-", dir=dest.parent))
    try:
        for folder in ("bin", "sbin", "proc", "sys", "dev", "host", "modules"):
            (staging / folder).mkdir()
        shutil.copyfile(busybox, staging / "bin" / "busybox")
        (staging / "bin" / "busybox").chmod(0o755)
        (staging / "bin" / "sh").symlink_to("busybox")
        builtin = _builtin(kernel.modules_dir)
        wanted = tuple(name for name in modules if name not in builtin)
        order = module_load_order((kernel.modules_dir / "modules.dep").read_text(), wanted)
        names = []
        for path in order:
            name = module_name(path) + ".ko"
            _write_module(kernel.modules_dir / path, staging / "modules" / name)
            names.append(name)
        (staging / "modules.order").write_text("\n".join(names) + "\n")
        init = INIT_SCRIPT.replace("__RUN_MODULES__", " ".join(RUN_MODULES))
        (staging / "init").write_text(init)
        (staging / "init").chmod(0o755)
        (staging / "sbin" / "modprobe").write_text(MODPROBE_SCRIPT)
        (staging / "sbin" / "modprobe").chmod(0o755)
        files = sorted(str(path.relative_to(staging)) for path in staging.rglob("*"))
        with dest.open("wb") as archive:
            subprocess.run(["cpio", "--quiet", "-o", "-H", "newc"], input="\n".join(files).encode(),
                           stdout=archive, cwd=staging, check=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest


# The job folder: what the guest runs and where it may write ---------------------------------

def guest_script(argv: list[str], cwd: Path, env: dict[str, str]) -> str:
    """The shell script the guest runs chrooted into the host root."""
    exports = "".join(f"export {name}={shlex.quote(value)}\n" for name, value in sorted(env.items()))
    return (f"{exports}cd {shlex.quote(str(cwd))} || exit {EXIT_BOOT_FAILED}\n"
            f"exec {shlex.join(argv)}\n")


def guest_environment(host_env: dict[str, str], output_is_tty: bool) -> dict[str, str]:
    env = {name: host_env[name] for name in GUEST_ENV_PASSED if name in host_env}
    env.update(GUEST_ENV_SET)
    env[HOST_TTY_ENV] = "1" if output_is_tty else "0"
    if output_is_tty:
        env["COLUMNS"] = str(shutil.get_terminal_size().columns)
    return env


def share_tag(index: int) -> str:
    return f"rw{index}"


# Acceleration ---------------------------------------------------------------------------------

def kvm_device_usable() -> bool:
    return os.access("/dev/kvm", os.R_OK | os.W_OK)


def accel_args(accel: str, cpus: int) -> list[str]:
    if accel == "kvm":
        return ["-accel", "kvm", "-cpu", "host"]
    return ["-accel", f"tcg,thread={'multi' if cpus > 1 else 'single'}", "-cpu", "max"]


def qemu_argv(qemu: str, kernel: GuestKernel, initramfs: Path, job_dir: Path,
              writable: list[Path], *, accel: str, cpus: int, memory_mib: int,
              devices: list[str] = ()) -> list[str]:
    """The qemu command line (pure: tested without booting); ``devices``: more arguments
    (the router's NICs and control port); without them the VM has no NIC."""
    argv = [qemu, "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            *(devices or ["-nic", "none"]), "-m", str(memory_mib), "-smp", str(cpus),
            *accel_args(accel, cpus),
            "-kernel", str(kernel.image), "-initrd", str(initramfs),
            # no_timer_check: under software emulation on a busy host the kernel's IO-APIC
            # timer check can time out and panic the boot (seen once on 2 busy cores)
            "-append", "console=ttyS0 quiet loglevel=3 panic=-1 mitigations=off no_timer_check",
            "-serial", f"file:{job_dir / 'console.log'}",
            "-chardev", "stdio,id=out,signal=off", "-serial", "chardev:out",
            "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,"
                       "multidevs=remap",
            "-virtfs", f"local,path={job_dir},mount_tag=job,security_model=none,multidevs=remap"]
    for index, folder in enumerate(writable):
        argv += ["-virtfs", f"local,path={folder},mount_tag={share_tag(index)},"
                            "security_model=none,multidevs=remap"]
    return argv


def router_devices(taps: list[TapEnd], control_socket: Path) -> list[str]:
    """qemu arguments of the router: a virtio NIC on each TAP (by file descriptor; the TAP
    has no vnet header, so neither side can hand the other a GSO super-packet) and the control port
    (a virtio-serial port whose host end connects to ``control_socket``)."""
    argv = []
    for tap in taps:
        argv += ["-netdev", f"tap,id={tap.side},fd={tap.fd}",
                 "-device", f"virtio-net-pci,netdev={tap.side},mac={tap.mac}"]
    return argv + ["-chardev", f"socket,id=control,path={control_socket},server=off",
                   "-device", "virtio-serial-pci,id=serial",
                   "-device", f"virtserialport,bus=serial.0,chardev=control,name={GUEST_PORT}"]


@dataclass
class VmResult:
    exit_code: int
    accel: str
    wall_s: float
    console: str


@dataclass
class VmHost:
    """What a VM boot needs from the host; ``VmHost.find()`` says what is missing."""

    qemu: str
    kernel: GuestKernel
    busybox: Path

    @classmethod
    def missing(cls) -> list[str]:
        gaps = []
        if shutil.which("qemu-system-x86_64") is None:
            gaps.append("qemu-system-x86_64 (Debian package qemu-system-x86)")
        if find_kernel() is None:
            gaps.append("a kernel image in /boot with sch_netem in /lib/modules "
                        "(Debian package linux-image-amd64)")
        if find_busybox() is None:
            gaps.append("a static busybox (Debian package busybox-static)")
        if shutil.which("cpio") is None:
            gaps.append("cpio (Debian package cpio)")
        return gaps

    @classmethod
    def find(cls) -> "VmHost":
        gaps = cls.missing()
        if gaps:
            raise VmError("the vm mode needs " + "; ".join(gaps) + " (run ./setup.sh as root)")
        return cls(shutil.which("qemu-system-x86_64"), find_kernel(), find_busybox())

    def run(self, argv: list[str], *, cwd: Path, writable: list[Path] = (), accel: str = "auto",
            timeout_s: float = DEFAULT_TIMEOUT_S, cpus: int | None = None,
            memory_mib: int = 2048, env: dict[str, str] | None = None,
            output=None) -> VmResult:
        """Boot, run ``argv`` in ``cwd`` inside, power off.

        The command's output goes to ``output`` (a file or ``subprocess.DEVNULL``;
        None: this process's stdout) as it is written.
        """
        if in_vm():
            raise VmError("already inside an edgespec VM; run the command directly")
        cpus = cpus or os.cpu_count() or 1
        writable = [Path(folder).resolve() for folder in writable]
        chosen = self.choose_accel(accel)
        with tempfile.TemporaryDirectory(prefix="edgespec-vm-") as tmp:
            job_dir = Path(tmp)
            output_is_tty = output is None and sys.stdout.isatty()
            guest_env = guest_environment(dict(os.environ) if env is None else env, output_is_tty)
            initramfs = self.prepare(job_dir, argv, cwd, guest_env, writable)
            command = qemu_argv(self.qemu, self.kernel, initramfs, job_dir, writable,
                                accel=chosen, cpus=cpus, memory_mib=memory_mib)
            started = time.monotonic()
            qemu = ChildProcess("qemu", command, job_dir / "qemu.log", stdout=output)
            try:
                try:
                    qemu.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    qemu.stop()
                    return VmResult(EXIT_TIMEOUT, chosen, time.monotonic() - started,
                                    _read(job_dir / "console.log"))
            finally:
                qemu.stop()
            wall_s = time.monotonic() - started
            console = _read(job_dir / "console.log")
            exit_file = job_dir / "exit_code"
            if not exit_file.is_file():
                raise VmError(f"the VM stopped before the command finished (qemu exit "
                              f"{qemu.process.returncode}): " + _tail(job_dir))
            return VmResult(int(exit_file.read_text().strip() or EXIT_BOOT_FAILED), chosen,
                            wall_s, console)

    def prepare(self, job_dir: Path, argv: list[str], cwd: Path, guest_env: dict[str, str],
                writable: list[Path] = (), modules: tuple[str, ...] = BOOT_MODULES) -> Path:
        """Fill ``job_dir`` for a boot that runs ``argv``; returns the initramfs."""
        (job_dir / "run.sh").write_text(guest_script(argv, cwd.resolve(), guest_env))
        (job_dir / "mounts").write_text(
            "".join(f"{share_tag(i)} {folder}\n" for i, folder in enumerate(writable)))
        return build_initramfs(self.kernel, self.busybox, job_dir / "initramfs.cpio", modules)

    def choose_accel(self, accel: str) -> str:
        if accel in ("kvm", "tcg"):
            return accel
        return "kvm" if kvm_works(self) else "tcg"


class RouterVm:
    """The vm mode's router: qemu booting the guest kernel with one virtio NIC per TAP.

    The guest runs ``shaping/router_guest.py`` (from the host root, read-only
    over 9p) and nothing else; this process talks to it over a virtio-serial
    port whose host end is a Unix socket in the job folder (qemu connects to
    it at start-up).  Why virtio-serial: it needs nothing from the host
    kernel (vsock needs ``vhost_vsock``, absent on the hosts this mode is
    for), it is a reliable byte stream that TCG serves in about 0.3 ms per
    round trip, and it keeps control traffic off the shaped path (a third
    NIC would share the guest's network stack and queues with the data).

    One vCPU: the router only forwards, on the edge agent's host CPUs
    (``launch.process_cpus`` says why), and the cloud's stay with the cloud.  Real-time scheduling (``SCHED_RR`` 1, ``realtime_prefix``)
    where the host allows it: a netem timer in the guest fires only when
    qemu's threads get a host CPU, and on a busy host an ordinary thread
    waits for one (measured on 2 busy cores: 20 ms each way came out 1.1-1.7 ms
    late per round trip, 0.3 ms with real-time threads).  The router's work
    is the packets the agents send, so it cannot crowd them out for long
    (and the kernel keeps 5 % of each second for other threads anyway).  ``close`` stops qemu (the TAPs vanish with it) and removes
    the job folder; qemu also dies with this process (PR_SET_PDEATHSIG).
    """

    CONNECT_TIMEOUT_S = 30.0

    def __init__(self, host: VmHost, taps: list[TapEnd], accel: str = "auto",
                 memory_mib: int = ROUTER_MEMORY_MIB) -> None:
        self.job_dir = Path(tempfile.mkdtemp(prefix="edgespec-router-"))
        self.accel = host.choose_accel(accel)
        self.process: ChildProcess | None = None
        self.connection: socket.socket | None = None
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            initramfs = host.prepare(
                self.job_dir, [sys.executable, "-S", "-E", router_guest.__file__, GUEST_PORT],
                Path("/"), {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
                modules=BOOT_MODULES + ROUTER_MODULES)
            control = self.job_dir / "control.sock"
            listener.bind(str(control))
            listener.listen(1)
            argv = qemu_argv(host.qemu, host.kernel, initramfs, self.job_dir, [],
                             accel=self.accel, cpus=1, memory_mib=memory_mib,
                             devices=router_devices(taps, control))
            self.process = ChildProcess("router VM", [*realtime_prefix(), *argv],
                                        self.job_dir / "qemu.log",
                                        pass_fds=[tap.fd for tap in taps],
                                        cpus=process_cpus().get("router"))
            self.connection = self._accept(listener)
        except BaseException:
            self.close()
            raise
        finally:
            listener.close()

    def _accept(self, listener: socket.socket) -> socket.socket:
        listener.settimeout(0.2)
        deadline = time.monotonic() + self.CONNECT_TIMEOUT_S
        while time.monotonic() < deadline and self.alive():
            interrupts.raise_if_interrupted()
            try:
                connection, _ = listener.accept()
                return connection
            except socket.timeout:
                continue
        raise RouterError(f"the router VM did not open its control port: {self.failure()}")

    @property
    def pid(self) -> int | None:
        return self.process.process.pid if self.process is not None else None

    def alive(self) -> bool:
        return self.process is not None and self.process.alive()

    def failure(self) -> str:
        """What the router's qemu said: exit code and the last lines of its output."""
        code = self.process.process.returncode if self.process is not None else None
        state = "running" if self.alive() else f"exited with code {code}"
        return f"router VM (qemu pid {self.pid}) {state}: " + _tail(self.job_dir)

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None
        if self.process is not None:
            self.process.stop()
        shutil.rmtree(self.job_dir, ignore_errors=True)

    @classmethod
    def boot(cls, taps: list[TapEnd]) -> "RouterVm":
        """``RouterTopology``'s boot: a router VM on this host."""
        return cls(VmHost.find(), taps)


@functools.lru_cache(maxsize=None)
def realtime_prefix() -> tuple[str, ...]:
    """``chrt --rr 1``, when it works here (root, and a host that grants real-time
    scheduling); else nothing."""
    chrt = shutil.which("chrt")
    if chrt is None:
        return ()
    allowed = subprocess.run([chrt, "--rr", "1", "true"], capture_output=True).returncode == 0
    return (chrt, "--rr", "1") if allowed else ()


def router_topology(prefix: str | None = None) -> RouterTopology:
    """The vm mode's topology: namespaces joined through a router VM on this host (its boot
    wait is an interrupt checkpoint)."""
    return RouterTopology(RouterVm.boot, prefix, while_waiting=interrupts.raise_if_interrupted)


_SHARED: list[RouterTopology] = []


@contextlib.contextmanager
def shared_router() -> Iterator[RouterTopology]:
    """One router VM (and its two namespaces) for everything inside the ``with``: every run
    in vm mode started meanwhile (each cell of a sweep or a validation) shapes this one
    instead of booting its own.  It boots in the background: the first run's agents load
    meanwhile."""
    topology = router_topology()
    try:
        with interrupts.shielded():
            topology.create()
            _SHARED.append(topology)
        yield topology
    finally:
        with interrupts.deferred():
            if topology in _SHARED:
                _SHARED.remove(topology)
            topology.close()


def current_router() -> RouterTopology | None:
    """The router VM a ``shared_router`` block holds up, if any."""
    return _SHARED[-1] if _SHARED else None


def _tail(job_dir: Path, lines: int = 8) -> str:
    return " | ".join((_read(job_dir / "qemu.log") + _read(job_dir / "console.log"))
                      .strip().splitlines()[-lines:]) or "no output"


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def kvm_works(host: VmHost) -> bool:
    """Whether KVM boots the guest quickly here; probed once per host uptime."""
    if not kvm_device_usable():
        return False
    recorded = recorded_kvm_probe()
    if recorded is not None:
        return recorded
    works = False
    started = time.monotonic()
    try:
        result = host.run(["/bin/true"], cwd=Path("/"), accel="kvm", timeout_s=KVM_PROBE_TIMEOUT_S,
                          cpus=1, memory_mib=512, output=subprocess.DEVNULL)
        works = result.exit_code == 0 and result.wall_s < KVM_PROBE_BUDGET_S
    except VmError:
        works = False
    try:
        KVM_PROBE_FILE.parent.mkdir(parents=True, exist_ok=True)
        KVM_PROBE_FILE.write_text(json.dumps({"boot_id": _boot_id(), "works": works,
                                              "probe_s": round(time.monotonic() - started, 2)}))
    except OSError:
        pass
    return works


def recorded_kvm_probe() -> bool | None:
    """What the probe boot found since this host booted (None: no probe yet)."""
    try:
        cached = json.loads(KVM_PROBE_FILE.read_text())
        if cached.get("boot_id") == _boot_id():
            return bool(cached["works"])
    except (OSError, ValueError, KeyError, AttributeError):
        pass
    return None


def _boot_id() -> str:
    return _read(Path("/proc/sys/kernel/random/boot_id")).strip()

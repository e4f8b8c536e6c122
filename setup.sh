#!/usr/bin/env bash
# Sets up everything the testbed and its tests need on a fresh Debian/Ubuntu machine:
# - as root with apt-get: the system packages below that are missing (none are fetched, and
#   apt-get is not even run, when all are installed);
# - a virtual environment in .venv with the project installed (editable) with the transformers
#   backend (torch 2.13.0; a CPU build where pip finds one locally) and the test tools.
# Without root or apt-get it names what is missing and what that disables, and goes on:
# the sim mode needs none of the optional packages.
# Safe to run again: it only adds what is missing.
set -euo pipefail
cd "$(dirname "$0")"

# The kernel the VM mode boots: Debian's stock kernel (has sch_netem), Ubuntu's generic one.
kernel_package=linux-image-amd64
if grep -qs '^ID=ubuntu' /etc/os-release; then kernel_package=linux-image-generic; fi

# Debian packages, each with why it is needed and what its absence disables.
packages=(
  python3             # runs everything
  python3-venv        # the .venv below (Debian keeps venv/ensurepip out of python3)
  procps              # pgrep: the tests check that no agent process outlives a run
  iproute2            # ip/tc: namespaces, veth pairs and qdiscs of the emulated mode
  kmod                # modprobe: loads sch_netem, sch_tbf and veth for the emulated mode
  qemu-system-x86     # the VM mode's machine (for kernels without sch_netem)
  "$kernel_package"   # the VM mode boots /boot/vmlinuz-* with the modules in /lib/modules
  busybox-static      # the VM mode's initramfs init (static: no libraries to copy in)
  cpio                # packs that initramfs
  vagrant             # `vagrant validate` of the Vagrantfile in the tests
)
declare -A disables=(
  [python3]="nothing runs" [python3-venv]="no .venv" [procps]="no leak checks in the tests"
  [iproute2]="no emulated mode" [kmod]="no emulated mode" [qemu-system-x86]="no VM mode"
  [$kernel_package]="no VM mode" [busybox-static]="no VM mode" [cpio]="no VM mode"
  [vagrant]="no Vagrantfile test"
)

installed() { [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]; }

if command -v dpkg-query >/dev/null 2>&1; then
  missing=()
  for p in "${packages[@]}"; do installed "$p" || missing+=("$p"); done
  if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      export DEBIAN_FRONTEND=noninteractive
      echo "setup: installing ${missing[*]} (apt-get)"
      apt-get update -qq
      # A package this release does not ship (e.g. vagrant on some releases) is skipped, not fatal.
      available=()
      for p in "${missing[@]}"; do
        policy=$(LC_ALL=C apt-cache policy "$p" 2>/dev/null)
        if grep -q 'Candidate: [^(]' <<<"$policy"; then
          available+=("$p")
        else
          echo "setup: $p is not available from apt here (${disables[$p]})" >&2
        fi
      done
      if [ ${#available[@]} -gt 0 ]; then
        apt-get install -y -qq --no-install-recommends "${available[@]}" >/dev/null
      fi
    else
      summary=""
      for p in "${missing[@]}"; do summary+="${summary:+, }$p (${disables[$p]})"; done
      echo "setup: not installing (needs root and apt-get): $summary; sim mode still works" >&2
    fi
  fi
else
  for tool in ip modprobe qemu-system-x86_64 cpio; do
    if ! command -v "$tool" >/dev/null; then
      echo "setup: not Debian/Ubuntu and no $tool: install iproute2 and kmod (emulated mode)," \
        "qemu, a kernel, a static busybox and cpio (VM mode) yourself; sim mode still works" >&2
      break
    fi
  done
fi

python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "setup: Python 3.11 or newer is required (set PYTHON=/path/to/python3.11)" >&2
  exit 1
fi
[ -x .venv/bin/python ] || "$python" -m venv .venv
# The venv's own pip (22.3 or newer on Python 3.11) installs editable projects (PEP 660).
# setuptools prints a 10-line banner for every editable install; it says nothing about this one.
# pip byte-compiles what it installs file by file on one core (torch alone: 90 s on the build
# host); compileall does the same with a worker per core, and Python never writes bytecode
# itself where PYTHONDONTWRITEBYTECODE is set, so it is compiled here once.  A file written for
# a newer Python than this one (torch ships one) does not compile: pip skips it silently, and
# so does this step.
PYTHONWARNINGS="ignore:Editable installation" .venv/bin/python -m pip install --quiet --no-compile \
  -e '.[hf,dev]'
# Left out, as never imported by a run (a module left out still imports, from source): the
# libraries' own test folders, pip, and transformers' architectures but the ones the shipped
# pair (llama) and the documented GPU pair (qwen2) use; 41 % of the files.
site_packages=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
.venv/bin/python -m compileall -q -j 0 \
  -x '/tests?/|/site-packages/pip/|/transformers/models/(?!auto/|llama/|qwen2/)' \
  "$site_packages" >/dev/null 2>&1 || true
echo "setup: ready (.venv/bin/orchestrator)"

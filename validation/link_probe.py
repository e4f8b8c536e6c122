"""Link probes: what a link really delivers per direction, against what its profile says.

Measured on the link a run would use, with the same clock on both ends
(one host, or one VM: ``time.perf_counter`` is the system-wide monotonic
clock), so one-way delays need no clock sync:

- **packets**: UDP probes from the edge every ``interval_s``; the cloud
  echoes each at once.  Per direction: one-way delay (median, P95), jitter
  sigma (``robust_sigma``; the standard deviation is in the row's note), loss with a 95 % Clopper-Pearson interval,
  reordering (arrivals with a lower sequence number than one already seen);
  and the round trip.
- **goodput**: one TCP bulk transfer per direction; the steady payload rate
  between the arrival of 10 % and 90 % of the bytes (skips the tbf burst and
  the drain; robust to a stalled sender, see ``_middle_rate_mbps``).
- **baseline**: the packet probe and one bulk transfer on the same path,
  run first, with nothing shaped but a netem floor of ``BASELINE_FLOOR_MS``
  each way where the path has netem (``measure_path_baseline``; the floor is
  subtracted again): the baseline's packets take the qdisc and timer path
  shaped packets take.  Its median one-way delay is the path's own systematic
  delay (the VM's timers and software emulation; loopback in sim), reported
  and subtracted as measured, never as a constant; its spread and its
  capacity qualify the verdicts (see ``evaluate``).

Paths: ``KernelPaths`` (sockets inside the namespaces of a ``LinkTopology``
or a ``RouterTopology``: the emulated and vm modes) and ``SimPaths`` (loopback sockets whose
receiver holds each datagram or chunk until ``shaping.simlink`` delivers it,
dropping a datagram whose first transmission the model loses).

Expectations reuse the sim mode's link math (``shaping.link_model.JitterSource``):
netem's delay draws, with the in-order release the tool configures unless
the profile allows reordering, simulated on the probe schedule; loss is the
profile's mean rate; goodput the tbf rate times the TCP payload share of a
full frame.
"""

from __future__ import annotations

import math
import socket
import struct
import threading
from dataclasses import asdict, dataclass, field, replace
from typing import Protocol

import numpy as np

from shaping.clock import now, sleep_until
from shaping.link import EmulatedLink
from shaping.link_model import (
    HEADER_BYTES,
    MSS_BYTES,
    DirectionLink,
    JitterSource,
    LossProcess,
    tcp_estimates,
)
from shaping.profile import RECEIVER, SENDER, DirectionSpec, LinkState, NetworkProfile, RandomLoss
from shaping.qdisc.operations import apply_link, remove_link, shapes_with_netem
from shaping.simlink import SimLinkSettings, SimulatedDirection
from validation.stats import binomial_interval, percentiles

DIRECTIONS = ("uplink", "downlink")
PROBE_FORMAT = struct.Struct("!Idd")       # seq, t_sent (edge), t_echo (cloud)
CHUNK_HEADER = struct.Struct("!dI")        # sim bulk chunks: sent_at, payload length
UNSHAPED_BULK_BYTES = 16 * 1024 * 1024      # a goodput transfer on an unshaped direction
# The baseline's netem delay per direction, subtracted again.  A packet netem holds leaves on a
# timer wake-up, one the bare path skips; in the router VM that wake-up is software-emulated
# and costs 0.2-0.7 ms per round trip (measured at 2-200 ms of RTT), which a bare baseline
# missed and every shaped median then carried as error.
BASELINE_FLOOR_MS = 0.5
BULK_CHUNK_BYTES = 64 * 1024
SOCKET_TIMEOUT_S = 5.0
# A 2 s transfer's 10-90 % window: tbf's burst and timer slack move it by a few percent
# (the long steady-state check of tbf itself, tests/test_qdisc.py, holds 3 %).
GOODPUT_TOLERANCE = 0.05
# A rate is judged only on a path that carries this many times more unshaped: nearer its
# capacity, the shaper's own cost counts (under the VM's software emulation tbf holds
# 100 Mbit/s to ~90 % on a path that carries ~265 unshaped).
CAPACITY_HEADROOM = 4


@dataclass(frozen=True)
class ProbePlan:
    packets: int = 300
    interval_s: float = 0.010
    payload_bytes: int = 64
    goodput_s: float = 2.0
    baseline_packets: int = 100     # at ``interval_s``: the path's own noise at the same spacing
    baseline_bulk_bytes: int = 16 * 1024 * 1024    # the unshaped path's capacity
    drain_s: float = 1.0            # wait after the last probe, beyond the longest expected delay


# Expectations from the link math ----------------------------------------------------------------

def _released_ms(spec: DirectionSpec, jitter: JitterSource, send_ms: np.ndarray) -> np.ndarray:
    """Arrival times (ms) of packets sent at ``send_ms`` through netem as the tool sets it up."""
    arrivals = np.empty_like(send_ms)
    released = -math.inf
    for i, t in enumerate(send_ms):
        arrivals[i] = t + jitter.sample_ms()
        if not spec.allow_reordering:          # netem's rate keeps send times non-decreasing
            arrivals[i] = released = max(arrivals[i], released)
    return arrivals


def expected_echo_delays_ms(state: LinkState, plan: ProbePlan, seed: int = 0,
                            repetitions: int = 20) -> dict[str, np.ndarray]:
    """One-way delays (per direction) and round trips netem would give the echo probe.

    The echo leaves the cloud when the probe arrives, so the downlink's send
    schedule is the uplink's arrival times, bunched where the uplink held
    packets back; ``repetitions`` simulated runs, concatenated.
    """
    send_ms = np.arange(plan.packets) * plan.interval_s * 1000.0
    found: dict[str, list[np.ndarray]] = {"uplink": [], "downlink": [], "round trip": []}
    for repetition in range(repetitions):
        rng_up, rng_down = np.random.default_rng([seed, repetition]).spawn(2)
        up = _released_ms(state.uplink, JitterSource(state.uplink, rng_up), send_ms)
        down = _released_ms(state.downlink, JitterSource(state.downlink, rng_down), up)
        found["uplink"].append(up - send_ms)
        found["downlink"].append(down - up)
        found["round trip"].append(down - send_ms)
    return {key: np.concatenate(values) for key, values in found.items()}


def payload_rate_mbps(spec: DirectionSpec) -> float | None:
    """TCP payload rate through tbf: the rate times MSS / full frame; None when unshaped."""
    if spec.bandwidth_mbps is None:
        return None
    return spec.bandwidth_mbps * MSS_BYTES / (MSS_BYTES + HEADER_BYTES)


# Paths ---------------------------------------------------------------------------------------

class Paths(Protocol):
    # True where a Python link model delays the bytes (the receiver holds each chunk until
    # the model delivers it, so a chunk carries its send time); False where the kernel does
    models_the_link: bool

    def socket(self, side: str, kind: int) -> socket.socket: ...
    def ip(self, side: str) -> str: ...
    def arrives(self, direction: str, sent_at: float, nbytes: int,
                datagram: bool = True) -> bool:
        """Wait until the link delivers it; False when the link lost it."""


class KernelPaths:
    """Sockets inside the namespaces of a ``LinkTopology``: the kernel shapes them."""

    models_the_link = False

    def __init__(self, topology) -> None:
        self.topology = topology

    def socket(self, side: str, kind: int) -> socket.socket:
        return self.topology.socket(side, socket.AF_INET, kind)

    def ip(self, side: str) -> str:
        return self.topology.ip(side)

    def arrives(self, direction: str, sent_at: float, nbytes: int,
                datagram: bool = True) -> bool:
        return True


class SimPaths:
    """Loopback sockets whose receiver holds what it gets as the sim link model says.

    TCP chunks go through ``shaping.simlink`` as the agents' messages do (a
    loss costs a retransmission timeout); a datagram gets the model's delay,
    in-order release and token bucket, but its loss drops it (nothing resends
    a datagram).
    """

    models_the_link = True

    def __init__(self, profile: NetworkProfile, seed: int = 0) -> None:
        self.started_at = now()
        settings = SimLinkSettings(profile=profile, seed=seed, started_at=self.started_at)
        state = profile.state_at(0.0)
        self._streams, self._datagrams, self._losses = {}, {}, {}
        for index, direction in enumerate(DIRECTIONS):
            spec: DirectionSpec = getattr(state, direction)
            self._streams[direction] = SimulatedDirection(settings, direction, stream=7)
            delay_rng, loss_rng = np.random.default_rng([seed, 8, index]).spawn(2)
            self._datagrams[direction] = DirectionLink(
                spec.model_copy(update={"loss": RandomLoss()}), delay_rng, *tcp_estimates(state))
            self._losses[direction] = LossProcess(spec.loss, loss_rng)

    def socket(self, side: str, kind: int) -> socket.socket:
        return socket.socket(socket.AF_INET, kind)

    def ip(self, side: str) -> str:
        return "127.0.0.1"

    def arrives(self, direction: str, sent_at: float, nbytes: int,
                datagram: bool = True) -> bool:
        if not datagram:
            sleep_until(self._streams[direction].deliver_at(sent_at, nbytes))
            return True
        if self._losses[direction].lost():
            return False
        transit = self._datagrams[direction].transit(sent_at - self.started_at, nbytes)
        sleep_until(self.started_at + transit.deliver_at_s)
        return True


# Measuring -----------------------------------------------------------------------------------

@dataclass
class PacketSamples:
    sent: int
    owd_ms: dict[str, list[float]] = field(default_factory=lambda: {d: [] for d in DIRECTIONS})
    received: dict[str, int] = field(default_factory=lambda: {d: 0 for d in DIRECTIONS})
    reordered: dict[str, int] = field(default_factory=lambda: {d: 0 for d in DIRECTIONS})
    rtt_ms: list[float] = field(default_factory=list)
    rtt_sent_at: list[float] = field(default_factory=list)    # each round trip's send instant

    def less(self, floor_ms: float) -> "PacketSamples":
        """These samples with ``floor_ms`` taken off each one-way delay (twice off each round
        trip)."""
        return replace(self, owd_ms={d: [v - floor_ms for v in values]
                                     for d, values in self.owd_ms.items()},
                       rtt_ms=[v - 2 * floor_ms for v in self.rtt_ms])


def _count_reordering(seq: int, highest: list[int]) -> int:
    if seq < highest[0]:
        return 1
    highest[0] = seq
    return 0


def measure_packets(paths: Paths, packets: int, interval_s: float, payload_bytes: int,
                    wait_s: float) -> PacketSamples:
    """Echo ``packets`` UDP probes edge -> cloud -> edge; see the module docstring."""
    size = max(payload_bytes, PROBE_FORMAT.size)
    padding = bytes(size - PROBE_FORMAT.size)
    edge, cloud = paths.socket("edge", socket.SOCK_DGRAM), paths.socket("cloud", socket.SOCK_DGRAM)
    samples = PacketSamples(sent=packets)
    done = threading.Event()
    threads: list[threading.Thread] = []
    try:
        cloud.bind((paths.ip("cloud"), 0))
        edge.bind((paths.ip("edge"), 0))
        edge_address, cloud_address = edge.getsockname(), cloud.getsockname()
        for sock in (edge, cloud):
            sock.settimeout(0.05)

        def listen(sock: socket.socket, direction: str, then) -> None:
            highest = [-1]
            while not done.is_set():
                try:
                    data = sock.recv(2048)
                except socket.timeout:
                    continue
                seq, t_sent, t_echo = PROBE_FORMAT.unpack_from(data)
                sent_at = t_sent if direction == "uplink" else t_echo
                if not paths.arrives(direction, sent_at, len(data)):
                    continue
                t_arrived = now()
                samples.owd_ms[direction].append((t_arrived - sent_at) * 1000.0)
                samples.received[direction] += 1
                samples.reordered[direction] += _count_reordering(seq, highest)
                then(seq, t_sent, t_arrived)

        def echo(seq: int, t_sent: float, t_arrived: float) -> None:
            cloud.sendto(PROBE_FORMAT.pack(seq, t_sent, t_arrived) + padding, edge_address)

        def round_trip(seq: int, t_sent: float, t_arrived: float) -> None:
            samples.rtt_ms.append((t_arrived - t_sent) * 1000.0)
            samples.rtt_sent_at.append(t_sent)

        threads += [threading.Thread(target=listen, args=(cloud, "uplink", echo), daemon=True),
                    threading.Thread(target=listen, args=(edge, "downlink", round_trip),
                                     daemon=True)]
        for thread in threads:
            thread.start()
        start = now()
        for seq in range(packets):
            sleep_until(start + seq * interval_s)
            edge.sendto(PROBE_FORMAT.pack(seq, now(), 0.0) + padding, cloud_address)
        deadline = now() + wait_s
        while now() < deadline and samples.received["downlink"] < packets:
            sleep_until(min(deadline, now() + 0.05))
    finally:         # the listeners stop before their sockets close, also on an interrupt
        done.set()
        for thread in threads:
            thread.join(timeout=2.0)
        edge.close()
        cloud.close()
    return samples


def measure_goodput(paths: Paths, direction: str, total_bytes: int,
                    max_seconds: float = math.inf) -> float:
    """TCP payload rate (Mbit/s) of one bulk transfer, between 10 % and 90 % of its bytes.

    The transfer stops at ``total_bytes`` or after ``max_seconds`` of sending
    (a lossy link may carry far less than its rate).
    """
    sender_side, receiver_side = SENDER[direction], RECEIVER[direction]
    listener = paths.socket(receiver_side, socket.SOCK_STREAM)
    sender = paths.socket(sender_side, socket.SOCK_STREAM)
    arrivals: list[tuple[float, int]] = []
    errors: list[BaseException] = []
    framed = paths.models_the_link
    try:
        listener.bind((paths.ip(receiver_side), 0))
        listener.listen(1)
        listener.settimeout(SOCKET_TIMEOUT_S)

        def receive() -> None:
            try:
                connection, _ = listener.accept()
                with connection:
                    connection.settimeout(SOCKET_TIMEOUT_S + total_bytes / 1e5)
                    if framed:
                        _receive_chunks(connection, paths, direction, arrivals)
                    else:
                        while chunk := connection.recv(1 << 16):
                            arrivals.append((now(), len(chunk)))
            except BaseException as error:   # surfaced by the caller
                errors.append(error)

        receiver = threading.Thread(target=receive, daemon=True)
        receiver.start()
        # a path that breaks mid-transfer must not hold a blocking connect or send until TCP
        # gives up (a router VM starved on a loaded host once took 976 s to say so)
        sender.settimeout(SOCKET_TIMEOUT_S + min(max_seconds, total_bytes / 1e4))
        sender.connect(listener.getsockname())
        payload = bytes(BULK_CHUNK_BYTES)
        sent, stop_at = 0, now() + max_seconds
        while sent < total_bytes and now() < stop_at:
            n = min(BULK_CHUNK_BYTES, total_bytes - sent)
            if framed:
                sender.sendall(CHUNK_HEADER.pack(now(), n) + payload[:n])
            else:
                sender.sendall(payload[:n])
            sent += n
        sender.shutdown(socket.SHUT_WR)
        receiver.join(timeout=SOCKET_TIMEOUT_S * 4 + total_bytes / 1e4)
    finally:
        sender.close()
        listener.close()
    if errors:
        raise errors[0]
    return _middle_rate_mbps(arrivals)


def _receive_chunks(connection: socket.socket, paths: Paths, direction: str,
                    arrivals: list[tuple[float, int]]) -> None:
    reader = connection.makefile("rb")
    while header := reader.read(CHUNK_HEADER.size):
        sent_at, length = CHUNK_HEADER.unpack(header)
        reader.read(length)
        paths.arrives(direction, sent_at, CHUNK_HEADER.size + length, datagram=False)
        arrivals.append((now(), length))


def _middle_rate_mbps(arrivals: list[tuple[float, int]]) -> float:
    """Steady payload rate between 10 % and 90 % of the bytes: the median, over
    windows that each span a tenth of the bytes (one starting at every arrival),
    of bytes over time.

    Windows, not two end points: a receiver woken late shifts single
    timestamps, not the rate of a window.  The median, not a fit over the
    whole stretch: a sender that stalls (an emulated CPU descheduled for
    100 ms) idles the link; that is the host, not the link, and it moves only
    the few windows around the stall.
    """
    if len(arrivals) < 3:
        return math.nan
    times = np.array([t for t, _ in arrivals])
    cumulative = np.cumsum([n for _, n in arrivals])
    total = cumulative[-1]
    low, high = np.searchsorted(cumulative, [0.1 * total, 0.9 * total])
    ends = np.searchsorted(cumulative, cumulative[low:high] + 0.1 * total)
    inside = ends <= high
    starts = np.arange(low, high)[inside]
    ends = ends[inside]
    spans = times[ends] - times[starts]
    rates = (cumulative[ends] - cumulative[starts])[spans > 0] / spans[spans > 0]
    if rates.size == 0:
        return math.nan
    return float(np.median(rates) * 8 / 1e6)


# The report ----------------------------------------------------------------------------------

@dataclass
class Row:
    direction: str
    metric: str
    unit: str
    expected: float | None
    measured: float
    error: float | None          # measured (baseline-corrected for delays) minus expected
    tolerance: str
    ok: bool | None              # None: nothing to judge against
    note: str = ""


@dataclass
class ProbeReport:
    mode: str
    profile: str
    plan: dict
    baseline_owd_ms: dict[str, float]
    rows: list[Row]
    baseline_sigma_ms: dict[str, float] = field(default_factory=dict)
    baseline_goodput_mbps: float = math.nan
    layouts: dict[str, str] = field(default_factory=dict)   # qdiscs per veth end (kernel)

    @property
    def passed(self) -> bool:
        return all(row.ok is not False for row in self.rows)

    def to_dict(self) -> dict:
        return {"mode": self.mode, "profile": self.profile, "plan": self.plan,
                "baseline_owd_ms": self.baseline_owd_ms,
                "baseline_sigma_ms": self.baseline_sigma_ms,
                "baseline_goodput_mbps": self.baseline_goodput_mbps, "layouts": self.layouts,
                "passed": self.passed,
                "rows": [asdict(row) for row in self.rows]}


def robust_sigma(values) -> float:
    """The interquartile range over 1.349: a normal's sigma, blind to the rare long stall.

    Under software emulation a few packets wait many milliseconds for the
    emulator's scheduler; one such stall moves a 200-sample standard
    deviation by more than the jitter being checked, the IQR not at all.
    """
    q25, q75 = np.percentile(values, [25, 75])
    return float((q75 - q25) / 1.349)


def sigma_se(simulated: np.ndarray, n: int) -> float:
    """Standard error of ``robust_sigma`` over ``n`` probes: its spread across the simulated
    runs of ``n`` probes each (``expected_echo_delays_ms`` concatenates them); a heavy tail
    (pareto) makes it several times a normal's."""
    runs = np.asarray(simulated)[: len(simulated) // n * n].reshape(-1, n)
    return float(np.std([robust_sigma(run) for run in runs])) if len(runs) > 1 else 0.0


def median_difference_se(sigma: float, n: int) -> float:
    """Standard error of the difference of two independent medians of ``n`` normal samples
    with spread ``sigma`` each (one measured, one simulated): sqrt(2) * 1.2533 * sigma / sqrt(n)."""
    return math.sqrt(2.0) * math.sqrt(math.pi / 2.0) * sigma / math.sqrt(max(n, 1))


def _delay_row(direction: str, metric: str, expected: np.ndarray, measured: np.ndarray,
               baseline: float, baseline_sigma: float, relative: float, absolute_ms: float) -> Row:
    """A median delay against its expectation, after the baseline's median.

    The bound adds the baseline's spread and three standard errors of the two
    medians (with 10 ms of jitter and 200 probes one standard error is ~1 ms).
    """
    expected_p50, measured_p50 = float(np.median(expected)), float(np.median(measured))
    corrected = measured_p50 - baseline
    sampling = 3 * median_difference_se(robust_sigma(expected), min(len(expected), len(measured)))
    bound = max(absolute_ms, relative * expected_p50) + 2 * baseline_sigma + sampling
    error = corrected - expected_p50
    return Row(direction, metric, "ms", expected_p50, measured_p50, error,
               f"±{bound:.2f} ms after the baseline", bool(abs(error) <= bound),
               f"baseline {baseline:.3f} ms; 3 SE of the medians {sampling:.2f} ms")


def evaluate(mode: str, profile_name: str, state: LinkState, plan: ProbePlan,
             baseline: PacketSamples, shaped: PacketSamples, goodput_mbps: dict[str, float],
             baseline_goodput_mbps: float = math.nan, seed: int = 0) -> ProbeReport:
    """Compare what was measured with what the link math expects; pure.

    The baseline (the same path unshaped) is the only correction: its median
    one-way delay is subtracted, its spread is added in quadrature to the
    expected jitter and widens the delay and jitter bounds, and a rate is
    judged only when the unshaped path carries ``CAPACITY_HEADROOM`` times as
    much.  Rows per direction: one-way delay p50 and p95 and jitter sigma
    (where packets came through), loss, reordering, goodput; then the round trip.
    """
    baseline_owd = {d: float(np.median(baseline.owd_ms[d])) if baseline.owd_ms[d] else 0.0
                    for d in DIRECTIONS}
    baseline_sigma = {d: robust_sigma(baseline.owd_ms[d]) if baseline.owd_ms[d] else 0.0
                      for d in DIRECTIONS}
    expected_delays = expected_echo_delays_ms(state, plan, seed)
    rows: list[Row] = []
    for direction in DIRECTIONS:
        spec: DirectionSpec = getattr(state, direction)
        expected, owd = np.asarray(expected_delays[direction]), np.asarray(shaped.owd_ms[direction])
        if owd.size:
            rows += _delay_rows(direction, spec, expected, owd, baseline_owd[direction],
                                baseline_sigma[direction], plan.packets)
        rows.append(_loss_row(direction, spec, shaped))
        rows.append(_reordering_row(direction, spec, shaped.reordered[direction]))
        rows.append(_goodput_row(direction, spec, goodput_mbps.get(direction, math.nan),
                                 baseline_goodput_mbps))
    if shaped.rtt_ms:
        rows += _round_trip_rows(np.asarray(expected_delays["round trip"]),
                                 np.asarray(shaped.rtt_ms), baseline_owd, baseline_sigma)
    return ProbeReport(mode, profile_name, asdict(plan), baseline_owd, rows, baseline_sigma,
                       baseline_goodput_mbps)


def _delay_rows(direction: str, spec: DirectionSpec, expected: np.ndarray, owd: np.ndarray,
                baseline_ms: float, baseline_sigma: float, packets: int) -> list[Row]:
    """One-way delay p50 (judged) and p95 (reported); the jitter's sigma (judged)."""
    sigma_expected = math.hypot(robust_sigma(expected), baseline_sigma)
    sigma = robust_sigma(owd)
    sampling = 3 * sigma_se(expected, packets)
    # the path's own noise is heavy-tailed under emulation: its sigma is itself uncertain
    bound = max(0.5, 0.15 * sigma_expected, sampling) + baseline_sigma
    return [_delay_row(direction, "one-way delay p50", expected, owd, baseline_ms, baseline_sigma,
                       0.05, 0.5),
            Row(direction, "one-way delay p95", "ms", float(np.percentile(expected, 95)),
                float(np.percentile(owd, 95)), None, "reported", None),
            Row(direction, "jitter sigma", "ms", sigma_expected, sigma, sigma - sigma_expected,
                f"±{bound:.2f} ms", bool(abs(sigma - sigma_expected) <= bound),
                f"IQR/1.349; std {np.std(owd):.3f} ms; profile {spec.jitter_ms:g} ms "
                f"{spec.jitter_distribution}; baseline {baseline_sigma:.3f} ms"
                f"; 3 SE {sampling:.2f} ms")]


def _loss_row(direction: str, spec: DirectionSpec, shaped: PacketSamples) -> Row:
    """The configured loss inside the measured rate's 95 % interval; downlink losses are
    counted among the probes that crossed the uplink."""
    trials = shaped.sent if direction == "uplink" else shaped.received["uplink"]
    lost = trials - shaped.received[direction]
    low, high = binomial_interval(lost, trials)
    return Row(direction, "loss", "%", spec.loss_pct, 100.0 * lost / max(trials, 1),
               None, "expected inside the 95 % interval",
               low * 100 <= spec.loss_pct <= high * 100,
               f"{lost}/{trials}, 95 % CI [{100 * low:.2f}, {100 * high:.2f}] %")


def _reordering_row(direction: str, spec: DirectionSpec, reordered: int) -> Row:
    """None reordered under in-order release; reported where the profile allows it."""
    if spec.allow_reordering:
        return Row(direction, "reordered", "packets", None, float(reordered), None, "reported",
                   None)
    return Row(direction, "reordered", "packets", 0.0, float(reordered), None,
               "none (in-order release)", reordered == 0)


def _goodput_row(direction: str, spec: DirectionSpec, measured: float,
                 baseline_goodput_mbps: float) -> Row:
    """The bulk rate against the profile's payload rate; only reported where TCP's congestion
    control or the unshaped path's capacity, not the bucket, sets it."""
    rate = payload_rate_mbps(spec)
    why_not = ("unshaped" if rate is None else
               "loss or jitter: TCP's congestion control sets it"
               if spec.loss_pct or spec.jitter_ms else
               f"the unshaped path carries only {baseline_goodput_mbps:.1f} Mbit/s"
               if not baseline_goodput_mbps >= CAPACITY_HEADROOM * rate else "")
    return Row(direction, "goodput", "Mbit/s", rate, measured,
               measured - rate if rate is not None else None,
               "reported" if why_not else f"±{GOODPUT_TOLERANCE:.0%}",
               None if why_not else bool(abs(measured - rate) <= GOODPUT_TOLERANCE * rate),
               why_not)


def _round_trip_rows(expected: np.ndarray, rtt_ms: np.ndarray, baseline_owd: dict[str, float],
                     baseline_sigma: dict[str, float]) -> list[Row]:
    stats = percentiles(rtt_ms, (95, 99))
    return [_delay_row("round trip", "RTT p50", expected, rtt_ms, sum(baseline_owd.values()),
                       math.hypot(*baseline_sigma.values()), 0.05, 1.0),
            Row("round trip", "RTT p95 / p99", "ms", None, stats["p95"], None,
                f"p99 {stats['p99']:.2f} ms", None)]


def _wait_s(state: LinkState, plan: ProbePlan) -> float:
    longest = max(spec.delay_ms + 4 * spec.jitter_ms for spec in (state.uplink, state.downlink))
    return 2 * longest / 1000.0 + plan.drain_s


def bulk_bytes(spec: DirectionSpec, plan: ProbePlan) -> int:
    rate = payload_rate_mbps(spec)
    return UNSHAPED_BULK_BYTES if rate is None else int(rate * 1e6 / 8 * plan.goodput_s)


UNSHAPED = NetworkProfile(name="unshaped",
                          initial=LinkState(uplink=DirectionSpec(), downlink=DirectionSpec()))


def probe_sim(profile: NetworkProfile, plan: ProbePlan = ProbePlan(), seed: int = 0) -> ProbeReport:
    """Probe the sim mode's link: loopback sockets held by ``shaping.simlink``."""
    return probe(lambda shaped: SimPaths(profile if shaped else UNSHAPED, seed), "sim",
                 profile, plan, seed=seed)


@dataclass
class Baseline:
    """The path's own cost: its echo samples and its TCP capacity (``measure_baseline``);
    ``floor_ms``: the netem delay per direction it was measured through (0: none), already
    taken off the samples."""

    samples: PacketSamples
    goodput_mbps: float
    floor_ms: float = 0.0

    def summary(self) -> dict:
        """What a run records of it (``link_stats.json``): per direction the median one-way
        delay and its spread (IQR / 1.349), the round trip's median, the capacity."""
        return {"owd_ms": {d: float(np.median(v)) if v else math.nan
                           for d, v in self.samples.owd_ms.items()},
                "sigma_ms": {d: robust_sigma(v) if v else math.nan
                             for d, v in self.samples.owd_ms.items()},
                "rtt_ms": float(np.median(self.samples.rtt_ms)) if self.samples.rtt_ms
                else math.nan,
                "lost": self.samples.sent - self.samples.received["downlink"],
                "packets": self.samples.sent, "goodput_mbps": self.goodput_mbps,
                "floor_ms": self.floor_ms}


def measure_baseline(paths: Paths, plan: ProbePlan = ProbePlan(), floor_ms: float = 0.0) -> Baseline:
    """Echo probes and one bulk transfer on an unshaped path (or one that only holds each
    packet ``floor_ms`` a direction, taken off again): what the path itself costs."""
    samples = measure_packets(paths, plan.baseline_packets, plan.interval_s, plan.payload_bytes,
                              plan.drain_s + 2 * floor_ms / 1000)
    return Baseline(samples.less(floor_ms),
                    measure_goodput(paths, "uplink", plan.baseline_bulk_bytes), floor_ms)


def floor_state(floor_ms: float = BASELINE_FLOOR_MS) -> LinkState:
    """Both directions delayed ``floor_ms`` and nothing else."""
    spec = DirectionSpec(delay_ms=floor_ms)
    return LinkState(uplink=spec, downlink=spec)


def measure_path_baseline(topology, plan: ProbePlan = ProbePlan()) -> Baseline:
    """The baseline of a kernel path (a ``LinkTopology`` or ``RouterTopology``, not yet
    shaped): through a netem floor of ``BASELINE_FLOOR_MS`` where the topology has netem,
    removed afterwards; on the bare path where it has none (tbf alone shapes there)."""
    if not shapes_with_netem(topology):
        return measure_baseline(KernelPaths(topology), plan)
    apply_link(topology, floor_state())
    try:
        return measure_baseline(KernelPaths(topology), plan, BASELINE_FLOOR_MS)
    finally:
        remove_link(topology)


def probe(paths_for, mode: str, profile: NetworkProfile, plan: ProbePlan = ProbePlan(),
          shape=None, seed: int = 0, baseline: Baseline | None = None) -> ProbeReport:
    """Baseline on the unshaped path (unless given), then ``shape()``, then packets and
    goodput.

    ``paths_for(shaped: bool)`` returns the ``Paths`` to measure; ``shape`` (or
    None) applies the profile between the two phases.
    """
    state = profile.state_at(0.0)
    baseline = baseline or measure_baseline(paths_for(False), plan)
    if shape is not None:
        shape()
    paths = paths_for(True)
    shaped = measure_packets(paths, plan.packets, plan.interval_s, plan.payload_bytes,
                             _wait_s(state, plan))
    goodput = {direction: measure_goodput(paths, direction,
                                          bulk_bytes(getattr(state, direction), plan),
                                          max_seconds=2 * plan.goodput_s)
               for direction in DIRECTIONS}
    return evaluate(mode, profile.name, state, plan, baseline.samples, shaped, goodput,
                    baseline.goodput_mbps, seed)


def probe_link(link: EmulatedLink, mode: str, plan: ProbePlan = ProbePlan(),
               seed: int = 0) -> ProbeReport:
    """Probe a kernel-shaped link that is created but not yet shaped (``create(shape=False)``):
    the baseline on its path (the veth, or the router VM: ``measure_path_baseline``), then
    its profile."""
    paths = KernelPaths(link.topology)
    link.topology.wait_ready()
    report = probe(lambda shaped: paths, mode, link.profile, plan, shape=link.shape, seed=seed,
                   baseline=measure_path_baseline(link.topology, plan))
    report.layouts = dict(link.layouts)
    return report


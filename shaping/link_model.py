"""The pure per-direction link model: when does a message sent now arrive?

Owns what one direction of a shaped link does to a TCP stream write:
packetisation (MSS, header bytes), the token-bucket rate limit (tbf), the
netem one-way delay with jitter, its distribution and correlation, packet
loss (Bernoulli or Gilbert-Elliott) and the TCP retransmission timeout that
turns a loss into latency, and TCP's in-order delivery.

It is pure: no sockets, no sleeping, no wall clock.  Callers pass times in
seconds on whatever clock they use; randomness comes from a seeded numpy
``Generator``.  The sim-mode proxy asks it when to deliver each message, the
analytic model uses its closed forms (``serialization_delay_s``,
``retransmission_timeout_s``), and link probes compare against it.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from shaping.profile import DirectionSpec, LinkState, LossSpec, RandomLoss

MSS_BYTES = 1448            # TCP payload per segment on a 1500-byte MTU with timestamps
HEADER_BYTES = 66           # Ethernet 14 + IPv4 20 + TCP 32 (what tbf counts per packet)
RTO_MIN_S = 0.200           # Linux tcp_rto_min
RTO_MAX_S = 120.0           # Linux TCP_RTO_MAX: exponential back-off stops growing here
MAX_CONSECUTIVE_LOSSES = 15  # per packet; keeps a 100 %-loss link bounded

_MAX_FRAME_BYTES = MSS_BYTES + HEADER_BYTES
_TIMER_HZ = 1000


def zmtp_wire_bytes(frames: list) -> int:
    """Bytes ZMTP 3 puts into the TCP stream for these frames (1 flag + 1 or 8 length bytes each)."""
    return sum(len(frame) + (2 if len(frame) < 256 else 9) for frame in frames)


def packet_count(payload_bytes: int) -> int:
    """Segments a write of ``payload_bytes`` takes (at least one)."""
    return max(1, -(-payload_bytes // MSS_BYTES))


def wire_bytes(payload_bytes: int) -> int:
    """Bytes a write of ``payload_bytes`` puts on the wire, headers included."""
    return payload_bytes + packet_count(payload_bytes) * HEADER_BYTES


def default_burst_bytes(rate_bytes_per_s: float) -> int:
    """Bucket size for a rate: two full frames, and at least one timer tick's worth.

    tbf only releases packets on timer ticks, so a burst below ``rate / HZ``
    caps the rate below the configured one.
    """
    return max(2 * _MAX_FRAME_BYTES, math.ceil(rate_bytes_per_s / _TIMER_HZ))


def serialization_delay_s(nbytes: int, rate_bytes_per_s: float,
                          burst_bytes: int | None = None) -> float:
    """How long ``nbytes`` wire bytes wait in a token bucket that is full when they arrive."""
    if math.isinf(rate_bytes_per_s):
        return 0.0
    if burst_bytes is None:
        burst_bytes = default_burst_bytes(rate_bytes_per_s)
    return max(0.0, nbytes - burst_bytes) / rate_bytes_per_s


def transmit_s(direction: DirectionSpec, message_bytes: float) -> float:
    """Serialization of one message of ``message_bytes`` (ZMTP bytes) through a direction's
    bucket (``transfer_s`` adds what loss costs)."""
    return serialization_delay_s(wire_bytes(int(round(message_bytes))),
                                 direction.rate_bytes_per_s, direction.burst_bytes)


def tcp_estimates(state: LinkState) -> tuple[float, float]:
    """(srtt, rttvar) seconds that TCP would settle on for this link state."""
    srtt = state.rtt_ms / 1000.0
    rttvar = (state.uplink.jitter_ms + state.downlink.jitter_ms) / 2000.0
    return srtt, rttvar


def expected_loss_wait_s(packets: int, loss_pct: float, rto_s: float) -> float:
    """Mean wait that resending adds to a message of ``packets`` packets sent together when
    each transmission is lost with ``loss_pct`` % (independently), as ``DirectionLink``
    resends: a packet lost j times arrives rto * (2^j - 1) late, and the message with its
    latest packet, so the wait is rto * sum over j >= 1 of 2^(j-1) * P(some packet is lost
    at least j times) = rto * sum 2^(j-1) * (1 - (1 - p^j)^packets).  Infinite from 50 %
    on, where the back-off's mean diverges (the model's cap on back-offs aside)."""
    p = loss_pct / 100.0
    if p >= 0.5:
        return math.inf
    total, j = 0.0, 1
    while True:
        term = 2.0 ** (j - 1) * -math.expm1(packets * math.log1p(-p ** j))
        total += term
        if term < 1e-12 or j >= MAX_CONSECUTIVE_LOSSES:
            return rto_s * total
        j += 1


def transfer_s(link: LinkState, direction: str, message_bytes: float) -> float:
    """What one message of ``message_bytes`` (ZMTP bytes) adds to its direction's one-way
    delay on average: its serialization through the bucket (``transmit_s``) and, on a lossy
    direction, its mean wait for resends at the RTO TCP settles on for the link.  The
    transfer term of every cycle-time model (prediction, fidelity checks)."""
    spec: DirectionSpec = getattr(link, direction)
    wait_s = 0.0
    if spec.loss_pct > 0:
        wait_s = expected_loss_wait_s(packet_count(int(round(message_bytes))), spec.loss_pct,
                                      retransmission_timeout_s(*tcp_estimates(link)))
    return transmit_s(spec, message_bytes) + wait_s


def retransmission_timeout_s(srtt_s: float, rttvar_s: float = 0.0,
                             rto_min_s: float = RTO_MIN_S) -> float:
    """Linux's RTO before any back-off: ``srtt + max(rto_min, 4 * rttvar)``."""
    return srtt_s + max(rto_min_s, 4.0 * rttvar_s)


_TABLE_SIZE = 4096          # entries in a netem distribution table
_PARETO_SHAPE = 3.0         # iproute2 netem/pareto.c
NETEM_DIST_SCALE = 8192     # netem reads a table entry of 8192 as one jitter
_INT16_MAX = 32767


def _standardised(values: np.ndarray) -> np.ndarray:
    return (values - values.mean()) / values.std()


def _inverse_cdf_tables() -> dict[str, np.ndarray]:
    """netem-style inverse-CDF tables, each with mean 0 and std 1 over its entries.

    Like iproute2's ``*.dist`` files, entry ``i`` is the quantile at
    ``(i + 0.5) / 4096``.  pareto is iproute2's shape-3 Pareto (scale 1),
    heavy right tail, left end at -0.61 sigma.  paretonormal blends the
    normal and Pareto quantiles at the same rank, 1/4 normal + 3/4 Pareto in
    iproute2's own table units (Pareto shifted by its mean 1.5 and scaled by
    4/3), as netem/paretonormal.c does.  Every table is standardised exactly,
    so sigma equals ``jitter_ms`` and the mean equals ``delay_ms``.
    """
    quantile_ranks = (np.arange(_TABLE_SIZE) + 0.5) / _TABLE_SIZE
    normal = np.array([NormalDist().inv_cdf(rank) for rank in quantile_ranks])
    pareto = (1.0 - quantile_ranks) ** (-1.0 / _PARETO_SHAPE)
    pareto_in_netem_units = (pareto - 1.5) * 4.0 / 3.0
    return {
        "normal": _standardised(normal),
        "pareto": _standardised(pareto),
        "paretonormal": _standardised(0.25 * normal + 0.75 * pareto_in_netem_units),
    }


@dataclass(frozen=True)
class JitterTable:
    """One jitter distribution exactly as both legs draw it: netem's int16 table.

    ``entries`` are the standardised quantiles times ``units_per_sigma``,
    rounded.  iproute2's files use 8192 units per sigma, so their pareto
    tables clip at 4 sigma (int16) and deliver only about 0.82 of the
    configured sigma; here ``units_per_sigma`` is 8192 or less, whatever
    keeps the longest tail inside int16, and the kernel's jitter is scaled
    by ``NETEM_DIST_SCALE / units_per_sigma`` to match (``shaping.qdisc``).
    The sim link draws ``entries / units_per_sigma``, so the two legs share
    one law: same median, same sigma, same tail, nothing clipped.
    """

    entries: tuple[int, ...]
    units_per_sigma: int

    @property
    def reach_sigmas(self) -> float:
        """How far from the mean the farthest entry lies, in sigmas."""
        return max(abs(entry) for entry in self.entries) / self.units_per_sigma

    @functools.cached_property
    def in_sigmas(self) -> np.ndarray:
        return np.array(self.entries) / self.units_per_sigma


def _quantised(table: np.ndarray) -> JitterTable:
    units = min(NETEM_DIST_SCALE, math.floor(_INT16_MAX / np.abs(table).max()))
    return JitterTable(tuple(int(entry) for entry in np.rint(table * units)), units)


JITTER_TABLES: dict[str, JitterTable] = {name: _quantised(table)
                                         for name, table in _inverse_cdf_tables().items()}


class JitterSource:
    """One-way delay per packet: ``delay_ms`` plus a jitter offset, as netem draws it.

    uniform: offset uniform on [-jitter, +jitter] (sigma = jitter / sqrt(3));
    normal, pareto, paretonormal: the entry at ``floor(u * 4096)`` of the
    distribution's ``JitterTable`` (sigma = jitter), the very table netem
    gets.  The result is clipped at 0 (netem sends a packet whose time has
    passed at once).

    Correlation works like netem's ``get_crandom``: the uniform behind each
    draw is ``(1 - rho) * fresh + rho * previous``.  As in netem, this also
    narrows the distribution (the uniform's variance shrinks by
    ``(1 - rho) / (1 + rho)``), so a correlated link jitters less than
    ``jitter_ms``.
    """

    def __init__(self, spec: DirectionSpec, rng: np.random.Generator) -> None:
        self._rng = rng
        self._previous_uniform = rng.random()   # netem seeds its state randomly too
        self.update(spec)

    def update(self, spec: DirectionSpec) -> None:
        """Take new parameters; the correlation state carries over."""
        self._spec = spec

    def sample_ms(self) -> float:
        spec = self._spec
        if spec.jitter_ms == 0.0:
            return spec.delay_ms
        offset = spec.jitter_ms * self._offset_in_jitter_units(self._correlated_uniform())
        return max(0.0, spec.delay_ms + offset)

    def _correlated_uniform(self) -> float:
        rho = self._spec.delay_correlation_pct / 100.0
        uniform = (1.0 - rho) * self._rng.random() + rho * self._previous_uniform
        self._previous_uniform = uniform
        return uniform

    def _offset_in_jitter_units(self, uniform: float) -> float:
        if self._spec.jitter_distribution == "uniform":
            return 2.0 * uniform - 1.0
        table = JITTER_TABLES[self._spec.jitter_distribution].in_sigmas
        return float(table[int(uniform * _TABLE_SIZE)])


class LossProcess:
    """Whether each packet transmission is lost: Bernoulli or Gilbert-Elliott.

    Gilbert-Elliott follows netem's ``gemodel``: a packet is lost with the
    current state's loss probability, then the chain moves (good -> bad with
    p, bad -> good with r).  The chain starts in the good state.
    """

    def __init__(self, spec: LossSpec, rng: np.random.Generator) -> None:
        self._rng = rng
        self._in_bad_state = False
        self.update(spec)

    def update(self, spec: LossSpec) -> None:
        """Take new parameters; the chain's state carries over."""
        self._spec = spec

    def lost(self) -> bool:
        spec = self._spec
        if isinstance(spec, RandomLoss):
            return spec.pct > 0.0 and self._happens(spec.pct)
        if self._in_bad_state:
            lost = self._happens(spec.loss_in_bad_pct)
            self._in_bad_state = not self._happens(spec.r_bad_to_good_pct)
        else:
            lost = self._happens(spec.loss_in_good_pct)
            self._in_bad_state = self._happens(spec.p_good_to_bad_pct)
        return lost

    def _happens(self, pct: float) -> bool:
        return self._rng.random() * 100.0 < pct


class TokenBucket:
    """A FIFO token bucket: when does each arrival finish leaving?

    Tokens (bytes) refill at the rate up to the burst.  An arrival starts no
    earlier than the previous one finished; it leaves at once if the bucket
    holds enough tokens, else when the missing tokens have refilled, so
    anything beyond the burst drains at the rate.  An infinite rate never
    holds anything back.
    """

    def __init__(self, rate_bytes_per_s: float, burst_bytes: int) -> None:
        self.rate_bytes_per_s = rate_bytes_per_s
        self.burst_bytes = burst_bytes
        self._tokens = float(burst_bytes)
        self._tokens_counted_at_s = -math.inf
        self._free_at_s = -math.inf

    def reconfigure(self, rate_bytes_per_s: float, burst_bytes: int) -> None:
        """New rate and burst; the queue and the tokens held (up to the new burst) stay."""
        self.rate_bytes_per_s = rate_bytes_per_s
        self.burst_bytes = burst_bytes
        self._tokens = min(self._tokens, float(burst_bytes))

    def departure_s(self, t_arrival_s: float, nbytes: int) -> float:
        start_s = max(t_arrival_s, self._free_at_s)
        if math.isinf(self.rate_bytes_per_s):
            self._free_at_s = start_s
            return start_s
        refilled = (start_s - self._tokens_counted_at_s) * self.rate_bytes_per_s
        tokens = min(float(self.burst_bytes), self._tokens + refilled)
        departure_s = start_s + max(0.0, nbytes - tokens) / self.rate_bytes_per_s
        self._tokens = max(0.0, tokens - nbytes)
        self._tokens_counted_at_s = departure_s
        self._free_at_s = departure_s
        return departure_s


@dataclass(frozen=True)
class Delivery:
    """When a message reaches the receiving application, and what it cost."""

    deliver_at_s: float
    packets: int
    lost_packets: int   # lost transmissions: a packet lost twice counts 2


def _packet_wire_sizes(payload_bytes: int) -> list[int]:
    full_packets = packet_count(payload_bytes) - 1
    last_payload = payload_bytes - full_packets * MSS_BYTES
    return [_MAX_FRAME_BYTES] * full_packets + [last_payload + HEADER_BYTES]


def _bucket_burst_bytes(spec: DirectionSpec) -> int:
    if spec.burst_bytes is not None:
        return spec.burst_bytes
    if math.isinf(spec.rate_bytes_per_s):
        return 0    # unused: an unshaped bucket holds nothing back
    return default_burst_bytes(spec.rate_bytes_per_s)


class DirectionLink:
    """One direction of the link, carrying a TCP stream message by message.

    Each message is split into packets that pass the token bucket in order,
    then each packet gets its own one-way delay.  A lost transmission is
    resent after RTO, 2*RTO, 4*RTO, ... (capped at ``RTO_MAX_S``) until one
    gets through or the packet has been lost ``MAX_CONSECUTIVE_LOSSES``
    times.  Resends do not pass the token bucket again.  A message is
    delivered when its last packet has arrived, and never before the
    message ahead of it: TCP hides packet reordering from the application,
    so ``allow_reordering`` does not change delivery times here.

    Jitter and loss draw from separate child streams of ``rng``, so a
    profile that only changes the loss sees the same delays.

    ``packets_sent`` counts transmissions (resends included) and
    ``packets_lost`` the lost ones, so their ratio estimates the loss rate.
    """

    def __init__(self, spec: DirectionSpec, rng: np.random.Generator,
                 srtt_s: float, rttvar_s: float = 0.0) -> None:
        jitter_rng, loss_rng = rng.spawn(2)
        self._jitter = JitterSource(spec, jitter_rng)
        self._loss = LossProcess(spec.loss, loss_rng)
        self._bucket = TokenBucket(spec.rate_bytes_per_s, _bucket_burst_bytes(spec))
        self._rto_s = retransmission_timeout_s(srtt_s, rttvar_s)
        self._last_delivery_s = -math.inf
        self.packets_sent = 0
        self.packets_lost = 0

    def update(self, spec: DirectionSpec, srtt_s: float, rttvar_s: float = 0.0) -> None:
        """A schedule change: new parameters, same queue, jitter correlation and loss chain."""
        self._jitter.update(spec)
        self._loss.update(spec.loss)
        self._bucket.reconfigure(spec.rate_bytes_per_s, _bucket_burst_bytes(spec))
        self._rto_s = retransmission_timeout_s(srtt_s, rttvar_s)

    def transit(self, t_send_s: float, payload_bytes: int) -> Delivery:
        """Deliver a write of ``payload_bytes`` handed to TCP at ``t_send_s``."""
        packet_sizes = _packet_wire_sizes(payload_bytes)
        delivered_at_s = self._last_delivery_s
        lost_transmissions = 0
        for size in packet_sizes:
            departure_s = self._bucket.departure_s(t_send_s, size)
            arrival_s, losses = self._send_packet(departure_s)
            delivered_at_s = max(delivered_at_s, arrival_s)
            lost_transmissions += losses
        self._last_delivery_s = delivered_at_s
        return Delivery(delivered_at_s, len(packet_sizes), lost_transmissions)

    def _send_packet(self, departure_s: float) -> tuple[float, int]:
        """Arrival time of one packet that first leaves at ``departure_s``, and its losses."""
        sent_at_s = departure_s
        losses = 0
        while losses < MAX_CONSECUTIVE_LOSSES and self._loss.lost():
            sent_at_s += min(self._rto_s * 2**losses, RTO_MAX_S)
            losses += 1
        self.packets_sent += losses + 1
        self.packets_lost += losses
        return sent_at_s + self._jitter.sample_ms() / 1000.0, losses

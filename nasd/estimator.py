"""What a K controller plans with, and how it is learned online from finished cycles.

``Calibration`` is one snapshot of the quantities the closed form needs:
acceptance by position in the block (``nasd.analytic.Acceptance``), the compute stages (draft time per token, the verify
time line), bytes per cycle as lines in K, seconds per byte on the link.  Its
``throughputs`` and ``best_k`` are ``nasd.analytic``'s closed forms evaluated
on it (nothing here recomputes them).

``StageEstimator`` refreshes a calibration from each observed cycle with
exponential forgetting (``memory`` per cycle, so it follows drift).  Acceptance
is learned per position from the decayed counts of cycles that reached and that
accepted each position, shrunk toward the pooled rate where a position has few
observations, by an empirical-Bayes weight: as much as the rates' spread
across positions calls for (``nasd.analytic.acceptance_by_position_from_counts``),
leaving out the blocks the draft ended with its EOS (an answer's formulaic end, cut
short and accepted far more often than the blocks K is chosen for).
It keeps the RTT estimate as an EWMA in time of each cycle's network time minus its
modeled transmission (not of a block sent ahead under draft-ahead, whose network time
holds its wait behind the blocks before it).  The edge measures a cycle's network time as
send-to-receive minus the cloud's compute, which holds the RTT and both
transfers together.
Seconds per byte is the slope of the change in network time against the
change in bytes from one cycle to the next: first differences, because K
(hence the bytes) follows the RTT, so a plain regression of network time on
bytes would read a drifting RTT as link speed; a robust one (``RobustSlope``,
Theil-Sen), because at a step of the RTT one difference holds the step; and
trusted only when the bytes varied enough for it to stand out of the jitter.  A stretch handed
to the cloud (K = 0) teaches the RTT and the cloud's decoding step (until one
has, that step is read off the verify line at the fewest positions verified, an
upper bound: a verification does work a plain step does not, which is why the NASD
controller hands the cloud a short stretch first); one the edge decoded alone
teaches nothing.

The draft's time is a line in K too (``DRAFT_MIN_T``): a cycle's drafting pays a part
that does not grow with K (the draft message built and sent, the catch-up after a block
kept whole), 1.5 ms a cycle beside 1.0 ms a token on the shipped pair on a CPU.  Until
the cycles' K varied enough to tell the two apart, it is the mean time per drafted
token.

Pure: no I/O, no clocks.
"""

from __future__ import annotations

import math
import warnings
from collections import deque
from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np

from nasd.analytic import (Acceptance, ComputeTimes, acceptance_by_position_from_counts,
                           acceptance_from_counts, decode_time_quantiles_s,
                           distributed_throughputs, optimal_k, pipelined_throughput,
                           position_counts, position_rates, stretch_throughput,
                           stretch_tokens)


class Cycle(Protocol):
    """What a policy learns from one finished cycle (``agents.records.CycleRecord`` has it)."""

    k: int              # tokens drafted
    accepted: int       # drafts the cloud accepted
    tokens: int         # tokens the cycle committed (accepted + correction or bonus)
    t_draft: float      # seconds drafting
    t_verify: float     # the cloud's compute seconds
    t_network: float    # send to receive minus the cloud's compute: RTT plus both transfers
    rtt_ms: float       # a cloud stretch: the link's round trip when it ended
    t_cycle: float
    bytes_up: int
    bytes_down: int
    served_by: str      # "speculation"; a stretch without drafts: "cloud" (K = 0) or "edge"
    ahead: bool         # draft-ahead: sent before the verdict on the block before it
    draft_eos: bool     # the draft ended the block with its EOS (the answer's end)


@dataclass(frozen=True)
class Line:
    """y = intercept + slope * x."""

    intercept: float
    slope: float = 0.0

    def __call__(self, x: float) -> float:
        return self.intercept + self.slope * x


def physical_draft_line(fitted: Line, per_token_s: float) -> Line:
    """The draft's time against k: ``fitted`` where it is a physical line (a positive slope,
    a non-negative intercept: a part paid per cycle and one per token), else a line through
    zero at ``per_token_s``, the mean per drafted token (the K drafted did not vary enough
    to tell the two parts apart)."""
    return fitted if fitted.slope > 0 and fitted.intercept >= 0 else Line(0.0, per_token_s)


@dataclass(frozen=True)
class Calibration:
    """The stage model a controller maximises over K: acceptance (one rate, or rates by
    position in the block), compute, bytes, link speed."""

    acceptance: Acceptance
    times: ComputeTimes
    bytes_up: Line = Line(0.0)       # bytes up per cycle against K
    bytes_down: Line = Line(0.0)     # bytes down per cycle against K
    seconds_per_byte: float = 0.0    # serialisation, both directions together

    def transmit_s(self, k: int) -> float:
        return self.seconds_per_byte * (self.bytes_up(k) + self.bytes_down(k))

    def throughputs(self, rtt_s: float, depths: Sequence[int], ahead: int = 0) -> np.ndarray:
        """Expected tokens/s of each K of ``depths`` on a link with this RTT, with draft-ahead
        of depth ``ahead`` (``nasd.analytic.pipelined_throughput``; 0: none)."""
        if not ahead:
            return distributed_throughputs(self.acceptance, self.times, rtt_s, depths,
                                           self.transmit_s)
        return np.array([pipelined_throughput(self.acceptance, k, ahead, self.times, rtt_s,
                                              self.transmit_s(k)) for k in depths])

    def tail_throughputs(self, rtt_s: float, rtt_variance_s2: float, depths: Sequence[int],
                         tokens: int, quantile: float) -> np.ndarray:
        """Each K's tokens/s at the ``quantile`` of the time to commit ``tokens`` tokens
        (``nasd.analytic.decode_time_quantiles_s``; no draft-ahead): larger is better, as
        for the mean."""
        return tokens / decode_time_quantiles_s(self.acceptance, self.times, rtt_s,
                                                rtt_variance_s2, depths, tokens, quantile,
                                                self.transmit_s)

    def best_k(self, rtt_s: float, k_min: int, k_max: int, ahead: int = 0) -> int:
        if not ahead:
            return optimal_k(self.acceptance, self.times, rtt_s, k_max, self.transmit_s, k_min)
        depths = range(k_min, k_max + 1)
        return depths[int(np.argmax(self.throughputs(rtt_s, depths, ahead)))]

    def cloud_stretch(self, rtt_s: float, rtt_share: float, max_s: float) -> Stretch:
        """A stretch handed to the cloud at this calibration's decoding step
        (``cloud_stretch``)."""
        return cloud_stretch(self.times.decode_time_s(), rtt_s, rtt_share, max_s)

    def edge_stretch(self, rtt_s: float, rtt_share: float, max_s: float) -> Stretch:
        """A stretch the draft decodes alone, long enough that the round trip of the
        speculation cycle after it (which measures the link again) is ``rtt_share`` of it,
        at most ``max_s`` of drafting; its rate pays that round trip, as a cloud stretch's
        pays its own."""
        draft_s = self.times.draft_token_s
        tokens = stretch_tokens(draft_s, rtt_s, rtt_share, max_s)
        return Stretch("edge", tokens, stretch_throughput(draft_s, tokens, rtt_s))


@dataclass(frozen=True)
class Stretch:
    """Tokens served without drafting: by the cloud decoding (``cloud``, K = 0: lossless) or
    by the draft alone (``edge``, the edge-only cutoff: lossy), at a predicted rate."""

    served_by: str
    tokens: int
    tokens_per_s: float


def cloud_stretch(step_s: float, rtt_s: float, rtt_share: float, max_s: float) -> Stretch:
    """A stretch handed to a cloud decoding ``step_s`` a token: its one round trip
    ``rtt_share`` of it, at most ``max_s`` of decoding (``nasd.analytic.stretch_tokens``)."""
    tokens = stretch_tokens(step_s, rtt_s, rtt_share, max_s)
    return Stretch("cloud", tokens, stretch_throughput(step_s, tokens, rtt_s))


class DecayedLine:
    """A weighted least-squares line through (x, y) points whose weights decay by ``memory``
    per added point; ``fit`` gives a non-negative slope, or none (0) while the x values are
    too alike, or the slope too small against its standard error (``min_t``) to be told, or
    (with ``min_t``) while the points weigh less than ``min_points`` (a t-test on three or
    four noisy points passes by chance too often to plan on)."""

    def __init__(self, memory: float, min_t: float = 0.0, min_points: float = 3.0) -> None:
        self.memory, self.min_t, self.min_points = memory, min_t, max(min_points, 3.0)
        self.sums = np.zeros(6)      # w, wx, wy, wxx, wxy, wyy
        self.squared_weights = 0.0   # sum of w^2: each decays by memory^2

    def add(self, x: float, y: float) -> None:
        self.sums = self.memory * self.sums + (1.0, x, y, x * x, x * y, y * y)
        self.squared_weights = self.memory ** 2 * self.squared_weights + 1.0

    def fit(self) -> Line:
        w, sx, sy, sxx, sxy, syy = self.sums
        if w <= 0:
            return Line(0.0)
        mean_x, mean_y = sx / w, sy / w
        var_x = sxx / w - mean_x ** 2
        if var_x <= 1e-12 * max(1.0, mean_x ** 2):
            return Line(mean_y)
        slope = (sxy / w - mean_x * mean_y) / var_x
        if slope <= 0:
            return Line(mean_y)
        if self.min_t > 0:
            residual = max(syy / w - mean_y ** 2 - slope ** 2 * var_x, 0.0)
            n_effective = w * w / self.squared_weights
            if n_effective < self.min_points:
                return Line(mean_y)
            standard_error = math.sqrt(residual / (var_x * (n_effective - 2)))
            if slope < self.min_t * standard_error:
                return Line(mean_y)
        return Line(mean_y - slope * mean_x, slope)


class RobustSlope:
    """The slope of y against x over the last ``window`` points with |x| >= ``min_x`` (a
    smaller step says nothing of it against the noise in y), Theil-Sen (the median of the
    pairwise slopes: a few points from a moment the RTT itself jumped cannot drag it), and
    trusted only once ``min_points`` are in and its 95 % interval excludes zero.

    For the link's seconds per byte (x: the change in bytes from one cycle to the next, y:
    the change in network time) steps under 64 bytes are noise: at 1 Mbit/s 64 bytes take
    0.5 ms, less than a link's jitter, while a header's varint or an id payload's K (4 bytes
    a draft) moves by a few bytes.  Taken in, such steps faked 0.6 ms per byte on the 5g
    profile (3 ms jitter) from 64 points, where network time was flat in K.  With few
    points the interval is rough too, and tested again at every new point it now and then
    excludes zero by chance: K recovers as more points come, but a decision that would lock
    itself in on a false slope takes ``lower``, the interval's lower end once
    ``decisive_points`` are in (else 0)."""

    def __init__(self, window: int = 64, min_points: int = 3, decisive_points: int = 8,
                 min_x: float = 64.0) -> None:
        self.points: deque[tuple[float, float]] = deque(maxlen=window)
        self.min_points, self.decisive_points, self.min_x = min_points, decisive_points, min_x
        self.fitted: tuple[float, float] | None = None   # (slope, lower) of the points as they are

    def add(self, x: float, y: float) -> None:
        if abs(x) >= self.min_x and x != 0:
            self.points.append((x, y))
            self.fitted = None

    def slope(self) -> float:
        return self._fitted()[0]

    def lower(self) -> float:
        return self._fitted()[1] if len(self.points) >= self.decisive_points else 0.0

    def _fitted(self) -> tuple[float, float]:
        if self.fitted is None:
            self.fitted = self._fit()
        return self.fitted

    def _fit(self) -> tuple[float, float]:
        if len(self.points) < self.min_points:
            return 0.0, 0.0
        x, y = np.array(self.points).T
        if np.ptp(x) == 0:
            return 0.0, 0.0
        from scipy.stats import theilslopes
        with warnings.catch_warnings():   # exact points (no jitter) make its interval degenerate
            warnings.simplefilter("ignore", RuntimeWarning)
            slope, _, low, _ = theilslopes(y, x, alpha=0.95)
        return (float(slope), float(low)) if low > 0 else (0.0, 0.0)


DRAFT_MIN_T = 3.0   # the draft line's slope is trusted once it stands 3 standard errors out


class StageEstimator:
    """A ``Calibration`` and an RTT estimate, refreshed from each observed cycle."""

    def __init__(self, memory: float = 0.98, prior_acceptance: float = 0.5,
                 prior_weight: float = 2.0, rtt_time_constant_s: float = 0.2,
                 position_prior_weight: float | None = None, rtt_window_s: float = 1.0,
                 rtt_window_min: int = 8) -> None:
        """``prior_acceptance`` is worth ``prior_weight`` tested drafts in the pooled rate;
        each position's rate is shrunk toward the pooled one by ``position_prior_weight``
        cycles' worth of evidence (None: by as much as the positions' spread calls for,
        ``acceptance_by_position_from_counts``).  The RTT estimate forgets with time, not
        with cycles: a sample moves it by 1 - exp(-t_cycle / ``rtt_time_constant_s``), so a
        long stretch's fresh sample counts for what it covers.  Beside it, the samples of the
        last ``rtt_window_s`` of cycles (at least the last ``rtt_window_min``) are kept for
        a percentile estimate and the RTT's spread."""
        if not 0 < memory <= 1:
            raise ValueError(f"memory must be in (0, 1], got {memory}")
        # scipy.stats takes up to a second to import: here, when a run's controller is made
        # (its warm-up), not inside the first measured cycle that fits a slope; and not when
        # the module is (every CLI start imports it)
        import scipy.special  # noqa: F401
        import scipy.stats  # noqa: F401
        if not rtt_time_constant_s > 0:
            raise ValueError(f"rtt_time_constant_s must be positive, got {rtt_time_constant_s}")
        self.memory, self.rtt_time_constant_s = memory, rtt_time_constant_s
        self.prior_accepted = prior_acceptance * prior_weight
        self.prior_rejections = (1.0 - prior_acceptance) * prior_weight
        self.position_prior_weight = position_prior_weight
        # decayed counts by position: cycles that tested position i, and that accepted it
        self.reached, self.kept = np.zeros(0), np.zeros(0)
        self.drafted = self.draft_s = 0.0
        self.draft = DecayedLine(memory, min_t=DRAFT_MIN_T)   # t_draft against k
        self.verify = DecayedLine(memory)            # t_verify against positions (k + 1)
        self.bytes_up, self.bytes_down = DecayedLine(memory), DecayedLine(memory)
        # change of t_network against change of bytes up + down, cycle to cycle
        self.network = RobustSlope()
        self.last: tuple[int, float] | None = None   # the previous cycle's bytes and t_network
        self.rtt_s: float | None = None
        self.rtt_window_s, self.rtt_window_min = rtt_window_s, rtt_window_min
        self.rtt_window: deque[tuple[float, float]] = deque(maxlen=512)  # (clock, sample)
        self.clock_s = 0.0      # the cycles' time so far
        self.decode_s: float | None = None       # the cloud's step, from stretches handed to it
        self.decode_tokens: float = 0.0           # the tokens that step was measured over
        self.fewest_positions: int | None = None  # the smallest k + 1 verified so far

    def seed(self, calibration: Calibration, cycles: float, k: int) -> None:
        """Start from ``calibration`` as if ``cycles`` cycles of K = ``k`` had shown it: the
        counts its acceptance makes likely at each position, its draft line at 1 and k drafts,
        its verify line at 1 and k + 1 positions, its bytes lines at 1 and k, its decoding
        step.  The seed fades by ``memory`` per observed cycle like any evidence, so the
        cycles' own take over (a calibration from another host or prompt set is not kept),
        while the first cycles no longer replan on a handful of coin flips and the prior's
        0.5."""
        if cycles <= 0 or k < 1:
            raise ValueError(f"a seed needs cycles > 0 and k >= 1, got {cycles} and {k}")
        rates, times = position_rates(calibration.acceptance, k), calibration.times
        reached = cycles * np.concatenate(([1.0], np.cumprod(rates[:-1])))
        size = max(len(self.reached), k)
        self.reached = _padded(self.reached, size) + _padded(reached, size)
        self.kept = _padded(self.kept, size) + _padded(reached * rates, size)
        self.drafted += cycles * k
        self.draft_s += cycles * times.draft_time_s(k)
        for i in range(max(round(cycles), 2)):
            depth = (0, k)[i % 2]     # the lines' two ends: a plain step and a full block
            self.verify.add(depth + 1, times.verify_time_s(depth))
            drafted = max(depth, 1)
            self.draft.add(drafted, times.draft_time_s(drafted))
            self.bytes_up.add(drafted, calibration.bytes_up(drafted))
            self.bytes_down.add(drafted, calibration.bytes_down(drafted))
        self.fewest_positions = 1
        self.decode_s, self.decode_tokens = times.decode_time_s(), math.inf   # measured apart

    def observe(self, cycle: Cycle, seconds_per_byte: float | None = None) -> None:
        """Learn from ``cycle``; its RTT is its network time less its bytes at
        ``seconds_per_byte`` (None: at the learned rate)."""
        if cycle.served_by != "speculation":
            self.last = None   # link speed: first differences of consecutive cycles only
        if cycle.served_by == "edge":      # no network, nothing verified: nothing to learn
            return
        if cycle.served_by == "cloud":     # one round trip, then the cloud's decoding steps
            if cycle.tokens:
                self.decode_s, self.decode_tokens = cycle.t_verify / cycle.tokens, cycle.tokens
            self.observe_round_trip(cycle.rtt_ms / 1000.0, cycle.t_cycle)
            return
        m = self.memory
        if not cycle.draft_eos:   # the answer's formulaic end: accepted whole, cut short
            reached, kept = position_counts([cycle.k], [cycle.accepted])
            size = max(len(self.reached), len(reached))
            self.reached = m * _padded(self.reached, size) + _padded(reached, size)
            self.kept = m * _padded(self.kept, size) + _padded(kept, size)
        self.drafted = m * self.drafted + cycle.k
        self.draft_s = m * self.draft_s + cycle.t_draft
        if cycle.k:
            self.draft.add(cycle.k, cycle.t_draft)
        self.verify.add(cycle.k + 1, cycle.t_verify)
        self.fewest_positions = min(self.fewest_positions or cycle.k + 1, cycle.k + 1)
        self.bytes_up.add(cycle.k, cycle.bytes_up)
        self.bytes_down.add(cycle.k, cycle.bytes_down)
        if cycle.ahead:   # its network time holds its wait behind the blocks before it
            self.last = None
            return
        carried = cycle.bytes_up + cycle.bytes_down
        if self.last is not None:
            self.network.add(carried - self.last[0], cycle.t_network - self.last[1])
        self.last = (carried, cycle.t_network)
        rate = self.network.slope() if seconds_per_byte is None else seconds_per_byte
        self.observe_round_trip(cycle.t_network - rate * carried, cycle.t_cycle)

    def observe_round_trip(self, sample_s: float, elapsed_s: float) -> None:
        """A round trip of ``sample_s`` (its bytes' time taken out) seen over ``elapsed_s``
        of wall time: into the EWMA, weighed by that time, and the recent window."""
        sample, elapsed_s = max(sample_s, 0.0), max(elapsed_s, 0.0)
        weight = 1.0 - math.exp(-elapsed_s / self.rtt_time_constant_s)
        self.rtt_s = sample if self.rtt_s is None else (
            (1.0 - weight) * self.rtt_s + weight * sample)
        self.clock_s += elapsed_s
        self.rtt_window.append((self.clock_s, sample))
        while len(self.rtt_window) > self.rtt_window_min \
                and self.rtt_window[0][0] < self.clock_s - self.rtt_window_s:
            self.rtt_window.popleft()

    def restart_rtt(self, sample_s: float) -> None:
        """The link changed (a stretch's pings said so): the RTT estimate and its window start
        again from ``sample_s``."""
        self.rtt_s = max(sample_s, 0.0)
        self.rtt_window.clear()
        self.rtt_window.append((self.clock_s, self.rtt_s))

    def rtt_percentile_s(self, percentile: float) -> float | None:
        """The ``percentile`` (0-100) of the recent RTT samples; None before the first."""
        if not self.rtt_window:
            return None
        return float(np.percentile([sample for _, sample in self.rtt_window], percentile))

    def rtt_variance_s2(self) -> float:
        """The spread of the recent RTT samples (0 with fewer than two)."""
        samples = [sample for _, sample in self.rtt_window]
        return float(np.var(samples, ddof=1)) if len(samples) > 1 else 0.0

    def pooled_acceptance(self) -> float:
        """The per-token rate over every position, the prior included."""
        return acceptance_from_counts(*self._pooled_counts())

    def _pooled_counts(self) -> tuple[float, float]:
        """Drafts accepted and rejected over every position, the prior's pseudo-counts in."""
        return (self.prior_accepted + self.kept.sum(),
                self.prior_rejections + (self.reached - self.kept).sum())

    def acceptance(self) -> Acceptance:
        """Rates by position, each shrunk toward the pooled rate; the pooled rate alone
        before any position was tested."""
        pooled = self.pooled_acceptance()
        by_position = acceptance_by_position_from_counts(self.reached, self.kept, pooled,
                                                         self.position_prior_weight)
        return by_position or pooled

    def acceptance_upper(self, confidence: float = 0.95) -> float:
        """The pooled rate the (decayed) counts cannot rule out at ``confidence``: the upper
        quantile of its Beta posterior (the prior's pseudo-counts included)."""
        from scipy.special import betaincinv
        return float(betaincinv(*self._pooled_counts(), confidence))

    def calibration(self) -> Calibration | None:
        """What the cycles so far say; None before the first cycle that drafted."""
        if self.drafted <= 0:
            return None
        verify = self.verify.fit()
        # until a stretch measured it, the cloud's plain step is the verify line where it was
        # measured (the fewest positions verified), not extrapolated below: an intercept fitted
        # on noisy large-K cycles could make a hand-off look faster than it is
        decode_s = self.decode_s if self.decode_s is not None \
            else max(verify(self.fewest_positions), 1e-9)
        draft = physical_draft_line(self.draft.fit(), self.draft_s / self.drafted)
        times = ComputeTimes(draft_token_s=draft.slope, draft_base_s=draft.intercept,
                             # a floor keeps the model defined if the cloud reported no time
                             verify_base_s=max(verify.intercept, 1e-9),
                             verify_per_token_s=verify.slope, decode_s=decode_s)
        return Calibration(acceptance=self.acceptance(), times=times, bytes_up=self.bytes_up.fit(),
                           bytes_down=self.bytes_down.fit(),
                           seconds_per_byte=self.network.slope())


def _padded(counts: np.ndarray, size: int) -> np.ndarray:
    """``counts`` with zeros appended up to ``size`` (not ``np.pad``: ten times slower on a
    few counts, and the controller pads at every cycle)."""
    missing = size - len(counts)
    return counts if missing <= 0 else np.concatenate((counts, np.zeros(missing)))

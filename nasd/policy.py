"""K policies: how many tokens the edge drafts in its next speculation cycle.

One interface, in the spirit of HF transformers' candidate generators (a
generator of candidates with an update hook): each cycle the edge asks
``next_k()``, drafts that many (fewer when the token budget is nearly spent),
has them verified, and hands the finished cycle to ``observe(cycle)``.  A
policy lives as long as its strategy run on the edge (every query of the run,
its warm-up first), so what it learned carries from one query to the next.

- ``FixedK`` (``fixed-k``): the same K every cycle.
- ``HFHeuristic`` (``hf-heuristic``): HF assisted generation's "heuristic"
  schedule: K + 2 after a cycle that accepted all its drafts, K - 1 otherwise,
  kept within [k_min, k_max].
- ``NasdController`` (``nasd``): per cycle K* = argmax over K in [k_min, k_max]
  of E[tau(K)] / (K t_draft + t_verify(K) + transmit(bytes(K)) + RTT_est)
  (``nasd.analytic`` through ``nasd.estimator.Calibration``), its inputs
  learned online from the cycles (``StageEstimator``: acceptance by position
  in the block, stage times, bytes, RTT), or fixed by a
  calibration; the RTT it decides on moves only when the estimate leaves a
  band around it, and K moves only for a clear gain, so K does not flap.
  Given an RTT -> K table (``nasd.table``, built offline by ``orchestrator
  calibrate``), it looks K up for the RTT it decides on instead.
  Past the reversal, when even the best K loses to handing a stretch to the
  cloud, it answers K = 0 (``HAND_OFF``) with the ``stretch`` to serve: the
  cloud decodes it (lossless), or, with the edge-only cutoff, the draft
  decodes it alone when that is faster (lossy, flagged), a speculation cycle
  after each such stretch measuring the link again.  To weigh a stretch it
  must know the cloud's plain decoding step, which a verification's compute
  does not tell (that holds the payload's decoding and the rejection
  sampling): a controller that learns and has no calibration hands the cloud
  one short stretch first (``PROBE_TOKENS``, riding on the open of its first
  query, the warm-up where the run has one), and again at the next query's
  open when that one measured too few tokens to go by.
- ``Bandit`` (``bandit``): discounted UCB over K on measured seconds per
  committed token.

Pure: no I/O, no clocks.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import ClassVar, Literal, get_args

import numpy as np

from nasd.estimator import Calibration, Cycle, StageEstimator, Stretch, cloud_stretch
from nasd.table import RttTable

PolicyName = Literal["fixed-k", "nasd", "hf-heuristic", "bandit"]
POLICY_NAMES: tuple[str, ...] = get_args(PolicyName)
DEFAULT_K_MIN, DEFAULT_K_MAX = 1, 15
HF_START_K = 20   # HF's default num_assistant_tokens, where its schedule starts
HAND_OFF = 0      # next_k() == HAND_OFF: draft nothing, serve the policy's ``stretch``
PROBE_TOKENS = 8  # nasd: the stretch that measures the cloud's plain decoding step
PROBED_TOKENS = 4  # nasd: fewer measured, it is measured again (a 5-token warm-up streams 4)
PROBES = 3        # nasd: at most this many such stretches
REMEASURE_SHARE = 0.05   # nasd: the most a speculation cycle between cloud stretches may cost
EWMA, MEAN = "ewma", "mean"   # the default RTT estimate and objective; "pNN" names a percentile


def percentile_of(choice: str, default: str) -> float | None:
    """None for ``default``; NN for ``pNN`` (a percentile strictly between 0 and 100, e.g.
    ``p90`` or ``p99.9``); anything else is a ValueError naming both forms."""
    if choice == default:
        return None
    try:
        percentile = float(choice[1:]) if choice.startswith("p") else math.nan
    except ValueError:
        percentile = math.nan
    if not 0.0 < percentile < 100.0:
        raise ValueError(f"expected {default!r} or a percentile such as 'p90' "
                         f"(0 < p < 100), got {choice!r}")
    return percentile


class KPolicy:
    """Chooses each cycle's K and learns from the finished cycle."""

    name: ClassVar[str]
    # the RTT (ms) the last K was chosen on; None for policies that do not estimate one
    rtt_estimate_ms: float | None = None
    # what to serve when next_k() answered HAND_OFF
    stretch: Stretch | None = None

    def next_k(self) -> int:
        """The next cycle's K: at least 1, or ``HAND_OFF`` with ``stretch`` set."""
        raise NotImplementedError

    def observe(self, cycle: Cycle) -> None:
        """The update hook: called with every cycle this policy's K started."""

    def continue_stretch(self, rtt_s: float) -> bool:
        """A stretch the cloud decodes is under way, and the link's round trip measured now
        is ``rtt_s``: whether it should go on (False: the edge stops it)."""
        return True

    def observe_round_trip(self, rtt_s: float, elapsed_s: float) -> bool:
        """A round trip the edge measured outside any cycle (a query's ``open``: ``rtt_s`` of
        network time in ``elapsed_s`` of wall time): whether it may change the decision taken
        before it (the edge then asks ``next_k`` again)."""
        return False


class FixedK(KPolicy):
    name = "fixed-k"

    def __init__(self, k: int) -> None:
        if k < 1:
            raise ValueError(f"fixed-k needs K >= 1, got {k}")
        self.k = k

    def next_k(self) -> int:
        return self.k


class AdaptiveK(KPolicy):
    """A policy choosing K within [k_min, k_max]."""

    def __init__(self, k_min: int = DEFAULT_K_MIN, k_max: int = DEFAULT_K_MAX) -> None:
        if not 1 <= k_min <= k_max:
            raise ValueError(f"need 1 <= k_min <= k_max, got k_min={k_min}, k_max={k_max}")
        self.k_min, self.k_max = k_min, k_max

    def clamp(self, k: int) -> int:
        return min(max(k, self.k_min), self.k_max)


class HFHeuristic(AdaptiveK):
    """K + 2 when every draft of the cycle was accepted, else K - 1, within [k_min, k_max]
    (HF's schedule compares the matches with the K it asked for, so a cycle the token
    budget cut short counts as not fully accepted)."""

    name = "hf-heuristic"

    def __init__(self, k_min: int = DEFAULT_K_MIN, k_max: int = DEFAULT_K_MAX,
                 k_start: int = HF_START_K) -> None:
        super().__init__(k_min, k_max)
        self.k = self.clamp(k_start)

    def next_k(self) -> int:
        return self.k

    def observe(self, cycle: Cycle) -> None:
        self.k = self.clamp(self.k + 2 if cycle.accepted >= self.k else self.k - 1)


class NasdController(AdaptiveK):
    """K* = argmax of the closed-form throughput on the current calibration and RTT estimate.

    ``calibration``: the stage model to start from (and to keep, with ``learn=False``,
    learning only the RTT); with ``learn=True`` it seeds the estimates as
    ``calibration_cycles`` cycles' worth of evidence (``StageEstimator.seed``), which the
    observed cycles then outweigh as it fades.  Until there is a calibration and an RTT
    estimate, K is ``k_start``.  The RTT decided on follows the EWMA estimate only when
    it leaves a band of ``rtt_band`` (relative) or ``rtt_floor_ms`` around it; the K in
    use is kept while its predicted throughput is within ``switch_margin`` of the best.
    With ``hand_off``, a stretch handed to the cloud (``Calibration.cloud_stretch``: its
    round trip ``rtt_share`` of it, but at most ``stretch_max_s`` long) replaces speculation
    when it is predicted faster by ``switch_margin`` than the best K even at the
    acceptance's upper bound, which happens only past the reversal RTT.  It is served for
    ``cloud_stretch_max_s`` of decoding: while the cloud streams it the edge measures the
    link, and the stretch ends early once speculation at that RTT beats the cloud's decoding
    by ``switch_margin`` (``continue_stretch``), so only a link that stays slow meets the cap,
    and each stretch costs a round trip (capped at 4 s, a 700-token answer at 55 ms paid 6-7
    of them: 1.5 % of its time, 10 % at 500 ms); with ``edge_only_cutoff`` the draft decodes
    a stretch alone instead, where it is faster still, for at most ``stretch_max_s`` (it
    measures nothing of the link).  Until a stretch or the calibration told
    it the cloud's plain decoding step, its first decision is a stretch of ``PROBE_TOKENS``
    handed to the cloud to measure it (a verify's time is no stand-in: on the shipped pair on
    a CPU, a verify at 2 positions took 4.9 ms where a plain step took 2.0 ms, so no stretch
    was ever handed off at 0 ms while cloud-only decoded 1.7 times faster), again at the next
    query's open while it measured fewer than ``PROBED_TOKENS`` (a step measured over a few
    tokens at twice its worth would never be handed a stretch that could correct it; the
    job's default 5-token warm-up streams 4, on models warmed as they loaded).  Until a
    cycle drafted there is no plan, and it speculates to learn one unless the cloud's step
    beats the fastest speculation could be (``_unplanned_stretch``).  Every ``probe_every``
    cloud stretches, once they decoded long enough that its round trips (the cycle's, and
    the next stretch's) cost at most ``REMEASURE_SHARE`` of their time, and after each of the
    draft's (unless the next query's open measured the link first: ``observe_round_trip``),
    one cycle speculates to measure acceptance and the link (the link's RTT the
    stretches' pings measure too; counted in stretches alone, short answers each served in
    a stretch paid two round trips every 8 queries: on the shipped pair at 200 ms, nasd
    decoded at 0.58 of cloud-only's rate with 0.95 of its tokens handed off); and no
    stretch comes before ``evidence_cycles`` speculation cycles were seen (each decision is
    a test on few cycles, and over many cycles one of them errs: a lossy cutoff on such an
    error had served the draft's tokens 9 ms below the reversal RTT), unless it beats
    speculation at any acceptance (a = 1: the evidence could not change the decision).  With
    the edge-only cutoff (and acceptance learned) the evidence is ``lossy_evidence_cycles``
    speculation cycles instead: the test is made again at every cycle, and after 12 cycles
    one prompt whose drafts were accepted 5 times in 14 tests (a = 0.7) sent the draft's
    lossy tokens at 25 ms, 8 ms below the reversal.  A stretch that beats speculation at any
    acceptance waits for none of it there either (when every stretch waited, the shipped
    pair at 300 ms spent the first 4 of 8 answers on 30 cycles of 310 ms: 17 tok/s against
    cloud-only's 480).

    ``rtt_estimate``: the RTT decided on is the EWMA (``ewma``) or a percentile of the
    recent samples (``p90``: robust to a few late cycles, slower to follow a change).
    ``objective``: K maximises the expected tokens/s (``mean``), or minimises a percentile
    of the time to commit ``objective_tokens`` tokens (``p95``: the tail of a query's decode
    time, ``nasd.analytic.decode_time_quantiles_s``, with the recent RTT samples' spread);
    hand-offs are weighed on the mean either way.

    ``table``: K is the table's speculative K (``spec_k``) at the RTT decided on, not the
    argmax on the calibration; stretches are weighed on the calibration as without one.

    ``draft_ahead``: the edge pipelines blocks that deep (``agents.edge``), so K is the argmax
    of the pipelined throughput (``nasd.analytic.pipelined_throughput``), and so is the
    speculation a stretch must beat; K is chosen as each block is drafted, up to
    ``draft_ahead`` blocks before the verdicts in flight are seen.  Not with a table (built
    for speculation without draft-ahead).
    """

    name = "nasd"

    def __init__(self, k_min: int = DEFAULT_K_MIN, k_max: int = DEFAULT_K_MAX,
                 calibration: Calibration | None = None, learn: bool = True,
                 k_start: int = 5, rtt_time_constant_s: float = 0.2, rtt_band: float = 0.1,
                 rtt_floor_ms: float = 1.0, switch_margin: float = 0.01,
                 memory: float = 0.98, hand_off: bool = True, edge_only_cutoff: bool = False,
                 rtt_share: float = 0.1, stretch_max_s: float = 4.0,
                 cloud_stretch_max_s: float = 30.0, probe_every: int = 8,
                 evidence_cycles: int = 10, rtt_estimate: str = EWMA, objective: str = MEAN,
                 objective_tokens: int = 64, table: RttTable | None = None,
                 draft_ahead: int = 0, calibration_cycles: float = 20.0,
                 lossy_evidence_cycles: int = 30) -> None:
        super().__init__(k_min, k_max)
        if draft_ahead and table is not None:
            raise ValueError("an RTT -> K table plans without draft-ahead")
        self.draft_ahead = draft_ahead
        self.rtt_percentile = percentile_of(rtt_estimate, EWMA)
        tail = percentile_of(objective, MEAN)
        self.tail_quantile = None if tail is None else tail / 100.0
        if self.tail_quantile is not None and table is not None:
            raise ValueError("an RTT -> K table holds the mean objective's K: it cannot serve "
                             f"the {objective} objective")
        if self.tail_quantile is not None and draft_ahead:
            raise ValueError(f"the {objective} objective is modelled without draft-ahead")
        if objective_tokens < 1:
            raise ValueError(f"objective_tokens must be at least 1, got {objective_tokens}")
        self.objective_tokens = objective_tokens
        if edge_only_cutoff and not hand_off:
            raise ValueError("the edge-only cutoff serves stretches: it needs hand_off")
        self.hand_off, self.edge_only_cutoff = hand_off, edge_only_cutoff
        # lossy stretches rest on more evidence of the acceptance it learns
        if edge_only_cutoff and learn:
            evidence_cycles = max(evidence_cycles, lossy_evidence_cycles)
        self.rtt_share, self.stretch_max_s = rtt_share, stretch_max_s
        self.cloud_stretch_max_s = max(cloud_stretch_max_s, stretch_max_s)
        # stretches served since the last speculation cycle, and their seconds: after
        # ``probe_every`` of them that were long enough (or one of the edge's) one cycle
        # speculates, to keep measuring acceptance and link
        self.probe_every, self.stretches_in_a_row, self.stretched_s = probe_every, 0, 0.0
        # speculation cycles seen: none is replaced by a stretch before ``evidence_cycles``
        self.evidence_cycles, self.speculated = evidence_cycles, 0
        if not learn and calibration is None:
            raise ValueError("a controller that does not learn needs a calibration")
        if table is not None:
            table.check_range(k_min, k_max)
        self.calibration, self.learn, self.table = calibration, learn, table
        self.estimator = StageEstimator(memory=memory, rtt_time_constant_s=rtt_time_constant_s)
        if learn and calibration is not None:
            self.estimator.seed(calibration, calibration_cycles, k_max)
        self.rtt_band, self.rtt_floor_s = rtt_band, rtt_floor_ms / 1000.0
        self.switch_margin = switch_margin
        self.decision_rtt_s: float | None = None
        self.probes_left = PROBES if hand_off and learn else 0
        self.link_changed = False    # the stretch under way is stopped: the link changed
        self.link_unmeasured = False  # the last thing served was the draft's stretch
        self.probing = False         # the stretch under way measures the cloud's step
        self.k = self.clamp(k_start)

    def plan(self) -> Calibration | None:
        """The calibration K is chosen on: the learned one once there is one."""
        learned = self.estimator.calibration() if self.learn else None
        return learned or self.calibration

    def _decision_rtt_s(self) -> float | None:
        estimate = self.estimator.rtt_s if self.rtt_percentile is None \
            else self.estimator.rtt_percentile_s(self.rtt_percentile)
        if estimate is None:
            return None
        decided = self.decision_rtt_s
        if decided is None or abs(estimate - decided) > max(self.rtt_band * decided,
                                                            self.rtt_floor_s):
            self.decision_rtt_s = estimate
        return self.decision_rtt_s

    def next_k(self) -> int:
        self.probing = bool(self.probes_left) and self.estimator.decode_tokens < PROBED_TOKENS
        if self.probing:
            self.probes_left -= 1
            self.stretch = Stretch("cloud", PROBE_TOKENS, math.nan)
            return HAND_OFF
        rtt_s, plan = self._decision_rtt_s(), self.plan()
        self.rtt_estimate_ms = None if rtt_s is None else 1000.0 * rtt_s
        if rtt_s is not None and self.table is not None:
            self.k = self.table.row_at(self.rtt_estimate_ms).spec_k
        if rtt_s is not None and plan is None:
            self.stretch = self._unplanned_stretch(rtt_s)
            if self.stretch is not None:
                self.stretches_in_a_row += 1
                return HAND_OFF
        if rtt_s is None or plan is None:
            return self.k
        # the estimate's best mean tokens/s, where the scores hold it: the best case is never
        # below it, so a cloud stretch that does not beat it needs no best case computed
        plain_best = None
        if self.table is None:
            scores = self._scores(plan, rtt_s)
            if scores[self.k - self.k_min] < (1.0 - self.switch_margin) * scores.max():
                self.k = self.k_min + int(np.argmax(scores))
            plain_best = scores.max() if self.tail_quantile is None else None
        self.stretch = None
        evidenced = self.speculated >= self.evidence_cycles
        # before the evidence is in, a stretch (the cloud's or, with the cutoff, the draft's)
        # must beat speculation at any acceptance: then no evidence could change the decision
        if self.hand_off and not self._remeasure_due(rtt_s):
            cloud = plan.cloud_stretch(rtt_s, self.rtt_share, self.stretch_max_s)
            beats = cloud.tokens_per_s / (1.0 + self.switch_margin)
            if (plain_best is None or beats > plain_best) \
                    and beats > self._best_case(plan, rtt_s, None if evidenced else 1.0):
                edge = plan.edge_stretch(rtt_s, self.rtt_share, self.stretch_max_s) \
                    if self.edge_only_cutoff else None
                if edge and edge.tokens_per_s > cloud.tokens_per_s:
                    # it measures nothing of the link: speculate right after it, unless a
                    # query's open measures it first (``observe_round_trip``)
                    self.stretch = edge
                    self.link_unmeasured = True
                else:
                    self.stretch = self._longest(cloud, plan.times.decode_time_s())
                    self.stretches_in_a_row += 1
                return HAND_OFF
        self.stretches_in_a_row, self.stretched_s = 0, 0.0
        return self.k

    def _unplanned_stretch(self, rtt_s: float) -> Stretch | None:
        """Before any cycle drafted (no plan to weigh speculation on), a cloud stretch where
        the cloud's measured step beats the fastest speculation could possibly be: every one
        of ``k_max`` drafts kept, drafting free, a verification as fast as one plain step (it
        does that step's work and more).  A bound, so no evidence is waited for (not with the
        cutoff: it speculates once first, to learn the draft's step its own stretches are
        weighed on); without it the first query after the probe
        speculated one cycle to learn a plan and paid a second round trip for its stretch
        (0.4 s of the shipped pair's first query at 200 ms, against cloud-only's 0.03 s)."""
        step_s = self.estimator.decode_s
        if not self.hand_off or self.edge_only_cutoff or step_s is None:
            return None
        cloud = cloud_stretch(step_s, rtt_s, self.rtt_share, self.stretch_max_s)
        if cloud.tokens_per_s <= (1.0 + self.switch_margin) * (self.k_max + 1) / (rtt_s + step_s):
            return None
        return self._longest(cloud, step_s)

    def _longest(self, cloud: Stretch, step_s: float) -> Stretch:
        """``cloud`` served for ``cloud_stretch_max_s`` of ``step_s`` steps: its pings stop it
        sooner once the link favours speculation (the RTT share sizes only the decision)."""
        return replace(cloud, tokens=max(cloud.tokens, int(self.cloud_stretch_max_s / step_s)))

    def _remeasure_due(self, rtt_s: float) -> bool:
        """Whether the next cycle speculates to measure acceptance and the link again."""
        return self.link_unmeasured or (self.stretches_in_a_row >= self.probe_every
                                        and REMEASURE_SHARE * self.stretched_s >= 2.0 * rtt_s)

    def _scores(self, plan: Calibration, rtt_s: float) -> np.ndarray:
        """Each K's tokens/s in [k_min, k_max] under the objective: at the mean, or at the
        tail percentile of a query's decode time."""
        depths = range(self.k_min, self.k_max + 1)
        if self.tail_quantile is None:
            return plan.throughputs(rtt_s, depths, self.draft_ahead)
        return plan.tail_throughputs(rtt_s, self.estimator.rtt_variance_s2(), depths,
                                     self.objective_tokens, self.tail_quantile)

    def _best_case(self, plan: Calibration, rtt_s: float, upper: float | None = None) -> float:
        """The fastest speculation the evidence allows: the best K with every position's
        acceptance at least the pooled rate the cycles so far cannot rule out (95 %; or
        ``upper``, 1.0 before the evidence is in), and the link's seconds per byte at the
        lower end of its interval, so that a few unlucky first cycles, or a slope the
        jitter faked, do not hand every later cycle to the cloud, where nothing more is
        learned of either."""
        if upper is None and self.learn:
            upper = self.estimator.acceptance_upper()
        if upper is not None:
            rates = np.maximum(np.atleast_1d(plan.acceptance), upper)
            plan = replace(plan, acceptance=float(rates[0]) if rates.size == 1
                           else rates.tolist())
        if self.learn:
            plan = replace(plan, seconds_per_byte=min(plan.seconds_per_byte,
                                                      self.estimator.network.lower()))
        return float(plan.throughputs(rtt_s, range(self.k_min, self.k_max + 1),
                                      self.draft_ahead).max())

    def continue_stretch(self, rtt_s: float) -> bool:
        """On while the cloud's decoding step, already streaming (no round trip to pay),
        is not beaten by ``switch_margin`` by the best speculation at ``rtt_s``."""
        plan = self.plan()
        if self.stretch is None or self.stretch.served_by != "cloud" or self.probing:
            return True
        if plan is None:    # an unplanned stretch: on while no speculation could win
            self.link_changed = self._unplanned_stretch(rtt_s) is None
            return not self.link_changed
        speculation = float(plan.throughputs(rtt_s, range(self.k_min, self.k_max + 1),
                                             self.draft_ahead).max())
        self.link_changed = speculation > (1.0 + self.switch_margin) / plan.times.decode_time_s()
        return not self.link_changed

    def observe_round_trip(self, rtt_s: float, elapsed_s: float) -> bool:
        """After a draft's stretch (which measured nothing of the link), a query's open is the
        link's measurement its next decision waits for: no speculation cycle is then spent
        on it (one per answer at 200-300 ms, where the cutoff serves short answers whole).
        The open's network time holds the prompt's upload, a few hundred bytes: small beside
        the round trips where the draft's stretch pays.  Otherwise nothing: a cycle measures
        the link with its bytes."""
        if not self.link_unmeasured:
            return False
        self.estimator.observe_round_trip(rtt_s, elapsed_s)
        self.link_unmeasured = False
        return True

    def observe(self, cycle: Cycle) -> None:
        self.speculated += cycle.served_by == "speculation"
        self.link_unmeasured = self.link_unmeasured and cycle.served_by == "edge"
        if cycle.served_by == "cloud":
            self.stretched_s += cycle.t_cycle
        self.estimator.observe(cycle, None if self.learn else self.calibration.seconds_per_byte)
        if self.link_changed:     # a stretch stopped on its pings: their RTT is the link's now
            self.estimator.restart_rtt(cycle.rtt_ms / 1000.0)
            self.link_changed = False


class Bandit(AdaptiveK):
    """Discounted UCB over the arms K = k_min..k_max, minimising seconds per committed token
    (each arm's cycle seconds over its tokens, old cycles fading by ``discount`` per cycle);
    every arm is tried once first.  A cycle the token budget cut short is not its arm's."""

    name = "bandit"

    def __init__(self, k_min: int = DEFAULT_K_MIN, k_max: int = DEFAULT_K_MAX,
                 exploration: float = 0.5, discount: float = 0.995) -> None:
        super().__init__(k_min, k_max)
        self.exploration, self.discount = exploration, discount
        self.arms = np.arange(k_min, k_max + 1)
        self.seconds, self.tokens, self.plays = (np.zeros(len(self.arms)) for _ in range(3))
        self.k = k_min

    def costs(self) -> np.ndarray:
        """Seconds per committed token of each arm so far (NaN for arms not yet played)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.tokens > 0, self.seconds / self.tokens, np.nan)

    def next_k(self) -> int:
        unplayed = np.flatnonzero(self.plays == 0)
        if len(unplayed):
            self.k = int(self.arms[unplayed[0]])
            return self.k
        costs = self.costs()
        bonus = (self.exploration * np.nanmin(costs)
                 * np.sqrt(2.0 * math.log(max(self.plays.sum(), 1.0)) / self.plays))
        self.k = int(self.arms[int(np.argmin(costs - bonus))])
        return self.k

    def observe(self, cycle: Cycle) -> None:
        if cycle.k != self.k:
            return
        arm = self.k - self.k_min
        for stat in (self.seconds, self.tokens, self.plays):
            stat *= self.discount
        self.seconds[arm] += cycle.t_cycle
        self.tokens[arm] += cycle.tokens
        self.plays[arm] += 1.0


ADAPTIVE: dict[str, type[AdaptiveK]] = {policy.name: policy
                                        for policy in (NasdController, HFHeuristic, Bandit)}


def make_policy(name: str, k: int | None = None, k_min: int = DEFAULT_K_MIN,
                k_max: int = DEFAULT_K_MAX, edge_only_cutoff: bool = False,
                table: RttTable | None = None, calibration: Calibration | None = None,
                rtt_estimate: str = EWMA, objective: str = MEAN,
                objective_tokens: int = 64, draft_ahead: int = 0) -> KPolicy:
    """The policy a strategy names: ``fixed-k`` with its ``k``, the others within
    [k_min, k_max]; ``nasd`` may serve stretches without speculating (with the edge-only
    cutoff if asked), plans with an RTT -> K ``table`` and from a starting ``calibration``
    where given, on the ``rtt_estimate`` and for the ``objective`` (over a query of
    ``objective_tokens``) asked for, no other policy taking those; and ``nasd`` plans for
    the edge's ``draft_ahead`` depth (fixed-k's K stays what it is; no other policy drafts
    ahead)."""
    if name == NasdController.name:
        return NasdController(k_min=k_min, k_max=k_max, edge_only_cutoff=edge_only_cutoff,
                              calibration=calibration, table=table, rtt_estimate=rtt_estimate,
                              objective=objective, objective_tokens=objective_tokens,
                              draft_ahead=draft_ahead)
    if edge_only_cutoff or table is not None or calibration is not None \
            or rtt_estimate != EWMA or objective != MEAN:
        raise ValueError(f"only nasd takes a table, a calibration, the edge-only cutoff, an "
                         f"RTT estimate or an objective, not {name}")
    if draft_ahead and name != FixedK.name:
        raise ValueError(f"only fixed-k and nasd draft ahead, not {name}")
    if name == FixedK.name:
        if k is None:
            raise ValueError("fixed-k needs a K")
        return FixedK(k)
    if name not in ADAPTIVE:
        raise ValueError(f"unknown K policy {name!r}; known: {', '.join(POLICY_NAMES)}")
    return ADAPTIVE[name](k_min=k_min, k_max=k_max)

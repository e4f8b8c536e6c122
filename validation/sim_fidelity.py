"""Sim-mode accuracy figures shared by the benchmark and the tests.

For a finished run folder: the edge-measured cycle RTT against the profile's,
the measured decode rate against the analytic prediction, the testbed's own
overhead per cycle (wall time minus modeled compute and modeled link time),
and the loss a run saw, inferred from cycles whose RTT shows a retransmission.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from agents.backends import ModelPairConfig
from nasd.analytic import cycle_time_distributed_s, expected_tokens_per_cycle
from shaping.link_model import RTO_MIN_S, transfer_s
from shaping.profile import LinkState
from validation.prediction import modeled_times
from validation.stats import binomial_interval, relative_error


@dataclass(frozen=True)
class RateCheck:
    """One strategy's measured decode rate against the analytic model, two ways.

    ``predicted_tokens_per_s`` is the model with the pair's modeled compute
    times: it moves with the host's speed (a loaded host computes slower).
    ``rate_on_measured_stages`` evaluates the same cycle time on the run's
    own measured drafting and verification, with the modeled link: what
    remains between it and the measured rate is the link model and the
    testbed's own overhead per cycle, whatever the host's load.  The tokens a
    cycle commits are compared with E[tau] at the measured acceptance apart
    from any timing (``token_error``).
    """

    rtt_configured_ms: float
    rtt_measured_p50_ms: float
    tokens_per_s: float
    predicted_tokens_per_s: float
    rate_on_measured_stages: float
    tokens_per_cycle: float
    expected_tokens_per_cycle: float
    cycles: int

    @property
    def rtt_error_ms(self) -> float:
        return self.rtt_measured_p50_ms - self.rtt_configured_ms

    @property
    def rate_error(self) -> float:
        return relative_error(self.tokens_per_s, self.predicted_tokens_per_s)

    @property
    def stage_rate_error(self) -> float:
        return relative_error(self.tokens_per_s, self.rate_on_measured_stages)

    @property
    def token_error(self) -> float:
        return relative_error(self.tokens_per_cycle, self.expected_tokens_per_cycle)


def rate_check(summary: pd.DataFrame, cycles: pd.DataFrame, label: str,
               link: LinkState) -> RateCheck:
    row = summary.set_index("label").loc[label]
    own = cycles[cycles["label"] == label]
    acceptance = float(row["per_token_acceptance"])
    expected = float(np.mean([expected_tokens_per_cycle(acceptance, int(k)) for k in own["k"]]))
    measured_tokens = float(own["tokens"].mean())
    # the measured rate counts decoded tokens over decode time, which is the cycles' sum
    on_stages = own["tokens"].sum() / ((own["t_draft"] + own["t_verify"]).sum()
                                       + modeled_link_s(own, link).sum())
    return RateCheck(link.rtt_ms, float(row["rtt_ms_p50"]), float(row["tokens_per_s"]),
                     float(row["predicted_tokens_per_s"]), float(on_stages), measured_tokens,
                     expected, len(own))


def modeled_link_s(cycles: pd.DataFrame, link: LinkState) -> np.ndarray:
    """RTT plus each cycle's messages' transfer, up and down: serialization through the
    buckets, and on a lossy link the mean resend wait (``shaping.link_model.transfer_s``)."""
    return np.array([link.rtt_ms / 1000.0 + transfer_s(link, "uplink", up)
                     + transfer_s(link, "downlink", down)
                     for up, down in zip(cycles["bytes_up"], cycles["bytes_down"])])


def modeled_cycle_s(cycles: pd.DataFrame, pair: ModelPairConfig, link: LinkState) -> np.ndarray:
    """T_dist(k) of each fixed-K cycle, in order, with the pair's modeled compute times.

    A cycle's first draft forward also feeds the last drafted token when the
    previous cycle accepted everything (two pending tokens instead of one).
    """
    edge = modeled_times(pair).edge
    previous_all_accepted = (cycles["accepted"] == cycles["k"]).shift(fill_value=False)
    first_of_query = cycles["cycle"] == 1
    extra_tokens = (previous_all_accepted & ~first_of_query).astype(int).to_numpy()
    modeled = np.array([
        cycle_time_distributed_s(int(k), edge, link.rtt_ms / 1000.0,
                                 transfer_s(link, "uplink", up), transfer_s(link, "downlink", down))
        for k, up, down in zip(cycles["k"], cycles["bytes_up"], cycles["bytes_down"])])
    return modeled + extra_tokens * pair.latency.edge_draft.per_token_ms / 1000.0


def overhead_per_cycle_ms(cycles: pd.DataFrame, pair: ModelPairConfig, link: LinkState) -> np.ndarray:
    return (cycles["t_cycle"].to_numpy() - modeled_cycle_s(cycles, pair, link)) * 1000.0


@dataclass(frozen=True)
class LossCheck:
    cycles: int
    cycles_with_retransmission: int
    per_message_loss: float
    interval: tuple[float, float]


def loss_from_cycles(cycles: pd.DataFrame, link: LinkState) -> LossCheck:
    """Per-message loss seen by the edge: a cycle whose RTT exceeds the base by
    half a minimum RTO carried at least one retransmission; with two messages
    per cycle, P(cycle hit) = 1 - (1 - p)^2."""
    hit = int((cycles["rtt_ms"] > link.rtt_ms + 500.0 * RTO_MIN_S).sum())
    low, high = binomial_interval(hit, len(cycles))
    to_message = lambda share: 1.0 - np.sqrt(1.0 - share)
    return LossCheck(len(cycles), hit, float(to_message(hit / len(cycles))),
                     (float(to_message(low)), float(to_message(high))))

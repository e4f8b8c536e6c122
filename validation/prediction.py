"""What the analytic model predicts for a strategy on a link, from a model pair.

Bridges configs to ``nasd.analytic``: the pair's latency profile gives the
compute times, the link state gives RTT and serialization, and the acceptance
is the one measured in the run where there is one (configured otherwise).
"""

from __future__ import annotations

from typing import Literal, Sequence

from agents.backends import ModelPairConfig
from nasd.analytic import (ComputeTimes, cloud_only_throughput, crossover_rtt_s,
                           cycle_time_distributed_s, cycle_time_local_s,
                           expected_tokens_per_cycle)
from shaping.link import serialization_delay_s, wire_bytes
from shaping.profile import DirectionSpec, LinkState


def compute_times(pair: ModelPairConfig, drafting_host: Literal["edge", "cloud"]) -> ComputeTimes:
    draft = pair.latency.edge_draft if drafting_host == "edge" else pair.latency.cloud_draft
    target = pair.latency.cloud_target
    return ComputeTimes(draft_token_s=draft.seconds(1),
                        verify_base_s=target.base_ms / 1000.0,
                        verify_per_token_s=target.per_token_ms / 1000.0)


def transmit_s(direction: DirectionSpec, message_bytes: float) -> float:
    """Serialization of one message of ``message_bytes`` (ZMTP bytes) through the bucket."""
    return serialization_delay_s(wire_bytes(int(round(message_bytes))),
                                 direction.rate_bytes_per_s, direction.burst_bytes)


def predicted_tokens_per_s(strategy: str, ks: Sequence[int], acceptance: float,
                           pair: ModelPairConfig, link: LinkState,
                           bytes_up: float = 0.0, bytes_down: float = 0.0) -> float:
    """Decode rate (tokens/s after the first token) of one strategy.

    ``ks`` are the draft lengths of the cycles (the run's own where it
    recorded them, so a query's shorter last cycle and a controller's
    changing K are modeled too): expected tokens over expected time, summed
    over cycles.
    """
    if strategy == "edge-only":
        return 1.0 / pair.latency.edge_draft.seconds(1)
    if strategy == "cloud-only":
        return cloud_only_throughput(compute_times(pair, "cloud"))
    if strategy == "cloud-spec":
        times = compute_times(pair, "cloud")
        cycle_s = lambda k: cycle_time_local_s(k, times)  # noqa: E731
    elif strategy == "fixed-k":
        times = compute_times(pair, "edge")
        up, down = transmit_s(link.uplink, bytes_up), transmit_s(link.downlink, bytes_down)
        cycle_s = lambda k: cycle_time_distributed_s(k, times, link.rtt_ms / 1000.0, up, down)  # noqa: E731
    else:
        raise ValueError(f"no prediction for strategy {strategy!r}")
    tokens = sum(expected_tokens_per_cycle(acceptance, k) for k in ks)
    return tokens / sum(cycle_s(k) for k in ks)


def predicted_crossover_rtt_ms(k: int, acceptance: float, pair: ModelPairConfig, link: LinkState,
                               bytes_up: float = 0.0, bytes_down: float = 0.0) -> float:
    """The RTT above which cloud-only decodes faster than fixed-K cloud-edge speculation."""
    return 1000.0 * crossover_rtt_s(acceptance, k, compute_times(pair, "edge"),
                                    transmit_s(link.uplink, bytes_up),
                                    transmit_s(link.downlink, bytes_down))

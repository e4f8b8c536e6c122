"""Settings an agent process starts with, written by the orchestrator as JSON."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from agents.backends import ModelPairConfig
from agents.backends.emulated import DeviceEmulation
from agents.messages import MAX_NEW_TOKENS
from agents.protocol import DEFAULT_MAX_MESSAGE_BYTES
from shaping.simlink import SimLinkSettings


class CloudLimits(BaseModel):
    """What the cloud grants each peer (a ZeroMQ identity) and all of them together; a
    request beyond a limit gets an error naming it.  The defaults never bind a run of the
    shipped jobs (an edge holds one session at a time, K <= 64, max_new_tokens <= 4096,
    at most 17 draft-ahead blocks in flight)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    sessions_per_peer: int = Field(default=4, ge=1)
    sessions: int = Field(default=64, ge=1, description="open sessions of all peers together")
    prompt_tokens: int = Field(default=32768, ge=1)
    max_new_tokens: int = Field(default=MAX_NEW_TOKENS, ge=1, le=MAX_NEW_TOKENS,
                                description="a session's token budget at most")
    session_idle_s: float = Field(default=300.0, gt=0, allow_inf_nan=False,
                                  description="a session quiet this long is forgotten")
    peer_queue_messages: int = Field(default=64, ge=1, description=(
        "a peer's messages waiting to be received (ZeroMQ's RCVHWM); with the message size "
        "cap this bounds the bytes a peer has in flight to the cloud"))


class AgentSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    model_pair: ModelPairConfig
    data_address: str = Field(description="edge: where to connect; cloud: where to bind")
    control_address: str
    receive_timeout_s: float = Field(default=30.0, gt=0)
    max_message_bytes: int = Field(default=DEFAULT_MAX_MESSAGE_BYTES, gt=0)
    sim_link: SimLinkSettings | None = Field(
        default=None, description="sim mode: emulate the direction this agent receives on")
    cloud_limits: CloudLimits = CloudLimits()
    emulation: DeviceEmulation | None = Field(
        default=None, description="device emulation: pad every pass to the emulated device's time")
    curve_keys: Path | None = Field(default=None, description=(
        "the folder of the run's CURVE keys (``agents.security.create_run_keys``; private to "
        "the run, never the results folder); None: a plain data plane"))


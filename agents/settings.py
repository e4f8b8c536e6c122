"""Settings an agent process starts with, written by the orchestrator as JSON."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from agents.backends import ModelPairConfig
from agents.backends.emulated import DeviceEmulation
from agents.protocol import DEFAULT_MAX_MESSAGE_BYTES
from shaping.simlink import SimLinkSettings


class AgentSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    model_pair: ModelPairConfig
    data_address: str = Field(description="edge: where to connect; cloud: where to bind")
    control_address: str
    receive_timeout_s: float = Field(default=30.0, gt=0)
    max_message_bytes: int = Field(default=DEFAULT_MAX_MESSAGE_BYTES, gt=0)
    sim_link: SimLinkSettings | None = Field(
        default=None, description="sim mode: emulate the direction this agent receives on")
    emulation: DeviceEmulation | None = Field(
        default=None, description="device emulation: pad every pass to the emulated device's time")


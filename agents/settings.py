"""Settings an agent process starts with (written by the orchestrator as JSON),
and the data-plane channel they describe."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from agents.backends import ModelPairConfig
import zmq

from agents.protocol import DEFAULT_MAX_MESSAGE_BYTES, Channel
from shaping.simlink import Direction, SimLinkSettings, SimulatedDirection


class AgentSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    model_pair: ModelPairConfig
    data_address: str = Field(description="edge: where to connect; cloud: where to bind")
    control_address: str
    receive_timeout_s: float = Field(default=30.0, gt=0)
    max_message_bytes: int = Field(default=DEFAULT_MAX_MESSAGE_BYTES, gt=0)
    sim_link: SimLinkSettings | None = Field(
        default=None, description="sim mode: emulate the direction this agent receives on")


def make_channel(settings: AgentSettings, socket: zmq.Socket, receives_on: Direction) -> Channel:
    """The data-plane channel of an agent; in sim mode it emulates ``receives_on``."""
    sim_link = None
    if settings.sim_link is not None:
        link_settings = settings.sim_link
        sim_link = lambda stream: SimulatedDirection(link_settings, receives_on, stream)  # noqa: E731
    return Channel(socket, settings.receive_timeout_s, settings.max_message_bytes, sim_link)

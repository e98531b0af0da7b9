"""Public API: `from agent import Agent, Session` and the event and error types."""

from agent.api import Agent
from agent.config import AgentConfig
from agent.errors import (
                          DuplexError,
                          InvalidAudioError,
                          InvalidImageError,
                          ModelLoadError,
                          ModelNotFoundError,
                          SessionClosedError,
                          SessionLimitError,
                          UnsupportedError,
)
from agent.events import AudioOut, Closed, Error, Event, ImageGate, ImageUpdated, Stats, TextToken, Transcript
from agent.session import Session

__all__ = ["Agent", "AgentConfig", "AudioOut", "Closed", "DuplexError", "Error", "Event", "ImageGate",
           "ImageUpdated", "InvalidAudioError", "InvalidImageError", "ModelLoadError", "ModelNotFoundError", "Session",
           "SessionClosedError", "SessionLimitError", "Stats", "TextToken", "Transcript", "UnsupportedError"]

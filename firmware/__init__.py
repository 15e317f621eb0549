"""The agent: state machine wiring drivers → capture → buffer, configuration, CLI."""

from importlib import metadata as _metadata

try:
    FIRMWARE_VERSION = _metadata.version("bwv")
except _metadata.PackageNotFoundError:  # running from a source tree without install
    FIRMWARE_VERSION = "0+source"

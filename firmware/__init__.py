"""The agent: state machine wiring drivers → capture → buffer, configuration, CLI."""

"""Network transports: each one adapts a wire protocol to the `agent.Session` API and holds no model logic."""

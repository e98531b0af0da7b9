"""What users connect through, above the agent API: the HTTP server (`server`: page, WebRTC signalling, the
Moshi-protocol WebSocket, /health), its transports, the Ray Serve deployment (`cluster`) and the terminal UI
(`tui`). Imports point down only: frontends -> agent -> streaming -> models."""

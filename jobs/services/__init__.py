"""Business rules that the CLI and the HTTP API both call; no rendering, no HTTP, no argument parsing."""

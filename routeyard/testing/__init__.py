"""Test doubles that ship with Routeyard, public and documented (as httpx ships `MockTransport`).

- `routeyard.testing.loopback`: `LoopbackServer`, an OpenAI-compatible chat server on 127.0.0.1 with scripted
  latency and faults (429/5xx, hangs, a marker that always fails) and a `/_stats` count of calls per prompt.
  Point `ROUTEYARD_STRONG_BASE_URL`/`ROUTEYARD_WEAK_BASE_URL` at `server.base_url` to run real jobs through the
  real `openai` client without a provider:

      with LoopbackServer(LoopbackConfig(models=DEMO_MODELS)) as server:
          settings = Settings(strong_base_url=server.base_url, weak_base_url=server.base_url, ...)

- `routeyard.testing.inline`: `InlineExecutor`, to run the API's embedded jobs inline in tests.
- `routeyard.testing.demo_data`: `write_demo_batch(path, n)`, the demo's batch in the OpenAI Batch input format.
"""

"""The proxy's OpenAI-compatible HTTP API (FastAPI), built on the split engine.

    app = build_app(runtime, settings)     # see app.py for the routes

Modules: protocol (request/response models), serving_chat / serving_completions (one class per
endpoint), generation (a request's sequences and their cancellation), text_stream (incremental
detokenization and stop strings), errors (OpenAI error objects), metrics, health.
"""

from talaria_proxy.api.app import build_app

__all__ = ["build_app"]

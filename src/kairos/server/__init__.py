"""OpenAI-compatible HTTP server: API process (FastAPI) + engine process (ZMQ)."""

"""kairos bench: an open-loop, goodput-first load generator for any OpenAI-compatible server."""

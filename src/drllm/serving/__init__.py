"""Serving a routed model: an OpenAI-compatible endpoint on Ray Serve (`drllm serve`, docs/serving.md)."""

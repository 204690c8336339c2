"""drllm: dynamic layer routing (Dr.LLM) for frozen decoder-only LLMs."""

__version__ = "0.1.0"

"""Routeyard: route large batches of LLM prompts between a strong and a weak model (RouteLLM)."""

__version__ = "0.1.0"

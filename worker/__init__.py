"""Execution: the LLM clients, pricing, the routing/completion pipeline and the Celery app."""

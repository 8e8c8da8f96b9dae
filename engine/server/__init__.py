"""OpenAI-compatible HTTP server of one engine replica.

``python -m shoal.engine serve`` runs it (:mod:`shoal.engine.server.cli`);
:func:`shoal.engine.server.api_server.create_app` builds the app around an
:class:`shoal.engine.server.async_engine.AsyncEngine` (tests use a fake engine).
"""

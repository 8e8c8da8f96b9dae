"""The FastAPI app of one engine replica (OpenAI API + Shoal's extras).

``create_app(async_engine, settings)`` builds it; the engine thread starts and
stops with the app's lifespan. Request bodies are parsed by the pydantic models
directly from bytes (strict, one pass) instead of FastAPI's body injection, so
every failure maps to OpenAI's error shape with the parameter named.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.responses import Response

from shoal.engine.server.async_engine import AsyncEngine, EngineDeadError
from shoal.engine.server.caller import caller_of
from shoal.engine.server.errors import APIError, install_error_handlers, unavailable
from shoal.engine.server.metrics import CONTENT_TYPE, ServerMetrics
from shoal.engine.server.middleware import RequestGuardMiddleware
from shoal.engine.server.openapi import describe_request_bodies
from shoal.engine.server.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    TokenizeRequest,
)
from shoal.engine.server.responses import DetokenizeResponse, ModelCard, ModelList, TokenizeResponse
from shoal.engine.server.serving import ServingContext
from shoal.engine.server.serving_chat import create_chat_completion, encode_messages
from shoal.engine.server.serving_completions import create_completion
from shoal.engine.server.settings import ServerSettings


def _json(model: Any) -> Response:
    return Response(model.model_dump_json(), media_type="application/json")


def create_app(engine: AsyncEngine, settings: ServerSettings, metrics: ServerMetrics | None = None) -> FastAPI:
    """The app serving ``engine``; ``app.state.ctx`` is its :class:`ServingContext`."""
    if metrics is None:
        metrics = ServerMetrics(settings.served_model_name, lambda: engine.stats, lambda: (engine.steps, engine.busy_s, engine.failed_steps))
    if engine.observer_factory is None:
        engine.observer_factory = metrics.observer
    ctx = ServingContext(engine=engine, settings=settings, metrics=metrics)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        engine.start()
        try:
            yield
        finally:
            await engine.stop()
            ctx.close()

    app = FastAPI(title="Shoal engine", version="0.1.0", lifespan=lifespan)
    app.state.ctx = ctx
    install_error_handlers(app)

    async def engine_dead(_: Request, exc: Exception) -> Response:
        return unavailable(f"The engine is not running: {exc}", "engine_unavailable").response()

    app.add_exception_handler(EngineDeadError, engine_dead)
    app.add_middleware(
        RequestGuardMiddleware,
        max_body_bytes=settings.max_body_bytes,
        api_key=settings.api_key,
        body_timeout_s=settings.body_timeout_s,
    )

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        req = CompletionRequest.model_validate_json(await request.body())
        return await create_completion(ctx, req, request)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        req = ChatCompletionRequest.model_validate_json(await request.body())
        return await create_chat_completion(ctx, req, request)

    @app.get("/v1/models")
    async def models() -> Response:
        card = ModelCard(
            id=settings.served_model_name,
            created=ctx.created,
            root=settings.model_path or None,
            max_model_len=ctx.max_model_len,
        )
        return _json(ModelList(data=[card]))

    @app.get("/health")
    async def health() -> Response:
        if ctx.draining:
            raise unavailable("The server is shutting down.", "server_draining")
        if not engine.is_running:
            raise unavailable("The engine is not running.", "engine_unavailable")
        return Response(status_code=200)

    @app.get("/metrics")
    async def metrics_endpoint() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @app.post("/tokenize")
    async def tokenize(request: Request) -> Response:
        req = TokenizeRequest.model_validate_json(await request.body())
        ctx.check_model(req.model)
        if req.messages is not None:
            tools = [t.model_dump(exclude_none=True) for t in req.tools] if req.tools else None
            tokens = await ctx.off_loop(encode_messages, ctx, req.messages, tools, req.add_generation_prompt)
        else:
            tokens = await ctx.off_loop(ctx.tokenizer.encode, req.prompt or "", req.add_special_tokens)
        return _json(TokenizeResponse(count=len(tokens), max_model_len=ctx.max_model_len, tokens=tokens))

    @app.post("/detokenize")
    async def detokenize(request: Request) -> Response:
        req = DetokenizeRequest.model_validate_json(await request.body())
        ctx.check_model(req.model)
        vocab = int(getattr(ctx.tokenizer, "vocab_size", 0) or 0)
        bad = [t for t in req.tokens if vocab and t >= vocab]
        if bad:
            raise APIError(400, f"token id {bad[0]} is outside the vocabulary [0, {vocab})", param="tokens")
        return _json(DetokenizeResponse(prompt=ctx.tokenizer.decode(req.tokens)))

    @app.post("/v1/programs/{program_id:path}/release")
    async def release_program(program_id: str, request: Request) -> JSONResponse:
        # An admin endpoint (engine key); scoped by the trusted tenant header like the pins it drops.
        tenant = caller_of(request).tenant
        released = await engine.call(lambda e: e.release_program(program_id, tenant))
        return JSONResponse({"program_id": program_id, "released_blocks": int(released)})

    @app.get("/shoal/kv/capacity")
    async def kv_capacity() -> JSONResponse:
        """The KV pool in blocks (the numbers of the shoal:* gauges, as of the last step); admin."""
        s = engine.stats
        return JSONResponse(
            {
                "block_size": s.block_size,
                "kv_blocks_total": s.num_blocks,
                "free_blocks": s.num_free_blocks,
                "kv_blocks_cached": s.num_cached_blocks,
                "pinned_blocks": s.num_pinned_blocks,
                "programs": s.num_programs,
            }
        )

    payload_cache: list[bytes] = []

    @app.get("/shoal/tokenizer")
    async def tokenizer_payload() -> Response:
        if not payload_cache:  # tokenizer.json is megabytes: serialize once
            payload_cache.append(json.dumps({**ctx.tokenizer.to_payload(), "block_size": settings.block_size}).encode())
        return Response(payload_cache[0], media_type="application/json")

    @app.get("/shoal/kv/digest")
    async def kv_digest() -> JSONResponse:
        hashes = await engine.call(lambda e: e.cached_block_hashes())
        return JSONResponse({"block_size": settings.block_size, "hashes": hashes})

    describe_request_bodies(
        app,
        {
            ("POST", "/v1/completions"): CompletionRequest,
            ("POST", "/v1/chat/completions"): ChatCompletionRequest,
            ("POST", "/tokenize"): TokenizeRequest,
            ("POST", "/detokenize"): DetokenizeRequest,
        },
    )
    return app

# Shoal router (torch-free: `import shoal.router` never imports torch).
ARG BASE_IMAGE=python:3.12-slim
FROM ${BASE_IMAGE}

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY requirements/ requirements/
# Only what the router imports: no torch, triton, gguf or kopf.
RUN grep -E '^(anyio|fastapi|httpx|Jinja2|numpy|prometheus_client|pydantic|pydantic_core|PyYAML|starlette|tokenizers|uvicorn)==' \
      requirements/runtime.txt > /tmp/router-requirements.txt \
 && pip install -r /tmp/router-requirements.txt
COPY pyproject.toml README.md ./
COPY engine/ engine/
COPY router/ router/
COPY crds/ crds/
COPY operator/ operator/
RUN pip install --no-deps --no-build-isolation . && rm -rf /src

RUN useradd --uid 1000 --create-home shoal
USER 1000
EXPOSE 8080
ENTRYPOINT ["python", "-m", "shoal.router"]
CMD ["--config", "/etc/shoal/router/router.yaml"]

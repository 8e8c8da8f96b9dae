# Shoal operator (kopf) and the `shoal` CLI.
ARG BASE_IMAGE=python:3.12-slim
FROM ${BASE_IMAGE}

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY requirements/ requirements/
# The operator renders router configs, so it needs the router's config module (pydantic) but no torch.
RUN grep -E '^(anyio|httpx|kopf|kubernetes|pydantic|pydantic_core|PyYAML|rich)==' \
      requirements/runtime.txt > /tmp/operator-requirements.txt \
 && pip install -r /tmp/operator-requirements.txt
COPY pyproject.toml README.md ./
COPY engine/ engine/
COPY router/ router/
COPY crds/ crds/
COPY operator/ operator/
RUN pip install --no-deps --no-build-isolation . && rm -rf /src

RUN useradd --uid 1000 --create-home shoal
USER 1000
EXPOSE 8081
ENTRYPOINT ["shoal"]
CMD ["operator", "--liveness=http://0.0.0.0:8081/healthz"]

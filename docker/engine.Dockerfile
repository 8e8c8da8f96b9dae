# Shoal engine replica (the ModelPool's pods). GPU by default; a CPU image:
#   docker build -f docker/engine.Dockerfile --build-arg BASE_IMAGE=ubuntu:24.04 \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu -t shoal-engine:cpu .
ARG BASE_IMAGE=nvidia/cuda:12.6.3-runtime-ubuntu24.04
FROM ${BASE_IMAGE}

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126
ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PATH=/opt/shoal/bin:$PATH
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/shoal

WORKDIR /src
COPY requirements/ requirements/
RUN pip install --extra-index-url "${TORCH_INDEX_URL}" -r requirements/runtime.txt \
 && pip install --no-deps -r requirements/model.txt
COPY pyproject.toml README.md ./
COPY engine/ engine/
COPY router/ router/
COPY crds/ crds/
COPY operator/ operator/
RUN pip install --no-deps --no-build-isolation . && rm -rf /src

RUN useradd --uid 1000 --create-home --home-dir /home/shoal shoal
USER 1000
WORKDIR /home/shoal
EXPOSE 8000
# The operator sets the arguments (engine flags from the ModelPool spec).
ENTRYPOINT ["python", "-m", "shoal.engine"]
CMD ["serve", "--model", "bundled:smollm2-135m-instruct", "--host", "0.0.0.0", "--port", "8000"]

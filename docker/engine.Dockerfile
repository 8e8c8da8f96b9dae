# Shoal engine replica (the ModelPool's pods). CUDA by default; the CPU image:
#   docker build -f docker/engine.Dockerfile --build-arg BASE_IMAGE=ubuntu:24.04 \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu -t shoal-engine:cpu .
ARG BASE_IMAGE=nvidia/cuda:12.6.3-runtime-ubuntu24.04
FROM ${BASE_IMAGE}

# The torch index only picks torch's build (CUDA or CPU); every version is pinned in requirements/.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126
ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 PYTHONSAFEPATH=1 PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 VIRTUAL_ENV=/opt/shoal PATH=/opt/shoal/bin:$PATH
# Triton compiles its GPU launcher with the system C compiler and Python headers at run time; on CPU the
# engine builds its C++ kernels (quantized GEMV, paged attention) with g++ on first use (cached).
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev gcc g++ libc6-dev ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/shoal

WORKDIR /src
COPY requirements/ requirements/
RUN pip install -r requirements/build.txt
RUN pip install --extra-index-url "${TORCH_INDEX_URL}" -r requirements/runtime.txt
RUN pip install --no-deps -r requirements/model.txt
COPY setup.py pyproject.toml README.md ./
COPY engine/ engine/
COPY router/ router/
COPY crds/ crds/
COPY operator/ operator/
RUN pip install --no-deps --no-build-isolation . && rm -rf /src

# uid 10001: ubuntu:24.04 and the CUDA bases already have uid 1000 (ubuntu). The root filesystem
# may be read-only (the operator mounts emptyDirs on /tmp and ~/.cache): every cache lives there.
RUN useradd --uid 10001 --user-group --create-home --home-dir /home/shoal --shell /usr/sbin/nologin shoal
ENV HOME=/home/shoal XDG_CACHE_HOME=/home/shoal/.cache HF_HOME=/home/shoal/.cache/huggingface \
    TRITON_CACHE_DIR=/home/shoal/.cache/triton TORCHINDUCTOR_CACHE_DIR=/home/shoal/.cache/inductor
USER 10001
WORKDIR /home/shoal
EXPOSE 8000
# The operator sets the arguments (engine flags from the ModelPool spec).
ENTRYPOINT ["python", "-m", "shoal.engine"]
CMD ["serve", "--model", "bundled:smollm2-135m-instruct", "--host", "0.0.0.0", "--port", "8000"]

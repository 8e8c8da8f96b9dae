# Shoal operator (kopf) and the `shoal` CLI.
ARG BASE_IMAGE=python:3.12-slim
FROM ${BASE_IMAGE}

ENV PYTHONUNBUFFERED=1 PYTHONSAFEPATH=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/shoal PATH=/opt/shoal/bin:$PATH
RUN python3 -m venv /opt/shoal

WORKDIR /src
COPY requirements/ requirements/
RUN pip install -r requirements/build.txt
# The operator renders router configs with the router's settings models (pydantic), no torch.
RUN pip install -c requirements/runtime.txt -r requirements/operator.txt
COPY setup.py pyproject.toml README.md ./
COPY engine/ engine/
COPY router/ router/
COPY crds/ crds/
COPY operator/ operator/
RUN pip install --no-deps --no-build-isolation . && rm -rf /src

RUN useradd --uid 10001 --user-group --create-home --home-dir /home/shoal --shell /usr/sbin/nologin shoal
ENV HOME=/home/shoal
USER 10001
WORKDIR /home/shoal
EXPOSE 8081
ENTRYPOINT ["shoal"]
CMD ["operator", "--liveness=http://0.0.0.0:8081/healthz"]

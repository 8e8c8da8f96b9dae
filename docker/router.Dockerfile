# Shoal router (torch-free: `import shoal.router` never imports torch).
ARG BASE_IMAGE=python:3.12-slim
FROM ${BASE_IMAGE}

ENV PYTHONUNBUFFERED=1 PYTHONSAFEPATH=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/shoal PATH=/opt/shoal/bin:$PATH
RUN python3 -m venv /opt/shoal

WORKDIR /src
COPY requirements/ requirements/
RUN pip install -r requirements/build.txt
# Only what the router imports (requirements/router.txt), at the versions runtime.txt pins.
RUN pip install -c requirements/runtime.txt -r requirements/router.txt
COPY setup.py pyproject.toml README.md ./
COPY engine/ engine/
COPY router/ router/
COPY crds/ crds/
COPY operator/ operator/
RUN pip install --no-deps --no-build-isolation . && rm -rf /src

RUN useradd --uid 10001 --user-group --create-home --home-dir /home/shoal --shell /usr/sbin/nologin shoal
ENV HOME=/home/shoal XDG_CACHE_HOME=/home/shoal/.cache
USER 10001
WORKDIR /home/shoal
EXPOSE 8080
ENTRYPOINT ["python", "-m", "shoal.router"]
CMD ["--config", "/etc/shoal/router/router.yaml"]

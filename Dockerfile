# syntax=docker/dockerfile:1
# stratus, CPU image: `docker build -t stratus .` then
#   docker run -p 8000:8000 -v stratus-data:/data -e STRATUS_TLS_SELF_SIGNED=true stratus
# Multi-stage: the build stage installs into a virtualenv; the runtime stage copies only that
# virtualenv, the demo model and the entrypoint, and runs as an unprivileged user.
# CUDA: --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 (the wheels bring the CUDA
# runtime; the host needs the driver: docs/DEPLOY.md, "CUDA image"). scripts/docker_install_check.sh runs the install steps between
# the install-check markers in a clean virtualenv, so they are exercised without a Docker daemon.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# PyTorch's CPU wheel index: the CPU build of torch==2.13.0 (a few hundred MB, no CUDA libraries)
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
# the extras the image carries: PostgreSQL (--database-url) and OpenTelemetry traces
ARG EXTRAS=postgres,otel
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/stratus
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
# install-check: begin
RUN /opt/stratus/bin/pip install --index-url "${TORCH_INDEX}" "torch==2.13.0"
RUN /opt/stratus/bin/pip install "/src[${EXTRAS}]"
RUN /opt/stratus/bin/stratus --version && /opt/stratus/bin/python -c "import stratus.api, stratus.engine.core"
# install-check: end

FROM ${PYTHON_IMAGE}
# gcc builds the engine's C decode kernel on first use (about 2 s; without it PyTorch's attention
# runs at 0.6-0.76x the throughput, docs/INSTALL.md). --build-arg KERNEL_TOOLCHAIN= leaves it out.
ARG KERNEL_TOOLCHAIN="gcc libc6-dev"
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini ${KERNEL_TOOLCHAIN} \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --home-dir /data --shell /usr/sbin/nologin stratus \
 && mkdir -p /data && chown stratus:stratus /data
COPY --from=build /opt/stratus /opt/stratus
COPY models/demo /app/models/demo
COPY deploy/docker/entrypoint.sh /usr/local/bin/stratus-entrypoint
ENV PATH=/opt/stratus/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    STRATUS_HOST=0.0.0.0 \
    STRATUS_PORT=8000 \
    STRATUS_DATA_DIR=/data \
    STRATUS_KERNEL_CACHE=/data/.cache/kernels \
    HF_HOME=/data/.cache/huggingface \
    HOME=/data
WORKDIR /app
USER 10001:10001
VOLUME ["/data"]
EXPOSE 8000
# Off loopback the gateway serves HTTPS (STRATUS_TLS_CERT/STRATUS_TLS_KEY, or
# STRATUS_TLS_SELF_SIGNED=true) or, behind a TLS-terminating proxy, STRATUS_INSECURE_HTTP=true;
# it refuses to start otherwise.
ENTRYPOINT ["tini", "--", "stratus-entrypoint"]
CMD ["serve"]

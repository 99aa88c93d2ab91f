# threescale-proxy container image.
#
#   docker build -t threescale-proxy .
#   docker run --read-only -p 8080:8080 -p 9090:9090 \
#     -v "$PWD/proxy.yaml:/etc/threescale-proxy/proxy.yaml:ro" threescale-proxy
#   docker run threescale-proxy check-config /etc/threescale-proxy/proxy.yaml
#
# Configuration: the file at $PROXY_CONFIG (mount yours over /etc/threescale-proxy/proxy.yaml), and any
# PROXY_* variable on top. Without a mount the built-in file below takes one service from the environment
# (THREESCALE_SERVICE_ID, THREESCALE_SERVICE_TOKEN, UPSTREAM_URL), so an ECS task needs no file at all.
# tests/deploy/test_container.py runs this file's ENTRYPOINT + CMD, ENV and HEALTHCHECK against the real proxy.

# ---------------------------------------------------------------------------------------------- builder
# Builds the wheel and installs it with its dependencies into /opt/venv; nothing else leaves this stage.
FROM python:3.11-slim-bookworm AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

RUN python -m venv /opt/venv

WORKDIR /src
# pyproject.toml names README.md as the package's readme: setuptools needs it to build the wheel.
COPY pyproject.toml README.md ./
COPY proxy/ ./proxy/
# Every dependency ships manylinux wheels for CPython 3.11 (amd64 and arm64): no compiler is needed here either.
RUN /opt/venv/bin/pip install --no-cache-dir . \
    && /opt/venv/bin/threescale-proxy --help >/dev/null

# ---------------------------------------------------------------------------------------------- runtime
FROM python:3.11-slim-bookworm

LABEL org.opencontainers.image.title="threescale-proxy" \
      org.opencontainers.image.description="3scale API management sidecar for AWS API Gateway" \
      org.opencontainers.image.licenses="Apache-2.0"

# PYTHONDONTWRITEBYTECODE: the venv's modules are compiled at install; nothing is written at run time, so a
# read-only root filesystem works (the proxy itself writes no files; /tmp is the only writable place needed).
ENV PATH="/opt/venv/bin:${PATH}" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PROXY_CONFIG=/etc/threescale-proxy/proxy.yaml

# A fixed numeric UID/GID so Kubernetes `runAsNonRoot` can verify it without a passwd lookup.
# The built-in configuration: `${...}` are the proxy's own interpolation, expanded at start from the
# container's environment, so they must reach the file unexpanded by this shell.
# hadolint ignore=SC2016
RUN groupadd --system --gid 10001 threescale-proxy \
    && useradd --system --no-log-init --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin threescale-proxy \
    && mkdir -p /etc/threescale-proxy \
    && printf '%s\n' \
       '# Built-in configuration of the threescale-proxy image: one service, from the environment.' \
       '# Mount a file over this one (or set PROXY_CONFIG) for more; PROXY_* variables override either.' \
       'services:' \
       '  - id: ${THREESCALE_SERVICE_ID}' \
       '    token: ${THREESCALE_SERVICE_TOKEN}' \
       '    upstream: ${UPSTREAM_URL:-http://127.0.0.1:3000}' \
       > /etc/threescale-proxy/proxy.yaml

COPY --from=builder /opt/venv /opt/venv

USER 10001:10001

# Anonymous volume so `docker run --read-only` still has a writable /tmp (Kubernetes: an emptyDir; ECS: a
# task volume or tmpfs mount).
VOLUME ["/tmp"]

# 8080: the proxy (API Gateway / the load balancer sends here); 9090: /metrics, /healthz, /readyz.
EXPOSE 8080 9090

# On SIGTERM the proxy turns not-ready, drains (shutdown.drain_delay), flushes usage and exits 0 within
# shutdown.timeout (25 s): below the 30 s Docker/ECS stop timeout and Kubernetes grace period.
STOPSIGNAL SIGTERM

# /readyz with the Python already in the image (no curl). Follows PROXY_METRICS_LISTEN when the metrics port
# is moved that way; 503 (starting or draining) or no answer exits 1.
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('PROXY_METRICS_LISTEN', ':9090').rsplit(':', 1)[-1]; sys.exit(urllib.request.urlopen(f'http://127.0.0.1:{port}/readyz', timeout=2).status != 200)"]

# ENTRYPOINT is the program and CMD its default subcommand, so the same image also runs
# `docker run IMAGE check-config FILE...` and `docker run IMAGE demo --host 0.0.0.0`.
ENTRYPOINT ["threescale-proxy"]
CMD ["serve"]

# A slim image that runs `sse-gateway serve` on 0.0.0.0:8000 as an unprivileged user.
# Point it at Redis with SSE_GATEWAY_REDIS_URL; without it the gateway runs its embedded server.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY clients ./clients
RUN pip install . \
    && rm -rf /src \
    && useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin gateway

WORKDIR /
USER gateway
ENV SSE_GATEWAY_HOST=0.0.0.0 \
    SSE_GATEWAY_PORT=8000
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('SSE_GATEWAY_PORT', '8000'), timeout=2)"
CMD ["sse-gateway", "serve"]

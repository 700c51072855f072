# Perplexity -> OpenAI API server. Build: docker build -t pplx-openai . ; run: docker run --env-file .env -p 8000:8000 pplx-openai
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PORT=8000

WORKDIR /app

# Never run as root. A numeric USER (below), so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
# /data is the user's, for PERPLEXITY_TOKEN_FILE (a named volume mounted there starts with this owner).
RUN groupadd --gid 10001 app \
    && useradd --uid 10001 --gid 10001 --create-home --shell /usr/sbin/nologin app \
    && mkdir /data && chown 10001:10001 /data

COPY requirements.txt .
RUN pip install -r requirements.txt

COPY app.py gunicorn.conf.py mcp_server.py pyproject.toml ./
COPY api/ api/
COPY schemas/ schemas/
COPY perplexity/ perplexity/

USER 10001:10001

EXPOSE 8000

# Liveness, not readiness: /health answers while the process serves HTTP. Orchestrators that act on this check
# (Swarm, autoheal) replace an unhealthy container, which cures a hung process but not an expired session or a
# Redis outage, the things /health/ready also reports: restarting for those would only drop open streams.
# docker-compose.yml overrides it with /health/ready, where "unhealthy" is shown to the operator, not acted on.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen(f'http://127.0.0.1:{os.environ.get(\"PORT\", \"8000\")}/health', timeout=4)"

CMD ["gunicorn", "app:app"]

# Perplexity -> OpenAI API server. Build: docker build -t pplx-openai . ; run: docker run --env-file .env -p 8000:8000 pplx-openai
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PORT=8000

WORKDIR /app

COPY requirements.txt .
RUN pip install -r requirements.txt

COPY app.py gunicorn.conf.py mcp_server.py pyproject.toml ./
COPY api/ api/
COPY schemas/ schemas/
COPY perplexity/ perplexity/

# Never run as root.
RUN useradd --create-home --uid 10001 appuser
USER appuser

EXPOSE 8000

HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen(f'http://127.0.0.1:{os.environ.get(\"PORT\", \"8000\")}/health', timeout=4)"

CMD ["gunicorn", "app:app"]

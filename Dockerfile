FROM python:3.11-slim

# FFmpeg from Debian: the service prefers one on PATH over the bundled wheel's.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ffmpeg \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md ./
COPY refresher ./refresher
COPY actors ./actors
COPY web ./web
RUN pip install --no-cache-dir .

ENV HOST=0.0.0.0 \
    PORT=8080 \
    DATA_DIR=/data \
    PYTHONUNBUFFERED=1
EXPOSE 8080
# The service handles SIGTERM itself: it drains downloads, then exits 0.
STOPSIGNAL SIGTERM
CMD ["video-refresher", "serve"]

# pdqhash (the PDQ perceptual hash) is built from source: wheels are made in a stage with
# a compiler, and only they reach the image.
FROM python:3.11-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends g++ && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md MANIFEST.in ./
COPY refresher ./refresher
COPY actors ./actors
COPY web ./web
COPY wiring ./wiring
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim

# No Debian FFmpeg: the service would prefer one on PATH, and Debian's 5.1 runs a
# process's several outputs on one thread. The imageio-ffmpeg wheel brings FFmpeg 9,
# which the encoder settings were measured with.
WORKDIR /app
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels video-refresher && rm -rf /wheels

# MALLOC_ARENA_MAX: download chunks are read in worker threads; with glibc's default of
# one arena per thread they stay cached per thread (measured: 8 parallel downloads grew
# RSS by 129 MiB, 43 MiB with 2 arenas).
ENV HOST=0.0.0.0 \
    PORT=8080 \
    DATA_DIR=/data \
    PYTHONUNBUFFERED=1 \
    MALLOC_ARENA_MAX=2
EXPOSE 8080
# The service handles SIGTERM itself: it drains downloads, then exits 0.
STOPSIGNAL SIGTERM
CMD ["video-refresher", "serve"]

"""The service's configuration: one frozen object read from the environment and `serve` flags.

Every setting has an environment variable (12-factor) and a `serve` flag of the same name
(`PORT` ↔ `--port`); a flag wins over the environment. Values are checked once, at start: a
bad value raises `ConfigError` whose message names the variable and the rule, and the
service stops with that one line.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from refresher.media.effects import Strength
from refresher.media.probe import MediaLimits

GIB = 1024**3
MIB = 1024**2
# Variations per video when an upload does not say (never more than MAX_VARIATIONS).
DEFAULT_VARIATIONS = 5


# Settings whose values an error message never repeats.
SECRETS = frozenset({"AUTH_PASSWORD", "TOKEN_SECRET", "DATABASE_URL"})


class ConfigError(ValueError):
    """A setting has a value the service cannot run with."""

    def __init__(self, variable: str, rule: str, value: str) -> None:
        self.variable = variable
        self.rule = rule
        self.value = value
        shown = "a value that is not shown" if variable in SECRETS else repr(value)
        super().__init__(f"{variable} {rule}, got {shown}")


@dataclasses.dataclass(frozen=True)
class Config:
    host: str = "0.0.0.0"
    port: int = 8080
    data_dir: Path = Path("./data")
    auth_password: str | None = None
    token_secret: str | None = None
    # Where the job store lives: unset, a SQLite file in the data directory, for one
    # process; a `postgresql://` URL, a PostgreSQL database any number of web and worker
    # processes share (it holds the queue, the leases and the events between them).
    database_url: str | None = dataclasses.field(default=None, repr=False)
    # Seconds a worker's claim on a source file lasts unless renewed (every third of it):
    # a worker that dies has its work taken over within about this long and a third.
    claim_ttl_s: float = 30.0
    # How workers take the queue: "fair" (jobs take turns batch by batch) or "fifo" (job
    # after job, the oldest first: what `bench.fairness` measures fairness against).
    queue_order: str = "fair"
    # Where the jobs' bytes live: unset, the data directory; `s3://bucket/prefix`, a
    # bucket of S3-compatible storage (endpoint and keys from the standard AWS_*
    # variables), and the data directory is scratch space only.
    storage_url: str | None = None
    job_ttl_hours: float = 24.0
    storage_quota_bytes: int = 3 * GIB
    evict_high: float = 0.85
    evict_low: float = 0.75
    janitor_interval_s: float = 300.0
    # How long something stored that no row names must sit unwritten before the janitor
    # removes it (an upload or an output whose process died before its row), and how old
    # an unfinished upload into a bucket must be before it is aborted.
    orphan_grace_s: float = 3600.0
    # The strength an upload gets when it names none (`refresher.media.effects.Strength`).
    default_strength: str = "subtle"
    # The internal port Prometheus metrics are served on; None: not served.
    metrics_port: int | None = None
    # `text` (the default) or `json`: one JSON object per line, for log shippers.
    log_format: str = "text"
    max_upload_bytes: int = 500 * MIB
    max_files: int = 10
    max_variations: int = 20
    # The largest video frame accepted, either way round: 3840 x 2160 takes 4K landscape
    # and portrait alike. Encoding cost grows with the pixels.
    max_long_side_px: int = 3840
    max_short_side_px: int = 2160
    max_fps: float = 120.0
    # An upload longer than this is not an ad creative; refuse it before it occupies FFmpeg.
    max_duration_s: float = 3 * 3600.0
    # Seconds the whole upload may take to arrive, so a stalled or trickling client cannot
    # hold its request and its partial files for ever. At the default, the largest job
    # (MAX_FILES x MAX_UPLOAD_BYTES, 10 x 500 MiB) needs about 12 Mbit/s.
    upload_timeout_s: float = 3600.0
    # Seconds a resumable upload left unfinished is kept after its last bytes arrived
    # (its `Upload-Expires`); then the janitor removes it. Its bytes count against the
    # quota until then.
    resumable_upload_ttl_s: float = 6 * 3600.0
    ffmpeg: str | None = None
    ffmpeg_threads: int | None = None
    cors_origins: tuple[str, ...] = ()
    # Seconds a SIGTERM/SIGINT gives running requests (downloads) to finish. fly.toml's
    # kill_timeout must be longer, or the machine is killed mid-drain.
    shutdown_grace_s: float = 20.0
    # Seconds a connection may go without the client acknowledging anything (a client that
    # stopped reading) before it is cut and a download's lease released.
    download_stall_s: float = 120.0
    # The slowest a client may take what it is sent, in bytes a second, averaged over
    # DOWNLOAD_STALL_S while the server waits on it: a trickle below it is cut, so it
    # cannot pin a job's files (its lease) for hours. 16 KiB/s is 128 kbit/s; a cut
    # download resumes where it stopped.
    download_min_rate_bytes_s: int = 16 * 1024
    # How long the link to the stream of every job's events lasts (and a job's
    # `eventsUrl`); each stream ends when its link does, and the page asks for another.
    events_link_ttl_s: float = 600.0
    # Event streams open at once on one session or link, and in all (each holds a
    # connection; Fly's proxy allows 250).
    max_event_streams_per_link: int = 8
    max_event_streams: int = 100
    # A request header holding the client's address as seen by a trusted proxy in front
    # (Fly's proxy sets `Fly-Client-IP`); empty means use the socket's peer address.
    client_ip_header: str = ""
    log_level: str = "INFO"

    @property
    def job_ttl_s(self) -> float:
        return self.job_ttl_hours * 3600.0

    @property
    def media_limits(self) -> MediaLimits:
        """What decoders and FFmpeg are held to for an upload."""
        return MediaLimits(self.max_long_side_px, self.max_short_side_px, self.max_duration_s)

    @property
    def default_variations(self) -> int:
        return min(DEFAULT_VARIATIONS, self.max_variations)


def _integer(low: int, high: int | None = None) -> Callable[[str], int]:
    rule = (
        f"must be a whole number >= {low}"
        if high is None
        else (f"must be a whole number from {low} to {high}")
    )

    def parse(text: str) -> int:
        try:
            value = int(text.strip().replace("_", ""))
        except ValueError:
            raise ValueError(rule) from None
        if value < low or (high is not None and value > high):
            raise ValueError(rule)
        return value

    return parse


def _number(
    low: float, high: float | None = None, *, low_open: bool = False
) -> Callable[[str], float]:
    bound = f"> {low:g}" if low_open else f">= {low:g}"
    rule = f"must be a number {bound}" + ("" if high is None else f" and <= {high:g}")

    def parse(text: str) -> float:
        try:
            value = float(text.strip())
        except ValueError:
            raise ValueError(rule) from None
        too_low = value <= low if low_open else value < low
        if not math.isfinite(value) or too_low or (high is not None and value > high):
            raise ValueError(rule)
        return value

    return parse


def _text(text: str) -> str:
    if not text.strip():
        raise ValueError("must not be empty")
    return text


def _secret(text: str) -> str:
    if len(text) < 8:
        raise ValueError("must be at least 8 characters")
    return text


def _database_url(text: str) -> str:
    if not text.strip().startswith(("postgresql://", "postgres://")):
        raise ValueError("must be a postgresql:// URL (leave it unset for SQLite)")
    return text.strip()


def _storage_url(text: str) -> str:
    value = text.strip()
    bucket = value.removeprefix("s3://").split("/", 1)[0]
    if not value.startswith("s3://") or not bucket:
        raise ValueError("must be s3://bucket or s3://bucket/prefix (leave it unset for files)")
    return value


def _origins(text: str) -> tuple[str, ...]:
    origins = tuple(part.strip().rstrip("/") for part in text.split(",") if part.strip())
    for origin in origins:
        if origin != "*" and not origin.startswith(("http://", "https://")):
            raise ValueError("must be a comma-separated list of http(s) origins or *")
    return origins


def _strength(text: str) -> str:
    value = text.strip().lower()
    if value not in set(Strength):
        raise ValueError(f"must be one of {', '.join(Strength)}")
    return value


def _queue_order(text: str) -> str:
    value = text.strip().lower()
    if value not in {"fair", "fifo"}:
        raise ValueError("must be fair or fifo")
    return value


def _log_format(text: str) -> str:
    value = text.strip().lower()
    if value not in {"text", "json"}:
        raise ValueError("must be text or json")
    return value


def _log_level(text: str) -> str:
    level = text.strip().upper()
    if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR")
    return level


# field name -> parser of the raw text. The environment variable is the field name in
# upper case, the flag the field name with dashes.
_PARSERS: dict[str, Callable[[str], Any]] = {
    "host": _text,
    "port": _integer(0, 65535),
    "data_dir": lambda text: Path(_text(text)),
    "auth_password": _secret,
    "token_secret": _secret,
    "database_url": _database_url,
    "claim_ttl_s": _number(0.0, low_open=True),
    "queue_order": _queue_order,
    "storage_url": _storage_url,
    "job_ttl_hours": _number(0.0, low_open=True),
    "storage_quota_bytes": _integer(1),
    "evict_high": _number(0.0, 1.0, low_open=True),
    "evict_low": _number(0.0, 1.0, low_open=True),
    "janitor_interval_s": _number(0.0, low_open=True),
    "orphan_grace_s": _number(0.0),
    "default_strength": _strength,
    "metrics_port": _integer(0, 65535),
    "log_format": _log_format,
    "max_upload_bytes": _integer(1),
    "max_files": _integer(1, 1000),
    "max_variations": _integer(1, 100),
    "max_long_side_px": _integer(1),
    "max_short_side_px": _integer(1),
    "max_fps": _number(0.0, low_open=True),
    "max_duration_s": _number(0.0, low_open=True),
    "upload_timeout_s": _number(0.0, low_open=True),
    "resumable_upload_ttl_s": _number(0.0, low_open=True),
    "ffmpeg": _text,
    "ffmpeg_threads": _integer(1, 64),
    "cors_origins": _origins,
    "shutdown_grace_s": _number(0.0),
    "download_stall_s": _number(0.0, low_open=True),
    "download_min_rate_bytes_s": _integer(0),
    "events_link_ttl_s": _number(0.0, low_open=True),
    "max_event_streams_per_link": _integer(1),
    "max_event_streams": _integer(1),
    "client_ip_header": str.strip,
    "log_level": _log_level,
}

SETTINGS: tuple[str, ...] = tuple(_PARSERS)


def env_name(field: str) -> str:
    return field.upper()


def load(environ: Mapping[str, str], flags: Mapping[str, str | None] | None = None) -> Config:
    """Build the configuration from `environ`, with non-None `flags` (by field name) on top.

    Raise `ConfigError` naming the first variable whose value breaks its rule.
    """
    values: dict[str, Any] = {}
    for field, parse in _PARSERS.items():
        raw = (flags or {}).get(field)
        if raw is None:
            raw = environ.get(env_name(field))
        if raw is None or (raw == "" and field not in {"cors_origins", "client_ip_header"}):
            continue
        try:
            values[field] = parse(raw)
        except ValueError as err:
            raise ConfigError(env_name(field), str(err), raw) from None
    config = Config(**values)
    if config.evict_low >= config.evict_high:
        raise ConfigError(
            "EVICT_LOW", f"must be below EVICT_HIGH ({config.evict_high:g})", str(config.evict_low)
        )
    if config.max_short_side_px > config.max_long_side_px:
        raise ConfigError(
            "MAX_SHORT_SIDE_PX",
            f"must be at most MAX_LONG_SIDE_PX ({config.max_long_side_px})",
            str(config.max_short_side_px),
        )
    return config

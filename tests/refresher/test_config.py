from __future__ import annotations

from pathlib import Path

import pytest

from refresher.config import GIB, MIB, Config, ConfigError, load
from wiring import cli


def test_defaults_match_the_design() -> None:
    config = load({})
    assert config == Config()
    assert (config.host, config.port, config.data_dir) == ("0.0.0.0", 8080, Path("./data"))
    assert config.job_ttl_hours == 24
    assert config.storage_quota_bytes == 3 * GIB
    assert (config.evict_high, config.evict_low) == (0.85, 0.75)
    assert config.janitor_interval_s == 300
    assert config.max_upload_bytes == 500 * MIB
    assert (config.max_files, config.max_variations) == (10, 20)
    assert config.auth_password is None
    assert config.token_secret is None


def test_media_and_upload_time_limits_default_to_4k_120_fps_3_hours_and_1_hour() -> None:
    config = load({})
    assert (config.max_long_side_px, config.max_short_side_px) == (3840, 2160)
    assert config.max_fps == 120
    assert config.max_duration_s == 3 * 3600
    assert config.upload_timeout_s == 3600


def test_environment_values_are_parsed() -> None:
    config = load(
        {
            "HOST": "127.0.0.1",
            "PORT": "9000",
            "DATA_DIR": "/srv/data",
            "JOB_TTL_HOURS": "0.001",
            "STORAGE_QUOTA_BYTES": "1_000_000",
            "EVICT_HIGH": "0.9",
            "EVICT_LOW": "0.5",
            "JANITOR_INTERVAL_S": "0.25",
            "MAX_FILES": "3",
            "FFMPEG_THREADS": "2",
            "CORS_ORIGINS": "https://a.example, http://b.example:8080/",
            "AUTH_PASSWORD": "s3cret-enough",
            "MAX_LONG_SIDE_PX": "1920",
            "MAX_SHORT_SIDE_PX": "1080",
            "MAX_FPS": "60",
            "MAX_DURATION_S": "90.5",
            "UPLOAD_TIMEOUT_S": "7200",
        }
    )
    assert config.port == 9000
    assert config.data_dir == Path("/srv/data")
    assert config.job_ttl_s == pytest.approx(3.6)
    assert config.storage_quota_bytes == 1_000_000
    assert config.janitor_interval_s == 0.25
    assert config.ffmpeg_threads == 2
    assert config.cors_origins == ("https://a.example", "http://b.example:8080")
    assert config.auth_password == "s3cret-enough"
    assert (config.max_long_side_px, config.max_short_side_px) == (1920, 1080)
    assert (config.max_fps, config.max_duration_s, config.upload_timeout_s) == (60, 90.5, 7200)


def test_flags_win_over_environment() -> None:
    config = load({"PORT": "9000", "MAX_FILES": "4"}, {"port": "9001", "max_files": None})
    assert config.port == 9001
    assert config.max_files == 4


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("PORT", "eighty", r"^PORT must be a whole number from 0 to 65535, got 'eighty'$"),
        ("PORT", "70000", r"^PORT must be a whole number from 0 to 65535, got '70000'$"),
        ("JOB_TTL_HOURS", "0", r"^JOB_TTL_HOURS must be a number > 0, got '0'$"),
        ("JOB_TTL_HOURS", "nan", r"^JOB_TTL_HOURS must be a number > 0, got 'nan'$"),
        ("EVICT_HIGH", "1.5", r"^EVICT_HIGH must be a number > 0 and <= 1, got '1.5'$"),
        ("MAX_VARIATIONS", "0", r"^MAX_VARIATIONS must be a whole number from 1 to 100"),
        ("MAX_UPLOAD_BYTES", "-1", r"^MAX_UPLOAD_BYTES must be a whole number >= 1"),
        ("AUTH_PASSWORD", "short", r"^AUTH_PASSWORD must be at least 8 characters"),
        ("CORS_ORIGINS", "example.com", r"^CORS_ORIGINS must be a comma-separated list"),
        ("LOG_LEVEL", "LOUD", r"^LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR"),
        ("MAX_LONG_SIDE_PX", "4k", r"^MAX_LONG_SIDE_PX must be a whole number >= 1, got '4k'$"),
        ("MAX_FPS", "0", r"^MAX_FPS must be a number > 0, got '0'$"),
        ("MAX_DURATION_S", "inf", r"^MAX_DURATION_S must be a number > 0, got 'inf'$"),
        ("UPLOAD_TIMEOUT_S", "-5", r"^UPLOAD_TIMEOUT_S must be a number > 0, got '-5'$"),
        ("QUEUE_ORDER", "lifo", r"^QUEUE_ORDER must be fair or fifo, got 'lifo'$"),
        ("RESUMABLE_UPLOAD_TTL_S", "0", r"^RESUMABLE_UPLOAD_TTL_S must be a number > 0"),
    ],
)
def test_bad_value_names_the_variable_and_rule(variable: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load({variable: value})


def test_low_watermark_must_be_below_high() -> None:
    with pytest.raises(ConfigError, match=r"^EVICT_LOW must be below EVICT_HIGH \(0.7\), got"):
        load({"EVICT_HIGH": "0.7", "EVICT_LOW": "0.8"})


def test_short_side_must_not_exceed_long_side() -> None:
    with pytest.raises(
        ConfigError,
        match=r"^MAX_SHORT_SIDE_PX must be at most MAX_LONG_SIDE_PX \(1080\), got '1920'$",
    ):
        load({"MAX_LONG_SIDE_PX": "1080", "MAX_SHORT_SIDE_PX": "1920"})


def test_serve_with_bad_value_stops_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["serve", "--port", "http"]) == 2
    err = capsys.readouterr().err
    assert err == "video-refresher: PORT must be a whole number from 0 to 65535, got 'http'\n"


def test_the_store_is_sqlite_unless_a_postgresql_url_is_given() -> None:
    assert load({}).database_url is None
    url = "postgresql://refresher:pw@db.internal:5432/refresher"
    assert load({"DATABASE_URL": url}).database_url == url
    assert load({"CLAIM_TTL_S": "12"}).claim_ttl_s == 12.0
    with pytest.raises(ConfigError, match=r"^DATABASE_URL must be a postgresql:// URL") as err:
        load({"DATABASE_URL": "mysql://root:hunter2@db/x"})
    assert "hunter2" not in str(err.value)
    assert "hunter2" not in repr(load({"DATABASE_URL": "postgres://u:hunter2@h/d"}))

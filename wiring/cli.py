"""`video-refresher serve` and `video-refresher worker`: the service's command line.

`serve` runs everything in one process (`--role all`, the default) or the web side of
several (`--role web`); `worker` runs the encoding side. Both of the latter share a
PostgreSQL store (`DATABASE_URL`).
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
from collections.abc import Sequence

import trio

from actors.runtime import SupervisorGaveUp
from refresher import config as config_module
from refresher import logs
from refresher.storage.blobs import StorageUnavailable
from wiring import service as service
from wiring.service import NeedsSharedStore, Role


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="video-refresher",
        description="Make subtly different variations of ad creatives.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve",
        help="run the service",
        description="Run the service. Every flag can also be set by the environment "
        "variable of the same name in upper case (--port or PORT); a flag wins.",
    )
    serve.add_argument(
        "--role",
        choices=[Role.ALL, Role.WEB],
        default=Role.ALL,
        help="all: everything in this one process (the default); web: the API, the page, "
        "downloads, the janitor and the evictor, beside `worker` processes "
        "(needs DATABASE_URL)",
    )
    worker = commands.add_parser(
        "worker",
        help="encode and measure, beside `serve --role web` processes",
        description="Encode and measure the jobs that web processes queue, in a PostgreSQL "
        "store they share (DATABASE_URL). Takes the same flags and variables as serve.",
    )
    for command in (serve, worker):
        for field in config_module.SETTINGS:
            command.add_argument(
                "--" + field.replace("_", "-"),
                dest=field,
                metavar=config_module.env_name(field),
            )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = _parser().parse_args(argv)
    flags = {field: getattr(arguments, field) for field in config_module.SETTINGS}
    try:
        config = config_module.load(os.environ, flags)
    except config_module.ConfigError as err:
        print(f"video-refresher: {err}", file=sys.stderr)
        return 2
    role = Role.WORKER if arguments.command == "worker" else Role(arguments.role)
    if role is not Role.ALL and config.database_url is None:
        print(f"video-refresher: {NeedsSharedStore(role)}", file=sys.stderr)
        return 2
    logs.configure(config.log_level, config.log_format)
    # What the imports made lives as long as the process: out of the collector's sight,
    # a full collection no longer walks it. Under the mixed load they had stopped the
    # event loop for 40-70 ms each, a few times a minute.
    gc.freeze()
    gave_up: list[BaseException] = []
    unavailable: list[BaseException] = []
    try:
        trio.run(service.run, config, role)
    except* SupervisorGaveUp as group:
        gave_up.extend(group.exceptions)
    except* StorageUnavailable as group:
        unavailable.extend(group.exceptions)
    for error in unavailable:
        print(f"video-refresher: {error}", file=sys.stderr)
    if unavailable:
        return 2
    for error in gave_up:
        logging.getLogger("refresher").critical("%s", error)
    return 1 if gave_up else 0


if __name__ == "__main__":
    sys.exit(main())

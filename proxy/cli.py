"""`threescale-proxy serve | check-config | demo`: the commands a user runs."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from .config import ConfigError, load_settings


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script and of `python -m proxy`; returns the exit code."""
    parser = argparse.ArgumentParser(prog="threescale-proxy", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the proxy")
    serve.add_argument("--config", "-c", default=os.environ.get("PROXY_CONFIG"), help="YAML file (or $PROXY_CONFIG)")
    # set by the supervisor for each of its workers (`workers` > 1): which one, the supervisor's pid, and the
    # pipe on which the worker says it is ready
    serve.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)
    serve.add_argument("--worker-of", type=int, default=None, help=argparse.SUPPRESS)
    serve.add_argument("--ready-fd", type=int, default=None, help=argparse.SUPPRESS)
    check = sub.add_parser("check-config", help="validate configuration files and print every problem")
    check.add_argument("files", nargs="+")
    check.add_argument(
        "--portal",
        action="store_true",
        help="also read the 3scale portal the files name (threescale.portal_endpoint) and validate what it serves",
    )
    demo = sub.add_parser("demo", help="run the proxy with an embedded 3scale emulator and echo upstream")
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=8080)
    demo.add_argument("--metrics-port", type=int, default=9090)
    args = parser.parse_args(argv)

    if args.command == "check-config":
        return check_config(args.files, portal=args.portal)
    if args.command == "serve":
        if args.worker_index is not None:
            return _serve_worker(args.config, args.worker_index, args.worker_of, args.ready_fd)
        return _serve(args.config)
    from .demo import run_demo  # the demo pulls in the emulator; serve does not need it

    return run_demo(args.host, args.port, args.metrics_port)


def check_config(files: Sequence[str], *, portal: bool = False) -> int:
    """Print `FILE: key: message` per problem (exit 1), or `FILE: ok` for each valid file (exit 0); with
    `portal`, the same for what each file's 3scale portal serves (`FILE (portal ORIGIN ENV): ...`)."""
    failed = False
    for path in files:
        try:
            settings = load_settings(path)
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            failed = True
            continue
        print(f"{path}: ok ({_services(len(settings.services))})")
        if portal:
            import asyncio

            from .portal.client import PortalClient
            from .reload import check_portal

            count, problems = asyncio.run(check_portal(settings))
            where = path
            if settings.threescale.portal_endpoint:
                origin = PortalClient(settings.threescale.portal_endpoint, settings.threescale.environment).origin
                where = f"{path} (portal {origin} {settings.threescale.environment})"
            for key, message in problems:
                print(f"{where}: {key}: {message}", file=sys.stderr)
                failed = True
            if not problems:
                print(f"{where}: ok ({_services(count)})")
    return 1 if failed else 0


def _services(count: int) -> str:
    return f"{count} service{'s' if count != 1 else ''}"


def _serve(config_path: str | None) -> int:
    from .workers import effective_workers, supervise

    try:
        settings = load_settings(config_path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    workers = effective_workers(settings)
    if workers > 1:
        return supervise(settings, config_path, workers)

    from .app import ProxyServer, run_until_signal
    from .eventloop import run
    from .logs import setup_logging

    setup_logging(settings.log.level)
    server = ProxyServer(settings)
    return run(
        run_until_signal(server.start, server.stop, lambda: server.reload_file(config_path)), settings.event_loop
    )


def _serve_worker(config_path: str | None, index: int, parent_pid: int | None, ready_fd: int | None) -> int:
    from .workers import run_worker

    try:
        settings = load_settings(config_path)
    except ConfigError as exc:  # the file changed since the supervisor read it
        print(exc, file=sys.stderr)
        return 1
    return run_worker(settings, index, parent_pid, ready_fd, config_path)

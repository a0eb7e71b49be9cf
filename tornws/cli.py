"""The ``tornws`` command: ``serve`` and ``client`` (also ``python -m tornws``)."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import os
import ssl
import sys
from collections.abc import Sequence
from typing import Any

import tornado.web

from . import __version__
from ._logs import configure as configure_logging
from .exceptions import ConfigError

__all__ = ["build_parser", "load_app", "main"]

log = logging.getLogger(__name__)


def load_app(spec: str) -> tornado.web.Application:
    """Import ``module:factory`` and call ``factory()`` for a Tornado ``Application``.

    ``module:name`` may also name an ``Application`` object directly.

    Raises:
        ConfigError: with what is wrong and how to write it.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"--app takes module:factory, e.g. myproject.app:make_app (got {spec!r})")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"--app {spec}: cannot import {module_name!r}: {exc}") from None
    try:
        target = getattr(module, attr)
    except AttributeError:
        raise ConfigError(f"--app {spec}: module {module_name!r} has no {attr!r}") from None
    app = target if isinstance(target, tornado.web.Application) else target()
    if not isinstance(app, tornado.web.Application):
        raise ConfigError(
            f"--app {spec}: {attr}() returned {type(app).__name__}, not a tornado.web.Application"
        )
    return app


def _header(value: str) -> tuple[str, str]:
    name, sep, text = value.partition(":")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected 'Name: value', got {value!r}")
    return name.strip(), text.strip()


def _ws_url(value: str) -> str:
    if not value.startswith(("ws://", "wss://")):
        raise argparse.ArgumentTypeError(f"URL must start with ws:// or wss:// (got {value!r})")
    return value


def _size(value: str) -> int:
    units = {"k": 1024, "m": 1024 * 1024}
    text = value.strip().lower().removesuffix("ib").removesuffix("b")
    factor = units.get(text[-1:], 1)
    number = text[:-1] if text[-1:] in units else text
    try:
        return int(number) * factor
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a size such as 65536, 64k or 1m (got {value!r})"
        ) from None


def _add_serve(commands: Any) -> None:
    serve = commands.add_parser(
        "serve",
        help="run the demo app (or your own with --app)",
        description="Serve the demo app: /echo, /broadcast, /chat[/<room>], /healthz.",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    serve.add_argument(
        "--port", type=int, default=8765, help="port; 0 picks a free one (default: %(default)s)"
    )
    serve.add_argument(
        "--app",
        metavar="MODULE:FACTORY",
        help="serve the Tornado Application that MODULE.FACTORY() returns",
    )
    serve.add_argument(
        "--origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="also accept WebSocket connections from this Origin (repeatable)",
    )
    serve.add_argument(
        "--max-message-size",
        type=_size,
        default=None,
        metavar="SIZE",
        help="largest incoming message, e.g. 64k or 1m (default: 1m)",
    )
    serve.add_argument(
        "--ping-interval",
        type=float,
        default=None,
        metavar="SECONDS",
        help="keepalive: a ping every SECONDS, close 1011 when its pong is as late (0: "
        "no keepalive; default: 20)",
    )
    serve.add_argument(
        "--compress",
        nargs="?",
        const="context",
        choices=("context", "shared"),
        help="accept permessage-deflate (12-bit windows, level 1): a compressor per "
        "connection (context, the default), or 'shared': each message compressed on its "
        "own, so a broadcast is compressed once for all (server_no_context_takeover)",
    )
    serve.add_argument(
        "--max-outgoing",
        type=_size,
        default=None,
        metavar="SIZE",
        help="bytes that may wait unsent for one client (default: 1m; 0: no bound)",
    )
    serve.add_argument(
        "--slow-consumer",
        choices=["close", "drop"],
        default="close",
        help="over --max-outgoing: close 1008, or drop that client's messages "
        "(default: %(default)s)",
    )
    serve.add_argument(
        "--crowd",
        type=int,
        metavar="N",
        help="a chat room with N members or more in this process announces its joins and "
        "leaves together, once a second (presence_diff; default: 1000)",
    )
    serve.add_argument(
        "--max-connections", type=int, metavar="N", help="open connections (default: no limit)"
    )
    serve.add_argument(
        "--max-connections-per-ip",
        type=int,
        metavar="N",
        help="open connections per client address (default: no limit)",
    )
    serve.add_argument(
        "--broker",
        metavar="URL",
        help="carry rooms between processes through Redis, e.g. redis://127.0.0.1:6379/0, or "
        "through its Sentinels: redis+sentinel://HOST:PORT[,HOST:PORT...]/DB/SERVICE "
        "(needs tornws[redis]); with --app too, unless that app has a registry of its own",
    )
    serve.add_argument(
        "--wait-replicas",
        type=int,
        default=0,
        metavar="N",
        help="with --broker: confirm a numbered publication (the server API, a /live publish) "
        "only once N Redis replicas have it (WAIT, 1 s at most; else it is answered as "
        "unavailable), so that a failover cannot lose it (default: 0, do not wait)",
    )
    serve.add_argument(
        "--api-key",
        metavar="KEY",
        default=os.environ.get("TORNWS_API_KEY"),
        help="enable the HTTP server API under /api, callers sending this key in X-API-Key "
        "(default: $TORNWS_API_KEY; at least 16 characters; prefer the variable: a flag "
        "shows in the process list)",
    )
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="N processes sharing the port (needs --broker: rooms span them)",
    )
    serve.add_argument(
        "--xheaders",
        action="store_true",
        help="behind a proxy: take the client's address from X-Real-IP / X-Forwarded-For",
    )
    serve.add_argument("--certfile", help="serve wss:// and https:// with this certificate chain")
    serve.add_argument("--keyfile", help="the certificate's private key (if not in --certfile)")
    serve.add_argument(
        "--drain-window",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="on SIGTERM/SIGINT, spread the closes over this long (default: %(default)s)",
    )
    serve.add_argument(
        "--drain-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="then wait this long for connections to close (default: %(default)s)",
    )
    serve.add_argument(
        "--restart",
        action="store_true",
        help="close with 1012 (service restart) instead of 1001 (going away) on shutdown",
    )
    serve.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="(default: %(default)s)",
    )
    serve.add_argument(
        "--access-log", action="store_true", help="also log every HTTP request (tornado.access)"
    )
    serve.add_argument(
        "--no-gc-freeze",
        dest="gc_freeze",
        action="store_false",
        help="leave the garbage collector as Python sets it: full passes over every "
        "connection's objects (hundreds of ms at 10,000 connections) instead of over what "
        "is new since the last one (see tornws.heap)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tornws", description="WebSocket server framework on Tornado."
    )
    parser.add_argument("--version", action="version", version=f"tornws {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _add_serve(commands)
    _add_client(commands)
    _add_publish(commands)

    bench = commands.add_parser(
        "bench",
        help="measure tornws, the asyncio version and raw Tornado side by side",
        description="Start each server as its own process pinned to one CPU, drive it with "
        "picows clients pinned to another, and print server CPU per unit with the ratio to "
        "the asyncio version from the same run.",
    )
    bench.add_argument(
        "--quick",
        action="store_true",
        help="small counts (under a minute): checks that every workload runs "
        "and every server answers correctly; no speed threshold",
    )
    bench.add_argument(
        "--rounds",
        type=int,
        default=1,
        metavar="N",
        help="run the whole sequence of subjects N times in turn; each figure is the "
        "median round's, and every round's figure and ratio is shown",
    )
    bench.add_argument(
        "--scale",
        nargs="?",
        type=int,
        const=True,
        default=False,
        metavar="N",
        help="also broadcast to 10,000 receivers (keepalive on), paced, or to N, "
        "spread over source addresses of 127.0.0.0/8; with the server's memory per receiver",
    )
    bench.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    bench.add_argument("--plot", metavar="FILE.png", help="also draw the ratios (matplotlib)")
    bench.add_argument(
        "--only",
        metavar="NAMES",
        help="comma-separated subjects among tornws, raw-tornado (the asyncio "
        "version always runs: it is the baseline)",
    )
    bench.add_argument(
        "--url",
        help="also measure a running server on 127.0.0.1 "
        "that serves /echo and /broadcast, e.g. ws://127.0.0.1:9000",
    )
    bench.add_argument("--pid", type=int, help="the process id of the --url server")
    bench.add_argument(
        "--redis",
        action="store_true",
        help="also broadcast across two tornws processes on one redis-server (needs "
        "redis-server and tornws[redis]): deliveries/s and send → last-receiver latency",
    )
    bench.add_argument(
        "--soak",
        action="store_true",
        help="also a soak: 10,000 idle connections and 300 new ones a second for 90 s, "
        "with a probe's worst echo round trip, the collector's passes over 20 ms (tornws), "
        "RSS growth and open files",
    )
    bench.add_argument(
        "--storm",
        action="store_true",
        help="also a restart under load (needs redis-server): 10,000 chat.json clients, the "
        "server drained with 1012 and replaced; when all are back and resumed, refusals, "
        "lines lost",
    )
    bench.add_argument(
        "--failover",
        action="store_true",
        help="also a Redis failover (needs redis-server): a master, its replica and three "
        "Sentinels on 127.0.0.1, kill -9 of the master under a publisher; the time to the "
        "new master and the confirmed publications lost, with and without WAIT",
    )
    bench.add_argument(
        "--deflate",
        action="store_true",
        help="also permessage-deflate: memory per connection and 1 KiB chat broadcasts on "
        "tornws (a compressor per connection, and shared mode) and the asyncio version",
    )
    bench.add_argument(
        "--allocations",
        action="store_true",
        help="also count heap allocations per broadcast delivery in each server (memray)",
    )
    bench.add_argument(
        "--instructions",
        action="store_true",
        help="also count user-space instructions per paced delivery (valgrind's callgrind) "
        "in tornws (and --floor) at each receiver count: repeatable on a busy machine",
    )
    bench.add_argument(
        "--floor",
        action="store_true",
        help="also the broadcasts on a bare loop of socket.send (no framework): the "
        "floor under any Python server here, and how it grows with the receivers",
    )
    bench.add_argument(
        "--workloads",
        metavar="REGEX",
        help="run only the workloads whose name matches (re.search), e.g. "
        "'broadcast 1000|chat ' for the fan-out lines to 1000",
    )
    bench.add_argument("--name", default="custom", help="the --url server's name in the table")
    bench.add_argument(
        "--asyncio-server",
        metavar="PATH",
        help="the asyncio version's server.py (default: the checkout's)",
    )
    return parser


def _add_client(commands: Any) -> None:
    """``tornws client``'s arguments."""
    client = commands.add_parser(
        "client",
        help="connect to a WebSocket URL; type to send, see what arrives",
        description="Interactive WebSocket client. With stdin not a terminal, sends each "
        "line, prints replies until WAIT quiet seconds, closes, exits 0.",
    )
    client.add_argument("url", type=_ws_url, metavar="URL")
    client.add_argument(
        "--subprotocol",
        action="append",
        default=[],
        metavar="NAME",
        help="offer this subprotocol (repeatable, in order of preference)",
    )
    client.add_argument(
        "--header",
        action="append",
        default=[],
        type=_header,
        metavar="'NAME: VALUE'",
        help="extra request header (repeatable)",
    )
    client.add_argument("--origin", help="send this Origin header")
    client.add_argument("--compress", action="store_true", help="offer permessage-deflate")
    client.add_argument(
        "--cafile", help="for wss://, trust the certificate authorities in this PEM file"
    )
    client.add_argument(
        "--subscribe",
        action="append",
        default=[],
        metavar="CHANNEL",
        help="speak tornws.v1 (/live): subscribe to CHANNEL (repeatable) and print each "
        "publication's data as one JSON line",
    )
    client.add_argument(
        "--publish",
        metavar="CHANNEL",
        help="speak tornws.v1 (/live): publish each stdin line to CHANNEL (JSON if it "
        "parses, else a string) and print its <epoch>:<offset>",
    )
    client.add_argument(
        "--count",
        type=int,
        metavar="N",
        help="with --subscribe: exit 0 after N publications",
    )
    client.add_argument(
        "--wait",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="after end of input, close once no message came for this long (default: %(default)s)",
    )


def _add_publish(commands: Any) -> None:
    """``tornws publish``'s arguments."""
    publish = commands.add_parser(
        "publish",
        help="publish to a channel of the tornws processes on a Redis",
        description="Publish JSON to CHANNEL (or #USER) through the Redis the tornws "
        "processes share (--broker), numbered and kept like theirs; print <epoch>:<offset>. "
        "Without Redis there is no other process to reach: use tornws.Hub in the process.",
    )
    publish.add_argument("channel", metavar="CHANNEL")
    publish.add_argument(
        "data", metavar="JSON", help="the publication's data: any JSON text ('-': read stdin)"
    )
    publish.add_argument(
        "--broker",
        metavar="URL",
        default=os.environ.get("TORNWS_BROKER"),
        help="the tornws processes' Redis, redis://host:port/db or "
        "redis+sentinel://host:port,.../db/service (default: $TORNWS_BROKER)",
    )
    publish.add_argument("--prefix", default="tornws", help="key prefix (default: %(default)s)")
    publish.add_argument(
        "--wait-replicas",
        type=int,
        default=0,
        metavar="N",
        help="return once N Redis replicas have the publication (WAIT, 1 s at most; else "
        "exit 1: it was published, a failover may lose it) (default: 0, do not wait)",
    )


def _publish(args: argparse.Namespace) -> int:
    from .exceptions import BrokerUnavailableError

    if not args.broker:
        raise ConfigError(
            "--broker URL (or TORNWS_BROKER) is required: the tornws processes' Redis"
        )
    from .redis_broker import check_url

    check_url(args.broker, "--broker")
    text = sys.stdin.read() if args.data == "-" else args.data
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"JSON: not JSON ({exc}); quote a string as '\"text\"'") from None
    from .publisher import Publisher

    try:
        with Publisher(args.broker, prefix=args.prefix, replicas=args.wait_replicas) as publisher:
            position = publisher.publish(args.channel, data)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    except BrokerUnavailableError as exc:
        print(f"tornws publish: {exc}", file=sys.stderr)
        return 1
    print(position)
    return 0


def _bench(args: argparse.Namespace) -> int:
    from .bench import main as bench_main

    return bench_main(args)


def _serve(args: argparse.Namespace) -> int:
    from .frames import CloseCode
    from .heap import keep_pauses_short, watch
    from .server import run_workers, serve, ssl_context

    if args.workers < 1:
        raise ConfigError("--workers must be 1 or more")
    if args.workers > 1 and not args.broker:
        raise ConfigError(
            "--workers needs --broker redis://…: without a broker each process would have "
            "rooms of its own, and clients in one room would not see each other"
        )
    if args.workers > 1 and args.port == 0:
        raise ConfigError("--workers needs a fixed --port (the workers share it)")
    who = " [%(process)d]" if args.workers > 1 else ""
    configure_logging(
        args.log_level.upper(),
        "%(asctime)s%(who)s %(levelname)s %(name)s: %(message)s".replace("%(who)s", who),
    )
    if not args.access_log:
        logging.getLogger("tornado.access").setLevel(logging.WARNING)
    app = _build_app(args)
    _apply_settings(app, args)
    server_options: dict[str, Any] = {"xheaders": args.xheaders}
    if args.certfile:
        try:
            server_options["ssl_options"] = ssl_context(args.certfile, args.keyfile)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load --certfile/--keyfile: {exc}") from None
    elif args.keyfile:
        raise ConfigError("--keyfile needs --certfile")
    close_code = CloseCode.SERVICE_RESTART if args.restart else CloseCode.GOING_AWAY
    if args.gc_freeze:  # the app is built: what is alive now lives as long as the process
        keep_pauses_short()
    else:
        watch()  # (pauses still timed, for /metrics)

    def run() -> int:
        try:
            asyncio.run(
                serve(
                    app,
                    args.host,
                    args.port,
                    close_code=close_code,
                    drain_window=args.drain_window,
                    shutdown_timeout=args.drain_timeout,
                    reuse_port=args.workers > 1,
                    **server_options,
                )
            )
        except OSError as exc:  # address in use, permission denied
            raise ConfigError(
                f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}"
            ) from None
        return 0

    if args.workers == 1:
        return run()

    def worker() -> int:
        try:
            return run()
        except ConfigError as exc:
            print(f"tornws serve: {exc}", file=sys.stderr)
            return 2

    return run_workers(args.workers, worker)


def _build_app(args: argparse.Namespace) -> tornado.web.Application:
    """The application ``tornws serve`` runs: ``--app``'s, or the demo app."""
    from .api import api_routes
    from .app import make_app

    if args.api_key and len(args.api_key) < 16:
        raise ConfigError("--api-key: an API key must be at least 16 characters")
    if args.app:
        app = load_app(args.app)
        registry = _registry(args.broker, args.wait_replicas)
        if registry is not None:
            if "tornws.registry" in app.settings:
                raise ConfigError(f"--broker: the --app {args.app} has a registry of its own")
            app.settings["tornws.registry"] = registry
        if args.api_key:
            app.add_handlers(".*", api_routes(args.api_key))
    else:
        options: dict[str, Any] = {"origins": args.origin, "slow_consumer": args.slow_consumer}
        if args.max_message_size is not None:
            options["max_message_size"] = args.max_message_size
        if args.max_outgoing is not None:
            options["max_outgoing"] = args.max_outgoing
        if args.compress == "shared":
            options["compression"] = {"server_no_context_takeover": True}
        elif args.compress:
            options["compression"] = {}
        chat: dict[str, Any] = {}
        if args.crowd is not None:
            if args.crowd < 1:
                raise ConfigError(f"--crowd {args.crowd}: expected 1 or more members")
            chat["crowd"] = args.crowd
        app = make_app(
            registry=_registry(args.broker, args.wait_replicas),
            handler_options=options,
            chat_options=chat,
            api_key=args.api_key,
        )
    return app


def _apply_settings(app: Any, args: argparse.Namespace) -> None:
    """The application settings ``tornws serve``'s flags give: keepalive, connection limits."""
    if args.ping_interval is not None:
        if args.ping_interval < 0:
            raise ConfigError("--ping-interval must be 0 (off) or more seconds")
        app.settings["websocket_ping_interval"] = args.ping_interval
        app.settings["websocket_ping_timeout"] = args.ping_interval
    if args.max_connections is not None:
        app.settings["tornws_max_connections"] = args.max_connections
    if args.max_connections_per_ip is not None:
        app.settings["tornws_max_connections_per_ip"] = args.max_connections_per_ip


def _registry(broker: str | None, replicas: int = 0) -> Any:
    from .registry import Registry

    if not broker:
        if replicas:
            raise ConfigError("--wait-replicas needs --broker: the replicas are Redis's")
        return None
    from .redis_broker import RedisBroker, check_url

    check_url(broker, "--broker")
    try:
        import redis  # noqa: F401
    except ImportError:
        raise ConfigError("--broker needs redis-py: pip install 'tornws[redis]'") from None

    if replicas < 0:
        raise ConfigError(f"--wait-replicas {replicas}: expected 0 or more")
    return Registry(RedisBroker(broker, replicas=replicas))


def _client(args: argparse.Namespace) -> int:
    from .client import run

    headers = list(args.header)
    if args.origin:
        headers.append(("Origin", args.origin))
    if args.subscribe or args.publish:
        from .client import run_live

        return asyncio.run(
            run_live(
                args.url,
                subscribe=args.subscribe,
                publish=args.publish,
                headers=headers,
                cafile=args.cafile,
                count=args.count,
                wait=args.wait,
            )
        )
    return asyncio.run(
        run(
            args.url,
            subprotocols=args.subprotocol,
            headers=headers,
            compress=args.compress,
            cafile=args.cafile,
            wait=args.wait,
        )
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``tornws`` command line; return the exit status."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "bench":
            return _bench(args)
        if args.command == "publish":
            return _publish(args)
        return _client(args)
    except ConfigError as exc:
        print(f"tornws {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

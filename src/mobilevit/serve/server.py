"""Running the app under uvicorn: early validation, graceful shutdown, exit when a model cannot be loaded, and the
connection limits of :mod:`.connections`."""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Callable

from .config import ServeConfig

logger = logging.getLogger(__name__)


def bind(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` (uvicorn listens on it), so that a taken port fails before any model loads.

    Raises:
        OSError: the port is in use, or the address cannot be bound; the message names them.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET  # as uvicorn: an IPv6 address has colons
    # IPPROTO_TCP, not 0: asyncio turns Nagle off (TCP_NODELAY) only on connections of a socket that says it is TCP.
    # Without it every answer waits for the client's delayed ACK: 40 ms per request at concurrency 1.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: a restart need not wait for TIME_WAIT
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        if err.errno == errno.EADDRINUSE:
            raise OSError(f"port {port} on {host} is already in use (choose another with --port)") from None
        raise OSError(f"cannot listen on {host} port {port}: {err.strerror or err}") from None
    return sock


def describe(config: ServeConfig, port: int) -> str:
    """The start-up message: where the server listens and what it serves."""
    host = f"[{config.host}]" if ":" in config.host else config.host
    auth = "bearer token required" if config.token is not None else "no token"
    lines = [f"mobilevit serve: listening on http://{host}:{port} ({auth}; GET /health says when models are ready)"]
    for i, spec in enumerate(config.models):
        if spec.pretrained is True:
            weights = "weights of its entry"
        elif spec.pretrained is False:
            weights = "random weights"
        else:
            weights = str(spec.pretrained)
        route = f"POST /models/{spec.name}" + (" and POST /" if i == 0 else "")
        lines.append(f"  {spec.name}: {config.backend} backend, {weights} ({route})")
    return "\n".join(lines)


def run(config: ServeConfig, log_level: str = "warning", announce: Callable[[str], None] | None = None) -> int:
    """Serve until SIGINT/SIGTERM; return the exit code (1 when a model failed to load).

    The port is bound first, then ``announce`` (the CLI prints to stderr) gets :func:`describe`, then the models load
    in the background. Connections are bounded as :mod:`.connections` describes (``--header-timeout``,
    ``--max-connections``; the soft open-file limit is raised to the hard one first). On SIGTERM uvicorn stops
    accepting connections and waits (up to ``body_timeout + timeout + 5`` s) for the requests in flight; then the app
    answers whatever is still queued and stops its workers. uvicorn then re-raises the signal, so the process ends as
    terminated by SIGTERM (exit status 143 / -15), as a supervisor expects.
    """
    import torch
    import uvicorn

    from .app import create_app
    from .connections import (
        MAX_HEADER_BYTES,
        ConnectionLimits,
        LimitedServer,
        connection_cap,
        open_file_limit,
        protocol_class,
    )

    config.validate_models()
    open_files = open_file_limit()
    limits = ConnectionLimits(
        config.header_timeout, connection_cap(config.max_connections, open_files), config.retry_after, open_files
    )
    sock = bind(config.host, config.port)
    try:
        if config.threads:
            torch.set_num_threads(config.threads)  # eager models; ONNX runtimes get their own (default_loader)
        failure: list[str] = []
        server: uvicorn.Server | None = None

        def fatal(reason: str) -> None:
            failure.append(reason)
            logger.error("stopping: %s", reason)
            if server is not None:
                server.should_exit = True

        app = create_app(config, on_fatal=fatal)
        server = LimitedServer(
            uvicorn.Config(
                app,
                http=protocol_class(limits),
                h11_max_incomplete_event_size=MAX_HEADER_BYTES,
                log_level=log_level,
                access_log=False,
                timeout_graceful_shutdown=int(config.body_timeout + config.timeout) + 5,
                lifespan="on",
            ),
            limits,
        )
        if config.host not in ("127.0.0.1", "localhost", "::1") and config.token is None:
            logger.warning("serving on %s without a token: anyone who can reach this port can use it", config.host)
        if announce is not None:
            announce(describe(config, sock.getsockname()[1]))
        server.run(sockets=[sock])
    finally:
        sock.close()
    return 1 if failure else 0

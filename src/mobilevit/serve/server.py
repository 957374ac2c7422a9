"""Running the app under uvicorn: early validation, graceful shutdown, and exit when a model cannot be loaded."""

from __future__ import annotations

import logging

from .config import ServeConfig

logger = logging.getLogger(__name__)


def run(config: ServeConfig, log_level: str = "warning") -> int:
    """Serve until SIGINT/SIGTERM; return the exit code (1 when a model failed to load).

    On SIGTERM uvicorn stops accepting connections and waits (up to ``timeout + 5`` s) for the requests in flight;
    then the app answers whatever is still queued and stops its workers. uvicorn then re-raises the signal, so the
    process ends as terminated by SIGTERM (exit status 143 / -15), as a supervisor expects.
    """
    import torch
    import uvicorn

    from .app import create_app

    config.validate_models()
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
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=config.host,
            port=config.port,
            log_level=log_level,
            access_log=False,
            timeout_graceful_shutdown=int(config.timeout) + 5,
            lifespan="on",
        )
    )
    if config.host not in ("127.0.0.1", "localhost", "::1") and config.token is None:
        logger.warning("serving on %s without a token: anyone who can reach this port can use it", config.host)
    server.run()
    return 1 if failure else 0

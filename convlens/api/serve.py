"""`convlens serve RUN`: the ASGI app with its limits, and (start=True) the server running it."""

from __future__ import annotations

import sys
from pathlib import Path

from convlens.serve import Limits, create_app
from convlens.serve.server import allowed_hosts as host_names
from convlens.serve.server import run_server


def serve(
    run: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_in_flight: int = 64,
    max_connections: int = 256,
    header_timeout: float = 10.0,
    body_timeout: float = 60.0,
    allowed_hosts: tuple[str, ...] = (),
    engine: str = "auto",
    start: bool = False,
):
    """The app serving RUN (a run folder, weights, .onnx or .pt); start=True serves it on
    host:port until interrupted (the CLI's bounds on connections and timeouts included)."""
    limits = Limits(max_in_flight=max_in_flight, max_connections=max_connections,
                    header_timeout=header_timeout, body_timeout=body_timeout)  # fmt: skip
    graph = str(run).endswith((".onnx", ".pt"))  # an exported graph: no layers to show
    explainer = None if graph else _explainer(run)  # the explainer page (issue 20)
    app = create_app(run, limits, engine=engine, hosts=host_names(host, tuple(allowed_hosts)),
                     explainer=explainer)  # fmt: skip
    if start:
        print(f"serving {run} on http://{host}:{port}/", file=sys.stderr)
        run_server(app, host, port, limits)
    return app


def _explainer(run: str | Path):
    """The explainer page's maker, imported on the first POST /explain: its modules (the report,
    the run's data) take seconds to import, and serve starts as fast without them."""
    made = []

    def make(image, caption: str) -> str:
        if not made:
            from convlens.api.interactive import page_maker

            made.append(page_maker(run))
        return made[0](image, caption)

    return make

"""Running the Abiquo simulator with the product's own runners.

`abiquo_simulator` is a package apart: it imports nothing of ours and has no server runner, only the
ASGI app `create_app` builds. This is where the product serves that app, with the runners of
`servers.py` that serve everything else: `SimulatorServer` in a thread (the tests, the demo) and
`serve_simulator` in the foreground (`abiquo-workflow simulate`).
"""

from __future__ import annotations

import logging
from typing import Final

from abiquo_simulator import Simulator, create_app
from abiquo_workflow.servers import BackgroundServer, http_url, serve_in_foreground

_log = logging.getLogger(__name__)

#: The simulator's app has no start-up or shutdown of its own: its state is built before it is served.
_LIFESPAN: Final = "off"


class SimulatorServer(BackgroundServer):
    """`with SimulatorServer(Simulator()) as server:` (or `async with`) serves the simulator in a thread.

    Inside the block `server.url` (control surface under /_sim, page at /), `server.api_url` (the API)
    and `server.simulator` (the in-process state) are ready; port 0 picks a free port.
    """

    def __init__(self, simulator: Simulator | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.simulator = simulator if simulator is not None else Simulator()
        super().__init__(create_app(self.simulator), host, port, lifespan=_LIFESPAN)

    @property
    def api_url(self) -> str:
        return self.url + "/api"

    def start(self) -> None:
        super().start()
        # A request made in-process with absolute hrefs has no HTTP request to read the address from.
        self.simulator.public_api_url = self.api_url + "/"

    def stop(self) -> None:
        super().stop()
        self.simulator.public_api_url = None


def serve_simulator(host: str, port: int, *, callback_url: str | None, style: str, mode: str) -> None:
    """Serve a fresh simulator in the foreground until Ctrl-C or SIGTERM (`abiquo-workflow simulate`)."""
    simulator = Simulator(callback_url=callback_url, style=style, mode=mode)
    url = http_url(host, port)
    _log.info(
        "Abiquo simulator: page at %s/ , API at %s/api (admin / xabiquo), callbacks to %s",
        url,
        url,
        callback_url or "(none yet: PUT /_sim/settings)",
    )
    serve_in_foreground(create_app(simulator), host, port, timeout_graceful_shutdown=2, lifespan=_LIFESPAN)

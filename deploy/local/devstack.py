"""Where the running local stack is (``make up``): URLs, API key, read-only database URL.

The stack keeps its API key and database passwords in its folder
(``.stack/dev`` by default, ``ENERGY_STACK_DIR`` or ``--stack-dir`` for
another); ``ENERGY_API_KEY``, ``GATEWAY_PORT`` and ``ANALYTICS_PORT`` win
over the folder, as they do for ``deploy/local/stack.py`` itself.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from deploy.local._common import Layout

#: The stack ``make up`` runs.
DEFAULT_LAYOUT = Layout.named("dev")


class StackNotRunning(RuntimeError):
    """The stack does not answer; the message says what to run."""


@dataclass(frozen=True, slots=True)
class DevStack:
    """The endpoints and credentials of one local stack."""

    layout: Layout
    gateway_url: str
    analytics_url: str
    kafka_bootstrap: str
    pg_port: int

    @classmethod
    def locate(cls, root: str | Path | None = None) -> DevStack:
        """The stack in ``root`` (default ``ENERGY_STACK_DIR`` or ``.stack/dev``)."""
        folder = root or os.environ.get("ENERGY_STACK_DIR")
        layout = Layout(Path(folder).absolute()) if folder else DEFAULT_LAYOUT
        gateway_port = _port(layout, "gateway", "GATEWAY_PORT", 8080)
        analytics_port = _port(layout, "analytics", "ANALYTICS_PORT", 8081)
        kafka_port = _port(layout, "kafka", "STACK_KAFKA_PORT", 19092)
        return cls(
            layout=layout,
            gateway_url=f"http://127.0.0.1:{gateway_port}",
            analytics_url=f"http://127.0.0.1:{analytics_port}",
            kafka_bootstrap=f"127.0.0.1:{kafka_port}",
            pg_port=_port(layout, "postgres", "STACK_PG_PORT", 15432),
        )

    def api_key(self) -> str:
        """``ENERGY_API_KEY``, else the key the stack generated. Raises :class:`StackNotRunning`."""
        key = os.environ.get("ENERGY_API_KEY") or _read(self.layout.api_key_file)
        if not key:
            raise StackNotRunning(
                f"no API key: set ENERGY_API_KEY or run `make up` ({self.layout.root})"
            )
        return key

    def reader_url(self, database: str = "energy") -> str:
        """The read-only role's URL (``energy_reader``), password from the stack's secrets."""
        password = _read(self.layout.secret("pg-reader-password"))
        if not password:
            raise StackNotRunning(f"no reader password in {self.layout.secrets}: run `make up`")
        credentials = f"energy_reader:{quote(password, safe='')}"
        return f"postgresql://{credentials}@127.0.0.1:{self.pg_port}/{database}"

    def require_up(self) -> None:
        """Raise :class:`StackNotRunning` unless gateway and analytics are ready."""
        for name, url in (("gateway", self.gateway_url), ("analytics API", self.analytics_url)):
            if not ready(url + "/readyz"):
                raise StackNotRunning(
                    f"the {name} at {url} is not ready; start the stack with `make up` "
                    f"(stack folder {self.layout.root})"
                )


def ready(url: str, timeout_s: float = 3.0) -> bool:
    """Whether GET ``url`` answers 200 now."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 -- loopback
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _port(layout: Layout, component: str, variable: str, default: int) -> int:
    # A running stack records each component's port in run/<name>.port; the
    # environment variable is what `make up` would use for a stopped one.
    recorded = _read(layout.port_file(component))
    if recorded.isdigit():
        return int(recorded)
    raw = os.environ.get(variable, "")
    return int(raw) if raw.isdigit() else default

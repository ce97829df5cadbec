"""The project's Prometheus configuration for processes on loopback ports.

``deploy/prometheus/prometheus.yml`` names each target by its docker-compose
service (``gateway:8080``, ``consumer-meter:9101``, ``kafka:9404``, ...). A
local run (``make up``, the dashboard test) has the same components on
127.0.0.1 ports of its own. `render` keeps the file as it is, comments, jobs,
labels and rule files included, and only rewrites each ``host:port`` target
to ``127.0.0.1:<port of host>``; `write` puts the result, with the rule files
beside it, into a folder Prometheus is then started on.

The module needs nothing but the standard library, so the stack script (which
runs as a plain script) and the tests import the same code.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

#: The project's Prometheus folder: the scrape config and the rule files it names.
PROMETHEUS_DIR = Path(__file__).resolve().parents[1] / "prometheus"
SOURCE = PROMETHEUS_DIR / "prometheus.yml"

#: A quoted ``"host:port"`` in a ``targets:`` list.
_TARGET = re.compile(r"""(["'])([A-Za-z0-9_.-]+):(\d+)\1""")
_INTERVAL = re.compile(r"^(\s*)(scrape_interval|scrape_timeout|evaluation_interval): \S+$", re.M)
_RULE_FILE = re.compile(r"^rule_files:\n((?:\s+- \S+\n)+)", re.M)


class ConfigError(ValueError):
    """The source names a host without a port given, or a port is given for no target."""


def render(ports: Mapping[str, int], *, interval: str | None = None, source: Path = SOURCE) -> str:
    """The text of ``source`` with every target's host replaced by 127.0.0.1:``ports[host]``.

    ``interval`` (e.g. ``"1s"``), if given, replaces the global scrape and rule
    evaluation intervals and the scrape timeout, for a run that cannot wait 15 s
    between samples. Raises `ConfigError` if a target's host is not in ``ports``
    or a host of ``ports`` has no target: every component is scraped, or none.
    """
    text = source.read_text(encoding="utf-8")
    seen: set[str] = set()

    def local(match: re.Match[str]) -> str:
        quote, host = match.group(1), match.group(2)
        if host not in ports:
            raise ConfigError(f"{source.name}: no port given for target host {host!r}")
        seen.add(host)
        return f"{quote}127.0.0.1:{ports[host]}{quote}"

    lines = [
        _TARGET.sub(local, line) if line.lstrip().startswith("- targets:") else line
        for line in text.splitlines(keepends=True)
    ]
    unused = sorted(set(ports) - seen)
    if unused:
        raise ConfigError(f"{source.name} has no target for {', '.join(unused)}")
    text = "".join(lines)
    if interval is not None:
        text = _INTERVAL.sub(lambda m: f"{m.group(1)}{m.group(2)}: {interval}", text)
    header = f"# Generated from {source} with this run's ports; edits are lost.\n"
    return header + text


def rule_files(source: Path = SOURCE) -> list[Path]:
    """The rule files ``source`` loads (``rule_files:``), as paths beside it."""
    found = _RULE_FILE.search(source.read_text(encoding="utf-8"))
    if found is None:
        return []
    names = [line.strip().removeprefix("- ") for line in found.group(1).splitlines()]
    return [source.parent / name for name in names if name]


def write(folder: Path, ports: Mapping[str, int], *, interval: str | None = None) -> Path:
    """Write ``prometheus.yml`` (see `render`) into ``folder``; return its path.

    Each rule file is linked, not copied, beside it (Prometheus reads rule files
    relative to its config), so a reload (SIGHUP) picks up edits of the project's
    rules.
    """
    folder.mkdir(parents=True, exist_ok=True)
    for rules in rule_files():
        link = folder / rules.name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(rules)
    config = folder / "prometheus.yml"
    config.write_text(render(ports, interval=interval), encoding="utf-8")
    return config

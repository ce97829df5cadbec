"""The project's Prometheus configuration for processes on loopback ports.

``deploy/prometheus/prometheus.yml`` names each target by its docker-compose
service (``gateway:8080``, ``consumer-meter:9101``, ``kafka:9404``, ...). A
local run (``make up``, the dashboard test) has the same components on
127.0.0.1 ports of its own. `render` keeps the file as it is, comments, jobs,
labels and rule files included, and only rewrites each ``host:port`` target
to ``127.0.0.1:<port of host>``; `write` puts the result, with the rule files
beside it, into a folder Prometheus is then started on.

For tests only, `write` can also give Prometheus the rule files sped up
(`render_rules`): every duration in them (``for:``, range windows, offsets)
divided by a factor, so that an alert pending for 2 minutes fires after 2 s
and a 5-minute rate forgets a fault after 5 s. Expressions, thresholds, labels
and annotations stay the project's; the local stack never uses it.

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
#: A Prometheus duration (``5m``, ``1h30m``, ``500ms``), and the milliseconds of each unit.
_DURATION = r"(?:\d+(?:ms|[smhdwy]))+"
_UNIT_MS = {
    "ms": 1,
    "s": 1000,
    "m": 60_000,
    "h": 3_600_000,
    "d": 86_400_000,
    "w": 7 * 86_400_000,
    "y": 365 * 86_400_000,
}
#: Where durations occur in a rule file: ``for:``, range selectors (and subqueries), offsets.
_FOR = re.compile(rf"^(\s*(?:for|keep_firing_for):\s*)({_DURATION})[ \t]*$", re.M)
_RANGE = re.compile(rf"\[({_DURATION})(?::({_DURATION})?)?\]")
_OFFSET = re.compile(rf"\b(offset\s+-?)({_DURATION})\b")


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


def render_rules(source: Path, speedup: int) -> str:
    """The rule file ``source`` with every duration divided by ``speedup``. For tests only.

    Durations are the ``for:`` (and ``keep_firing_for:``) of each rule, range
    selectors (``[5m]``, subquery steps too) and ``offset``s: with ``speedup``
    60, a minute of the rules lasts a second. Nothing else changes, comments
    included; numbers that are not durations (``> 7 * 86400`` compared with
    ``time()``) keep their meaning in real seconds. A duration is rounded down
    to the millisecond, never below 1 ms. Raises `ConfigError` if ``speedup``
    is below 1.
    """
    if speedup < 1:
        raise ConfigError(f"speedup must be 1 or more, got {speedup}")

    def scaled(duration: str) -> str:
        ms = sum(int(n) * _UNIT_MS[unit] for n, unit in re.findall(r"(\d+)(ms|[smhdwy])", duration))
        ms = max(ms // speedup, 1)
        # In the largest unit that holds it whole, as a person would write it.
        unit = next(u for u in ("h", "m", "s", "ms") if ms % _UNIT_MS[u] == 0)
        return f"{ms // _UNIT_MS[unit]}{unit}"

    def selector(match: re.Match[str]) -> str:
        window, step = match.group(1), match.group(2)
        if ":" not in match.group(0):
            return f"[{scaled(window)}]"
        return f"[{scaled(window)}:{scaled(step) if step else ''}]"

    text = source.read_text(encoding="utf-8")
    text = _FOR.sub(lambda m: m.group(1) + scaled(m.group(2)), text)
    text = _RANGE.sub(selector, text)
    text = _OFFSET.sub(lambda m: m.group(1) + scaled(m.group(2)), text)
    header = (
        f"# Generated from {source} with every duration divided by {speedup}, for a test"
        " that must see alerts fire and clear within seconds; edits are lost.\n"
    )
    return header + text


def write(
    folder: Path,
    ports: Mapping[str, int],
    *,
    interval: str | None = None,
    rule_speedup: int | None = None,
) -> Path:
    """Write ``prometheus.yml`` (see `render`) into ``folder``; return its path.

    Each rule file is linked, not copied, beside it (Prometheus reads rule files
    relative to its config), so a reload (SIGHUP) picks up edits of the project's
    rules. With ``rule_speedup`` (tests only) each is written sped up instead
    (see `render_rules`).
    """
    folder.mkdir(parents=True, exist_ok=True)
    for rules in rule_files():
        target = folder / rules.name
        if target.is_symlink() or target.exists():
            target.unlink()
        if rule_speedup is None:
            target.symlink_to(rules)
        else:
            target.write_text(render_rules(rules, rule_speedup), encoding="utf-8")
    config = folder / "prometheus.yml"
    config.write_text(render(ports, interval=interval), encoding="utf-8")
    return config

"""Which Kafka and PostgreSQL a session gets: ``TEST_BACKEND``, and the fallbacks without it.

A Docker engine is played by a ``docker`` script on ``PATH`` answering as the
real command does (``docker info``, ``docker image inspect``, ``docker pull``),
so that every case runs whether or not this machine has an engine.
"""

from __future__ import annotations

import re
import stat
from pathlib import Path

import pytest

from deploy.local.services import BackendUnavailable, choose_backend

PULL_REFUSED = 'Error response from daemon: Get "https://registry-1.docker.io/v2/": no such host'


def _engine(tmp_path: Path, *, images: bool, pull: bool) -> str:
    """A ``PATH`` whose ``docker`` answers ``info``, and has or pulls the images as told."""
    script = tmp_path / "docker"
    script.write_text(
        "#!/bin/sh\n"
        'case "$1" in\n'
        "  info) exit 0 ;;\n"
        f"  image) exit {0 if images else 1} ;;\n"
        f"  pull) {'exit 0' if pull else f'echo {PULL_REFUSED!r} >&2; exit 1'} ;;\n"
        "esac\n"
        "exit 2\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return f"{tmp_path}:/usr/bin:/bin"


@pytest.fixture(autouse=True)
def _no_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("TEST_BACKEND", "KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)


def test_without_an_engine_the_local_stack_silently(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no docker command at all
    assert choose_backend("TEST") == "local"
    assert capsys.readouterr().err == ""


def test_an_engine_without_the_images_falls_back_to_local_with_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PATH", _engine(tmp_path, images=False, pull=False))
    assert choose_backend("TEST") == "local"
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    assert "no image apache/kafka:4.1.1" in lines[0]
    assert "no such host" in lines[0]
    assert "TEST_BACKEND=env|testcontainers|local" in lines[0]
    # Asked for explicitly, it is an error saying the same, never a silent substitute.
    monkeypatch.setenv("TEST_BACKEND", "testcontainers")
    with pytest.raises(BackendUnavailable, match=re.escape("no image apache/kafka:4.1.1")):
        choose_backend("TEST")


def test_an_engine_with_the_images_or_a_registry_gets_testcontainers(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", _engine(tmp_path, images=True, pull=False))
    assert choose_backend("TEST") == "testcontainers"
    monkeypatch.setenv("PATH", _engine(tmp_path, images=False, pull=True))
    assert choose_backend("TEST") == "testcontainers"
    # The images are variables: a stand-in is looked for under its own name.
    monkeypatch.setenv("KAFKA_IMAGE", "energy/kafka:local")
    monkeypatch.setenv("PATH", _engine(tmp_path, images=False, pull=False))
    with pytest.raises(BackendUnavailable, match="energy/kafka:local"):
        _ask(monkeypatch, "testcontainers")


def _ask(monkeypatch: pytest.MonkeyPatch, backend: str) -> str:
    monkeypatch.setenv("TEST_BACKEND", backend)
    return choose_backend("TEST")


def test_explicit_choices_and_their_errors(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", _engine(tmp_path, images=True, pull=True))
    assert _ask(monkeypatch, "local") == "local"
    assert _ask(monkeypatch, "LOCAL") == "local"
    with pytest.raises(BackendUnavailable, match="choose one of env, testcontainers, local"):
        _ask(monkeypatch, "docker")
    with pytest.raises(BackendUnavailable, match="needs KAFKA_BOOTSTRAP_SERVERS and DATABASE_URL"):
        _ask(monkeypatch, "env")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9")
    monkeypatch.setenv("DATABASE_URL", "postgresql://x@127.0.0.1:9/x")
    assert _ask(monkeypatch, "env") == "env"
    # Unset, the environment's services come first, whatever the engine has.
    monkeypatch.delenv("TEST_BACKEND")
    assert choose_backend("TEST") == "env"

"""Shared pieces of the local stack: the error type, the stack folder's layout, secrets.

Everything a stack owns lives under one folder (``--dir``); `Layout` is the only
place that knows where each piece goes inside it, so the other modules never build
paths by hand.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

#: The repository root: this file is ``<repo>/deploy/local/_common.py``.
REPO_ROOT = Path(__file__).resolve().parents[2]
VENV_DIR = REPO_ROOT / ".venv"
VENV_PYTHON = VENV_DIR / "bin" / "python"
#: Where the project's stacks live by default, one folder each (``dev``, ``test``, ``bench``).
STACKS_DIR = REPO_ROOT / ".stack"

#: Exit code for a missing prerequisite (tool, free port, venv); 1 means a failure.
EXIT_PREREQ = 2


class StackError(Exception):
    """A failure reported as ONE line ``stack: <message>`` on stderr, then ``exit(code)``.

    ``detail`` (e.g. the tail of a log) is printed after that line, indented, for
    the cases where one line cannot carry the evidence.
    """

    def __init__(self, message: str, *, code: int = 1, detail: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.detail = detail


def say(message: str) -> None:
    """Print one progress line now (flushed, so it is ordered with child output)."""
    print(message, flush=True)


@dataclass(frozen=True)
class Layout:
    """Where each piece of one stack lives; ``root`` is absolute.

    ``pg`` may be a symlink to a folder outside ``root`` (see `_postgres`), so code
    that needs the real location resolves it.
    """

    root: Path

    @classmethod
    def named(cls, name: str) -> Layout:
        """The stack ``name`` in the repository's stacks folder (``.stack/<name>``)."""
        return cls(STACKS_DIR / name)

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def kafka(self) -> Path:
        return self.root / "kafka"

    @property
    def kafka_data(self) -> Path:
        return self.kafka / "data"

    @property
    def kafka_config(self) -> Path:
        return self.kafka / "server.properties"

    @property
    def pg(self) -> Path:
        return self.root / "pg"

    @property
    def pg_data(self) -> Path:
        """The PostgreSQL cluster (``initdb``'s folder) inside ``pg``."""
        return self.pg / "data"

    @property
    def postmaster_pid(self) -> Path:
        """PostgreSQL's own pid file: first line the server's pid, fourth its port."""
        return self.pg_data / "postmaster.pid"

    @property
    def secrets(self) -> Path:
        return self.root / "secrets"

    @property
    def api_key_file(self) -> Path:
        return self.root / "api-key"

    @property
    def lock_file(self) -> Path:
        return self.run / ".lock"

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def pid_file(self, name: str) -> Path:
        return self.run / f"{name}.pid"

    def port_file(self, name: str) -> Path:
        """Records the port a running component was started on (see `status`)."""
        return self.run / f"{name}.port"

    def secret(self, name: str) -> Path:
        return self.secrets / name

    def create(self) -> None:
        """Create the folders every command may write to (not ``pg``: see `_postgres`)."""
        for folder in (self.logs, self.run, self.kafka):
            folder.mkdir(parents=True, exist_ok=True)
        self.secrets.mkdir(mode=0o700, exist_ok=True)
        # mkdir's mode is masked by the umask and ignored for an existing folder.
        self.secrets.chmod(0o700)


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only (mode 600), never wider.

    The file is created with mode 600 rather than chmod-ed afterwards, so the
    secret is never readable by others even for an instant.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    path.chmod(0o600)


def read_or_create_secret(path: Path, *, nbytes: int = 24) -> str:
    """Return the secret stored in ``path``, generating and storing one first if absent.

    Generated values are URL-safe, so they can go into a database URL unescaped.
    """
    if path.exists():
        value = path.read_text(encoding="utf-8").strip()
        if value:
            return value
    value = secrets.token_urlsafe(nbytes)
    write_private(path, value + "\n")
    return value


def tail(path: Path, lines: int = 20) -> str:
    """The last ``lines`` lines of a log file, or a note that there is none yet."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            # Logs can be large; 64 KiB holds far more than 20 lines.
            handle.seek(max(0, size - 65536))
            text = handle.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return f"    ({path} does not exist)"
    return "\n".join("    " + line for line in text.splitlines()[-lines:])


def running_as_root() -> bool:
    """True when this process has root privileges (then PostgreSQL runs as ``postgres``)."""
    return os.geteuid() == 0


def eprint(message: str) -> None:
    """Print to stderr (errors and their evidence)."""
    print(message, file=sys.stderr, flush=True)


def apt_install(package: str, what: str) -> None:
    """Install Debian's ``package`` with apt-get (as root), for ``what`` that needs it.

    Without root or apt-get the missing package is a prerequisite error naming it.
    Raises `StackError` if apt-get fails.
    """
    if not running_as_root() or shutil.which("apt-get") is None:
        raise StackError(
            f"{what} not found, and this script can only install it as root with apt-get: "
            f"install the package {package}",
            code=EXIT_PREREQ,
        )
    say(f"installing {package} from Debian packages (apt-get, once)...")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for argv in (["apt-get", "update"], ["apt-get", "install", "-y", package]):
        if subprocess.run(argv, env=env, check=False).returncode != 0:
            raise StackError(f"`{' '.join(argv)}` failed (see its output above)")

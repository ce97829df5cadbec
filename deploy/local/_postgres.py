"""A PostgreSQL server from Debian's binaries, one per stack, plus the project's roles.

The server refuses to run as root, so when this script runs as root every server
tool (initdb, pg_ctl) runs as the ``postgres`` system user via ``runuser``, and the
server's files belong to that user. That user must be able to reach the files: when
it cannot traverse the stack folder (say, a clone under /root with mode 700), the
server's folder lives under /var/tmp and ``<dir>/pg`` is a symlink to it.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import _procs
from _common import (
    EXIT_PREREQ,
    Layout,
    StackError,
    apt_install,
    read_or_create_secret,
    running_as_root,
    say,
)
from _common import tail as log_tail

NAME = "postgres"
SERVER_USER = "postgres"  # the Debian system user the server runs as when we are root
DATABASE = "energy"
WRITER = "energy_writer"
READER = "energy_reader"
#: Reads the server's statistics for the PostgreSQL exporter (member of pg_monitor), no data.
MONITOR = "energy_monitor"
#: Where the server's files go when SERVER_USER cannot reach the stack folder.
FALLBACK_ROOT = Path("/var/tmp/energy-ingest")  # noqa: S108 (fixed, root-owned, mode 755)
#: A unix socket path longer than this (108 bytes with the NUL) cannot be bound.
_MAX_SOCKET_PATH = 107


def find_bindir() -> Path | None:
    """The ``bin`` folder of the highest PostgreSQL version under /usr/lib/postgresql."""
    found: list[tuple[tuple[int, ...], Path]] = []
    for bindir in Path("/usr/lib/postgresql").glob("*/bin"):
        if (bindir / "pg_ctl").exists() and (bindir / "initdb").exists():
            try:
                version = tuple(int(part) for part in bindir.parent.name.split("."))
            except ValueError:
                continue
            found.append((version, bindir))
    return max(found)[1] if found else None


def ensure_bindir() -> Path:
    """Return the PostgreSQL ``bin`` folder, installing Debian's package if we can.

    Installing needs root and apt-get; without them a missing server is a
    prerequisite error.
    """
    bindir = find_bindir()
    if bindir is not None:
        return bindir
    apt_install("postgresql", "PostgreSQL server binaries (/usr/lib/postgresql/*/bin)")
    bindir = find_bindir()
    if bindir is None:
        raise StackError("apt-get installed postgresql but /usr/lib/postgresql/*/bin is empty")
    return bindir


@dataclass(frozen=True)
class DbUrls:
    """Connection URLs (TCP, password auth) for the database users."""

    admin: str
    writer: str
    reader: str
    monitor: str


def urls(layout: Layout, port: int) -> DbUrls:
    """The URLs for this stack, generating and storing the passwords on first use."""

    def url(user: str, secret_name: str, database: str) -> str:
        password = read_or_create_secret(layout.secret(secret_name))
        return f"postgresql://{user}:{quote(password, safe='')}@127.0.0.1:{port}/{database}"

    return DbUrls(
        admin=url(SERVER_USER, "pg-admin-password", "postgres"),
        writer=url(WRITER, "pg-writer-password", DATABASE),
        reader=url(READER, "pg-reader-password", DATABASE),
        monitor=url(MONITOR, "pg-monitor-password", DATABASE),
    )


def _server_uid() -> tuple[int, int] | None:
    """(uid, gid) of the server's user when we are root, None when we run it ourselves."""
    if not running_as_root():
        return None
    try:
        entry = pwd.getpwnam(SERVER_USER)
    except KeyError:
        raise StackError(
            f"running as root, but there is no '{SERVER_USER}' system user to run "
            "PostgreSQL as (it comes with the postgresql package)",
            code=EXIT_PREREQ,
        ) from None
    return entry.pw_uid, entry.pw_gid


def _as_server_user(argv: list[str]) -> list[str]:
    """Prefix ``argv`` with ``runuser`` when we are root (the server refuses root)."""
    return ["runuser", "-u", SERVER_USER, "--", *argv] if running_as_root() else argv


def _give(path: Path, ids: tuple[int, int] | None, mode: int) -> None:
    """Hand ``path`` to the server's user (when root) with ``mode``."""
    if ids is not None:
        os.chown(path, *ids)
    path.chmod(mode)


def _short_id(layout: Layout) -> str:
    """A stable short id for a stack folder: 12 hex digits of sha1 of its absolute path."""
    return hashlib.sha1(str(layout.root).encode()).hexdigest()[:12]  # noqa: S324 (a name, not security)


def prepare(layout: Layout) -> Path:
    """Create the server's folder (``<dir>/pg`` or its /var/tmp target) and return its real path.

    The choice between an in-place folder and a symlink is made once, when the
    folder is first created. ``logs/postgres.log`` is made a symlink to the server's
    log, which has to live where the server's user can write it.
    """
    ids = _server_uid()
    if not layout.pg.exists():
        if layout.pg.is_symlink():  # target removed (e.g. /var/tmp cleaned): recreate it
            real = Path(os.readlink(layout.pg))
        elif ids is not None and not _server_user_can_traverse(layout.root):
            real = FALLBACK_ROOT / _short_id(layout) / "pg"
            layout.pg.symlink_to(real)
            say(f"postgres: '{SERVER_USER}' cannot traverse {layout.root}; data lives in {real}")
        else:
            real = layout.pg
        for parent in reversed(real.parents):
            if not parent.exists():
                parent.mkdir(mode=0o755)
        real.mkdir(exist_ok=True)
    real = layout.pg.resolve()
    _give(real, ids, 0o700)
    run_dir = socket_dir(layout, real)
    run_dir.mkdir(parents=True, exist_ok=True)
    _give(run_dir, ids, 0o700)
    link = layout.log(NAME)
    if not link.is_symlink():
        link.unlink(missing_ok=True)
        link.symlink_to(Path("..") / "pg" / "postgres.log")
    return real


def _server_user_can_traverse(folder: Path) -> bool:
    """True if the server's user can reach inside ``folder`` (every parent searchable)."""
    check = ["runuser", "-u", SERVER_USER, "--", "test", "-x", str(folder)]
    return subprocess.run(check, check=False, cwd="/").returncode == 0


def socket_dir(layout: Layout, real: Path) -> Path:
    """``<pg>/run``, unless the socket path would be too long for the kernel (deep dirs)."""
    preferred = real / "run"
    if len(f"{preferred}/.s.PGSQL.65535") <= _MAX_SOCKET_PATH:
        return preferred
    return FALLBACK_ROOT / _short_id(layout) / "run"


def initdb_once(bindir: Path, layout: Layout, real: Path) -> None:
    """Create the cluster in ``<pg>/data`` unless it exists (``PG_VERSION`` marks a finished one).

    The superuser password comes from ``secrets/pg-admin-password``; initdb reads it
    from a short-lived file the server's user can read, since ``secrets/`` is
    private to us.
    """
    data = real / "data"
    if (data / "PG_VERSION").exists():
        return
    shutil.rmtree(data, ignore_errors=True)  # remains of an interrupted initdb
    password = read_or_create_secret(layout.secret("pg-admin-password"))
    pwfile = real / ".initdb-pwfile"
    pwfile.write_text(password + "\n", encoding="utf-8")
    _give(pwfile, _server_uid(), 0o600)
    argv = [
        str(bindir / "initdb"),
        "-D",
        str(data),
        "-U",
        SERVER_USER,
        "--auth-local=trust",
        "--auth-host=scram-sha-256",
        f"--pwfile={pwfile}",
        "--encoding=UTF8",
        "--locale=C",
    ]
    try:
        _run_server_tool(argv, "initdb")
    finally:
        pwfile.unlink(missing_ok=True)
    say(f"postgres: initialised {data} ({bindir.parent.name})")


def _run_server_tool(argv: list[str], what: str, log: Path | None = None) -> None:
    """Run a server tool as the server's user; raise with its output if it fails."""
    result = subprocess.run(
        _as_server_user(argv),
        capture_output=True,
        text=True,
        check=False,
        cwd="/",  # the server's user may not be able to enter our working folder
        start_new_session=True,  # so Ctrl-C here cannot reach a postmaster it starts
    )
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip().splitlines()
        detail = "\n".join("    " + line for line in output[-20:])
        if log is not None:
            detail += f"\n    --- {log} ---\n{log_tail(log)}"
        raise StackError(f"{what} failed (exit {result.returncode})", detail=detail)


def _postmaster(layout: Layout) -> tuple[int, int] | None:
    """(pid, port) from the data dir's ``postmaster.pid`` if that server is alive and ours."""
    data = layout.pg.resolve() / "data"
    try:
        lines = (data / "postmaster.pid").read_text(encoding="utf-8").splitlines()
        pid, port = int(lines[0]), int(lines[3])
    except (OSError, ValueError, IndexError):
        return None
    argv = _procs.read_cmdline(pid) if _procs.is_alive(pid) else None
    if argv is None or not argv[0].endswith("/postgres") or str(data) not in argv:
        return None
    return pid, port


def running(layout: Layout) -> tuple[int, int] | None:
    """(pid, port) of this stack's server if it is running; keeps ``run/postgres.pid`` in step."""
    found = _postmaster(layout)
    if found is None:
        layout.pid_file(NAME).unlink(missing_ok=True)
        layout.port_file(NAME).unlink(missing_ok=True)
    return found


def start(bindir: Path, layout: Layout, real: Path, port: int) -> int:
    """Start the server with ``pg_ctl -w`` (returns once it accepts connections); return its pid."""
    options = " ".join(
        [
            "-c listen_addresses=127.0.0.1",
            f"-p {port}",
            # pg_ctl hands -o to a shell, so the path is quoted.
            f"-k {shlex.quote(str(socket_dir(layout, real)))}",
            "-c max_connections=200",
            "-c shared_buffers=256MB",
            "-c synchronous_commit=on",
        ]
    )
    log = real / "postgres.log"
    argv = [
        str(bindir / "pg_ctl"),
        "-D",
        str(real / "data"),
        "-l",
        str(log),
        "-o",
        options,
        "-w",
        "-t",
        "60",
        "start",
    ]
    _run_server_tool(argv, "pg_ctl start", log=log)
    found = _postmaster(layout)
    if found is None:
        raise StackError(f"pg_ctl reported a start but no server is running; see {log}")
    _procs.write_pid(layout.pid_file(NAME), found[0], layout.port_file(NAME), port)
    return found[0]


def stop(layout: Layout) -> int | None:
    """Stop this stack's server with ``pg_ctl stop -m fast`` if running; return its pid."""
    found = running(layout)
    if found is None:
        return None
    argv = _procs.read_cmdline(found[0]) or []
    # Use the pg_ctl that belongs to the running server's version.
    pg_ctl = Path(argv[0]).parent / "pg_ctl" if argv else Path("pg_ctl")
    data = layout.pg.resolve() / "data"
    _run_server_tool(
        [str(pg_ctl), "-D", str(data), "-m", "fast", "-w", "-t", "60", "stop"], "pg_ctl stop"
    )
    layout.pid_file(NAME).unlink(missing_ok=True)
    layout.port_file(NAME).unlink(missing_ok=True)
    return found[0]


def wait_ready(db: DbUrls, layout: Layout, timeout: float = 15.0) -> None:
    """Block until the superuser can log in over TCP (or raise with the server log)."""
    import psycopg

    deadline = time.monotonic() + timeout
    while True:
        try:
            with psycopg.connect(db.admin, connect_timeout=3) as conn:
                conn.execute("SELECT 1")
        except psycopg.OperationalError as exc:
            if time.monotonic() >= deadline:
                raise StackError(
                    f"postgres not accepting connections: {str(exc).strip().splitlines()[0]}",
                    detail=log_tail(layout.log(NAME)),
                ) from None
            time.sleep(0.3)
        else:
            return


def bootstrap(db: DbUrls, layout: Layout) -> None:
    """Create or repair the roles and the ``energy`` database; safe to run on every start.

    Roles are created if missing and their passwords (re)set from ``secrets/``, so
    the files and the server always agree. The monitor role (``pg_monitor``) is
    the PostgreSQL exporter's. The reader is read-only by default; its
    grants are the migrations' (``energy_grant_reader``, sql/0008), applied when they
    run and re-applied here on later starts in case the role was re-created.
    """
    import psycopg
    from psycopg import sql

    with psycopg.connect(db.admin, autocommit=True) as conn:
        logins = (
            (WRITER, "pg-writer-password"),
            (READER, "pg-reader-password"),
            (MONITOR, "pg-monitor-password"),
        )
        for role, secret_name in logins:
            password = read_or_create_secret(layout.secret(secret_name))
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
            conn.execute(
                sql.SQL("{} ROLE {} WITH LOGIN PASSWORD {}").format(
                    sql.SQL("ALTER" if exists else "CREATE"),
                    sql.Identifier(role),
                    sql.Literal(password),
                )
            )
        conn.execute(f"ALTER ROLE {READER} SET default_transaction_read_only = on")
        # pg_monitor reads every statistics view and size function, and no table's rows.
        conn.execute(f"GRANT pg_monitor TO {MONITOR}")
        conn.execute(f"ALTER ROLE {MONITOR} SET default_transaction_read_only = on")
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)).fetchone():
            conn.execute(f"CREATE DATABASE {DATABASE} OWNER {WRITER}")
    energy_admin = db.admin.rsplit("/", 1)[0] + f"/{DATABASE}"
    with psycopg.connect(energy_admin, autocommit=True) as conn:
        # PostgreSQL 15 took CREATE on schema public away from PUBLIC; the writer
        # runs the migrations, so it owns the schema.
        conn.execute(f"ALTER SCHEMA public OWNER TO {WRITER}")
    # As the writer: default privileges are those of the role that creates the tables.
    with psycopg.connect(db.writer, autocommit=True) as conn:
        migrated = conn.execute("SELECT to_regprocedure('energy_grant_reader(name)') IS NOT NULL")
        if migrated.fetchone() == (True,):
            conn.execute("SELECT energy_grant_reader(%s)", (READER,))


def remove_external(layout: Layout) -> None:
    """Delete the /var/tmp folders this stack may use outside its own folder."""
    external = FALLBACK_ROOT / _short_id(layout)
    if external.exists():
        shutil.rmtree(external)

"""A local Label Studio: `anonlab annotate serve` in the foreground, `start_server` for tests.

The server runs in its own process group, serves the artifacts folder as its local-files
document root (tasks point at `/data/local-files/?d=raw/images/...`), and gets its admin user
and API token from the environment: ANONLAB_LS_USERNAME, ANONLAB_LS_PASSWORD and
ANONLAB_LS_TOKEN. They reach Label Studio through its own environment variables, never its
command line (visible to every user in `ps`) and never a log line. Label Studio applies the
user and the token when it creates its database (the first start with a new `data_dir`); later
starts keep them. Open sign-up is off: the login page offers no sign-up, and a new account needs
the organization's invite link.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import requests

from annotation.client import LabelStudio, TokenRefused, jwt_type
from annotation.config import (
    PASSWORD_ENV,
    TOKEN_ENV,
    USERNAME_ENV,
    AnnotationConfig,
    redact_url,
    serve_url,
    url_host,
)
from data.errors import AnonlabError

log = logging.getLogger(__name__)

LOG_FILE = "label-studio.log"
# The first start creates the database (migrations): about a minute on a laptop.
STARTUP_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 20.0
LOG_TAIL_LINES = 30
# Label Studio stores the legacy token in a 40-character column and prints a token of 5
# characters or fewer to its log instead of applying it.
TOKEN_LENGTH = (6, 40)
PR_SET_PDEATHSIG = 1  # linux/prctl.h


@dataclass(frozen=True)
class Credentials:
    """The admin user Label Studio creates, and its API token. Secrets stay out of repr."""

    username: str
    password: str = field(repr=False)
    token: str = field(repr=False)


def credentials_from_env() -> Credentials:
    """The admin credentials from the environment; AnonlabError naming any that are missing."""
    values = {name: os.environ.get(name, "").strip() for name in (USERNAME_ENV, PASSWORD_ENV)}
    values[TOKEN_ENV] = os.environ.get(TOKEN_ENV, "").strip()
    missing = [name for name, value in values.items() if not value]
    if missing:
        raise AnonlabError(
            f"{', '.join(missing)} not set: `anonlab annotate serve` creates its admin user "
            f"from {USERNAME_ENV} (an e-mail address) and {PASSWORD_ENV}, and its API token "
            f'from {TOKEN_ENV} (6 to 40 characters, e.g. `python -c "import secrets; '
            'print(secrets.token_hex(20))"`). Set them in the environment, never in params.yaml'
        )
    return Credentials(values[USERNAME_ENV], values[PASSWORD_ENV], values[TOKEN_ENV])


@dataclass
class RunningServer:
    """A Label Studio process started by `start_server`; `stop()` ends its process group."""

    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            log.warning("Label Studio did not stop within %.0f s; killing it", STOP_TIMEOUT_S)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def wait(self) -> int:
        """Block until the server exits; its exit status."""
        return self.process.wait()

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_server(
    host: str,
    port: int,
    data_dir: Path,
    document_root: Path,
    username: str,
    password: str,
    token: str,
    *,
    timeout_s: float = STARTUP_TIMEOUT_S,
) -> RunningServer:
    """Start Label Studio at http://host:port and return once it answers `/health`.

    `data_dir` holds its database, uploads and the log (`label-studio.log`); `document_root`
    is the folder `/data/local-files/?d=<relative path>` serves from. `token` becomes the
    admin's legacy API token when the database is created; a personal access token (a JWT) is
    not a legacy token and is left to the server. Raises AnonlabError, with the end of the
    log, when the server exits or is not ready within `timeout_s`.
    """
    if _port_in_use(host, port):
        raise AnonlabError(
            f"{host}:{port} is already in use: is Label Studio already running there? Stop it "
            "or choose another port (annotation.serve.port=8081)"
        )
    data_dir = Path(data_dir).resolve()
    document_root = Path(document_root).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    document_root.mkdir(parents=True, exist_ok=True)
    env = _server_env(data_dir, document_root, username, password, token)
    log_path = data_dir / LOG_FILE
    with log_path.open("ab") as log_file:
        process = subprocess.Popen(
            [
                *_label_studio_command(),
                "start",
                "--no-browser",
                "--internal-host",
                host,
                "--port",
                str(port),
                "--data-dir",
                str(data_dir),
                "--enable-legacy-api-token",
            ],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            # Its own process group, so that stop() also ends the workers it spawns, and a
            # Ctrl-C in the terminal reaches it only through us.
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
    server = RunningServer(f"http://{url_host(host)}:{port}", process, log_path)
    try:
        _wait_healthy(server, timeout_s)
    except BaseException:
        server.stop()
        raise
    return server


def serve(cfg: AnnotationConfig, root: Path, artifacts: Path) -> int:
    """`anonlab annotate serve`: run Label Studio in the foreground until Ctrl-C.

    Its database lives in `annotation.serve.data_dir` (relative to the project root); the
    artifacts folder is its document root for local files. Returns the exit status.
    """
    creds = credentials_from_env()
    s = cfg.serve
    data_dir = (root / s.data_dir).resolve()
    first_start = not any(data_dir.glob("*.sqlite3"))
    log.info(
        "starting Label Studio at %s (data in %s%s; log in %s)",
        serve_url(s),
        data_dir,
        ", first start: creating the database takes a minute or two" if first_start else "",
        data_dir / LOG_FILE,
    )
    server = start_server(
        s.host,
        s.port,
        data_dir,
        artifacts,
        creds.username,
        creds.password,
        creds.token,
    )
    try:
        log.info(
            "Label Studio is ready at %s: log in as %s; stop it with Ctrl-C",
            server.url,
            creds.username,
        )
        if cfg.url.rstrip("/") != server.url:
            log.warning(
                "annotation.url is %s: push, pull and status talk to it, not to this server; "
                "unset it (annotation.url=null) to use this one",
                redact_url(cfg.url),
            )
        _check_token(server.url, creds.token, cfg)
        status = server.wait()
    except KeyboardInterrupt:
        log.info("stopping Label Studio")
        server.stop()
        return 0
    finally:
        server.stop()
    if status != 0:
        raise AnonlabError(
            f"Label Studio exited with status {status}; see {server.log_path}:\n"
            f"{_log_tail(server.log_path)}"
        )
    return 0


def _check_token(url: str, token: str, cfg: AnnotationConfig) -> None:
    """Warn when ANONLAB_LS_TOKEN is not this server's token (it was set at its first start)."""
    client = LabelStudio(url, token, timeout_s=cfg.timeout_s, retries=cfg.retries)
    try:
        client.request("GET", "/api/projects", params={"page_size": 1})
    except TokenRefused:
        log.warning(
            "this server refuses the token in %s: Label Studio applies it only when it creates "
            "its database. Use the token shown under Account & Settings, or start from an empty "
            "annotation.serve.data_dir",
            TOKEN_ENV,
        )
    except AnonlabError as e:  # the server is up; a failed check must not stop it
        log.debug("token check failed: %s", e)
    finally:
        client.close()


def _server_env(
    data_dir: Path, document_root: Path, username: str, password: str, token: str
) -> dict[str, str]:
    if not username or not password:
        raise AnonlabError(
            f"Label Studio needs an admin user: set {USERNAME_ENV} and {PASSWORD_ENV}"
        )
    is_jwt = jwt_type(token) is not None
    if not is_jwt and not TOKEN_LENGTH[0] <= len(token) <= TOKEN_LENGTH[1]:
        raise AnonlabError(
            f"{TOKEN_ENV} must be {TOKEN_LENGTH[0]} to {TOKEN_LENGTH[1]} characters long to "
            f"become Label Studio's legacy API token (it has {len(token)}); e.g. "
            '`python -c "import secrets; print(secrets.token_hex(20))"`'
        )
    # Our own secrets stay with us; Label Studio gets them under its own names.
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANONLAB_LS_")}
    env.update(
        LABEL_STUDIO_BASE_DATA_DIR=str(data_dir),
        LABEL_STUDIO_USERNAME=username,
        LABEL_STUDIO_PASSWORD=password,
        LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED="true",
        LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=str(document_root),
        LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN="true",
        # No open sign-up: the admin above is created from the environment, not the form, and
        # further users need an invite link from the organization page.
        LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK="true",
        # Relative URLs in tasks and pages (a stray HOST in the environment would set it).
        LABEL_STUDIO_HOST="",
        # Otherwise every start asks pypi.org for a newer version.
        LATEST_VERSION_CHECK="false",
        COLLECT_ANALYTICS="false",
        PYTHONUNBUFFERED="1",
    )
    if is_jwt:
        env.pop("LABEL_STUDIO_USER_TOKEN", None)
    else:
        env["LABEL_STUDIO_USER_TOKEN"] = token
    return env


def _die_with_parent() -> None:
    """In the child: end Label Studio when the process that started it dies, even by SIGKILL.

    Its own session shields it from the terminal's signals, so without this a killed `anonlab`
    (or test run) would leave an orphaned server holding the port. Linux only.
    """
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _label_studio_command() -> list[str]:
    """`label-studio` from this Python's environment, so that the venv's version runs."""
    script = Path(sys.executable).parent / "label-studio"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "label_studio.server"]


def _wait_healthy(server: RunningServer, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        status = server.process.poll()
        if status is not None:
            raise AnonlabError(
                f"Label Studio exited with status {status} while starting; see "
                f"{server.log_path}:\n{_log_tail(server.log_path)}"
            )
        try:
            if requests.get(server.url + "/health", timeout=2).status_code == 200:
                log.debug("Label Studio answers at %s", server.url)
                return
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            raise AnonlabError(
                f"Label Studio did not answer {server.url}/health within {timeout_s:.0f} s; "
                f"see {server.log_path}:\n{_log_tail(server.log_path)}"
            )
        time.sleep(1.0)


def _log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.settimeout(1.0)
        return s.connect_ex((host, port)) == 0

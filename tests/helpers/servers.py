"""Real tracking servers for the integration tests: PostgreSQL (Debian's package) and `mlflow server`.

PostgreSQL runs from a throw-away data folder on a free loopback port, as the `postgres` user when
the tests run as root (initdb refuses root). Each MLflow server uses a database of its own on it and
proxies artifacts (--serve-artifacts) into a temporary folder, like a production set-up with an
object store. Everything started here is stopped by the fixtures in conftest.py.
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from helpers import use_every_cpu

AUTH_ADMIN_PASSWORD = "Adm1n-S3cret-7f3c9e"  # distinctive, so a test can grep for leaks

PG_USER = "postgres"
PG_PASSWORD = "pg-test-secret"  # loopback only, a throw-away cluster
# No background job runners (seven extra Python processes the tests never use); the auth app's CSRF key.
SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-only-csrf-key"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def postgres_bin() -> Path:
    """The folder of initdb/pg_ctl: Debian's package, installed with apt-get when absent (CI machines)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found and shutil.which("initdb"):
        return Path(shutil.which("initdb")).parent
    if not found:
        sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
        env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(sudo + ["apt-get", "update", "-q"], check=True, env=env, capture_output=True)
        subprocess.run(sudo + ["apt-get", "install", "-y", "-q", "--no-install-recommends", "postgresql"],
                       check=True, env=env, capture_output=True)
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise RuntimeError("PostgreSQL is not installed and `apt-get install postgresql` did not provide initdb")
    return Path(found[-1]).parent


def _as_db_owner(command: list[str]) -> list[str]:
    """initdb and postgres refuse to run as root: run them as the `postgres` user then."""
    return ["runuser", "-u", PG_USER, "--", *command] if os.geteuid() == 0 else command


@dataclass
class Postgres:
    """A private PostgreSQL cluster on 127.0.0.1:<port>."""

    root: Path
    port: int = field(default_factory=free_port)
    bin: Path = field(default_factory=postgres_bin)

    @property
    def data(self) -> Path:
        return self.root / "data"

    def start(self) -> Postgres:
        self.root.mkdir(parents=True, exist_ok=True)
        pwfile = self.root / "pwfile"
        pwfile.write_text(PG_PASSWORD + "\n")
        if os.geteuid() == 0:  # the postgres user must own (and reach) its folder
            owner = pwd.getpwnam(PG_USER)
            for path in (self.root, pwfile):
                os.chown(path, owner.pw_uid, owner.pw_gid)
        subprocess.run(_as_db_owner([str(self.bin / "initdb"), "-D", str(self.data), "-U", PG_USER,
                                     "--pwfile", str(pwfile), "--auth=scram-sha-256", "-E", "UTF8",
                                     "--no-sync"]), check=True, capture_output=True)
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories='' -c fsync=off"
        subprocess.run(_as_db_owner([str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", options,
                                     "-l", str(self.root / "postgres.log"), "-w", "-t", "60", "start"]),
                       check=True, capture_output=True, preexec_fn=use_every_cpu)
        return self

    def stop(self) -> None:
        subprocess.run(_as_db_owner([str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"]),
                       capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)

    def create_database(self, name: str) -> str:
        """CREATE DATABASE name; returns its SQLAlchemy URI (what --backend-store-uri takes)."""
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user=PG_USER, password=PG_PASSWORD,
                                dbname="postgres")
        conn.autocommit = True
        with conn.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}"')
        conn.close()
        return f"postgresql+psycopg2://{PG_USER}:{PG_PASSWORD}@127.0.0.1:{self.port}/{name}"


@dataclass
class MlflowServer:
    """`mlflow server` on PostgreSQL with proxied artifacts; stop() and start() again keep the same port."""

    backend_uri: str
    root: Path
    port: int = field(default_factory=free_port)
    app_name: str | None = None          # "basic-auth" for the authenticated server
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen | None = None
    startup_seconds: float = 0.0

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 600.0) -> MlflowServer:
        self.root.mkdir(parents=True, exist_ok=True)
        command = [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", self.backend_uri,
                   "--artifacts-destination", str(self.root / "artifacts"), "--serve-artifacts",
                   "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
        if self.app_name:
            command += ["--app-name", self.app_name]
        began = time.monotonic()
        log = open(self.root / "server.log", "ab")
        env = os.environ | SERVER_ENV | self.env
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=self.root,
                                        env=env, start_new_session=True, preexec_fn=use_every_cpu)
        log.close()
        while time.monotonic() - began < timeout:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {self.process.returncode}:\n{self.log_tail()}")
            if self.healthy():
                self.startup_seconds = time.monotonic() - began
                return self
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"mlflow server did not answer /health in {timeout:.0f}s:\n{self.log_tail()}")

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def stop(self) -> None:
        """Stop the server and its workers (its own process group); the port is free afterwards."""
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def crash(self) -> None:
        """SIGKILL the server and its workers at once: an outage, not a clean shutdown."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def log_tail(self, chars: int = 3000) -> str:
        path = self.root / "server.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""


def auth_config(folder: Path, database_uri: str, admin_password: str) -> Path:
    """The basic-auth app's ini (MLFLOW_AUTH_CONFIG_PATH): users in PostgreSQL, the admin's password set."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "basic_auth.ini"
    path.write_text("[mlflow]\ndefault_permission = READ\n"
                    f"database_uri = {database_uri}\nadmin_username = admin\nadmin_password = {admin_password}\n"
                    "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    return path


def scratch_folder(prefix: str) -> Path:
    """A folder under the system temp dir that the postgres user can reach (pytest's tmp is 0700)."""
    return Path(tempfile.mkdtemp(prefix=prefix))


@contextmanager
def served_model(model_uri: str, store: str, cwd: Path, timeout: float = 180,
                 env: dict[str, str] | None = None) -> Iterator[str]:
    """`mlflow models serve -m MODEL_URI --env-manager local` on a free port (with `env` added to its
    environment); yields its base URL. Its output goes to `cwd/serve-<port>.log`."""
    port = free_port()
    log = open(cwd / f"serve-{port}.log", "ab")
    env = os.environ | (env or {}) | {"MLFLOW_TRACKING_URI": store, "MLFLOW_REGISTRY_URI": store,
                                      "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    process = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m", model_uri,
                                "--env-manager", "local", "--host", "127.0.0.1", "-p", str(port), "-w", "1"],
                               cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{url}/ping", timeout=2):
                    break
            except (urllib.error.URLError, ConnectionError, OSError):
                if process.poll() is not None or time.monotonic() > deadline:
                    tail = (cwd / f"serve-{port}.log").read_text()[-3000:]
                    raise RuntimeError(f"mlflow models serve did not come up: {tail}") from None
                time.sleep(0.5)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
        log.close()


def invoke(url: str, payload: dict) -> dict:
    """POST a JSON payload to the served model's /invocations; the decoded answer."""
    import json

    request = urllib.request.Request(f"{url}/invocations", data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())

"""A remote tracking server: probe it before any run, keep training when it goes away mid-run.

MLflow's client already retries each HTTP call with backoff (MLFLOW_HTTP_REQUEST_MAX_RETRIES,
MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR, MLFLOW_HTTP_REQUEST_TIMEOUT). That is right for the calls between
stages, but a per-epoch metric must not stall training for minutes: metrics are tried once, quickly,
and kept in a buffer when the server does not answer; the buffer is delivered (patiently) before the
run ends, or written to a local file named in the error.
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from sparsify_mlflow.errors import TrackingError
from sparsify_mlflow.ui_view import VIEW_ID

# Connecting must be quick (a dead or firewalled host), answering may be slow (a busy server; the
# basic-auth app hashes the password on every request).
PROBE_TIMEOUT_SECONDS = (10, 120)   # (connect, read)
QUICK_TIMEOUT_SECONDS = 30          # per-epoch metric attempts while the server may be away
CREDENTIAL_VARS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")


def is_http(uri: str) -> bool:
    return urlsplit(uri).scheme in ("http", "https")


def redact_uri(uri: str) -> str:
    """The URI without a password (http://user:pw@host, postgresql://user:pw@host/db): safe to print and log."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def probe(uri: str) -> None:
    """One short request with the user's credentials, no retries: unreachable or refused -> one line."""
    from mlflow.exceptions import MlflowException
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    shown = redact_uri(uri)
    try:
        response = http_request(get_default_host_creds(uri), "/api/2.0/mlflow/experiments/search", "POST",
                                json={"max_results": 1}, max_retries=0, timeout=PROBE_TIMEOUT_SECONDS,
                                raise_on_status=False)
    except MlflowException as exc:
        raise TrackingError(f"MLflow tracking server {shown} is unreachable ({_root_cause(exc)}); check "
                            "--tracking-uri / MLFLOW_TRACKING_URI and that the server is running") from None
    if response.status_code == 401:
        raise TrackingError(f"MLflow tracking server {shown} refused the credentials (HTTP 401); check "
                            "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD")
    if response.status_code == 403:
        raise TrackingError(f"MLflow tracking server {shown}: user {os.environ.get('MLFLOW_TRACKING_USERNAME')!r} "
                            "may not read experiments (HTTP 403); ask an admin for permissions")
    if response.status_code != 200:
        raise TrackingError(f"MLflow tracking server {shown} answered HTTP {response.status_code} to a "
                            f"search request; is it an MLflow tracking server?")


def _root_cause(exc: BaseException) -> str:
    """The innermost 'Connection refused' / 'timed out' of a requests/urllib3 error, in a few words."""
    text = str(exc)
    for marker in ("Connection refused", "Name or service not known", "timed out", "No route to host",
                   "Temporary failure in name resolution", "certificate verify failed"):
        if marker in text:
            return marker.lower()
    return text.strip().splitlines()[0][:200] if text.strip() else type(exc).__name__


def is_unreachable(exc: BaseException) -> bool:
    """Whether an error means the tracking server did not answer (as opposed to refusing a request)."""
    import requests

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, (requests.exceptions.ConnectionError, requests.exceptions.Timeout)):
            return True
        text = str(seen)
        if "API request to" in text and ("Max retries exceeded" in text or "failed with exception" in text):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


@contextmanager
def quick_requests() -> Iterator[None]:
    """MLflow HTTP calls inside fail after one short attempt instead of minutes of retries."""
    saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ.update(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT=str(QUICK_TIMEOUT_SECONDS))
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@dataclass
class _Pending:
    run_id: str
    metrics: dict[str, float]
    step: int
    timestamp_ms: int


@dataclass
class MetricBuffer:
    """Metrics that could not be delivered yet, oldest first; delivered in order once the server answers."""

    pending: list[_Pending] = field(default_factory=list)
    spill_dir: Path | None = None      # where undelivered metrics are written if the server never returns
    warned: bool = False

    def log(self, run_id: str, metrics: dict[str, float], step: int | None) -> None:
        """Deliver now if the server answers at once; otherwise keep for later and carry on."""
        item = _Pending(run_id, metrics, step or 0, int(time.time() * 1000))
        if self.pending and not self._deliver_quickly():
            self.pending.append(item)
            return
        try:
            with quick_requests():
                _send(item)
        except Exception as exc:
            if not is_unreachable(exc):
                raise
            self.pending.append(item)
            if not self.warned:
                self.warned = True
                print(f"warning: the tracking server does not answer ({_root_cause(exc)}); training goes on, "
                      "metrics are buffered and delivered when it is back", flush=True)

    def _deliver_quickly(self) -> bool:
        count = len(self.pending)
        try:
            with quick_requests():
                self._drain()
        except Exception as exc:
            if not is_unreachable(exc):
                raise
            return False
        self._back(count)
        return True

    def _back(self, count: int) -> None:
        print(f"Tracking server is back: delivered {count} buffered metric records.", flush=True)
        self.warned = False

    def _drain(self) -> None:
        while self.pending:
            _send(self.pending[0])
            self.pending.pop(0)

    def flush(self) -> None:
        """Deliver everything, with MLflow's retries and backoff; if the server stays away, write the
        metrics to <spill_dir>/undelivered_metrics.jsonl and raise a TrackingError naming it."""
        if not self.pending:
            return
        count = len(self.pending)
        try:
            self._drain()
        except Exception as exc:
            if not is_unreachable(exc):
                raise
            path = self.spill()
            raise TrackingError(f"the tracking server did not come back ({_root_cause(exc)}): {len(self.pending)} "
                                f"metric records not delivered, kept in {path}") from None
        self._back(count)

    def spill(self) -> Path:
        folder = self.spill_dir or Path.cwd()
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "undelivered_metrics.jsonl"
        with path.open("a") as out:
            for item in self.pending:
                out.write(json.dumps(vars(item)) + "\n")
        return path


def _send(item: _Pending) -> None:
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    MlflowClient().log_batch(item.run_id, metrics=[Metric(k, float(v), item.timestamp_ms, item.step)
                                                   for k, v in item.metrics.items()], synchronous=True)


BUFFER = MetricBuffer()


# MLflow 3.17's UI opens in its GenAI workflow unless the browser chose "Model training" once: runs are
# then listed as evaluations ("Evaluations" above a run). A link with this query opens the training view.
UI_TRAINING_VIEW = "workflowType=machine_learning"


def ui_link(server: str, experiment_id: str, run_id: str | None = None) -> str:
    """The MLflow UI's page of an experiment's runs (or of one run), in the model-training view, the runs
    list with the headline columns; the server's credentials are left out (the browser asks for them)."""
    parts = urlsplit(server)
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    netloc += f":{parts.port}" if parts.port else ""
    base = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
    if run_id:
        return f"{base}/#/experiments/{experiment_id}/runs/{run_id}?{UI_TRAINING_VIEW}"
    # the runs list in the saved view with the headline metrics as columns (ui_view.py)
    return f"{base}/#/experiments/{experiment_id}/runs?{UI_TRAINING_VIEW}&viewStateShareKey={VIEW_ID}"

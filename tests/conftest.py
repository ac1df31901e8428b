"""Shared fixtures: tiny real datasets, a private MLflow store per test, no network."""
from __future__ import annotations

import os
from pathlib import Path


def _pin_xdist_worker() -> None:
    """Give each xdist worker its own share of the CPUs, before numpy/torch start their threads.

    Unpinned, every worker's torch and DeepSparse use all cores, so two workers on 2 cores run 4+
    spinning threads, and torch's OpenMP regions wait for descheduled threads. Child processes
    (`mlflow run`, the console script) inherit the mask; the engines size their pools from it.
    """
    worker, count = os.environ.get("PYTEST_XDIST_WORKER", ""), int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if not worker.startswith("gw") or count < 2 or not hasattr(os, "sched_setaffinity"):
        return
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) >= count:
        os.sched_setaffinity(0, set(cpus[int(worker[2:]) % count::count]))


_pin_xdist_worker()


import pytest  # noqa: E402

from helpers.data import make_image_folder  # noqa: E402 - numpy after the pinning, which must precede its threads

os.environ.setdefault("NM_DISABLE_ANALYTICS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "images")


@pytest.fixture
def store(tmp_path: Path) -> str:
    """A private sqlite MLflow store for one test."""
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local model folder: a 2-layer, 128-wide BERT (random weights) with the packaged MiniLM's
    tokenizer. NLP end-to-end tests that check plumbing rather than accuracy run it through the
    same code as MiniLM (BERT family, QAT modification, distillation) in a fraction of the time."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from sparsify_mlflow.usecases.nlp.transformers_models import packaged_minilm

    folder = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(str(packaged_minilm()))
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=128, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=512)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


# --- Real tracking servers for the integration tests (tests/servers.py), shared by the session ---

@pytest.fixture(scope="session")
def postgres():
    """A private PostgreSQL cluster on loopback (Debian's package, apt-installed when absent)."""
    from helpers.servers import Postgres, scratch_folder

    cluster = Postgres(scratch_folder("sparsify-it-pg-"))
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def backend_store_uri(postgres) -> str:
    """One migrated MLflow database; both servers use it, so the schema migrations run once."""
    return postgres.create_database("mlflow")


@pytest.fixture(scope="session")
def tracking_server(backend_store_uri):
    """`mlflow server` on PostgreSQL with proxied artifacts (--serve-artifacts)."""
    import shutil

    from helpers.servers import MlflowServer, scratch_folder

    server = MlflowServer(backend_store_uri, scratch_folder("sparsify-it-mlflow-"))
    try:
        yield server.start()
    finally:
        server.stop()
        shutil.rmtree(server.root, ignore_errors=True)




@pytest.fixture(scope="session")
def auth_server(postgres, backend_store_uri):
    """The same store behind MLflow's basic-auth app; users live in PostgreSQL too."""
    import shutil

    from helpers.servers import AUTH_ADMIN_PASSWORD, MlflowServer, auth_config, scratch_folder

    root = scratch_folder("sparsify-it-auth-")
    config = auth_config(root / "config", postgres.create_database("mlflow_users"), AUTH_ADMIN_PASSWORD)
    server = MlflowServer(backend_store_uri, root, app_name="basic-auth", env={"MLFLOW_AUTH_CONFIG_PATH": str(config)})
    try:
        yield server.start()
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)

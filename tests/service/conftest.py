"""Real HTTP: uvicorn serving the app on a free loopback port, httpx as the client.

The model is the committed demo bundle (models/demo), the data a small synthetic
split generated here; nothing is downloaded.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn

from indexer.items import ImageItem, TextItem
from service.app import create_app
from service.config import DEMO_MODEL, Settings
from service.engine import Engine
from training.datasets import CaptionedImage, read_dataset
from training.synth import generate

MODEL = Path(os.environ.get("FINESEARCH_TEST_MODEL", DEMO_MODEL))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    url: str
    engine: Engine
    settings: Settings
    server: uvicorn.Server
    thread: threading.Thread

    def client(self, **kw: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60, **kw)  # type: ignore[arg-type]

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.engine.close()


def start_server(settings: Settings) -> Server:
    engine = Engine(settings)
    port = free_port()
    config = uvicorn.Config(create_app(settings, engine), host="127.0.0.1", port=port, log_level="warning",
                            lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    return Server(f"http://127.0.0.1:{port}", engine, settings, server, thread)


@pytest.fixture(scope="session")
def model_dir() -> Path:
    if not (MODEL / "config.json").is_file():
        pytest.fail(f"the demo model bundle is missing at {MODEL}; it is committed with the repo (make demo-model)")
    return MODEL


@pytest.fixture(scope="session")
def synth(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[CaptionedImage]]:
    root = tmp_path_factory.mktemp("synth")
    generate(root, seed=11, train=0, val=0, test=60)
    return root, read_dataset(root / "dataset.json", "karpathy", "test")


def index_synth(engine: Engine, root: Path, items: list[CaptionedImage]) -> None:
    engine.indexer.index_images([ImageItem(path=root / "images" / it.filename, id=it.image_id,
                                           metadata={"layout": it.metadata["meta_layout"], "n": int(it.image_id)})
                                 for it in items])
    engine.indexer.index_texts([TextItem(c, id=f"{it.image_id}#{k}", image_id=it.image_id)
                                for it in items for k, c in enumerate(it.captions)])


LIMITS = {"max_body_bytes": 2_000_000, "max_files": 4, "max_image_bytes": 1_000_000, "max_text_chars": 200,
          "max_archive_bytes": 5_000_000, "max_archive_files": 200}


@pytest.fixture(scope="session")
def server(model_dir: Path, synth: tuple[Path, list[CaptionedImage]],
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(Settings(model=model_dir, data_dir=tmp_path_factory.mktemp("data"), **LIMITS))  # type: ignore[arg-type]
    index_synth(srv.engine, *synth)
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def qdrant_server(model_dir: Path, synth: tuple[Path, list[CaptionedImage]],
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Server mode with the prepared features on the Qdrant points (qdrant-client's own in-process Qdrant)."""
    srv = start_server(Settings(model=model_dir, data_dir=tmp_path_factory.mktemp("data-q"), qdrant_url=":memory:",
                                features="qdrant", **LIMITS))  # type: ignore[arg-type]
    index_synth(srv.engine, *synth)
    yield srv
    srv.stop()


@pytest.fixture()
def client(server: Server) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c

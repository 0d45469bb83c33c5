"""`finesearch serve` and `finesearch demo`."""

from __future__ import annotations

import argparse
import asyncio
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from training.cli_args import add_device_arg
from training.datasets import read_dataset
from training.model.defaults import DEMO_BUNDLE

from .config import Settings

if TYPE_CHECKING:  # torch, uvicorn and FastAPI come with these: imported when a command runs, not for `--help`
    from .engine import Engine


def register(sub: Any) -> None:
    p = sub.add_parser("serve", help="serve the REST API and the web page")
    _server_args(p)
    p.add_argument("--workers", type=int, default=1, help="uvicorn worker processes (more than 1 needs --qdrant-url)")
    p.set_defaults(func=cmd_serve)

    d = sub.add_parser("demo", help="offline demo: synthetic data, indexed, served with the web page")
    _server_args(d)
    d.add_argument("--synth-dir", type=Path, default=None, help="default: DATA_DIR/synth")
    d.add_argument("--no-serve", action="store_true", help="only generate and index the demo data (compose's indexer)")
    d.set_defaults(func=cmd_demo)


def _server_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path, default=None,
                   help="model bundle (default: FINESEARCH_MODEL, else the demo bundle "
                        f"{DEMO_BUNDLE.parent.name}/{DEMO_BUNDLE.name})")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="embedded store, token bank and blobs (default: FINESEARCH_DATA_DIR, else ./data)")
    p.add_argument("--qdrant-url", default=None,
                   help="Qdrant server instead of the embedded engine (default: FINESEARCH_QDRANT_URL)")
    p.add_argument("--features", choices=["bank", "qdrant"], default=None,
                   help="prepared matcher features in the token bank (default) or on the Qdrant points "
                        "(server mode: replicas share no volume)")
    p.add_argument("--backbone", default=None,
                   help="serve a stock open_clip backbone (e.g. ViT-B-32) without a trained matcher: global-only "
                        "search over an index built with the same --backbone/--pretrained (default: "
                        "FINESEARCH_BACKBONE; ignored when a model bundle is given)")
    p.add_argument("--pretrained", default=None,
                   help="the stock backbone's weights: a cached pretrained tag or a checkpoint file (default: "
                        "FINESEARCH_PRETRAINED)")
    p.add_argument("--host", default=None, help="address to listen on (default: FINESEARCH_HOST, else 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port to listen on (default: FINESEARCH_PORT, else 8000)")
    add_device_arg(p)
    p.add_argument("--log-level", default="info", help="uvicorn's log level")


SERVER_FLAGS = ("model", "data_dir", "qdrant_url", "features", "device", "backbone", "pretrained")


def settings_from(args: argparse.Namespace) -> Settings:
    """The settings with this command's flags applied (the console script filled the unset flags from them)."""
    base: Settings = getattr(args, "settings", None) or Settings()
    flags = {name: getattr(args, name) for name in SERVER_FLAGS if getattr(args, name, None) is not None}
    return Settings.model_validate(base.model_dump() | flags)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from .app import create_app
    from .engine import Engine

    settings = settings_from(args)
    if args.workers > 1:
        if not settings.qdrant_url:
            raise ValueError("--workers > 1 needs a Qdrant server (--qdrant-url): the embedded store is "
                             "single-process")
        settings.export_environment(list(SERVER_FLAGS))
        uvicorn.run("service.app:app_from_env", factory=True, host=args.host, port=args.port, workers=args.workers,
                    log_level=args.log_level)
        return 0
    engine = Engine(settings)  # load here so a bad model or index fails with a clear message, not a traceback
    print(f"finesearch: serving model {engine.bundle.id} on http://{args.host}:{args.port} "
          f"(data {settings.data_dir}, store {engine.store.backend})", flush=True)
    uvicorn.run(create_app(settings, engine), host=args.host, port=args.port, log_level=args.log_level)
    engine.close()
    return 0


def prepare_demo(engine: Engine, synth_dir: Path) -> tuple[list[str], list[str]]:
    """Generate the synthetic dataset if missing and index its test split (resumable: a rerun indexes nothing).

    Returns (hard-case captions the matcher gets right and global similarity does not, other hard cases).
    """
    from indexer.items import ImageItem, TextItem
    from training.synth import generate

    dataset = synth_dir / "dataset.json"
    if not dataset.is_file():
        print(f"generating the synthetic dataset in {synth_dir} (seed 0) ...", flush=True)
        generate(synth_dir, seed=0)
    items = read_dataset(dataset, "karpathy", "test")
    images = [ImageItem(path=synth_dir / "images" / it.filename, id=it.image_id,
                        metadata={"split": it.split, "layout": it.metadata.get("meta_layout"),
                                  "hard_case": it.metadata.get("meta_hard_case") or "none"}) for it in items]
    texts = [TextItem(c, id=f"{it.image_id}#{k}", image_id=it.image_id) for it in items
             for k, c in enumerate(it.captions)]
    si = engine.indexer.index_images(images, progress=True)
    st = engine.indexer.index_texts(texts, progress=True)
    print(f"indexed {si.indexed} images and {st.indexed} captions ({si.skipped + st.skipped} already there)")
    # every caption of a twin that no other image shares (so "its image" is one image), first captions first
    uses = Counter(c for it in items for c in it.captions)
    twins = [it for it in items if it.metadata.get("meta_hard_case")]
    hard = [(it.captions[k], it.image_id) for k in range(5) for it in twins
            if k < len(it.captions) and uses[it.captions[k]] == 1]
    return asyncio.run(rerank_wins(engine, hard)), [c for c, _ in hard[:4]]


async def rerank_wins(engine: Engine, cases: list[tuple[str, str]], want: int = 4) -> list[str]:
    """Hard-case captions whose image the matcher ranks first while global similarity does not."""
    from .results import SearchOptions

    wins = []
    for caption, image_id in cases:
        on = await engine.search_images(caption, SearchOptions(limit=1, candidates=100))
        off = await engine.search_images(caption, SearchOptions(limit=1, rerank=False))
        if on.results and on.results[0]["id"] == image_id and off.results[0]["id"] != image_id:
            wins.append(caption)
            if len(wins) == want:
                break
    return wins


def cmd_demo(args: argparse.Namespace) -> int:
    import uvicorn

    from .app import create_app
    from .engine import Engine

    settings = settings_from(args)
    engine = Engine(settings)
    wins, hard = prepare_demo(engine, args.synth_dir or settings.data_dir / "synth")
    if wins:
        print("hard cases the matcher gets right and global similarity does not (toggle rerank to compare):")
    else:
        print("hard cases to try with rerank on and off:")
    examples = wins or hard
    for q in examples:
        print(f"  {q}")
    if args.no_serve:
        engine.close()
        return 0
    url = f"http://{args.host}:{args.port}"
    print(f"\nfinesearch demo: open {url} in a browser (API docs at {url}/docs)")
    print(f"or: curl -s {url}/v1/search/images -H 'content-type: application/json' "
          f"-d '{{\"text\": \"{examples[0] if examples else 'a red circle'}\", \"limit\": 5}}'\n", flush=True)
    uvicorn.run(create_app(settings, engine), host=args.host, port=args.port, log_level=args.log_level)
    engine.close()
    return 0

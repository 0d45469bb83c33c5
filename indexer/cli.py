"""`finesearch index …`: offline ingestion of image folders and captioned datasets."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from training.cli_args import add_backbone_args, backbone_from_args, resolve_model
from training.datasets import FORMATS
from training.model.images import IMAGE_SUFFIXES

from .sources import MissingPaths, expand_paths, load_metadata, prune_missing
from .stores import FEATURE_HOMES, open_store
from .validation import PayloadLimits, path_id

if TYPE_CHECKING:  # torch comes with these: imported when a command runs, so `--help` answers at once
    from .items import Summary
    from .pipeline import Indexer

def add_store_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("storage")
    g.add_argument("--data-dir", type=Path, default=None,
                   help="embedded store, token bank and blobs (default: FINESEARCH_DATA_DIR, else ./data)")
    g.add_argument("--qdrant-url", default=None,
                   help="use a Qdrant server instead of the embedded engine (default: FINESEARCH_QDRANT_URL; the "
                        "token bank stays in --data-dir)")
    g.add_argument("--qdrant-api-key", default=None,
                   help="API key of the Qdrant server (default: FINESEARCH_QDRANT_API_KEY)")
    g.add_argument("--qdrant-prefix", default=None,
                   help="collection name prefix on a shared Qdrant server (default: FINESEARCH_QDRANT_PREFIX, else "
                        "finesearch_)")
    g.add_argument("--features", choices=FEATURE_HOMES, default=None,
                   help="where the prepared matcher features go: the token bank in --data-dir, or each Qdrant point "
                        "(server mode; what API replicas without a shared volume need) (default: "
                        "FINESEARCH_FEATURES, else bank)")


def register(sub: Any) -> None:
    p = sub.add_parser("index", help="index images and captions into the store")
    isub = p.add_subparsers(dest="index_cmd", required=True)

    pi = isub.add_parser("images", help="index image files, folders (recursively) or list files (.txt)")
    pi.add_argument("paths", nargs="+", type=Path, help="image files, folders (searched recursively; other file "
                    "types are skipped with a reason) or .txt/.lst files listing images, one per line")
    pi.add_argument("--metadata", type=Path, help="JSONL: {\"file\": ..., \"id\"?: ..., other keys = metadata}")
    pi.add_argument("--id-from", choices=["hash", "path", "stem"], default="hash",
                    help="item id: content hash (default; dedups copies), relative path with '/' written as ':' "
                         "(ids never hold '/': see the id rule in docs/api.md), or file stem")
    pi.add_argument("--prune", action="store_true",
                    help="also remove indexed images whose file, under one of the folders given, is gone")
    _common(pi)
    pi.set_defaults(func=cmd_images)

    pd = isub.add_parser("dataset", help="index a captioned dataset: images and captions, linked by image id")
    pd.add_argument("file", type=Path, help="dataset file (see --format)")
    pd.add_argument("--images", type=Path, required=True, help="directory the dataset's file names are relative to")
    pd.add_argument("--format", choices=FORMATS, required=True,
                    help="dataset file format: karpathy, coco (captions JSON), jsonl or csv")
    pd.add_argument("--split", default=None, help="only this split (e.g. test)")
    pd.add_argument("--limit", type=int, default=None, help="only the first N images")
    _common(pd)
    pd.set_defaults(func=cmd_dataset)

    pc = isub.add_parser("compact", help="reclaim token-bank space of deleted and orphaned items (with the server "
                                         "stopped; a running server compacts through POST /v1/admin/compact)")
    add_store_args(pc)
    add_backbone_args(pc)
    pc.set_defaults(func=cmd_compact)

    pr = isub.add_parser("reprepare", help="prepare the indexed items' matcher features for another model bundle "
                                           "on the same backbone, from the kept raw tokens (with the server stopped)")
    pr.add_argument("--batch-size", type=int, default=256, help="items per matcher call")
    add_store_args(pr)
    add_backbone_args(pr)
    pr.set_defaults(func=cmd_reprepare)


    snap = sub.add_parser("snapshot", help="back up an index to one file, or restore one (docs/operations.md)")
    ssub = snap.add_subparsers(dest="snapshot_cmd", required=True)
    sc = ssub.add_parser("create", help="write a consistent snapshot: points, token banks, blobs and job records "
                                        "(the embedded store is locked meanwhile; stop writes to a Qdrant server)")
    sc.add_argument("--out", type=Path, required=True, help="snapshot file to write (a tar)")
    add_store_args(sc)
    sc.set_defaults(func=cmd_snapshot_create)
    sr = ssub.add_parser("restore", help="restore a snapshot into an empty data directory (or Qdrant prefix)")
    sr.add_argument("file", type=Path, help="snapshot file")
    add_store_args(sr)
    sr.set_defaults(func=cmd_snapshot_restore)

    mg = sub.add_parser("migrate", help="move an embedded index into a Qdrant server; rerun to resume")
    mg.add_argument("--to", required=True, help="URL of the Qdrant server to move the points to")
    mg.add_argument("--to-api-key", default=None, help="its API key (default: FINESEARCH_QDRANT_API_KEY)")
    mg.add_argument("--to-prefix", default="finesearch_", help="collection name prefix on that server")
    add_store_args(mg)
    mg.set_defaults(func=cmd_migrate)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch-size", type=int, default=64, help="images or captions per encoder call")
    p.add_argument("--workers", type=int, default=min(8, (os.cpu_count() or 2) * 2), help="decode threads")
    p.add_argument("--force", action="store_true", help="re-encode items that are already indexed")
    p.add_argument("--report", type=Path, help="write the summary (with every failure) as JSON")
    p.add_argument("--strict", action="store_true", help="exit 1 when any item failed")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--keep-raw-tokens", action=argparse.BooleanOptionalAction, default=None,
                   help="keep each item's raw tokens beside its prepared matcher features (default: "
                        "FINESEARCH_KEEP_RAW_TOKENS, else on), so a new "
                        "matcher needs `index reprepare` instead of re-encoding; --no-keep-raw-tokens halves the "
                        "token bytes (needs --model)")
    add_store_args(p)
    add_backbone_args(p)


def make_indexer(args: argparse.Namespace) -> Indexer:
    """With --model, the bundle's matcher prepares each item's features as it is indexed (what the service
    reranks on); a bare backbone stores raw tokens only, to be prepared later by `index reprepare`."""
    from .pipeline import Indexer

    keep_raw = getattr(args, "keep_raw_tokens", True)
    matcher = None
    if resolve_model(args):
        from training.model.bundle import load_bundle

        bundle = load_bundle(args.model, device=args.device, precision=args.precision, cache_dir=args.cache_dir,
                             allow_download=bool(args.allow_download))
        backbone, matcher = bundle.backbone, bundle.matcher
    else:
        if not keep_raw:
            raise SystemExit("finesearch: error: --no-keep-raw-tokens needs --model: without a matcher the raw "
                             "tokens are the only token features")
        backbone = backbone_from_args(args)
    store = open_store(args.data_dir, args.qdrant_url, args.qdrant_api_key, prefix=args.qdrant_prefix,
                       features=args.features)
    settings = args.settings  # the limits the service enforces bind the CLI too (one definition, FINESEARCH_MAX_*)
    try:
        return Indexer(backbone, store, args.data_dir, batch_size=getattr(args, "batch_size", 64),
                       workers=getattr(args, "workers", 4), matcher=matcher, keep_raw_tokens=keep_raw,
                       max_pixels=settings.max_image_pixels, limits=PayloadLimits.from_settings(settings))
    except BaseException:
        store.close()
        raise


def cmd_images(args: argparse.Namespace) -> int:
    from .items import Failure, ImageItem

    try:
        files, other = expand_paths(args.paths)
    except MissingPaths as exc:
        print(f"finesearch: error: {exc}", file=sys.stderr)
        return 1
    meta = load_metadata(args.metadata)
    items = []
    for f, root in files:
        rel = str(f.relative_to(root)) if f.is_relative_to(root) else f.name
        m = meta.get(rel) or meta.get(str(f)) or meta.get(f.name) or {}
        iid = m.get("id") or {"path": path_id(rel), "stem": f.stem, "hash": None}[args.id_from]
        items.append(ImageItem(path=f, id=iid, metadata=m.get("metadata") or {}))
    indexer = make_indexer(args)
    try:
        summary = indexer.index_images(items, skip_existing=not args.force, progress=not args.no_progress)
        pruned = prune_missing(indexer, [p for p in args.paths if p.is_dir()]) if args.prune else []
    finally:
        indexer.close()
    if args.prune:
        print(f"pruned {len(pruned)} images whose files are gone" + (f": {', '.join(pruned[:10])}"
                                                                     + (" ..." if len(pruned) > 10 else "")
                                                                     if pruned else ""))
    summary.skipped += len(other)
    summary.skips += [Failure(f, f"not an image type finesearch reads ({Path(f).suffix or 'no suffix'}); "
                                 f"reads {', '.join(sorted(IMAGE_SUFFIXES))}", "unsupported_type") for f in other]
    return report(args, {"images": summary})


def cmd_dataset(args: argparse.Namespace) -> int:
    from training.datasets import read_dataset

    from .items import ImageItem, TextItem

    data = read_dataset(args.file, args.format, args.split)
    if args.limit:
        data = data[: args.limit]
    images = [ImageItem(path=args.images / d.filename, id=d.image_id, metadata={**d.metadata, "split": d.split})
              for d in data]
    texts = [TextItem(c, id=f"{d.image_id}#{k}", image_id=d.image_id, metadata={"split": d.split})
             for d in data for k, c in enumerate(d.captions)]
    indexer = make_indexer(args)
    try:
        si = indexer.index_images(images, skip_existing=not args.force, progress=not args.no_progress)
        # a photo that was already indexed under another id (by `index images`, say) keeps that id: link to it
        same = {im.id: iid for im, iid in zip(images, si.ids, strict=True) if iid is not None and iid != im.id}
        for t in texts:
            t.image_id = same.get(t.image_id, t.image_id)
        st = indexer.index_texts(texts, skip_existing=not args.force, progress=not args.no_progress)
    finally:
        indexer.close()
    return report(args, {"images": si, "texts": st})


def cmd_compact(args: argparse.Namespace) -> int:
    indexer = make_indexer(args)
    try:
        result = indexer.compact()
    finally:
        indexer.close()
    print(json.dumps(result, indent=2))
    return 0


def cmd_reprepare(args: argparse.Namespace) -> int:
    if not resolve_model(args):
        raise SystemExit("finesearch: error: reprepare needs a model bundle (--model): the one whose matcher will "
                         "serve this index")
    from training.model.bundle import load_bundle

    from .preparation import reprepare_index

    bundle = load_bundle(args.model, device=args.device, precision=args.precision, cache_dir=args.cache_dir,
                         allow_download=bool(args.allow_download))
    store = open_store(args.data_dir, args.qdrant_url, args.qdrant_api_key, prefix=args.qdrant_prefix,
                       features=args.features)
    try:
        out = reprepare_index(store, Path(args.data_dir), bundle.backbone, bundle.matcher, args.batch_size)
    finally:
        store.close()
    print(json.dumps(out, indent=2))
    return 0


def _open(args: argparse.Namespace) -> Any:
    return open_store(args.data_dir, args.qdrant_url, args.qdrant_api_key, prefix=args.qdrant_prefix,
                      features=args.features)


def cmd_snapshot_create(args: argparse.Namespace) -> int:
    from .transfer import create_snapshot

    store = _open(args)
    try:
        manifest = create_snapshot(store, Path(args.data_dir), args.out, progress=print)
    finally:
        store.close()
    print(json.dumps({"snapshot": str(args.out), "counts": manifest["counts"], "bytes": args.out.stat().st_size}))
    return 0


def cmd_snapshot_restore(args: argparse.Namespace) -> int:
    from .transfer import read_manifest, restore_snapshot

    read_manifest(args.file)  # a broken or foreign file is refused before anything is created
    store = _open(args)
    try:
        manifest = restore_snapshot(store, Path(args.data_dir), args.file, progress=print)
    finally:
        store.close()
    print(json.dumps({"restored": str(args.file), "counts": manifest["counts"]}))
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from .transfer import migrate

    if args.qdrant_url:
        raise SystemExit("finesearch: error: migrate moves an embedded index (--data-dir) into --to; the source "
                         "is already a Qdrant server")
    source = _open(args)
    try:
        target = open_store(args.data_dir, args.to, args.to_api_key, prefix=args.to_prefix)
        try:
            out = migrate(source, target, progress=print)
        finally:
            target.close()
    finally:
        source.close()
    print(json.dumps(out))
    print(f"serve it with: finesearch serve --qdrant-url {args.to} --data-dir {args.data_dir} (the token bank and "
          "blobs stay in the data directory)")
    return 0


def report(args: argparse.Namespace, parts: dict[str, Summary]) -> int:
    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=False)
    table = Table(title="finesearch index")
    for col in ("", "indexed", "skipped", "failed", "elapsed s", "items/s"):
        table.add_column(col, justify="right")
    for name, s in parts.items():
        table.add_row(name, str(s.indexed), str(s.skipped), str(s.failed), f"{s.elapsed:.2f}", f"{s.rate:.1f}")
    console.print(table)
    skips = [f for s in parts.values() for f in s.skips]
    for f in skips[:20]:
        console.print(f"[yellow]skipped[/yellow] {f.source}: {f.reason}", highlight=False)
    if len(skips) > 20:
        console.print(f"... and {len(skips) - 20} more files skipped (see --report)")
    failures = [f for s in parts.values() for f in s.failures]
    for f in failures[:50]:
        console.print(f"[red]failed[/red] {f.source}: {f.reason}", highlight=False)
    if len(failures) > 50:
        console.print(f"... and {len(failures) - 50} more (see --report)")
    if args.report:
        args.report.write_text(json.dumps({k: s.as_dict() for k, s in parts.items()}, indent=2))
    return 1 if (args.strict and failures) else 0

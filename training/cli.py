"""`finesearch train | eval | synth`: the training package's commands."""

from __future__ import annotations

import argparse
import json
from dataclasses import fields
from pathlib import Path
from typing import Any

from .cli_args import add_backbone_args, add_device_arg, backbone_from_args
from .datasets import FORMATS, read_dataset
from .model.defaults import DEMO_BUNDLE, TINY_MODEL, default_model
from .train_config import TrainConfig

# torch and open_clip are imported inside the commands, so that `finesearch --help` answers at once

DEFAULT_CLIP_STEPS = 1000  # backbone steps when training from scratch without --clip-steps


def register(sub: Any) -> None:
    """The training package's commands, on the finesearch console script (service/cli.py)."""
    _register_train(sub)
    _register_eval(sub)
    _register_explain(sub)
    _register_synth(sub)


def _model_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path, default=None,
                   help=f"model bundle directory (default: FINESEARCH_MODEL, else the demo bundle "
                        f"{DEMO_BUNDLE.parent.name}/{DEMO_BUNDLE.name})")


def _register_train(sub: Any) -> None:
    p = sub.add_parser("train", help="train the matcher (and a from-scratch backbone) and write a model bundle")
    p.add_argument("--data", type=Path, required=True, help="dataset file")
    p.add_argument("--images", type=Path, required=True, help="directory the dataset's file names are relative to")
    p.add_argument("--format", choices=FORMATS, required=True, help="dataset file format")
    p.add_argument("--out", type=Path, required=True, help="bundle directory to write")
    p.add_argument("--train-split", default="train", help="split to train on")
    p.add_argument("--val-split", default="val", help="split every choice is validated on; '' for none")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoints in OUT/.work")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--backbone-from", type=Path, default=None,
                   help="reuse the (trained) backbone of this bundle and train only the matcher")
    p.add_argument("--matcher", default="{}", help='matcher options as JSON, e.g. \'{"top_k": 8}\'')
    for f in fields(TrainConfig):
        if f.name in ("matcher", "seed"):
            continue
        base = str(f.type).split(" ")[0]
        helptext = f"{f.metadata['help']} (default: {f.metadata['shown']})"
        if base == "bool":
            p.add_argument(f"--{f.name.replace('_', '-')}", type=lambda v: v.lower() in ("1", "true", "yes"),
                           default=None, metavar="true|false", help=helptext)
        else:
            kind = {"int": int, "float": float, "str": str}.get(base, float)
            p.add_argument(f"--{f.name.replace('_', '-')}", type=kind, default=None, help=helptext)
    add_backbone_args(p, with_model=False)
    p.set_defaults(func=cmd_train)


def _register_eval(sub: Any) -> None:
    e = sub.add_parser("eval", help="R@K of global, two-stage and exhaustive rankers on a dataset split")
    _model_arg(e)
    e.add_argument("--data", type=Path, required=True, help="dataset file")
    e.add_argument("--images", type=Path, required=True, help="directory the dataset's file names are relative to")
    e.add_argument("--format", choices=FORMATS, required=True, help="dataset file format")
    e.add_argument("--split", default="test", help="split to evaluate")
    e.add_argument("--candidates", type=int, default=100, help="global top-k that two-stage reranks")
    e.add_argument("--protocol", choices=["plain", "coco1k", "coco5k"], default="plain",
                   help="plain: the whole split; coco1k: five folds of 1000 images, averaged; coco5k: 5000 images")
    e.add_argument("--rankers", default="global,two_stage,exhaustive", help="comma-separated rankers to run")
    e.add_argument("--json", type=Path, help="write the results here")
    e.add_argument("--cache", type=Path, default=None, help="feature cache directory (reused across runs)")
    add_device_arg(e)
    e.add_argument("--no-progress", action="store_true", help="no progress bars")
    e.set_defaults(func=cmd_eval)


def _register_explain(sub: Any) -> None:
    x = sub.add_parser("explain", help="why an image and a caption match: each word's maps over the image (PNG)")
    _model_arg(x)
    x.add_argument("--image", type=Path, required=True, help="image file")
    x.add_argument("--text", required=True, help="caption to explain against the image")
    x.add_argument("--out", type=Path, required=True, help="PNG to write")
    x.add_argument("--json", type=Path, default=None, help="also write the explanation as JSON")
    add_device_arg(x)
    x.set_defaults(func=cmd_explain)


def _register_synth(sub: Any) -> None:
    s = sub.add_parser("synth", help="generate the synthetic compositional dataset (Karpathy format)")
    s.add_argument("--out", type=Path, required=True, help="directory to write dataset.json and images/ to")
    s.add_argument("--seed", type=int, default=0, help="seed of the draw")
    s.add_argument("--train", type=int, default=10_000, help="training images")
    s.add_argument("--val", type=int, default=1_000, help="validation images")
    s.add_argument("--test", type=int, default=1_000, help="test images")
    s.add_argument("--size", type=int, default=64, help="image side in pixels")
    s.add_argument("--twin-rate", type=float, default=0.4, help="share of images that are hard-case twins")
    s.add_argument("--style", choices=["shapes", "grid"], default="shapes",
                   help="shapes: a row or column of sized shapes; grid: patterned icons in a 2×2 grid (other "
                        "objects, words and layouts)")
    s.set_defaults(func=cmd_synth)


def cmd_train(args: argparse.Namespace) -> int:
    from .model.bundle import load_backbone, read_bundle_config
    from .train import run_training

    overrides = {f.name: getattr(args, f.name) for f in fields(TrainConfig)
                 if f.name not in ("matcher", "seed") and getattr(args, f.name, None) is not None}
    from_scratch = args.from_scratch
    if from_scratch and not args.backbone_from and "clip_steps" not in overrides:
        overrides["clip_steps"] = DEFAULT_CLIP_STEPS
    cfg = TrainConfig(seed=args.seed, matcher=json.loads(args.matcher), **overrides)
    train = read_dataset(args.data, args.format, args.train_split)
    val = read_dataset(args.data, args.format, args.val_split) if args.val_split else None
    provenance = None
    if args.backbone_from:
        backbone = load_backbone(args.backbone_from, device=args.device, precision=args.precision)
        source = read_bundle_config(args.backbone_from)  # before training: --out may be the same folder
        from_scratch = bool(source["backbone"].get("weights"))  # keep shipping the weights it came with
        provenance = backbone_provenance(str(args.backbone_from), source)
    else:
        backbone = backbone_from_args(args)
    info = {"file": str(args.data), "format": args.format, "train_images": len(train),
            "val_images": len(val) if val else 0, "backbone": args.backbone}
    report = run_training(backbone, train, val, args.images, args.out, cfg, from_scratch=from_scratch,
                          resume=args.resume, progress=not args.no_progress, data_info=info,
                          keep_backbone=args.backbone_from is not None)
    if provenance is not None:  # keep the provenance of the reused backbone in the new bundle
        cfg_file = args.out / "config.json"
        merged = json.loads(cfg_file.read_text())
        merged["training"]["backbone_from"] = provenance
        cfg_file.write_text(json.dumps(merged, indent=2, sort_keys=True))
    print(f"model bundle written to {args.out}")
    if "val" in report:
        print(json.dumps({k: v["rsum"] for k, v in report["val"].items()}))
    return 0


def backbone_provenance(path: str, source: dict[str, Any]) -> dict[str, Any]:
    """Where a reused backbone comes from: the bundle it was taken from, the stage that trained it (passed on
    through bundles that reused it in turn, with the first of them as `via`), and, when any bundle along the
    chain fine-tuned it (`--unfreeze-blocks`), the most blocks one of them did (`fine_tuned_blocks`): the stage
    trained the weights those started from."""
    stage = source.get("training", {})
    earlier = {} if "backbone" in stage else (stage.get("backbone_from") or {})
    out: dict[str, Any] = {"bundle": path, "training": stage.get("backbone", earlier.get("training"))}
    if "bundle" in earlier:
        out["via"] = earlier.get("via", earlier["bundle"])
    tuned = max(int(stage.get("config", {}).get("unfreeze_blocks") or 0), int(earlier.get("fine_tuned_blocks", 0)))
    if tuned:
        out["fine_tuned_blocks"] = tuned
    return out


def cmd_eval(args: argparse.Namespace) -> int:
    from .evaluate import evaluate_protocol, format_table
    from .features import cached_extract, extract
    from .model.bundle import load_bundle

    bundle = load_bundle(default_model(args.model), device=args.device)
    items = read_dataset(args.data, args.format, args.split)
    kw = {"workers": 4, "progress": not args.no_progress}
    feats = (cached_extract(bundle.backbone, items, args.images, args.cache, **kw) if args.cache
             else extract(bundle.backbone, items, args.images, **kw))  # type: ignore[arg-type]
    rankers = tuple(r.strip() for r in args.rankers.split(",") if r.strip())
    res = evaluate_protocol(bundle.matcher, feats, args.protocol, args.candidates, rankers, bundle.backbone.device)
    res["model"] = bundle.id
    res["split"] = args.split
    print(f"{args.protocol} · {res['images']} images · {res['captions']} captions · model {bundle.id}")
    print(format_table(res))
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from PIL import Image

    from .model.bundle import load_bundle
    from .model.explain import explain_one, render
    from .model.images import load_for_model, load_with_info

    bundle = load_bundle(default_model(args.model), device=args.device)
    pixels = load_for_model(args.image, bundle.backbone.image_size)
    ex = explain_one(bundle, pixels, " ".join(args.text.split()))
    original = Image.fromarray(load_with_info(args.image, max(bundle.backbone.image_size, 160))[0])
    render(original, ex).save(args.out)
    if args.json:
        args.json.write_text(json.dumps(ex, indent=2))
    print(json.dumps({k: v for k, v in ex.items() if k != "words"} | {  # a list: a caption repeats words
        "words": [[w["text"], w["contribution"]] for w in ex["words"]], "png": str(args.out)}))
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from .synth import generate

    info = generate(args.out, args.seed, args.train, args.val, args.test, args.size, args.twin_rate, args.style)
    print(json.dumps(info))
    return 0


__all__ = ["TINY_MODEL", "register"]

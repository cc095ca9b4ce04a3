"""cityclf train / review / synth: training heads, finding what they get wrong, making training data."""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

from ..errors import ConfigError
from ..progress import ProgressBar
from ..numbers import COUNT
from .common import (
    output_file,
    output_folder,
    FORMATS,
    Problems,
    add_crop_options,
    add_model_options,
    load_model,
    progress_enabled,
    say_loading,
    score_options,
)


def cmd_train(args) -> int:
    from ..train import data_kind, format_metrics, load_config, load_npy_dataset, train
    from ..train.embedding import embed_training_images, load_training_clip, training_clip
    from ..train.outputs import OutputFiles

    cfg = load_config(args.config, overrides={"device": args.device if args.device != "auto" else None})
    root, kind = data_kind(args.data, cfg.clip)
    if not args.overwrite and not args.resume:  # before any data is loaded or embedded
        OutputFiles.for_run(Path(args.out), cfg.name).refuse_existing()
    problems = Problems()
    if kind == "npy":
        print(f"cityclf: training on .npy embeddings in {root}", file=sys.stderr)
        data = load_npy_dataset(cfg, root)
    else:
        source = training_clip(cfg, args.clip)
        say_loading(f"CLIP {source}", args)
        encoder = load_training_clip(cfg, source, args.device, args.dtype, allow_download=not args.offline)
        bar = ProgressBar(0, "img", enabled=progress_enabled(args), label="embedding")
        problems.bar = bar
        with bar:
            embedded = embed_training_images(cfg, root, encoder, args.out, args.store,
                                             on_total=lambda n: setattr(bar, "total", float(n)),
                                             on_file=lambda p, e: (problems.add(p, e) if e else None, bar.update(1)))
        problems.bar = None
        data = embedded.data
        print(f"cityclf: embeddings in {embedded.store}: {embedded.embedded} image(s) embedded now, "
              f"{embedded.reused} reused", file=sys.stderr)
    print(f"cityclf: {data.n_train} training and {len(data.val_counts)} validation images; "
          f"{cfg.optimizer_steps} optimizer steps of batch {cfg.batch}", file=sys.stderr)
    bar = ProgressBar(cfg.optimizer_steps, "step", enabled=progress_enabled(args), label="training")
    with bar:
        result = train(cfg, data, args.out, resume=args.resume, overwrite=args.overwrite, log=bar.write,
                       progress=lambda step, total: bar.set(step))
        if result.steps_done < bar.total:
            bar.finish_at(result.steps_done)
    print(format_metrics(result.metrics))
    for what, path in (("weights", result.weights), ("config", result.config), ("log", result.log),
                       ("curves", result.curves), ("metrics", result.metrics_path)):
        print(f"cityclf: {what}: {path}", file=sys.stderr)
    problems.write_report(args.report)
    return 1 if len(problems) else 0


def cmd_review(args) -> int:
    from ..dataset import score_files
    from ..grid import contact_sheet
    from ..scoring.images import find_images
    from ..review import expected_from_folders, review_items

    if len(args.model) != 1:
        raise ConfigError("review one head at a time: give exactly one --model")
    model = load_model(args)
    head = model.bindings[0].head
    if args.expect is not None:
        files, missing = find_images(args.paths)
        expected = {os.path.abspath(p): args.expect for p in files}
    else:
        if len(args.paths) != 1:
            raise ConfigError("give one labelled data folder (category folders like 0_reg, 1_jpeg), "
                              "or --expect CLASS for a folder of new images")
        expected, missing = expected_from_folders(args.paths[0], head), []
        files = [Path(p) for p in expected]
    bar = ProgressBar(len(files), "img", enabled=progress_enabled(args), label="reviewing")
    problems = Problems(bar)
    for path, reason in missing:
        problems.add(path, reason)
    with bar:
        if args.store:
            rows = _review_rows_from_store(args, model, files, problems, bar)
        else:
            rows = [(os.path.abspath(p), r[model.names[0]])
                    for p, r in score_files(model, files, score_options(args), problems.add, bar.set)]
    items = review_items(rows, expected, head)[: args.top]
    if args.format == "jsonl":
        for it in items:
            print(json.dumps(it.to_dict(), ensure_ascii=False))
    else:
        w = csv.writer(sys.stdout, delimiter="," if args.format == "csv" else "\t", lineterminator="\n")
        w.writerow(["path", "expected", "predicted", "confidence", "p_expected", "loss", "kind"])
        for it in items:
            w.writerow([it.path, it.expected, it.predicted, f"{it.confidence:.3f}", f"{it.p_expected:.3f}",
                        f"{it.loss:.4f}", it.kind])
    if args.sheet and items:
        sheet = contact_sheet([(it.path, [f"expected {it.expected}", f"got {it.predicted} ({it.confidence:.2f})"])
                               for it in items], args.sheet, thumb=args.thumb,
                              title=f"{head.name}: most confidently wrong first")
        print(f"cityclf: wrote {sheet}", file=sys.stderr)
    print(f"cityclf: {len(rows)} image(s) reviewed, {len(items)} listed", file=sys.stderr)
    return 1 if len(problems) else 0


def _review_rows_from_store(args, model, files, problems, bar) -> list:
    """Embed only what the store lacks (nothing, the second time), then score from the stored embeddings."""
    from ..dataset import embed_then_score

    rows = embed_then_score(args.store, model, files, score_options(args),
                            on_file=lambda p, e: (problems.add(p, e) if e else None, bar.update(1)),
                            on_embedded=lambda report: bar.write(f"cityclf: {report.summary()} ({args.store})"),
                            on_absent=problems.add)
    return [(path, res[model.names[0]]) for path, res in rows]


def cmd_synth(args) -> int:
    from ..synth import synthesize

    def span(text: str, what: str) -> tuple[int, int]:
        try:
            lo, _, hi = text.partition("-")
            return int(lo), int(hi or lo)
        except ValueError:
            raise ConfigError(f"--{what} takes a range like 10-60") from None

    if args.generate:
        from ..samples import make_clean_images

        make_clean_images(args.clean, args.generate, seed=args.seed)
        print(f"cityclf: {args.generate} generated clean picture(s) in {args.clean}", file=sys.stderr)
    report = synthesize(args.clean, args.out, task=args.task, per_image=args.per_image, seed=args.seed,
                        quality=span(args.quality, "quality"), shift=span(args.shift, "shift"))
    for path, why in report.skipped:
        print(f"cityclf: skipped {path}: {why}", file=sys.stderr)
    written = ", ".join(f"{n} in {folder}" for folder, n in sorted(report.written.items())) or "nothing new"
    print(f"cityclf: wrote {written}" + (f"; {report.existing} already there" if report.existing else "") +
          f"; a starting config is {Path(args.out) / 'config.yaml'}", file=sys.stderr)
    return 1 if report.skipped else 0


def register(sub) -> None:
    p = sub.add_parser("train", help="train a head from folders of images (or .npy embeddings)",
                       description="Train a head with a reference-format config (YAML) on data in the reference "
                                   "layout: one folder per category, named by its label (0_reg, 1_chroma) or score "
                                   "(0..10). Images are embedded once, through an embedding store.")
    p.add_argument("--config", required=True, metavar="YAML",
                   help="the training config: model, train and labels sections (cityclf synth writes a starting one)")
    p.add_argument("--data", required=True, metavar="DIR",
                   help="one folder per category (0_clean, 1_jpeg ... or 0..10 for scores), or .npy embeddings")
    p.add_argument("--out", default="models", type=output_folder, metavar="DIR",
                   help="where the head and its logs go (made if missing; default: models)")
    p.add_argument("--store", metavar="DB", help="embedding store (default: OUT/<base>.embeddings.db)")
    p.add_argument("--resume", nargs="?", const="auto", metavar="CHECKPOINT",
                   help="continue an interrupted run (default: OUT/<name>.checkpoint.safetensors)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing head of the same name and rev")
    p.add_argument("--clip", metavar="ID_OR_DIR", help="the CLIP to embed images with (default: model.clip_model, "
                                                       "else openai/clip-vit-large-patch14-336)")
    p.add_argument("--device", default="auto", help="where to embed and train: auto (a GPU if there is one), cpu, "
                                                    "cuda, cuda:1 ... (default: auto)")
    p.add_argument("--dtype", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                   help="the CLIP's precision while embedding (heads always train in fp32; default: auto)")
    p.add_argument("--offline", action="store_true", help="never download: a missing CLIP is an error that says "
                                                          "what to fetch")
    p.add_argument("--report", type=output_file, metavar="FILE", help="write skipped images and why, as JSONL")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("review", help="list the most confidently wrong images of a labelled folder (or a new one)",
                       description="Score a labelled dataset (category folders) with a head and list the images "
                                   "it gets most confidently wrong, highest loss first: candidates to move to the "
                                   "right folder before retraining. For a folder of new images, say what they "
                                   "should be with --expect.")
    p.add_argument("paths", nargs="+", metavar="PATH", help="a labelled folder (category folders), or images "
                                                           "with --expect")
    add_model_options(p)
    add_crop_options(p)
    p.add_argument("--expect", metavar="CLASS", help="what every image in PATH should be (a class name or number)")
    p.add_argument("--store", metavar="DB", help="an embedding store (e.g. the one train wrote: OUT/<base>."
                                                 "embeddings.db): embed only what it lacks, keep the rest")
    p.add_argument("--top", type=COUNT, default=50, metavar="N", help="list at most N (default 50)")
    p.add_argument("--sheet", metavar="PNG", help="also write a contact sheet of them")
    p.add_argument("--thumb", type=COUNT, default=200, metavar="PX", help="thumbnail size on the sheet (default 200)")
    p.add_argument("--format", choices=FORMATS, default="table", help="table (default), jsonl or csv")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(func=cmd_review)

    p = sub.add_parser("synth", help="make training images with compression or chromatic aberration from clean ones",
                       description="Write a training dataset from clean images: lossless 0_clean copies and, per "
                                   "task, 1_jpeg and 2_webp at random qualities or 1_chroma with the red and blue "
                                   "channels shifted apart; plus a starting config.yaml. Reruns skip what exists.")
    p.add_argument("clean", metavar="CLEAN_DIR", help="a folder of clean images (walked recursively)")
    p.add_argument("--out", required=True, metavar="DATA_DIR", help="where the category folders are written")
    p.add_argument("--task", choices=("compression", "chromatic-aberration"), default="compression",
                   help="which artifacts to make (default: compression)")
    p.add_argument("--per-image", type=COUNT, default=1, metavar="N", help="variants per class per clean image")
    p.add_argument("--quality", default="10-60", metavar="LO-HI", help="JPEG/WEBP quality range (default 10-60)")
    p.add_argument("--shift", default="1-5", metavar="LO-HI", help="red/blue shift in pixels (default 1-5)")
    p.add_argument("--seed", type=int, default=0, help="random seed: the same seed makes the same files (default 0)")
    p.add_argument("--generate", type=COUNT, metavar="N",
                   help="first draw N clean sample pictures into CLEAN_DIR (for trying it out without a dataset)")
    p.set_defaults(func=cmd_synth)

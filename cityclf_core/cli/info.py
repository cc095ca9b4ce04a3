"""cityclf store-info / models / demo: what a store holds; the known releases; a first run with nothing downloaded."""

from __future__ import annotations

import json
from pathlib import Path

from .common import progress_enabled


def cmd_store_info(args) -> int:
    from .common import open_store

    with open_store(args.store, write=False) as store:
        stats = store.stats()
    if args.json:
        print(json.dumps(stats, indent=2))
        return 0
    print(f"store {args.store}: {stats['files']} file(s) ({stats['failed']} failed), {stats['embeddings']} "
          f"embedding(s), {stats['scores']} score(s)")
    print("CLIPs:" if stats["encoders"] else "CLIPs: none yet")
    for e in stats["encoders"]:
        print(f"  {e['name']}: {e['source']} ({e['image_size']} px, {e['embed_dim']}-d)")
    print("sets of embeddings (CLIP, crop policy):" if stats["policies"] else "sets of embeddings: none yet")
    for p in stats["policies"]:
        print(f"  {p['clip_name']}, {p['policy']}: {p['embedded']} file(s)")
    print("heads with scores:" if stats["heads"] else "heads with scores: none yet")
    for head, combines in stats["heads"].items():
        print(f"  {head}: " + ", ".join(f"{n} ({combine})" for combine, n in combines.items()))
    return 0


def cmd_models(args) -> int:
    from ..catalogue import RELEASES, default_models_dir

    models_dir = Path(args.models_dir) if args.models_dir else default_models_dir()
    if args.json:
        print(json.dumps([_release_dict(r, models_dir / r.filename) for r in RELEASES], indent=2))
        return 0
    for r in RELEASES:
        local = models_dir / r.filename
        labels = ", ".join(r.config.label_names) if r.config.labels else r.config.kind.description
        print(f"{r.name}\n  {r.arch}: {labels}\n  CLIP: {r.pairing.clip.repo_id}, {r.pairing.policy.describe()}"
              f" ({r.pairing.why})")
        if r.alternative:
            print(f"  alternative: {r.alternative.clip.repo_id}, {r.alternative.policy.describe()} ({r.alternative.why})")
        print(f"  {_local_state(local, r)}\n  sha256 {r.sha256}")
    return 0


def _release_dict(r, local: Path) -> dict:
    def pairing(p):
        return {"clip": p.clip.repo_id, "crops": p.policy.describe(), "why": p.why} if p else None

    return {"name": r.name, "file": r.filename, "kind": r.arch,
            "labels": list(r.config.label_names) if r.config.labels else None,
            "clip": pairing(r.pairing), "alternative": pairing(r.alternative), "url": r.url, "sha256": r.sha256,
            "local": str(local) if local.is_file() else None}


def _local_state(local: Path, release) -> str:
    from ..weights import file_sha256

    if not local.is_file():
        return f"download: {release.url}"
    sha = file_sha256(local)
    if sha != release.sha256:
        return f"on disk, but not the released file (sha256 {sha}): {local} is used as a custom head"
    return f"on disk: {local}"


def cmd_demo(args) -> int:
    from ..demo import run_demo

    return run_demo(Path(args.dir), progress=progress_enabled(args))


def register(sub) -> None:
    p = sub.add_parser("store-info", help="what a store holds",
                       description="Print, as JSON, how many files, embeddings and scores a store holds, its "
                                   "CLIPs, its sets of embeddings (CLIP and crop policy) and which heads have "
                                   "scores (per tile combine).")
    p.add_argument("--store", required=True, metavar="DB", help="the store to describe")
    p.add_argument("--json", action="store_true", help="print it as JSON (for scripts)")
    p.set_defaults(func=cmd_store_info)

    p = sub.add_parser("models", help="list the known releases, their CLIP pairings and local copies")
    p.add_argument("--models-dir", metavar="DIR", help="where downloaded heads are kept (default: $CITYCLF_MODELS, "
                                                       "else ~/.cache/cityclf/models)")
    p.add_argument("--json", action="store_true", help="print the list as JSON")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("demo", help="build tiny models and sample images, then score them (offline)")
    p.add_argument("--dir", default="cityclf-demo", help="where to put the demo's models and images "
                                                        "(default: ./cityclf-demo)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(func=cmd_demo)

"""cityclf store-info / models / demo: what a store holds; the known releases; a first run with nothing downloaded
(the demo's command is in __init__.py, beside the main it runs)."""

from __future__ import annotations

import json
from pathlib import Path


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
    from ..kinds import get_kind
    from ..loading.catalogue import OTHER_HEADS, RELEASES, default_models_dir

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
    for o in OTHER_HEADS:
        local = models_dir / o.filename
        saved_as = "" if o.url.endswith("/" + o.filename) else f" (save it as {o.filename})"
        where = f"on disk: {local}" if local.is_file() else f"download by hand: {o.url}{saved_as}"
        print(f"{o.name} ({o.filename})\n  {o.arch}: {get_kind(o.arch).description}, for {o.measures}\n"
              f"  CLIP: {o.clip}, whole image\n  {where}" + (f"\n  md5 {o.md5}" if o.md5 else ""))
    return 0


def _release_dict(r, local: Path) -> dict:
    def pairing(p):
        return {"clip": p.clip.repo_id, "crops": p.policy.describe(), "why": p.why} if p else None

    return {"name": r.name, "file": r.filename, "kind": r.arch,
            "labels": list(r.config.label_names) if r.config.labels else None,
            "clip": pairing(r.pairing), "alternative": pairing(r.alternative), "url": r.url, "sha256": r.sha256,
            "local": str(local) if local.is_file() else None}


def _local_state(local: Path, release) -> str:
    from ..loading.weights import file_sha256

    if not local.is_file():
        return f"download: {release.url}"
    sha = file_sha256(local)
    if sha != release.sha256:
        return f"on disk, but not the released file (sha256 {sha}): {local} is used as a custom head"
    return f"on disk: {local}"


def register(sub) -> None:
    p = sub.add_parser("store-info", help="what a store holds",
                       description="Print, as JSON, how many files, embeddings and scores a store holds, its "
                                   "CLIPs, its sets of embeddings (CLIP and crop policy) and which heads have "
                                   "scores (per tile combine).")
    p.add_argument("--store", required=True, metavar="DB", help="the store to describe")
    p.add_argument("--json", action="store_true", help="print it as JSON (for scripts)")
    p.set_defaults(func=cmd_store_info)

    p = sub.add_parser("models", help="list the known releases and other heads that load, their CLIPs and "
                                      "where to get them")
    p.add_argument("--models-dir", metavar="DIR", help="where downloaded heads are kept (default: $CITYCLF_MODELS, "
                                                       "else ~/.cache/cityclf/models)")
    p.add_argument("--json", action="store_true", help="print the list as JSON")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("demo", help="build tiny models and sample images, then score them (offline)")
    p.add_argument("--dir", default="cityclf-demo", help="where to put the demo's models and images "
                                                        "(default: ./cityclf-demo)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    # its command (cli/__init__.py) runs `cityclf score` through main, as a user would

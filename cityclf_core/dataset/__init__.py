"""Dataset jobs: embedding folders into a store, scoring from it, selecting, copying or moving, tagging.

    passes.py      what a job runs: the heads and their CLIP passes, the store's CLIPs when nothing needs
                   embedding (plan.py: decided from the store and the files' stats), else loaded
    embed.py       embed_files: reader (reader.py) -> chunked CLIP (embedding.py) -> writer (writer.py)
    from_store.py  heads on stored embeddings; stored scores back as results; saving results
    blocks.py      scoring files in blocks, a bad image never costing the others
    select.py      bands and top/bottom N
    actions.py     copy / move (transfer.py: planning, safe_files.py: kill-safe file operations,
                   journal.py: moves recorded in the store), caption tags
    shards.py      a stable split by path, one job per machine
    report.py      a static gallery of stored scores (report_page.py: its page)

Each stage is a plain function over paths and a store (see store/protocol.py),
so that a distributed engine can run the same stages over parts of a dataset.
"""

from __future__ import annotations

from ..lazy import lazy_exports

#: where each name lives; imported on first use, so that parsing options (dataset.select) does not import the
#: jobs, torch or the CLIP code
_EXPORTS = {
    "TagOutcome": "actions",
    "TransferRequest": "actions",
    "transfer": "actions",
    "write_tags": "actions",
    "ScoreOptions": "blocks",
    "score_files": "blocks",
    "EmbedReport": "embed",
    "clip_passes": "embed",
    "embed_files": "embed",
    "register_passes": "embed",
    "save_results": "from_store",
    "score_store": "from_store",
    "stored_results": "from_store",
    "MoveJournal": "journal",
    "finish_interrupted_moves": "journal",
    "Bound": "select",
    "Selection": "select",
    "select": "select",
    "in_shard": "shards",
    "parse_shard": "shards",
    "Transfer": "transfer",
    "copy_or_move": "transfer",
    "destination": "transfer",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

# two names are also submodules (transfer.py, select.py): bound now, or importing the submodule later would
# shadow the function with the module (both are light: no torch)
from .actions import transfer  # noqa: E402
from .select import select  # noqa: E402


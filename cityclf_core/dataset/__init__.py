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

Each stage is a plain function over paths and a store (see store/protocol.py),
so that a distributed engine can run the same stages over parts of a dataset.
"""

from .actions import TagOutcome, TransferRequest, transfer, write_tags
from .blocks import ScoreOptions, score_files
from .embed import EmbedReport, clip_passes, embed_files, register_passes
from .from_store import save_results, score_store, stored_results
from .journal import MoveJournal, finish_interrupted_moves
from .select import Bound, Selection, select
from .shards import in_shard, parse_shard
from .transfer import Transfer, copy_or_move, destination

__all__ = ["Bound", "EmbedReport", "MoveJournal", "ScoreOptions", "Selection", "TagOutcome", "Transfer",
           "TransferRequest", "clip_passes", "copy_or_move", "destination", "embed_files", "finish_interrupted_moves",
           "in_shard", "parse_shard", "register_passes", "save_results", "score_files", "score_store", "select",
           "stored_results", "transfer", "write_tags"]

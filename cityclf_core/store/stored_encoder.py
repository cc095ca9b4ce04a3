"""A CLIP known only by its row in a store: scoring stored embeddings needs its identity and sizes, not its weights."""

from __future__ import annotations

from ..scoring.encoders import Encoder
from ..errors import StoreError
from .rows import EncoderRow


class StoredEncoder(Encoder):
    """Carries a stored CLIP's identity and sizes; cannot encode."""

    def __init__(self, row: EncoderRow):
        self.row = row
        self.identity, self.name, self.source = row.identity, row.name, row.source
        self.image_size, self.embed_dim = row.image_size, row.embed_dim

    def encode(self, views):
        raise StoreError(f"CLIP {self.name} is not loaded: scores come from stored embeddings only")

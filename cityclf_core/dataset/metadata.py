"""Writing each selected image's scores into the image file itself (`--write-metadata`).

The container is edited, never re-encoded (containers.py); the new file is
written under a temporary name in the same folder, fsynced and renamed over
the old one, so a kill leaves the old file or the new one. Its modification
time is kept unless `touch`. A rerun with the same scores changes nothing; new
scores replace ours and every other piece of metadata stays.

Skipped and reported, the file left untouched: a file that is not a regular
file, read-only, damaged or of a kind we don't edit; with a store, a file whose
content changed since it was scored (its hash, without our metadata, differs
from the stored one). After a write the store keeps the file's content key and
learns its new size and time, so the file is not embedded again.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from ..containers import ContainerError, read_metadata, set_metadata, strip_metadata
from ..image_metadata import build_record, merge_records
from ..confined import Area, Folder
from ..sidecars import SidecarError, confined_target, read_regular

CHANGED = ("its content changed since it was scored (the stored hash differs); score it again "
           "(cityclf score --store DB PATH ...) before writing its scores into it")


@dataclass
class MetadataOutcome:
    changed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, why the file was left alone)

    def summary(self, dry_run: bool = False) -> str:
        verb = "would be updated" if dry_run else "updated"
        return f"metadata: {len(self.changed)} file(s) {verb}, {len(self.unchanged)} already up to date"


def _unchanged_since_scored(data: bytes, st: os.stat_result, row) -> bool:
    """Whether the file is the one the store embedded: its size and time as the store recorded them (the rule
    the embedder trusts; a metadata write records them), else its hash, with or without our metadata."""
    if (row.size, row.mtime_ns) == (st.st_size, st.st_mtime_ns) or not row.content:
        return True
    return hashlib.sha256(data).hexdigest() == row.content or \
        hashlib.sha256(strip_metadata(data)).hexdigest() == row.content


def replace_file(folder: Folder, name: str, data: bytes, st: os.stat_result, touch: bool) -> os.stat_result:
    """Put `data` in place of the file `name` in `folder` (read with stat `st`), atomically, keeping its mode and
    (unless `touch`) its times; refused when the file changed while we worked. The one place this job writes."""
    now = folder.lstat(name)
    if now is None or (now.st_ino, now.st_size, now.st_mtime_ns) != (st.st_ino, st.st_size, st.st_mtime_ns):
        raise SidecarError("it changed while its metadata was being written; left as it is now")
    folder.write_atomic(name, data, stat.S_IMODE(st.st_mode),
                        times_ns=None if touch else (st.st_atime_ns, st.st_mtime_ns))
    return folder.lstat(name)


def write_metadata(rows: Sequence, provenance: Mapping[str, Mapping] | None = None, store=None,
                   touch: bool = False, dry_run: bool = False,
                   allowed_roots: Sequence[str | os.PathLike] | None = None) -> MetadataOutcome:
    """Write each (path, {head: result}) row's scores into its file; see the module's docstring. Files are
    opened only through folders walked from `allowed_roots` (default: each file's own folder), following no
    link on the way (confined.py)."""
    out = MetadataOutcome()
    roots = allowed_roots if allowed_roots is not None else {str(Path(p).parent) for p, _ in rows}
    with Area(roots) as area:
        for path, results in rows:
            try:
                changed = _write_one(Path(path), build_record(results, provenance), store, touch, dry_run, area)
            except (SidecarError, ContainerError) as e:
                out.skipped.append((str(path), str(e)))
                continue
            except OSError as e:
                out.skipped.append((str(path), f"cannot be written ({e.strerror or e}); left untouched"))
                continue
            (out.changed if changed else out.unchanged).append(str(path))
    return out


def _write_one(path: Path, record: dict, store, touch: bool, dry_run: bool, area: Area) -> bool:
    folder, name = confined_target(path, area)
    with folder:
        if not dry_run:
            folder.sweep(".cityclf-tmp", name=name)  # what a killed earlier write left
        found = read_regular(folder, name, "an image file")
        if found is None:
            raise SidecarError(f"{folder.join(name)}: no such file (gone since it was scored)")
        data, st = found
        row = store.file(str(path)) if store is not None else None
        if store is not None and (row is None or row.status != "ok"):
            raise SidecarError("the store has no record of this file's content; embed or score it first")
        if row is not None and not _unchanged_since_scored(data, st, row):
            raise SidecarError(CHANGED)
        try:
            earlier = read_metadata(data)
        except ValueError:  # our record, damaged: replaced
            earlier = None
        new = set_metadata(data, merge_records(earlier, record))
        if new == data:
            return False
        if not st.st_mode & stat.S_IWUSR or not os.access(folder.join(name), os.W_OK):
            raise SidecarError("the file is read-only; left untouched (make it writable to add its scores)")
        if dry_run:
            return True
        after = replace_file(folder, name, new, st, touch)
    if row is not None and not store.readonly:
        with store.transaction():
            store.restat_file(str(path), after.st_size, after.st_mtime_ns)
    return True


__all__ = ["MetadataOutcome", "replace_file", "write_metadata"]

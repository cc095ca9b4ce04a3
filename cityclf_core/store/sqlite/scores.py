"""The SQLite store's scores: heads' results per file, and selecting files by them inside SQLite."""

from __future__ import annotations

import json
import os
import time
from typing import Iterable, Iterator

import numpy as np

from ..rows import StoredScore
from .sql import from_db, guarded, to_db


class Scores:
    """The scores table: (path, head, combine) -> score, label, the kind's extra, kind."""

    @guarded
    def put_scores(self, rows: Iterable[tuple[str, str, str, StoredScore]]) -> None:
        """Store (path, head, combine, StoredScore) rows, replacing earlier ones."""
        now = time.time()
        rows = list(rows)
        self.db.executemany(
            "INSERT OR REPLACE INTO scores (path, head, combine, score, label, probs, updated, kind) "
            "VALUES (?,?,?,?,?,?,?,?)",
            [(to_db(path), head, combine, r.score, r.label, json.dumps(r.extra) if r.extra is not None else None, now,
              r.kind) for path, head, combine, r in rows])
        for label in {k for *_, r in rows if isinstance(r.extra, dict) for k in r.extra}:
            self.ensure_label_index(label)

    @guarded
    def ensure_label_index(self, label: str) -> None:
        """An index on one class's stored probability, so that sorting or a band by HEAD:CLASS needs no scan."""
        known = self.__dict__.setdefault("_label_indexes", set())
        if label in known:
            return
        name = "scores_p_" + label.encode("utf-8").hex()
        expr = label_expr("", label)  # partial: only the rows of heads that have this class
        self.db.execute(f"CREATE INDEX IF NOT EXISTS {name} ON scores(head, combine, {expr}) WHERE {expr} IS NOT NULL")
        known.add(label)

    @guarded
    def scores(self, heads: list[str] | None = None, combine: str | None = None,
               paths: list[str] | None = None) -> dict[str, dict[str, StoredScore]]:
        """{path: {head: StoredScore}} for the stored scores (of these paths, at most 900), by path."""
        kind = "kind" if "kind" in self._score_columns else "NULL"
        sql = f"SELECT path, head, score, label, probs, {kind} FROM scores"
        where, args = [], []
        if combine:
            where.append("combine = ?")
            args.append(combine)
        if paths is not None:
            where.append(f"path IN ({','.join('?' * len(paths))})")
            args += [to_db(p) for p in paths]
        out: dict[str, dict[str, StoredScore]] = {}
        for path, head, score, label, extra, kind in self.db.execute(
                sql + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY path", args):
            if heads is None or head in heads:
                extra = json.loads(extra) if extra else None
                # schema 1 stored no kind: its classifiers were the rows with probabilities
                kind = kind or ("class" if extra else "score")
                out.setdefault(from_db(path), {})[head] = StoredScore(score, label, extra, kind)
        return out

    @guarded
    def select_paths(self, combine: str, base: str, order: tuple[str, str | None] | None,
                     descending: bool = True, bounds: Iterable[tuple[str, str | None, str, float]] = (),
                     block: int = 1000) -> Iterator[list[str]]:
        """Paths whose stored scores satisfy every bound (head, class or None, 'min'|'max', value), ordered by
        `order` (head, class or None; ties by path) or else by path, in blocks of `block`: the selection, the
        sort and the top-N run in SQLite (the index on scores(head, combine, score) serves score bounds and
        orders), and memory holds one block. Paths are those with a score of head `base`."""
        bounds = list(bounds)
        heads = [base] + [h for h, _, _, _ in bounds] + ([order[0]] if order else [])
        aliases: dict[str, str] = {}
        joins, args = [], []
        for h in heads:
            if h not in aliases:
                a = aliases[h] = f"s{len(aliases)}"
                if len(aliases) == 1:
                    joins.append(f"scores {a}")
                else:
                    joins.append(f"JOIN scores {a} ON {a}.path = s0.path AND {a}.head = ? AND {a}.combine = ?")
                    args += [h, combine]
        where = ["s0.head = ?", "s0.combine = ?"]
        args += [heads[0], combine]

        def value(head: str, label: str | None) -> tuple[str, list]:
            a = aliases[head]
            if label is None:
                return f"{a}.score", []
            return label_expr(f"{a}.", label), []  # as the label's index spells it, so that it serves

        for head, label, kind, v in bounds:
            expr, extra = value(head, label)
            where.append(f"{expr} {'>=' if kind == 'min' else '<='} ?")
            args += [*extra, v]
        if order:
            expr, extra = value(*order)
            order_sql = f"{expr} {'DESC' if descending else 'ASC'}, s0.path"
            where.append(f"{expr} IS NOT NULL")
            args_order = extra
        else:
            order_sql, args_order = "s0.path", []
        sql = f"SELECT s0.path FROM {' '.join(joins)} WHERE {' AND '.join(where)} ORDER BY {order_sql}"
        if order and args_order:
            args = args + args_order + args_order  # once in WHERE (IS NOT NULL), once in ORDER BY
        cursor = self.db.execute(sql, args)
        while True:
            rows = cursor.fetchmany(block)
            if not rows:
                break
            yield [from_db(r[0]) for r in rows]

    @guarded
    def score_values(self, head: str, combine: str, label: str | None = None) -> np.ndarray:
        """Every stored score of `head` (or its class `label`'s probability) made with `combine`, as float64."""
        expr = label_expr("", label) if label else "score"
        rows = self.db.execute(f"SELECT {expr} FROM scores WHERE head = ? AND combine = ? AND {expr} IS NOT NULL",
                               (head, combine)).fetchall()
        return np.array([r[0] for r in rows], dtype=np.float64)

    @guarded
    def sample_path(self, head: str, combine: str) -> str | None:
        """Any one path with a score of `head` (no ordering: no scan)."""
        row = self.db.execute("SELECT path FROM scores WHERE head = ? AND combine = ? LIMIT 1",
                              (head, combine)).fetchone()
        return from_db(row[0]) if row else None

    @guarded
    def count_scores(self, head: str, combine: str) -> int:
        return self.db.execute("SELECT COUNT(*) FROM scores WHERE head = ? AND combine = ?",
                               (head, combine)).fetchone()[0]

    @guarded
    def path_range(self, outside: str | None = None) -> tuple[str | None, str | None]:
        """The first and last stored score paths (their common folder is every scored path's), leaving out
        those under the folder `outside` (e.g. where files were copied or moved to)."""
        where, args = "", ()
        if outside:
            prefix = outside.rstrip(os.sep) + os.sep
            where, args = " WHERE NOT (path >= ? AND path < ?)", (prefix, prefix[:-1] + chr(ord(os.sep) + 1))
        lo = self.db.execute("SELECT MIN(path) FROM scores" + where, args).fetchone()[0]  # SQLite's min/max shortcut
        hi = self.db.execute("SELECT MAX(path) FROM scores" + where, args).fetchone()[0]
        return (None if lo is None else from_db(lo)), (None if hi is None else from_db(hi))

    @guarded
    def scored_heads(self, combine: str) -> list[str]:
        """The heads with scores made with `combine`, found through the index (no scan of the scores)."""
        heads = [r[0] for r in self.db.execute(
            "WITH RECURSIVE h(head) AS (SELECT MIN(head) FROM scores UNION ALL "
            "SELECT (SELECT MIN(head) FROM scores WHERE head > h.head) FROM h WHERE h.head IS NOT NULL) "
            "SELECT head FROM h WHERE head IS NOT NULL")]
        return [h for h in heads if self.db.execute("SELECT 1 FROM scores WHERE head = ? AND combine = ? LIMIT 1",
                                                    (h, combine)).fetchone()]


    @guarded
    def score_heads(self) -> dict[str, dict[str, int]]:
        """{head: {combine: number of scored files}} for the stored scores."""
        out: dict[str, dict[str, int]] = {}
        for head, combine, n in self.db.execute(
                "SELECT head, combine, COUNT(*) FROM scores GROUP BY head, combine ORDER BY head, combine"):
            out.setdefault(head, {})[combine] = n
        return out


def label_expr(prefix: str, label: str) -> str:
    """SQL for one class's stored probability (an inline literal, so an index on it can serve a query)."""
    path = '$."' + label.replace('"', "") + '"'
    return f"json_extract({prefix}probs, '{path.replace(chr(39), chr(39) * 2)}')"


__all__ = ["Scores", "label_expr"]

r"""Popularity targets: what the heads learn, with every scaler fitted on the training split only.

Notation: b = total_bookmarks, v = total_view (both frozen at crawl time),
a = age in days = crawl time - upload time (never "today"), and
minmax_S(x) = (x - min_S x) / (max_S x - min_S x) with min and max taken over
the TRAINING split S only, saved with the model and applied unchanged to
validation, test and new data (the original refitted per split: a leak, and a
different scale per split). Each target's score s is in [0, 1] on the training
split (other data may fall slightly outside); the value people see is
1 + 99 * clip(s, 0, 1), the document's 1..100 `_scaled` form.

weighted_log (the document's score_weighted_log_average, alpha = 0.7):
    w = alpha * minmax_S(log(1 + b)) + (1 - alpha) * minmax_S(log(1 + v))
    s = minmax_S(w)

bookmark_rate (smoothed bookmarks per view, robust for small view counts):
    p = sum_S b / sum_S v                      (the training split's overall rate)
    r = (b + k * p) / (v + k)                  (k = 100 views by default)
    s = minmax_S(log r)

age_aware (the weighted log score with the upload age's share removed):
    for x in (b, v): fit log(1 + x) ~ c0 + c1 * log(1 + a) by least squares on S
    e_x = log(1 + x) - (c0 + c1 * log(1 + a))      (what exposure time does not explain)
    w = alpha * minmax_S(e_b) + (1 - alpha) * minmax_S(e_v)
    s = minmax_S(w)
Works with no upload or crawl time have no age_aware target (nan) and are left out.

weighted_log_ratio (the document's planned weighted average that includes the
bookmarks-per-view ratio; alpha 0.5, beta 0.2, gamma 0.3, summing to 1):
    r = (b + k * p) / (v + k)                  (the smoothed bookmark rate above)
    w = alpha * minmax_S(log(1 + b)) + beta * minmax_S(log(1 + v)) + gamma * minmax_S(log r)
    s = minmax_S(w)

per_artist (any target, `target.per_artist: yes`): "better than this artist's usual".
    m_A = mean of s over artist A's training works
    s' = minmax_S(s - m_A)
For an artist without training works (every test artist of an artist split),
m_A is the mean of s over the works being scored: their ranking within the
artist is what is left. Works without a known artist have no such target (nan).
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import ConfigError
from .records import Records

TARGETS = ("weighted_log", "bookmark_rate", "age_aware", "weighted_log_ratio")


def check_weights(name: str, alpha: float, beta: float | None = None, gamma: float | None = None) -> None:
    """Clear errors for weights a target cannot use (naming the config key)."""
    for key, w in (("alpha", alpha), ("beta", beta), ("gamma", gamma)):
        if w is not None and not 0.0 <= w <= 1.0:
            raise ConfigError(f"target.{key} must be between 0 and 1, not {w}")
    if name == "weighted_log_ratio":
        total = alpha + (beta or 0.0) + (gamma or 0.0)
        if abs(total - 1.0) > 1e-6:
            raise ConfigError(f"target.alpha + target.beta + target.gamma must sum to 1 (a weighted average), not "
                              f"{alpha} + {beta} + {gamma} = {total:.6g}")


class MinMax:
    """min-max scaling fitted once; applied unchanged afterwards."""

    def __init__(self, lo: float, hi: float):
        self.lo, self.hi = float(lo), float(hi)

    @classmethod
    def fit(cls, x: np.ndarray, what: str) -> "MinMax":
        x = np.asarray(x, dtype=np.float64)
        x = x[np.isfinite(x)]
        if len(x) == 0:
            raise ConfigError(f"no training values to fit the {what} scaler on")
        lo, hi = float(x.min()), float(x.max())
        if hi <= lo:
            raise ConfigError(f"every training example has the same {what} ({lo:.4g}); need varied popularity")
        return cls(lo, hi)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, dtype=np.float64) - self.lo) / (self.hi - self.lo)

    def to_list(self) -> list[float]:
        return [self.lo, self.hi]


class Target:
    """A fitted popularity target: `score(records)` -> s (train range [0, 1]); `to_dict()` goes in the sidecar."""

    def __init__(self, name: str, params: dict, scalers: dict[str, MinMax], n_fit: int):
        self.name, self.params, self.scalers, self.n_fit = name, params, scalers, n_fit

    # ------------------------------------------------------------ fitting

    @classmethod
    def fit(cls, name: str, train: Records, alpha: float | None = None, k: float = 100.0, beta: float | None = None,
            gamma: float | None = None, per_artist: bool = False) -> "Target":
        """Fit on the TRAINING records only."""
        if name not in TARGETS:
            raise ConfigError(f"target must be one of {', '.join(TARGETS)}, not {name!r}")
        if alpha is None:
            alpha = 0.5 if name == "weighted_log_ratio" else 0.7
        if name == "weighted_log_ratio":
            beta, gamma = (0.2 if beta is None else beta), (0.3 if gamma is None else gamma)
        check_weights(name, alpha, beta, gamma)
        if k < 0:
            raise ConfigError(f"target.k must not be negative, not {k}")
        target = cls._fit(name, train, alpha, k, beta, gamma)
        if per_artist:
            target._fit_per_artist(train)
        return target

    def _fit_per_artist(self, train: Records) -> None:
        known = train.user_id >= 0
        if not known.any():
            raise ConfigError("target.per_artist needs the artists' user ids (user.id in the sidecars); none of "
                              f"the {len(train)} training works has one. Set target.per_artist: no")
        s = self._base_score(train)
        ok = known & np.isfinite(s)
        users, inv = np.unique(train.user_id[ok], return_inverse=True)
        means = np.bincount(inv, weights=s[ok]) / np.bincount(inv)
        self.params["per_artist"] = True
        self.params["artist_means"] = {str(int(u)): float(m) for u, m in zip(users, means)}
        self.scalers["per_artist"] = MinMax.fit(s[ok] - means[inv], "score minus the artist's mean")

    @classmethod
    def _fit(cls, name: str, train: Records, alpha: float, k: float, beta, gamma) -> "Target":
        b, v = train.bookmarks, train.views
        if name == "weighted_log_ratio":
            params = {"alpha": alpha, "beta": beta, "gamma": gamma, "k": k, "prior": float(b.sum() / v.sum())}
            sc = {"log_bookmarks": MinMax.fit(np.log1p(b), "log(1 + bookmarks)"),
                  "log_views": MinMax.fit(np.log1p(v), "log(1 + views)")}
            target = cls(name, params, sc, len(train))
            sc["log_rate"] = MinMax.fit(np.log(target._rate(train)), "log bookmark rate")
        elif name == "weighted_log":
            params = {"alpha": alpha}
            sc = {"log_bookmarks": MinMax.fit(np.log1p(b), "log(1 + bookmarks)"),
                  "log_views": MinMax.fit(np.log1p(v), "log(1 + views)")}
        elif name == "bookmark_rate":
            params = {"k": k, "prior": float(b.sum() / v.sum())}
            sc = {}
        else:
            la = np.log1p(np.clip(train.age_days, 0, None))
            ok = np.isfinite(la)
            if ok.sum() < max(3, 0.5 * len(train)):
                raise ConfigError(f"the age_aware target needs upload and crawl times; only {int(ok.sum())} of "
                                  f"{len(train)} training works have both. When the sidecars' mtimes are the "
                                  "upload times (gallery-dl's mtime option), give the crawl date: `cityclf pixiv "
                                  "ingest DATASET --crawled YYYY-MM-DD`")
            params = {"alpha": alpha, "age_fit_bookmarks": _line(la[ok], np.log1p(b[ok])),
                      "age_fit_views": _line(la[ok], np.log1p(v[ok]))}
            sc = {}
            target = cls(name, params, sc, len(train))
            eb, ev = target._age_residuals(train)
            sc["residual_bookmarks"] = MinMax.fit(eb, "age-adjusted log bookmarks")
            sc["residual_views"] = MinMax.fit(ev, "age-adjusted log views")
        target = cls(name, params, sc, len(train))
        if name == "bookmark_rate":
            sc["log_rate"] = MinMax.fit(np.log(target._rate(train)), "log bookmark rate")
        else:
            sc["weighted"] = MinMax.fit(target._weighted(train), "weighted score")
        return target

    # ------------------------------------------------------------ applying

    def score(self, records: Records) -> np.ndarray:
        """s per record (train range [0, 1]; nan where the target is undefined)."""
        s = self._base_score(records)
        if not self.params.get("per_artist"):
            return s
        means = self.params["artist_means"]
        m = np.array([means.get(str(int(u)), np.nan) for u in records.user_id], dtype=np.float64)
        unseen = np.isnan(m) & (records.user_id >= 0)
        for u in np.unique(records.user_id[unseen]):  # artists without training works: their own mean here
            mine = records.user_id == u
            m[mine] = np.nanmean(s[mine]) if np.isfinite(s[mine]).any() else np.nan
        return self.scalers["per_artist"](s - m)

    def _base_score(self, records: Records) -> np.ndarray:
        if self.name == "bookmark_rate":
            return self.scalers["log_rate"](np.log(self._rate(records)))
        return self.scalers["weighted"](self._weighted(records))

    @staticmethod
    def value(score) -> np.ndarray:
        """The document's 1..100 form of a score."""
        return 1.0 + 99.0 * np.clip(np.asarray(score, dtype=np.float64), 0.0, 1.0)

    def _rate(self, r: Records) -> np.ndarray:
        k, p = self.params["k"], self.params["prior"]
        return (r.bookmarks + k * p) / (r.views + k)

    def _age_residuals(self, r: Records) -> tuple[np.ndarray, np.ndarray]:
        la = np.log1p(np.clip(r.age_days, 0, None))
        (b0, b1), (v0, v1) = self.params["age_fit_bookmarks"], self.params["age_fit_views"]
        return np.log1p(r.bookmarks) - (b0 + b1 * la), np.log1p(r.views) - (v0 + v1 * la)

    def _weighted(self, r: Records) -> np.ndarray:
        a = self.params["alpha"]
        if self.name == "weighted_log_ratio":
            return (a * self.scalers["log_bookmarks"](np.log1p(r.bookmarks))
                    + self.params["beta"] * self.scalers["log_views"](np.log1p(r.views))
                    + self.params["gamma"] * self.scalers["log_rate"](np.log(self._rate(r))))
        if self.name == "weighted_log":
            nb, nv = self.scalers["log_bookmarks"](np.log1p(r.bookmarks)), self.scalers["log_views"](np.log1p(r.views))
        else:
            eb, ev = self._age_residuals(r)
            nb, nv = self.scalers["residual_bookmarks"](eb), self.scalers["residual_views"](ev)
        return a * nb + (1.0 - a) * nv

    # ------------------------------------------------------------ saving

    def to_dict(self) -> dict:
        return {"name": self.name, **self.params, "scalers": {k: s.to_list() for k, s in self.scalers.items()},
                "fitted_on": "train", "n_fit": self.n_fit}

    @classmethod
    def from_dict(cls, d: dict, source: str = "target") -> "Target":
        try:
            name = d["name"]
            params = {k: v for k, v in d.items() if k not in ("name", "scalers", "fitted_on", "n_fit")}
            scalers = {k: MinMax(*v) for k, v in d["scalers"].items()}
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"{source}: not a saved popularity target ({e})") from None
        if name not in TARGETS:
            raise ConfigError(f"{source}: unknown target {name!r}")
        return cls(name, params, scalers, int(d.get("n_fit", 0)))


def _line(x: np.ndarray, y: np.ndarray) -> list[float]:
    """Least-squares [c0, c1] of y ~ c0 + c1 x (c1 = 0 when x does not vary)."""
    if np.ptp(x) == 0:
        return [float(y.mean()), 0.0]
    c1, c0 = np.polyfit(x, y, 1)
    return [float(c0), float(c1)] if math.isfinite(c0) and math.isfinite(c1) else [float(y.mean()), 0.0]


__all__ = ["MinMax", "TARGETS", "Target", "check_weights"]

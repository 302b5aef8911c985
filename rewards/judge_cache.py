"""On-disk verdict cache (sqlite): a resumed run or an evaluation re-pays no judge call it already made.

    python -c "from rewards.judge_cache import VerdictCache; c = VerdictCache('/tmp/c.sqlite'); print(len(c))"

Key = SHA-256 of (judge model, prompt version + mode, question, completion, criterion); value = 1.0 / 0.0 for a
verdict or the 1–10 rating. Only known answers are stored, so an unknown is asked again next time. WAL mode and
a busy timeout let several ranks share one file.
"""
from __future__ import annotations

import hashlib
import json
import sqlite3
import threading


class VerdictCache:
    def __init__(self, path: str):
        self.path = path
        self._lock = threading.Lock()  # one connection, used from the event loop's thread and grade_sync helpers
        self._db = sqlite3.connect(path, timeout=30.0, check_same_thread=False)
        with self._lock, self._db:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS verdicts (key TEXT PRIMARY KEY, value REAL NOT NULL)")

    @staticmethod
    def key(*parts) -> str:
        return hashlib.sha256(json.dumps(parts, ensure_ascii=False, sort_keys=True).encode("utf-8", "surrogatepass")).hexdigest()

    def get_many(self, keys: list[str]) -> dict[str, float]:
        if not keys:
            return {}
        with self._lock:
            rows = self._db.execute(f"SELECT key, value FROM verdicts WHERE key IN ({','.join('?' * len(keys))})",
                                    keys).fetchall()
        return dict(rows)

    def put_many(self, values: dict[str, float]) -> None:
        if values:
            with self._lock, self._db:
                self._db.executemany("INSERT OR REPLACE INTO verdicts VALUES (?, ?)", list(values.items()))

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM verdicts").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()

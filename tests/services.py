"""Real services the tests start on 127.0.0.1 (free ports): redis-server, and a
master, a replica and three Sentinels of it; the bench's (:mod:`tornws.bench.failover`)."""

from __future__ import annotations

import shutil
import tempfile

from tornws.bench.failover import RedisProcess, Replicated

REDIS = shutil.which("redis-server")

#: A master, its replica and three Sentinels on 127.0.0.1.
Sentinels = Replicated


class Redis(RedisProcess):
    """redis-server on 127.0.0.1, no persistence: a restart loses everything."""

    def __init__(self) -> None:
        # (It writes no file there: no persistence, no replica.)
        super().__init__(directory=tempfile.gettempdir())

"""A route's probe budget holds across instances that share only Redis (issue 21, item 8).

Two instances with state dirs of their own (no file ledger in common) probe the same route one
after the other through a real `redis-server` on loopback: the second finds the hour spent.
"""

from __future__ import annotations

from pathlib import Path

from tests.http.test_probe_budget import BUDGET, CountingStub, probe, write_config
from tests.system.test_scale_out import RedisServer

PREFIX = "rvrprobetest"


def test_instances_on_one_redis_share_the_hourly_budget(tmp_path: Path) -> None:
    redis = RedisServer().start()
    try:
        with CountingStub() as stub:
            state = {"state": {"backend": "redis", "url": "os.environ/REDIS_URL", "prefix": PREFIX}}
            spent, items = [], []
            for instance in ("a", "b"):
                directory = tmp_path / instance
                directory.mkdir()
                config = write_config(directory, stub.api_base, directory / "state", **state)
                before = stub.tokens
                summary, item_tokens = probe(config, directory / "gold.jsonl", {"REDIS_URL": redis.url})
                spent.append(stub.tokens - before)
                items += item_tokens
                assert summary == spent[-1]
        shared = redis.command("HGETALL", f"{PREFIX}:probe_budget/probed")
    finally:
        redis.kill()
    assert spent[0] > BUDGET // 2, f"the first instance hardly probed: {spent}"
    assert spent[1] <= max(items), f"the second instance spent again: {spent}"
    assert float(shared["tokens"]) == sum(spent)  # Redis holds what both billed

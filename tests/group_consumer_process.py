"""A consumer group member as a process of its own (so a test can kill -9 it): prints one JSON line per record
it consumed, flushed, then commits, so what it printed before a commit is at least once, and exits on SIGTERM.

    python -m tests.group_consumer_process BOOTSTRAP TOPIC GROUP NAME OUT_FILE
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys

from clients.consumer import Consumer
from clients.group_member import CommitFailedError


async def main(bootstrap: str, topic: str, group: str, name: str, out_path: str) -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    with open(out_path, "a", encoding="utf-8") as out:
        async with Consumer(
            topic, bootstrap=bootstrap, group_id=group, enable_auto_commit=False, client_id=name
        ) as consumer:
            while not stop.is_set():
                batches = await consumer.getmany(timeout_ms=200)
                for records in batches.values():
                    for r in records:
                        line = {"c": name, "g": consumer.generation, "p": r.partition, "o": r.offset}
                        out.write(json.dumps({**line, "v": (r.value or b"").decode()}) + "\n")
                out.flush()
                if batches:
                    with contextlib.suppress(CommitFailedError):
                        await consumer.commit()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:6]))

"""Where a one-record produce spends the broker's time, stage by stage, in one process: prints figures, asserts nothing.

    .venv/bin/python bench/produce_path_bench.py            # 20,000 requests, 8 per round, best of 5 passes

No network: each request is an aiocoap Message built in the process, taken through the same stages as the /produce
resource's fast path (base.py's decode_body, ProduceRequest.parse, Broker.produce_nowait, the acknowledgement's
deadline, the group-commit round with its fsync, the CBOR answer). What it leaves out is aiocoap's own share (TCP
framing, option parsing, the token manager, the socket writes), which the bare aiocoap server in broker_bench.py
pays too. The best of several passes is reported per stage, because other work on a shared machine slows whole
passes down by tens of percent.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import aiocoap
import cbor2
from aiocoap import Code

from pi_broker.broker import Broker, ProduceResult
from pi_broker.config import BrokerConfig
from pi_broker.messages import CreateTopicRequest, ProduceRequest
from pi_broker.resources.base import decode_body, encode_body
from pikafka.errors import PikafkaError
from pikafka.protocol import CT_CBOR
from pikafka.records import Record, encode_batch

STAGES = ("request message", "CBOR decode", "parse", "check and append", "deadline", "round with fsync", "answer")


def answer(request: Any, results: list[ProduceResult]) -> Any:
    """The same document ProduceResource answers with."""
    document = {
        "results": [
            {"topic": r.topic, "partition": r.partition, "base_offset": r.base_offset, "last_offset": r.last_offset}
            for r in results
        ]
    }
    return encode_body(request, document, code=Code.CHANGED)


async def one_pass(broker: Broker, body: bytes, requests: int, per_round: int) -> list[int]:
    """Nanoseconds spent in each stage over `requests` requests, taken `per_round` at a time."""
    spent = [0] * len(STAGES)
    clock = time.perf_counter_ns
    for _ in range(requests // per_round):
        taken: list[tuple[Any, list[list[ProduceResult] | PikafkaError]]] = []
        for _ in range(per_round):
            t0 = clock()
            request = aiocoap.Message(code=Code.POST, uri_path=("produce",), payload=body, content_format=CT_CBOR)
            t1 = clock()
            decoded = decode_body(request)
            t2 = clock()
            produce = ProduceRequest.parse(decoded)
            t3 = clock()
            pending = broker.produce_nowait(produce)
            t4 = clock()
            outcome: list[list[ProduceResult] | PikafkaError] = []
            if pending.waiting:
                pending.arm(produce.timeout_ms / 1000, outcome.append)
            else:  # a round the burst rule began inside produce_nowait already made it durable
                outcome.append(pending.settle_now())
            t5 = clock()
            for stage, (start, end) in enumerate(((t0, t1), (t1, t2), (t2, t3), (t3, t4), (t4, t5))):
                spent[stage] += end - start
            taken.append((request, outcome))
        t5 = clock()
        while not all(outcome for _, outcome in taken):
            await asyncio.sleep(0)  # one loop iteration: the group commit's scheduled round runs here
        t6 = clock()
        for request, outcome in taken:
            result = outcome[0]
            if isinstance(result, PikafkaError):
                raise result
            answer(request, result)
        t7 = clock()
        spent[5] += t6 - t5
        spent[6] += t7 - t6
    return spent


async def main(requests: int, per_round: int, passes: int) -> None:
    with tempfile.TemporaryDirectory(prefix="pikafka-bench-path-") as tmp:
        broker = Broker(BrokerConfig(data_dir=Path(tmp)))
        broker.open()
        broker.start()
        try:
            broker.create_topic(CreateTopicRequest("single", 1, 1, {}))
            body = cbor2.dumps(
                {
                    "acks": 1,
                    "batches": [{"topic": "single", "partition": 0, "records": encode_batch([Record(b"x" * 100)])}],
                }
            )
            await one_pass(broker, body, min(requests, 2_000), per_round)  # warm-up: fsync placement, caches
            best: list[int] | None = None
            for _ in range(passes):
                spent = await one_pass(broker, body, requests, per_round)
                best = spent if best is None else [min(a, b) for a, b in zip(best, spent, strict=True)]
            assert best is not None
            print(f"one-record produce, acks=1, {per_round} per round, {requests:,} requests, best of {passes} passes")
            for name, ns in zip(STAGES, best, strict=True):
                print(f"  {name:18s} {ns / requests / 1000:6.1f} µs per request")
            pikafka_ns = sum(best[1:])
            print(f"  {'pikafka in all':18s} {pikafka_ns / requests / 1000:6.1f} µs per request (all but the message)")
            commit = broker.group_commit
            print(f"  fsync rounds: {commit.rounds:,}, of which on the event loop: {commit.rounds_on_loop:,}")
        finally:
            await broker.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--per-round", type=int, default=8)
    parser.add_argument("--passes", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(main(args.requests, args.per_round, args.passes))

"""A bare aiocoap server whose one resource does nothing: the yardstick the broker benchmark compares against.

`--answer produce` makes it answer with what the broker answers a one-record produce with (a CBOR document of the
offsets, Content-Format 60) instead of an empty 2.04, and `--answer format` with an empty payload that still carries
Content-Format 60: durability_cost_bench.py's `bare-answer` and `bare-format` forms, which show what the answer alone
costs, and how much of it is the option.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

import aiocoap
import aiocoap.resource as resource
import cbor2

from pikafka.port_probe import PortInUseError, ensure_port_free
from pikafka.protocol import CT_CBOR

# The broker's answer to a one-record produce (ProduceResource), offsets of a busy partition's size.
PRODUCE_ANSWER = cbor2.dumps(
    {"results": [{"topic": "single", "partition": 0, "base_offset": 1_234_567, "last_offset": 1_234_567}]}
)
# What each --answer puts in every response besides the 2.04 code.
ANSWERS: dict[str, dict[str, object]] = {
    "empty": {"payload": b""},
    "produce": {"payload": PRODUCE_ANSWER, "content_format": CT_CBOR},
    "format": {"payload": b"", "content_format": CT_CBOR},
}


def burn_cpu(seconds: float) -> None:
    """Spin for `seconds` of CPU: how the benchmarks emulate a slower CPU (a Pi's) on this one."""
    if seconds > 0:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            pass


class Nothing(resource.Resource):  # type: ignore[misc]
    def __init__(self, cpu_tax_s: float = 0.0, answer: str = "empty") -> None:
        super().__init__()
        self._cpu_tax_s = cpu_tax_s
        # Settled once, so the yardstick spends nothing per request on choosing its answer.
        self._fields: dict[str, object] = ANSWERS[answer]

    async def render_post(self, request: aiocoap.Message) -> aiocoap.Message:
        burn_cpu(self._cpu_tax_s)
        return aiocoap.Message(code=aiocoap.CHANGED, **self._fields)


async def serve(port: int, cpu_tax_s: float = 0.0, answer: str = "empty") -> None:
    site = resource.Site()
    site.add_resource(["produce"], Nothing(cpu_tax_s, answer))
    # Like the broker, refuse a taken port: sharing it, each server would answer part of the other's clients.
    ensure_port_free("127.0.0.1", port)
    await aiocoap.Context.create_server_context(site, bind=("127.0.0.1", port))
    await asyncio.Event().wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cpu-tax-us", type=int, default=0, help="busy CPU added to every request, in µs")
    parser.add_argument("--answer", choices=tuple(ANSWERS), default="empty", help="what every answer carries")
    args = parser.parse_args()
    try:
        asyncio.run(serve(args.port, args.cpu_tax_us / 1e6, args.answer))
    except PortInUseError as exc:
        sys.exit(f"bare_coap_server: {exc}")

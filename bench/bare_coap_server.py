"""A bare aiocoap server whose one resource does nothing: the yardstick the broker benchmark compares against."""

from __future__ import annotations

import argparse
import asyncio
import time

import aiocoap
import aiocoap.resource as resource


def burn_cpu(seconds: float) -> None:
    """Spin for `seconds` of CPU: how the benchmarks emulate a slower CPU (a Pi's) on this one."""
    if seconds > 0:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            pass


class Nothing(resource.Resource):  # type: ignore[misc]
    def __init__(self, cpu_tax_s: float = 0.0) -> None:
        super().__init__()
        self._cpu_tax_s = cpu_tax_s

    async def render_post(self, request: aiocoap.Message) -> aiocoap.Message:
        burn_cpu(self._cpu_tax_s)
        return aiocoap.Message(code=aiocoap.CHANGED, payload=b"")


async def serve(port: int, cpu_tax_s: float = 0.0) -> None:
    site = resource.Site()
    site.add_resource(["produce"], Nothing(cpu_tax_s))
    await aiocoap.Context.create_server_context(site, bind=("127.0.0.1", port))
    await asyncio.Event().wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cpu-tax-us", type=int, default=0, help="busy CPU added to every request, in µs")
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.cpu_tax_us / 1e6))

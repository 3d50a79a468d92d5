"""A bare aiocoap server whose one resource does nothing: the yardstick the broker benchmark compares against."""

from __future__ import annotations

import argparse
import asyncio

import aiocoap
import aiocoap.resource as resource


class Nothing(resource.Resource):  # type: ignore[misc]
    async def render_post(self, request: aiocoap.Message) -> aiocoap.Message:
        return aiocoap.Message(code=aiocoap.CHANGED, payload=b"")


async def serve(port: int) -> None:
    site = resource.Site()
    site.add_resource(["produce"], Nothing())
    await aiocoap.Context.create_server_context(site, bind=("127.0.0.1", port))
    await asyncio.Event().wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    asyncio.run(serve(parser.parse_args().port))

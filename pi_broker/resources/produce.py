"""/produce: POST a CBOR map of record batches; answers with their offsets once durable (acks 1/-1).

A one-datagram produce is answered straight from the moment its records become durable: the partition releases the
request's acknowledgement (pending_acks.py) and the callback below puts the response on the aiocoap pipe, with no
task parked in between. One-record produces from simple sensors are the common case on a Pi, and each parked and
resumed task there cost a measurable share of the broker's throughput. Block-wise uploads and wrong methods take
the general path of every resource.
"""

from __future__ import annotations

from typing import Any

from aiocoap import Code

from pi_broker.broker import ProduceResult
from pi_broker.messages import ProduceRequest
from pi_broker.resources.base import BrokerResource, decode_body, encode_body
from pikafka.errors import PikafkaError


class ProduceResource(BrokerResource):
    async def render_to_pipe(self, pipe: Any) -> None:
        if not self.render_now(pipe):
            await super().render_to_pipe(pipe)

    def render_now(self, pipe: Any) -> bool:
        request = pipe.request
        if request.code != Code.POST or request.opt.block1 is not None or request.opt.block2 is not None:
            return False
        try:
            self.check_size(request)
            produce = ProduceRequest.parse(decode_body(request))
            pending = self.broker.produce_nowait(produce)
            if not pending.waiting:
                pipe.add_response(self._answer(request, pending.settle_now()), is_last=True)
                return True
        except Exception as exc:
            pipe.add_response(self.error_response(request, exc), is_last=True)
            return True

        def answer(outcome: list[ProduceResult] | PikafkaError) -> None:
            try:
                if isinstance(outcome, PikafkaError):
                    raise outcome
                response = self._answer(request, outcome)
            except Exception as exc:
                response = self.error_response(request, exc)
            pipe.add_response(response, is_last=True)

        pending.arm(produce.timeout_ms / 1000, answer)
        # A client that hangs up (or a connection that drops) is not answered into an ended pipe.
        pipe.on_interest_end(pending.abandon)
        return True

    async def handle_post(self, request: Any) -> Any:
        """The general path: a block-wise upload, reassembled by aiocoap."""
        produce = ProduceRequest.parse(decode_body(request))
        return self._answer(request, await self.broker.produce(produce))

    def _answer(self, request: Any, results: list[ProduceResult]) -> Any:
        document = {
            "results": [
                {"topic": r.topic, "partition": r.partition, "base_offset": r.base_offset, "last_offset": r.last_offset}
                for r in results
            ]
        }
        return self.finish(request, encode_body(request, document, code=Code.CHANGED))

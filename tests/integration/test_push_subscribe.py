"""Push subscriptions (CoAP Observe on /topics/{t}/{p}/records): every record, in order, also for a reader too slow
for the notifications (it fills the gaps by fetch); and libcoap's coap-client can observe the resource too."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time

import pytest

from clients.admin import Admin
from clients.producer import Producer
from clients.push_subscription import PushSubscriber

COAP_CLIENT = shutil.which("coap-client-notls")


async def test_subscriber_gets_every_record_in_order_even_when_slow(broker):
    async with Admin(broker.url) as admin:
        await admin.create_topic("pushed", partitions=2)
    async with Producer(broker.url, linger_ms=0) as producer:
        for i in range(20):
            await producer.send("pushed", f"early-{i:04d}".encode(), partition=i % 2)
        await producer.flush()
        async with PushSubscriber("pushed", bootstrap=broker.url, start="earliest", max_buffered=5) as subscriber:
            for i in range(400):
                await producer.send("pushed", f"v-{i:04d}".encode(), partition=i % 2)
                if i % 50 == 0:
                    await producer.flush()
            await producer.flush()
            got: list = []
            while len(got) < 420:
                record = await subscriber.get(30)
                assert record is not None, f"stalled after {len(got)} records"
                got.append(record)
                if len(got) % 25 == 0:
                    await asyncio.sleep(0.2)  # a slow reader: notifications pile up and are overwritten
    for partition in (0, 1):
        offsets = [r.offset for r in got if r.partition == partition]
        assert offsets == list(range(210)), offsets[:20]
    assert len({r.value for r in got}) == 420


@pytest.mark.skipif(COAP_CLIENT is None, reason="coap-client-notls (Debian libcoap3-bin) not installed")
def test_coap_client_observes_the_partition_records_resource(broker, tmp_path):
    assert COAP_CLIENT is not None

    async def setup() -> None:
        async with Admin(broker.url) as admin:
            await admin.create_topic("seen")

    asyncio.run(setup())
    out = tmp_path / "observed.bin"
    with out.open("wb") as sink:
        observer = subprocess.Popen(
            [COAP_CLIENT, "-s", "5", f"{broker.url}/topics/seen/0/records?offset=0"],
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
        time.sleep(1.0)

        async def produce() -> None:
            async with Producer(broker.url, linger_ms=0) as producer:
                for value in (b"first-reading", b"second-reading", b"third-reading"):
                    await (await producer.send("seen", value))
                    await asyncio.sleep(0.3)

        asyncio.run(produce())
        observer.wait(timeout=20)
    seen = out.read_bytes()
    # The notifications are CBOR; the record values travel inside the record batches unchanged.
    positions = [seen.find(v) for v in (b"first-reading", b"second-reading", b"third-reading")]
    assert all(p >= 0 for p in positions) and positions == sorted(positions), seen[:300]

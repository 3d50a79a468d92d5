"""The producer's fast encoder must produce exactly what the shared codec produces."""

from hypothesis import given, settings
from hypothesis import strategies as st

from clients.batch_encoding import encode_pending
from pikafka.records import Record, decode_records, encode_batch

blobs = st.none() | st.binary(max_size=64)
headers = st.lists(st.tuples(st.text(max_size=8), blobs), max_size=3).map(tuple)
# Deltas within a batch are int32: keep every timestamp within 2**29 ms of now.
NOW = 1_795_000_000_000
timestamps = st.none() | st.integers(min_value=NOW - 2**29, max_value=NOW + 2**29)
records = st.lists(st.tuples(blobs, blobs, headers, timestamps), min_size=1, max_size=20)


@settings(max_examples=300, deadline=None)
@given(
    records=records,
    producer_id=st.integers(min_value=-1, max_value=2**62),
    base_sequence=st.integers(min_value=-1, max_value=2**31 - 1),
    now_ms=st.integers(min_value=NOW - 2**29, max_value=NOW + 2**29),
)
def test_fast_encoder_matches_shared_codec(records, producer_id, base_sequence, now_ms):
    fast = encode_pending(
        records, producer_id=producer_id, producer_epoch=0, base_sequence=base_sequence, now_ms=now_ms
    )
    shared = encode_batch(
        [Record(value, key, hdrs, ts) for value, key, hdrs, ts in records],
        producer_id=producer_id,
        producer_epoch=0,
        base_sequence=base_sequence,
        now_ms=now_ms,
    )
    assert fast == shared
    decoded = decode_records(fast)
    assert [(r.value, r.key, r.headers) for r in decoded] == [(v, k, tuple(h)) for v, k, h, _ in records]

"""The record batch format: round trips, a golden encoding, stamping, and detection of damaged batches."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pikafka.records import (
    HEADER_SIZE,
    LENGTH_PREFIX,
    CorruptBatchError,
    Record,
    check_batch,
    decode_records,
    encode_batch,
    iter_batches,
    parse_header,
    split_batches,
    stamp,
    validate_records,
)

NOW_MS = 1_700_000_000_000

optional_bytes = st.none() | st.binary(max_size=64)
header_keys = st.text(alphabet=st.characters(codec="utf-8"), max_size=12)
records = st.builds(
    Record,
    value=optional_bytes,
    key=optional_bytes,
    headers=st.lists(st.tuples(header_keys, optional_bytes), max_size=3),
    # Deltas from the first timestamp are int32: keep every timestamp within 2**29 ms of NOW_MS.
    timestamp_ms=st.none() | st.integers(NOW_MS - 2**29, NOW_MS + 2**29),
)
record_lists = st.lists(records, min_size=1, max_size=8)


def _golden_batch() -> bytes:
    return encode_batch(
        [
            Record(b"21.5", key=b"temp", headers=[("unit", b"C")], timestamp_ms=1_700_000_000_000),
            Record(None, key=None, timestamp_ms=1_700_000_000_250),
            Record(b"", key=b"k", headers=[("n", None)], timestamp_ms=1_699_999_999_900),
        ],
        producer_id=42,
        producer_epoch=3,
        base_sequence=7,
    )


@settings(max_examples=150, deadline=None)
@given(record_lists, st.integers(0, 2**40), st.integers(0, 2**31 - 1))
def test_encode_then_decode_gives_the_records_back(recs: list[Record], base_offset: int, leader_epoch: int) -> None:
    batch = stamp(encode_batch(recs, now_ms=NOW_MS), base_offset, leader_epoch)
    header = validate_records(batch)
    assert header.size == len(batch)
    assert header.record_count == len(recs)
    assert header.base_offset == base_offset
    assert header.leader_epoch == leader_epoch
    stamps = [r.timestamp_ms if r.timestamp_ms is not None else NOW_MS for r in recs]
    assert header.first_timestamp == stamps[0]
    assert header.max_timestamp == max(stamps)
    decoded = decode_records(batch)
    assert [d.offset for d in decoded] == list(range(base_offset, base_offset + len(recs)))
    for rec, dec, ts in zip(recs, decoded, stamps, strict=True):
        assert (dec.key, dec.value, dec.timestamp_ms) == (rec.key, rec.value, ts)
        assert dec.headers == tuple(rec.headers)


def test_golden_batch_encoding_is_stable() -> None:
    """Any change to the on-disk format breaks this test: logs written by older brokers must stay readable."""
    batch = _golden_batch()
    assert len(batch) == 142
    header = check_batch(batch)
    assert header.crc == 0xC126E929
    assert batch.hex() == (
        "000000000000000000000082ffffffff01c126e9290000000000020000018bcfe568000000018bcfe568fa000000000000002a0003"
        "000000070000000300000021000000000000000474656d700000000432312e3500010004756e697400000001430000000e000000fa"
        "ffffffffffffffff000000000016ffffff9c000000016b00000000000100016effffffff"
    )
    assert (header.producer_id, header.producer_epoch, header.base_sequence, header.last_sequence) == (42, 3, 7, 9)
    assert (header.first_timestamp, header.max_timestamp) == (1_700_000_000_000, 1_700_000_000_250)


@settings(max_examples=100, deadline=None)
@given(record_lists, st.integers(0, 2**62), st.integers(-1, 2**31 - 1))
def test_stamp_writes_offset_and_epoch_and_keeps_the_crc_valid(
    recs: list[Record], base_offset: int, leader_epoch: int
) -> None:
    original = encode_batch(recs, now_ms=NOW_MS)
    stamped = stamp(original, base_offset, leader_epoch)
    header = validate_records(stamped)
    assert (header.base_offset, header.leader_epoch) == (base_offset, leader_epoch)
    assert header.crc == parse_header(original).crc
    # Only the two stamped fields change.
    assert stamped[8:12] == original[8:12]
    assert stamped[16:] == original[16:]


# The fields a leader stamps (base_offset, leader_epoch) lie outside the CRC by design, so damage there is invisible to
# check_batch; the log catches a damaged base_offset by offset density instead (see test_log_recovery).
_STAMPED_BYTES = set(range(0, 8)) | set(range(LENGTH_PREFIX, LENGTH_PREFIX + 4))


@settings(max_examples=200, deadline=None)
@given(record_lists, st.data())
def test_every_single_byte_corruption_outside_the_stamped_fields_is_detected(
    recs: list[Record], data: st.DataObject
) -> None:
    batch = stamp(encode_batch(recs, now_ms=NOW_MS), 1234, 5)
    position = data.draw(st.integers(0, len(batch) - 1).filter(lambda p: p not in _STAMPED_BYTES), label="position")
    flip = data.draw(st.integers(1, 255), label="xor")
    damaged = bytearray(batch)
    damaged[position] ^= flip
    with pytest.raises(CorruptBatchError):
        check_batch(damaged)
    with pytest.raises(CorruptBatchError):
        validate_records(damaged)
    with pytest.raises(CorruptBatchError):
        split_batches(damaged)


def test_damage_in_the_stamped_fields_passes_the_crc() -> None:
    """Documents the limit above: the stamped fields are not covered by the CRC."""
    batch = bytearray(stamp(_golden_batch(), 10, 2))
    batch[3] ^= 0x40
    batch[LENGTH_PREFIX + 3] ^= 0x01
    header = check_batch(batch)
    assert header.base_offset != 10
    assert header.leader_epoch == 3


@settings(max_examples=200, deadline=None)
@given(record_lists, st.data())
def test_every_truncation_is_detected(recs: list[Record], data: st.DataObject) -> None:
    batch = encode_batch(recs, now_ms=NOW_MS)
    cut = data.draw(st.integers(0, len(batch) - 1), label="cut")
    with pytest.raises(CorruptBatchError):
        check_batch(batch[:cut])
    with pytest.raises(CorruptBatchError):
        validate_records(batch[:cut])


def test_a_crc_valid_batch_with_broken_record_framing_is_rejected_by_validate_records() -> None:
    """A buggy client can compute a correct CRC over bad records; validate_records is the broker's gate."""
    import zlib

    batch = bytearray(encode_batch([Record(b"abc")], now_ms=NOW_MS))
    # Claim a 4-byte value where there are 3 bytes (then the header count), and re-seal the CRC.
    value_length_at = HEADER_SIZE + 4 + 4 + 4
    batch[value_length_at : value_length_at + 4] = (4).to_bytes(4, "big")
    batch[17:21] = zlib.crc32(batch[21:]).to_bytes(4, "big")
    check_batch(batch)
    with pytest.raises(CorruptBatchError):
        validate_records(batch)


def test_iter_batches_walks_concatenated_batches() -> None:
    batches = [stamp(encode_batch([Record(bytes([i]) * i)] * (i + 1), now_ms=NOW_MS), i * 10, 0) for i in range(5)]
    walked = list(iter_batches(b"".join(batches)))
    assert [bytes(view) for _, view in walked] == batches
    assert [h.base_offset for h, _ in walked] == [0, 10, 20, 30, 40]


def test_an_empty_batch_cannot_be_encoded() -> None:
    with pytest.raises(ValueError):
        encode_batch([])

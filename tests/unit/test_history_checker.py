from tests.history_checker import Ack, Consumed, check


def test_clean_history_passes():
    acks = [Ack(b"a", 0, 0), Ack(b"b", 0, 1)]
    consumed = [Consumed(b"a", 0, 0), Consumed(b"b", 0, 1)]
    assert check(acks, consumed).ok


def test_reports_lost_duplicated_moved_and_reordered():
    acks = [Ack(b"a", 0, 0), Ack(b"b", 0, 1), Ack(b"c", 0, 2)]
    consumed = [Consumed(b"b", 0, 0), Consumed(b"a", 0, 1), Consumed(b"a", 0, 3)]
    order = {b"a": ("w", 0), b"b": ("w", 1), b"c": ("w", 2)}
    verdict = check(acks, consumed, order)
    assert verdict.lost == [b"c"]
    assert verdict.duplicated == [b"a"]
    assert b"b" in verdict.moved
    assert (0, 1) in verdict.reordered
    assert not verdict.ok


def test_rereading_the_same_offset_is_not_a_duplicate():
    consumed = [Consumed(b"a", 0, 0), Consumed(b"a", 0, 0)]
    assert check([Ack(b"a", 0, 0)], consumed).ok

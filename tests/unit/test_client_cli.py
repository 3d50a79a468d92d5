"""Argument parsing and output formatting of the `pikafka` command, without a broker."""

import pytest

from clients.cli import UsageError, build_parser, format_description, main, parse_config, record_as_json
from clients.records import ConsumerRecord
from clients.transport import BrokerAddress, parse_bootstrap


def parse(*argv):
    return build_parser().parse_args(list(argv))


def test_topic_create_arguments():
    args = parse(
        "topic",
        "create",
        "readings",
        "--partitions",
        "3",
        "--replication-factor",
        "2",
        "--config",
        "retention_ms=1000",
        "--config",
        "cleanup=x",
        "--bootstrap",
        "coap://pi:5683",
    )
    assert (args.command, args.topic_command, args.name) == ("topic", "create", "readings")
    assert (args.partitions, args.replication_factor, args.bootstrap) == (3, 2, "coap://pi:5683")
    assert parse_config(args.config) == {"retention_ms": 1000, "cleanup": "x"}


def test_bootstrap_defaults_to_environment(monkeypatch):
    monkeypatch.setenv("PIKAFKA_BOOTSTRAP", "coap://10.0.0.7:6000")
    assert parse("topic", "list").bootstrap == "coap://10.0.0.7:6000"
    monkeypatch.delenv("PIKAFKA_BOOTSTRAP")
    assert parse("topic", "list").bootstrap == "coap://127.0.0.1:5683"


def test_produce_and_consume_arguments():
    args = parse("produce", "t", "--key", "k", "--acks", "all")
    assert (args.topic, args.key, args.acks, args.partition) == ("t", "k", "all", None)
    args = parse(
        "consume", "t", "--from-beginning", "--max", "10", "--timeout", "2.5", "--format", "json", "--save", "out.jsonl"
    )
    assert (args.from_beginning, args.max, args.timeout, args.format, args.save) == (True, 10, 2.5, "json", "out.jsonl")
    assert parse("consume", "t").format == "raw"
    assert parse("topic", "describe", "t", "--format", "json").format == "json"


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["topic"],
        ["topic", "create"],
        ["topic", "create", "t", "--partitions", "0"],
        ["topic", "create", "t", "--partitions", "many"],
        ["produce", "t", "--acks", "2"],
        ["consume", "t", "--max", "-1"],
        ["consume", "t", "--timeout", "0"],
        ["consume", "t", "--format", "xml"],
        ["bogus"],
    ],
)
def test_usage_errors_exit_2_with_one_line(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("pikafka: error: ")


def test_bad_config_and_bootstrap_are_usage_errors(capsys):
    with pytest.raises(UsageError):
        parse_config(["novalue"])
    assert main(["topic", "list", "--bootstrap", "http://x"]) == 2
    assert capsys.readouterr().err == "pikafka: error: bootstrap address 'http://x' is not coap://HOST:PORT\n"
    assert main(["consume", "t", "--offset", "5"]) == 2


def test_parse_bootstrap():
    assert parse_bootstrap("coap://pi-1:6000, pi-2") == [BrokerAddress("pi-1", 6000), BrokerAddress("pi-2", 5683)]
    assert parse_bootstrap("coap://[::1]:7000") == [BrokerAddress("::1", 7000)]
    assert BrokerAddress("::1", 7000).tcp_base == "coap+tcp://[::1]:7000"
    with pytest.raises(ValueError):
        parse_bootstrap("")


def test_record_as_json_keeps_text_and_base64s_binary():
    rec = ConsumerRecord("t", 1, 5, b"k", b"\xff\x00", (("ct", b"50"), ("n", None)), 1234)
    assert record_as_json(rec) == {
        "topic": "t",
        "partition": 1,
        "offset": 5,
        "timestamp_ms": 1234,
        "key": "k",
        "value": None,
        "value_base64": "/wA=",
        "headers": {"ct": "50", "n": None},
    }


def test_describe_table():
    text = format_description(
        {
            "name": "t",
            "replication_factor": 1,
            "config": {"retention_ms": 5},
            "partitions": [
                {
                    "partition": 0,
                    "leader": 1,
                    "leader_epoch": 0,
                    "replicas": [1, 2],
                    "isr": [1],
                    "log_start_offset": 0,
                    "log_end_offset": 10,
                    "high_watermark": 10,
                }
            ],
        }
    )
    lines = text.splitlines()
    assert lines[0].split() == ["topic", "t", "partitions", "1", "replication_factor", "1"]
    assert lines[1] == "config retention_ms=5"
    assert lines[2].split()[0] == "PARTITION"
    assert lines[3].split() == ["0", "1", "0", "1,2", "1", "0", "10", "10"]


def test_common_options_before_or_after_the_command():
    from clients.cli import build_parser

    before = build_parser().parse_args(["--bootstrap", "coap://a:1", "topic", "list"])
    after = build_parser().parse_args(["topic", "list", "--bootstrap", "coap://b:2"])
    both = build_parser().parse_args(["--bootstrap", "coap://a:1", "topic", "list", "--bootstrap", "coap://b:2"])
    assert (before.bootstrap, after.bootstrap, both.bootstrap) == ("coap://a:1", "coap://b:2", "coap://b:2")

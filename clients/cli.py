"""`pikafka`: topics, producing and consuming from the shell.

    pikafka topic create NAME --partitions 3 --replication-factor 1 --config retention_ms=86400000
    pikafka topic list | describe NAME | delete NAME          [--format table|json]
    some-sensor | pikafka produce readings --key pi-7
    pikafka consume readings --from-beginning --max 10 --format json --save readings.jsonl
    pikafka consume readings --group dashboards           (a consumer group member; commits what it printed)
    pikafka consume readings --follow                     (records pushed by CoAP Observe instead of polled)
    pikafka group list | describe G | reset G --to earliest|latest|OFFSET [--topic T]

Every command takes --bootstrap coap://HOST:PORT (default: $PIKAFKA_BOOTSTRAP, else coap://127.0.0.1:5683).
Failures print one line, `pikafka: error: ...`, and exit 1 (service or network) or 2 (usage).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import logging
import os
import sys
import threading
import time
from collections.abc import AsyncIterator, Sequence
from typing import IO, Any, NoReturn

from clients.admin import Admin
from clients.cluster_view import fetch_cluster_view, format_cluster_json, format_cluster_table
from clients.consumer import Consumer
from clients.group_member import CommitFailedError
from clients.producer import Producer
from clients.push_subscription import PushSubscriber
from clients.records import ConsumerRecord, RecordMetadata, TopicPartition
from clients.transport import parse_bootstrap
from pikafka.errors import ErrorCode, PikafkaError
from pikafka.protocol import DEFAULT_PORT

PROG = "pikafka"
BOOTSTRAP_ENV = "PIKAFKA_BOOTSTRAP"
EXIT_SERVICE_ERROR = 1
EXIT_USAGE = 2
STDIN_CHUNK_BYTES = 64 * 1024


class UsageError(Exception):
    """Bad arguments that argparse itself could not catch."""


class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, like every other failure, instead of argparse's usage block.
        self.exit(EXIT_USAGE, f"{PROG}: error: {message} (see '{self.prog} --help')\n")


def _add_common_options(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    """The options every command takes. They are accepted before and after the command words; the copy after
    the command has no defaults (SUPPRESS), so it overrides the top-level value only when it is given."""

    def default(value: object) -> object:
        return value if defaults else argparse.SUPPRESS

    parser.add_argument(
        "--bootstrap",
        default=default(os.environ.get(BOOTSTRAP_ENV, f"coap://127.0.0.1:{DEFAULT_PORT}")),
        help=f"broker address coap://HOST:PORT, comma-separated for several (env {BOOTSTRAP_ENV})",
    )
    parser.add_argument(
        "--request-timeout",
        type=_positive_float,
        default=default(10.0),
        metavar="S",
        help="seconds to wait for a broker",
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", default=default(False), help="log progress and a summary to stderr"
    )


def build_parser() -> argparse.ArgumentParser:
    common = _ArgumentParser(add_help=False)
    _add_common_options(common, defaults=False)
    formatted = _ArgumentParser(add_help=False)
    formatted.add_argument("--format", choices=("table", "json"), default="table")

    parser = _ArgumentParser(prog=PROG, description="pikafka command line: topics, produce, consume")
    _add_common_options(parser, defaults=True)
    commands = parser.add_subparsers(dest="command", required=True, metavar="{topic,produce,consume,group,cluster}")

    topic = commands.add_parser("topic", help="create, list, describe or delete topics")
    topic_commands = topic.add_subparsers(dest="topic_command", required=True, metavar="{create,list,describe,delete}")
    create = topic_commands.add_parser("create", parents=[common, formatted], help="create a topic")
    create.add_argument("name")
    create.add_argument("--partitions", type=_positive_int, default=1)
    create.add_argument("--replication-factor", type=_positive_int, default=1)
    create.add_argument("--config", action="append", default=[], metavar="KEY=VALUE", help="topic setting (repeatable)")
    listing = topic_commands.add_parser("list", parents=[common, formatted], help="list topic names")
    listing.add_argument("--internal", action="store_true", help="include internal topics (__consumer_offsets)")
    describe = topic_commands.add_parser("describe", parents=[common, formatted], help="partitions and settings")
    describe.add_argument("name")
    delete = topic_commands.add_parser("delete", parents=[common], help="delete a topic and its data")
    delete.add_argument("name")

    produce = commands.add_parser("produce", parents=[common], help="send stdin lines as records")
    produce.add_argument("topic")
    produce.add_argument("--key", help="key for every record (records with one key stay in order in one partition)")
    produce.add_argument(
        "--key-separator", metavar="SEP", help="split each line at the first SEP into key and value instead"
    )
    produce.add_argument("--partition", type=_non_negative_int, help="send every record to this partition")
    produce.add_argument("--acks", choices=("0", "1", "all"), default="1")

    consume = commands.add_parser("consume", parents=[common], help="print records")
    consume.add_argument("topic")
    consume.add_argument(
        "--from-beginning", action="store_true", help="start at the oldest record (default: only new ones)"
    )
    consume.add_argument("--partition", type=_non_negative_int, help="read only this partition")
    consume.add_argument("--offset", type=_non_negative_int, help="start at this offset (needs --partition)")
    consume.add_argument("--max", type=_positive_int, metavar="N", help="stop after N records")
    consume.add_argument("--timeout", type=_positive_float, metavar="S", help="stop after S seconds without a record")
    consume.add_argument("--format", choices=("raw", "json"), default="raw", help="raw: values only; json: all fields")
    consume.add_argument("--save", metavar="FILE", help="also append one JSON line per record to FILE")
    consume.add_argument("--group", metavar="G", help="consume as a member of consumer group G (commits as it prints)")
    consume.add_argument(
        "--follow", action="store_true", help="have new records pushed (CoAP Observe) instead of polling"
    )

    group = commands.add_parser("group", help="list, describe or reset consumer groups")
    group_commands = group.add_subparsers(dest="group_command", required=True, metavar="{list,describe,reset}")
    group_commands.add_parser("list", parents=[common, formatted], help="groups and their states")
    group_describe = group_commands.add_parser(
        "describe", parents=[common, formatted], help="members, assignment, committed offsets and lag"
    )
    group_describe.add_argument("group")
    group_reset = group_commands.add_parser(
        "reset", parents=[common, formatted], help="move committed offsets (only while the group has no members)"
    )
    group_reset.add_argument("group")
    group_reset.add_argument("--to", required=True, metavar="earliest|latest|OFFSET", type=_reset_target)
    group_reset.add_argument("--topic", action="append", default=[], help="topic to reset (default: those committed)")

    commands.add_parser(
        "cluster", parents=[common, formatted], help="brokers and partitions: leaders, epochs, ISR, high watermarks"
    )
    return parser


def _reset_target(text: str) -> str | int:
    if text in ("earliest", "latest"):
        return text
    try:
        return _non_negative_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected earliest, latest or an offset, got {text!r}") from None


def _positive_int(text: str) -> int:
    value = _non_negative_int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0: {text!r}")
    return value


def parse_config(pairs: Sequence[str]) -> dict[str, int | str]:
    """`key=value` settings; whole numbers become ints (every topic setting is one)."""
    config: dict[str, int | str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--config expects KEY=VALUE, got {pair!r}")
        try:
            config[key.strip()] = int(value)
        except ValueError:
            config[key.strip()] = value
    return config


# -- topic commands ------------------------------------------------------------------------------------------


async def run_topic(args: argparse.Namespace) -> int:
    async with Admin(args.bootstrap, request_timeout_ms=int(args.request_timeout * 1000)) as admin:
        if args.topic_command == "create":
            answer = await admin.create_topic(
                args.name, args.partitions, args.replication_factor, parse_config(args.config)
            )
            if args.format == "json":
                _print_json(answer)
            else:
                print(
                    f"created topic {answer.get('name', args.name)} ({answer.get('partitions', args.partitions)} "
                    "partitions)"
                )
        elif args.topic_command == "list":
            names = await admin.list_topics(internal=args.internal)
            if args.format == "json":
                _print_json({"topics": names})
            else:
                for name in names:
                    print(name)
        elif args.topic_command == "describe":
            description = await admin.describe_topic(args.name)
            if args.format == "json":
                _print_json(description)
            else:
                print(format_description(description))
        elif args.topic_command == "delete":
            await admin.delete_topic(args.name)
            print(f"deleted topic {args.name}")
    return 0


def format_description(description: dict[str, Any]) -> str:
    partitions = description.get("partitions", [])
    config = description.get("config", {}) or {}
    lines = [
        f"topic {description.get('name')}  partitions {len(partitions)}  "
        f"replication_factor {description.get('replication_factor', '-')}",
        "config " + (" ".join(f"{k}={v}" for k, v in sorted(config.items())) or "-"),
    ]
    columns = (
        "partition",
        "leader",
        "leader_epoch",
        "replicas",
        "isr",
        "log_start_offset",
        "log_end_offset",
        "high_watermark",
    )
    rows = [[c.upper() for c in columns]]
    for p in partitions:
        rows.append(
            [",".join(map(str, v)) if isinstance(v, list) else str(v) for v in (p.get(c, "-") for c in columns)]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    lines.extend("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)
    return "\n".join(lines)


def _print_json(value: Any) -> None:
    print(json.dumps(value, sort_keys=True))


# -- produce -------------------------------------------------------------------------------------------------


def _start_stdin_reader(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[bytes | None]) -> None:
    """Read stdin in a daemon thread: whatever is available at once (interactive lines come through one by one,
    piped data in large chunks), and never keep the process alive on Ctrl-C the way an executor thread would."""
    fd = sys.stdin.fileno()

    def read() -> None:
        try:
            while True:
                chunk = os.read(fd, STDIN_CHUNK_BYTES)
                asyncio.run_coroutine_threadsafe(queue.put(chunk or None), loop).result()
                if not chunk:
                    return
        except (OSError, RuntimeError):
            # stdin closed under us, or the loop finished first: either way nothing is left to hand over.
            with contextlib.suppress(RuntimeError):
                asyncio.run_coroutine_threadsafe(queue.put(None), loop)

    threading.Thread(target=read, name="pikafka stdin", daemon=True).start()


async def read_stdin_lines(queue: asyncio.Queue[bytes | None]) -> AsyncIterator[bytes]:
    pending = b""
    while True:
        chunk = await queue.get()
        if chunk is None:
            if pending:
                yield pending
            return
        lines = (pending + chunk).split(b"\n")
        pending = lines.pop()
        for line in lines:
            yield line[:-1] if line.endswith(b"\r") else line


async def run_produce(args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=16)
    failures: list[BaseException] = []
    count = 0

    def check(fut: asyncio.Future[RecordMetadata]) -> None:
        if not fut.cancelled() and fut.exception() is not None and not failures:
            failures.append(fut.exception())  # type: ignore[arg-type]

    fixed_key = args.key.encode() if args.key is not None else None
    separator = args.key_separator.encode() if args.key_separator else None
    started = time.monotonic()
    async with Producer(args.bootstrap, acks=args.acks, request_timeout_ms=int(args.request_timeout * 1000)) as p:
        partitions = await p.partitions_for(args.topic)  # fail on a missing topic before reading any input
        if args.partition is not None and args.partition not in partitions:
            raise UsageError(f"topic {args.topic} has no partition {args.partition}")
        _start_stdin_reader(loop, queue)
        async for line in read_stdin_lines(queue):
            key, value = fixed_key, line
            if separator is not None and separator in line:
                key, _, value = line.partition(separator)
            fut = await p.send(args.topic, value, key=key, partition=args.partition)
            fut.add_done_callback(check)
            count += 1
            if failures:
                break
        await p.flush()
    if failures:
        raise failures[0]
    if args.verbose:
        took = time.monotonic() - started
        print(f"{PROG}: produced {count} records to {args.topic} in {took:.2f}s", file=sys.stderr)
    return 0


# -- consume -------------------------------------------------------------------------------------------------


def record_as_json(record: ConsumerRecord) -> dict[str, Any]:
    """Text stays text; bytes that are not UTF-8 travel as base64 under `<field>_base64`."""
    out: dict[str, Any] = {
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "timestamp_ms": record.timestamp_ms,
    }
    _put_bytes(out, "key", record.key)
    _put_bytes(out, "value", record.value)
    headers: dict[str, Any] = {}
    for name, hval in record.headers:
        _put_bytes(headers, name, hval)
    out["headers"] = headers
    return out


def _put_bytes(out: dict[str, Any], name: str, data: bytes | None) -> None:
    if data is None:
        out[name] = None
        return
    try:
        out[name] = data.decode("utf-8")
    except UnicodeDecodeError:
        out[name] = None
        out[f"{name}_base64"] = base64.b64encode(data).decode("ascii")


async def run_consume(args: argparse.Namespace) -> int:
    if args.offset is not None and args.partition is None:
        raise UsageError("--offset needs --partition")
    if args.group is not None and (args.partition is not None or args.follow):
        raise UsageError("--group chooses the partitions itself; it cannot go with --partition or --follow")
    if args.follow:
        return await run_follow(args)
    consumer = Consumer(
        args.topic,
        bootstrap=args.bootstrap,
        auto_offset_reset="earliest" if args.from_beginning else "latest",
        request_timeout_ms=int(args.request_timeout * 1000),
        group_id=args.group,
        enable_auto_commit=False,  # committed below once the records are printed: at least once
    )
    save: IO[str] | None = open(args.save, "a", encoding="utf-8") if args.save else None  # noqa: SIM115
    out = sys.stdout.buffer
    seen = 0
    loop = asyncio.get_running_loop()
    try:
        async with consumer:
            if args.partition is not None:
                tp = TopicPartition(args.topic, args.partition)
                if tp not in consumer.assignment():
                    raise UsageError(f"topic {args.topic} has no partition {args.partition}")
                consumer.assign([tp])
                if args.offset is not None:
                    consumer.seek(tp, args.offset)
            idle_deadline = loop.time() + args.timeout if args.timeout else None
            while args.max is None or seen < args.max:
                wait_s = 1.0 if idle_deadline is None else idle_deadline - loop.time()
                if wait_s <= 0:
                    break
                limit = None if args.max is None else args.max - seen
                batches = await consumer.getmany(timeout_ms=int(wait_s * 1000), max_records=limit)
                records = [r for rs in batches.values() for r in rs]
                if not records:
                    continue
                for record in records:
                    if args.format == "json":
                        out.write(json.dumps(record_as_json(record)).encode() + b"\n")
                    else:
                        out.write((record.value or b"") + b"\n")
                    if save is not None:
                        save.write(json.dumps(record_as_json(record)) + "\n")
                out.flush()
                if save is not None:
                    save.flush()
                if args.group is not None:
                    with contextlib.suppress(CommitFailedError):  # rebalanced: the next owner prints them again
                        await consumer.commit()
                seen += len(records)
                if args.timeout:
                    idle_deadline = loop.time() + args.timeout
    finally:
        if save is not None:
            save.close()
    if args.verbose:
        print(f"{PROG}: consumed {seen} records from {args.topic}", file=sys.stderr)
    return 0


def _write_record(args: argparse.Namespace, out: IO[bytes], save: IO[str] | None, record: ConsumerRecord) -> None:
    if args.format == "json":
        out.write(json.dumps(record_as_json(record)).encode() + b"\n")
    else:
        out.write((record.value or b"") + b"\n")
    if save is not None:
        save.write(json.dumps(record_as_json(record)) + "\n")


async def run_follow(args: argparse.Namespace) -> int:
    """consume --follow: one CoAP observation per partition pushes the records (clients/push_subscription.py)."""
    start: str | dict[int, int] = "earliest" if args.from_beginning else "latest"
    if args.offset is not None:
        start = {args.partition: args.offset}
    subscriber = PushSubscriber(
        args.topic,
        bootstrap=args.bootstrap,
        partitions=None if args.partition is None else [args.partition],
        start=start,
        request_timeout_ms=int(args.request_timeout * 1000),
    )
    save: IO[str] | None = open(args.save, "a", encoding="utf-8") if args.save else None  # noqa: SIM115
    out = sys.stdout.buffer
    seen = 0
    try:
        async with subscriber:
            while args.max is None or seen < args.max:
                record = await subscriber.get(args.timeout if args.timeout else 3600.0)
                if record is None:
                    if args.timeout:
                        break
                    continue
                _write_record(args, out, save, record)
                seen += 1
                out.flush()
                if save is not None:
                    save.flush()
    finally:
        if save is not None:
            save.close()
    if args.verbose:
        print(f"{PROG}: followed {seen} records from {args.topic}", file=sys.stderr)
    return 0


# -- groups --------------------------------------------------------------------------------------------------


async def run_group(args: argparse.Namespace) -> int:
    async with Admin(args.bootstrap, request_timeout_ms=int(args.request_timeout * 1000)) as admin:
        if args.group_command == "list":
            groups = await admin.list_groups()
            if args.format == "json":
                _print_json({"groups": groups})
            else:
                for g in groups:
                    print(f"{g['group']}  {g['state']}  {g['members']} member(s)")
        elif args.group_command == "describe":
            described = await admin.describe_group(args.group)
            if args.format == "json":
                _print_json(described)
            else:
                print(format_group(described))
        else:
            try:
                targets = await admin.reset_group(args.group, args.to, args.topic)
            except PikafkaError as exc:
                if exc.code is ErrorCode.NON_EMPTY_GROUP:
                    raise PikafkaError(
                        exc.code, f"{exc.reason} (a group can only be reset while none of its consumers runs)"
                    ) from None
                raise
            if args.format == "json":
                _print_json({"group": args.group, "offsets": [[t, p, o] for (t, p), o in sorted(targets.items())]})
            else:
                for (topic, partition), offset in sorted(targets.items()):
                    print(f"{args.group} {topic}-{partition} -> {offset}")
    return 0


def format_group(described: dict[str, Any]) -> str:
    owner: dict[tuple[str, int], str] = {}
    for member in described.get("members", []):
        for a in member.get("assignment", []):
            owner[(str(a["topic"]), int(a["partition"]))] = str(member["member_id"])
    lines = [
        f"group {described.get('group')}  state {described.get('state')}  generation {described.get('generation')}  "
        f"strategy {described.get('strategy') or '-'}  coordinator {described.get('coordinator')}  "
        f"members {len(described.get('members', []))}"
    ]
    rows = [["TOPIC", "PARTITION", "MEMBER", "COMMITTED", "LOG_END", "LAG"]]
    committed = {(str(o["topic"]), int(o["partition"])): o for o in described.get("offsets", [])}
    for key in sorted(set(owner) | set(committed)):
        entry = committed.get(key, {})

        def cell(value: Any) -> str:
            return "-" if value is None else str(value)

        rows.append(
            [
                key[0],
                str(key[1]),
                owner.get(key, "-"),
                cell(entry.get("offset")),
                cell(entry.get("log_end_offset")),
                cell(entry.get("lag")),
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines.extend("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows)
    return "\n".join(lines)


# -- entry point ---------------------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> int:
    if args.command == "topic":
        return await run_topic(args)
    if args.command == "produce":
        return await run_produce(args)
    if args.command == "cluster":
        return await run_cluster(args)
    if args.command == "group":
        return await run_group(args)
    return await run_consume(args)


async def run_cluster(args: argparse.Namespace) -> int:
    view = await fetch_cluster_view(args.bootstrap, timeout_s=args.request_timeout)
    print(format_cluster_json(view) if args.format == "json" else format_cluster_table(view))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # Library warnings (aiocoap's connection notices) would break the one-line-per-failure promise.
    logging.basicConfig(level=logging.CRITICAL, format=f"{PROG}: %(message)s")
    if args.verbose:
        logging.getLogger("clients").setLevel(logging.INFO)
    try:
        parse_bootstrap(args.bootstrap)
    except ValueError as exc:
        return _fail(str(exc), EXIT_USAGE)
    try:
        return asyncio.run(run(args))
    except PikafkaError as exc:
        return _fail(str(exc), EXIT_SERVICE_ERROR)
    except UsageError as exc:
        return _fail(str(exc), EXIT_USAGE)
    except BrokenPipeError:
        # The reader went away (`pikafka consume t | head`): not an error. Point stdout at /dev/null so the
        # interpreter's final flush does not complain again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except OSError as exc:
        return _fail(f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else ""), EXIT_SERVICE_ERROR)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if args.verbose:
            raise
        return _fail(f"unexpected {type(exc).__name__}: {exc} (run with --verbose for details)", EXIT_SERVICE_ERROR)


def _fail(message: str, code: int) -> int:
    print(f"{PROG}: error: {' '.join(message.split())}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())

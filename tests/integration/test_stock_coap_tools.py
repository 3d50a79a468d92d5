"""Stock CoAP tools against a real broker: libcoap's coap-client (observe, block-wise) and aiocoap-client."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import BrokerProcess

COAP_CLIENT = shutil.which("coap-client-notls")
AIOCOAP_CLIENT = str(Path(sys.executable).with_name("aiocoap-client"))
needs_libcoap = pytest.mark.skipif(COAP_CLIENT is None, reason="coap-client-notls (Debian libcoap3-bin) not installed")


def run(*cmd: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(cmd, input=stdin, capture_output=True, timeout=30, check=False)


def create_topic(broker: BrokerProcess, name: str) -> None:
    pikafka = str(Path(sys.executable).with_name("pikafka"))
    result = run(pikafka, "topic", "create", name, "--bootstrap", broker.url)
    assert result.returncode == 0, result.stderr


@needs_libcoap
def test_coap_client_observe_sees_every_reading_in_order_including_blockwise(broker, tmp_path):
    assert COAP_CLIENT is not None
    create_topic(broker, "obs")
    uri = f"{broker.url}/ps/data/obs"
    out = tmp_path / "observed.txt"
    with out.open("wb") as sink:
        observer = subprocess.Popen([COAP_CLIENT, "-B", "5", "-s", "6", uri], stdout=sink, stderr=subprocess.STDOUT)
        time.sleep(1.0)  # let the observation register before the first reading
        big = tmp_path / "big.txt"
        big.write_bytes(b"B" * 3000 + b"\n")  # three blocks of 1024 bytes: a notification cut by Block2
        readings = [b"r1", b"r2", b"r3"]
        for value in readings:
            assert run(COAP_CLIENT, "-m", "put", "-e", value.decode(), uri).returncode == 0
            time.sleep(0.3)
        assert run(COAP_CLIENT, "-m", "put", "-b", "1024", "-f", str(big), uri).returncode == 0
        time.sleep(1.0)  # the observer fetches the later blocks before the next reading replaces "latest"
        assert run(COAP_CLIENT, "-m", "put", "-e", "last", uri).returncode == 0
        observer.wait(timeout=20)
    seen = out.read_bytes()
    # coap-client prints each notification's payload as it comes; the big one arrives whole, in its place.
    expected = b"r1r2r3" + b"B" * 3000 + b"\nlast"
    assert expected in seen.replace(b"\n\n", b"\n"), seen[:200]


def test_aiocoap_client_put_get_and_blockwise(broker, tmp_path):
    create_topic(broker, "aio")
    uri = f"{broker.url}/ps/data/aio"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    put = subprocess.run(
        [AIOCOAP_CLIENT, "-m", "PUT", "--payload", "21.5", uri], capture_output=True, timeout=30, env=env
    )
    assert put.returncode == 0, put.stderr
    assert put.stdout.strip().startswith(b"partition=0 offset=0")
    get = subprocess.run([AIOCOAP_CLIENT, uri], capture_output=True, timeout=30, env=env)
    assert get.returncode == 0 and get.stdout.strip() == b"21.5", get
    big = tmp_path / "big.txt"
    big.write_bytes(b"0123456789" * 500)  # 5000 bytes: Block1 up, Block2 down
    post = subprocess.run(
        [AIOCOAP_CLIENT, "-m", "POST", "--payload", f"@{big}", uri], capture_output=True, timeout=30, env=env
    )
    assert post.returncode == 0, post.stderr
    get = subprocess.run([AIOCOAP_CLIENT, uri], capture_output=True, timeout=30, env=env)
    assert get.returncode == 0 and get.stdout.strip() == big.read_bytes()
    missing = subprocess.run([AIOCOAP_CLIENT, f"{broker.url}/ps/data/none"], capture_output=True, timeout=30, env=env)
    assert missing.returncode != 0
    assert b"UNKNOWN_TOPIC_OR_PARTITION" in missing.stdout + missing.stderr

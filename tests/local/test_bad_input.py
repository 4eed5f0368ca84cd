"""`ssmd local up` refuses bad input before it starts anything.

Each case: a message that says what is wrong and where (option, variable, file, URL, pid),
exit code 1, and no process left (the checks run before the first process starts).
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from cli_runner import Ssmd, in_process

from ssmd_infra.local.lock import DataDirLock
from ssmd_infra.local.servers import free_port

REPO = Path(__file__).resolve().parents[2]
ENV_FILE = str(REPO / "tests" / "envs" / "e2e.yaml")


@pytest.fixture
def ssmd(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Ssmd:
    for name in (
        "KALSHI_REST_URL",
        "KALSHI_WS_URL",
        "KALSHI_API_KEY_ID",
        "KALSHI_PRIVATE_KEY_PATH",
    ):
        monkeypatch.delenv(name, raising=False)
    return in_process(capsys)


@pytest.fixture
def key_pem(tmp_path: Path) -> Path:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = tmp_path / "key.pem"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


@pytest.fixture
def rest_only() -> Iterator[str]:
    """An HTTP server that answers the Kalshi REST markets call, and nothing else."""

    class Markets(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b'{"markets": [], "cursor": ""}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Markets)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/trade-api/v2"
    server.shutdown()
    server.server_close()


def up(ssmd: Ssmd, tmp_path: Path, *args: str) -> tuple[int, str]:
    # processes this test session started before (e.g. its shared servers) are not the run's
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    result = ssmd(
        "local", "up", ENV_FILE, "--data-dir", str(tmp_path / "data"), "--for", "1", *args
    )
    left = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
    assert left == [], "a process was left behind"
    return result.code, " ".join(result.err.split())


def test_a_missing_key_file_is_named(ssmd: Ssmd, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.pem"
    code, err = up(
        ssmd,
        tmp_path,
        "--kalshi",
        "demo",
        "--kalshi-key-id",
        "k1",
        "--kalshi-private-key",
        str(missing),
    )
    assert code == 1
    assert f"cannot read --kalshi-private-key (KALSHI_PRIVATE_KEY_PATH) {missing}" in err
    assert "No such file or directory" in err


def test_an_unreadable_key_file_is_named(ssmd: Ssmd, tmp_path: Path) -> None:
    unreadable = tmp_path / "key-dir.pem"
    unreadable.mkdir()  # reading it fails whoever runs the test (root reads any file)
    code, err = up(
        ssmd,
        tmp_path,
        "--kalshi",
        "demo",
        "--kalshi-key-id",
        "k1",
        "--kalshi-private-key",
        str(unreadable),
    )
    assert code == 1
    assert f"cannot read --kalshi-private-key (KALSHI_PRIVATE_KEY_PATH) {unreadable}" in err


def test_a_key_file_that_is_not_a_pem_private_key_is_refused(
    ssmd: Ssmd, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    not_a_key = tmp_path / "notes.txt"
    not_a_key.write_text("my key id is k1\n")
    monkeypatch.setenv("KALSHI_API_KEY_ID", "k1")  # the runtime's variables keep working
    monkeypatch.setenv("KALSHI_PRIVATE_KEY_PATH", str(not_a_key))
    code, err = up(ssmd, tmp_path)
    assert code == 1
    assert f"{not_a_key} is not an unencrypted PEM private key" in err
    assert "my key id" not in err


def test_half_set_credentials_say_which_half_is_missing(
    ssmd: Ssmd, tmp_path: Path, key_pem: Path
) -> None:
    code, err = up(ssmd, tmp_path, "--kalshi", "demo", "--kalshi-private-key", str(key_pem))
    assert code == 1
    assert "--kalshi-key-id (KALSHI_API_KEY_ID) is missing" in err


@pytest.mark.parametrize(
    ("option", "url", "expected"),
    [
        (
            "--kalshi-ws-url",
            "https://demo-api.kalshi.co/trade-api/ws/v2",
            "expected ws:// or wss://",
        ),
        (
            "--kalshi-rest-url",
            "wss://demo-api.kalshi.co/trade-api/v2",
            "expected http:// or https://",
        ),
        ("--kalshi-rest-url", "demo-api.kalshi.co/trade-api/v2", "expected http:// or https://"),
    ],
)
def test_a_url_with_the_wrong_scheme_is_refused(
    ssmd: Ssmd, tmp_path: Path, option: str, url: str, expected: str
) -> None:
    code, err = up(ssmd, tmp_path, "--kalshi", "demo", option, url)
    assert code == 1
    assert option in err and url in err and expected in err


def test_a_wrong_scheme_in_the_environment_variable_is_refused(
    ssmd: Ssmd, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KALSHI_WS_URL", "http://127.0.0.1:1/trade-api/ws/v2")
    code, err = up(ssmd, tmp_path)
    assert code == 1
    assert "KALSHI_WS_URL" in err and "expected ws:// or wss://" in err


@pytest.mark.parametrize(
    ("option", "url", "expected"),
    [
        ("--nats-url", "http://127.0.0.1:4222", "--nats-url"),
        ("--redis-url", "http://127.0.0.1:6379", "bad Redis URL"),
    ],
)
def test_a_server_url_with_the_wrong_scheme_is_refused(
    ssmd: Ssmd, tmp_path: Path, option: str, url: str, expected: str
) -> None:
    code, err = up(ssmd, tmp_path, option, url)
    assert code == 1
    assert expected in err and url in err


def test_an_unknown_kalshi_environment_is_refused(ssmd: Ssmd, tmp_path: Path) -> None:
    code, err = up(ssmd, tmp_path, "--kalshi", "staging")
    assert code == 1
    assert "--kalshi 'staging': expected one of prod|demo" in err


def test_an_exchange_that_does_not_answer_fails_fast_naming_the_url(
    ssmd: Ssmd, tmp_path: Path
) -> None:
    port = free_port()  # nothing listens there
    rest = f"http://127.0.0.1:{port}/trade-api/v2"
    ws = f"ws://127.0.0.1:{port}/trade-api/ws/v2"
    code, err = up(ssmd, tmp_path, "--kalshi-rest-url", rest, "--kalshi-ws-url", ws)
    assert code == 1
    assert f"the Kalshi REST API at {rest} does not answer" in err


def test_a_websocket_that_does_not_answer_fails_fast_naming_the_url(
    ssmd: Ssmd, tmp_path: Path, rest_only: str
) -> None:
    ws = f"ws://127.0.0.1:{free_port()}/trade-api/ws/v2"
    code, err = up(ssmd, tmp_path, "--kalshi-rest-url", rest_only, "--kalshi-ws-url", ws)
    assert code == 1
    assert f"the Kalshi WebSocket at {ws} does not answer" in err


def test_a_data_dir_that_cannot_be_written_is_named(ssmd: Ssmd, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    data = blocker / "data"  # under a regular file: nobody can create it, root included
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    result = ssmd("local", "up", ENV_FILE, "--data-dir", str(data), "--for", "1")
    err = " ".join(result.err.split())
    assert result.code == 1
    assert f"cannot write the data dir {data}" in err
    assert [p for p in psutil.Process().children(recursive=True) if p.pid not in before] == []


def test_a_second_run_on_a_data_dir_in_use_is_refused_naming_the_pid(
    ssmd: Ssmd, tmp_path: Path
) -> None:
    import os

    holder = DataDirLock(tmp_path / "data")
    holder.acquire()  # as a running `local up` holds it
    try:
        code, err = up(ssmd, tmp_path)
    finally:
        holder.release()
    assert code == 1
    assert (
        f"the data dir {tmp_path / 'data'} is in use by another `ssmd local up` (pid {os.getpid()})"
        in err
    )

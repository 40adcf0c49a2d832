"""Issue 22, item 8 of the hostile test: secret and password hygiene.

`--secret-file` accepted a 0666 file silently, read /dev/zero until MemoryError, hung on a
FIFO; `--insecure` on a public address logged nothing; a Redis password could only be
given in the URL on the command line, where `ps` shows it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import trio

from gotask._errors import ConfigError
from gotask.config import SECRET_BYTES_MAX, read_secret, storage_password, with_password
from gotask.runtime import open_node
from gotask.transports import serve_tcp

SECRET = b"s" * 32


def _secret_file(tmp_path: Path, mode: int, data: bytes = SECRET) -> Path:
    path = tmp_path / "secret"
    path.write_bytes(data)
    path.chmod(mode)
    return path


def test_a_private_secret_file_is_read_without_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        assert read_secret(str(_secret_file(tmp_path, 0o600, SECRET + b"\n"))) == SECRET
    assert caplog.records == []


@pytest.mark.parametrize("mode", [0o666, 0o640, 0o604])
def test_a_group_or_world_readable_secret_file_warns_without_the_secret(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, mode: int
) -> None:
    path = _secret_file(tmp_path, mode)
    with caplog.at_level(logging.WARNING):
        assert read_secret(str(path)) == SECRET
    (record,) = caplog.records
    assert str(path) in record.getMessage() and oct(mode)[2:] in record.getMessage()
    assert SECRET.decode() not in caplog.text


def test_dev_zero_is_refused_at_once() -> None:
    with pytest.raises(ConfigError, match="is not a regular file"):
        read_secret("/dev/zero")


def test_a_fifo_is_refused_without_hanging(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="is not a regular file"):
        read_secret(str(fifo))


def test_an_oversized_secret_file_is_refused(tmp_path: Path) -> None:
    path = _secret_file(tmp_path, 0o600, b"x" * (SECRET_BYTES_MAX + 1))
    with pytest.raises(ConfigError, match=f"longer than {SECRET_BYTES_MAX} bytes"):
        read_secret(str(path))


def test_storage_password_from_a_file_or_the_environment(tmp_path: Path) -> None:
    path = _secret_file(tmp_path, 0o600, b"p@ss:w/rd\n")
    assert storage_password({"GOTASK_STORAGE_PASSWORD_FILE": str(path),
                             "GOTASK_STORAGE_PASSWORD": "other"}) == "p@ss:w/rd"
    assert storage_password({"GOTASK_STORAGE_PASSWORD": "env-pw"}) == "env-pw"
    assert storage_password({}) is None
    with pytest.raises(ConfigError, match="not a regular file"):
        storage_password({"GOTASK_STORAGE_PASSWORD_FILE": "/dev/zero"})


def test_the_password_goes_into_the_url_quoted_unless_it_has_one() -> None:
    from urllib.parse import urlsplit

    url = with_password("redis://127.0.0.1:6379/0?prefix=x", "p@ss:w/rd")
    assert urlsplit(url).password is not None
    assert urlsplit(url).hostname == "127.0.0.1" and urlsplit(url).port == 6379
    assert url.endswith("/0?prefix=x")
    pg = with_password("postgresql://postgres@127.0.0.1:5432/db", "pw")
    assert pg == "postgresql://postgres:pw@127.0.0.1:5432/db"
    assert with_password("redis://:given@h:1/0", "pw") == "redis://:given@h:1/0"
    assert with_password("memory://", "pw") == "memory://"
    assert with_password("redis://h:1/0", None) == "redis://h:1/0"


async def test_insecure_on_a_public_address_logs_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with open_node("insecure") as node, trio.open_nursery() as nursery:
        with caplog.at_level(logging.WARNING, logger="gotask.transport"):
            await nursery.start(lambda task_status: serve_tcp(
                node, "0.0.0.0", 0, secret=None, insecure=True, task_status=task_status))
        assert any("without a secret" in r.getMessage() for r in caplog.records)
        nursery.cancel_scope.cancel()

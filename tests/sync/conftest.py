"""A real S3-compatible server for the sync tests: moto's server mode, as a process.

DESIGN.md: the evidence store under test is a real server process on loopback, never
an in-process fake. moto is started with the interpreter running the tests
(``python -m moto.server``), so it works the same in a dev venv and in CI's ``.venv``.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

START_TIMEOUT_S = 30.0
POLL_S = 0.1
CREDS = ("testing-key-id", "testing-secret")


@dataclass
class MotoServer:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_moto(log_dir: Path, *, env: dict[str, str] | None = None) -> MotoServer:
    """Start ``moto.server`` on a free loopback port; wait (bounded) until it answers."""
    port = free_port()
    log = log_dir / f"moto-{port}.log"
    full_env = dict(os.environ)
    full_env.update(env or {})
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                                 "-p", str(port)], stdout=out, stderr=subprocess.STDOUT,
                                env=full_env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT_S
    for _ in range(int(START_TIMEOUT_S / POLL_S) + 1):
        if proc.poll() is not None:
            raise RuntimeError(f"moto server exited ({proc.returncode}): {log.read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"GET /moto-api/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                if s.recv(12).startswith(b"HTTP/1."):
                    return MotoServer(url, proc, log)
        except OSError:
            pass
        if time.monotonic() > deadline:
            break
        time.sleep(POLL_S)
    stop_moto(MotoServer(url, proc, log))
    raise RuntimeError(f"moto server did not answer within {START_TIMEOUT_S} s")


def stop_moto(server: MotoServer) -> None:
    server.proc.terminate()
    try:
        server.proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait(timeout=10)


@pytest.fixture(scope="session")
def moto_url(tmp_path_factory) -> Iterator[str]:
    """URL of a moto server process shared by the session (buckets keep tests apart)."""
    server = start_moto(tmp_path_factory.mktemp("moto"))
    try:
        yield server.url
    finally:
        stop_moto(server)


def s3_client(url: str, creds: tuple[str, str] = CREDS):
    """A plain boto3 client, for tests to look behind the target's back."""
    return boto3.session.Session().client(
        "s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id=creds[0],
        aws_secret_access_key=creds[1],
        config=Config(retries={"total_max_attempts": 1}, connect_timeout=5, read_timeout=30))


@pytest.fixture
def s3(moto_url):
    return s3_client(moto_url)


def unique_bucket() -> str:
    return f"bwv-test-{uuid.uuid4().hex[:16]}"


@pytest.fixture
def bucket(s3) -> str:
    """A fresh bucket with Object Lock (hence versioning) for one test."""
    name = unique_bucket()
    s3.create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
    return name


@pytest.fixture
def plain_bucket(s3) -> str:
    """A fresh bucket without Object Lock."""
    name = unique_bucket()
    s3.create_bucket(Bucket=name)
    return name

"""A store in an S3 bucket (AWS or any S3-compatible server).

Objects are keys under ``prefix/`` in an existing bucket.  botocore's own
retries are off: one loop here retries transient failures with exponential
backoff and full jitter under a per-call deadline, so no call blocks much longer
than ``timeout`` and every retry is counted (``retries``, ``errors``).
Region and credentials come from the usual boto3 environment and config files.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import boto3
from boto3.s3.transfer import TransferConfig, create_transfer_manager
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    IncompleteReadError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from ..errors import NoSuchObject, StoreConfigError, StoreError
from .base import ObjectStore

log = logging.getLogger(__name__)

T = TypeVar("T")

# put_file uploads files this large in parts of half this size; smaller ones (every
# pack of the default 16 MiB) in one streamed PUT: one request instead of five
MULTIPART = 32 << 20
BACKOFF_BASE = 0.05          # seconds: the first retry waits up to this, then doubling ...
BACKOFF_CAP = 2.0            # ... up to this
RETRY_CODES = frozenset({"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout",
                         "ConditionalRequestConflict", "TooManyRequests"})
# no reply, or a reply cut short: the request may or may not have happened
TRANSIENT = (BotoConnectionError, HTTPClientError, IncompleteReadError)


def _status(e: ClientError) -> tuple[int, str]:
    """HTTP status and S3 error code of a failed request."""
    status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    return int(status), str(e.response.get("Error", {}).get("Code", ""))


def _retryable(status: int, code: str) -> bool:
    return (status >= 500 or status == 429 or code in RETRY_CODES
            or code.startswith("Throttl"))


class S3Store(ObjectStore):
    """Objects as S3 keys under a prefix of a bucket."""

    remote = True

    def __init__(self, bucket: str, prefix: str, endpoint: str | None = None,
                 timeout: float = 30.0) -> None:
        self.bucket = bucket
        prefix = prefix.strip("/")
        self.url = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
        self._root = f"{prefix}/" if prefix else ""
        self.timeout = timeout
        connect, read = timeout / 10, timeout / 4
        self._attempt_time = connect + read   # what one more attempt may take, at worst
        config = Config(
            connect_timeout=connect, read_timeout=read, max_pool_connections=32,
            retries={"total_max_attempts": 1, "mode": "standard"},
            # plain Content-Length bodies, no aws-chunked: blake3 checks every chunk anyway
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            # S3-compatible servers (MinIO, Ceph, moto) rarely have wildcard DNS for buckets
            s3={"addressing_style": "path"} if endpoint else None,
        )
        try:
            self._client = boto3.session.Session().client("s3", endpoint_url=endpoint,
                                                          config=config)
        except (BotoCoreError, ValueError) as e:   # a bad profile, region or endpoint URL
            raise StoreConfigError(f"S3 store {self.url}: {e}") from e
        self._transfer = create_transfer_manager(self._client, TransferConfig(
            multipart_threshold=MULTIPART, multipart_chunksize=MULTIPART // 2, max_concurrency=4,
            use_threads=True, preferred_transfer_client="classic"))
        self._lock = threading.Lock()
        self._bucket_ok = False
        self.retries = 0   # attempts repeated after a transient failure
        self.errors = 0    # calls that ended in StoreError

    def _key(self, key: str) -> str:
        return self._root + key

    def _count(self, what: str) -> None:
        with self._lock:
            setattr(self, what, getattr(self, what) + 1)

    def _call(self, op: str, key: str, fn: Callable[[], T]) -> T:
        """fn() with retries; S3 errors become NoSuchObject or StoreError."""
        deadline = time.monotonic() + self.timeout
        if not self._bucket_ok:
            # checked on first use: a missing bucket must not look like missing objects
            try:
                self._retry("HeadBucket", self.url, deadline,
                            lambda: self._client.head_bucket(Bucket=self.bucket))
            except NoSuchObject:
                self._count("errors")
                raise StoreError(f"S3 bucket {self.bucket!r} does not exist") from None
            self._bucket_ok = True
        return self._retry(op, key, deadline, fn)

    def _retry(self, op: str, key: str, deadline: float, fn: Callable[[], T]) -> T:
        start = deadline - self.timeout
        attempt = 0
        while True:
            attempt += 1
            try:
                return fn()
            except ClientError as e:
                status, code = _status(e)
                if code == "NoSuchBucket":
                    self._count("errors")
                    raise StoreError(f"S3 bucket {self.bucket!r} does not exist") from e
                if status == 404:
                    raise NoSuchObject(f"no object {key!r}") from e
                if not _retryable(status, code):
                    self._count("errors")
                    raise StoreError(f"S3 {op} {key}: {e}") from e
                last: Exception = e
            except TRANSIENT as e:
                last = e
            except BotoCoreError as e:   # credentials, configuration: retrying cannot help
                self._count("errors")
                raise StoreError(f"S3 {op} {key}: {e}") from e
            pause = random.uniform(0, min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (attempt - 1)))
            now = time.monotonic()
            if now + pause + self._attempt_time > deadline:
                self._count("errors")
                raise StoreError(f"S3 {op} {key}: unreachable after {attempt} attempts in "
                                 f"{now - start:.1f} s: {last}") from last
            log.debug("S3 %s %s: retrying after %s", op, key, last)
            self._count("retries")
            time.sleep(pause)

    def put(self, key: str, data: bytes | memoryview) -> None:
        body = bytes(data) if isinstance(data, memoryview) else data  # botocore wants bytes
        self._call("PutObject", key, lambda: self._client.put_object(
            Bucket=self.bucket, Key=self._key(key), Body=body))

    def put_file(self, key: str, path: Path) -> None:
        try:
            size = path.stat().st_size
        except FileNotFoundError as e:
            raise NoSuchObject(f"no file {path}") from e
        if size < MULTIPART:
            def put() -> None:
                with open(path, "rb") as body:    # opened per attempt: a retry rereads it
                    self._client.put_object(Bucket=self.bucket, Key=self._key(key), Body=body)
            self._call("PutObject", key, put)
        else:
            self._call("Upload", key, lambda: self._transfer.upload(
                str(path), self.bucket, self._key(key)).result())
        path.unlink()

    def put_if_absent(self, key: str, data: bytes) -> bool:
        tries = 0

        def attempt() -> bool:
            nonlocal tries
            tries += 1
            try:
                self._client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data,
                                        IfNoneMatch="*")
            except ClientError as e:
                if _status(e)[0] != 412:
                    raise
                return False
            return True

        created = self._call("PutObject", key, attempt)
        # an attempt whose reply was lost may have created it: then the content is ours
        return created or (tries > 1 and self.get(key) == data)

    def get_tagged(self, key: str) -> tuple[bytes, str]:
        def read() -> tuple[bytes, str]:
            reply = self._client.get_object(Bucket=self.bucket, Key=self._key(key))
            return reply["Body"].read(), reply["ETag"]

        return self._call("GetObject", key, read)

    def put_if_match(self, key: str, data: bytes, tag: str) -> str | None:
        tries = 0

        def attempt() -> str | None:
            nonlocal tries
            tries += 1
            try:
                reply = self._client.put_object(Bucket=self.bucket, Key=self._key(key),
                                                Body=data, IfMatch=tag)
            except ClientError as e:
                if _status(e)[0] != 412:
                    raise
                return None
            return str(reply["ETag"])

        try:
            new_tag = self._call("PutObject", key, attempt)
        except NoSuchObject:
            return None
        if new_tag is None and tries > 1:
            # an attempt whose reply was lost may have replaced it: then the content is ours
            try:
                current, current_tag = self.get_tagged(key)
            except NoSuchObject:
                return None
            return current_tag if current == data else None
        return new_tag

    def get(self, key: str) -> bytes:
        return self._call("GetObject", key, lambda: self._client.get_object(
            Bucket=self.bucket, Key=self._key(key))["Body"].read())

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        if length <= 0:
            self.size(key)   # a missing object is still an error
            return b""
        # "bytes=-N" is the last N bytes, or the whole object when it is shorter
        spec = f"bytes={offset}" if offset < 0 else f"bytes={offset}-{offset + length - 1}"

        def read() -> bytes:
            try:
                reply = self._client.get_object(Bucket=self.bucket, Key=self._key(key),
                                                Range=spec)
            except ClientError as e:
                if _status(e)[0] != 416:
                    raise
                return b""   # the range starts past the end
            return reply["Body"].read()

        return self._call("GetObject", key, read)[:length]

    def size(self, key: str) -> int:
        return int(self._call("HeadObject", key, lambda: self._client.head_object(
            Bucket=self.bucket, Key=self._key(key))["ContentLength"]))

    def list(self, prefix: str = "") -> Iterator[str]:
        # pages by hand, not a paginator: a retry repeats one page, not the listing so far
        args: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self._key(prefix)}
        while True:
            page = self._call("ListObjectsV2", prefix,
                              lambda: self._client.list_objects_v2(**args))
            for obj in page.get("Contents", ()):
                yield obj["Key"][len(self._root):]
            if not page.get("IsTruncated"):
                return
            args["ContinuationToken"] = page["NextContinuationToken"]

    def delete(self, key: str) -> None:
        try:
            self._call("DeleteObject", key, lambda: self._client.delete_object(
                Bucket=self.bucket, Key=self._key(key)))
        except NoSuchObject:
            return

    def close(self) -> None:
        self._transfer.shutdown()
        self._client.close()

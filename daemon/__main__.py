"""dmsfsd: mount a dmsfs store.

    dmsfsd STORE_URL MOUNTPOINT [--state DIR] [--read-only] [--allow-other]
           [--cache-size BYTES] [--s3-endpoint URL] [--log-level LEVEL] [--foreground]
    dmsfsd --init-only STORE_URL
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import trio

from dmsfs.chunker import ChunkerParams
from dmsfs.config import StoreConfig
from dmsfs.errors import DmsfsError
from dmsfs.log import setup_logging
from dmsfs.repo import LEASE_TIMEOUT, Repo
from dmsfs.store.layers import RemoteOptions
from dmsfs.sizes import parse_size

from .app import DaemonOptions, run

log = logging.getLogger("dmsfs.daemon")

EPILOG = """\
Examples:
  dmsfsd file:///srv/dmsfs/store /mnt/datasets
  dmsfsd file://$PWD/store ./mnt --state ./state --foreground --log-level debug
  dmsfsd s3://bucket/datasets /mnt/datasets --s3-endpoint http://minio:9000
  dmsfsd --read-only s3://bucket/datasets /mnt/datasets     # a training node

S3 credentials and region come from the usual boto3 environment and config.
One daemon writes to a store at a time (it holds the store's lease); any number
may serve it --read-only, each following the writer's snapshots.

The control API listens on STATE/api.sock; dmsctl finds it from the mount.
Exit status: 0 after a clean unmount, 1 on failure, 2 on a usage error."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dmsfsd", description="Mount a dmsfs store of datasets.",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("store_url", help="file:///path/to/store or s3://bucket/prefix")
    p.add_argument("mountpoint", nargs="?", type=Path, help="directory to mount at")
    p.add_argument("--state", type=Path, help="index, spool and cache directory "
                   "(default /var/lib/dmsfs/<store-id> as root, else $XDG_STATE_HOME/dmsfs/<id>)")
    p.add_argument("--read-only", action="store_true",
                   help="serve every version the writer publishes; refuse writes with EROFS")
    p.add_argument("--allow-other", action="store_true", help="let other users use the mount")
    p.add_argument("--versions-visible", action="store_true",
                   help="list the @version folders in each dataset (default: reachable "
                        "by name only, so cp -r, du and find see the live tree alone)")
    p.add_argument("--cache-size", type=parse_size, default=RemoteOptions.cache_bytes,
                   metavar="BYTES", help="disk cache of an S3 store's data, in the state dir "
                   "(default 4G)")
    p.add_argument("--memory-cache", type=parse_size, default=64 << 20, metavar="BYTES",
                   help="memory for decompressed chunks (default 64M)")
    s3 = p.add_argument_group("S3 stores")
    s3.add_argument("--s3-endpoint", metavar="URL",
                    help="an S3-compatible service (MinIO, Ceph RGW); default: AWS")
    s3.add_argument("--s3-timeout", type=float, default=RemoteOptions.timeout, metavar="SECONDS",
                    help="longest a store request may take, retries included; past it "
                         "reads of uncached data fail with EIO (default 30)")
    p.add_argument("--poll-interval", type=float, default=5.0, metavar="SECONDS",
                   help="with --read-only: how often to look for new snapshots (default 5)")
    p.add_argument("--lease-timeout", type=float, default=LEASE_TIMEOUT, metavar="SECONDS",
                   help="a writer that stops renewing its lease loses the store after "
                        "this long (default 30)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--foreground", action="store_true", help="do not detach")
    p.add_argument("--init-only", action="store_true", help="initialise the store and exit")
    p.add_argument("--reindex", action="store_true",
                   help="rebuild the chunk index from the store before mounting (done by "
                        "itself with a new state dir; versions, tags and schemas in the "
                        "store are indexed at every start)")
    p.add_argument("--demo", action="store_true", help="create a demo dataset in a new store")
    init = p.add_argument_group("new stores only (recorded in the store's config)")
    init.add_argument("--chunk-size", type=_chunk_sizes, metavar="MIN,AVG,MAX",
                      help="content-defined chunk sizes (default 256K,1M,4M)")
    init.add_argument("--pack-size", type=parse_size, metavar="BYTES",
                      help="target pack object size (default 16M)")
    return p


def _chunk_sizes(text: str) -> ChunkerParams:
    sizes = [parse_size(part) for part in text.split(",")]
    if len(sizes) != 3 or not 64 <= sizes[0] < sizes[1] < sizes[2] <= 16 << 20:
        raise argparse.ArgumentTypeError("need MIN,AVG,MAX with 64 <= MIN < AVG < MAX <= 16M")
    return ChunkerParams(*sizes)


def _proposed(args: argparse.Namespace) -> StoreConfig:
    cfg = StoreConfig()
    if args.chunk_size:
        cfg = replace(cfg, chunker=args.chunk_size)
    if args.pack_size:
        cfg = replace(cfg, pack_size=args.pack_size)
    return cfg


def _remote(args: argparse.Namespace) -> RemoteOptions:
    return RemoteOptions(args.s3_endpoint, args.s3_timeout, args.cache_size)


def _detach(argv: list[str], mountpoint: Path) -> int:
    """Run ourselves in the background and return once the mount is up."""
    child = subprocess.Popen([sys.executable, "-m", "dmsfs.daemon", *argv, "--foreground"],
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if os.path.ismount(mountpoint):
            return 0
        if child.poll() is not None:
            return child.returncode or 1
        time.sleep(0.05)
    print("dmsfsd: mount did not come up within 60 s", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(argv)
    setup_logging(args.log_level)
    try:
        if args.init_only:
            repo = Repo.open(args.store_url, args.state, args.memory_cache, _proposed(args),
                             remote=_remote(args), lease_timeout=args.lease_timeout)
            print(f"store {repo.store.url} ready (id {repo.config.store_id})")
            repo.close()
            return 0
        if args.mountpoint is None:
            _parser().error("MOUNTPOINT is required")
        if not args.mountpoint.is_dir():
            _parser().error(f"mountpoint {args.mountpoint} is not a directory")
        if not args.foreground:
            return _detach(argv, args.mountpoint)
        trio.run(run, DaemonOptions(
            store_url=args.store_url, mountpoint=args.mountpoint.resolve(),
            state_dir=args.state.resolve() if args.state else None, read_only=args.read_only,
            allow_other=args.allow_other, versions_visible=args.versions_visible,
            memory_cache=args.memory_cache, remote=_remote(args), reindex=args.reindex,
            poll_interval=args.poll_interval, lease_timeout=args.lease_timeout,
            demo=args.demo, proposed=_proposed(args)))
        return 0
    except DmsfsError as e:
        print(f"dmsfsd: {e}", file=sys.stderr)
        return e.exit_code


if __name__ == "__main__":
    sys.exit(main())

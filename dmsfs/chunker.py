"""Content-defined chunking (FastCDC 2020, via pyfastcdc).

Pure functions over buffers, no I/O.  Cut points depend only on the bytes since
the previous cut point, so a stream can be chunked window by window: every chunk
that ends before the window's end is final; the last one is final only at EOF.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyfastcdc import FastCDC


@dataclass(frozen=True, slots=True)
class ChunkerParams:
    """Chunk size limits, fixed when a store is initialised (see StoreConfig)."""

    min_size: int = 256 * 1024
    avg_size: int = 1024 * 1024
    max_size: int = 4 * 1024 * 1024


class Chunker:
    """Cuts buffers into content-defined chunks."""

    def __init__(self, params: ChunkerParams) -> None:
        self.params = params
        # pyfastcdc's 'avg' excludes the skipped minimum (paper, section 3.4).
        self._cdc_args = dict(
            avg_size=max(256, params.avg_size - params.min_size),
            min_size=params.min_size,
            max_size=params.max_size,
        )

    def cut(self, buf: bytes | memoryview, at_eof: bool) -> list[int]:
        """Lengths of the final chunks at the start of buf.

        When at_eof is false the last (possibly truncated) chunk is left out, so
        the caller re-offers those bytes with more data behind them.
        """
        if not buf:
            return []
        # FastCDC objects are not safe to share between threads; building one is cheap.
        lengths = [c.length for c in FastCDC(**self._cdc_args).cut_buf(buf)]
        if not at_eof:
            lengths.pop()
        return lengths

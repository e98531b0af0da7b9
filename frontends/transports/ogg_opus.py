"""A damage-tolerant Ogg/Opus stream reader for the Moshi-protocol WebSocket.

Moshi clients send a continuous Ogg stream cut into arbitrary messages. A general-purpose reader gives up for
good at the first damaged byte; on a live call that would silence the user for the rest of the conversation.
This one checks every page (capture pattern, version, CRC), skips damage up to the next page boundary that
checks out, drops Opus packets the decoder rejects, and counts what it dropped, so one bad message costs at
most that message's audio. Pages may arrive split across messages or many in one message (a client that
stalled and then flushed).
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

CAPTURE = b"OggS"
HEADER = 27  # bytes before the segment table
MAX_PAGE = HEADER + 255 + 255 * 255
_BIT_REVERSED = bytes(int(f"{b:08b}"[::-1], 2) for b in range(256))


def ogg_crc(page: bytes) -> int:
    """Ogg's CRC-32 (polynomial 0x04c11db7, MSB first, no initial or final XOR), at zlib's speed.

    zlib computes the bit-reflected CRC with an all-ones start and end; reflecting the input bytes, removing
    the start/end terms (the CRC of as many zero bytes) and reflecting the result gives Ogg's.
    """
    reflected = zlib.crc32(page.translate(_BIT_REVERSED)) ^ zlib.crc32(bytes(len(page)))
    return int(f"{reflected:032b}"[::-1], 2)


def _page_crc_ok(page: bytes) -> bool:
    stored = struct.unpack_from("<I", page, 22)[0]
    return ogg_crc(page[:22] + b"\0\0\0\0" + page[26:]) == stored


class OggOpusReader:
    """`feed(bytes) -> float32 mono PCM at `sample_rate``; never raises on bad input (counts it instead)."""

    def __init__(self, sample_rate: int = 24_000, max_buffer: int = 4 * MAX_PAGE):
        self.sample_rate = sample_rate
        self.max_buffer = max_buffer
        self._buf = bytearray()
        self._packet = bytearray()  # an Opus packet continued across pages
        self._serial: int | None = None
        self._decoder = None
        self._resampler = None
        self._head: bytes | None = None
        self.pages = 0
        self.packets = 0
        self.damaged_bytes = 0  # bytes skipped to find the next good page
        self.damaged_packets = 0  # packets the Opus decoder rejected
        self.resyncs = 0  # times the reader lost the page boundary (and skipped to the next good page)
        self._in_sync = True

    @property
    def damaged(self) -> int:
        """Damage events so far (skipped runs of bytes + rejected packets)."""
        return self.resyncs + self.damaged_packets

    def feed(self, data: bytes) -> np.ndarray:
        self._buf += data
        out: list[np.ndarray] = []
        while True:
            page = self._next_page()
            if page is None:
                break
            out.extend(self._on_page(page))
        if len(self._buf) > self.max_buffer:  # no page boundary in sight: drop what cannot be a page start
            self._skip(len(self._buf) - MAX_PAGE)
        return np.concatenate(out) if out else np.zeros(0, np.float32)

    # -- pages ---------------------------------------------------------------------------------
    def _skip(self, n: int) -> None:
        if n <= 0:
            return
        del self._buf[:n]
        self.damaged_bytes += n
        if self._in_sync:
            self.resyncs += 1
            self._in_sync = False
        self._packet.clear()  # a packet split across the damage cannot be completed

    def _next_page(self) -> bytes | None:
        buf = self._buf
        while True:
            start = buf.find(CAPTURE)
            if start < 0:
                self._skip(max(0, len(buf) - 3))  # keep a possible partial "Ogg" at the end
                return None
            self._skip(start)
            if len(buf) < HEADER:
                return None
            nseg = buf[26]
            if len(buf) < HEADER + nseg:
                return None
            size = HEADER + nseg + sum(buf[HEADER:HEADER + nseg])
            if buf[4] != 0 or buf[5] & ~0x07:  # version 0, three flag bits only
                self._skip(1)
                continue
            if len(buf) < size:
                return None
            page = bytes(buf[:size])
            if not _page_crc_ok(page):
                self._skip(1)
                continue
            del buf[:size]
            self._in_sync = True
            return page

    def _on_page(self, page: bytes) -> list[np.ndarray]:
        self.pages += 1
        flags, serial = page[5], struct.unpack_from("<I", page, 14)[0]
        if flags & 0x02 or (self._serial is not None and serial != self._serial):  # a new logical stream
            self._packet.clear()
            self._decoder = None
        self._serial = serial
        if flags & 0x01 == 0:  # not a continuation: whatever was pending is incomplete
            self._packet.clear()
        nseg = page[26]
        pos = HEADER + nseg
        out = []
        for lace in page[HEADER:HEADER + nseg]:
            self._packet += page[pos:pos + lace]
            pos += lace
            if lace < 255:
                packet, self._packet = bytes(self._packet), bytearray()
                pcm = self._on_packet(packet)
                if pcm is not None and pcm.size:
                    out.append(pcm)
        return out

    # -- packets -------------------------------------------------------------------------------
    def _on_packet(self, packet: bytes) -> np.ndarray | None:
        if packet.startswith(b"OpusHead"):
            self._head = packet
            self._decoder = None
            return None
        if packet.startswith(b"OpusTags") or not packet:
            return None
        import av

        if self._decoder is None:
            self._decoder = av.CodecContext.create("opus", "r")
            if self._head is not None:
                self._decoder.extradata = self._head
            self._resampler = av.AudioResampler(format="flt", layout="mono", rate=self.sample_rate)
        self.packets += 1
        try:
            frames = self._decoder.decode(av.Packet(packet))
            pcm = [f.to_ndarray().reshape(-1) for frame in frames for f in self._resampler.resample(frame)]
        except (av.error.FFmpegError, ValueError):
            self.damaged_packets += 1
            self._decoder = None  # restart cleanly on the next packet
            return None
        return np.concatenate(pcm).astype(np.float32, copy=False) if pcm else None

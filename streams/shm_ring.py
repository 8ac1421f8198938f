"""A ring of fixed-size frame slots in POSIX shared memory, written by a decode worker, read in place by the engine.

Layout of one ring (one ``multiprocessing.shared_memory`` segment)::

    [ state: 1 byte per slot, padded to 64 ] [ slot 0 ] [ slot 1 ] ... [ slot n-1 ]     (slots 64-byte aligned)

A slot holds one frame's planes back to back (each plane 64-byte aligned).  ``state[i]`` is the slot's owner:
``FREE`` (0) — the worker may fill it; ``HELD`` (1) — the worker filled it and sent its metadata, the engine owns it
until the frame's planes are no longer referenced.  Each side writes one byte and only in one direction (the worker
FREE → HELD, the engine HELD → FREE), so no lock and no message is needed to give a slot back: the engine's release
is a byte store done by ``weakref.finalize`` on the slot's root array, safe on any thread and inside garbage
collection.

Lifetime of the name (no segment outlives its processes, even under SIGKILL):
  * the worker creates the segment (registered with multiprocessing's resource tracker, which the engine and its
    workers share) and announces it;
  * the engine attaches and at once unlinks the name (``/dev/shm`` no longer lists it; both mappings stay valid and
    the memory goes when the last mapping does);
  * a worker that dies before the engine attached leaves a name: the engine unlinks its rings by name
    (``unlink_worker_segments``); an engine that dies leaves the resource tracker to unlink what was still
    registered once every worker has exited.
"""
from __future__ import annotations

import math
import os
import weakref
from typing import NamedTuple
from multiprocessing import shared_memory

import numpy as np

FREE, HELD = 0, 1
_ALIGN = 64
#: every ring's name starts with this, then the engine's pid, the worker's pid and the ring's generation
NAME_PREFIX = "amodal-"
SHM_DIR = "/dev/shm"


def _aligned(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


class PlaneLayout(NamedTuple):
    """Where one plane lies in a slot: byte ``offset`` from the slot start, ``shape`` and numpy ``dtype`` string.
    Crosses the pipe as a plain tuple."""

    offset: int
    shape: tuple[int, ...]
    dtype: str


def plane_layout(planes: tuple[np.ndarray, ...]) -> tuple[tuple[PlaneLayout, ...], int]:
    """The layout of ``planes`` in one slot and the slot bytes it needs."""
    layout, offset = [], 0
    for plane in planes:
        layout.append(PlaneLayout(offset, plane.shape, plane.dtype.str))
        offset += _aligned(plane.nbytes)
    return tuple(layout), max(offset, _ALIGN)


def ring_name(engine_pid: int, worker_pid: int, generation: int) -> str:
    return f"{NAME_PREFIX}{engine_pid}-{worker_pid}-{generation}"


def segment_names(prefix: str) -> list[str]:
    """Names in ``/dev/shm`` that start with ``prefix`` (empty where there is no ``/dev/shm``)."""
    try:
        return sorted(n for n in os.listdir(SHM_DIR) if n.startswith(prefix))
    except OSError:
        return []


def unlink_worker_segments(engine_pid: int, worker_pid: int) -> list[str]:
    """Unlink the rings a (dead) worker created and the engine never attached; returns their names."""
    names = segment_names(f"{NAME_PREFIX}{engine_pid}-{worker_pid}-")
    for name in names:
        try:
            segment = shared_memory.SharedMemory(name=name)
        except OSError:
            continue
        segment.close()
        try:
            segment.unlink()
        except OSError:
            pass
    return names


class WorkerRing:
    """The worker's side: ``slots`` slots of ``slot_bytes`` in a new segment; fill a free slot with a frame's planes."""

    def __init__(self, name: str, slots: int, slot_bytes: int) -> None:
        if slots <= 0 or slot_bytes <= 0:
            raise ValueError(f"a ring needs slots > 0 and slot_bytes > 0, got {slots} x {slot_bytes}")
        self.slots = slots
        self.slot_bytes = _aligned(slot_bytes)
        self.header_bytes = _aligned(slots)
        self.shm = shared_memory.SharedMemory(name=name, create=True, size=self.header_bytes + slots * self.slot_bytes)
        self.name = self.shm.name
        self.state = np.ndarray((slots,), np.uint8, buffer=self.shm.buf)
        self.state[:] = FREE

    def free_slot(self) -> int | None:
        """The lowest free slot (so a ring bigger than needed touches only the pages it uses), or None."""
        free = np.flatnonzero(self.state == FREE)
        return int(free[0]) if len(free) else None

    def fill(self, slot: int, planes: tuple[np.ndarray, ...], layout: tuple[PlaneLayout, ...]) -> None:
        """Copy ``planes`` into ``slot`` and hand it to the engine (state HELD)."""
        base = self.header_bytes + slot * self.slot_bytes
        for plane, where in zip(planes, layout):
            target = np.ndarray(where.shape, np.dtype(where.dtype), buffer=self.shm.buf, offset=base + where.offset)
            np.copyto(target, plane, casting="no")
            del target
        self.state[slot] = HELD

    def close(self) -> None:
        """Unmap (the engine's mapping, if any, stays valid)."""
        del self.state
        self.shm.close()

    def unlink(self) -> None:
        """Remove the name unless the engine already did (then nothing is left to do)."""
        try:
            self.shm.unlink()
        except FileNotFoundError:
            pass


class _Mapping(shared_memory.SharedMemory):
    """The engine's mapping of a ring.  ``close`` is only called once no frame views it (``EngineRing.try_close``);
    a mapping collected while views still exist (interpreter exit) goes quietly with its last view."""

    def __del__(self) -> None:
        try:
            self.close()
        except (OSError, BufferError):
            pass


class EngineRing:
    """The engine's side of one ring: frames whose planes are numpy views on a slot; the slot goes back to the
    worker when the last view of it is gone."""

    def __init__(self, name: str, slots: int, slot_bytes: int) -> None:
        self.name = name
        self.slots = slots
        self.slot_bytes = slot_bytes
        self.header_bytes = _aligned(slots)
        self.shm = _Mapping(name=name)
        self.shm.unlink()  # from now on only the two mappings hold the memory; /dev/shm no longer lists it
        self.state = np.ndarray((slots,), np.uint8, buffer=self.shm.buf)
        self.outstanding: set[int] = set()  # slots handed out as frames and not yet released
        self.retired = False  # the worker moved to another ring or exited: no new frames come from this one

    def planes(self, slot: int, layout) -> tuple[np.ndarray, ...]:
        """Views of ``slot``'s planes (``layout``: ``(offset, shape, dtype)`` per plane); the slot is released when
        the last of them (and of their views) is gone."""
        if not 0 <= slot < self.slots:
            raise ValueError(f"ring {self.name}: slot {slot} outside 0..{self.slots - 1}")
        root = np.ndarray((self.slot_bytes,), np.uint8, buffer=self.shm.buf,
                          offset=self.header_bytes + slot * self.slot_bytes)
        out = []
        for offset, shape, dtype in layout:
            dtype = np.dtype(dtype)
            nbytes = math.prod(shape) * dtype.itemsize
            if offset < 0 or offset + nbytes > self.slot_bytes:
                raise ValueError(f"ring {self.name}: a plane of {nbytes} bytes at {offset} does not fit a "
                                 f"{self.slot_bytes}-byte slot")
            out.append(root[offset:offset + nbytes].view(dtype).reshape(shape))
        self.outstanding.add(slot)
        weakref.finalize(root, _release, self.state, self.outstanding, slot)
        return tuple(out)

    def try_close(self) -> bool:
        """Unmap once no frame views the ring any more; False while some still do."""
        if self.outstanding:
            return False
        state, self.state = self.state, None
        del state
        try:
            self.shm.close()
        except BufferError:  # the last view is being deallocated right now: try again later
            self.state = np.ndarray((self.slots,), np.uint8, buffer=self.shm.buf)
            return False
        return True


def _release(state: np.ndarray, outstanding: set[int], slot: int) -> None:
    """Give ``slot`` back to the worker (a byte store and a set discard: atomic under the GIL, no lock)."""
    outstanding.discard(slot)
    state[slot] = FREE

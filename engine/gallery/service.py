"""One person gallery for a whole Ray cluster: a named Ray actor owns the ``Gallery`` (faiss index, persistence,
autosave as on one machine); ``reid`` stages on every node call it through ``RemoteGallery``.

The ``reid`` setting ``gallery: ray://NAME`` selects it.  The first stage that asks creates the actor (named
``NAME`` in the ``amodal`` namespace, detached, restarted by Ray after its node dies — it then reloads the gallery
from ``gallery_path``, losing at most ``save_interval_s`` of changes; keep that path on storage every node sees
or accept a gallery rebuilt from new sightings); every later stage, on any node, gets the same actor.  The actor
runs one call at a time, so identities are given in one order for the whole cluster, and a person leaving a
camera on one node and entering a camera on another keeps the global identity.  Each call is a Ray round trip
(about a millisecond on a LAN), made once per tracked person per frame.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from amodal.engine.gallery.config import GalleryConfig
from amodal.errors import ConfigError

SCHEME = "ray://"
NAMESPACE = "amodal"


def service_name(address: str) -> str:
    """``ray://NAME`` → ``NAME``; ``ConfigError`` for anything else."""
    if not isinstance(address, str) or not address.startswith(SCHEME) or not address[len(SCHEME):].strip("/"):
        raise ConfigError(f"a gallery service address is ray://NAME, got {address!r}")
    return address[len(SCHEME):].strip("/")


class GalleryService:
    """The actor's class (wrapped by ``ray.remote`` in ``connect_gallery``): a ``Gallery`` behind Ray calls."""

    def __init__(self, config: GalleryConfig) -> None:
        from amodal.engine.gallery.gallery import Gallery

        self.gallery = Gallery.load(config.persist_path, config) if config.persist_path else Gallery(config)

    def config(self) -> GalleryConfig:
        return self.gallery.config

    def update_track(self, stream_id: str, track_id: int, embedding: np.ndarray, quality: float, time_ns: int,
                     box_xyxy: tuple[float, float, float, float]) -> int | None:
        return self.gallery.update_track(stream_id, track_id, embedding, quality, time_ns, box_xyxy)

    def end_track(self, stream_id: str, track_id: int) -> None:
        self.gallery.end_track(stream_id, track_id)

    def end_stream(self, stream_id: str) -> None:
        self.gallery.end_stream(stream_id)

    def search(self, embeddings: np.ndarray, k: int):
        return self.gallery.search(embeddings, k)

    def stats(self) -> dict:
        return self.gallery.stats()

    def size(self) -> int:
        return len(self.gallery)

    def save(self) -> str | None:
        """Write the gallery now if it has a path; the path written."""
        return None if self.gallery.path is None else str(self.gallery.save())

    def shutdown(self) -> None:
        """Stop autosaving and save once more (``amodal cluster stop``), before the actor is killed."""
        self.gallery.close(save=True)


class RemoteGallery:
    """What a ``reid`` stage holds instead of a ``Gallery``: the same methods, each a call to the service actor."""

    def __init__(self, handle, config: GalleryConfig, name: str, call_timeout_s: float = 30.0) -> None:
        self.handle, self.config, self.name, self.call_timeout_s = handle, config, name, call_timeout_s

    def _call(self, method: str, *args):
        import ray

        return ray.get(getattr(self.handle, method).remote(*args), timeout=self.call_timeout_s)

    def update_track(self, stream_id, track_id, embedding, quality, time_ns, box_xyxy) -> int | None:
        return self._call("update_track", stream_id, int(track_id), np.asarray(embedding, dtype=np.float32),
                          float(quality), int(time_ns), tuple(float(v) for v in box_xyxy))

    def end_track(self, stream_id: str, track_id: int) -> None:
        self._call("end_track", stream_id, int(track_id))

    def end_stream(self, stream_id: str) -> None:
        self._call("end_stream", stream_id)

    def search(self, embeddings: np.ndarray, k: int):
        return self._call("search", np.asarray(embeddings, dtype=np.float32), k)

    def stats(self) -> dict:
        return self._call("stats")

    def __len__(self) -> int:
        return self._call("size")

    def close(self, save: bool = True) -> None:
        """The stage is done with the service; the service stays (other nodes use it) and saves if asked."""
        if save:
            self._call("save")


def connect_gallery(address: str, config: GalleryConfig, *, call_timeout_s: float = 30.0) -> RemoteGallery:
    """The service at ``ray://NAME``, created with ``config`` if it does not exist yet (Ray is initialised with
    ``address="auto"`` when this process is not part of a Ray cluster yet).  ``ConfigError`` when the running
    service's embedding size differs from ``config.dim``."""
    import ray

    name = service_name(address)
    if not ray.is_initialized():
        ray.init(address="auto", namespace=NAMESPACE, log_to_driver=False)
    actor = ray.remote(GalleryService).options(
        name=name, namespace=NAMESPACE, get_if_exists=True, lifetime="detached", max_restarts=-1,
        max_task_retries=-1, num_cpus=0)
    handle = actor.remote(config)
    running = ray.get(handle.config.remote(), timeout=max(60.0, call_timeout_s))
    if running.dim != config.dim:
        raise ConfigError(f"gallery service {name!r} holds {running.dim}-d embeddings, this reid stage makes "
                          f"{config.dim}-d ones")
    if dataclasses.replace(running, persist_path=None, save_interval_s=0.0) != dataclasses.replace(
            config, persist_path=None, save_interval_s=0.0):
        import logging

        logging.getLogger(__name__).warning("gallery service %r runs with %s; this stage asked for %s (the service's "
                                            "settings apply)", name, running, config)
    return RemoteGallery(handle, running, name, call_timeout_s)

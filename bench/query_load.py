"""``python -m amodal.bench.query_load``: the gallery query endpoint's ``stats`` latency while one client
sends 4096² PNG image searches, our ``QueryServer`` against the single-thread REP server it replaced.

Scenarios, all in the same run on the same gallery, embedder and images (loopback tcp):
  * ``idle``: ``QueryServer``, nobody else asking (the floor);
  * ``rep_reference``: the previous design as the reference — one REP socket whose thread decodes, embeds
    and searches each request before it reads the next (``handle_request`` inline), limits raised to
    accept 4096² images as it did;
  * ``pool_default_limits``: ``QueryServer`` with the default ``QueryLimits`` (4096² is over
    ``max_image_pixels``: refused from the header, never decoded);
  * ``pool_4096_accepted``: ``QueryServer`` with ``max_image_pixels`` raised to 4096² and the per-client image
    rate limit lifted, so every image is decoded and embedded — by the worker pool, not the socket thread.

Load: ``--heavy-clients`` REQ clients (default 1) each send one 4096² PNG search after another, ignoring
``retry_after_s`` (the abusive client of the defect report).  Probe: one more REQ client sends a ``stats``
every ``--probe-interval-ms`` and records its round-trip latency.  Embedder: the shipped MBF model as the
engine's ``reid`` analyzer runs it (``--embedder mbf``: tensor, antialiased resize to the model input,
embed) or a numpy mean-colour embedder (``--embedder mean``).

Writes ``query_load.json`` and ``query_load.png`` under ``--out``.
"""
from __future__ import annotations

import argparse
import io
import threading
import time
from collections.abc import Callable
from dataclasses import replace

import msgpack
import numpy as np
import zmq

from amodal.bench.common import new_figure, save_figure, write_results
from amodal.engine.gallery.config import GalleryConfig, QueryLimits
from amodal.engine.gallery.gallery import Gallery
from amodal.engine.gallery.query import QueryServer, handle_request
from amodal.gallery_client import GalleryClient, GalleryQueryError

Embedder = Callable[[np.ndarray], np.ndarray]
_PROBE_TIMEOUT_S = 30.0


def build_gallery(dim: int, identities: int, seed: int = 0) -> Gallery:
    rng = np.random.default_rng(seed)
    gallery = Gallery(GalleryConfig(dim=dim, min_observations=1, match_threshold=0.99))
    for i in range(identities):
        v = rng.standard_normal(dim).astype(np.float32)
        gallery.update_track("bench", i, v / np.linalg.norm(v), 1.0, i, (0.0, 0.0, 10.0, 20.0))
        gallery.end_track("bench", i)
    return gallery


def big_png(side_px: int) -> bytes:
    """A ``side_px``² RGB PNG of smooth gradients (a few MB, 3·side² bytes once decoded)."""
    from PIL import Image

    ramp = np.linspace(0, 255, side_px, dtype=np.float32)
    rgb = np.stack(np.broadcast_arrays(ramp[None, :], ramp[:, None], (ramp[None, :] + ramp[:, None]) / 2), axis=-1)
    buf = io.BytesIO()
    Image.fromarray(rgb.astype(np.uint8)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def mbf_embedder(weights: str | None) -> tuple[Embedder, int]:
    """The reid analyzer's ``embed_image`` on the CPU: (embedder, D)."""
    import torch
    import torch.nn.functional as F

    from amodal.models.mbf import load_mbf
    from amodal.pretrained import shipped_weights

    loaded = load_mbf(weights or str(shipped_weights("mbf_tiny_synthetic.safetensors")))
    model = loaded.model.eval()
    size_hw = (loaded.config.input_height, loaded.config.input_width)
    lock = threading.Lock()

    def embed(rgb: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            x = torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1).float().div_(255.0)
            x = F.interpolate(x[None], size=size_hw, mode="bilinear", align_corners=False, antialias=True)
            with lock:
                return model.embed(x)[0].numpy()

    return embed, int(model.embedding_dim)


def mean_embedder(dim: int) -> Embedder:
    projection = np.random.default_rng(1).standard_normal((dim, 3)).astype(np.float32)

    def embed(rgb: np.ndarray) -> np.ndarray:
        v = projection @ (rgb.reshape(-1, 3).mean(axis=0) / 255.0 - 0.5) + 1e-3
        return (v / np.linalg.norm(v)).astype(np.float32)

    return embed


class RepReference:
    """The replaced design: one REP socket, each request decoded/embedded/searched inline by its thread."""

    def __init__(self, gallery: Gallery, endpoint: str, embed: Embedder, limits: QueryLimits) -> None:
        self.gallery, self.endpoint, self.embed, self.limits = gallery, endpoint, embed, limits
        self._stop = threading.Event()
        self._bound = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-rep-reference", daemon=True)

    def __enter__(self) -> "RepReference":
        self._thread.start()
        if not self._bound.wait(5):
            raise RuntimeError(f"REP reference did not bind {self.endpoint}")
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(60)

    def _run(self) -> None:
        sock = zmq.Context.instance().socket(zmq.REP)
        try:
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.MAXMSGSIZE, self.limits.max_message_bytes)
            sock.bind(self.endpoint)
            self._bound.set()
            while not self._stop.is_set():
                if sock.poll(100):
                    reply = handle_request(sock.recv(), self.gallery, self.embed, limits=self.limits)
                    sock.send(msgpack.packb(reply, use_bin_type=True))
        finally:
            sock.close()


def run_scenario(name: str, server, endpoint: str, image: bytes, heavy_clients: int, seconds: float,
                 probe_interval_s: float) -> dict:
    stop = threading.Event()
    counts = {"image_ok": 0, "image_refused": 0, "image_timeouts": 0}
    refusals: dict[str, int] = {}
    lock = threading.Lock()

    def heavy() -> None:
        with GalleryClient(endpoint, timeout_s=_PROBE_TIMEOUT_S) as client:
            while not stop.is_set():
                try:
                    client.search(image=image, k=5)
                    key = "image_ok"
                except GalleryQueryError as exc:
                    key = "image_timeouts" if isinstance(exc, TimeoutError) else "image_refused"
                    if key == "image_refused":
                        reason = str(exc).split(": ", 1)[-1].split(":")[0].split(",")[0][:40]
                        with lock:
                            refusals[reason] = refusals.get(reason, 0) + 1
                with lock:
                    counts[key] += 1

    latencies_ms: list[float] = []
    with server:
        threads = [threading.Thread(target=heavy, daemon=True) for _ in range(heavy_clients)]
        for t in threads:
            t.start()
        time.sleep(min(1.0, seconds / 4))  # let the load start
        with GalleryClient(endpoint, timeout_s=_PROBE_TIMEOUT_S) as probe:
            deadline_s = time.monotonic() + seconds
            while time.monotonic() < deadline_s:
                started_s = time.monotonic()
                probe.stats()
                latencies_ms.append((time.monotonic() - started_s) * 1e3)
                time.sleep(probe_interval_s)
        stop.set()
        for t in threads:
            t.join(_PROBE_TIMEOUT_S + 5)
    q = np.percentile(latencies_ms, [50, 95, 99]) if latencies_ms else [float("nan")] * 3
    row = {"scenario": name, "stats_requests": len(latencies_ms), "stats_p50_ms": float(q[0]),
           "stats_p95_ms": float(q[1]), "stats_p99_ms": float(q[2]), "stats_max_ms": max(latencies_ms, default=0.0),
           "heavy_clients": heavy_clients, "seconds": seconds, **counts,
           "image_replies_per_s": (counts["image_ok"] + counts["image_refused"]) / seconds, "refusals": refusals,
           "latencies_ms": [round(v, 3) for v in latencies_ms]}
    print(f"{name:>22}: stats p50 {row['stats_p50_ms']:8.2f} ms  p95 {row['stats_p95_ms']:8.2f} ms  "
          f"max {row['stats_max_ms']:8.2f} ms  ({len(latencies_ms)} stats) | images ok {counts['image_ok']}, "
          f"refused {counts['image_refused']} {refusals or ''}", flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m amodal.bench.query_load", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="out/bench/query_load")
    parser.add_argument("--seconds", type=float, default=10.0, help="probing time per scenario")
    parser.add_argument("--heavy-clients", type=int, default=1)
    parser.add_argument("--image-side-px", type=int, default=4096)
    parser.add_argument("--probe-interval-ms", type=float, default=20.0)
    parser.add_argument("--identities", type=int, default=1000, help="gallery size")
    parser.add_argument("--embedder", choices=("mbf", "mean"), default="mbf")
    parser.add_argument("--reid-weights", default=None)
    parser.add_argument("--port", type=int, default=57391, help="first loopback port used")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.heavy_clients < 1 or args.image_side_px < 1:
        parser.error("--seconds must be > 0, --heavy-clients and --image-side-px >= 1")
    import torch

    torch.set_num_threads(1)  # share the CPU the way the engine's query thread would
    embed, dim = mbf_embedder(args.reid_weights) if args.embedder == "mbf" else (None, 256)
    embed = embed or mean_embedder(dim)
    gallery = build_gallery(dim, args.identities)
    image = big_png(args.image_side_px)
    pixels = args.image_side_px ** 2
    print(f"{args.image_side_px}² PNG: {len(image) / 2**20:.1f} MiB; embedder {args.embedder}; gallery "
          f"{len(gallery)} identities of D={dim}", flush=True)
    accept_all = QueryLimits(max_image_pixels=max(pixels, 1), max_request_bytes=max(len(image) + 4096, 8 << 20),
                             max_message_bytes=max(len(image) + 4096, 64 << 20))
    accept_all_pool = replace(accept_all, client_images_per_s=1e6, client_image_burst=1_000_000)
    endpoints = (f"tcp://127.0.0.1:{args.port + i}" for i in range(8))
    rows = []
    ep = next(endpoints)
    rows.append(run_scenario("idle", QueryServer(gallery, ep, embed_image=embed), ep, image, 0,
                             min(args.seconds, 3.0), args.probe_interval_ms / 1e3))
    ep = next(endpoints)
    rows.append(run_scenario("rep_reference", RepReference(gallery, ep, embed, accept_all), ep, image,
                             args.heavy_clients, args.seconds, args.probe_interval_ms / 1e3))
    ep = next(endpoints)
    rows.append(run_scenario("pool_default_limits", QueryServer(gallery, ep, embed_image=embed), ep, image,
                             args.heavy_clients, args.seconds, args.probe_interval_ms / 1e3))
    ep = next(endpoints)
    rows.append(run_scenario("pool_4096_accepted", QueryServer(gallery, ep, embed_image=embed, limits=accept_all_pool),
                             ep, image, args.heavy_clients, args.seconds, args.probe_interval_ms / 1e3))
    reference = rows[1]["stats_p50_ms"]
    for row in rows:
        row["stats_p50_vs_rep_reference"] = row["stats_p50_ms"] / reference if reference else None
    path = write_results(args.out, "query_load", {
        "args": vars(args), "image_bytes": len(image), "default_limits": _limits_dict(QueryLimits()),
        "rows": rows})
    fig, axes = new_figure()
    ax = axes[0][0]
    ax.boxplot([r["latencies_ms"] or [0.0] for r in rows], showfliers=True)
    ax.set_xticks(range(1, len(rows) + 1), [r["scenario"] for r in rows])
    ax.set_yscale("log")
    ax.set_ylabel("stats round trip (ms)")
    ax.set_title(f"stats latency, {args.heavy_clients} client(s) sending {args.image_side_px}² PNGs ({args.embedder})")
    ax.tick_params(axis="x", labelrotation=15)
    save_figure(fig, args.out, "query_load")
    print(f"wrote {path}", flush=True)
    return 0


def _limits_dict(limits: QueryLimits) -> dict:
    return {name: getattr(limits, name) for name in limits.__slots__}


if __name__ == "__main__":
    raise SystemExit(main())

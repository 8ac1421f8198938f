"""``amodal bench gallery``: the gallery's approximate index (IVF) against exact search, same run.

For each size N (default 10k, 100k, 1M) of random-but-clustered unit vectors (``--dim``, default 256;
clusters of ~``--per-cluster`` vectors, like persons seen many times), the gallery's ``VectorIndex`` in
IVF mode is compared with ``faiss.IndexFlatIP`` (the exact reference) on held-out queries drawn from the
same clusters (with the default noise, a query's top-1 similarity is ~0.56 and its 10th ~0.50): build
time, batch QPS (``--queries`` at once), single-query QPS (``--single-queries`` one at a time), recall@1
and recall@10 against the exact top-k, for each ``--nprobe``.

The MBF ReID model's embedding throughput joins the same run (``--reid-weights``, default the shipped
weights; ``--skip-embedding`` leaves it out): crops per second of ``uint8[B, H, W, 3]`` person crops
(``--crop-hw``, resized to the model input, embedded, L2-normalised) for each ``--embed-batches`` B, with the
model's attention through our fused attention dispatcher (``auto``: Triton on CUDA, the CPU path otherwise)
and, as the reference in the same run, through the PyTorch reference attention.

Writes ``gallery.json`` and ``gallery.png`` (``--name``) to ``--out``.
"""
from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Callable

import faiss
import numpy as np

from amodal.bench.common import environment, new_figure, save_figure, time_cpu_ms, write_results
from amodal.engine.gallery.config import GalleryConfig
from amodal.engine.gallery.index import VectorIndex, faiss_threads

EmbedBatch = Callable[[np.ndarray], np.ndarray]  # uint8[B, H, W, 3] RGB crops → float32[B, D]


def clustered_unit_vectors(n: int, dim: int, per_cluster: int, noise: float, seed: int,
                           centres: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(vectors float32[n, dim], centres float32[C, dim]): unit vectors around ``C = n / per_cluster``
    centres (or the given ``centres``), each ``normalise(centre + noise · unit noise)``.  Centres are
    themselves grouped (``normalise(style + unit noise)``, ~50 centres per style: persons dressed
    alike), so neighbouring clusters overlap as they do for ReID embeddings."""
    rng = np.random.default_rng(seed)
    if centres is None:
        count = max(1, n // per_cluster)
        styles = _unit(rng.standard_normal((max(1, count // 50), dim), dtype=np.float32))
        centres = _unit(styles[rng.integers(0, len(styles), count)]
                        + _unit(rng.standard_normal((count, dim), dtype=np.float32)))
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 65536):  # chunks keep the float temporaries small at 1M x 256
        m = min(65536, n - start)
        which = rng.integers(0, len(centres), m)
        out[start : start + m] = _unit(centres[which] + noise * _unit(rng.standard_normal((m, dim), dtype=np.float32)))
    return out, centres


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def recall_at(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Mean |found[:, :k] ∩ truth[:, :k]| / k (recall@1 = top-1 agreement)."""
    return float(np.mean([len(set(f[:k]) & set(t[:k])) / k for f, t in zip(found.tolist(), truth.tolist())]))


def _qps(steps: dict[str, Callable[[], object]], count: int, reps: int) -> dict[str, float]:
    return {name: count / (p50 / 1e3) for name, (p50, _, _) in time_cpu_ms(steps, reps).items()}


def bench_size(n: int, args) -> dict:
    data, centres = clustered_unit_vectors(n, args.dim, args.per_cluster, args.noise, seed=n)
    queries, _ = clustered_unit_vectors(args.queries, args.dim, args.per_cluster, args.noise, seed=n + 1, centres=centres)
    ids = np.arange(n, dtype=np.int64)

    start = time.perf_counter()
    exact = faiss.IndexFlatIP(args.dim)
    exact.add(data)
    exact_build_s = time.perf_counter() - start

    config = GalleryConfig(dim=args.dim, exact_max_vectors=max(1, n - 1), device=args.device)
    start = time.perf_counter()
    approx = VectorIndex(config)
    approx.upsert(ids, data)
    approx.flush(wait=True)  # trains the IVF and adds everything
    approx_build_s = time.perf_counter() - start
    del data

    k = args.k
    truth = exact.search(queries, k)[1]
    single = queries[: args.single_queries]

    def exact_single():
        with faiss_threads(1):  # the same thread policy VectorIndex applies to single queries
            for q in single:
                exact.search(q[None], k)

    def approx_single():
        for q in single:
            approx.search(q[None], k)

    stats = approx.stats()
    # the exact reference once per size (it does not depend on nprobe); one timed round at >= 500k,
    # where a 1000-query exact batch takes tens of seconds on a small CPU
    exact_reps = 1 if n >= 500_000 else args.reps
    exact_qps = {"batch_qps": _qps({"exact": lambda: exact.search(queries, k)}, len(queries), exact_reps)["exact"],
                 "single_qps": _qps({"exact": exact_single}, len(single), exact_reps)["exact"], "reps": exact_reps}
    record = {"n": n, "dim": args.dim, "k": k, "queries": len(queries), "single_queries": len(single),
              "clusters": len(centres), "index": {"kind": stats.kind, "device": stats.device, "nlist": stats.nlist},
              "build_s": {"exact": exact_build_s, "ivf": approx_build_s}, "exact": exact_qps, "nprobe": []}
    print(f"N={n:>8} exact: batch {exact_qps['batch_qps']:9.0f} q/s  single {exact_qps['single_qps']:8.0f} q/s   "
          f"build exact {exact_build_s:.1f} s, IVF {approx_build_s:.1f} s ({stats.nlist} lists)", flush=True)
    for nprobe in args.nprobe:
        approx.set_nprobe(nprobe)
        found = approx.search(queries, k)[1]
        batch_qps = _qps({"ivf": lambda: approx.search(queries, k)}, len(queries), args.reps)["ivf"]
        single_qps = _qps({"ivf": approx_single}, len(single), args.reps)["ivf"]
        row = {"nprobe": approx.stats().nprobe, "recall_at_1": recall_at(found, truth, 1),
               "recall_at_10": recall_at(found, truth, min(10, k)), "batch_qps": batch_qps, "single_qps": single_qps,
               "batch_speedup_vs_exact": batch_qps / exact_qps["batch_qps"],
               "single_speedup_vs_exact": single_qps / exact_qps["single_qps"]}
        record["nprobe"].append(row)
        print(f"N={n:>8} nprobe={row['nprobe']:>4}/{stats.nlist}: recall@1 {row['recall_at_1']:.3f} "
              f"recall@10 {row['recall_at_10']:.3f}  batch {batch_qps:9.0f} q/s (x{row['batch_speedup_vs_exact']:.1f} exact)"
              f"  single {single_qps:8.0f} q/s (x{row['single_speedup_vs_exact']:.1f} exact)", flush=True)
    return record


def bench_embedding_throughput(embed: EmbedBatch, batch_sizes: list[int], crop_hw: tuple[int, int],
                               reps: int) -> list[dict]:
    """Crops per second of ``embed`` on random uint8[B, H, W, 3] crops for each batch size B (median of
    ``reps`` timed calls after a warm-up); the embedding dim is read from the output."""
    rng = np.random.default_rng(0)
    rows = []
    for batch in batch_sizes:
        crops = rng.integers(0, 256, (batch, *crop_hw, 3), dtype=np.uint8)
        out = np.asarray(embed(crops))
        if out.ndim != 2 or out.shape[0] != batch:
            raise ValueError(f"the embedder returned shape {out.shape} for {batch} crops, expected [{batch}, D]")
        (p50, p20, p80), = time_cpu_ms({"embed": lambda: embed(crops)}, reps).values()
        rows.append({"batch": batch, "crop_hw": list(crop_hw), "dim": int(out.shape[1]), "ms_p50": p50,
                     "ms_p20": p20, "ms_p80": p80, "crops_per_s": batch / p50 * 1e3})
        print(f"embedder batch {batch:>3}: {p50:8.2f} ms  {batch / p50 * 1e3:8.1f} crops/s", flush=True)
    return rows


def mbf_embedders(weights: str | None, device: str) -> dict[str, EmbedBatch]:
    """Batch embedders of the MBF weights (None = shipped), one per attention backend: ``auto`` and the
    PyTorch ``reference``."""
    import torch
    import torch.nn.functional as F

    from amodal.engine.device import select_device
    from amodal.models.mbf import build_mbf, load_mbf
    from amodal.engine.stages.reid import ReidStage
    from amodal.pretrained import shipped_weights

    loaded = load_mbf(weights or shipped_weights(ReidStage.shipped_weights))
    torch_device = select_device(device)
    size = (loaded.config.input_height, loaded.config.input_width)
    embedders: dict[str, EmbedBatch] = {}
    for backend in ("auto", "reference"):
        model = build_mbf(config=dataclasses.replace(loaded.config, attention_backend=backend))
        model.load_state_dict(loaded.model.state_dict())
        model = model.to(torch_device).eval()

        def embed(crops: np.ndarray, model=model) -> np.ndarray:
            with torch.inference_mode():
                x = torch.from_numpy(crops).to(torch_device).permute(0, 3, 1, 2).float().div_(255.0)
                if tuple(x.shape[2:]) != size:
                    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
                out = model.embed(x)
                if out.is_cuda:
                    torch.cuda.synchronize()
                return out.cpu().numpy()

        embedders[backend] = embed
    return embedders


def _plot(records: list[dict], embed_rows: list[dict] | None, out_dir: str, device_name: str, name: str,
          noise: float):
    fig, axes = new_figure(ncols=3 if embed_rows else 2, width_in=5.5, height_in=4.0)
    sizes = [r["n"] for r in records]
    qps_ax, rec_ax = axes[0][0], axes[0][1]
    qps_ax.plot(sizes, [r["exact"]["batch_qps"] for r in records], "k-o", label="exact, batch")
    qps_ax.plot(sizes, [r["exact"]["single_qps"] for r in records], "k--^", label="exact, single")
    for i, probe in enumerate(records[0]["nprobe"]):
        colour = f"C{i}"
        qps_ax.plot(sizes, [r["nprobe"][i]["batch_qps"] for r in records], "-s", color=colour,
                    label=f"IVF nprobe {probe['nprobe']}, batch")
        qps_ax.plot(sizes, [r["nprobe"][i]["single_qps"] for r in records], "--^", color=colour,
                    label=f"IVF nprobe {probe['nprobe']}, single")
        rec_ax.plot(sizes, [r["nprobe"][i]["recall_at_1"] for r in records], "-s", color=colour,
                    label=f"recall@1, nprobe {probe['nprobe']}")
        rec_ax.plot(sizes, [r["nprobe"][i]["recall_at_10"] for r in records], "--^", color=colour,
                    label=f"recall@10, nprobe {probe['nprobe']}")
    for ax in (qps_ax, rec_ax):
        ax.set_xscale("log")
        ax.set_xlabel("gallery vectors")
        ax.legend(fontsize=6)
    qps_ax.set_yscale("log")
    qps_ax.set_ylabel("queries / s (log)")
    qps_ax.set_title(f"search QPS, dim {records[0]['dim']}, k {records[0]['k']}, noise {noise} — {device_name}",
                     fontsize=8)
    rec_ax.set_ylabel("recall vs exact top-k")
    rec_ax.set_title("IVF recall against faiss IndexFlatIP", fontsize=8)
    if embed_rows:
        ax = axes[0][2]
        for backend in sorted({r["attention"] for r in embed_rows}):
            rows = [r for r in embed_rows if r["attention"] == backend]
            ax.plot([r["batch"] for r in rows], [r["crops_per_s"] for r in rows], "-o", label=f"attention {backend}")
        ax.legend(fontsize=6)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch")
        ax.set_ylabel("crops / s")
        ax.set_title("embedding throughput", fontsize=8)
    return save_figure(fig, out_dir, name)


def _int_list(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive ints, got {text!r}")
    return values


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="amodal bench gallery", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="out/bench/gallery")
    parser.add_argument("--name", default="gallery", help="results file stem (NAME.json, NAME.png)")
    parser.add_argument("--sizes", type=_int_list, default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--per-cluster", type=int, default=20, help="vectors per cluster (sightings per person)")
    parser.add_argument("--noise", type=float, default=1.0, help="spread of a cluster around its centre")
    parser.add_argument("--queries", type=int, default=1000, help="queries per batch search")
    parser.add_argument("--single-queries", type=int, default=100, help="queries searched one at a time")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--nprobe", type=_int_list, default=[8, 32, 128])
    parser.add_argument("--reps", type=int, default=3, help="timing rounds (median)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--reid-weights", default=None, help="MBF weights for the embedding throughput (default: shipped)")
    parser.add_argument("--skip-embedding", action="store_true", help="gallery search only")
    parser.add_argument("--embed-batches", type=_int_list, default=[1, 8, 32])
    parser.add_argument("--crop-hw", type=int, nargs=2, default=(256, 128), metavar=("H", "W"))
    args = parser.parse_args(argv)
    if args.dim < 1 or args.k < 1 or args.queries < 1 or args.per_cluster < 1 or args.reps < 1:
        parser.error("--dim, --k, --queries, --per-cluster and --reps must be >= 1")
    args.single_queries = max(1, min(args.single_queries, args.queries))
    env = environment()
    records = [bench_size(n, args) for n in args.sizes]
    embed_rows = None
    if not args.skip_embedding:
        embed_rows = []
        for backend, embed in mbf_embedders(args.reid_weights, args.device).items():
            print(f"MBF embedding, attention backend {backend}:", flush=True)
            rows = bench_embedding_throughput(embed, args.embed_batches, tuple(args.crop_hw), args.reps)
            embed_rows += [{**row, "attention": backend} for row in rows]
        reference = {r["batch"]: r["crops_per_s"] for r in embed_rows if r["attention"] == "reference"}
        for row in embed_rows:
            row["speedup_vs_reference"] = row["crops_per_s"] / reference[row["batch"]]
    results = {"faiss_omp_threads": faiss.omp_get_max_threads(), "per_cluster": args.per_cluster,
               "noise": args.noise, "records": records}
    if embed_rows is not None:
        results["embedding_throughput"] = {"weights": args.reid_weights or "shipped", "rows": embed_rows}
    path = write_results(args.out, args.name, results)
    png = _plot(records, embed_rows, args.out, env["device"], args.name, args.noise)
    print(f"wrote {path} and {png}")
    return 0

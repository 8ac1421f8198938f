"""``amodal run --source URI [--source URI ...] --pipeline STAGE[,STAGE] --publish ENDPOINT [--annotate OUT.mp4] [--config FILE]``.

A source is ``URI`` or ``ID=URI`` (ids default to s0, s1, …).  Per-source settings beyond the flags
come from the YAML config (README, "Configuration").  SIGINT/SIGTERM stop cleanly: sources close,
queued frames are analysed and published, sockets flush.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import re
import signal
import sys
import threading

from amodal.engine.config import (
    DEFAULT_PIPELINE,
    EngineConfig,
    PipelineConfig,
    parse_stage_list,
    pipeline_from_analyzer,
)
from amodal.errors import ConfigError, EngineError
from amodal.streams.base import SourceConfig

_ID_PREFIX = re.compile(r"^([A-Za-z0-9_.\-]{1,64})=(.+)$")


def parse_source(text: str, index: int) -> tuple[str, str]:
    """``cam1=rtsp://…`` → (cam1, rtsp://…); a bare URI gets the id ``s<index>``."""
    match = _ID_PREFIX.match(text)
    if match and "://" not in match.group(1):
        return match.group(1), match.group(2)
    return f"s{index}", text


def _pipeline_from_flags(args: argparse.Namespace, base: EngineConfig) -> tuple[PipelineConfig, ...]:
    """``--pipeline a,b`` (or the legacy ``--analyzer NAME``) with the stage flags applied; else the config's."""
    if args.pipeline and args.analyzer:
        raise ConfigError("give --pipeline or --analyzer, not both")
    if args.pipeline:
        pipeline = PipelineConfig.of(DEFAULT_PIPELINE, parse_stage_list(args.pipeline))
    elif args.analyzer:
        pipeline = pipeline_from_analyzer({"name": args.analyzer}, "--analyzer")
    elif len(base.pipelines) == 1:
        pipeline = base.pipelines[0]
    else:
        if (args.weights or args.score_threshold is not None or args.sam_path or args.reid_weights or args.gallery
                or args.query_endpoint):
            raise ConfigError("the config has several pipelines: set stage settings in its pipelines: section")
        return base.pipelines
    primary = {"weights": args.weights, "score_threshold": args.score_threshold, "sam_path": args.sam_path}
    reid = {"weights": args.reid_weights, "gallery_path": args.gallery, "query_endpoint": args.query_endpoint}
    stages = []
    for i, stage in enumerate(pipeline.stages):
        overrides = reid if stage.name == "reid" else primary if i == 0 else {}
        overrides = {k: v for k, v in overrides.items() if v is not None and hasattr(stage.settings, k)}
        stages.append(dataclasses.replace(stage, settings=dataclasses.replace(stage.settings, **overrides)))
    unused = [f"--{'sam' if k == 'sam_path' else k.replace('_', '-')}" for k, v in primary.items() if v is not None
              and not hasattr(pipeline.stages[0].settings, k)]
    if unused:
        raise ConfigError(f"{', '.join(unused)} do not apply to stage {pipeline.stages[0].name!r}")
    if any(v is not None for v in reid.values()) and "reid" not in pipeline.stage_names:
        raise ConfigError("--reid-weights, --gallery and --query-endpoint need a reid stage in the pipeline")
    return (dataclasses.replace(pipeline, stages=tuple(stages)),)


def build_config(args: argparse.Namespace) -> EngineConfig:
    base = EngineConfig.from_yaml(args.config) if args.config else EngineConfig()
    sources = list(base.sources)
    for i, text in enumerate(args.source or []):
        stream_id, uri = parse_source(text, len(sources) + i if args.config else i)
        sources.append(SourceConfig(uri=uri, stream_id=stream_id))
    if args.max_frames is not None or args.fast or args.realtime or args.loop:
        sources = [
            dataclasses.replace(
                s,
                max_frames=args.max_frames if args.max_frames is not None else s.max_frames,
                realtime=False if args.fast else (True if args.realtime else s.realtime),
                loop=args.loop or s.loop,
            )
            for s in sources
        ]
    pipelines = _pipeline_from_flags(args, base)
    flagged = bool(args.pipeline or args.analyzer)
    if flagged:  # one pipeline from the command line: every source runs through it
        sources = [dataclasses.replace(s, pipeline=None) for s in sources]
    overrides = {
        "publish": args.publish,
        "max_batch_size": args.batch_size,
        "max_wait_ms": args.max_wait_ms,
        "device": args.device,
        "annotate": args.annotate,
        "wait_for_subscribers": args.wait_subscribers,
        "wait_for_subscribers_timeout_s": args.wait_subscribers_timeout,
        "metrics_port": args.metrics_port,
    }
    return dataclasses.replace(base, sources=tuple(sources), pipelines=pipelines,
                               default_pipeline=None if flagged else base.default_pipeline,
                               **{k: v for k, v in overrides.items() if v is not None})


def parser() -> argparse.ArgumentParser:
    from amodal.engine.stages import STAGES

    stage_help = "; ".join(f"{name}: {entry.summary}" for name, entry in STAGES.items())
    p = argparse.ArgumentParser(prog="amodal run", description=__doc__.splitlines()[0])
    p.add_argument("--source", action="append", metavar="[ID=]URI", help="file, rtsp://, http(s)://, scanner://DIR, /dev/videoN, synthetic://")
    p.add_argument("--pipeline", metavar="STAGE[,STAGE...]",
                   help=f"the stages every --source runs through, in order (default: the config's, else identity). Stages: {stage_help}")
    p.add_argument("--analyzer", help="legacy one-stage pipeline (reid means ovis,reid)")
    p.add_argument("--weights", help="weights for the first stage: a local file, or shipped:FILE (e.g. shipped:cmasktrack_street_synthetic.safetensors)")
    p.add_argument("--score-threshold", type=float, help="the first stage's detection threshold")
    p.add_argument("--sam", dest="sam_path", metavar="PATH",
                   help="xray: a local SamModel.save_pretrained folder, the SAM the weights were trained on")
    p.add_argument("--reid-weights", help="reid: MBF weights file (default: the shipped ones)")
    p.add_argument("--gallery", help="reid: gallery file, restored at start and saved while running")
    p.add_argument("--query-endpoint", help="reid: ZeroMQ endpoint for gallery queries (amodal query)")
    p.add_argument("--publish", help="ZeroMQ PUB endpoint to bind (default tcp://127.0.0.1:5555)")
    p.add_argument("--annotate", metavar="OUT.mp4", help="write the annotated video (per stream when several: OUT_<stream>.mp4)")
    p.add_argument("--wait-subscribers", type=int, metavar="N",
                   help="attach sources only once N subscribers have subscribed (file jobs that must not lose the start)")
    p.add_argument("--wait-subscribers-timeout", type=float, metavar="S", help="give up waiting after S seconds (default 10)")
    p.add_argument("--metrics-port", type=int, metavar="PORT",
                   help="serve Prometheus metrics (/metrics) and health (/health) on 127.0.0.1:PORT (config metrics_host for others)")
    p.add_argument("--http", metavar="HOST:PORT",
                   help="serve the live view (page, MJPEG video, REST API to add/remove sources) on HOST:PORT; off by default")
    p.add_argument("--http-token-file", metavar="FILE",
                   help="bearer token every HTTP request must carry; required when --http listens beyond loopback")
    p.add_argument("--http-max-fps", type=float, default=10.0, metavar="N",
                   help="draw and encode each watched stream's video at most N times a second (default 10)")
    p.add_argument("--max-frames", type=int, help="stop each source after N frames")
    p.add_argument("--config", help="YAML config (sources with per-source settings, pipelines, batching)")
    p.add_argument("--batch-size", type=int, help="max micro-batch size")
    p.add_argument("--max-wait-ms", type=float, help="max wait for a batch to fill")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    pace = p.add_mutually_exclusive_group()
    pace.add_argument("--fast", action="store_true", help="decode files as fast as possible")
    pace.add_argument("--realtime", action="store_true", help="pace files at their frame rate")
    p.add_argument("--loop", action="store_true", help="restart files at the end")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from amodal.engine.engine import Engine

    try:
        config = build_config(args)
        if not config.sources and not args.http:  # with --http, sources can come later (POST /streams)
            print("amodal run: no sources (give --source or a config with sources:)", file=sys.stderr)
            return 2
        view = None
        if args.http:
            from amodal.engine.web import LiveView, web_settings

            view = LiveView(web_settings(args.http, args.http_token_file, max_fps=args.http_max_fps),
                            stream_down_s=config.health_stream_down_s, stall_s=config.health_stall_s)
        elif args.http_token_file:
            raise ConfigError("--http-token-file needs --http")
        engine = Engine(config, sinks=[view] if view is not None else ())
        if view is not None:
            view.attach(engine)
        engine.start()
    except EngineError as exc:
        print(f"amodal run: error: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()

    def _on_signal(signum, _frame) -> None:
        stop.set()

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    pipelines = "; ".join(f"{p.name}: {','.join(p.stage_names)}" for p in config.pipelines)
    print(f"amodal: {len(config.sources)} source(s) → {pipelines} on {engine.device} → {engine.publisher.bound_endpoint}", file=sys.stderr)
    if view is not None:
        print(f"amodal: live view at {view.url}/", file=sys.stderr)
    while not stop.is_set() and not engine.wait(0.2):
        pass
    engine.stop()
    print(json.dumps(engine.snapshot()), file=sys.stderr)
    if engine.failures:
        for failure in engine.failures:
            print(f"amodal run: error: {failure}", file=sys.stderr)
        return 1
    return 0

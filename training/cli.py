"""``amodal train CONFIG.yaml [--resume] [--out DIR] [--max-steps N] [--device cpu|cuda] [--sam PATH]``.

Multi-GPU / multi-node with the same config: ``torchrun --nproc_per_node=8 -m amodal.training.cli CONFIG.yaml``.
Without ``--resume`` an ``out_dir`` that already holds checkpoints is refused; with it, training continues from
the newest checkpoint there (or starts at step 0 when there is none).
"""
from __future__ import annotations

import argparse
import json
import sys

from amodal.errors import CheckpointError, ConfigError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="amodal train", description="train a model from a training YAML")
    p.add_argument("config", help="training YAML (task, task_config, trainer keys)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in out_dir")
    p.add_argument("--out", dest="out_dir", help="output folder (overrides out_dir)")
    p.add_argument("--max-steps", type=int, help="overrides max_steps (the lr schedule follows it)")
    p.add_argument("--device", choices=("cpu", "cuda"), help="overrides device")
    p.add_argument("--sam", dest="sam_path", metavar="PATH",
                   help="xray task: start from a local SamModel.save_pretrained folder (overrides task_config.model.sam_path)")
    return p


def with_sam_path(config, sam_path: str):
    """``config`` with ``task_config.model.sam_path`` set (``--sam``); ConfigError for a task without a SAM."""
    import dataclasses

    if config.task != "xray":
        raise ConfigError(f"--sam applies to the xray task, not {config.task!r}")
    model = dict(config.task_config.get("model") or {})
    model["sam_path"] = str(sam_path)
    return dataclasses.replace(config, task_config={**config.task_config, "model": model})


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    from amodal.training.tasks import build_task
    from amodal.training.trainer import Trainer, init_distributed, load_train_config
    from amodal.training.trainer.checkpoint import latest_checkpoint
    from amodal.training.trainer.distributed import shutdown

    try:
        config = load_train_config(args.config, out_dir=args.out_dir, max_steps=args.max_steps, device=args.device)
        if args.sam_path is not None:
            config = with_sam_path(config, args.sam_path)
        last = latest_checkpoint(config.out_path)
        if last is not None and not args.resume:
            raise ConfigError(f"{config.out_path} already holds checkpoints (newest {last.name}); pass --resume or another --out")
        task = build_task(config.task, config.task_config)
        ctx = init_distributed(config.device, timeout_s=config.dist_timeout_s)
    except (ConfigError, CheckpointError) as exc:
        print(f"amodal train: {exc}", file=sys.stderr)
        return 2
    try:
        trainer = Trainer(config, task, ctx)
        if args.resume:
            if last is not None:
                trainer.resume(last)
            elif ctx.is_main:
                print(f"amodal train: no checkpoint in {config.out_path}; starting at step 0", file=sys.stderr)
        summary = trainer.train()
    except (ConfigError, CheckpointError) as exc:
        print(f"amodal train: {exc}", file=sys.stderr)
        return 2
    finally:
        shutdown(ctx)
    if ctx.is_main:
        print(json.dumps({"steps": summary.steps, "best_score": summary.best_score, "best_step": summary.best_step,
                          "last_eval": summary.last_eval,
                          "export": str(summary.export_path) if summary.export_path else None}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

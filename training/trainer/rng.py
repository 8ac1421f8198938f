"""Random-number-generator states (python, numpy, torch CPU, torch CUDA) packed into one int64 tensor.

A tensor, not the libraries' own tuples, so a checkpoint holding it loads with ``torch.load(weights_only=True)``
and can be gathered from every rank with one collective.  Layout, each part as ``[length, values...]``:
python Mersenne state (version, 625 words, has_gauss, gauss bits), numpy MT19937 (624 keys, pos,
has_gauss, gauss bits), torch CPU state bytes, torch CUDA state bytes of the current device (length 0 on CPU).
"""
from __future__ import annotations

import random

import numpy as np
import torch

from amodal.errors import CheckpointError


def _float_bits(x: float) -> int:
    return int(np.array([x], dtype=np.float64).view(np.int64)[0])


def _bits_float(bits: int) -> float:
    return float(np.array([bits], dtype=np.int64).view(np.float64)[0])


def capture_rng(device: torch.device) -> torch.Tensor:
    """The current generator states as ``int64[L]`` (CPU)."""
    version, words, gauss = random.getstate()
    py = [version, *words, int(gauss is not None), _float_bits(gauss) if gauss is not None else 0]
    name, keys, pos, has_gauss, cached = np.random.get_state()
    if name != "MT19937":
        raise CheckpointError(f"numpy global generator {name!r} is not MT19937; cannot record it")
    npy = [*keys.astype(np.int64).tolist(), int(pos), int(has_gauss), _float_bits(float(cached))]
    cpu = torch.get_rng_state().to(torch.int64).tolist()
    cuda = torch.cuda.get_rng_state(device).to(torch.int64).tolist() if device.type == "cuda" else []
    flat: list[int] = []
    for part in (py, npy, cpu, cuda):
        flat += [len(part), *part]
    return torch.tensor(flat, dtype=torch.int64)


def restore_rng(state: torch.Tensor, device: torch.device) -> None:
    """Set every generator from a tensor made by ``capture_rng`` (on the same kind of device)."""
    values = state.to(torch.int64).tolist()
    parts: list[list[int]] = []
    at = 0
    try:
        for _ in range(4):
            n = values[at]
            parts.append(values[at + 1 : at + 1 + n])
            if len(parts[-1]) != n:
                raise IndexError(at)
            at += 1 + n
    except IndexError as exc:
        raise CheckpointError(f"RNG state of {len(values)} values is truncated") from exc
    py, npy, cpu, cuda = parts
    if len(py) != 628 or len(npy) != 627:
        raise CheckpointError(f"RNG state has python/numpy parts of {len(py)}/{len(npy)} values, expected 628/627")
    random.setstate((py[0], tuple(py[1:626]), _bits_float(py[627]) if py[626] else None))
    np.random.set_state(("MT19937", np.array(npy[:624], dtype=np.uint32), npy[624], npy[625], _bits_float(npy[626])))
    torch.set_rng_state(torch.tensor(cpu, dtype=torch.uint8))
    if device.type == "cuda":
        if not cuda:
            raise CheckpointError("the checkpoint holds no CUDA RNG state but training runs on CUDA")
        torch.cuda.set_rng_state(torch.tensor(cuda, dtype=torch.uint8), device)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)

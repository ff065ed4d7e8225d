"""The anchor of bench/generation.py: transformers' generate(), called right, is the same model as ours."""

import importlib.util
from pathlib import Path

import torch

from gvmgen.generate import GenerationSettings, MusicGenerator

BENCH = Path(__file__).resolve().parents[2] / "bench" / "generation.py"


def _bench():
    spec = importlib.util.spec_from_file_location("generation_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_anchor_called_right_samples_what_our_decoder_samples(tiny_model):
    bench = _bench()
    condition = torch.randn(1, 6, 64, generator=torch.Generator().manual_seed(3)) * 0.1
    ours = MusicGenerator(tiny_model, GenerationSettings(temperature=0)).sample([condition[0]], [40])[0]
    fixed = bench.anchor_codes(tiny_model, condition, 40, fixed=True, greedy=True)[0]
    default = bench.anchor_codes(tiny_model, condition, 40, fixed=False, greedy=True)[0]
    assert torch.equal(fixed, ours)
    # With transformers' defaults the condition's keys pile up in the self-attention cache: another model.
    assert not torch.equal(default, ours)

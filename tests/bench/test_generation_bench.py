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


def test_the_operator_count_counts_what_runs_kernels_and_no_views():
    bench = _bench()
    x, batched = torch.randn(4, 6), torch.randn(2, 3, 4)
    with bench.OperatorCount() as ops:
        x.view(6, 4).t()[1:].unsqueeze(0)
    assert ops.count == 0
    with bench.OperatorCount() as ops:
        torch.mm(x, x.t()).add_(1).softmax(-1)
        torch.matmul(batched, x[:, :5])            # one product, reshaped around it
    assert ops.count == 4


def test_the_attention_kernels_compared_compute_the_decoders_attention(tiny_model):
    """bench/generation.py --parts attention times other kernels for the decoder's self-attention: they
    must compute the same thing (here on CPU: the plain products), over a span with masked positions."""
    calls, read, layers, span = _bench().attention_calls(tiny_model, batch=2, position=150)
    ours = calls.pop("fused, span")()
    assert span == 256 and layers == len(tiny_model.lm.model.decoder.layers)
    assert read == 2 * 4 * span * tiny_model.config.lm["hidden_size"] * 4   # keys and values, 4 rows, float32
    torch.testing.assert_close(calls.pop("products")(), ours, rtol=1e-4, atol=1e-5)
    assert not calls                                                        # split, flash: CUDA only

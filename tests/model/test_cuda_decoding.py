"""The CUDA graph path of the static decoder against its eager path (skipped without a GPU)."""

import threading

import pytest
import torch

from gvmgen.generate import GenerationSettings, MusicGenerator
from gvmgen.model.checkpoints import load_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _batch():
    """Three windows (a bucket of four), one of them prompted, long enough to cross two span boundaries."""
    g = torch.Generator().manual_seed(4)
    conditions = [torch.randn(n, 64, generator=g) for n in (5, 3, 7)]
    prompts = [None, torch.randint(0, 2048, (4, 40), generator=g), None]
    return conditions, [300, 180, 260], prompts


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_graph_replays_sample_the_same_tokens_as_the_eager_step(dtype):
    model = load_model("tiny", device="cuda", dtype=dtype)
    conditions, lengths, prompts = _batch()
    eager = MusicGenerator(model, GenerationSettings(seed=7), cuda_graphs=False).sample(conditions, lengths, prompts)
    graphed = MusicGenerator(model, GenerationSettings(seed=7)).sample(conditions, lengths, prompts)
    for a, b in zip(eager, graphed):
        assert torch.equal(a, b)
    decoder = model.static_decoder()
    graphs, capture = len(decoder.graphs), decoder.capture_seconds
    # 303 steps of one bucket: runs of 16, then 15 single steps; with split attention over the whole cache
    # (room for a 30-s window), else per span of 128 positions
    whole = decoder.capacity[1]
    expected = [(whole, 1), (whole, 16)] if decoder.split_steps else [(128, 16), (256, 16), (384, 1), (384, 16)]
    assert sorted((span, steps) for _, span, _, steps in decoder.graphs) == expected
    assert capture > 0
    again = MusicGenerator(model, GenerationSettings(seed=7)).sample(conditions, lengths, prompts)
    for a, b in zip(graphed, again):                                   # replayed, not captured again
        assert torch.equal(a, b)
    assert (len(decoder.graphs), decoder.capture_seconds) == (graphs, capture)


def test_one_step_never_waits_for_the_host():
    model = load_model("tiny", device="cuda")
    gen = MusicGenerator(model, GenerationSettings(seed=0))
    decoder = model.static_decoder()
    decoder.reset(torch.randn(2, 5, 64, device="cuda"), torch.ones(2, 5, dtype=torch.bool, device="cuda"), steps=16)
    decoder.forced[:1] = -1
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        decoder.step(1, gen.sampling, graphs=False)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()


def test_a_model_loaded_for_scoring_composes_in_bf16_on_the_gpu():
    """What the flow and `gvmgen generate` load: the LM in bf16, the codec in float32, and a track of
    the video's exact length with finite samples (the bf16 tokens meet the float32 layers around them)."""
    from gvmgen.generate import VisualTokens
    from gvmgen.model.checkpoints import load_for_scoring

    model = load_for_scoring("tiny", device="cuda")
    assert next(model.lm.parameters()).dtype == torch.bfloat16
    assert next(model.codec.parameters()).dtype == torch.float32
    video = VisualTokens(torch.randn(4, model.config.lm["hidden_size"]) * 0.1, torch.arange(4.0), 3.5, [2.0])
    (track,) = MusicGenerator(model, GenerationSettings(seed=0)).generate([video])
    assert len(track) == round(3.5 * model.config.sample_rate) and bool((abs(track) < float("inf")).all())


def test_graphs_captured_ahead_serve_every_batch_without_a_capture_later():
    """What the flow does while its first videos are prepared: every bucket of `videos` at a time,
    every span of a window; the composes after it capture nothing and sample the eager step's tokens."""
    model = load_model("tiny", device="cuda")
    settings = GenerationSettings(seed=3, window_s=4.0, overlap_s=1.0)
    generator = MusicGenerator(model, settings)
    decoder = model.static_decoder()
    generator.capture_graphs(videos=3, stop=lambda: True)              # stopped before its first graph
    assert not decoder.graphs
    generator.capture_graphs(videos=3)
    spans = (256,) if decoder.split_steps else (128, 256)                 # a cache of 256 for 203 steps
    assert {(rows, span, steps) for rows, span, _, steps in decoder.graphs} == {
        (rows, span, steps) for rows in (8, 4, 2) for span in spans for steps in (16, 1)}
    graphs, capture = len(decoder.graphs), decoder.capture_seconds
    conditions, lengths, prompts = _batch()
    lengths = [min(n, 200) for n in lengths]                            # within a 4-s window (203 steps)
    graphed = MusicGenerator(model, settings).sample(conditions, lengths, prompts)
    eager = MusicGenerator(model, settings, cuda_graphs=False).sample(conditions, lengths, prompts)
    for a, b in zip(eager, graphed):
        assert torch.equal(a, b)
    assert (len(decoder.graphs), decoder.capture_seconds) == (graphs, capture)


def test_graphs_are_captured_while_another_thread_encodes_frames_on_the_gpu():
    """As in the flow: the capture thread runs while prepare threads run CLIP on the same GPU."""
    model = load_model("tiny", device="cuda")
    settings = GenerationSettings(seed=3, window_s=4.0, overlap_s=1.0)
    frames = torch.randint(0, 256, (64, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    started, stop, encoded, errors = threading.Event(), threading.Event(), [], []

    def encode():
        try:
            while not stop.is_set():
                started.set()
                encoded.append(model.encode_video_frames(frames, batch_size=8))
        except Exception as e:  # reported below, in the test's thread
            errors.append(e)
        finally:
            started.set()

    worker = threading.Thread(target=encode)
    worker.start()
    try:
        started.wait()
        MusicGenerator(model, settings).capture_graphs(videos=3)
    finally:
        stop.set()
        worker.join()
    assert not errors and encoded and model.static_decoder().graphs
    alone = model.encode_video_frames(frames, batch_size=8)
    for frames_encoded in encoded:                       # the encodings beside the captures, as alone
        torch.testing.assert_close(frames_encoded, alone)
    conditions, lengths, prompts = _batch()
    lengths = [min(n, 200) for n in lengths]
    graphed = MusicGenerator(model, settings).sample(conditions, lengths, prompts)
    eager = MusicGenerator(model, settings, cuda_graphs=False).sample(conditions, lengths, prompts)
    for a, b in zip(eager, graphed):
        assert torch.equal(a, b)


def test_each_attention_of_a_step_is_one_fused_kernel():
    """The cross-attention of every layer runs the memory-efficient kernel, not the math fallback's
    handful of kernels (which a replayed step would pay for, a few microseconds each), and so does the
    self-attention, unless it runs `split_attention`: then its two kernels."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    model = load_model("tiny", device="cuda", dtype=torch.bfloat16)
    sampling = MusicGenerator(model, GenerationSettings(seed=0)).sampling
    decoder = model.static_decoder()
    decoder.reset(torch.randn(2, 5, 64), torch.ones(2, 5, dtype=torch.bool), steps=300)
    decoder.forced[:1] = -1
    decoder.seek(200)
    decoder.step(1, sampling, graphs=False)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        decoder.step(1, sampling, graphs=False)
        torch.cuda.synchronize()
    kernels = [e.name for e in prof.events() if e.device_type == DeviceType.CUDA]
    fused = [name for name in kernels if "fmha" in name.lower() or "attentionkernel" in name.lower()]
    layers = len(model.lm.model.decoder.layers)
    split = [name for name in kernels if "split_attention" in name]
    assert (len(fused), len(split)) == ((layers, 2 * layers) if decoder.split_steps else (2 * layers, 0)), kernels


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_split_attention_is_attention_over_the_positions_written(dtype):
    """q taken from a fused q/k/v product (strided), a cache with room beyond `length` holding garbage,
    lengths within a chunk, at a chunk's edge and past it: PyTorch's attention over the first `length`."""
    from gvmgen.model.split_attention import CHUNK, split_attention

    g = torch.Generator(device="cuda").manual_seed(0)
    rows, heads, room, hd = 6, 4, 3 * CHUNK, 64
    qkv = torch.randn(rows, 3 * heads * hd, device="cuda", generator=g).to(dtype)
    q = qkv[:, :heads * hd].view(rows, heads, hd)
    k, v = (torch.randn(rows, heads, room, hd, device="cuda", generator=g).to(dtype) * 3 for _ in range(2))
    for length in (1, 7, CHUNK, CHUNK + 1, 2 * CHUNK + 100, room):
        out = split_attention(q, k, v, torch.tensor([length], device="cuda"), 0.125)
        expected = torch.nn.functional.scaled_dot_product_attention(
            q[:, :, None].float(), k[:, :, :length].float(), v[:, :, :length].float(), scale=0.125)[:, :, 0]
        tolerance = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
        torch.testing.assert_close(out.float(), expected, **tolerance)


def test_steps_with_split_attention_give_the_span_masked_steps_logits():
    """The decoder's two self-attentions on CUDA, step by step over a window crossing spans."""
    model = load_model("tiny", device="cuda")
    decoder = model.static_decoder()
    if not decoder.split_steps:
        pytest.skip("Triton is not installed")
    condition = torch.randn(2, 5, 64, device="cuda")
    tokens = torch.randint(0, 2048, (2, model.config.num_codebooks, 300), device="cuda")
    logits = {}
    for split in (True, False):
        decoder.split_steps = split
        decoder.reset(condition, torch.ones(2, 5, dtype=torch.bool, device="cuda"), steps=300)
        logits[split] = torch.stack([decoder.feed(tokens[..., i:i + 1]) for i in range(300)])
    decoder.split_steps = True
    torch.testing.assert_close(logits[True], logits[False], rtol=1e-4, atol=1e-4)

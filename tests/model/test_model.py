"""Shapes of every stage, cached decoding, guidance and the parameter count (the delay pattern: test_delay.py)."""

import os
from dataclasses import replace

import pytest
import torch

from gvmgen.model import GVMGen, preset
from gvmgen.model.decoding import REPLAY_STEPS, SPAN_STEP, StaticDecoder, batch_bucket, replays
from gvmgen.model.delay import delay


def test_every_stage_has_the_documented_shape(tiny_model):
    cfg = tiny_model.config
    frames = torch.randint(0, 256, (7, cfg.image_size, cfg.image_size, 3), dtype=torch.uint8)
    pixels = frames.permute(0, 3, 1, 2).float()
    patches = tiny_model.vision(pixel_values=pixels).last_hidden_state
    grid = cfg.image_size // cfg.clip["patch_size"]
    assert patches.shape == (7, grid * grid + 1, cfg.clip["hidden_size"])          # (N, P, C)
    assert tiny_model.feature_transformation(patches).shape == (7, cfg.clip["hidden_size"])  # (N, C)
    tokens = tiny_model.encode_video_frames(frames, batch_size=3)
    assert tokens.shape == (7, cfg.lm["hidden_size"])                                # (N, D)
    codes = torch.randint(0, 2048, (2, 4, 25))
    logits = tiny_model.lm_logits(codes, tokens[None].expand(2, -1, -1), torch.ones(2, 7, dtype=torch.bool))
    assert logits.shape == (2, 4, 25 + 3, 2048)                                      # (B, K, T + K - 1, V)
    audio = tiny_model.decode_audio(codes)
    assert audio.shape == (2, 25 * 640)                                              # 50 Hz at 32 kHz
    assert tiny_model.encode_audio(audio).shape == (2, 4, 25)


def test_frame_tokens_do_not_depend_on_batching(tiny_model):
    frames = torch.randint(0, 256, (9, 32, 32, 3), dtype=torch.uint8)
    torch.testing.assert_close(tiny_model.encode_video_frames(frames, batch_size=2),
                               tiny_model.encode_video_frames(frames, batch_size=9), atol=1e-5, rtol=1e-5)


def test_static_decoding_matches_the_transformers_forward(tiny_model):
    frames = SPAN_STEP + 20                                                          # crosses a span boundary
    codes = torch.randint(0, 2048, (2, 4, frames))
    cond = torch.randn(2, 6, 64)
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2], dtype=torch.bool)
    with torch.no_grad():
        reference = tiny_model.lm_logits(codes, cond, mask)                         # (B, K, S, V)
    inputs = torch.cat([torch.full((2, 4, 1), 2048), delay(codes, 2048)[:, :, :-1]], dim=2)
    decoder = StaticDecoder(tiny_model.lm, tiny_model.pad_token)
    decoder.reset(cond, mask, steps=inputs.shape[2])
    steps = [decoder.feed(inputs[:, :, :10])]                                         # prefill, then one by one
    steps += [decoder.feed(inputs[:, :, j:j + 1]) for j in range(10, inputs.shape[2])]
    torch.testing.assert_close(torch.stack(steps, dim=2), reference[:, :, 9:], atol=1e-4, rtol=1e-4)


def test_a_decoder_reused_for_a_smaller_batch_forgets_the_larger_one(tiny_model):
    """Buffers are sized for the largest batch and reused: stale rows and condition slots must not leak."""
    codes = torch.randint(0, 2048, (1, 4, 8))
    inputs = torch.cat([torch.full((1, 4, 1), 2048), delay(codes, 2048)[:, :, :-1]], dim=2)
    cond = torch.randn(1, 3, 64)
    with torch.no_grad():
        reference = tiny_model.lm_logits(codes, cond, torch.ones(1, 3, dtype=torch.bool))
    decoder = StaticDecoder(tiny_model.lm, tiny_model.pad_token)
    decoder.reset(torch.randn(4, 40, 64), torch.ones(4, 40, dtype=torch.bool), steps=300)
    decoder.feed(torch.randint(0, 2048, (4, 4, 50)))
    decoder.reset(cond, torch.ones(1, 3, dtype=torch.bool), steps=inputs.shape[2])
    logits = decoder.feed(inputs)
    torch.testing.assert_close(logits, reference[:, :, -1], atol=1e-4, rtol=1e-4)


def test_a_decoder_follows_the_lm_when_its_weights_change():
    """The step multiplies by a stacked copy of q, k and v: fine-tuning the LM in place must not leave it stale."""
    model = GVMGen(preset("tiny")).eval()
    codes = torch.randint(0, 2048, (1, 4, 6))
    inputs = torch.cat([torch.full((1, 4, 1), 2048), delay(codes, 2048)[:, :, :-1]], dim=2)
    cond, mask = torch.randn(1, 3, 64), torch.ones(1, 3, dtype=torch.bool)
    decoder = model.static_decoder()
    decoder.reset(cond, mask, steps=inputs.shape[2])
    before = decoder.feed(inputs)
    with torch.no_grad():
        for layer in model.lm.model.decoder.layers:
            layer.self_attn.k_proj.weight.mul_(4.0)
            layer.self_attn.v_proj.weight.mul_(-1.0)
        reference = model.lm_logits(codes, cond, mask)[:, :, -1]
    assert not torch.allclose(before, reference, atol=1e-2)
    decoder.reset(cond, mask, steps=inputs.shape[2])
    torch.testing.assert_close(decoder.feed(inputs), reference, atol=1e-4, rtol=1e-4)


def test_batches_are_padded_to_buckets():
    assert [batch_bucket(n) for n in (1, 2, 3, 5, 8, 9, 33, 64, 65)] == [1, 2, 4, 8, 8, 16, 64, 64, 128]


@pytest.mark.parametrize("position, count", [(0, 1503), (600, 903), (5, 3), (127, 2), (120, 40), (0, 0)])
def test_replays_group_aligned_runs_of_steps_that_never_straddle_a_span(position, count):
    sizes = replays(position, count)
    assert sum(sizes) == count and set(sizes) <= {1, REPLAY_STEPS}
    at = position
    for size in sizes:
        if size > 1:
            assert at % REPLAY_STEPS == 0 and at // SPAN_STEP == (at + size - 1) // SPAN_STEP
        at += size
    assert sizes.count(1) <= 2 * (REPLAY_STEPS - 1)   # single steps only at the ragged ends


def test_a_window_takes_a_hundred_replays_not_fifteen_hundred():
    assert len(replays(0, 1503)) == 93 + 15          # a 30-s window: 1500 frames + 3 delay steps
    assert len(replays(600, 903)) == 8 + 55 + 15      # a window prompted with 12 s


def test_masked_condition_tokens_are_ignored(tiny_model):
    codes = torch.randint(0, 2048, (1, 4, 12))
    cond = torch.randn(1, 5, 64)
    mask = torch.tensor([[1, 1, 1, 0, 0]], dtype=torch.bool)
    other = cond.clone()
    other[:, 3:] = torch.randn(1, 2, 64)
    with torch.no_grad():
        torch.testing.assert_close(tiny_model.lm_logits(codes, cond, mask), tiny_model.lm_logits(codes, other, mask))


def test_zero_null_condition_means_no_cross_attention(tiny_model):
    """The official null condition (an all-masked zero video) adds nothing through cross-attention."""
    null = tiny_model.null_tokens(1)
    assert torch.count_nonzero(null) == 0
    x = torch.randn(1, 3, 64)
    for layer in tiny_model.lm.model.decoder.layers:
        out, _ = layer.encoder_attn(x, key_value_states=null)
        assert torch.count_nonzero(out) == 0


def test_learned_null_condition_is_a_trainable_token():
    cfg = preset("tiny")
    cfg.learned_null_condition = True
    model = GVMGen(cfg)
    assert model.null_condition.requires_grad
    assert model.null_tokens(3).shape == (3, 1, 64)


def test_time_embedding_starts_neutral_and_depends_on_time():
    cfg = preset("tiny")
    cfg.time_embedding = True
    model = GVMGen(cfg)
    tokens = torch.randn(4, 64)
    seconds = torch.tensor([0.5, 1.5, 2.5, 3.5])
    assert torch.equal(model.window_condition(tokens, seconds), tokens)  # zero-initialised
    torch.nn.init.normal_(model.time_embedding.proj.weight)
    shifted = model.window_condition(tokens, seconds)
    assert not torch.allclose(shifted[0] - tokens[0], shifted[1] - tokens[1])


def test_frozen_and_trainable_parts_follow_the_paper(tiny_model):
    trainable = {n.split(".")[0] for n, p in tiny_model.named_parameters() if p.requires_grad}
    assert {"feature_transformation", "output_proj", "visual_projection", "lm"} <= trainable
    assert "codec" not in trainable
    assert not any(p.requires_grad for p in tiny_model.vision.encoder.parameters())
    assert all(p.requires_grad for p in tiny_model.vision.post_layernorm.parameters())


def _official_small_parameter_count() -> dict[str, int]:
    """Counted from the official configuration (ViT-L/14@336px, qformer of video2music.yaml,
    transformer_lm small: dim 1024, 24 layers, n_q 4, card 2048, no biases)."""
    w, layers, grid, patch, out = 1024, 24, 24, 14, 768
    block = (3 * w * w + 3 * w) + (w * w + w) + 2 * w + (w * 4 * w + 4 * w) + (4 * w * w + w) + 2 * w
    clip = 3 * patch * patch * w + w + (grid * grid + 1) * w + 2 * w + layers * block + 2 * w + w * out
    attn = (3 * w * w + 3 * w) + (w * w + w) + (w * w + w) + 2 * w    # MHA + dense + LayerNorm
    ffn = (w * 2 * w + 2 * w) + (2 * w * w + w) + 2 * w
    qformer = 16 * w + 2 * w + 6 * (attn + ffn) + 3 * attn           # cross-attention in layers 0, 2, 4
    output_proj = out * 1024 + 1024
    d = 1024
    lm = 4 * 2049 * d + 24 * (4 * d * d + 4 * d * d + 2 * d * 4 * d + 3 * 2 * d) + 2 * d + 4 * d * 2048
    return {"clip": clip, "feature_transformation": qformer, "output_proj": output_proj, "lm": lm}


def _official_small() -> GVMGen:
    """The small preset in the official layout (the preset itself starts fresh layers as `residual`)."""
    with torch.device("meta"):
        return GVMGen(replace(preset("small"), feature_transformation="official"))


def test_small_parameter_count_matches_the_official_configuration():
    model = _official_small()
    count = lambda *mods: sum(p.numel() for m in mods for p in m.parameters())
    expected = _official_small_parameter_count()
    assert count(model.vision, model.visual_projection) == expected["clip"]
    assert count(model.feature_transformation) == expected["feature_transformation"]
    assert count(model.output_proj) == expected["output_proj"]
    assert count(model.lm) == expected["lm"]


def test_small_trainable_parameters_match_the_official_493m():
    """small.yaml of the official repository states '493M Param.' for what GVMGen trains."""
    model = _official_small()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert 493_000_000 <= trainable < 494_000_000


@pytest.mark.skipif(bool(os.environ.get("TRITON_INTERPRET")), reason="Triton's interpreter runs split attention on CPU")
def test_steps_stay_on_the_fused_attention_where_split_attention_cannot_run(tiny_model, caplog):
    """As on a GPU whose Triton cannot compile: here Triton is missing, or has no GPU to run on."""
    g = torch.Generator().manual_seed(1)
    condition, mask = torch.randn(2, 5, 64, generator=g), torch.ones(2, 5, dtype=torch.bool)
    tokens = torch.randint(0, 2048, (2, tiny_model.config.num_codebooks, 3), generator=g)
    fused, hopeful = (StaticDecoder(tiny_model.lm, tiny_model.pad_token) for _ in range(2))
    hopeful.split_steps = True
    logits = []
    for decoder in (fused, hopeful):
        decoder.reset(condition, mask, steps=8)
        logits.append(torch.stack([decoder.feed(tokens[..., i:i + 1]) for i in range(3)]))
    assert not hopeful.split_steps and "split attention failed on this device" in caplog.text
    torch.testing.assert_close(logits[1], logits[0])

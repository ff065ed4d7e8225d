"""The trainer: it can memorise a clip (the paper's first sanity check), resumes exactly after a kill,
trains LoRA adapters that fold back into a plain model, and notices when the frame tokens collapse."""

import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from gvmgen.generate import GenerationSettings, MusicGenerator
from gvmgen.model.checkpoints import fresh_model, load_model
from gvmgen.model.config import preset
from gvmgen.training.dataset import build_clips, save_shard
from gvmgen.training.synthetic import Tokenised, make_video
from gvmgen.training.trainer import Trainer, TrainSettings, collapse_warning, merge_adapters


@pytest.fixture(scope="module")
def ten_second_clip(fixtures):
    model = load_model("tiny")
    (clip,) = build_clips(model, fixtures / "video" / "fades.mp4", fixtures / "music" / "bach.mp3")
    return clip


@pytest.mark.slow
def test_one_clip_is_memorised_and_greedy_generation_reproduces_it(ten_second_clip, tmp_path):
    model = load_model("tiny")
    log = []
    settings = TrainSettings(steps=300, batch_size=1, lr=3e-3, warmup_steps=10, weight_decay=0.0, lm="full",
                             eval_every=300, checkpoint_every=300)
    Trainer(model, [ten_second_clip], [ten_second_clip], settings, tmp_path, on_metrics=log.append).run()
    train = [m["loss"] for m in log if m["split"] == "train"]
    assert train[-1] < 0.1 * train[0], (train[0], train[-1])
    with torch.no_grad():
        condition = model.window_condition(model.tokens_from_patches(ten_second_clip.patches.float()),
                                           ten_second_clip.times)
    generator = MusicGenerator(model, GenerationSettings(temperature=0, seed=0))
    codes = generator.sample([condition], [ten_second_clip.codes.shape[-1]])[0]
    assert (codes == ten_second_clip.codes.long()).float().mean() >= 0.9


TRAIN = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from gvmgen.model.checkpoints import load_model
    from gvmgen.training.trainer import ShardClip, Trainer, TrainSettings
    shards, out, kill_at = [Path(p) for p in sys.argv[1:3]], Path(sys.argv[3]), int(sys.argv[4])
    clips = [ShardClip(p, 0) for p in shards]
    def metrics(m):
        if m["step"] == kill_at and m["split"] == "train":
            os.kill(os.getpid(), signal.SIGKILL)   # as a lost machine would: no cleanup, no last save
    settings = TrainSettings(steps=8, batch_size=2, accumulation=2, lr=1e-3, warmup_steps=2, checkpoint_every=2,
                             eval_every=4)
    Trainer(load_model("tiny"), clips[:1] * 3 + clips[1:], clips[1:], settings, out, on_metrics=metrics).run()
""")


@pytest.mark.slow
def test_a_killed_training_resumes_to_the_same_weights(ten_second_clip, fixtures, tmp_path):
    model = load_model("tiny")
    (other,) = build_clips(model, fixtures / "video" / "testvideo.mp4", fixtures / "music" / "bach.mp3")
    shards = [str(save_shard(tmp_path / f"{i}.safetensors", [c])) for i, c in enumerate([ten_second_clip, other])]
    run = lambda out, kill_at: subprocess.run([sys.executable, "-c", TRAIN, *shards, str(out), str(kill_at)],  # noqa: E731
                                              capture_output=True, text=True)
    whole = run(tmp_path / "whole", 0)
    assert whole.returncode == 0, whole.stderr[-2000:]
    killed = run(tmp_path / "resumed", 5)
    assert killed.returncode == -signal.SIGKILL
    assert torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)["step"] == 4
    resumed = run(tmp_path / "resumed", 0)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = torch.load(tmp_path / "whole" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == 8 and a["trainable"].keys() == b["trainable"].keys()
    assert all(torch.equal(a["trainable"][k], b["trainable"][k]) for k in a["trainable"])
    assert not torch.equal(a["trainable"]["output_proj.weight"], model.output_proj.weight.detach())


def test_lora_adapters_train_and_fold_into_a_plain_lm(ten_second_clip, tmp_path):
    model = load_model("tiny")
    before = {k: v.clone() for k, v in model.lm.state_dict().items()}
    settings = TrainSettings(steps=3, batch_size=1, lr=1e-2, warmup_steps=1, lm="lora", lora_rank=4)
    trainer = Trainer(model, [ten_second_clip], [], settings, tmp_path)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("lora_" in n for n in names) and any("encoder_attn" in n for n in names)
    assert not any("self_attn.q_proj.base_layer" in n for n in names)        # the base LM stays frozen
    trainer.run()
    merge_adapters(model)
    after = model.lm.state_dict()
    assert after.keys() == before.keys()                                     # a plain MusicGen LM again
    assert not torch.equal(after["model.decoder.layers.0.self_attn.q_proj.weight"],
                           before["model.decoder.layers.0.self_attn.q_proj.weight"])
    assert torch.equal(after["lm_heads.0.weight"], before["lm_heads.0.weight"])


def test_collapse_warning_compares_the_last_spread_with_step_zero():
    history = [{"step": 0, "spread": 0.6}, {"step": 100, "spread": 0.2}, {"step": 50, "spread": 0.01}]
    assert collapse_warning(history) is None                         # recovered by its last evaluation
    warning = collapse_warning(history + [{"step": 150, "spread": 0.029}])
    assert "0.6 at step 0" in warning and "0.029 at step 150" in warning
    assert collapse_warning([{"step": 50, "spread": 0.6}, {"step": 100, "spread": 0.001}]) is None  # no step 0


@pytest.fixture(scope="module")
def synthetic_catalog():
    """Clips where the hue sets the pitch and the stripes the note rate: 8 training videos, 2 held out."""
    model = load_model("tiny")
    rng = np.random.default_rng(1234)
    with torch.no_grad():
        videos = [Tokenised(model, make_video(rng, rng.uniform(20, 60), model.config.image_size,
                                              model.config.sample_rate)) for _ in range(10)]
    clips = [v.clips(model.config.frame_rate) for v in videos]
    return [c for v in clips[:8] for c in v], [c for v in clips[8:] for c in v]


def _validation_after_training(layout: str, catalog, tmp_path) -> list[dict]:
    config = preset("tiny")
    config.feature_transformation = layout
    log = []
    settings = TrainSettings(steps=30, batch_size=8, lr=3e-3, warmup_steps=10, weight_decay=0.0, lm="full",
                             eval_every=30, checkpoint_every=30)
    Trainer(fresh_model(config), *catalog, settings, tmp_path / layout, on_metrics=log.append).run()
    return [m for m in log if m["split"] == "validation"]


@pytest.mark.slow
def test_the_spread_monitor_fires_on_the_official_layout_and_not_on_the_residual_one(synthetic_catalog, tmp_path):
    official = _validation_after_training("official", synthetic_catalog, tmp_path)
    assert [m["step"] for m in official] == [0, 30]
    assert all(m["conditioning_gain"] is not None for m in official)
    assert "collapsed" in collapse_warning(official)
    residual = _validation_after_training("residual", synthetic_catalog, tmp_path)
    assert collapse_warning(residual) is None, residual


def _random_clips(model, lengths, frames=3, seed=5):
    """Clips of random patch tokens and codes, `lengths` codec frames long."""
    from gvmgen.training.dataset import Clip

    g = torch.Generator().manual_seed(seed)
    c = model.config
    patches = (c.image_size // c.clip["patch_size"]) ** 2 + 1
    return [Clip(0.0, t / c.frame_rate, torch.arange(frames, dtype=torch.float32),
                 torch.randn(frames, patches, c.clip["hidden_size"], generator=g).half(),
                 torch.randint(0, c.lm["vocab_size"], (c.num_codebooks, t), generator=g).to(torch.int16))
            for t in lengths]


def _dropout_free_tiny():
    config = preset("tiny")
    config.lm["dropout"] = 0.0
    config.ft_dropout = 0.0
    return config


def test_gradient_accumulation_equals_one_large_step(tmp_path):
    """Two micro-batches of one clip, accumulated, give the gradient, the loss and the update of one batch
    of two (equal-length clips, no dropout, no clipping: the two must agree to rounding)."""
    clips = _random_clips(load_model("tiny"), [40, 40])
    results = []
    for name, batch, accumulation in (("large", 2, 1), ("accumulated", 1, 2)):
        torch.manual_seed(0)
        model = fresh_model(_dropout_free_tiny())
        log = []
        settings = TrainSettings(steps=1, batch_size=batch, accumulation=accumulation, lr=1e-3, warmup_steps=1,
                                 condition_dropout=0.0, grad_clip=1e9, lm="full", checkpoint_every=100)
        Trainer(model, clips, [], settings, tmp_path / name, on_metrics=log.append).run()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        weights = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        results.append((log[-1]["loss"], grads, weights))
    (loss_a, grads_a, weights_a), (loss_b, grads_b, weights_b) = results
    assert loss_b == pytest.approx(loss_a, rel=1e-5)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 10
    for n in grads_a:     # the gradient itself: Adam's first step would hide a factor of two in it
        torch.testing.assert_close(grads_b[n], grads_a[n], atol=1e-6, rtol=1e-4, msg=n)
    for n in weights_a:
        torch.testing.assert_close(weights_b[n], weights_a[n], atol=1e-4, rtol=0)   # Adam steps of 1e-3: the sign of g, for g near 0 too


def test_the_loss_is_the_cross_entropy_of_the_real_frames_only(tmp_path):
    """The trainer's loss on a batch of a short and a long clip equals the cross-entropy summed, by hand, over
    each codebook's real frames (codebook k's frame t sits at delayed step t + k), and nothing else: not the
    delay padding, not the batch padding after the short clip."""
    model = fresh_model(_dropout_free_tiny()).eval()
    clips = _random_clips(model, [9, 25])
    trainer = Trainer(model, clips, [], TrainSettings(condition_dropout=0.0), tmp_path)
    model.eval()
    with torch.no_grad():
        loss, _ = trainer._loss(clips)
        total, count = 0.0, 0
        for c in clips:
            tokens = model.tokens_from_patches(c.patches.float())
            condition = model.window_condition(tokens, c.times)[None]
            codes = c.codes.long()[None]
            logits = model.lm_logits(codes, condition, torch.ones(1, len(c.times), dtype=torch.bool))[0]   # (K, S, V)
            k_books, frames = codes.shape[1:]
            assert logits.shape[1] == frames + k_books - 1
            for k in range(k_books):
                for t in range(frames):
                    total += torch.nn.functional.cross_entropy(logits[k, t + k], codes[0, k, t]).item()
                    count += 1
    assert count == 4 * (9 + 25)
    assert loss.item() == pytest.approx(total / count, rel=1e-4)


@pytest.mark.parametrize("bad, cause", [({"steps": 0}, "steps must be at least 1, got 0"),
                                        ({"batch_size": 0}, "batch_size must be at least 1, got 0"),
                                        ({"lr": -1.0}, "lr must be above 0 and finite, got -1.0"),
                                        ({"lr": float("inf")}, "lr must be above 0 and finite, got inf"),
                                        ({"lm": "half"}, "lm must be one of")])
def test_settings_that_cannot_train_are_refused_before_any_work(bad, cause):
    with pytest.raises(ValueError, match=cause):
        TrainSettings(**bad)
    # how often it checkpoints and evaluates does not change the weights: the same training
    assert TrainSettings(checkpoint_every=3).weights_key() == TrainSettings(eval_every=7).weights_key() != \
        TrainSettings(steps=9).weights_key()


def test_a_diverging_training_stops_with_the_step_and_the_learning_rate(tmp_path):
    """A learning rate far too high: the loss turns NaN or infinite after a few steps; the trainer says so,
    where it once handed the NaN on to SQL, which refused it as a database error."""
    clips = _random_clips(load_model("tiny"), [40, 40])
    settings = TrainSettings(steps=20, batch_size=2, lr=1e30, warmup_steps=1, lm="full", grad_clip=1e9)
    with pytest.raises(ValueError, match=r"the training diverged: the loss is (nan|inf) at step \d+ \(learning rate 1e\+30\)"):
        Trainer(fresh_model(_dropout_free_tiny()), clips, [], settings, tmp_path / "diverged").run()

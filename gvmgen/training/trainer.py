"""The training loop: cross-entropy over the delayed EnCodec codes of cached clips.

What trains: the music queries and feature transformation, CLIP's post-LN and projection, the output
projection, the LM's cross-attention (and the time embedding / learned null token when enabled);
optionally the whole LM, or LoRA adapters on its self-attention. CLIP and EnCodec never train.

Hard choice: resuming is *exact*. The data order and the condition dropout of step s are drawn from
generators seeded by (seed, s), never from a stream that runs on across steps, and a checkpoint holds
the optimizer, the schedule and torch's own RNG (dropout); a run killed and resumed therefore ends
with the same weights, bit for bit on one device, as one that never stopped.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Protocol

import torch
import torch.nn.functional as F

from ..model.delay import delay, delayed_valid_mask
from ..model.gvmgen import GVMGen
from .dataset import Clip
from ..files import atomic_path

LM_MODES = ("cross", "full", "lora")
# The frame tokens have collapsed when their spread falls below this share of its value at step 0: the
# visual side then gives (nearly) the same token for every picture, and the music cannot follow it.
COLLAPSE_RATIO = 0.05


@dataclass
class TrainSettings:
    steps: int = 1000
    batch_size: int = 4                # clips per micro-batch
    accumulation: int = 1              # micro-batches per optimizer step
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.1
    warmup_steps: int = 100            # linear warm-up, then cosine decay to min_lr_ratio * lr
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    condition_dropout: float | None = None  # None: the model config's (0.3), for classifier-free guidance
    lm: str = "cross"                  # "cross": only its cross-attention; "full": all of it; "lora": + adapters
    lora_rank: int = 16
    checkpoint_every: int = 100
    eval_every: int = 100
    seed: int = 0

    def __post_init__(self):
        if self.lm not in LM_MODES:
            raise ValueError(f"lm must be one of {LM_MODES}, got {self.lm!r}")
        for name in ("steps", "batch_size", "accumulation", "lora_rank", "checkpoint_every", "eval_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0 < self.lr < math.inf:
            raise ValueError(f"lr must be above 0 and finite, got {self.lr}")
        self.betas = tuple(self.betas)

    def weights_key(self) -> dict:
        """The settings the trained weights depend on (how often it checkpoints and evaluates aside)."""
        return {k: v for k, v in asdict(self).items() if k not in ("checkpoint_every", "eval_every")}


class ClipSource(Protocol):
    def load(self) -> Clip: ...


@dataclass(frozen=True)
class ShardClip:
    """One clip of a shard file, read on demand (memory-mapped): a catalog never has to fit in RAM."""
    path: Path
    index: int

    def load(self) -> Clip:
        from safetensors import safe_open

        with safe_open(str(self.path), "pt") as f:
            get = lambda name: f.get_tensor(f"{self.index}.{name}")  # noqa: E731
            return Clip(0.0, 0.0, get("times"), get("patches"), get("codes"))


def trainable_parameters(model: GVMGen, mode: str, lora_rank: int = 16) -> list[torch.nn.Parameter]:
    """Set requires_grad for `mode` and return the trainable parameters (wrapping the LM for LoRA)."""
    model.requires_grad_(False)
    if mode == "lora":
        from peft import LoraConfig, get_peft_model

        model.lm = get_peft_model(model.lm, LoraConfig(
            r=lora_rank, lora_alpha=2 * lora_rank, lora_dropout=0.0,
            target_modules=r".*self_attn\.(q_proj|k_proj|v_proj|out_proj)"))
    for part in (model.feature_transformation, model.vision.post_layernorm, model.visual_projection,
                 model.output_proj, model.time_embedding):
        if part is not None:
            part.requires_grad_(True)
    if model.null_condition is not None:
        model.null_condition.requires_grad_(True)
    for name, param in model.lm.named_parameters():
        if mode == "full" or "encoder_attn" in name or "lora_" in name:
            param.requires_grad_(True)
    return [p for p in model.parameters() if p.requires_grad]


def merge_adapters(model: GVMGen) -> GVMGen:
    """Fold LoRA adapters into the LM, so the result loads and generates like any GVMGen."""
    if hasattr(model.lm, "merge_and_unload"):
        model.lm = model.lm.merge_and_unload()
    return model


def frame_token_spread(tokens: torch.Tensor) -> float:
    """(F, D) frame tokens -> how much they vary across frames, relative to their size: the RMS of their
    deviations from the mean token over their RMS. About 1 for unrelated tokens; 0 when every frame gives
    the same token, i.e. when the visual side no longer depends on the picture. Relative, because the LM's
    cross-attention sees the variation against the common part, whatever the scale."""
    tokens = tokens.float()
    deviation = tokens - tokens.mean(dim=0, keepdim=True)
    return (deviation.pow(2).mean().sqrt() / tokens.pow(2).mean().sqrt().clamp_min(1e-12)).item()


def collapse_warning(validation: list[dict]) -> str | None:
    """A warning when the last evaluation's frame-token spread is below COLLAPSE_RATIO of step 0's.

    `validation`: the validation metrics ({"step", "spread", ...}) of a run, in any order."""
    measured = sorted((m for m in validation if m.get("spread") is not None), key=lambda m: m["step"])
    if len(measured) < 2 or measured[0]["step"] != 0:
        return None
    first, last = measured[0], measured[-1]
    if last["spread"] >= COLLAPSE_RATIO * first["spread"]:
        return None
    return (f"the frame tokens collapsed: their spread across frames fell from {first['spread']:.4g} at step 0 "
            f"to {last['spread']:.4g} at step {last['step']} (below {COLLAPSE_RATIO:.0%}), so the music no longer "
            f"depends on the picture; fine-tune with another --variant (e.g. residual)")


def _generator(*seeds: int) -> torch.Generator:
    return torch.Generator().manual_seed(hash(seeds) & 0x7FFF_FFFF_FFFF_FFFF)


class Trainer:
    def __init__(self, model: GVMGen, train: list[ClipSource], validation: list[ClipSource],
                 settings: TrainSettings, checkpoint_dir: Path,
                 on_metrics: Callable[[dict], None] | None = None):
        if not train:
            raise ValueError("no training clips")
        self.model, self.train, self.validation, self.s = model, train, validation, settings
        self.checkpoint = Path(checkpoint_dir) / "last.pt"
        self.on_metrics = on_metrics or (lambda m: None)
        self.device = next(model.lm.parameters()).device
        self.params = trainable_parameters(model, settings.lm, settings.lora_rank)
        decay = [p for p in self.params if p.ndim >= 2]     # no weight decay on norms and biases
        rest = [p for p in self.params if p.ndim < 2]
        self.optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": settings.weight_decay},
                                            {"params": rest, "weight_decay": 0.0}],
                                           lr=settings.lr, betas=settings.betas)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.dropout = model.config.condition_dropout if settings.condition_dropout is None else settings.condition_dropout
        self.step = 0

    def _lr_factor(self, step: int) -> float:
        warmup = min(self.s.warmup_steps, max(1, self.s.steps // 5))
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, self.s.steps - warmup))
        return self.s.min_lr_ratio + (1 - self.s.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    # ---- batches -------------------------------------------------------------------------------
    def _indices(self, step: int, micro: int) -> list[int]:
        """The clips of one micro-batch: epoch-wise shuffles, each drawn from (seed, epoch) alone."""
        n, b = len(self.train), self.s.batch_size
        first = (step * self.s.accumulation + micro) * b
        out = []
        for g in range(first, first + b):
            epoch = g // n
            out.append(int(torch.randperm(n, generator=_generator(self.s.seed, epoch))[g % n]))
        return out

    def _batch(self, clips: list[Clip], drop: torch.Tensor | None = None):
        """Clips -> codes (B, K, T), valid (B, K, S), condition (B, F, D), mask (B, F)."""
        m, dev = self.model, self.device
        k = m.config.num_codebooks
        lengths = [c.codes.shape[-1] for c in clips]
        codes = torch.zeros(len(clips), k, max(lengths), dtype=torch.long, device=dev)
        valid = torch.zeros(len(clips), k, max(lengths) + k - 1, dtype=torch.bool, device=dev)
        for i, (c, t) in enumerate(zip(clips, lengths)):
            codes[i, :, :t] = c.codes.to(dev, torch.long)
            valid[i, :, :t + k - 1] = delayed_valid_mask(k, t, dev)
        dtype = m.output_proj.weight.dtype
        tokens = m.tokens_from_patches(torch.cat([c.patches for c in clips]).to(dev, dtype))  # (sum F, D)
        frames = [len(c.times) for c in clips]
        condition = torch.zeros(len(clips), max(max(frames), 1), tokens.shape[-1], dtype=tokens.dtype, device=dev)
        mask = torch.zeros(condition.shape[:2], dtype=torch.bool, device=dev)
        for i, (c, chunk) in enumerate(zip(clips, tokens.split(frames))):
            if drop is not None and drop[i] or not len(c.times):  # the null condition, as guidance uses it
                condition[i, :1], mask[i, 0] = m.null_tokens(1, tokens.dtype)[0], True
            else:
                condition[i, :len(c.times)] = m.window_condition(chunk, c.times.to(dev))
                mask[i, :len(c.times)] = True
        return codes, valid, condition, mask

    def _loss(self, clips: list[Clip], drop: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean cross-entropy over the real (not delay-padding) steps of all codebooks, and accuracy."""
        codes, valid, condition, mask = self._batch(clips, drop)
        autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda")
        with autocast:
            logits = self.model.lm_logits(codes, condition, mask)               # (B, K, S, V)
        targets = delay(codes, self.model.pad_token)                             # (B, K, S)
        picked = logits[valid].float()
        loss = F.cross_entropy(picked, targets[valid])
        accuracy = (picked.argmax(-1) == targets[valid]).float().mean()
        return loss, accuracy

    # ---- the loop ------------------------------------------------------------------------------
    def run(self) -> GVMGen:
        """Train to `settings.steps`, resuming from the last checkpoint if there is one.

        A fresh run seeds torch's global RNG (which dropout draws from) with `settings.seed`."""
        if not self.resume():
            torch.manual_seed(self.s.seed)
            if self.validation:  # the reference the collapse monitor compares later evaluations with
                self.on_metrics({"step": 0, "split": "validation", **self.evaluate(self.validation)})
        self.model.train()
        self.model.vision.eval()
        self.model.codec.eval()
        while self.step < self.s.steps:
            self.optimizer.zero_grad(set_to_none=True)
            total, correct = 0.0, 0.0
            for micro in range(self.s.accumulation):
                clips = [self.train[i].load() for i in self._indices(self.step, micro)]
                drop = torch.rand(len(clips), generator=_generator(self.s.seed, self.step, micro, 1)) < self.dropout
                loss, accuracy = self._loss(clips, drop)
                if not torch.isfinite(loss):
                    raise ValueError(f"the training diverged: the loss is {loss.item()} at step {self.step + 1} "
                                     f"(learning rate {self.scheduler.get_last_lr()[0]:.3g}); lower lr")
                (loss / self.s.accumulation).backward()
                total += loss.item() / self.s.accumulation
                correct += accuracy.item() / self.s.accumulation
            torch.nn.utils.clip_grad_norm_(self.params, self.s.grad_clip)
            lr = self.scheduler.get_last_lr()[0]
            self.optimizer.step()
            self.scheduler.step()
            self.step += 1
            self.on_metrics({"step": self.step, "split": "train", "loss": total, "accuracy": correct, "lr": lr})
            if self.validation and (self.step % self.s.eval_every == 0 or self.step == self.s.steps):
                self.on_metrics({"step": self.step, "split": "validation", **self.evaluate(self.validation)})
            if self.step % self.s.checkpoint_every == 0 or self.step == self.s.steps:
                self.save()
        self.model.eval()
        return self.model

    @torch.no_grad()
    def evaluate(self, sources: list[ClipSource]) -> dict:
        """Loss and token accuracy with the real condition, weighted by clip; the frame tokens' spread
        across all frames (see frame_token_spread); and the conditioning gain: the loss with each clip's
        picture taken from another clip, minus the loss with its own (teacher-forced, so free of sampling
        noise; above 0 when the model uses what it sees; None with fewer than two clips)."""
        was_training = self.model.training
        self.model.eval()
        n, shift = len(sources), max(1, len(sources) // 2)
        losses, accuracies, swapped_losses, tokens = [], [], [], []
        for i in range(0, n, self.s.batch_size):
            clips = [c.load() for c in sources[i:i + self.s.batch_size]]
            loss, accuracy = self._loss(clips)
            losses += [loss.item()] * len(clips)
            accuracies += [accuracy.item()] * len(clips)
            patches = torch.cat([c.patches for c in clips]).to(self.device, self.model.output_proj.weight.dtype)
            tokens.append(self.model.tokens_from_patches(patches).float().cpu())   # (F, D)
            if n > 1:
                others = [sources[(j + shift) % n].load() for j in range(i, i + len(clips))]
                swapped = [Clip(c.start, c.end, o.times, o.patches, c.codes) for c, o in zip(clips, others)]
                swapped_losses += [self._loss(swapped)[0].item()] * len(clips)
        self.model.train(was_training)
        loss = sum(losses) / n
        return {"loss": loss, "accuracy": sum(accuracies) / n, "spread": frame_token_spread(torch.cat(tokens)),
                "conditioning_gain": sum(swapped_losses) / n - loss if swapped_losses else None}

    # ---- checkpoints ---------------------------------------------------------------------------
    def _trainable_state(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().cpu() for n, p in self.model.named_parameters() if p.requires_grad}

    def save(self) -> Path:
        """Everything a resume needs, written atomically (a kill mid-write leaves the previous one)."""
        state = {"step": self.step, "settings": asdict(self.s), "trainable": self._trainable_state(),
                 "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                 "rng": torch.get_rng_state()}
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        with atomic_path(self.checkpoint) as partial:
            torch.save(state, partial)
        return self.checkpoint

    def resume(self) -> bool:
        if not self.checkpoint.is_file():
            return False
        state = torch.load(self.checkpoint, map_location="cpu", weights_only=True)
        missing = set(self._trainable_state()) ^ set(state["trainable"])
        if missing:
            raise ValueError(f"{self.checkpoint}: trains other parameters than these settings ({sorted(missing)[:3]}...); "
                             "give the new settings a new --name, or rerun with this model's earlier ones (--lm, --variant)")
        named = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, value in state["trainable"].items():
                named[name].copy_(value)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        if "cuda_rng" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        self.step = state["step"]
        return True

"""Loading and saving GVMGen weights, in every format a user may hold.

- `tiny`: random weights from a fixed seed (untrained: it makes noise, for pipeline checks).
- `small` / `medium`: pretrained CLIP ViT-L/14-336, MusicGen and EnCodec in Hugging Face format, from
  a local directory, GVMGEN_HOME's download folder or the user's Hugging Face cache. The layers GVMGen
  adds (music queries, feature transformation, output projection) start fresh, in the FRESH_LAYOUT
  variant, until fine-tuned.
- a directory holding `state_dict.bin` (+ `compression_state_dict.bin`): an audiocraft export, such
  as the official GVMGen checkpoint or a plain MusicGen one, converted here without audiocraft.
- a directory holding `gvmgen_config.json` + `model.safetensors`: our own format.

Nothing here unpickles arbitrary objects: `.bin` files go through `torch.load(weights_only=True)`,
which accepts tensors and plain containers only (audiocraft exports carry their config as a YAML
string, so nothing else is needed), and everything we write is safetensors.
"""

from __future__ import annotations

import copy
import json
import pickle
import re
import warnings
from pathlib import Path

import numpy as np
import torch
import yaml
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..home import weights_dir
from .config import CLIP_REPO, ENCODEC_REPO, FRESH_LAYOUT, MUSICGEN_REPOS, GVMGenConfig, preset
from .gvmgen import GVMGen
from ..files import atomic_path

OUR_CONFIG = "gvmgen_config.json"
OUR_WEIGHTS = "model.safetensors"
INIT_SEED = 0  # fresh layers start identically on every machine
HF_FILES = ["config.json", "*.safetensors", "*.safetensors.index.json"]


class WeightsNotFound(FileNotFoundError):
    pass


class UnsafeCheckpoint(ValueError):
    pass


class BrokenCheckpoint(ValueError):
    """A checkpoint file that cannot be read as what it should be: malformed JSON, a configuration of
    unknown fields, a cut-off safetensors file."""


class UnhonouredConfig(UserWarning):
    """A checkpoint's configuration sets something this implementation does not do; it loads without it."""


# ---- entry points ---------------------------------------------------------------------------------
def load_model(spec: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> GVMGen:
    """`tiny`, `small`, `medium`, or a directory in one of the formats above."""
    spec = str(spec)
    if spec == "tiny":
        model = fresh_model(preset("tiny"))
    elif spec in MUSICGEN_REPOS:
        model = load_pretrained(spec)
    else:
        path = Path(spec).expanduser()
        if (path / OUR_CONFIG).is_file():
            model = load_ours(path)
        elif (path / "state_dict.bin").is_file():
            model = load_audiocraft(path)
        elif path.exists():
            raise WeightsNotFound(f"{path}: not a GVMGen checkpoint (expected {OUR_CONFIG} + {OUR_WEIGHTS}, "
                                  "or an audiocraft export with state_dict.bin)")
        else:
            raise WeightsNotFound(f"model {spec!r}: neither a preset (tiny, small, medium) nor an existing directory")
    return model.to(device=device, dtype=dtype).eval()


def load_for_scoring(spec: str | Path, device: str | torch.device = "cpu") -> GVMGen:
    """`load_model` for composing: on CUDA the language model runs in bf16, as its decoding step is
    measured and its graphs captured (MusicGen's own inference runs the LM at half precision); CLIP runs
    under bf16 autocast either way, and the codec and the feature transformation stay float32."""
    model = load_model(spec, device)
    if torch.device(device).type == "cuda":
        model.lm.to(torch.bfloat16)
    return model


def with_feature_transformation(model: GVMGen, layout: str) -> GVMGen:
    """`model` with a fresh feature transformation of `layout` (one of FEATURE_TRANSFORMATIONS) and every
    other weight kept: fine-tuning a checkpoint in another variant. The same model when it has that layout."""
    if layout == model.config.feature_transformation:
        return model
    config = copy.deepcopy(model.config)
    config.feature_transformation = layout
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(INIT_SEED)
        switched = GVMGen(config)
    kept = {k: v for k, v in model.state_dict().items() if not k.startswith("feature_transformation.")}
    missing, unexpected = switched.load_state_dict(kept, strict=False)
    assert not unexpected and all(k.startswith("feature_transformation.") for k in missing), (missing, unexpected)
    parameter = next(model.parameters())
    return switched.to(device=parameter.device, dtype=parameter.dtype).train(model.training)


def fresh_model(config: GVMGenConfig) -> GVMGen:
    """A randomly initialised model, the same every time; its codec's codebooks are seeded on
    `calibration_audio`, so that different sounds get different codes."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(INIT_SEED)
        model = GVMGen(config)
        model.init_codebooks(calibration_audio(config.sample_rate))
        return model


def calibration_audio(sample_rate: int, seconds: float = 20.0, seed: int = INIT_SEED) -> torch.Tensor:
    """(1, samples) a fixed, varied signal: half-second notes of 1-8 harmonics over five octaves,
    some over noise, some as noise alone, at random levels."""
    rng = np.random.default_rng(seed)
    n = int(0.5 * sample_rate)
    t = np.arange(n) / sample_rate
    notes = []
    for _ in range(int(seconds / 0.5)):
        f0 = 440.0 * 2 ** ((rng.integers(36, 97) - 69) / 12)
        tone = sum(np.sin(2 * np.pi * f0 * h * t) / h for h in range(1, rng.integers(1, 9) + 1) if f0 * h < sample_rate / 2)
        noise = rng.normal(size=n) * rng.choice([0.0, 0.1, 1.0])
        notes.append(10 ** rng.uniform(-2, 0) * (tone * rng.choice([0.0, 1.0], p=[0.2, 0.8]) + noise) * np.exp(-3 * t))
    audio = np.concatenate(notes)
    return torch.from_numpy(audio / max(1e-9, np.abs(audio).max())).float()[None]


def save_model(model: GVMGen, directory: Path) -> None:
    """Our format: the config as JSON and every weight in one safetensors file, written atomically."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(directory / OUR_WEIGHTS) as weights, atomic_path(directory / OUR_CONFIG) as config:
        save_file(state, str(weights))
        model.config.save(config)


def load_ours(directory: Path) -> GVMGen:
    directory = Path(directory)
    path = directory / OUR_CONFIG
    data = _read_json(path)
    try:
        config = GVMGenConfig.from_dict(data)
    except (TypeError, ValueError) as e:  # not an object, or unknown fields: name the file they are in
        raise BrokenCheckpoint(f"{path}: not a GVMGen configuration ({e})") from None
    model = GVMGen(config)
    _load_part(model, read_safetensors(directory), "", str(directory / OUR_WEIGHTS),
               fits=f"its configuration ({OUR_CONFIG})")
    return model


# ---- Hugging Face format ------------------------------------------------------------------------------
def load_pretrained(name: str) -> GVMGen:
    clip_dir = resolve_hf(CLIP_REPO, name)
    musicgen_dir = resolve_hf(MUSICGEN_REPOS[name], name)
    return load_hf(clip_dir, musicgen_dir, base=preset(name))


def load_hf(clip_dir: Path, musicgen_dir: Path, encodec_dir: Path | None = None,
            base: GVMGenConfig | None = None) -> GVMGen:
    """CLIP (CLIPModel or CLIPVisionModelWithProjection), MusicGen (composite or CausalLM) and EnCodec
    (inside the MusicGen repository, or a separate one) in Hugging Face format. The shapes of the
    pretrained parts come from their config.json files, everything else from `base`."""
    clip_cfg = _read_config(clip_dir)
    clip_cfg = clip_cfg.get("vision_config", clip_cfg)
    mg_cfg = _read_config(musicgen_dir)
    lm_cfg = mg_cfg.get("decoder", mg_cfg)
    codec_cfg = _read_config(encodec_dir) if encodec_dir else mg_cfg.get("audio_encoder")
    if codec_cfg is None:
        raise WeightsNotFound(f"{musicgen_dir}: holds no EnCodec (audio_encoder); pass an EnCodec directory")
    config = copy.deepcopy(base or GVMGenConfig())
    config.clip, config.lm, config.codec = (_pick(config.clip, clip_cfg), _pick(config.lm, lm_cfg),
                                            _pick(config.codec, codec_cfg))
    model = fresh_model(config)

    clip = read_safetensors(clip_dir)
    _load_part(model.vision, _strip(clip, "vision_model."), "vision", str(clip_dir))
    _load_part(model.visual_projection, _strip(clip, "visual_projection."), "visual_projection", str(clip_dir))
    mg = read_safetensors(musicgen_dir)
    lm = _strip(mg, "decoder.") if any(k.startswith("decoder.model.") for k in mg) else mg
    _load_part(model.lm, {k: v for k, v in lm.items() if k.startswith(("model.", "lm_heads."))}, "lm", str(musicgen_dir))
    codec = read_safetensors(encodec_dir) if encodec_dir else _strip(mg, "audio_encoder.")
    _load_part(model.codec, _encodec_names(codec), "codec", str(encodec_dir or musicgen_dir))
    return model


def resolve_hf(repo: str, preset_name: str | None = None) -> Path:
    """A local directory, or the snapshot of `repo` in GVMGEN_HOME's download folder or the HF cache."""
    if Path(repo).is_dir():
        return Path(repo)
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    looked = []
    for cache_dir in (weights_dir(), None):  # ours first, then the user's own HF cache
        try:
            return Path(snapshot_download(repo, cache_dir=cache_dir, local_files_only=True, allow_patterns=HF_FILES))
        except (LocalEntryNotFoundError, FileNotFoundError, OSError):
            looked.append(str(cache_dir) if cache_dir else "the Hugging Face cache (HF_HOME)")
    fetch = f"gvmgen weights fetch {preset_name}" if preset_name else f"huggingface-cli download {repo}"
    raise WeightsNotFound(f"weights of {repo} (config.json, model.safetensors) not found; looked in "
                          f"{' and '.join(looked)}. Fetch them with `{fetch}` on a machine with network access.")


def fetch_weights(name: str) -> list[Path]:
    """Download what `small`/`medium` need into GVMGEN_HOME (needs network access)."""
    from huggingface_hub import snapshot_download

    if name not in MUSICGEN_REPOS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(MUSICGEN_REPOS)}")
    fetched = []
    for repo in (CLIP_REPO, MUSICGEN_REPOS[name]):
        try:
            fetched.append(Path(snapshot_download(repo, cache_dir=weights_dir(), allow_patterns=HF_FILES)))
        except Exception as e:  # offline, no route, refused: say which download and why, in one line
            cause = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ConnectionError(f"cannot download {repo} from the Hugging Face Hub: {cause}") from e
    return fetched


# ---- audiocraft export (official GVMGen, plain MusicGen) ---------------------------------------------
VISUAL = "condition_provider.conditioners.visual_content."

_LM_RULES = [
    # audiocraft's non-custom attention wraps torch's MultiheadAttention as `.mha`; its custom one does not
    (r"\.(self_attn|cross_attention)\.mha\.", r".\1."),
    (r"^emb\.(\d+)\.", r"model.decoder.embed_tokens.\1."),
    (r"^transformer\.layers\.(\d+)\.", r"model.decoder.layers.\1."),
    (r"\.cross_attention\.", ".encoder_attn."),
    (r"\.linear1\.", ".fc1."), (r"\.linear2\.", ".fc2."),
    (r"\.norm1\.", ".self_attn_layer_norm."), (r"\.norm_cross\.", ".encoder_attn_layer_norm."),
    (r"\.norm2\.", ".final_layer_norm."),
    (r"^out_norm\.", "model.decoder.layer_norm."), (r"^linears\.(\d+)\.", r"lm_heads.\1."),
]
_CLIP_RULES = [  # OpenAI CLIP visual tower -> transformers' CLIPVisionModel, GVMGen's queries -> ours
    (r"^conv1\.", "vision.embeddings.patch_embedding."),
    (r"^class_embedding$", "vision.embeddings.class_embedding"),
    (r"^positional_embedding$", "vision.embeddings.position_embedding.weight"),
    (r"^ln_pre\.", "vision.pre_layrnorm."), (r"^ln_post\.", "vision.post_layernorm."),
    (r"^transformer\.resblocks\.(\d+)\.attn\.", r"vision.encoder.layers.\1.self_attn."),
    (r"^transformer\.resblocks\.(\d+)\.ln_1\.", r"vision.encoder.layers.\1.layer_norm1."),
    (r"^transformer\.resblocks\.(\d+)\.ln_2\.", r"vision.encoder.layers.\1.layer_norm2."),
    (r"^transformer\.resblocks\.(\d+)\.mlp\.c_fc\.", r"vision.encoder.layers.\1.mlp.fc1."),
    (r"^transformer\.resblocks\.(\d+)\.mlp\.c_proj\.", r"vision.encoder.layers.\1.mlp.fc2."),
    (r"^query_tokens$", "feature_transformation.queries"),
    (r"^qformer\.layernorm\.", "feature_transformation.norm."),
    (r"^qformer\.encoder\.layer\.(\d+)\.intermediate_query\.dense\.", r"feature_transformation.layers.\1.ffn_in."),
    (r"^qformer\.encoder\.layer\.(\d+)\.output_query\.dense\.", r"feature_transformation.layers.\1.ffn_out."),
    (r"^qformer\.encoder\.layer\.(\d+)\.output_query\.LayerNorm\.", r"feature_transformation.layers.\1.ffn_norm."),
    (r"^qformer\.encoder\.layer\.(\d+)\.", r"feature_transformation.layers.\1."),
]
_ENCODEC_RULES = [  # audiocraft SEANet/RVQ -> transformers' EncodecModel
    (r"^(encoder|decoder)\.model\.(\d+)\.(?:conv\.conv|convtr\.convtr)\.", r"\1.layers.\2.conv."),
    (r"^(encoder|decoder)\.model\.(\d+)\.block\.(\d+)\.conv\.conv\.", r"\1.layers.\2.block.\3.conv."),
    (r"^(encoder|decoder)\.model\.(\d+)\.shortcut\.conv\.conv\.", r"\1.layers.\2.shortcut.conv."),
    (r"^(encoder|decoder)\.model\.(\d+)\.lstm\.", r"\1.layers.\2.lstm."),
    (r"^quantizer\.vq\.layers\.(\d+)\._codebook\.", r"quantizer.layers.\1.codebook."),
]


def load_audiocraft(directory: Path, clip_source: str = CLIP_REPO, base: GVMGenConfig | None = None) -> GVMGen:
    """An audiocraft export: `state_dict.bin` ({'xp.cfg': YAML, 'best_state': weights}) and
    `compression_state_dict.bin` (EnCodec weights, or {'pretrained': HF name}).

    A GVMGen export carries the whole OpenAI-format CLIP inside its conditioner (with the Q-Former; one
    made without it holds only its output projection, and its CLIP, never trained, comes from
    `clip_source`: the CLS layout); a plain MusicGen export has neither, so its visual side comes from
    `clip_source` and its new layers start fresh,
    shaped as in `base` (default: the official configuration with the presets' FRESH_LAYOUT). The
    export's own settings (LM dropout, cross-attention position embedding, the Q-Former's queries, type
    and layers, segment duration) override `base`'s; those we cannot honour are named in warnings.
    """
    directory = Path(directory)
    package = safe_torch_load(directory / "state_dict.bin")
    xp = _xp_config(package, directory / "state_dict.bin")
    state = package["best_state"]
    clip_prefix = VISUAL + "clip.visual."
    visual = {k[len(clip_prefix):]: v for k, v in state.items() if k.startswith(clip_prefix)}
    # a GVMGen export always holds its conditioner's output projection; only with the Q-Former its CLIP too
    trained_projection = {f"output_proj.{n}": state[f"{VISUAL}output_proj.{n}"] for n in ("weight", "bias")
                          if f"{VISUAL}output_proj.{n}" in state}
    # Fresh GVMGen layers (a plain MusicGen export) start from the presets' layout; a GVMGen export brings its own.
    config = _apply_xp_config(copy.deepcopy(base or GVMGenConfig(feature_transformation=FRESH_LAYOUT)), xp,
                              directory / "state_dict.bin")
    config.codec = _audiocraft_codec_config(directory)
    if visual:
        width = visual["conv1.weight"].shape[0]
        patch = visual["conv1.weight"].shape[-1]
        grid = round((visual["positional_embedding"].shape[0] - 1) ** 0.5)
        config.clip = dict(config.clip, hidden_size=width, patch_size=patch, image_size=patch * grid,
                           num_attention_heads=max(1, width // 64), projection_dim=visual["proj"].shape[1],
                           intermediate_size=visual["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
                           num_hidden_layers=len({k.split(".")[2] for k in visual if k.startswith("transformer.resblocks.")}))
        # The official model has no other layout: the Q-Former's (is_qformer), or else the CLS token's.
        config.feature_transformation = "official" if "query_tokens" in visual else "cls"
        if "query_tokens" in visual:  # the weights' shapes over the YAML, where both say
            config.num_queries = visual["query_tokens"].shape[1]
            config.ft_heads = config.clip["num_attention_heads"]
            config.ft_ffn_dim = visual["qformer.encoder.layer.0.intermediate_query.dense.weight"].shape[0]
            config.ft_layers = len({k.split(".")[3] for k in visual if k.startswith("qformer.encoder.layer.")})
    else:
        clip_dir = resolve_hf(clip_source)
        clip_cfg = _read_config(clip_dir)
        config.clip = _pick(config.clip, clip_cfg.get("vision_config", clip_cfg))
        if trained_projection:  # the official model without its Q-Former: its CLIP was never saved
            config.feature_transformation = "cls"

    model = fresh_model(config)
    _load_part(model.lm, _split_in_proj(_rename(
        {k: v for k, v in state.items() if not k.startswith("condition_provider.")}, _LM_RULES)), "lm", str(directory))
    if visual:
        converted = _rename(visual, _CLIP_RULES)
        converted["visual_projection.weight"] = converted.pop("proj").t()
        converted = _split_in_proj(converted, only=r"^vision\.")
        converted.update(trained_projection)
        parts = ("vision.", "visual_projection.", "feature_transformation.", "output_proj.")
        _load_part(model, converted, "visual side", str(directory), only=parts)
    else:
        clip = read_safetensors(clip_dir)
        _load_part(model.vision, _strip(clip, "vision_model."), "vision", str(clip_dir))
        _load_part(model.visual_projection, _strip(clip, "visual_projection."), "visual_projection", str(clip_dir))
        if trained_projection:
            _load_part(model, trained_projection, "output_proj", str(directory), only=("output_proj.",))
    _load_part(model.codec, _audiocraft_codec_state(directory), "codec", str(directory / "compression_state_dict.bin"))
    return model


def _apply_xp_config(config: GVMGenConfig, xp: dict, path: Path) -> GVMGenConfig:
    """The settings of an audiocraft experiment (`xp.cfg`) that shape, train or sample the model, applied to
    `config`; each setting we cannot honour is named in an UnhonouredConfig warning. Absent keys take
    audiocraft's defaults."""
    lm = xp.get("transformer_lm", {})
    dropout = lm.get("dropout", 0.0)
    config.lm = dict(config.lm, hidden_size=lm["dim"], num_attention_heads=lm["num_heads"],
                     num_hidden_layers=lm["num_layers"], ffn_dim=int(lm["dim"] * lm.get("hidden_scale", 4)),
                     num_codebooks=lm.get("n_q", 4), vocab_size=lm.get("card", 2048), dropout=dropout,
                     # audiocraft: attention_dropout null means "the same as dropout"
                     attention_dropout=dropout if lm.get("attention_dropout") is None else lm["attention_dropout"],
                     activation_function=lm.get("activation", "gelu"))
    cfg_free = xp.get("classifier_free_guidance", {})
    config.condition_dropout = cfg_free.get("training_dropout", config.condition_dropout)
    config.guidance_scale = cfg_free.get("inference_coef", config.guidance_scale)
    fuser = xp.get("fuser", {})
    config.cross_attention_pos_emb = bool(fuser.get("cross_attention_pos_emb", False))
    config.cross_attention_pos_emb_scale = float(fuser.get("cross_attention_pos_emb_scale", 1.0))
    config.segment_duration = float(xp.get("dataset", {}).get("segment_duration", config.segment_duration))
    video = xp.get("conditioners", {}).get("visual_content", {}).get("video", {})
    qformer = video.get("qformer", {})
    config.num_queries = qformer.get("query_num", config.num_queries)
    config.ft_query_pooling = qformer.get("query_type", config.ft_query_pooling)
    config.ft_layers = qformer.get("qformer_layers", config.ft_layers)
    config.ft_cross_attention_every = qformer.get("cross_attention_frequency", config.ft_cross_attention_every)
    config.ft_layer_norm_eps = float(qformer.get("layer_norm_eps", config.ft_layer_norm_eps))
    config.ft_dropout = qformer.get("hidden_dropout_prob", config.ft_dropout)

    pattern = xp.get("codebooks_pattern", {})
    delays = pattern.get("delay", {}).get("delays", list(range(config.num_codebooks)))
    unsupported = {  # setting: (its value, what this implementation does)
        "transformer_lm.norm_first": (lm.get("norm_first", True), True),
        "transformer_lm.positional_embedding": (lm.get("positional_embedding", "sin"), "sin"),
        "transformer_lm.layer_scale": (lm.get("layer_scale"), None),
        "transformer_lm.qk_layer_norm": (lm.get("qk_layer_norm", False), False),
        "transformer_lm.qk_layer_norm_cross": (lm.get("qk_layer_norm_cross", False), False),
        "transformer_lm.kv_repeat": (lm.get("kv_repeat", 1), 1),
        "transformer_lm.two_step_cfg": (lm.get("two_step_cfg", False), False),
        "codebooks_pattern.modeling": (pattern.get("modeling", "delay"), "delay"),
        "codebooks_pattern.delay.delays": (list(delays), list(range(config.num_codebooks))),
        "conditioners.visual_content.video.finetune": (video.get("finetune", True), True),
    }
    if lm.get("activation", "gelu") not in ("gelu", "relu"):
        unsupported["transformer_lm.activation"] = (lm["activation"], "gelu or relu")
        config.lm["activation_function"] = "gelu"
    for op in ("sum", "prepend", "input_interpolate"):
        if "visual_content" in fuser.get(op, []):
            unsupported[f"fuser.{op}"] = (fuser[op], "visual_content in fuser.cross only")
    for setting, (value, ours) in unsupported.items():
        if value != ours:
            warnings.warn(UnhonouredConfig(f"{path}: {setting} is {value!r}, but this implementation does {ours!r}; "
                                           "loaded as if it were"), stacklevel=3)
    return config


def _audiocraft_compression(directory: Path) -> dict:
    path = directory / "compression_state_dict.bin"
    if not path.is_file():
        raise WeightsNotFound(f"{path} not found: an audiocraft export needs its compression model beside state_dict.bin")
    return safe_torch_load(path)


def _audiocraft_codec_config(directory: Path) -> dict:
    package = _audiocraft_compression(directory)
    if "pretrained" in package:
        cfg = _read_config(resolve_hf(_hf_encodec_name(package["pretrained"])))
        return _pick(GVMGenConfig().codec, cfg)
    xp = _xp_config(package, directory / "compression_state_dict.bin")
    seanet, rvq = xp["seanet"], xp.get("rvq", {})
    ratios = list(seanet.get("ratios", [8, 5, 4, 4]))
    hop = 1
    for r in ratios:
        hop *= r
    n_q, bins = rvq.get("n_q", 4), rvq.get("bins", 2048)
    rate = xp["sample_rate"]
    return dict(
        GVMGenConfig().codec, sampling_rate=rate, audio_channels=xp.get("channels", 1),
        hidden_size=seanet["dimension"], num_filters=seanet["n_filters"],
        num_residual_layers=seanet.get("n_residual_layers", 1), upsampling_ratios=ratios,
        norm_type=seanet.get("norm", "weight_norm"), kernel_size=seanet.get("kernel_size", 7),
        last_kernel_size=seanet.get("last_kernel_size", 7), residual_kernel_size=seanet.get("residual_kernel_size", 3),
        dilation_growth_rate=seanet.get("dilation_base", 2), use_causal_conv=seanet.get("causal", False),
        pad_mode=seanet.get("pad_mode", "reflect"), compress=seanet.get("compress", 2),
        num_lstm_layers=seanet.get("lstm", 2), use_conv_shortcut=not seanet.get("true_skip", True),
        codebook_size=bins, codebook_dim=seanet["dimension"],
        target_bandwidths=[n_q * (bins - 1).bit_length() * (rate // hop) / 1000],
    )


def _audiocraft_codec_state(directory: Path) -> dict:
    package = _audiocraft_compression(directory)
    if "pretrained" in package:
        directory = resolve_hf(_hf_encodec_name(package["pretrained"]))
        return _encodec_names(read_safetensors(directory))
    return _encodec_names(_rename(package["best_state"], _ENCODEC_RULES))


def _hf_encodec_name(pretrained: str) -> str:
    name = pretrained.removeprefix("//pretrained/")
    return ENCODEC_REPO if name in ("facebook/encodec_32khz", "encodec_32khz") else name


def _xp_config(package: dict, path: Path) -> dict:
    cfg = package.get("xp.cfg")
    if not isinstance(cfg, str):
        raise ValueError(f"{path}: no 'xp.cfg' YAML string; is it an exported audiocraft checkpoint?")
    return yaml.safe_load(cfg) or {}


# ---- small helpers ------------------------------------------------------------------------------------
def safe_torch_load(path: Path) -> dict:
    """torch.load that accepts tensors and plain data only, never arbitrary pickled objects."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UnsafeCheckpoint(
            f"refusing to load {path}: it holds pickled Python objects other than tensors and plain data, "
            f"which could run code on load ({str(e).splitlines()[0]})") from None


def read_safetensors(directory: Path) -> dict[str, torch.Tensor]:
    directory = Path(directory)
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(_read_json(index)["weight_map"].values()))
    elif (directory / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise WeightsNotFound(f"no model.safetensors (or its index) in {directory}")
    state = {}
    for name in files:
        try:
            with safe_open(str(directory / name), framework="pt") as f:
                state.update({k: f.get_tensor(k) for k in f.keys()})
        except SafetensorError as e:  # a cut-off copy or another kind of file; the library names neither
            raise BrokenCheckpoint(f"{directory / name}: not a complete safetensors file ({e})") from None
    return state


def _read_json(path: Path):
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:  # its own message names no file
        raise BrokenCheckpoint(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None


def _read_config(directory: Path) -> dict:
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise WeightsNotFound(f"{path} not found")
    return _read_json(path)


def _pick(defaults: dict, found: dict) -> dict:
    """Our architecture fields, taken from a Hugging Face config where it sets them."""
    return {k: found.get(k, v) if found.get(k) is not None else v for k, v in defaults.items()}


def _strip(state: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _rename(state: dict, rules) -> dict:
    out = {}
    for key, value in state.items():
        for pattern, repl in rules:
            key = re.sub(pattern, repl, key)
        out[key] = value
    return out


def _split_in_proj(state: dict, only: str = "") -> dict:
    """Fused (3D, D) in-projections -> separate q/k/v projections (where `only` matches)."""
    out = {}
    for key, value in state.items():
        m = re.match(r"(.*)\.in_proj_(weight|bias)$", key)
        if m and re.search(only, key):
            for name, part in zip("qkv", value.chunk(3)):
                out[f"{m.group(1)}.{name}_proj.{m.group(2)}"] = part
        else:
            out[key] = value
    return out


def _encodec_names(state: dict) -> dict:
    """Old weight-norm names (weight_g/weight_v) -> torch's parametrization names."""
    return {re.sub(r"\.weight_g$", ".parametrizations.weight.original0",
                   re.sub(r"\.weight_v$", ".parametrizations.weight.original1", k)): v for k, v in state.items()}


def _load_part(module: torch.nn.Module, state: dict, part: str, source: str, only: tuple[str, ...] = (),
               fits: str = "this architecture") -> None:
    own = {k: v for k, v in module.state_dict().items() if not only or k.startswith(only)}
    state = {k: v for k, v in state.items() if not k.endswith("position_ids")}  # old HF files kept this buffer
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise WeightsNotFound(f"{source}: the {part or 'model'} weights do not fit {fits}; "
                              f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                              f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
    # torch would list every mismatch on lines of their own, under a first line that names none
    mismatched = [f"size mismatch for {k}: checkpoint {_shape(state[k])}, model {_shape(v)}"
                  for k, v in own.items() if state[k].shape != v.shape]
    if mismatched:
        more = f"; ... ({len(mismatched) - 3} more)" if len(mismatched) > 3 else ""
        raise WeightsNotFound(f"{source}: the {part or 'model'} weights do not fit {fits}: "
                              f"{'; '.join(mismatched[:3])}{more}")
    module.load_state_dict(state, strict=not only)


def _shape(tensor: torch.Tensor) -> str:
    return f"({', '.join(map(str, tensor.shape))})"

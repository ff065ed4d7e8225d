"""Every supported checkpoint format loads into a model with identical outputs; pickles are refused."""

import os
import pickle
import re

import pytest
import torch
import yaml
from transformers import (CLIPVisionModelWithProjection, MusicgenConfig, MusicgenForConditionalGeneration,
                          T5Config)

from gvmgen.model.checkpoints import (UnhonouredConfig, UnsafeCheckpoint, WeightsNotFound, fresh_model,
                                      load_audiocraft, load_hf, load_model, save_model)
from gvmgen.model.config import preset


def _randomised(parts=None, seed=123):
    """A tiny model whose weights differ from a fresh one, so a loader that loads nothing fails."""
    model = fresh_model(preset("tiny"))
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if parts is None or name.startswith(parts):
            p.data = torch.randn(p.shape, generator=g) * 0.05
    for name, b in model.named_buffers():
        if name.endswith("codebook.embed") and (parts is None or name.startswith(parts)):
            b.data = torch.randn(b.shape, generator=g)
    return model.eval()


def _outputs(model):
    model.eval()
    g = torch.Generator().manual_seed(7)
    frames = torch.randint(0, 256, (5, 32, 32, 3), dtype=torch.uint8, generator=g)
    codes = torch.randint(0, 2048, (1, 4, 12), generator=g)
    with torch.no_grad():
        tokens = model.encode_video_frames(frames)
        logits = model.lm_logits(codes, tokens[None], torch.ones(1, 5, dtype=torch.bool))
        audio = model.decode_audio(codes)
    return tokens, logits, audio


def _assert_same_outputs(a, b):
    for x, y in zip(_outputs(a), _outputs(b)):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5)


def test_our_format_round_trips(tmp_path):
    model = _randomised()
    save_model(model, tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["gvmgen_config.json", "model.safetensors"]
    _assert_same_outputs(model, load_model(tmp_path / "ckpt"))


def _write_hf(model, root):
    clip = CLIPVisionModelWithProjection(model.vision.config)
    clip.vision_model.load_state_dict(model.vision.state_dict())
    clip.visual_projection.load_state_dict(model.visual_projection.state_dict())
    clip.save_pretrained(root / "clip")
    text = T5Config(vocab_size=32, d_model=8, d_kv=4, d_ff=16, num_layers=1, num_heads=2)
    config = MusicgenConfig(text_encoder=text.to_dict(), audio_encoder=model.codec.config.to_dict(),
                            decoder=model.lm.config.to_dict())
    musicgen = MusicgenForConditionalGeneration(config)
    musicgen.decoder.load_state_dict(model.lm.state_dict())
    musicgen.audio_encoder.load_state_dict(model.codec.state_dict())
    musicgen.save_pretrained(root / "musicgen")


def test_hugging_face_format_loads_pretrained_parts(tmp_path):
    # The pretrained parts differ from a fresh model; the new layers are fresh in both.
    model = _randomised(parts=("vision.", "visual_projection.", "lm.", "codec."))
    _write_hf(model, tmp_path)
    _assert_same_outputs(model, load_hf(tmp_path / "clip", tmp_path / "musicgen", base=preset("tiny")))


# -- audiocraft export, written here from the official key names ------------------------------------------
def _to_openai_clip(model) -> dict:
    out = {}
    for k, v in model.vision.state_dict().items():
        k = (k.replace("embeddings.patch_embedding.", "conv1.").replace("embeddings.class_embedding", "class_embedding")
             .replace("embeddings.position_embedding.weight", "positional_embedding")
             .replace("pre_layrnorm.", "ln_pre.").replace("post_layernorm.", "ln_post.")
             .replace("encoder.layers.", "transformer.resblocks.").replace(".layer_norm1.", ".ln_1.")
             .replace(".layer_norm2.", ".ln_2.").replace(".mlp.fc1.", ".mlp.c_fc.").replace(".mlp.fc2.", ".mlp.c_proj.")
             .replace(".self_attn.", ".attn."))
        out[k] = v
    out["proj"] = model.visual_projection.weight.t()
    if model.feature_transformation is None:  # the official code without its Q-Former: the CLS path
        return _fuse_qkv(out, r"\.attn\.")
    out["query_tokens"] = model.feature_transformation.queries
    for k, v in model.feature_transformation.state_dict().items():
        if k == "queries":
            continue
        k = (k.replace("norm.", "layernorm.", 1) if k.startswith("norm.") else k)
        k = (k.replace("layers.", "encoder.layer.").replace(".ffn_in.", ".intermediate_query.dense.")
             .replace(".ffn_out.", ".output_query.dense.").replace(".ffn_norm.", ".output_query.LayerNorm."))
        out["qformer." + k] = v
    return _fuse_qkv(out, r"\.attn\.")


def _fuse_qkv(state, where):
    out = {}
    for k, v in state.items():
        m = re.match(r"(.*)\.q_proj\.(weight|bias)$", k)
        if m and re.search(where, k):
            out[f"{m.group(1)}.in_proj_{m.group(2)}"] = torch.cat(
                [v, state[f"{m.group(1)}.k_proj.{m.group(2)}"], state[f"{m.group(1)}.v_proj.{m.group(2)}"]])
        elif not re.search(r"\.[kv]_proj\.", k) or not re.search(where, k):
            out[k] = v
    return out


def _to_audiocraft_lm(model) -> dict:
    out = {}
    for k, v in model.lm.state_dict().items():
        k = (k.replace("model.decoder.embed_tokens.", "emb.").replace("model.decoder.layer_norm.", "out_norm.")
             .replace("model.decoder.layers.", "transformer.layers.").replace("lm_heads.", "linears.")
             .replace(".encoder_attn_layer_norm.", ".norm_cross.").replace(".encoder_attn.", ".cross_attention.")
             .replace(".self_attn_layer_norm.", ".norm1.").replace(".final_layer_norm.", ".norm2.")
             .replace(".fc1.", ".linear1.").replace(".fc2.", ".linear2."))
        out[k] = v
    return _fuse_qkv(out, r"\.(self_attn|cross_attention)\.")


def _to_audiocraft_encodec(model) -> dict:
    out = {}
    for k, v in model.codec.state_dict().items():
        k = k.replace(".parametrizations.weight.original0", ".weight_g").replace(".parametrizations.weight.original1", ".weight_v")
        k = re.sub(r"^quantizer\.layers\.(\d+)\.codebook\.", r"quantizer.vq.layers.\1._codebook.", k)
        k = re.sub(r"^(encoder|decoder)\.layers\.(\d+)\.(block|shortcut)", r"\1.model.\2.\3", k)
        k = re.sub(r"^(encoder|decoder)\.layers\.(\d+)\.lstm\.", r"\1.model.\2.lstm.", k)
        k = re.sub(r"\.(block\.\d+|shortcut)\.conv\.", r".\1.conv.conv.", k)
        conv = "convtr.convtr" if k.startswith("decoder.") and isinstance(_module(model.codec, k), torch.nn.ConvTranspose1d) else "conv.conv"
        k = re.sub(r"^(encoder|decoder)\.layers\.(\d+)\.conv\.", rf"\1.model.\2.{conv}.", k)
        out[k] = v
    return out


def _module(codec, audiocraft_key):
    m = re.match(r"^(encoder|decoder)\.layers\.(\d+)\.", audiocraft_key)
    return getattr(codec, m.group(1)).layers[int(m.group(2))].conv if m else None


def _xp_lm(model, visual=True) -> str:
    lm = model.lm.config
    cfg = {"transformer_lm": {"dim": lm.hidden_size, "num_heads": lm.num_attention_heads,
                              "num_layers": lm.num_hidden_layers, "n_q": 4, "card": 2048, "hidden_scale": 4},
           "classifier_free_guidance": {"training_dropout": 0.3, "inference_coef": 3.0}}
    if visual:
        c = model.config
        cfg["conditioners"] = {"visual_content": {"model": "video", "video": {"name": "ViT-L/14@336px", "qformer": {
            "query_num": c.num_queries, "qformer_layers": c.ft_layers, "layer_norm_eps": 1e-12,
            "cross_attention_frequency": c.ft_cross_attention_every, "hidden_dropout_prob": 0.1}}}}
    return yaml.safe_dump(cfg)


def _xp_codec(model) -> str:
    c = model.codec.config
    return yaml.safe_dump({"sample_rate": 32000, "channels": 1, "rvq": {"n_q": 4, "bins": 2048},
                           "seanet": {"dimension": c.hidden_size, "n_filters": c.num_filters, "ratios": list(c.upsampling_ratios),
                                      "n_residual_layers": 1, "lstm": c.num_lstm_layers, "true_skip": True,
                                      "causal": False, "norm": "weight_norm", "pad_mode": "reflect"}})


def _write_official_export(model, directory, xp=None, attention_key="{}"):
    """`model` as the official release stores it; `attention_key` spells the LM's attention modules
    ("{}.mha" for audiocraft's non-custom attention)."""
    visual = "condition_provider.conditioners.visual_content."
    state = {re.sub(r"\.(self_attn|cross_attention)\.", lambda m: "." + attention_key.format(m.group(1)) + ".", k): v
             for k, v in _to_audiocraft_lm(model).items()}
    state.update({f"{visual}clip.visual.{k}": v for k, v in _to_openai_clip(model).items()})
    state[f"{visual}clip.token_embedding.weight"] = torch.zeros(10, 8)   # the text tower rides along, unused
    state[f"{visual}output_proj.weight"] = model.output_proj.weight
    state[f"{visual}output_proj.bias"] = model.output_proj.bias
    directory.mkdir(parents=True, exist_ok=True)
    torch.save({"xp.cfg": xp or _xp_lm(model), "best_state": state, "exported": True}, directory / "state_dict.bin")
    torch.save({"xp.cfg": _xp_codec(model), "best_state": _to_audiocraft_encodec(model), "exported": True},
               directory / "compression_state_dict.bin")
    return directory


def test_official_gvmgen_export_loads_with_identical_outputs(tmp_path):
    model = _randomised()
    loaded = load_model(_write_official_export(model, tmp_path))
    assert loaded.config.num_queries == model.config.num_queries
    assert loaded.config.feature_transformation == "official"
    _assert_same_outputs(model, loaded)


def test_an_export_with_mha_attention_keys_loads_the_same_weights(tmp_path):
    model = _randomised()
    custom = load_model(_write_official_export(model, tmp_path / "custom"))
    wrapped = _write_official_export(model, tmp_path / "mha", attention_key="{}.mha")
    keys = torch.load(wrapped / "state_dict.bin", weights_only=True)["best_state"]
    assert "transformer.layers.0.self_attn.mha.in_proj_weight" in keys
    assert "transformer.layers.0.cross_attention.mha.out_proj.weight" in keys
    mha = load_model(wrapped)
    a, b = custom.state_dict(), mha.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_an_export_without_its_qformer_loads_as_the_cls_path(tmp_path):
    config = preset("tiny")
    config.feature_transformation = "cls"
    model = fresh_model(config).eval()
    loaded = load_model(_write_official_export(model, tmp_path))
    assert loaded.config.feature_transformation == "cls" and loaded.feature_transformation is None
    _assert_same_outputs(model, loaded)


def test_the_exports_own_settings_are_applied_and_the_unsupported_ones_named(tmp_path):
    model = _randomised()
    xp = yaml.safe_load(_xp_lm(model))
    xp["transformer_lm"].update(dropout=0.0, attention_dropout=None, norm_first=False)
    xp["fuser"] = {"cross_attention_pos_emb": True, "cross_attention_pos_emb_scale": 2.0, "cross": ["visual_content"]}
    xp["conditioners"]["visual_content"]["video"]["qformer"]["query_type"] = "sum"
    xp["dataset"] = {"segment_duration": 32}
    with pytest.warns(UnhonouredConfig, match="transformer_lm.norm_first is False"):
        loaded = load_model(_write_official_export(model, tmp_path, xp=yaml.safe_dump(xp)))
    c = loaded.config
    assert c.lm["dropout"] == 0.0 and c.lm["attention_dropout"] == 0.0 and loaded.lm.config.dropout == 0.0
    assert c.cross_attention_pos_emb and c.cross_attention_pos_emb_scale == 2.0
    assert c.ft_query_pooling == "sum" and c.segment_duration == 32.0
    assert c.feature_transformation == "official" and c.num_queries == model.config.num_queries


def test_plain_musicgen_export_takes_clip_and_encodec_from_hugging_face(tmp_path):
    model = _randomised(parts=("vision.", "visual_projection.", "lm.", "codec."))
    _write_hf(model, tmp_path)
    model.codec.save_pretrained(tmp_path / "encodec")
    state = _to_audiocraft_lm(model)
    state["condition_provider.conditioners.description.output_proj.weight"] = torch.zeros(64, 8)  # T5's, unused
    torch.save({"xp.cfg": _xp_lm(model, visual=False), "best_state": state}, tmp_path / "state_dict.bin")
    torch.save({"pretrained": str(tmp_path / "encodec"), "exported": True}, tmp_path / "compression_state_dict.bin")
    _assert_same_outputs(model, load_audiocraft(tmp_path, clip_source=str(tmp_path / "clip"), base=preset("tiny")))


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_carrying_a_malicious_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    with open(tmp_path / "state_dict.bin", "wb") as f:
        pickle.dump({"xp.cfg": "{}", "best_state": {}, "payload": _Exploit(marker)}, f)
    with pytest.raises(UnsafeCheckpoint, match="refusing to load"):
        load_model(tmp_path)
    assert not marker.exists()


def test_missing_pretrained_weights_name_the_file_the_place_and_the_fix():
    with pytest.raises(WeightsNotFound) as err:
        load_model("small")
    message = str(err.value)
    assert "openai/clip-vit-large-patch14-336" in message
    assert "model.safetensors" in message and "huggingface" in message
    assert "gvmgen weights fetch small" in message


def test_a_directory_that_is_no_checkpoint_is_named(tmp_path):
    with pytest.raises(WeightsNotFound, match=str(tmp_path)):
        load_model(tmp_path)

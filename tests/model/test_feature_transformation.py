"""The feature-transformation layouts: each gives one token per frame, the residual one carries the
picture through its identity paths, and a checkpoint switches layout keeping every other weight."""

import pytest
import torch

from gvmgen.model import GVMGen
from gvmgen.model.checkpoints import fresh_model, with_feature_transformation
from gvmgen.model.config import FEATURE_TRANSFORMATIONS, GVMGenConfig, preset
from gvmgen.model.gvmgen import sin_embedding
from gvmgen.training.trainer import frame_token_spread


def _model(layout: str, **settings) -> GVMGen:
    config = preset("tiny")
    config.feature_transformation = layout
    for key, value in settings.items():
        setattr(config, key, value)
    return fresh_model(config).eval()


@pytest.fixture(scope="module")
def patches():
    frames = torch.randint(0, 256, (6, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    return _model("official").patch_tokens(frames)                                  # (N, P, C)


@pytest.mark.parametrize("layout", FEATURE_TRANSFORMATIONS)
def test_every_layout_gives_one_token_per_frame_that_depends_on_the_frame(layout, patches):
    with torch.no_grad():
        tokens = _model(layout).tokens_from_patches(patches)
    assert tokens.shape == (6, 64)                                                  # (N, D)
    assert frame_token_spread(tokens) > 0.05


def test_pooled_layouts_have_no_queries_and_read_the_cls_token_or_all_patches(patches):
    cls, pooled = _model("cls"), _model("mean-pool")
    assert cls.feature_transformation is None and pooled.feature_transformation is None
    changed = patches.clone()
    changed[:, 1:] = torch.randn_like(changed[:, 1:])                               # every patch but the CLS
    with torch.no_grad():
        torch.testing.assert_close(cls.tokens_from_patches(changed), cls.tokens_from_patches(patches))
        assert not torch.allclose(pooled.tokens_from_patches(changed), pooled.tokens_from_patches(patches))


def test_the_residual_layout_keeps_the_picture_when_its_blocks_output_nothing(patches):
    """Zero every block's output projection, the official collapse at its extreme: the residual layout
    still gives each frame its own token (its mean patch), the official one the same token for all."""
    residual, official = _model("residual"), _model("official")
    with torch.no_grad():
        for layer in residual.feature_transformation.layers:
            blocks = [layer.attention, layer.crossattention] if layer.crossattention is not None else [layer.attention]
            for linear in [b.out_proj for b in blocks] + [layer.ffn_out]:
                linear.weight.zero_()
                linear.bias.zero_()
        for layer in official.feature_transformation.layers:
            if layer.crossattention is not None:
                layer.crossattention.out_proj.weight.zero_()
        assert frame_token_spread(residual.tokens_from_patches(patches)) > 0.05
        assert frame_token_spread(official.tokens_from_patches(patches)) < 1e-5


def test_query_pooling_sum_is_the_mean_times_the_query_count(patches):
    mean, summed = _model("official"), _model("official", ft_query_pooling="sum")
    with torch.no_grad():
        torch.testing.assert_close(summed.feature_transformation(patches),
                                   mean.feature_transformation(patches) * mean.config.num_queries)


def test_switching_layout_keeps_every_other_weight():
    official = _model("official")
    switched = with_feature_transformation(official, "residual")
    assert switched.config.feature_transformation == "residual" and official.config.feature_transformation == "official"
    kept = {k: v for k, v in official.state_dict().items() if not k.startswith("feature_transformation.")}
    new = switched.state_dict()
    assert all(torch.equal(v, new[k]) for k, v in kept.items())
    assert any(k.startswith("feature_transformation.layers.0.self_norm") for k in new)
    assert with_feature_transformation(official, "official") is official


def test_cross_attention_position_embedding_adds_audiocraft_sinusoids_by_frame_index():
    model = _model("official", cross_attention_pos_emb=True, cross_attention_pos_emb_scale=0.5)
    tokens = torch.zeros(4, 64)
    added = model.window_condition(tokens, torch.tensor([0.0, 1.0, 2.0, 3.0]))
    torch.testing.assert_close(added, 0.5 * sin_embedding(torch.arange(4), 64))
    # frame 0: cosines 1, sines 0; the first frequency is one radian per frame
    torch.testing.assert_close(added[0], torch.cat([torch.full((32,), 0.5), torch.zeros(32)]))
    torch.testing.assert_close(added[1, 0], 0.5 * torch.cos(torch.tensor(1.0)))


def test_configs_of_models_published_before_the_layouts_still_load():
    old = preset("tiny").to_dict()
    del old["feature_transformation"]
    assert GVMGenConfig.from_dict({**old, "spatial_cross_attention": False}).feature_transformation == "mean-pool"
    assert GVMGenConfig.from_dict({**old, "spatial_cross_attention": True}).feature_transformation == "official"
    with pytest.raises(ValueError, match="feature_transformation"):
        GVMGenConfig.from_dict({**old, "feature_transformation": "bogus"})

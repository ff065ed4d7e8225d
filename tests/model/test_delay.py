"""MusicGen's delay pattern: codebook k shifted right by k steps, padding where a codebook has no frame."""

import torch

from gvmgen.model.delay import delay, delayed_valid_mask, undelay


def test_delay_pattern_round_trips_and_pads():
    codes = torch.randint(0, 2048, (3, 4, 11))
    delayed = delay(codes, pad=2048)
    assert delayed.shape == (3, 4, 14)
    assert torch.equal(undelay(delayed), codes)
    valid = delayed_valid_mask(4, 11)
    assert torch.all(delayed[:, ~valid] == 2048) and torch.all(delayed[:, valid] < 2048)
    assert torch.equal(delayed[:, 2, 2:13], codes[:, 2])  # codebook k starts k steps late


def test_a_tiny_delay_worked_out_by_hand():
    codes = torch.tensor([[[1, 2, 3], [4, 5, 6]]])                     # (B=1, K=2, T=3)
    assert torch.equal(delay(codes, pad=9), torch.tensor([[[1, 2, 3, 9], [9, 4, 5, 6]]]))
    assert torch.equal(delayed_valid_mask(2, 3), torch.tensor([[True, True, True, False], [False, True, True, True]]))


def test_the_valid_mask_is_made_on_the_device_asked_for():
    """The trainer asks for it on the GPU; the meta device stands in for any device but the CPU."""
    mask = delayed_valid_mask(4, 11, device="meta")
    assert mask.device.type == "meta" and mask.shape == (4, 14) and mask.dtype == torch.bool

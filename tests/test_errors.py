"""Bad input gets a clear ValueError naming what was given and what is valid."""

import pytest
import torch

import cpvt


def test_wrong_channel_count():
    model = cpvt.create_model("cpvt_micro")
    with pytest.raises(ValueError, match="expected 3 input channels, got 1"):
        model(torch.randn(1, 1, 32, 32))


def test_sides_not_divisible_by_patch():
    model = cpvt.create_model("cpvt_micro")
    with pytest.raises(ValueError, match=r"input size 30x32 .*multiples of 4"):
        model(torch.randn(1, 3, 30, 32))
    with pytest.raises(ValueError, match=r"input size 2x32"):
        model(torch.randn(1, 3, 2, 32))


def test_wrong_rank():
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        cpvt.create_model("cpvt_micro")(torch.randn(3, 32, 32))


def test_unknown_model():
    with pytest.raises(ValueError, match=r"unknown model 'cpvt_huge'.*similar: cpvt_"):
        cpvt.create_model("cpvt_huge")


def test_unknown_encoding():
    with pytest.raises(ValueError, match=r"unknown position encoding 'spiral'; known: none, ape"):
        cpvt.create_model("deit_micro", pos="spiral")
    with pytest.raises(ValueError, match="cannot be combined"):
        cpvt.create_model("deit_micro", pos="none+peg")


def test_unknown_or_unused_option():
    with pytest.raises(ValueError, match=r"unknown override\(s\) \['peg_kernel'\]"):
        cpvt.create_model("cpvt_micro", peg_kernel=5)
    with pytest.raises(ValueError, match="configures 'peg', which pos='ape' does not use"):
        cpvt.create_model("deit_micro", peg_kernel_size=5)


def test_two_schemes_on_one_hook():
    with pytest.raises(ValueError, match="both use the 'pos_embed' hook"):
        cpvt.create_model("deit_micro", pos="ape+sincos")


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(peg_kernel_size=4), "positive odd"),
        (dict(peg_positions=[8]), r"\[-1, 6\]"),
        (dict(peg_positions=[7]), "class-token model reads no patch token"),
        (dict(peg_positions=[7], peg_qk_only=True), r"\[-1, 6\]"),
        (dict(peg_padding="mirror"), "peg_padding must be one of"),
        (dict(peg_kind="dense"), "peg_kind must be one of"),
    ],
)
def test_bad_peg_options(options, message):
    with pytest.raises(ValueError, match=message):
        cpvt.create_model("cpvt_micro", **options)


def test_circular_kernel_larger_than_grid():
    model = cpvt.create_model("cpvt_micro", peg_kernel_size=27, peg_padding="circular")
    with pytest.raises(ValueError, match="at least 13 per side; got 8x8"):
        model(torch.randn(1, 3, 32, 32))
    # Zero padding works with any kernel: the paper's 27x27 global kernel.
    assert cpvt.create_model("cpvt_micro", peg_kernel_size=27)(torch.randn(1, 3, 32, 32)).shape == (1, 10)

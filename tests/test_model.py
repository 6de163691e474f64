import pytest
import torch

from napari_unet.core.errors import BundleError
from napari_unet.core.model import UNet, build_unet


@pytest.mark.parametrize("norm", ["batch", "group", "none"])
@pytest.mark.parametrize("upsampling", ["transposed", "bilinear"])
def test_same_padding_keeps_size(norm, upsampling):
    net = UNet(
        in_channels=2,
        n_classes=3,
        depth=2,
        base_channels=8,
        norm=norm,
        upsampling=upsampling,
        dropout=0.2,
    ).eval()
    out = net(torch.zeros(1, 2, 64, 48))
    assert out.shape == (1, 3, 64, 48)


def test_valid_padding_crops_like_the_paper():
    net = UNet(depth=4, base_channels=4, padding="valid").eval()
    # the paper's tile: 572 in, 388 out
    assert net.output_size(572) == 388
    out = net(torch.zeros(1, 1, 572, 572))
    assert out.shape[-2:] == (388, 388)
    assert net.crop_per_side(572) == 92
    assert net.fit_input_size(570) == 572


def test_same_padding_sizes():
    net = UNet(depth=3, base_channels=4)
    assert net.fit_input_size(100) == 104
    with pytest.raises(ValueError):
        net.output_size(100)


def test_factory_names_valid_choices():
    with pytest.raises(BundleError, match="same, valid"):
        build_unet({"padding": "reflect"})
    with pytest.raises(BundleError, match="valid options"):
        build_unet({"depht": 3})
    with pytest.raises(BundleError, match="positive integer"):
        build_unet({"depth": 0})
    assert build_unet({"depth": 2, "base_channels": 4}).config["depth"] == 2


def test_default_is_classic_unet():
    net = UNet()
    assert net.depth == 4 and net.base_channels == 32
    assert [m.__class__.__name__ for m in net.decoders[0].up.modules()][0] == "ConvTranspose2d"


def test_folding_batch_norm_keeps_the_output():
    from napari_unet.core.model import fold_batch_norm

    torch.manual_seed(0)
    network = build_unet({"depth": 2, "base_channels": 8, "norm": "batch", "n_classes": 3})
    for module in network.modules():  # trained-looking statistics and affine parameters
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.5, 0.5)
    network.eval()
    folded = fold_batch_norm(network)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in network.modules())  # untouched
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), network(x), rtol=1e-4, atol=1e-4)

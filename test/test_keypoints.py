# Copyright 2026 ki_vla_ros maintainers
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.

"""Spatial-softmax keypoints: coordinates of where a feature peaks, and the extra image token they make."""
import dataclasses

import pytest
import torch

from ki_vla import KIPolicy, PolicyConfig
from ki_vla.model.keypoints import SpatialKeypoints


def red_detector(num_keypoints: int = 2) -> SpatialKeypoints:
    """Channel 0 responds to red minus green at each pixel (centre tap only), sharply (sharpness 50)."""
    kp = SpatialKeypoints(num_keypoints, channels=4, width=8)
    with torch.no_grad():
        for conv in (kp.stem[0], kp.stem[2]):
            conv.weight.zero_()
            conv.bias.zero_()
        kp.stem[0].weight[0, 0, 1, 1], kp.stem[0].weight[0, 1, 1, 1] = 1.0, -1.0
        kp.stem[2].weight[0, 0, 1, 1] = 1.0
        kp.log_sharpness.fill_(torch.log(torch.tensor(50.0)))
    return kp


@pytest.mark.parametrize("row, col", [(3, 12), (10, 2), (8, 8)])
def test_coordinates_find_a_red_spot(row, col):
    img = torch.full((1, 3, 17, 17), -0.2)  # grey
    img[0, 0, row, col], img[0, 1, row, col], img[0, 2, row, col] = 1.0, -1.0, -1.0
    xy = red_detector().coordinates(img)[0, 0]
    torch.testing.assert_close(xy, torch.tensor([col / 8 - 1, row / 8 - 1]), atol=1e-3, rtol=0)


def test_coordinates_interpolate_between_pixels():
    """Two equal spots: the expected position lies between them (sub-pixel, not the arg-max)."""
    img = torch.full((1, 3, 17, 17), -0.2)
    for c in (4, 6):
        img[0, 0, 8, c], img[0, 1, 8, c] = 1.0, -1.0
    xy = red_detector().coordinates(img)[0, 0]
    torch.testing.assert_close(xy, torch.tensor([5 / 8 - 1, 0.0]), atol=1e-3, rtol=0)


def test_keypoint_token_is_one_more_image_token_per_camera():
    base = PolicyConfig.from_yaml("config/model/tiny.yaml")
    cfg = dataclasses.replace(base, vision=dataclasses.replace(base.vision, keypoints=8))
    assert cfg.vision.tokens_per_image == base.vision.tokens_per_image + 1
    torch.manual_seed(0)
    policy = KIPolicy(cfg)
    batch = policy.example_batch(2)
    tokens = policy.backbone.embed_images(batch["images"])
    assert tokens.shape[1] == cfg.num_image_tokens
    # the token moves when only the image's content moves
    shifted = batch["images"].roll(3, dims=-1)
    assert not torch.allclose(policy.backbone.embed_images(shifted)[:, cfg.vision.tokens_per_image - 1],
                              tokens[:, cfg.vision.tokens_per_image - 1])
    assert torch.isfinite(policy.sample_actions(batch)).all()
    loss = policy.compute_loss(batch)["loss"]
    loss.backward()
    assert policy.backbone.keypoints.stem[0].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="keypoints"):
        dataclasses.replace(base, vision=dataclasses.replace(base.vision, keypoints=-1))


def _reads_keypoints(variant: str) -> KIPolicy:
    base = PolicyConfig.from_yaml("config/model/tiny.yaml")
    cfg = dataclasses.replace(base, variant=variant, vision=dataclasses.replace(base.vision, keypoints=4),
                              expert=dataclasses.replace(base.expert, keypoint_input=True))
    torch.manual_seed(0)
    return KIPolicy(cfg)


def test_expert_reads_keypoints_directly_through_the_stop_gradient():
    """The expert adds the keypoint coordinates to its tokens; in `ki` the flow loss still never reaches the
    vision tower (its keypoint stem learns from the FAST loss only), in `joint` it does."""
    from ki_vla.model.expert import open_time_gates

    for variant, flow_reaches_stem in (("ki", False), ("joint", True)):
        policy = _reads_keypoints(variant)
        open_time_gates(policy)
        assert policy.cfg.expert_context_dim == len(policy.cfg.camera_names) * 4 * 2  # tiny has no state input
        batch = policy.example_batch(2)
        context = policy.expert_context(batch)
        assert context.shape == (2, policy.cfg.expert_context_dim)
        policy.compute_loss(batch)["flow"].backward()
        grad = policy.backbone.keypoints.stem[0].weight.grad
        assert (grad is not None and grad.abs().sum() > 0) == flow_reaches_stem, variant
        assert policy.expert.state_proj.weight.grad.abs().sum() > 0


def test_engine_serves_the_keypoint_context_like_the_reference():
    from ki_vla.infer.engine import InferenceEngine
    from ki_vla.model.expert import open_time_gates

    policy = _reads_keypoints("ki").eval()
    open_time_gates(policy)
    engine = InferenceEngine(policy, batch_size=1, fuse=False)
    noise = torch.randn(1, policy.cfg.horizon, policy.cfg.max_action_dim, generator=torch.Generator().manual_seed(1))
    for seed in (0, 1):  # a second request with other images: the context buffer is refreshed per request
        batch = policy.example_batch(1, seed=seed)
        batch["target_ids"], batch["target_valid"] = batch["target_ids"][:, :0], batch["target_valid"][:, :0]
        torch.testing.assert_close(engine.sample_actions(batch, noise=noise), policy.sample_actions(batch, noise=noise),
                                   atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="keypoint_input"):
        dataclasses.replace(policy.cfg, vision=dataclasses.replace(policy.cfg.vision, keypoints=0))


def test_keypoint_statistics_reach_the_served_ema_weights(tmp_path):
    """The expert standardizes keypoint coordinates by running statistics: they are buffers, which the EMA does
    not average, so the EMA checkpoint (what final/ serves) must carry the live model's."""
    from ki_vla.data.bag import BagConversionConfig, convert_bags
    from ki_vla.testing import write_synthetic_bag
    from ki_vla.train.config import TrainConfig
    from ki_vla.train.trainer import Trainer

    base = PolicyConfig.from_yaml("config/model/tiny.yaml")
    dataclasses.replace(base, vision=dataclasses.replace(base.vision, keypoints=4),
                        expert=dataclasses.replace(base.expert, keypoint_input=True)).to_yaml(tmp_path / "kp.yaml")
    bag = write_synthetic_bag(tmp_path / "ep0", storage="mcap", duration_s=1.0)
    data = convert_bags([bag], tmp_path / "ds", BagConversionConfig(image_size=(32, 32)), progress=False)
    trainer = Trainer(TrainConfig(model=str(tmp_path / "kp.yaml"), dataset=str(data), output_dir=str(tmp_path / "run"),
                                  max_steps=3, batch_size=4, save_every=3, ema_decay=0.9, progress=False,
                                  tensorboard=False, fast_vocab_size=256))
    trainer.train()
    live = trainer.policy.expert.keypoint_norm
    assert (int(live.num_batches_tracked) == 3
            and not torch.allclose(live.running_var, torch.ones_like(live.running_var)))
    served = KIPolicy.from_pretrained(tmp_path / "run" / "final").expert.keypoint_norm
    torch.testing.assert_close(served.running_mean, live.running_mean)
    torch.testing.assert_close(served.running_var, live.running_var)

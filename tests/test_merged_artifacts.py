"""`dynalora merge` writes a folder transformers loads on its own: the same logits as our
model, label names in config.json, `pipeline("text-classification")` working, and never a
silently random head. Tiny BERT on the tiny task; the real MiniLM in the integration test."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from training_helpers import tiny_config

from dynalora.training import load_trained, train
from dynalora.training.artifacts import export_trained, merge_trained

SENTENCES = ["movie good", "the bad", "awful", "really nice film", "the plot was poor"]


def merged_and_ours(run: Path, folder: Path, texts: list[str] | list[tuple[str, str]]):
    """(transformers' logits from the merged folder, our logits from the run, the loaded model)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    merge_trained(run, folder)
    model, tokenizer, _ = load_trained(run)
    pairs = isinstance(texts[0], tuple)
    args = ([a for a, _ in texts], [b for _, b in texts]) if pairs else (texts,)
    batch = dict(tokenizer(*args, return_tensors="pt", padding=True, truncation=True, max_length=128))
    theirs_model = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True).eval()
    theirs_batch = dict(AutoTokenizer.from_pretrained(folder)(*args, return_tensors="pt", padding=True,
                                                              truncation=True, max_length=128))
    with torch.no_grad():
        return theirs_model(**theirs_batch).logits, model(**batch), theirs_model


@pytest.fixture(scope="module")
def runs(tiny_model_dir: Path, tiny_glue_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One LoRA run per pooling on the tiny task."""
    folders = {}
    for pooling in ("mean", "cls", "pooler"):
        out = tmp_path_factory.mktemp(f"run_{pooling}")
        train(tiny_config(tiny_model_dir, tiny_glue_dir, out, pooling=pooling, epochs=1.0))
        folders[pooling] = out
    return folders


@pytest.mark.parametrize("pooling", ["mean", "cls", "pooler"])
def test_merged_folder_gives_our_logits_through_automodel(pooling: str, runs, tmp_path: Path) -> None:
    theirs, ours, model = merged_and_ours(runs[pooling], tmp_path / "merged", SENTENCES)
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-5)
    assert model.config.id2label == {0: "negative", 1: "positive"}
    assert model.config.label2id == {"negative": 0, "positive": 1}
    # BERT's own head computes exactly the pooler pooling; the other two need our modelling file.
    assert (type(model).__name__ == "BertForSequenceClassification") == (pooling == "pooler")


def test_pipeline_labels_and_scores_match_our_softmax(runs, tmp_path: Path) -> None:
    from transformers import pipeline

    _, ours, _ = merged_and_ours(runs["mean"], tmp_path / "merged", SENTENCES)
    classify = pipeline("text-classification", model=str(tmp_path / "merged"), trust_remote_code=True,
                        device="cpu")
    results = classify(SENTENCES)
    probs = ours.softmax(-1)
    assert [r["label"] for r in results] == [("negative", "positive")[i] for i in probs.argmax(-1).tolist()]
    assert [r["score"] for r in results] == pytest.approx(probs.max(-1).values.tolist(), abs=1e-5)


def test_a_plain_load_without_trusting_our_code_fails_instead_of_inventing_a_head(runs, tmp_path: Path) -> None:
    from transformers import AutoModelForSequenceClassification

    merge_trained(runs["mean"], tmp_path / "merged")
    assert (tmp_path / "merged" / "modeling_pooled.py").is_file()
    with pytest.raises(Exception, match=r"trust_remote_code|custom code"):
        AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged", trust_remote_code=False)


# -- PEFT export: the right task type, a base model anyone can fetch ---------------------------------
def test_pooler_run_exports_as_seq_cls_onto_berts_own_classifier(runs, tiny_model_dir: Path, tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    export_trained(runs["pooler"], tmp_path / "peft")
    document = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert document["task_type"] == "SEQ_CLS" and document["base_model_name_or_path"] == str(tiny_model_dir)
    assert not (tmp_path / "peft" / "head.safetensors").exists()  # the head is in the adapter file
    base = AutoModelForSequenceClassification.from_pretrained(document["base_model_name_or_path"], num_labels=2)
    model, tokenizer, _ = load_trained(runs["pooler"])
    batch = dict(tokenizer(SENTENCES, return_tensors="pt", padding=True))
    with torch.no_grad():
        theirs = PeftModel.from_pretrained(base, tmp_path / "peft").eval()(**batch).logits
        torch.testing.assert_close(theirs, model(**batch), rtol=0, atol=1e-5)


def test_mean_pooled_run_exports_for_the_bare_encoder_with_the_head_beside(runs, tmp_path: Path) -> None:
    export_trained(runs["mean"], tmp_path / "peft")
    document = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert document["task_type"] == "FEATURE_EXTRACTION" and (tmp_path / "peft" / "head.safetensors").is_file()


def test_packaged_models_are_named_by_their_hub_ids() -> None:
    from dynalora.packaged import minilm_folder, portable_name, smollm2_folder

    if minilm_folder() is None or smollm2_folder() is None:
        pytest.skip("the packaged models are not installed")
    assert portable_name(minilm_folder()) == "sentence-transformers/all-MiniLM-L6-v2"
    assert portable_name(smollm2_folder() / "SmolLM2-135M-Instruct.Q4_1.gguf") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert portable_name("smollm2") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert portable_name("/elsewhere/my-bert") == "/elsewhere/my-bert"


def test_sft_run_exports_as_causal_lm(tmp_path: Path) -> None:
    from conftest import tiny_chat_tokenizer, tiny_llama
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from dynalora.cli.main import main
    from dynalora.llm.models import load_with_adapters

    tiny_llama().save_pretrained(tmp_path / "llama")
    tiny_chat_tokenizer().save_pretrained(tmp_path / "llama")
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"double {n}", "output": str(2 * n)}) + "\n" for n in range(12)))
    assert main(["sft", "--data", str(data), "--model", str(tmp_path / "llama"), "--output", str(tmp_path / "run"),
                 "--max-length", "40", "--epochs", "1", "--lr", "0.01", "--no-progress", "--samples", "0"]) == 0
    assert main(["export", "--adapter", str(tmp_path / "run"), "--output", str(tmp_path / "peft")]) == 0
    document = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert document["task_type"] == "CAUSAL_LM"
    ours, _ = load_with_adapters([tmp_path / "run"])
    theirs = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(document["base_model_name_or_path"]),
                                       tmp_path / "peft").eval()
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        torch.testing.assert_close(theirs(input_ids=ids).logits, ours(input_ids=ids).logits, rtol=1e-4, atol=1e-5)


@pytest.mark.integration
@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_real_minilm_merged_folder_gives_our_logits(pooling: str, glue_dir: Path, tmp_path: Path) -> None:
    """MiniLM on 48 MRPC pairs for one short epoch: the point is the loading path, not accuracy."""
    from conftest import minilm_path

    out = tmp_path / "run"
    train(tiny_config(minilm_path(), glue_dir, out, task="mrpc", pooling=pooling, epochs=1.0, batch_size=16,
                      max_train_samples=48, max_eval_samples=16, max_length=64, lr=1e-3, head_lr=1e-3))
    from dynalora.data import get_task, load_split

    pairs = [tuple(e.texts) for e in load_split(get_task("mrpc"), "dev", glue_dir, 8, 0)]
    theirs, ours, model = merged_and_ours(out, tmp_path / "merged", pairs)
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-5)
    assert model.config.id2label == {0: "not_equivalent", 1: "equivalent"}
    export_trained(out, tmp_path / "peft")
    document = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert document["base_model_name_or_path"] == "sentence-transformers/all-MiniLM-L6-v2"

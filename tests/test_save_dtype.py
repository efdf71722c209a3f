"""The pruned checkpoint is saved in the dtype the model came in (or --save-dtype), and reloads to the same logits
as the in-memory pruned model cast to that dtype. Also: size on disk, selection order, model-card lineage."""

import json

import pytest
import torch
import transformers as tf
from safetensors import safe_open

import depthprune as dp
from depthprune.io.formats.hf import resolve_save_dtype
from depthprune.reporting.card import model_card
from depthprune.io.models import gguf_source_dtype
from tiny import tiny_checkpoint

TEXT = " ".join(f"Sentence number {i} talks about layers and pruning." for i in range(200))


@pytest.fixture(scope="module")
def bf16_checkpoint(tmp_path_factory):
    """A tiny Llama checkpoint stored in bfloat16 (config dtype bfloat16), like most Hub checkpoints."""
    root = tmp_path_factory.mktemp("bf16")
    src = tiny_checkpoint(root / "f32", num_layers=6)
    model = tf.AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16)
    model.save_pretrained(root / "bf16")
    tf.AutoTokenizer.from_pretrained(src).save_pretrained(root / "bf16")
    (root / "calib.txt").write_text(TEXT, encoding="utf-8")
    return root


def _saved_dtypes(folder) -> set:
    with safe_open(str(folder / "model.safetensors"), "pt") as handle:
        return {handle.get_tensor(k).dtype for k in handle.keys()}


def _prune(root, **kwargs):
    return dp.prune(str(root / "bf16"), remove=2, data=str(root / "calib.txt"), samples=4, seq_len=32,
                    batch_size=2, progress=False, **kwargs)


@pytest.mark.parametrize("save_dtype, expected", [("auto", torch.bfloat16), ("float32", torch.float32),
                                                   ("float16", torch.float16)])
def test_saved_dtype_and_reloaded_logits(bf16_checkpoint, tmp_path, save_dtype, expected):
    result = _prune(bf16_checkpoint)  # loaded as float32 for scoring
    assert next(result.model.parameters()).dtype == torch.float32
    out = result.save(tmp_path / "out", save_dtype=save_dtype)
    assert _saved_dtypes(out) == {expected}
    assert next(result.model.parameters()).dtype == torch.float32  # the in-memory model is not changed
    config = json.loads((out / "config.json").read_text())
    assert config["dtype"] == str(expected).removeprefix("torch.") and config["num_hidden_layers"] == 4
    record = json.loads((out / "depthprune.json").read_text())
    assert record["save_dtype"] == str(expected).removeprefix("torch.")
    assert record["checkpoint_bytes"] == (out / "model.safetensors").stat().st_size
    assert set(record["timings"]) >= {"loading", "calibration", "scoring", "surgery"}

    reloaded = tf.AutoModelForCausalLM.from_pretrained(out, dtype=expected).eval()
    reference = dp.pruned_copy(tf.AutoModelForCausalLM.from_pretrained(str(bf16_checkpoint / "bf16"),
                                                                        dtype=torch.float32),
                               result.report.removed_layers).to(expected).eval()
    saved, expected_state = reloaded.state_dict(), reference.state_dict()
    assert set(saved) == set(expected_state)
    for name, tensor in expected_state.items():
        assert saved[name].dtype == expected and torch.equal(saved[name], tensor), name
    # logits: same weights; only non-persistent buffers (rotary inv_freq) may differ in precision after .to()
    ids = torch.randint(3, 100, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits.float(), reference(ids).logits.float(), atol=2e-2, rtol=2e-2)


def test_float32_source_stays_float32(bf16_checkpoint, tmp_path):
    src = tiny_checkpoint(tmp_path / "f32", num_layers=6)
    result = dp.prune(src, remove=2, data=str(bf16_checkpoint / "calib.txt"), samples=4, seq_len=32, batch_size=2,
                      progress=False)
    out = result.save(tmp_path / "out")
    assert _saved_dtypes(out) == {torch.float32}


def test_one_shot_records_its_order_least_important_first(bf16_checkpoint, tmp_path):
    result = _prune(bf16_checkpoint)
    order, scores = result.report.selection["order"], result.report.scores
    assert sorted(order) == result.report.removed_layers
    assert [scores[i] for i in order] == sorted(scores[i] for i in order)


def test_card_front_matter_names_a_hub_base_model_only_when_there_is_one(bf16_checkpoint):
    report = _prune(bf16_checkpoint).report
    local = model_card(report).split("\n---\n")[0]
    assert "base_model" not in local and '- "depthprune"' in local
    report.source = {"kind": "hub", "hub_id": "org/model", "source_dtype": "bfloat16"}
    assert 'base_model: "org/model"' in model_card(report).split("\n---\n")[0]
    with pytest.raises(dp.DepthpruneError, match="save-dtype"):
        resolve_save_dtype("int8", "bfloat16", None)


@pytest.mark.real
def test_quantized_gguf_implies_bfloat16():
    from depthprune.io.models import _smollm2_gguf

    assert gguf_source_dtype(_smollm2_gguf()) == "bfloat16"

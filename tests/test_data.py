"""Text sources and the chunking contract of depthprune.data."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from depthprune.io import data
from depthprune.errors import DepthpruneError

from tiny import tiny_tokenizer

TEXT = " ".join(f"word{i} is followed by more words." for i in range(400))


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def test_windows_follow_the_documented_contract(tok):
    calib = data.calibration_from_texts(tok, [TEXT], samples=3, seq_len=16, seed=1)
    stream = tok(TEXT, add_special_tokens=False)["input_ids"]
    prefix = data.special_prefix(tok)
    body = 16 - len(prefix)
    stream = stream[:data.OVERSAMPLE * 3 * body]  # reading stops at 4 x samples windows
    windows = [stream[i:i + body] for i in range(0, len(stream), body) if len(stream[i:i + body]) == body]
    chosen = sorted(torch.randperm(len(windows), generator=torch.Generator().manual_seed(1))[:3].tolist())
    expected = torch.tensor([prefix + windows[i] for i in chosen])
    assert torch.equal(calib.input_ids, expected)
    assert calib.attention_mask.all()
    assert calib.settings["samples"] == 3 and calib.settings["windows_available"] == len(windows)


def test_seed_changes_the_windows_and_is_deterministic(tok):
    a = data.calibration_from_texts(tok, [TEXT], samples=2, seq_len=16, seed=0)
    b = data.calibration_from_texts(tok, [TEXT], samples=2, seq_len=16, seed=0)
    c = data.calibration_from_texts(tok, [TEXT], samples=2, seq_len=16, seed=5)
    assert torch.equal(a.input_ids, b.input_ids)
    assert not torch.equal(a.input_ids, c.input_ids)


def test_documents_are_joined_with_eos(tok):
    stream = data.token_stream(tok, ["alpha beta", "gamma"], max_tokens=1000)
    first = tok("alpha beta", add_special_tokens=False)["input_ids"]
    assert stream[len(first)] == tok.eos_token_id
    assert stream[:len(first)] == first


def test_perplexity_windows_pad_and_mask_the_tail(tok):
    windows = data.sequential_windows(tok, [TEXT], seq_len=32, max_tokens=100)
    assert windows.num_tokens == 100 + len(data.special_prefix(tok)) * len(windows)
    last = windows.attention_mask[-1]
    assert last.sum() < 32 and not last[-1]
    assert (windows.input_ids[-1][~last.bool()] == data.pad_id(tok)).all()


def test_too_short_data_is_a_clear_error(tok):
    with pytest.raises(DepthpruneError, match="too short"):
        data.calibration_from_texts(tok, ["tiny text"], samples=4, seq_len=64)
    with pytest.raises(DepthpruneError, match="too short"):
        data.calibration_from_texts(tok, [], samples=4, seq_len=64)


def test_file_formats_and_directories(tmp_path, tok):
    (tmp_path / "a.txt").write_text("plain text here", encoding="utf-8")
    (tmp_path / "b.jsonl").write_text(json.dumps({"content": "json text"}) + "\n", encoding="utf-8")
    pq.write_table(pa.table({"content": ["parquet text"]}), tmp_path / "c.parquet")
    (tmp_path / "a.txt").write_text("plain text here", encoding="utf-8")
    with pytest.raises(DepthpruneError, match="no 'text' field"):
        list(data.iter_texts(str(tmp_path / "b.jsonl")))
    (tmp_path / "a.txt").unlink()
    texts = list(data.iter_texts(str(tmp_path), text_field="content"))
    assert texts == ["json text", "parquet text"]


def test_gutenberg_boilerplate_is_stripped(tmp_path):
    book = "header\n*** START OF THE PROJECT GUTENBERG EBOOK X ***\nThe story.\n*** END OF THE PROJECT GUTENBERG EBOOK X ***\nlicense"
    (tmp_path / "book.txt").write_text(book, encoding="utf-8")
    assert list(data.iter_texts(str(tmp_path / "book.txt"))) == ["The story.\n"]


def test_builtin_halves_are_disjoint():
    calib = list(data.iter_texts("builtin"))
    held = list(data.iter_texts("builtin:heldout"))
    assert calib and held and not set(calib) & set(held)
    assert sum(map(len, calib)) > 100_000


def test_hf_spec_goes_through_datasets_with_a_local_folder(tmp_path, tok):
    folder = tmp_path / "ds"
    folder.mkdir()
    pq.write_table(pa.table({"text": [TEXT]}), folder / "train.parquet")
    calib = data.build_calibration(f"hf:{folder}", tok, samples=2, seq_len=16)
    assert calib.input_ids.shape == (2, 16)


@pytest.mark.parametrize("spec, message", [
    ("nonsense", "unknown data spec"),
    ("missing/file.txt", "does not exist"),
    ("hf:", "bad dataset spec"),
    ("builtin:nope", "unknown builtin"),
])
def test_bad_specs(spec, message):
    with pytest.raises(DepthpruneError, match=message):
        data.validate_spec(spec)


def test_hf_spec_for_a_missing_dataset_is_one_sentence(tok):
    with pytest.raises(DepthpruneError, match="could not load dataset"):
        data.build_calibration("hf:/nonexistent/dataset/dir", tok, samples=1, seq_len=8)


def test_self_generated_calibration_is_seeded_and_masked():
    from tiny import tiny_model
    model = tiny_model("llama")
    tok = tiny_tokenizer()
    model.resize_token_embeddings(len(tok))
    a = data.self_generated(model, tok, samples=3, seq_len=10, seed=3, batch_size=2, progress=False)
    b = data.self_generated(model, tok, samples=3, seq_len=10, seed=3, batch_size=2, progress=False)
    assert torch.equal(a.input_ids, b.input_ids)
    assert (a.input_ids[:, 0] == tok.bos_token_id).all()
    for row, mask in zip(a.input_ids.tolist(), a.attention_mask.tolist()):
        n = sum(mask)
        assert mask == [1] * n + [0] * (10 - n)
        if n < 10:
            assert row[n - 1] == tok.eos_token_id


def test_from_tensors_checks_shapes():
    with pytest.raises(DepthpruneError, match="must match"):
        data.from_tensors(torch.ones(2, 3, dtype=torch.long), torch.ones(2, 4))
    with pytest.raises(DepthpruneError, match="no real tokens"):
        data.from_tensors(torch.ones(2, 3, dtype=torch.long), torch.zeros(2, 3))

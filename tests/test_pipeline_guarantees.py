"""The README's guarantees on every command and executor: each case is a kind of promise that used to hold on the
main `prune` path only (trust, inputs, flags honoured or refused, early refusals, one sentence for bad files,
read-back). Every command runs as a plan over the same stages and writes through one writer."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from test_hostile import CALIB, TEXT, cli, digest, refused, remote_code_model
from tiny import tiny_checkpoint


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("guarantees")
    model = Path(tiny_checkpoint(root / "tiny", num_layers=4))
    (root / "calib.txt").write_text(TEXT, encoding="utf-8")
    return root, model


@pytest.fixture(scope="module")
def pruned(work):
    """A `depthprune prune` output (the input of repair, report and of the overwrite cases)."""
    import subprocess
    import sys

    from test_hostile import subprocess_env

    root, model = work
    out = root / "pruned"
    proc = subprocess.run([sys.executable, "-m", "depthprune", "-q", "prune", str(model), "--remove", "1",
                           "--data", str(root / "calib.txt"), *CALIB, "--offload", "none", "--out", str(out)],
                          capture_output=True, text=True, env=subprocess_env())
    assert proc.returncode == 0, proc.stderr
    return out


# --------------------------------------------------------------------------- trust


def test_a_recipe_file_cannot_grant_trust_remote_code(work, capsys, tmp_path):
    root, model = work
    marker = tmp_path / "ran"
    evil = remote_code_model(model, tmp_path / "evil", marker)
    recipe = tmp_path / "r.json"
    recipe.write_text(json.dumps({"model": str(evil), "selection": {"layers": [1]},
                                  "runtime": {"trust_remote_code": True}}))
    code, _, err = cli(capsys, "prune", "--recipe", recipe, "--out", tmp_path / "o")
    assert code == 2 and "--trust-remote-code" in err and "only the command line can grant" in err, err
    assert not marker.exists() and not (tmp_path / "o").exists()


@pytest.mark.parametrize("command", [["prune", "--layers", "1", "--offload", "layers"], ["score", "--offload", "layers"],
                                     ["heads"], ["sweep", "--ppl", "builtin:heldout", "--max-remove", "1"],
                                     ["eval", "--ppl", "builtin:heldout"], ["bench"]])
def test_every_command_and_executor_refuses_auto_map_without_the_flag(work, capsys, tmp_path, command):
    root, model = work
    marker = tmp_path / "ran"
    evil = remote_code_model(model, tmp_path / "evil", marker)
    out = ["--out", tmp_path / ("o.json" if command[0] == "score" else "o")] if command[0] not in ("eval", "bench") \
        else []
    refused(cli(capsys, command[0], evil, *command[1:], *out), "trust-remote-code")
    assert not marker.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil"]  # nothing written, nothing copied


# --------------------------------------------------------------------------- inputs are never replaced


def test_heads_cannot_overwrite_a_prune_output(work, pruned, capsys):
    before = digest(pruned)
    refused(cli(capsys, "heads", work[1], "--out", pruned, "--overwrite", *CALIB), "`depthprune prune` output")
    assert digest(pruned) == before


def test_repair_cannot_replace_its_own_input(work, pruned, capsys):
    before = digest(pruned)
    lora = ["--method", "lora", "--repair-data", work[0] / "calib.txt"]
    refused(cli(capsys, "repair", pruned, *lora, "--out", pruned, "--overwrite"), "input")
    refused(cli(capsys, "repair", pruned, *lora, "--out", pruned / "inside"), "inside the input")
    assert digest(pruned) == before


def test_outputs_never_go_inside_an_input_model_or_data_folder(work, capsys, tmp_path):
    root, model = work
    before = digest(model)
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text(TEXT)
    refused(cli(capsys, "heads", model, "--out", model / "heads", *CALIB), "inside the input")
    refused(cli(capsys, "sweep", model, "--ppl", "builtin:heldout", "--max-remove", "1", "--data", data,
                "--out", data / "sweep"), "inside the input")
    refused(cli(capsys, "eval", model, "--ppl", "builtin:heldout", "--json", model / "ppl.json"), "inside the input")
    assert digest(model) == before and sorted(p.name for p in data.iterdir()) == ["a.txt"]


def test_a_scores_file_inside_the_replaced_output_is_an_input(work, capsys, tmp_path):
    root, model = work
    out = tmp_path / "out"
    out.mkdir()
    (out / "scores.json").write_text(json.dumps({"metric": "bi", "scores": [0.1, 0.2, 0.3, 0.4]}))
    (out / "depthprune.json").write_text(json.dumps({"output": {"command": "prune"}}))
    refused(cli(capsys, "prune", model, "--scores", out / "scores.json", "--remove", "1", "--out", out, "--overwrite"),
            "contains the input")
    assert (out / "scores.json").is_file()


def test_a_recipe_folder_is_not_replaced_by_its_replay(pruned, capsys):
    before = digest(pruned)
    refused(cli(capsys, "prune", "--recipe", pruned, "--out", pruned, "--overwrite"), "input")
    assert digest(pruned) == before


def test_a_gguf_record_cannot_land_on_the_data_file(work, capsys, tmp_path):
    from gguf_tiny import write_tiny_gguf

    src = write_tiny_gguf(tmp_path / "in.gguf")
    data = tmp_path / "out.depthprune.json"  # what the record beside out.gguf would be called
    data.write_text(json.dumps({"text": TEXT}) + "\n")
    refused(cli(capsys, "prune", src, "--remove", "1", "--data", data, "--out", tmp_path / "out.gguf", *CALIB),
            "input")
    assert json.loads(data.read_text())["text"] == TEXT


def test_overwrite_never_replaces_a_foreign_gguf_or_record(work, capsys, tmp_path):
    from gguf_tiny import write_tiny_gguf

    src = write_tiny_gguf(tmp_path / "in.gguf")
    foreign = tmp_path / "mine.gguf"
    foreign.write_bytes(b"GGUF my own file")
    refused(cli(capsys, "prune", src, "--layers", "1", "--out", foreign, "--overwrite"), "not an earlier")
    assert foreign.read_bytes() == b"GGUF my own file"
    (tmp_path / "other.depthprune.json").write_text("{}")
    refused(cli(capsys, "prune", src, "--layers", "1", "--out", tmp_path / "other.gguf", "--overwrite"),
            "not an earlier")


def test_a_recipe_file_cannot_grant_overwrite(work, pruned, capsys, tmp_path):
    target = tmp_path / "target"
    shutil.copytree(pruned, target)
    before = digest(target)
    recipe = json.loads((pruned / "depthprune.json").read_text())["recipe"]
    recipe["output"]["overwrite"] = True
    (tmp_path / "r.json").write_text(json.dumps(recipe))
    code, _, err = cli(capsys, "prune", "--recipe", tmp_path / "r.json", "--out", target)
    assert code == 2 and "--overwrite" in err and "only the command line can grant" in err, err
    assert digest(target) == before


def test_eval_writes_nothing_into_the_model(work, capsys, tmp_path, monkeypatch):
    root, model = work
    monkeypatch.chdir(tmp_path)
    before = digest(model)
    code, _, err = cli(capsys, "eval", model, "--ppl", str(root / "calib.txt"), "--seq-len", "32", "--max-tokens",
                       "128", "--json", tmp_path / "ppl.json")
    assert code == 0, err
    assert digest(model) == before and json.loads((tmp_path / "ppl.json").read_text())["ppl"] > 0


# --------------------------------------------------------------------------- flags honoured or refused, never dropped


@pytest.mark.parametrize("flags,conflict", [
    (["--quantize", "int8"], "--quantize"), (["--repair", "lora", "--repair-data", "builtin"], "--repair lora"),
    (["--repair", "linear", "--repair-objective", "cosine"], "--repair-objective cosine"),
    (["--save-dtype", "bfloat16"], "--save-dtype"), (["--eval-ppl", "builtin:heldout"], "--eval-ppl")])
def test_offload_layers_refuses_what_it_cannot_honour(work, capsys, tmp_path, flags, conflict):
    root, model = work
    refused(cli(capsys, "prune", model, "--layers", "1", "--offload", "layers", *flags, "--out", tmp_path / "o"),
            "--offload layers", conflict)
    assert not (tmp_path / "o").exists()


def test_offload_layers_refuses_a_gguf_output(work, capsys, tmp_path):
    refused(cli(capsys, "prune", work[1], "--layers", "1", "--offload", "layers", "--out", tmp_path / "o.gguf"),
            "--offload layers")


def test_gguf_type_on_a_gguf_source_is_honoured_by_export_not_a_byte_cut(tmp_path):
    """A byte-for-byte cut keeps the source's Q8_0 tensors: asked for another type, the plan exports instead."""
    from gguf_tiny import write_tiny_gguf

    from depthprune.pipeline.plan import plan
    from depthprune.recipe.schema import Recipe

    src = write_tiny_gguf(tmp_path / "in.gguf")
    for gguf_type, executor in (("f16", "gguf-cut"), ("q8_0", "in-memory"), ("f32", "in-memory")):
        recipe = Recipe.for_command("prune", str(src), selection={"layers": [1]},
                                    output={"path": str(tmp_path / f"{gguf_type}.gguf"), "format": "gguf",
                                            "gguf_type": gguf_type})
        chosen = plan(recipe)
        assert chosen.executor == executor, (gguf_type, chosen.notes)
        assert "write" in chosen.stages and ("load" in chosen.stages) == (executor == "in-memory")


def test_a_byte_cut_records_the_source_types_it_kept(capsys, tmp_path):
    from gguf import GGUFReader

    from gguf_tiny import write_tiny_gguf

    src = write_tiny_gguf(tmp_path / "in.gguf")
    code, out, err = cli(capsys, "prune", src, "--layers", "1", "--out", tmp_path / "o.gguf")
    assert code == 0, err
    record = json.loads((tmp_path / "o.depthprune.json").read_text())
    assert record["executor"] == "gguf-cut" and "gguf_type" not in record["gguf"]
    assert {t.tensor_type.name for t in GGUFReader(tmp_path / "o.gguf").tensors} == \
        {t.tensor_type.name for t in GGUFReader(src).tensors}


# --------------------------------------------------------------------------- refused before any model work


@pytest.fixture
def no_loading(monkeypatch):
    from depthprune.pipeline.stages import model as stages

    def boom(*args, **kwargs):
        raise AssertionError("the model was loaded before the plan was refused")

    monkeypatch.setattr(stages, "load_model", boom)


def test_layer_counts_are_checked_before_loading(work, capsys, tmp_path, no_loading):
    from gguf_tiny import write_tiny_gguf

    src = write_tiny_gguf(tmp_path / "in.gguf")
    refused(cli(capsys, "prune", src, "--remove", "40", "--out", tmp_path / "o"), "4")
    refused(cli(capsys, "prune", work[1], "--layers", "9", "--offload", "none", "--out", tmp_path / "o"), "9")


def test_a_missing_optional_dependency_is_refused_before_loading(work, capsys, tmp_path, no_loading, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_peft(name, *args, **kwargs):
        if name == "peft" or name.startswith("peft."):
            raise ImportError("no peft")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_peft)
    refused(cli(capsys, "prune", work[1], "--remove", "1", "--repair", "lora", "--repair-data", work[0] / "calib.txt",
                "--out", tmp_path / "o"), "peft")


def test_an_unwritable_destination_is_refused_before_loading(work, capsys, tmp_path, no_loading):
    (tmp_path / "afile").write_text("x")
    refused(cli(capsys, "prune", work[1], "--remove", "1", "--offload", "none", "--out",
                tmp_path / "afile" / "o.gguf"), "afile")


# --------------------------------------------------------------------------- files the user supplied: one sentence


def test_a_hand_edited_record_given_to_repair_is_one_sentence(pruned, capsys, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(pruned, broken)
    record = json.loads((broken / "depthprune.json").read_text())
    record["removed_layers"] = "one"
    (broken / "depthprune.json").write_text(json.dumps(record))
    refused(cli(capsys, "repair", broken, "--method", "lora", "--repair-data", str(broken / "README.md"),
                "--out", tmp_path / "r"), "depthprune.json")


def test_a_shard_index_that_lies_is_one_sentence(work, capsys, tmp_path):
    root, model = work
    lying = tmp_path / "lying"
    shutil.copytree(model, lying)
    (lying / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"lm_head.weight": "../x"}}))
    refused(cli(capsys, "prune", lying, "--layers", "1", "--out", tmp_path / "o"), "index")


def test_a_scores_file_without_its_fields_is_one_sentence(work, capsys, tmp_path):
    (tmp_path / "s.json").write_text(json.dumps({"scores": "high"}))
    refused(cli(capsys, "prune", work[1], "--scores", tmp_path / "s.json", "--remove", "1", "--out", tmp_path / "o"),
            "s.json")


# --------------------------------------------------------------------------- the read-back check in the pipeline


def test_a_checkpoint_that_would_load_wrong_is_not_delivered(work, capsys, tmp_path, monkeypatch):
    """Break the writer (drop one kept layer's tensor from the saved file): the run fails and leaves nothing."""
    from depthprune.io.formats import hf
    from depthprune.pipeline.stages import write

    real = hf.save_checkpoint

    def lossy(model, tokenizer, folder, dtype_name, **kwargs):
        real(model, tokenizer, folder, dtype_name, **kwargs)
        from safetensors.torch import load_file, save_file

        tensors = load_file(folder / "model.safetensors")
        tensors.pop("model.layers.0.mlp.up_proj.weight")
        save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})

    monkeypatch.setattr(write, "save_checkpoint", lossy)
    refused(cli(capsys, "prune", work[1], "--remove", "1", "--data", work[0] / "calib.txt", *CALIB, "--offload",
                "none", "--out", tmp_path / "o"), "randomly initialised")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_quantize_on_a_conv1d_model_is_refused_not_saved_as_float(capsys, tmp_path, no_loading):
    gpt2 = tiny_checkpoint(tmp_path / "gpt2", family="gpt2", num_layers=4)
    refused(cli(capsys, "prune", gpt2, "--layers", "1", "--quantize", "int4", "--out", tmp_path / "o"), "Conv1D")
    assert not (tmp_path / "o").exists()


def test_a_gguf_whose_block_count_lies_is_refused_before_any_work(capsys, tmp_path, no_loading):
    from gguf_tiny import write_tiny_gguf

    good = write_tiny_gguf(tmp_path / "in.gguf", n_layers=4)
    data = bytearray(good.read_bytes())
    key = b"llama.block_count"
    at = data.index(key) + len(key) + 4
    data[at:at + 4] = (8).to_bytes(4, "little")  # 4 blocks present, 8 declared
    lying = tmp_path / "lying.gguf"
    lying.write_bytes(bytes(data))
    refused(cli(capsys, "score", lying, "--out", tmp_path / "s.json"), "block_count is 8")
    refused(cli(capsys, "prune", lying, "--layers", "1", "--out", tmp_path / "o.gguf"), "block_count is 8")


def test_a_safetensors_header_that_claims_more_than_the_file_is_refused(work, capsys, tmp_path, no_loading):
    import struct

    lying = tmp_path / "lying"
    shutil.copytree(work[1], lying)
    path = lying / "model.safetensors"
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    name = next(k for k in header if k != "__metadata__")
    header[name]["data_offsets"][1] = 2 ** 60
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + raw[8 + n:])
    refused(cli(capsys, "prune", lying, "--layers", "1", "--out", tmp_path / "o"), "model.safetensors")
    refused(cli(capsys, "score", lying, "--offload", "layers", "--out", tmp_path / "s.json"), "model.safetensors")


@pytest.mark.parametrize("flags,fragment", [
    (["--remove-per-layer", "5"], "more than the 2 KV groups"),
    (["--remove-per-layer", "2"], "all of the 2 KV groups"),
    (["--remove-per-layer", "4", "--remove-unit", "query"], "all of the 4 query heads"),
])
def test_heads_counts_beyond_what_a_layer_has_are_refused_not_clamped(work, capsys, tmp_path, no_loading, flags,
                                                                      fragment):
    """The tiny model has 4 query heads in 2 KV groups per layer."""
    refused(cli(capsys, "heads", work[1], *flags, "--out", tmp_path / "h"), fragment)
    assert not (tmp_path / "h").exists()

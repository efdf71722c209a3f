"""Layer-streamed scoring against in-memory scoring (same hooks-free reference: run_layer_metrics)."""

import pytest
import torch

from depthprune.io.data import from_tensors
from depthprune.errors import DepthpruneError
from depthprune.importance.metrics import make_metric
from depthprune.importance.streamed import ActivationStore, StreamedModel, check_streamable, run_layer_metrics_streamed
from depthprune.importance.scoring import run_layer_metrics

from tiny import ARCHS, batch, tiny_model

METRICS = ["bi", "relative-magnitude", "angular", "angular-all"]


def metrics_for(n):
    return [make_metric(name, n, block_sizes=(1, 2)) for name in METRICS]


@pytest.mark.parametrize("family", sorted(ARCHS))
def test_streamed_scores_equal_in_memory_scores(family, tmp_path):
    model = tiny_model(family)
    model.save_pretrained(tmp_path / "ckpt", max_shard_size="40KB")
    ids, mask = batch(n=5, t=12)
    calibration = from_tensors(ids, mask)
    n = model.config.num_hidden_layers
    expected = metrics_for(n)
    run_layer_metrics(model, calibration, expected, batch_size=2, progress=False)

    streamed = StreamedModel(tmp_path / "ckpt")
    got = metrics_for(n)
    # budget for about one batch: the other batches are spilled to disk and read back
    stats = run_layer_metrics_streamed(streamed, calibration, got, batch_size=2, activation_budget_bytes=2 * 12 * 32 * 4,
                                       spill_dir=tmp_path, progress=False)
    for e, g in zip(expected, got):
        torch.testing.assert_close(g.result(), e.result(), atol=1e-6, rtol=0, msg=f"{family} {e.name}")
        if e.name.startswith("angular"):
            for size, values in e.block_result().items():
                torch.testing.assert_close(torch.tensor(g.block_result()[size]), torch.tensor(values),
                                           atol=1e-6, rtol=0)
    assert stats.spilled_bytes > 0 and stats.tokens == int(mask.sum())
    assert stats.activation_peak_bytes <= stats.activation_budget_bytes
    # every layer went back to the meta device: one layer at a time was held
    assert all(p.device.type == "meta" for layer in streamed.layers for p in layer.parameters())
    # the embeddings were needed only to capture the first layer's inputs; a second pass reads them again
    assert streamed.model.get_input_embeddings().weight.device.type == "meta"
    assert list(tmp_path.glob("depthprune-activations-*")) == []  # spill directory removed
    again = metrics_for(n)
    run_layer_metrics_streamed(streamed, calibration, again, batch_size=2, progress=False)
    for e, g in zip(expected, again):
        torch.testing.assert_close(g.result(), e.result(), atol=1e-6, rtol=0, msg=f"{family} {e.name}")
    # last_layer: the layers after it are never read
    done, before = [], streamed.bytes_read
    run_layer_metrics_streamed(streamed, calibration, [], batch_size=2, progress=False, last_layer=1,
                               after_layer=done.append)
    assert done == [0, 1] and streamed.bytes_read - before == stats.bytes_read // n * 2


def test_activation_store_memory_and_disk(tmp_path):
    store = ActivationStore(budget_bytes=64, spill_dir=tmp_path)
    a, b = torch.arange(16, dtype=torch.float32), torch.arange(16, 32, dtype=torch.float32)
    store.put(0, a)
    store.put(1, b)  # over budget: goes to disk
    assert store.memory_bytes == 64 and store.spilled_bytes == 64
    assert torch.equal(store.get(1), b) and store.get(0) is a
    store.put(0, b * 2)
    assert torch.equal(store.get(0), b * 2)
    store.close()
    assert list(tmp_path.iterdir()) == []


def test_metrics_that_cannot_stream_are_refused():
    for name in ("taylor", "ppl"):
        with pytest.raises(DepthpruneError, match="cannot be layer-streamed"):
            check_streamable(["bi", name])
    check_streamable(["bi", "angular", "reverse-order"])


def test_offload_auto_streams_only_when_the_weights_do_not_fit(tmp_path, monkeypatch):
    from depthprune.importance import streamed
    from depthprune.io.sources import inspect_source
    from depthprune.pipeline import plan as planner
    from depthprune.recipe.schema import Recipe

    tiny_model("llama").save_pretrained(tmp_path)
    need = streamed.checkpoint_bytes(tmp_path, torch.float32)
    assert need == sum(p.numel() * 4 for p in tiny_model("llama").state_dict().values())  # from the headers
    recipe = Recipe.for_command("score", str(tmp_path), runtime={"offload": "auto"}, output={"path": "s.json"})
    source = inspect_source(str(tmp_path))
    assert source.memory_bytes(4) == need
    monkeypatch.setattr(planner, "memory_available_bytes", lambda: need)  # fits only with no headroom
    assert planner.choose_executor(recipe, source)[0] == "layer-streamed"
    monkeypatch.setattr(planner, "memory_available_bytes", lambda: 10 * need)
    assert planner.choose_executor(recipe, source)[0] == "in-memory"
    demo = Recipe.for_command("score", "smollm2-135m", runtime={"offload": "layers"}, output={"path": "s.json"})
    with pytest.raises(DepthpruneError, match="needs a local safetensors checkpoint"):
        planner.choose_executor(demo, planner.ModelSource("smollm2-135m", "demo"))


@pytest.mark.parametrize("selection, extra, fits, executor", [
    ({"layers": [1, 2]}, {}, True, "on-disk"),                       # nothing needs a forward pass: cut on disk
    ({"scores": "SCORES", "remove": 2}, {}, False, "on-disk"),       # even when it would not fit
    ({"layers": [1, 2]}, {"evaluation": {"ppl": "builtin"}}, True, "in-memory"),
    ({"remove": 2}, {}, True, "in-memory"),
    ({"remove": 2}, {}, False, "layer-streamed"),                    # scoring a model that does not fit
    ({"layers": [1, 2]}, {"repair": {"methods": ["linear"]}}, True, "in-memory"),
    ({"layers": [1, 2]}, {"repair": {"methods": ["linear"]}}, False, "layer-streamed"),
    ({"remove": 2}, {"repair": {"methods": ["lora"], "data": "builtin"}}, False, "in-memory"),  # lora: whole model
])
def test_prune_defaults_to_the_fastest_path_that_fits(tmp_path, monkeypatch, selection, extra, fits, executor):
    """``--offload auto`` (the default) for prune: the plan's executor, from the checkpoint's headers alone."""
    from depthprune.importance import streamed
    from depthprune.io.sources import inspect_source
    from depthprune.pipeline import plan as planner
    from depthprune.recipe.schema import Recipe

    tiny_model("llama").save_pretrained(tmp_path / "ckpt")
    need = streamed.checkpoint_bytes(tmp_path / "ckpt", torch.float32)
    monkeypatch.setattr(planner, "memory_available_bytes", lambda: 10 * need if fits else need // 2)
    selection = {k: (str(tmp_path / "s.json") if v == "SCORES" else v) for k, v in selection.items()}
    recipe = Recipe.for_command("prune", str(tmp_path / "ckpt"), selection=selection,
                                output={"path": str(tmp_path / "out")}, **extra)
    chosen, notes = planner.choose_executor(recipe, inspect_source(str(tmp_path / "ckpt")))
    assert chosen == executor, notes
    assert notes[0].startswith(executor)

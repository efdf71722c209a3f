"""Layer-streamed scoring: one decoder layer in memory at a time, for models larger than memory.

The model is built as a weightless skeleton (accelerate ``init_empty_weights``: every parameter on
the meta device); only the tensors outside the decoder layers that the forward needs before the first
layer (embeddings, position embeddings, the final norm; never the LM head) are loaded. Then:

1. Capture: each calibration batch goes through the model's own forward with every decoder layer
   stubbed (identity, nothing computed) while the hooks of
   :func:`depthprune.loss_metrics.capture_layer_calls` (the same mechanism as the greedy-ppl activation
   cache) record each layer's exact call arguments (rotary embeddings, per-layer-type masks, position
   ids) and the first layer's input.
2. Layer by layer: layer ``i``'s tensors are read from the memory-mapped safetensors shards, every batch
   runs through it with its captured arguments, the streaming metrics get the layer's input and output
   (:meth:`depthprune.metrics.LayerMetric.update`, same order of additions per layer as in-memory
   scoring), the output replaces the input, and the layer goes back to the meta device.

Tensors are read with plain file reads, not memory maps (a mapped shard's pages count as resident until it is
unmapped), and the embeddings are dropped once every batch is captured. Activations between layers live in an
:class:`ActivationStore`: in memory up to a byte budget, spilled to disk (safetensors files in a private temp
directory) beyond it and read back in order. Peak memory is about one layer (plus one tensor at the checkpoint's
dtype while it is cast) + the activation budget + the per-batch call arguments (rotary tables, masks), independent
of depth; the embeddings count only while the batches are captured.

What cannot stream: ``taylor`` needs a backward pass through the whole model; ``ppl`` (and greedy-ppl)
re-run every layer after each candidate, i.e. one activation set per candidate; both are refused here.
The angular metrics keep, per batch, the reduced inputs of the last ``max(block size)`` layers: their
per-batch state is swapped in and out around each update.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from depthprune.arch.layout import layout
from depthprune.io.data import CalibrationSet
from depthprune.errors import DepthpruneError, NonFiniteActivationError
from depthprune.importance.loss_metrics import LayerCapture, _LayerCall, call_layer, capture_layer_calls
from depthprune.importance.metrics import AngularDistance, LayerMetric
from depthprune.arch.skeleton import layer_keys, meta_skeleton
from depthprune.io.models import check_local_config
from depthprune.io.safetensors import TensorEntry, checkpoint_shards, read_header, read_tensor, tensor_index

log = logging.getLogger(__name__)

NOT_STREAMABLE = {
    "taylor": "taylor needs a backward pass through the whole model at once",
    "ppl": "ppl re-runs every layer after each skipped candidate, which needs one activation set per candidate",
}


def _load_libc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


_LIBC = _load_libc()


def return_freed_memory() -> None:
    """Hand memory freed inside the process back to the OS (glibc ``malloc_trim``; a no-op elsewhere). A layer's
    tensors are tens of MB, below glibc's mmap threshold once it has adapted, so freed layers stay in the heap and
    the resident set would grow by about one layer per layer streamed; trimming after each keeps it flat."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


class _StopAfterCapture(Exception):
    """Raised by the last stubbed layer: the captured arguments are all there, nothing after is needed."""


# ---------------------------------------------------------------------------------------------------------------
# activations between layers


class ActivationStore:
    """Per-batch hidden states: kept in memory up to ``budget_bytes``, spilled to disk beyond it."""

    def __init__(self, budget_bytes: int, spill_dir: str | Path | None = None):
        self.budget = int(budget_bytes)
        self._parent = spill_dir
        self._dir: Path | None = None
        self._memory: dict[int, torch.Tensor] = {}
        self._disk: dict[int, tuple[Path, torch.device]] = {}
        self.memory_bytes = 0
        self.peak_memory_bytes = 0
        self.spilled_bytes = 0  # total bytes written to disk over the run

    @staticmethod
    def _nbytes(t: torch.Tensor) -> int:
        return t.numel() * t.element_size()

    def put(self, key: int, tensor: torch.Tensor) -> None:
        self.drop(key)
        size = self._nbytes(tensor)
        if self.memory_bytes + size <= self.budget:
            self._memory[key] = tensor
            self.memory_bytes += size
            self.peak_memory_bytes = max(self.peak_memory_bytes, self.memory_bytes)
            return
        from safetensors.torch import save_file

        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="depthprune-activations-", dir=self._parent))
        path = self._dir / f"{key}.safetensors"
        save_file({"h": tensor.detach().contiguous().cpu()}, str(path))
        self._disk[key] = (path, tensor.device)
        self.spilled_bytes += size

    def get(self, key: int) -> torch.Tensor:
        if key in self._memory:
            return self._memory[key]
        from safetensors.torch import load_file

        path, device = self._disk[key]
        return load_file(str(path))["h"].to(device)

    def drop(self, key: int) -> None:
        if key in self._memory:
            self.memory_bytes -= self._nbytes(self._memory.pop(key))
        if key in self._disk:
            self._disk.pop(key)[0].unlink(missing_ok=True)

    def close(self) -> None:
        self._memory.clear()
        self._disk.clear()
        self.memory_bytes = 0
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


# ---------------------------------------------------------------------------------------------------------------
# the weightless model and its layers, loaded one at a time


def _module_tensor_names(module: nn.Module) -> set[str]:
    return {n for n, _ in module.named_parameters()} | {n for n, _ in module.named_buffers()}


class StreamedModel:
    """A causal LM whose decoder layers stay on the meta device until :meth:`load_layer` reads them from disk."""

    def __init__(self, model_dir: str | Path, *, dtype: torch.dtype = torch.float32, device: str = "cpu",
                 trust_remote_code: bool = False):
        from accelerate.utils import set_module_tensor_to_device

        self._set = set_module_tensor_to_device
        self.model_dir = Path(model_dir).expanduser()
        self.dtype = dtype
        self.device = torch.device(device)
        self.config = check_local_config(self.model_dir, trust_remote_code)
        self.model = meta_skeleton(self.config, trust_remote_code, dtype=dtype).eval()
        self.layout = layout(self.model)
        self.layers = self.layout.layers(self.model)
        self.num_layers = len(self.layers)
        index = tensor_index(self.model_dir)
        self.where: dict[str, Path] = {name: shard for name, (shard, _) in index.items()}
        self.entries: dict[str, TensorEntry] = {name: entry for name, (_, entry) in index.items()}
        self.keys = layer_keys(self.config, list(self.where), self.model, trust_remote_code)
        self.layer_tensors: list[list[str]] = [[] for _ in range(self.num_layers)]
        other: list[str] = []
        for key in self.where:
            split = self.keys.split(key)
            (other if split is None else self.layer_tensors[split[0]]).append(key)
        self._names = _module_tensor_names(self.model)
        self._skeleton_real = [{n for n, t in list(layer.named_parameters()) + list(layer.named_buffers())
                                if t.device.type != "meta"} for layer in self.layers]
        head = self.model.get_output_embeddings()
        head_names = {f"{name}." for name, m in self.model.named_modules() if m is head and head is not None}
        # Outside the layers only what runs before them is needed: never the LM head (nor a tensor of another
        # name that the model does not have, e.g. GPT-NeoX's embed_out, which is its LM head).
        needed = [k for k in other if k in self._names and not any(k.startswith(h) for h in head_names)]
        skipped = [k for k in other if k not in needed]
        if skipped:
            log.info("not loaded (not needed before the first layer): %s", ", ".join(skipped))
        self.weights_bytes = checkpoint_bytes(self.model_dir, dtype)
        self._resident = needed
        self.resident_bytes = self._load(needed)
        self._resident_loaded = True
        self._move_real_buffers(self.model)
        self.bytes_read = 0
        self.layer_bytes_max = 0

    def _load(self, keys: Sequence[str]) -> int:
        """Read ``keys`` from the shards into the skeleton (cast to the scoring dtype); bytes now held. Each tensor
        is read with plain file reads (:func:`read_tensor`), so at most one tensor is held twice while it is cast."""
        total = 0
        converted: dict[str, torch.Tensor] = {}
        for name in keys:
            tensor = read_tensor(self.where[name], self.entries[name])
            dtype = self.dtype if tensor.is_floating_point() else None
            total += tensor.numel() * (tensor.element_size() if dtype is None else
                                       torch.empty((), dtype=dtype).element_size())
            if name in self._names:
                self._set(self.model, name, self.device, value=tensor, dtype=dtype)
            else:
                converted[name] = tensor
            del tensor
        if converted:
            self._load_converted(converted)
        return total

    def _load_converted(self, tensors: dict[str, torch.Tensor]) -> None:
        """Tensors stored under other names than the module's (Mixtral's per-expert w1/w2/w3 -> fused experts):
        transformers' own weight conversion, the one ``from_pretrained`` applies, loads them."""
        try:
            from transformers.conversion_mapping import get_model_conversion_mapping
            from transformers.core_model_loading import convert_and_load_state_dict_in_model
            from transformers.modeling_utils import LoadStateDictConfig
        except ImportError:
            raise DepthpruneError(
                f"checkpoint tensor '{next(iter(tensors))}' is named differently from the model's own tensor and "
                "this transformers version has no weight-conversion API; score this model in memory") from None
        from transformers.utils import logging as hf_logging

        config = LoadStateDictConfig(dtype=self.dtype, weight_mapping=get_model_conversion_mapping(self.model),
                                     device_map={"": str(self.device)})
        was_enabled = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        try:
            convert_and_load_state_dict_in_model(model=self.model, state_dict=tensors, load_config=config)
        finally:
            if was_enabled:
                hf_logging.enable_progress_bar()

    def _move_real_buffers(self, module: nn.Module) -> None:
        """Non-persistent buffers (rotary inv_freq, ...) are built on the CPU by the skeleton; move them."""
        if self.device.type == "cpu":
            return
        for name, buf in list(module.named_buffers()):
            if buf.device.type not in ("meta", self.device.type):
                self._set(module, name, self.device, value=buf)

    def release_resident(self) -> None:
        """Drop the tensors outside the layers (embeddings, norms) once every batch is captured: the layers need
        only the captured inputs. :meth:`capture` reads them again when it is called next."""
        for name in self._resident:
            self._set(self.model, name, "meta")
        self._resident_loaded = False
        return_freed_memory()

    def load_layer(self, index: int) -> nn.Module:
        size = self._load(self.layer_tensors[index])
        self.bytes_read += size
        self.layer_bytes_max = max(self.layer_bytes_max, size)
        self._move_real_buffers(self.layers[index])
        return self.layers[index]

    def free_layer(self, index: int) -> None:
        layer = self.layers[index]
        for name, tensor in list(layer.named_parameters()) + list(layer.named_buffers()):
            if tensor.device.type != "meta" and name not in self._skeleton_real[index]:
                self._set(layer, name, "meta")
        return_freed_memory()

    @contextlib.contextmanager
    def stubbed_layers(self) -> Iterator[None]:
        """Every decoder layer hands back its input unchanged; the last one stops the forward pass."""
        last = self.num_layers - 1
        for j, layer in enumerate(self.layers):
            def stub(*args, _j=j, **kwargs):
                if _j == last:
                    raise _StopAfterCapture
                return args[0] if args else kwargs["hidden_states"]

            layer.forward = stub
        try:
            yield
        finally:
            for layer in self.layers:
                del layer.forward

    def capture(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> LayerCapture:
        """The first layer's input and every layer's call arguments for one batch, from the model's own forward."""
        if not self._resident_loaded:
            self._load(self._resident)
            self._move_real_buffers(self.model)
            self._resident_loaded = True
        with capture_layer_calls(self.layers) as seen, self.stubbed_layers(), torch.inference_mode():
            try:
                self.model(input_ids=input_ids.to(self.device), attention_mask=attention_mask.to(self.device),
                           use_cache=False)
            except _StopAfterCapture:
                pass
            else:  # pragma: no cover - only if a model bypasses its layer modules
                raise RuntimeError("the forward pass finished without reaching the last decoder layer")
        if len(seen.calls) != self.num_layers:
            raise RuntimeError("the forward pass did not call every decoder layer")
        return seen


# ---------------------------------------------------------------------------------------------------------------
# scoring


@dataclass
class StreamStats:
    """What a streamed scoring run held and moved (bytes)."""

    num_layers: int
    weights_bytes: int          # all checkpoint tensors at the scoring dtype
    resident_bytes: int         # tensors outside the layers, held while the batches are captured (embeddings, norm)
    layer_bytes_max: int        # the largest decoder layer
    activation_budget_bytes: int
    activation_peak_bytes: int  # most activation bytes held in memory at once
    spilled_bytes: int          # activation bytes written to disk over the run
    bytes_read: int             # layer bytes read from the checkpoint
    seconds: float
    tokens: int = 0
    device: str = "cpu"
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)


class _PerBatchAngular:
    """Angular metrics keep the last layers' reduced inputs of the *current batch*; streaming visits a layer's
    batches one after another, so each batch's state is swapped in before and out after its update."""

    def __init__(self, metric: AngularDistance):
        self.metric = metric
        self.states: dict[int, dict] = {}

    def update_batch(self, batch: int, layer: int, x_in, x_out, mask) -> None:
        self.metric._inputs = self.states.get(batch, {})
        self.metric.update(layer, x_in, x_out, mask)
        self.states[batch] = self.metric._inputs
        self.metric._inputs = {}


def check_streamable(metric_names: Sequence[str]) -> None:
    for name in metric_names:
        if name in NOT_STREAMABLE:
            raise DepthpruneError(f"metric '{name}' cannot be layer-streamed ({NOT_STREAMABLE[name]}); "
                                  "drop --offload layers or choose bi, angular, angular-all or relative-magnitude")


def run_layer_metrics_streamed(streamed: StreamedModel, calibration: CalibrationSet, metrics: Sequence[LayerMetric],
                               *, batch_size: int = 8, activation_budget_bytes: int = 1 << 30,
                               spill_dir: str | Path | None = None, progress: bool = True,
                               last_layer: int | None = None, after_layer: Callable[[int], None] | None = None
                               ) -> StreamStats:
    """Feed every layer's input/output to ``metrics`` like :func:`depthprune.scoring.run_layer_metrics`,
    holding one decoder layer at a time. Returns what was held and moved.

    Layers are visited in order, every batch through a layer before the next layer: a metric that keeps state per
    batch between layers has ``update_batch(batch, layer, x_in, x_out, mask)``, which is called instead of
    ``update``. ``last_layer``: stop after this layer (the layers after it are never read). ``after_layer(i)`` runs
    once every batch has been through layer ``i``."""
    t0 = time.perf_counter()
    store = ActivationStore(activation_budget_bytes, spill_dir)
    wrapped = [_PerBatchAngular(m) if isinstance(m, AngularDistance) else m for m in metrics]
    masks: list[torch.Tensor] = []
    calls: list[list[_LayerCall]] = []
    tokens = 0
    end = streamed.num_layers if last_layer is None else last_layer + 1
    try:
        with torch.inference_mode():
            for b, (ids, mask) in enumerate(calibration.batches(batch_size)):
                seen = streamed.capture(ids, mask)
                store.put(b, seen.inputs[0])
                calls.append([seen.calls[j] for j in range(end)])
                masks.append(mask.bool())
                tokens += int(mask.sum())
            streamed.release_resident()
            for i in tqdm(range(end), desc="layers (streamed)", disable=not progress, unit="layer"):
                layer = streamed.load_layer(i)
                try:
                    for b in range(len(masks)):
                        x_in = store.get(b)
                        x_out = call_layer(layer, calls[b][i], x_in)
                        if not bool(torch.isfinite(x_out.sum(dtype=torch.float32))):
                            raise NonFiniteActivationError(
                                f"layer {i} produced NaN or inf activations in {x_out.dtype}; "
                                "try --dtype float32 (or bfloat16 instead of float16)")
                        mask = masks[b].to(x_out.device)
                        for metric in wrapped:
                            if hasattr(metric, "update_batch"):
                                metric.update_batch(b, i, x_in, x_out, mask)
                            else:
                                metric.update(i, x_in, x_out, mask)
                        del x_in
                        store.put(b, x_out)
                        del x_out
                finally:
                    streamed.free_layer(i)
                if after_layer is not None:
                    after_layer(i)
    finally:
        peak, spilled = store.peak_memory_bytes, store.spilled_bytes
        store.close()
    return StreamStats(streamed.num_layers, streamed.weights_bytes, streamed.resident_bytes,
                       streamed.layer_bytes_max, int(activation_budget_bytes), peak, spilled, streamed.bytes_read,
                       time.perf_counter() - t0, tokens, str(streamed.device))


DEFAULT_BUDGET_MAX = 1 << 30


def activation_budget_bytes(streamed: StreamedModel, budget_mb: int | None) -> int:
    """The activation budget in bytes: as given, or by default a tenth of the weights at the compute dtype and at
    most 1 GiB, so that what streaming holds stays a small share of what loading the model would."""
    if budget_mb is not None:
        return int(budget_mb) << 20
    return min(DEFAULT_BUDGET_MAX, streamed.weights_bytes // 10)


def memory_available_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (Linux); None where it cannot be read."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def checkpoint_bytes(model_dir: str | Path, dtype: torch.dtype = torch.float32) -> int:
    """Bytes the checkpoint's tensors take in memory at ``dtype`` (floating tensors cast), from the headers."""
    width = torch.empty((), dtype=dtype).element_size()
    total = 0
    for shard in checkpoint_shards(Path(model_dir).expanduser()):
        for e in read_header(shard)[0]:
            n = 1
            for s in e.shape:
                n *= int(s)
            total += n * (width if e.dtype in ("F64", "F32", "F16", "BF16") else e.nbytes // max(n, 1))
    return total


def should_stream(model_dir: str | Path, dtype: torch.dtype, *, headroom: float = 0.8) -> bool:
    """True when the weights at ``dtype`` would take more than ``headroom`` of the available memory."""
    available = memory_available_bytes()
    if available is None:
        return False
    need = checkpoint_bytes(model_dir, dtype)
    log.info("weights need %.2f GiB, %.2f GiB available", need / 2**30, available / 2**30)
    return need > headroom * available


__all__ = ["ActivationStore", "DEFAULT_BUDGET_MAX", "NOT_STREAMABLE", "activation_budget_bytes", "StreamStats", "StreamedModel", "check_streamable",
           "checkpoint_bytes", "memory_available_bytes", "return_freed_memory", "run_layer_metrics_streamed", "should_stream"]

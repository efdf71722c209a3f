"""LoRA healing of a pruned model with peft, merged back into plain weights.

One pass over a token budget of repair text, with either the next-token loss or ``distill``: the KL
divergence ``KL(p_dense || p_pruned)`` to the dense model's next-token distribution, computed on the fly
(the dense model stays in memory next to the student: its weights plus one batch of teacher logits,
``batch_size x seq_len x vocab x 4`` bytes). Held-out next-token loss is measured before training and every
``eval_every`` steps on windows disjoint from the training windows; training stops as soon as it rises and
the adapter weights of the best evaluation are kept. The adapters are then merged (``merge_and_unload``),
so the result is the model's own architecture again.

Determinism: the LoRA initialisation and the data order come from ``seed`` (the global RNG state is
restored afterwards); dropout is off (the model stays in eval mode, ``lora_dropout=0``), so the same seed,
data, device and thread count give the same weights.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from depthprune.io.data import CalibrationSet, build_calibration
from depthprune.errors import DepthpruneError
from depthprune.importance.loss_metrics import next_token_nll
from depthprune.arch.layout import input_device
from depthprune.repair.families import lora_targets

log = logging.getLogger(__name__)


@dataclass
class LoraRepairReport:
    objective: str                  # "next-token" or "distill"
    rank: int
    alpha: float
    lr: float
    targets: list[str]
    seed: int
    batch_size: int
    seq_len: int
    train_tokens: int               # real tokens in the training windows (the budget actually used)
    steps_planned: int
    steps_done: int
    best_step: int
    stopped_early: bool
    heldout_tokens: int
    heldout: list[dict] = field(default_factory=list)   # [{"step": s, "loss": mean NLL}]
    trainable_params: int = 0
    seconds: float = 0.0

    def to_json(self) -> dict:
        return asdict(self)


def repair_data(tokenizer, spec: str, *, tokens: int, seq_len: int = 256, seed: int = 0,
                heldout_fraction: float = 0.1, text_field: str = "text") -> tuple[CalibrationSet, CalibrationSet]:
    """Disjoint training and held-out windows from a text SPEC: ``tokens`` for training, a fraction more held out."""
    if tokens < seq_len:
        raise DepthpruneError(f"--repair-tokens {tokens} is smaller than one window of {seq_len} tokens; "
                              "raise it or lower the repair sequence length")
    train_rows = max(1, tokens // seq_len)
    held_rows = max(1, math.ceil(train_rows * heldout_fraction))
    data = build_calibration(spec, tokenizer, samples=train_rows + held_rows, seq_len=seq_len, seed=seed,
                             text_field=text_field)
    if len(data) < 2:
        raise DepthpruneError(f"repair data '{spec}' gives fewer than 2 windows of {seq_len} tokens; give more text")
    held_rows = min(held_rows, len(data) - 1)
    cut = len(data) - held_rows
    settings = dict(data.settings)
    train = CalibrationSet(data.input_ids[:cut], data.attention_mask[:cut], {**settings, "part": "train"})
    held = CalibrationSet(data.input_ids[cut:], data.attention_mask[cut:], {**settings, "part": "heldout"})
    return train, held


def _mean_nll(model: nn.Module, data: CalibrationSet, batch_size: int) -> float:
    device = input_device(model)
    total, count = 0.0, 0
    with torch.inference_mode():
        for ids, mask in data.batches(batch_size):
            ids, mask = ids.to(device), mask.to(device)
            nll, n = next_token_nll(model(input_ids=ids, attention_mask=mask, use_cache=False).logits, ids, mask)
            total, count = total + float(nll), count + n
    return total / max(count, 1)


def _kl_to_teacher(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over real positions of KL(p_teacher || p_student) of the next-token distributions."""
    keep = mask[:, :-1].bool() & mask[:, 1:].bool()
    s = F.log_softmax(student_logits[:, :-1][keep].float(), dim=-1)
    t = F.log_softmax(teacher_logits[:, :-1][keep].float(), dim=-1)
    return (t.exp() * (t - s)).sum(-1).mean()


def lora_repair(model: nn.Module, train: CalibrationSet, heldout: CalibrationSet | None = None, *,
                teacher: nn.Module | None = None, rank: int = 8, alpha: float = 16.0, lr: float = 1e-3,
                batch_size: int = 4, eval_every: int = 10, seed: int = 0, targets: list[str] | None = None,
                progress: bool = True) -> tuple[nn.Module, LoraRepairReport]:
    """Train LoRA adapters on ``model`` (modified in place) for one pass over ``train``, merge, return it.

    ``teacher`` switches the loss from next-token prediction to distillation from the teacher's logits.
    """
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise DepthpruneError("LoRA repair needs peft: pip install 'depthprune[repair]'") from exc
    if rank < 1 or lr <= 0 or batch_size < 1 or eval_every < 1:
        raise DepthpruneError("LoRA repair needs rank >= 1, lr > 0, batch size >= 1 and eval_every >= 1")
    targets = list(targets) if targets else lora_targets(model.config)
    start = time.perf_counter()
    device = input_device(model)
    steps = train.num_batches(batch_size)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, bias="none", target_modules=targets)
        with warnings.catch_warnings():  # peft asks transformers a deprecated question; nothing for the user to do
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            peft_model = get_peft_model(model, config)
        peft_model.eval()   # no dropout anywhere: deterministic, and the merged model computes what we measured
        params = [p for p in peft_model.parameters() if p.requires_grad]
        trainable = sum(p.numel() for p in params)
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
        ids_all, mask_all = train.input_ids[order], train.attention_mask[order]

        report = LoraRepairReport("distill" if teacher is not None else "next-token", rank, alpha, lr, targets, seed,
                                  batch_size, int(train.input_ids.shape[1]), train.num_tokens, steps, 0, 0, False,
                                  heldout.num_tokens if heldout is not None else 0, trainable_params=trainable)

        def evaluate(step: int, bar) -> float | None:
            if heldout is None:
                return None
            loss = _mean_nll(peft_model, heldout, batch_size)
            report.heldout.append({"step": step, "loss": loss})
            message = f"repair step {step}/{steps}: held-out loss {loss:.4f} (ppl {math.exp(loss):.2f})"
            if progress and bar is not None:
                bar.write(message)
            log.info(message)
            return loss

        best = evaluate(0, None) if heldout is not None else None
        best_state = _adapter_state(peft_model)
        bar = tqdm(total=steps, desc="LoRA repair", unit="step", disable=not progress)
        try:
            for step in range(1, steps + 1):
                sl = slice((step - 1) * batch_size, step * batch_size)
                ids, mask = ids_all[sl].to(device), mask_all[sl].to(device)
                with torch.enable_grad():
                    logits = peft_model(input_ids=ids, attention_mask=mask, use_cache=False).logits
                    if teacher is not None:
                        with torch.no_grad():
                            t_logits = teacher(input_ids=ids, attention_mask=mask, use_cache=False).logits
                        loss = _kl_to_teacher(logits, t_logits, mask)
                    else:
                        nll, n = next_token_nll(logits, ids, mask)
                        loss = nll / max(n, 1)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                report.steps_done = step
                bar.update(1)
                bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
                if heldout is not None and (step % eval_every == 0 or step == steps):
                    current = evaluate(step, bar)
                    if current <= best:
                        best, best_state, report.best_step = current, _adapter_state(peft_model), step
                    else:
                        report.stopped_early = step < steps
                        break
                elif heldout is None:
                    best_state, report.best_step = None, step
        finally:
            bar.close()
        if best_state is not None:
            _load_adapter_state(peft_model, best_state)
        merged = peft_model.merge_and_unload()
    for p in merged.parameters():
        p.requires_grad_(False)
    report.seconds = time.perf_counter() - start
    return merged.eval(), report


def _adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


@torch.no_grad()
def _load_adapter_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    for n, p in model.named_parameters():
        if n in state:
            p.copy_(state[n])

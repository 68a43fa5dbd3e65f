"""Forward passes shared by every role: position ids for left-padded prompts, response log-probs (of a
rollout, and of right-padded prompt + response sequences), and the value model (a causal-LM backbone
with a scalar head per token).

Sequences are `prompt (left-padded to P) + response (right-padded to T)`. The response token at
position P + t is predicted by the logits at P + t - 1; the state value of that action is read from
the hidden state at the same position P + t - 1.
"""

from __future__ import annotations

import functools
import inspect
import os
from typing import Iterator

import torch
from torch import nn

from actors.engine import replica_max, unwrap
from cluster.batch import plan_micro_batches
from losses import entropy_from_logits, log_probs_from_logits


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only, so left padding does not shift them (as HF generate does)."""
    pos = attention_mask.long().cumsum(-1) - 1
    return pos.clamp(min=0)  # (B, L)


def response_logprobs(
    model: nn.Module,
    sequences: torch.Tensor,  # (B, P+T)
    attention_mask: torch.Tensor,  # (B, P+T)
    prompt_len: int,
    temperature: float = 1.0,
    with_entropy: bool = False,
    packed_positions: torch.Tensor | None = None,  # (B, P+T) packed rows: positions restarting per example
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """log pi(a_t | s_t) for every response position: (B, T), in fp32; with `with_entropy`, also the
    entropy H(pi(. | s_t)) of each position's distribution (B, T) (`losses.entropy_from_logits`).

    Logits are divided by the sampling temperature, so the log-probs (and entropies) are those of the
    distribution the rollout was sampled from (as in OpenRLHF and verl).

    Packed rows (`packed_positions`, from `Sequences.packed`): no attention mask is passed, and
    transformers turns positions that restart into block-diagonal causal attention (its packed-sequence
    detection; flash-attention reads the same positions as variable-length sequences), so no example
    sees another.
    """
    L = sequences.shape[1]
    keep = L - prompt_len + 1  # the logits at P-1 .. L-1 (the last one predicts nothing)
    # as indices, not a count: transformers then gathers the hidden states (a contiguous copy) instead of
    # slicing them; torch's CPU bf16 linear on the non-contiguous slice of a frozen model was 65x slower
    extra = {"logits_to_keep": torch.arange(prompt_len - 1, L, device=sequences.device)} if takes_logits_to_keep(model) else {}
    if packed_positions is not None:
        out = model(input_ids=sequences, attention_mask=None, position_ids=packed_positions, use_cache=False, **extra)
    else:
        out = model(input_ids=sequences, attention_mask=attention_mask, position_ids=position_ids(attention_mask),
                    use_cache=False, **extra)
    logits = out.logits[:, -keep:-1]  # (B, T, V): the LM head ran on these positions only when the model takes logits_to_keep
    if temperature != 1.0:
        logits = logits / temperature
    logprobs = log_probs_from_logits(logits, sequences[:, prompt_len:]).float()
    if with_entropy:
        return logprobs, entropy_from_logits(logits).float()
    return logprobs


def takes_logits_to_keep(model: nn.Module) -> bool:
    """Whether the causal LM inside `model` (a DeepSpeed engine, a peft model, or the model) computes its LM
    head on the last `logits_to_keep` positions only (transformers' Llama, GPT-2, Qwen2, Mistral, Gemma, ...):
    the prompt's positions then cost no LM-head matmul, the largest single matmul of a small model."""
    while True:
        inner = getattr(model, "module", None)  # DeepSpeed engine
        if isinstance(inner, nn.Module):
            model = inner
        elif hasattr(model, "get_base_model"):  # peft
            model = model.get_base_model()
        else:
            return _forward_takes(type(model), "logits_to_keep")


@functools.lru_cache(maxsize=None)
def _forward_takes(cls: type, name: str) -> bool:
    return name in inspect.signature(cls.forward).parameters


class ValueModel(nn.Module):
    """V(s_t) per token: a causal-LM backbone (no LM head) and a linear value head.

    Saved as the backbone's `save_pretrained` folder plus `value_head.safetensors`, so the backbone
    stays loadable by transformers.
    """

    HEAD_FILE = "value_head.safetensors"

    def __init__(self, backbone: nn.Module, hidden_size: int):
        super().__init__()
        self.backbone = backbone
        self.config = backbone.config  # DeepSpeed and peft read model.config
        self.value_head = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    @classmethod
    def from_causal_lm(cls, lm: nn.Module) -> "ValueModel":
        """Take the backbone of a `*ForCausalLM` (or of a sequence classifier) and add a fresh head."""
        backbone = lm.get_decoder() if hasattr(lm, "get_decoder") else lm.base_model
        return cls(backbone, lm.config.hidden_size)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **_: object) -> torch.Tensor:
        hidden = self.backbone(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids(attention_mask), use_cache=False
        ).last_hidden_state  # (B, L, H)
        return self.value_head(hidden).squeeze(-1).float()  # (B, L)

    def save(self, folder: str, state_dict: dict | None = None) -> None:
        from safetensors.torch import save_file

        state = state_dict if state_dict is not None else self.state_dict()
        head = {k.split("value_head.", 1)[1]: v.contiguous() for k, v in state.items() if k.startswith("value_head.")}
        backbone = {k.split("backbone.", 1)[1]: v for k, v in state.items() if k.startswith("backbone.")}
        self.backbone.save_pretrained(folder, state_dict=backbone, safe_serialization=True)
        save_file(head, os.path.join(folder, self.HEAD_FILE))


def micro_batches(batch, rows: int, tokens: int = 0) -> Iterator:
    """This replica's micro-batches of `batch` (a `cluster.batch.Batch`), for one forward/backward each.

    tokens = 0: consecutive slices of `rows` rows, in order, as they are.
    tokens > 0 (a role's ``micro_batch_tokens``): rows sorted by length and grouped so that each
    micro-batch, cut to its own padding (`batch.trimmed()`), holds at most `tokens` padded tokens
    (`token_groups`); `rows` is then unused. Which rows share a micro-batch changes only the float
    rounding of a sum, never what is computed: a minibatch's loss is a sum over its items divided by
    their global count (`actors.trainer`).
    """
    if tokens <= 0:
        return batch.chunks(rows)
    groups = token_groups(batch, tokens)  # now: a collective, which every replica reaches at the same point
    return (batch.select(g).trimmed() for g in groups)


def token_groups(batch, tokens: int) -> list[list[int]]:
    """The rows of each token-budget micro-batch of this replica (`cluster.batch.plan_micro_batches` over
    `batch.extents()`), as many on every replica of the role: a collective, since every forward under
    ZeRO-3 and every micro-step's finiteness check is one, so a replica with fewer splits some."""
    extents = batch.extents()
    forward_rows = getattr(batch, "forward_rows", 1)
    groups = plan_micro_batches(extents, tokens, forward_rows=forward_rows)
    count = replica_max(len(groups))
    if count > len(groups):
        groups = plan_micro_batches(extents, tokens, forward_rows=forward_rows, count=count)
    return groups


@torch.no_grad()
def forward_micro_batches(engine, batch, size: int, fn, *, tokens: int = 0, width: int | None = None) -> torch.Tensor:
    """``fn(micro)`` for each micro-batch of `batch` (a `cluster.batch.Batch`; `micro_batches` of `size`
    rows or of `tokens` padded tokens), moved to the engine's device, in eval mode and without gradients;
    the results row-wise on the CPU, in the batch's row order.

    The inference loop of every role (old, reference and DPO log-probs, values, reward-model outputs):
    the engine's train/eval mode is restored afterwards. Under ZeRO-3 every replica must make the
    same number of calls (each forward is a collective), which equal shards of a scatter give.
    width: the results are (b, t) per response token and a trimmed micro-batch's t is its own; they
    are right-padded with zeros to `width` (the batch's T).
    """
    was_training = engine.training
    engine.eval()
    device = next(unwrap(engine).parameters()).device
    groups = token_groups(batch, tokens) if tokens > 0 else None
    micros = batch.chunks(size) if groups is None else (batch.select(g).trimmed() for g in groups)
    try:
        outs = [fn(micro.to(device)).cpu() for micro in micros]
    finally:
        engine.train(was_training)
    if width is not None:
        outs = [torch.nn.functional.pad(o, (0, width - o.shape[1])) for o in outs]
    out = torch.cat(outs)
    if groups is None:
        return out
    order = torch.tensor([i for g in groups for i in g])
    return torch.empty_like(out).index_copy_(0, order, out)


def sequence_token_logprobs(model: nn.Module, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """log p of every token of right-padded sequences given the tokens before it, and where the response is.

    batch: a `actors.types.Sequences` (input_ids, attention_mask, response_mask, all (B, L); position_ids
    when its rows are packed).
    Returns ``(token_logprobs (B, L-1) fp32, response (B, L-1) bool)``: position t holds log p(token
    t+1 | tokens 0..t) and whether token t+1 is a response token, for every token from the batch's first
    response token on (earlier positions hold 0 and are not response), so prompts of different lengths share one batch.
    """
    response = batch.response_mask[:, 1:].bool()
    # positions before the batch's first response token are not scored: no LM head on them (`logits_to_keep`)
    first = int(response.any(0).float().argmax()) + 1 if response.any() else 1
    token_lp = response_logprobs(model, batch.input_ids, batch.attention_mask, prompt_len=first,
                                 packed_positions=batch.position_ids)  # (B, L-first)
    return torch.nn.functional.pad(token_lp, (first - 1, 0)), response


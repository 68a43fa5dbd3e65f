"""The policy role: sampling with HF `generate` (KV cache), response log-probs, the PPO update.

Receives only its `PolicyConfig` slice and the folder of its initial weights.
"""

from __future__ import annotations

import contextlib

import torch

from actors.engine import build_engine, export_pretrained, gathered_params, load_checkpoint, save_checkpoint, unwrap
from actors.lm import forward_micro_batches, micro_batches, response_logprobs
from actors.modeling import load_causal_lm, load_tokenizer
from actors.trainer import MicroLoss, TrainStats, train_step
from actors.types import Experience, LogProbs, PromptBatch, Rollout
from cluster.group import alone_threads, gather_as
from losses.ppo import policy_loss
from transformers import LogitsProcessor, LogitsProcessorList


class BehaviourLogProbs(LogitsProcessor):
    """Records log pi(a_t | s_t) of each token HF `generate` samples, at no extra forward pass.

    `generate` calls its processors with the step's float32 logits; processors passed by the caller
    come before the sampling warpers (temperature, top-k, top-p), so the scores seen here are the
    model's logits. Step t keeps log_softmax(logits_t / temperature), the distribution
    `actors.lm.response_logprobs` recomputes (untruncated, as OpenRLHF and verl do); step t + 1 reads
    the token sampled from it (the last column of input_ids), and `finish` the last one.
    """

    def __init__(self, temperature: float):
        self.temperature = temperature
        self.last: torch.Tensor | None = None
        self.taken: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.last is not None:
            self.taken.append(self.last.gather(-1, input_ids[:, -1:]).squeeze(-1))
        self.last = torch.log_softmax(scores.float() / self.temperature, dim=-1)
        return scores

    def finish(self, sequences: torch.Tensor) -> torch.Tensor:
        """(B, n) log-probs of the n sampled tokens, from `generate`'s output sequences."""
        if self.last is not None:
            self.taken.append(self.last.gather(-1, sequences[:, -1:]).squeeze(-1))
            self.last = None
        return torch.stack(self.taken, dim=1)


class PolicyActor:
    borrows_cores = True
    """`generate` takes the node's cores (`cluster.group.alone_threads`): every other role waits for the rollout."""

    def __init__(self, cfg, *, model_path: str, seed: int, total_steps: int = 0, minibatch_size: int = 0, train: bool = True):
        """train=False: a frozen engine, no optimizer (`GeneratorActor`)."""
        self.cfg = cfg
        torch.manual_seed(seed)
        self.tokenizer = load_tokenizer(model_path, trust_remote_code=cfg.trust_remote_code)
        model = load_causal_lm(model_path, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code)
        self.eos_id = self.tokenizer.eos_token_id
        self.pad_id = self.tokenizer.pad_token_id
        self.engine = build_engine(model, cfg, train=train, total_steps=total_steps, minibatch_size=minibatch_size)

    # ---------------------------------------------------------------- rollout
    @gather_as("cat")
    @torch.no_grad()
    def generate(self, prompts: PromptBatch, seed: int, record_logprobs: bool = False) -> Rollout:
        """Sample one response per prompt row (a prompt answered k times comes as k rows, in one call);
        responses are right-padded to max_new_tokens. `record_logprobs`: the Rollout carries the log-probs
        of the sampled tokens as they were sampled (`BehaviourLogProbs`; ppo.old_logprobs=rollout)."""
        cfg = self.cfg
        device = self.engine.device
        torch.manual_seed(seed)
        input_ids = prompts.input_ids.to(device)
        attention_mask = prompts.attention_mask.to(device)
        P, T = input_ids.shape[1], cfg.max_new_tokens
        self.engine.eval()
        recorder = BehaviourLogProbs(cfg.temperature) if record_logprobs else None
        borrow = alone_threads() if self.borrows_cores else contextlib.nullcontext()
        with gathered_params(self.engine) as model, borrow:  # on-policy, the other roles wait for the rollout
            out = model.generate(
                **({"logits_processor": LogitsProcessorList([recorder])} if recorder else {}),
                input_ids=input_ids,
                attention_mask=attention_mask,
                do_sample=True,
                temperature=cfg.temperature,
                top_p=cfg.top_p,
                top_k=cfg.top_k if cfg.top_k > 0 else None,
                max_new_tokens=T,
                eos_token_id=self.eos_id,
                pad_token_id=self.pad_id,
                use_cache=True,
            )
        self.engine.train()
        response = out[:, P:].cpu()
        B, gen_len = response.shape
        # tokens up to and including the first EOS are actions; after it, padding
        is_eos = response == self.eos_id
        ended = is_eos.any(dim=1)
        first_eos = torch.where(ended, is_eos.float().argmax(dim=1), torch.full((B,), gen_len))
        length = torch.where(ended, first_eos + 1, torch.full((B,), gen_len))
        padded = torch.full((B, T), self.pad_id, dtype=torch.long)
        padded[:, :gen_len] = response
        action_mask = (torch.arange(T).unsqueeze(0) < length.unsqueeze(1)).long()
        padded = torch.where(action_mask.bool(), padded, torch.full_like(padded, self.pad_id))
        logprobs = None
        if recorder is not None:
            logprobs = torch.zeros(B, T)
            logprobs[:, :gen_len] = recorder.finish(out).cpu()
            logprobs = logprobs * action_mask
        texts = [
            self.tokenizer.decode(padded[i, : int(first_eos[i]) if ended[i] else int(length[i])], skip_special_tokens=True)
            for i in range(B)
        ]
        return Rollout(
            sequences=torch.cat([prompts.input_ids, padded], dim=1),
            attention_mask=torch.cat([prompts.attention_mask.long(), action_mask], dim=1),
            action_mask=action_mask,
            ended_with_eos=ended,
            prompts=list(prompts.prompts),
            messages=None if prompts.messages is None else list(prompts.messages),
            responses=texts,
            references=list(prompts.references),
            query_types=list(prompts.query_types),
            logprobs=logprobs,
        )

    # ---------------------------------------------------------------- log-probs
    @gather_as("cat")
    @torch.no_grad()
    def logprobs(self, rollout: Rollout) -> LogProbs:
        """log pi_old(a_t | s_t), (B, T), computed in micro-batches."""
        return LogProbs(logprobs=self._logprobs(rollout))

    @gather_as("cat")
    @torch.no_grad()
    def reference_logprobs(self, rollout: Rollout) -> LogProbs:
        """With LoRA: log pi_ref from the same weights with the adapters disabled (no model copy)."""
        with unwrap(self.engine).disable_adapter():
            return LogProbs(logprobs=self._logprobs(rollout))

    def _logprobs(self, rollout: Rollout) -> torch.Tensor:
        def forward(micro: Rollout) -> torch.Tensor:
            return response_logprobs(self.engine, micro.sequences, micro.attention_mask, micro.prompt_len, self.cfg.temperature)

        return forward_micro_batches(self.engine, rollout, self.cfg.micro_batch_size, forward, tokens=self.cfg.micro_batch_tokens,
                                     width=rollout.action_mask.shape[1]) * rollout.action_mask

    # ---------------------------------------------------------------- update
    def train(self, exp: Experience, minibatch_rows: int, aggregation: str = "token_mean", kl_coef: float = 0.0,
              kl_estimator: str = "k3") -> dict:
        """PPO-clip epochs: one optimizer step per minibatch of `minibatch_rows` rows of this replica
        (`actors.trainer.train_step`; N_global = the minibatch's normaliser over all replicas, `exp.mb_tokens`).

        aggregation: `losses.ppo.aggregate`'s mode. With `exp.ref_logprobs` set (the KL in the loss),
        the loss gains kl_coef x the `kl_estimator` KL to the reference per token (`losses.ppo.policy_loss`)."""
        cfg = self.cfg
        device = self.engine.device
        bonus = cfg.entropy_coef > 0
        self.engine.train()

        def loss_fn(micro: Experience) -> MicroLoss:
            micro = micro.to(device)
            out = response_logprobs(self.engine, micro.sequences, micro.attention_mask, micro.prompt_len,
                                    cfg.temperature, with_entropy=bonus)
            logprobs, entropy = out if bonus else (out, None)
            per_token, metrics = policy_loss(logprobs, micro.old_logprobs, micro.advantages, micro.action_mask,
                                             clip_eps=cfg.clip_eps, entropy=entropy, entropy_coef=cfg.entropy_coef,
                                             ref_logprobs=micro.ref_logprobs, kl_coef=kl_coef, kl_estimator=kl_estimator)
            return MicroLoss(per_token, micro.action_mask, metrics, aggregation=aggregation)

        stats = TrainStats()
        for mb in exp.chunks(minibatch_rows):
            micros = micro_batches(mb, cfg.micro_batch_size, cfg.micro_batch_tokens)
            train_step(self.engine, micros, loss_fn, mb.mb_tokens[0].item(), "policy", stats)
        return stats.as_dict()

    # ---------------------------------------------------------------- weight sync
    @gather_as("first")
    @torch.no_grad()
    def weights(self) -> dict[str, torch.Tensor]:
        """The weights the generator role samples with (ppo.rollout_ahead=1), as CPU copies named as in the
        plain model: every tensor of the state dict, or with LoRA only the adapted layers, merged
        (W + scale B A, the base weights untouched). A collective under ZeRO-3 (every rank calls it; rank 0
        returns the weights, the others an empty dict)."""
        with gathered_params(self.engine) as model:
            if torch.distributed.is_initialized() and torch.distributed.get_rank() != 0:
                return {}
            if self.cfg.lora.enabled:
                prefix = "base_model.model."
                return {f"{name.removeprefix(prefix)}.weight": (m.base_layer.weight + m.get_delta_weight("default")).cpu()
                        for name, m in model.named_modules() if hasattr(m, "get_delta_weight") and hasattr(m, "base_layer")}
            copies: dict[int, torch.Tensor] = {}  # tied weights (embeddings and LM head) copied once
            return {name: copies.setdefault(t.data_ptr(), t.detach().to("cpu", copy=True))
                    for name, t in model.state_dict().items()}

    # ---------------------------------------------------------------- checkpoints
    def save_checkpoint(self, folder: str) -> None:
        save_checkpoint(self.engine, folder, tag="policy")

    def load_checkpoint(self, folder: str) -> None:
        load_checkpoint(self.engine, folder, tag="policy")

    def export(self, folder: str) -> None:
        """A `save_pretrained` folder (safetensors) that transformers loads; LoRA merged into the weights."""
        export_pretrained(self.engine, self.tokenizer, folder, adapter=self.cfg.lora.save_adapter)


class GeneratorActor(PolicyActor):
    """PPO's generator role (ppo.rollout_ahead=1): samples rollouts exactly as the policy does (`generate`,
    behaviour log-probs recorded), from a frozen copy of the policy's weights on devices of its own, while the
    policy trains; `load_weights` takes the policy's after each update (`PolicyActor.weights`).

    Receives the policy's config slice placed as `generator.*` says (`PPOConfig.generator_slice`): no ZeRO
    (every replica holds the whole model), no optimizer; with LoRA the base model, adapters merged by the sync."""

    borrows_cores = False  # it samples while the other roles compute: its own threads only

    def __init__(self, cfg, *, model_path: str, seed: int):
        super().__init__(cfg, model_path=model_path, seed=seed, train=False)

    @torch.no_grad()
    def load_weights(self, weights: dict[str, torch.Tensor]) -> int:
        """Copy the policy's weights in (every tensor, or with LoRA the merged adapted layers); returns the
        number of tensors. A name the model does not have, a missing tensor (without LoRA) or a shape
        mismatch is an error naming it."""
        model = unwrap(self.engine)
        own = model.state_dict()
        unknown = sorted(set(weights) - set(own))
        missing = [] if self.cfg.lora.enabled else sorted(set(own) - set(weights))
        if unknown or missing or not weights:
            raise ValueError(f"generator: the policy's weights do not match the generator's model (unknown "
                             f"{unknown[:3]}, missing {missing[:3]}, {len(weights)} tensors sent)")
        for name, value in weights.items():
            if own[name].shape != value.shape:
                raise ValueError(f"generator: {name} has shape {tuple(value.shape)} in the policy, {tuple(own[name].shape)} here")
            own[name].copy_(value)
        return len(weights)
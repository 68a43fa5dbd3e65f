"""The policy role: sampling with HF `generate` (KV cache), response log-probs, the PPO update.

Receives only its `PolicyConfig` slice and the folder of its initial weights.
"""

from __future__ import annotations


import torch

from actors.engine import build_engine, export_pretrained, gathered_params, load_checkpoint, save_checkpoint, unwrap
from actors.lm import response_logprobs, train_minibatches, peak_memory_mb
from actors.modeling import load_causal_lm, load_tokenizer
from cluster.group import gather_as
from actors.types import Experience, PromptBatch, Rollout, TokenValues
from losses.ppo import policy_loss


def _micro_batches(n: int, size: int):
    for i in range(0, n, size):
        yield slice(i, min(i + size, n))


class PolicyActor:
    def __init__(self, cfg, *, model_path: str, seed: int, total_steps: int, minibatch_size: int):
        self.cfg = cfg
        torch.manual_seed(seed)
        self.tokenizer = load_tokenizer(model_path, trust_remote_code=cfg.trust_remote_code)
        model = load_causal_lm(model_path, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code)
        self.eos_id = self.tokenizer.eos_token_id
        self.pad_id = self.tokenizer.pad_token_id
        self.engine = build_engine(model, cfg, train=True, total_steps=total_steps, minibatch_size=minibatch_size)


    @gather_as("list")
    def peak_memory_mb(self) -> float:
        """Peak memory of this replica's process (for `rlhf bench`)."""
        return peak_memory_mb()
    # ---------------------------------------------------------------- rollout
    @gather_as("cat")
    @torch.no_grad()
    def generate(self, prompts: PromptBatch, seed: int) -> Rollout:
        """Sample one response per prompt; responses are right-padded to max_new_tokens."""
        cfg = self.cfg
        device = self.engine.device
        torch.manual_seed(seed)
        input_ids = prompts.input_ids.to(device)
        attention_mask = prompts.attention_mask.to(device)
        P, T = input_ids.shape[1], cfg.max_new_tokens
        self.engine.eval()
        with gathered_params(self.engine) as model:
            out = model.generate(
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
            responses=texts,
            references=list(prompts.references),
            query_types=list(prompts.query_types),
        )

    # ---------------------------------------------------------------- log-probs
    @gather_as("cat")
    @torch.no_grad()
    def logprobs(self, rollout: Rollout) -> TokenValues:
        """log pi_old(a_t | s_t), (B, T), computed in micro-batches."""
        return TokenValues(values=self._logprobs(rollout))

    @gather_as("cat")
    @torch.no_grad()
    def reference_logprobs(self, rollout: Rollout) -> TokenValues:
        """With LoRA: log pi_ref from the same weights with the adapters disabled (no model copy)."""
        with unwrap(self.engine).disable_adapter():
            return TokenValues(values=self._logprobs(rollout))

    def _logprobs(self, rollout: Rollout) -> torch.Tensor:
        was_training = self.engine.training
        self.engine.eval()
        device = self.engine.device
        out = []
        for sl in _micro_batches(rollout.num_rows, self.cfg.micro_batch_size):
            out.append(
                response_logprobs(
                    self.engine,
                    rollout.sequences[sl].to(device),
                    rollout.attention_mask[sl].to(device),
                    rollout.prompt_len,
                    self.cfg.temperature,
                ).cpu()
            )
        if was_training:
            self.engine.train()
        return torch.cat(out) * rollout.action_mask

    # ---------------------------------------------------------------- update
    def train(self, exp: Experience, minibatch_rows: int) -> dict:
        """PPO-clip epochs: one optimizer step per minibatch of `minibatch_rows` rows of this replica."""
        cfg = self.cfg
        device = self.engine.device
        self.engine.train()

        def loss_fn(micro: Experience):
            micro = micro.to(device)
            logprobs = response_logprobs(self.engine, micro.sequences, micro.attention_mask, micro.prompt_len, cfg.temperature)
            return policy_loss(logprobs, micro.old_logprobs, micro.advantages, micro.action_mask, clip_eps=cfg.clip_eps)

        return train_minibatches(self.engine, exp, minibatch_rows, cfg.micro_batch_size, loss_fn, "policy")

    # ---------------------------------------------------------------- checkpoints
    def save_checkpoint(self, folder: str) -> None:
        save_checkpoint(self.engine, folder, tag="policy", client_state={"rng": torch.get_rng_state()})

    def load_checkpoint(self, folder: str) -> None:
        state = load_checkpoint(self.engine, folder, tag="policy")
        if "rng" in state:
            torch.set_rng_state(state["rng"])

    def export(self, folder: str) -> None:
        """A `save_pretrained` folder (safetensors) that transformers loads; LoRA merged into the weights."""
        export_pretrained(self.engine, self.tokenizer, folder)

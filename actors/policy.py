"""The policy role: sampling with HF `generate` (KV cache), response log-probs, the PPO update.

Receives only its `PolicyConfig` slice and the folder of its initial weights.
"""

from __future__ import annotations

import contextlib
import time

import torch

from actors.engine import build_engine, export_pretrained, gathered_params, load_checkpoint, save_checkpoint, unwrap
from actors.lm import forward_micro_batches, micro_batches, response_logprobs
from actors.modeling import load_causal_lm, load_tokenizer
from actors.sampling import pad_responses, to_rollout
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
    def generate(self, prompts: PromptBatch, seed: int, record_logprobs: bool = False, min_new_tokens: int = 0) -> Rollout:
        """Sample one response per prompt row (a prompt answered k times comes as k rows, in one call);
        responses are right-padded to max_new_tokens. `record_logprobs`: the Rollout carries the log-probs
        of the sampled tokens as they were sampled (`BehaviourLogProbs`; ppo.old_logprobs=rollout).
        `min_new_tokens`: EOS held back for that many tokens (`rlhf bench generate`'s fixed lengths; it changes
        the distribution sampled from, so training never sets it)."""
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
                min_new_tokens=min_new_tokens or None,
                eos_token_id=self.eos_id,
                pad_token_id=self.pad_id,
                use_cache=True,
                **({"stop_strings": list(cfg.stop), "tokenizer": self.tokenizer} if cfg.stop else {}),
            )
        self.engine.train()
        recorded = recorder.finish(out).cpu() if recorder is not None else None
        return to_rollout(prompts, out[:, P:].cpu(), recorded, eos_id=self.eos_id, pad_id=self.pad_id,
                          max_new_tokens=T, tokenizer=self.tokenizer, stop=cfg.stop)

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
                                             ref_logprobs=micro.ref_logprobs, kl_coef=kl_coef, kl_estimator=kl_estimator,
                                             is_weights=micro.is_weights)
            return MicroLoss(per_token, micro.action_mask, metrics, aggregation=aggregation)

        stats = TrainStats()
        for mb in exp.chunks(minibatch_rows):
            micros = micro_batches(mb, cfg.micro_batch_size, cfg.micro_batch_tokens)
            train_step(self.engine, micros, loss_fn, mb.mb_tokens[0].item(), "policy", stats)
        return stats.as_dict()

    # ---------------------------------------------------------------- weight sync
    @gather_as("first")
    @torch.no_grad()
    def weights(self, full: bool = False) -> dict[str, torch.Tensor]:
        """The weights the generator role samples with, as CPU copies named as in the plain model: every
        tensor of the state dict; with LoRA the adapted layers merged (W + scale B A, the base weights
        untouched), only those unless `full` (a vLLM engine reloads whole layers). A collective under ZeRO-3
        (every rank calls it; rank 0 returns the weights, the others an empty dict). Tensors that share
        storage (tied embeddings) are one copy under each name."""
        with gathered_params(self.engine) as model:
            if torch.distributed.is_initialized() and torch.distributed.get_rank() != 0:
                return {}
            copies: dict[int, torch.Tensor] = {}
            return {name: copies.setdefault(t.data_ptr(), t.to("cpu", copy=True))
                    for name, t in self._plain_weights(model, full).items()}

    def _plain_weights(self, model, full: bool) -> dict[str, torch.Tensor]:
        """`weights` on the model's device, without copies but for the LoRA merges (inside `gathered_params`)."""
        if not self.cfg.lora.enabled:
            return {name: t.detach() for name, t in model.state_dict().items()}
        prefix = "base_model.model."
        merged = {f"{name.removeprefix(prefix)}.weight": m.base_layer.weight + m.get_delta_weight("default")
                  for name, m in model.named_modules() if hasattr(m, "get_delta_weight") and hasattr(m, "base_layer")}
        if not full:
            return merged
        plain = {}
        for name, t in model.state_dict().items():
            if ".lora_" in name:
                continue
            name = name.removeprefix(prefix).replace(".base_layer.", ".")
            plain[name] = merged.get(name, t.detach())
        return plain

    @gather_as("first")
    def transfer_port(self) -> tuple[str, int]:
        """generator.sync_transport=collective: this replica's node address and a free port there (rank 0's
        make the weight-transfer group, `cluster.transfer`)."""
        from cluster.dist import free_port, node_ip

        return node_ip(), free_port()

    @gather_as("first")
    @torch.no_grad()
    def transfer_layout(self, full: bool, bucket_mb: float):
        """The buckets `send_weights` will send (`cluster.transfer.Layout` of the weights as `weights(full)` makes
        them), kept on rank 0 and returned by it. A collective under ZeRO-3."""
        from cluster.transfer import plan_layout

        with gathered_params(self.engine) as model:
            if torch.distributed.is_initialized() and torch.distributed.get_rank() != 0:
                return None
            self.transfer_layout_ = plan_layout(self._plain_weights(model, full), bucket_mb)
        return self.transfer_layout_

    @gather_as("first")
    def open_transfer(self, host: str, port: int, world_size: int, timeout_s: float) -> None:
        """Rank 0 makes the transfer group at host:port as its sender, rank 0 of `world_size` (waits until the
        receivers join, `GeneratorActor.join_transfer`); the other replicas do nothing."""
        from cluster.transfer import TransferGroup

        if torch.distributed.is_initialized() and torch.distributed.get_rank() != 0:
            return None
        self.transfer = TransferGroup(host, port, 0, world_size, self.engine.device, timeout_s)
        return None

    @gather_as("first")
    @torch.no_grad()
    def send_weights(self, full: bool) -> dict:
        """Broadcast the weights (as `weights` makes them, on the model's device) to the transfer group's
        receivers, bucket by bucket; returns {bytes, seconds} on rank 0. A collective under ZeRO-3."""
        start = time.perf_counter()
        with gathered_params(self.engine) as model:
            if torch.distributed.is_initialized() and torch.distributed.get_rank() != 0:
                return {}
            sent = self.transfer.send(self._plain_weights(model, full), self.transfer_layout_)
        return {"bytes": sent, "seconds": time.perf_counter() - start}

    # ---------------------------------------------------------------- checkpoints
    def save_checkpoint(self, folder: str) -> None:
        save_checkpoint(self.engine, folder, tag="policy")

    def load_checkpoint(self, folder: str) -> None:
        load_checkpoint(self.engine, folder, tag="policy")

    def export(self, folder: str) -> None:
        """A `save_pretrained` folder (safetensors) that transformers loads; LoRA merged into the weights."""
        export_pretrained(self.engine, self.tokenizer, folder, adapter=self.cfg.lora.save_adapter)


class GeneratorActor(PolicyActor):
    """PPO's generator role: samples the rollouts from a frozen copy of the policy's weights on devices of its
    own (ppo.max_staleness=1: while the policy trains; generator.engine=vllm: every step), with the log-probs
    of the sampled tokens recorded; `load_weights` takes the policy's after each update (`PolicyActor.weights`)
    and counts them as a version, which every rollout it samples carries (`Rollout.weight_version`).

    The engine (`generator.engine`): hf samples exactly as the policy does (`PolicyActor.generate`); vllm holds
    a vLLM engine (`actors.vllm_engine`) and no Hugging Face model. Either way the sampled tokens become a
    Rollout through `actors.sampling.to_rollout`.

    Receives the policy's config slice placed as `generator.*` says (`PPOConfig.generator_slice`): no ZeRO
    (every replica holds the whole model), no optimizer; with LoRA the base model, adapters merged by the sync."""

    borrows_cores = False  # it samples while the other roles compute: its own threads only

    def __init__(self, cfg, *, model_path: str, seed: int, engine=None, max_model_len: int = 0):
        """`engine`: the `GeneratorConfig` (None: hf); `max_model_len`: the longest prompt plus response in
        tokens a vLLM engine must hold."""
        self.kind = getattr(engine, "engine", "hf")
        self.workers = engine.tensor_parallel if self.kind == "vllm" else 1  # processes per replica (transfer ranks)
        self.version = 0
        if self.kind == "hf":
            super().__init__(cfg, model_path=model_path, seed=seed, train=False)
            return
        from actors.modeling import resolve_dtype
        from actors.vllm_engine import VLLMEngine

        self.cfg = cfg
        self.tokenizer = load_tokenizer(model_path, trust_remote_code=cfg.trust_remote_code)
        self.eos_id, self.pad_id = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        self.vllm = VLLMEngine(model_path, name="generator", dtype=resolve_dtype(cfg.dtype), seed=seed,
                               max_model_len=max_model_len, kv_cache_gb=engine.kv_cache_gb,
                               gpu_memory_utilization=engine.gpu_memory_utilization,
                               tensor_parallel=engine.tensor_parallel, threads=0, trust_remote_code=cfg.trust_remote_code,
                               sleep=engine.sleep, bucket_mb=engine.sync_bucket_mb, sync_timeout_s=engine.sync_timeout_s,
                               temperature=cfg.temperature)

    @gather_as("cat")
    @torch.no_grad()
    def generate(self, prompts: PromptBatch, seed: int, record_logprobs: bool = True, version: int | None = None,
                 min_new_tokens: int = 0) -> Rollout:
        """One response per prompt row, with the log-probs of the sampled tokens; the rollout carries this
        engine's weight version. vllm: row i is sampled with its own seed, `prompts.seeds[i]` when the batch
        has them (set by the driver, so that a row's sample does not depend on the replica it went to), else
        seed + i. `version`: the weight version the caller issued this for; another one held here (its sync
        failed, or never came) is an error, never a sample from the wrong weights."""
        if version is not None and version != self.version:
            raise RuntimeError(f"generator: asked to sample with weight version {version}, but holds version {self.version} "
                               "(the sync of that version failed or did not arrive)")
        if self.kind == "hf":
            rollout = super().generate(prompts, seed, record_logprobs=record_logprobs, min_new_tokens=min_new_tokens)
        else:
            cfg = self.cfg
            ids = [row[mask.bool()].tolist() for row, mask in zip(prompts.input_ids, prompts.attention_mask)]
            seeds = prompts.seeds.tolist() if prompts.seeds is not None else [seed + i for i in range(len(ids))]
            tokens, lps = self.vllm.sample(ids, seeds=seeds, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                           top_p=cfg.top_p, top_k=cfg.top_k, eos_id=self.eos_id, logprobs=record_logprobs,
                                           stop=cfg.stop, min_new_tokens=min_new_tokens)
            response, logprobs = pad_responses(tokens, lps, cfg.max_new_tokens, self.pad_id)
            rollout = to_rollout(prompts, response, logprobs, eos_id=self.eos_id, pad_id=self.pad_id,
                                 max_new_tokens=cfg.max_new_tokens, tokenizer=self.tokenizer, stop=cfg.stop)
        rollout.weight_version = torch.full((rollout.num_rows,), self.version, dtype=torch.long)
        return rollout

    @torch.no_grad()
    def load_weights(self, weights: dict[str, torch.Tensor], version: int | None = None) -> dict:
        """Take the policy's weights (every tensor, or with LoRA and hf the merged adapted layers) as weight
        version `version` (default: one more than now); returns {tensors, bytes, version, seconds}. A name the model
        does not have, a missing tensor (without LoRA) or a shape mismatch is an error naming it."""
        version = self.version + 1 if version is None else version
        start = time.perf_counter()
        if self.kind == "vllm":
            stats = self.vllm.load_weights(weights, version)
        else:
            stats = {"tensors": self._copy_in(weights),
                     "bytes": sum(t.numel() * t.element_size() for t in {t.data_ptr(): t for t in weights.values()}.values())}
        self.version = version
        return {**stats, "version": version, "seconds": time.perf_counter() - start}

    def _copy_in(self, weights: dict[str, torch.Tensor]) -> int:
        self._check_fit({name: tuple(t.shape) for name, t in weights.items()}, set(weights))
        own = unwrap(self.engine).state_dict()
        for name, value in weights.items():
            own[name].copy_(value)
        return len(weights)

    def _check_fit(self, shapes: dict[str, tuple], names: set[str]) -> None:
        """The policy's tensors fit this model: `names` all the names sent (tied copies included), `shapes` the
        shape of each (or of each but the tied copies)."""
        own = unwrap(self.engine).state_dict()
        unknown = sorted(names - set(own))
        missing = [] if self.cfg.lora.enabled else sorted(set(own) - names)
        if unknown or missing or not names:
            raise ValueError(f"generator: the policy's weights do not match the generator's model (unknown "
                             f"{unknown[:3]}, missing {missing[:3]}, {len(names)} tensors sent)")
        for name, shape in shapes.items():
            if tuple(own[name].shape) != tuple(shape):
                raise ValueError(f"generator: {name} has shape {tuple(shape)} in the policy, {tuple(own[name].shape)} here")

    def join_transfer(self, host: str, port: int, world_size: int, layout, timeout_s: float) -> None:
        """generator.sync_transport=collective: join the policy's weight-transfer group (`cluster.transfer`) as a
        receiver: replica r as rank 1 + r x (processes per replica: a vLLM engine's workers, else 1)."""
        from cluster.transfer import TransferGroup

        replica = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        if self.kind == "vllm":
            self.vllm.join_transfer(host, port, 1 + replica * self.workers, world_size, layout, timeout_s)
        else:
            self._check_fit({name: shape for bucket in layout.buckets for name, shape, _, _ in bucket}, set(layout.names))
            self.transfer = TransferGroup(host, port, 1 + replica, world_size, self.engine.device, timeout_s)
        self.transfer_layout_ = layout

    @torch.no_grad()
    def receive_weights(self, version: int) -> dict:
        """The policy's weights of `version` over the transfer group (`PolicyActor.send_weights` sends them at the
        same time); returns {tensors, version, seconds} as `load_weights` does."""
        start = time.perf_counter()
        if self.kind == "vllm":
            stats = self.vllm.receive_weights(version)
        else:
            own = unwrap(self.engine).state_dict()
            count = 0
            for name, value in self.transfer.receive(self.transfer_layout_):
                own[name].copy_(value)
                count += 1
            stats = {"tensors": count}
        self.version = version
        return {**stats, "bytes": self.transfer_layout_.nbytes, "version": version, "seconds": time.perf_counter() - start}

    def sleep(self) -> None:
        """vllm on GPU with generator.sleep: free the KV cache (and offload the weights) while the policy trains."""
        if self.kind == "vllm":
            self.vllm.sleep()

    def wake_up(self) -> None:
        if self.kind == "vllm":
            self.vllm.wake_up()

    def shutdown(self) -> None:
        """Free the engine (vllm); called when the run ends, however it ends."""
        engine = self.__dict__.pop("vllm", None)
        if engine is not None:
            engine.shutdown()

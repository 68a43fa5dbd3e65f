"""The tools around the jobs, one module each, all with the same command-line shape: `HELP` and
`DESCRIPTION`, `add_args(parser)` and `run(args) -> exit code` (the CLI registers them as they are):

- `bench`: `rlhf bench <job>`, a job run through the skeleton with a measurement hook;
- `costmodel`: `rlhf cost`, memory, FLOPs, communication and step time of a PPO workload;
- `synth`: models of a size spec and rows of random tokens, for the bench;
- `serve`: `rlhf serve reward`, any reward as a Ray Serve HTTP endpoint;
- `data_check`: `rlhf data check`, a dataset validated as a job would load it;
- `audit`: `rlhf data audit`, what a preference dataset hides (disagreement, label errors, length bias,
  duplicates), a package: reading and duplicates (`scan`), the cross-fitted model (`crossfit`), the files (`report`);
- `args`: the argument types they share.
"""

"""What every job shares and no job owns: the job skeleton (`job`), its checkpoints (`checkpoint`),
metrics and the one curve plot (`metrics`), the checks before any role starts (`preflight`), the
resumable order of training rows (`streams`), the timed phases of a step (`phases`) and the on-disk cache
of built folders (`cache`). Nothing here knows a job, the built-in world or a built-in model name."""

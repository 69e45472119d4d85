"""How fast is MAPPA on one machine, next to what a user would pick instead? Prints one table.

    pip install trl==1.16.0 && python -m bench          # CPU, a few minutes (TRL: row 3 only)
    python -m bench --quick                              # smoke run
    python -m bench --device cuda                        # adds the 1.5B / 7B-class 4-bit rows

Rows: (1) rollout, generation batched across episodes vs one episode at a time; (2) the coach,
logit vs generate mode, and its share of a step; (3) a MAPPA step (3 agents + coach + 3 updates)
vs a TRL GRPOTrainer step (1 agent, LoRA), per 1,000 generated tokens; (4) peak memory, 1 adapter
vs 3 adapters + coach; (5) model sizes; (6) the code sandbox, sequential vs parallel; (7) steps at
train.py's defaults on a real-size random model, reserved memory per phase (CUDA; docs/gpu.md).

How it measures: the two sides of a comparison run in the same process on the same model and
settings, interleaved (A, B, A, B, ...) so load on a shared machine hits both alike, after one
warm-up; we report the median and [min-max] of the repetitions. Every repetition is re-seeded
and starts from the same adapter weights and optimiser state, so it does the same work. Peak
memory is measured in a fresh child process per configuration (peak RSS never goes down).

Files: __main__.py the command; rows.py the MAPPA pieces and rows 1-3 and 6; sizes.py rows 4-5
(each in a child process); measure.py timing and peak memory; report.py the table; trl_peer.py
the TRL GRPOTrainer step of row 3; defaults.py row 7 and the GPU check (gpu_check.sh); plan.py the
24 GB memory plan, estimated from the shapes.
"""

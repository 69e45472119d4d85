"""MAPPA: train a team of LLM agents with per-action process rewards from a coach.

    python train.py --task math --preset tiny      # a laptop, minutes
    python train.py --task math                     # one GPU, a real model in 4-bit

Each step: tasks -> the agents act (rollout) -> the grader and the coach score every action ->
advantages per agent -> one update per agent on its own adapter -> log -> checkpoint (and eval).
"""
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

import checkpoint
import dist
import rl
import sandbox
from agents import PIPELINES, ModelLoadError, acting_as, add_adapters, adapter_parameters, load_base, make_optimizers
from coach_api import make_coach
from config import Config, UserError, fail, parse_args
from reward import assign_rewards, grade
from rollout import Action, Episode, episode_guard, live, new_episodes, pad_left, prefix_forward, rollout, shared_prefix
from runlog import RunLog, rollout_metrics
from tasks import DataError, load_tasks, workspace


def train(cfg: Config, *, coach=None, agents=None, tasks=None, grader=grade, quiet: bool = False) -> Path:
    """Run (or resume) training; returns the run folder.

    The defaults come from cfg.task; an experiment can swap in its own team of `agents`, its own
    `tasks` (objects with .id and .problem or .description), a `grader(episode, agents)`, and a
    `coach`: any object with .score(list of (episode, action)) -> list of scores 0..10 or None.
    """
    # Every input is checked before anything is written: a typo never costs a run.
    agents = agents or PIPELINES[cfg.task]
    device = dist.init(cfg.device)  # data parallel (dist.py): joins the launcher's process group; alone a no-op
    run_dir, resuming = dist.on_main(checkpoint.check_run_dir, cfg)  # rank 0 decides, every rank agrees
    cfg.out_dir = cfg.out_dir or str(run_dir)
    train_tasks = tasks if tasks is not None else load_tasks(cfg.task, cfg.data, "train")
    seed_everything(cfg.seed)
    tokenizer, base = load_base(cfg.model, cfg.load_in_4bit, device)
    model = add_adapters(base, agents, r=cfg.lora_r, alpha=cfg.lora_alpha)
    dist.on_main(checkpoint.start_run_dir, cfg, run_dir, fresh=resuming is None)  # rank 0 writes
    if cfg.gradient_checkpointing:  # only active in train mode, i.e. in the update, never in rollouts
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    optimizers, schedulers = make_optimizers(model, agents, cfg.lr, cfg.weight_decay, cfg.warmup_steps)
    coach = coach or make_coach(cfg, model, tokenizer, agents)  # local base (adapters off) or --coach-url
    sampler = checkpoint.TaskSampler(train_tasks, cfg.seed)
    limits = sandbox.Limits(timeout_s=cfg.code_timeout, memory_mb=cfg.code_memory_mb)
    log = RunLog(run_dir, agents, cfg.log_samples, quiet=quiet)
    names = [a.name for a in agents]
    if dist.active():  # data parallel: rank 0's adapters on every rank, but each rank samples its own episodes
        dist.broadcast_([p for n, p in model.named_parameters() if "lora_" in n])
        seed_everything(cfg.seed + 100_003 * dist.rank())
    start = 0
    if resuming:
        state = checkpoint.load(resuming, model, names, optimizers, schedulers, sampler)
        dist.resume_rank(state, checkpoint.set_rng_state)  # this rank's own RNG; same number of processes
        start = state["step"]
        if dist.is_main():
            checkpoint.truncate_logs(run_dir, state["log_sizes"])
            print(f"resumed {run_dir} from step {start}", flush=True)

    for step in range(start + 1, cfg.steps + 1):
        t0 = time.perf_counter()
        # 1. tasks -> episodes, and every agent acts on all of them, stage by stage
        # (data parallel: every rank draws the same global list and keeps its own share; alone: all of it)
        tasks_now = dist.shard(sampler.take(cfg.problems_per_step * dist.world_size()))
        batch = new_episodes(tasks_now, cfg.samples_per_problem)
        try:
            rollout(model, tokenizer, agents, batch, temperature=cfg.temperature,
                    max_new_tokens=cfg.max_new_tokens, batch_size=cfg.gen_batch_size, limits=limits)
            t_rollout = time.perf_counter()
            # 2. the outcome (logged; the reward in --reward outcome), then the coach scores every action
            for ep in live(batch):
                with episode_guard(ep, "grader"):
                    grader(ep, agents)
            episodes = live(batch)  # an episode that failed is dropped and logged, never fatal
            for ep in batch:
                if ep.error:
                    print(f"dropped an episode of task {ep.task.id}: {ep.error}", file=sys.stderr, flush=True)
            if cfg.reward != "outcome":
                items = [(ep, a) for ep in episodes for a in ep.actions]
                for (_, a), s in zip(items, coach.score(items)):
                    a.score = s
            assign_rewards(episodes, cfg.reward, cfg.outcome_weight)
        finally:  # workspaces are per episode; the grader and the coach have read them
            workspace.remove_workspaces(batch)
        t_coach = time.perf_counter()
        # 3. each agent learns from its own actions only, on its own adapter and optimiser
        metrics = {"step": step, "episode/dropped": dist.sum_float(len(batch) - len(episodes))} \
            | rollout_metrics(dist.gather_episodes(episodes), agents)  # the global batch
        for agent in agents:
            actions = [a for ep in episodes for a in ep.actions if a.agent == agent.name]
            stats = update_agent(model, agent.name, actions, optimizers[agent.name], cfg, schedulers[agent.name])
            stats = dist.merge_update_stats(stats)
            metrics |= {f"{agent.name}/{k}": v for k, v in stats.items()}
        t_end = time.perf_counter()
        metrics |= {"time/step": t_end - t0, "time/rollout": t_rollout - t0,
                    "time/coach": t_coach - t_rollout, "time/update": t_end - t_coach}
        # 4. held-out evaluation, on its own RNG stream so training goes on exactly as without it
        if cfg.eval_every and step % cfg.eval_every == 0 and dist.is_main():
            import eval as evaluation
            with torch.random.fork_rng():
                result = evaluation.evaluate(model, tokenizer, cfg, agents, k=1, limit=cfg.eval_problems)
            metrics |= {f"eval/{k}": v for k, v in result["summary"].items()}
        # 5. log and checkpoint (data parallel: rank 0 writes; the checkpoint has every rank's RNG state)
        if dist.is_main():
            log.log(metrics, episodes)
        if step % cfg.save_every == 0 or step == cfg.steps:
            extra = dist.rank_states(checkpoint.rng_state)
            dist.on_main(checkpoint.save, run_dir, step, model, names, optimizers, schedulers, sampler,
                         cfg.keep_checkpoints, cfg, extra=extra)
            dist.barrier()
    return run_dir


def update_agent(model, name: str, actions: list[Action], optimizer, cfg: Config, scheduler=None) -> dict:
    """One agent's REINFORCE++ update on its own actions of this rollout batch (SPEC §4).

    Unscored actions (reward None) and actions cut off by the length limit get no loss and stay
    out of the baseline. Reference log-probs come from a batched no-grad pass with all adapters
    off; old-policy ones from one with the adapter on, or, with one epoch and one optimiser step,
    from the training pass itself (one_step_update). Returns metrics for the log.
    """
    train_on = [a for a in actions if a.reward is not None and not a.truncated]
    stats = {"trained": len(train_on), "loss": float("nan"), "kl": float("nan"), "clip_frac": float("nan"),
             "grad_norm": float("nan"), "skipped": 0, "lr": optimizer.param_groups[0]["lr"]}
    if not train_on and not dist.active():  # data parallel: a rank with none still joins every collective
        return stats
    T = max((len(a.action_ids) for a in train_on), default=1)
    mask = torch.zeros(len(train_on), T)
    for i, a in enumerate(train_on):
        mask[i, :len(a.action_ids)] = 1
    # One epoch, one optimiser step: the training pass's own log-probs, detached, ARE the old
    # policy's (TRL's num_iterations=1), so the extra no-grad pass is skipped; the KL term, needed
    # before that pass, reads the log-probs recorded while sampling (docs/speed.md: the mismatch).
    own_old = one_step_update(train_on, cfg)
    with torch.no_grad():
        if own_old:
            logp_old = sampled_logprobs(train_on, T)
        else:
            with acting_as(model, name):
                logp_old = action_logprobs(model, train_on, T, cfg.micro_batch_size, cfg.temperature)
        with acting_as(model, None):
            logp_ref = action_logprobs(model, train_on, T, cfg.micro_batch_size, cfg.temperature)
    kl = rl.kl_k1(logp_old, logp_ref)
    rewards = torch.tensor([a.reward for a in train_on])
    returns = rl.returns_to_go(rl.token_rewards(rewards, kl, mask, cfg.beta), mask)
    moments = dist.all_sum(rl.masked_moments(returns, mask))  # data parallel: the GLOBAL batch's baseline
    if moments[2] == 0:  # no rank has an action of this agent to train on
        return stats
    advantages = rl.normalize_advantages(returns, mask, moments)
    stats["kl"] = ((kl * mask).sum() / mask.sum()).item()

    params = adapter_parameters(model, name)
    losses, clips, norms = [], [], []
    model.train()
    with acting_as(model, name):
        # data parallel: every rank takes the same number of steps; one with fewer actions adds zero grads
        n_steps = dist.max_int(math.ceil(len(train_on) / cfg.minibatch_size))
        for _ in range(cfg.ppo_epochs):
            order = torch.randperm(len(train_on)).tolist()
            for mb_start in range(0, n_steps * cfg.minibatch_size, cfg.minibatch_size):
                mb = order[mb_start:mb_start + cfg.minibatch_size]
                n_tokens = dist.sum_float(mask[mb].sum().item())  # token mean over the global minibatch
                optimizer.zero_grad(set_to_none=True)
                for mc_start in range(0, len(mb), cfg.micro_batch_size):
                    mc = mb[mc_start:mc_start + cfg.micro_batch_size]
                    logp = action_logprobs(model, [train_on[i] for i in mc], T, len(mc), cfg.temperature)
                    old = logp.detach() if own_old else logp_old[mc]
                    loss, clip_frac = rl.clipped_policy_loss(logp, old, advantages[mc], mask[mc],
                                                             cfg.clip_eps, n_tokens)
                    loss.backward()
                    losses.append(loss.item())
                    clips.append(clip_frac.item())
                dist.sum_grads(params)  # data parallel: identical summed grads -> identical clip and step
                norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                if not torch.isfinite(norm):  # a non-finite loss or gradient: skip this step, count it
                    optimizer.zero_grad(set_to_none=True)
                    stats["skipped"] += 1
                    continue
                optimizer.step()
                if scheduler is not None:
                    scheduler.step()
                norms.append(norm.item())
    model.eval()
    stats.update(loss=sum(losses), clip_frac=float(np.mean(clips)) if clips else float("nan"), grad_norm=float(np.mean(norms)) if norms else float("nan"))
    return stats


def one_step_update(actions: list[Action], cfg: Config) -> bool:
    """True when the update is one optimiser step on actions whose sampling log-probs are known:
    then every training pass runs before the adapter moves, i.e. on the old policy itself."""
    return cfg.ppo_epochs == 1 and len(actions) <= cfg.minibatch_size and all(
        a.logprobs is not None and len(a.logprobs) == len(a.action_ids) for a in actions)


def sampled_logprobs(actions: list[Action], T: int) -> torch.Tensor:
    """The rollout's recorded log-probs as [len(actions), T] (0 past each action's end)."""
    out = torch.zeros(len(actions), T)
    for i, a in enumerate(actions):
        out[i, :len(a.logprobs)] = torch.tensor(a.logprobs)
    return out


def action_logprobs(model, actions: list[Action], T: int, micro_batch: int, temperature: float,
                    share_prefix: bool = True) -> torch.Tensor:
    """log pi(a_t | context) of every action token, in micro-batches. -> [len(actions), T] (0 past the end)

    Each row is laid out [left pad, prompt, action, right pad], so every action sits right after
    its exact generation context and logits are only computed for the action positions. Where the
    rows share a head (the agent's system prompt) it is computed once, gradients included
    (rollout.prefix_forward; the rows then end in their actions, right-aligned); not under
    gradient checkpointing, which drops the cache inside checkpointed layers."""
    out = torch.zeros(len(actions), T)
    checkpointed = model.training and any(getattr(m, "gradient_checkpointing", False) for m in model.modules())
    for start in range(0, len(actions), micro_batch):
        chunk = actions[start:start + micro_batch]
        Tc = max(len(a.action_ids) for a in chunk)
        seqs = [a.prompt_ids + a.action_ids for a in chunk]
        if share_prefix and len(chunk) > 1 and not checkpointed and shared_prefix(seqs, keep=Tc + 1) > 0:
            logits = prefix_forward(model, seqs, 0, keep=Tc + 1, logits_to_keep=Tc + 1)[0].logits
            acts = torch.zeros(len(chunk), Tc, dtype=torch.long, device=model.device)
            for i, a in enumerate(chunk):  # right-aligned: each row ends with its action
                acts[i, Tc - len(a.action_ids):] = torch.tensor(a.action_ids)
            logp = rl.token_logprobs(logits[:, :-1], acts, temperature).float().cpu()
            for i, a in enumerate(chunk):
                out[start + i, :len(a.action_ids)] = logp[i, Tc - len(a.action_ids):]
            continue
        P = max(len(a.prompt_ids) for a in chunk)
        prompts, prompt_mask = pad_left([a.prompt_ids for a in chunk], 0, model.device)
        acts = torch.zeros(len(chunk), Tc, dtype=torch.long, device=model.device)
        act_mask = torch.zeros(len(chunk), Tc, dtype=torch.long, device=model.device)
        for i, a in enumerate(chunk):
            acts[i, :len(a.action_ids)] = torch.tensor(a.action_ids)
            act_mask[i, :len(a.action_ids)] = 1
        ids, attn = torch.cat([prompts, acts], 1), torch.cat([prompt_mask, act_mask], 1)
        pos = (attn.cumsum(-1) - 1).clamp(min=0)
        logits = model(input_ids=ids, attention_mask=attn, position_ids=pos, logits_to_keep=Tc + 1).logits
        logp = rl.token_logprobs(logits[:, :-1], acts, temperature) * act_mask
        out[start:start + len(chunk), :Tc] = logp.float().cpu()
        assert P + Tc == ids.shape[1]
    return out


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def main(argv=None) -> None:
    cfg = None
    try:
        cfg = parse_args(argv)
        train(cfg)
    except (UserError, DataError, ModelLoadError) as e:
        fail(str(e))
    except torch.OutOfMemoryError:
        done = checkpoint.checkpoints(checkpoint.run_folder(cfg))
        last = f"the last checkpoint ({done[-1].name}) is intact: --resume {checkpoint.run_folder(cfg)}" if done \
            else "no checkpoint was written yet"
        print("error: out of GPU memory; lower --gen-batch-size, --micro-batch-size, --coach-batch-size or "
              f"--max-new-tokens (or use --gradient-checkpointing / a smaller --model); {last}", file=sys.stderr)
        sys.exit(3)


if __name__ == "__main__":
    main()

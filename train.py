"""MAPPA: train a team of LLM agents with per-action process rewards from a coach.

    python train.py --task math --preset tiny      # a laptop, minutes
    python train.py --task math                     # one GPU, a real model in 4-bit

Each step: tasks -> the agents act (rollout) -> the grader and the coach score every action ->
advantages per agent -> one update per agent on its own adapter -> log -> checkpoint (and eval).
"""
import functools
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
from coach_api import CoachGuard, make_coach
from config import Config, UserError, fail, parse_args
from precision import grad_scaler, resolve_dtype, wants_checkpointing
from reward import assign_rewards, grade
from rollout import Action, episode_guard, live, new_episodes, pad_left, prefix_forward, rollout, shared_prefix
from runlog import Progress, RunLog, interrupted, rollout_metrics, tracker_module
from tasks import DataError, load_tasks, workspace
from tasks.formats import FieldSpec


@checkpoint.one_writer  # the run folder's lock, taken below, is released however train() ends
def train(cfg: Config, *, coach=None, agents=None, tasks=None, grader=grade, quiet: bool = False) -> Path:
    """Run (or resume) training; returns the run folder.

    The defaults come from cfg.task; an experiment can swap in its own team of `agents`, its own
    `tasks` (objects with .id and .problem or .description), a `grader(episode, agents)`, and a
    `coach`: any object with .score(list of (episode, action)) -> list of scores 0..10 or None.
    """
    # Every input is checked before anything is written: a typo never costs a run.
    torch.set_num_threads(cfg.threads or dist.default_threads())  # before any work (dist.default_threads)
    agents = agents or PIPELINES[cfg.task]
    grader = functools.partial(grade, backend=cfg.grader) if grader is grade else grader  # --grader
    device = dist.init(cfg.device)  # data parallel (dist.py): joins the launcher's process group; alone a no-op
    run_dir, resuming = dist.on_main(checkpoint.check_run_dir, cfg)  # rank 0 decides, every rank agrees
    cfg.out_dir = cfg.out_dir or str(run_dir)
    if finished := checkpoint.finished_message(run_dir, resuming, cfg.steps):  # nothing to do: say how to extend
        dist.on_main(print, finished)
        return run_dir
    if cfg.report_to != "none":
        tracker_module(cfg.report_to)  # a missing tracker package fails here, before the model loads
    train_tasks = tasks if tasks is not None else load_tasks(cfg.task, cfg.data, "train", FieldSpec.of(cfg))
    dist.on_main(preflight, cfg, coach)  # rank 0 checks; a failure stops every rank
    if getattr(train_tasks, "summary", "") and not quiet:  # the shape read, the rows, one gold answer
        dist.on_main(print, train_tasks.summary)
    dist.on_main(checkpoint.lock_run_dir, run_dir)  # one writer per run folder; a second is refused
    seed_everything(cfg.seed)
    tokenizer, base = load_base(cfg.model, cfg.load_in_4bit, device, cfg.dtype)  # --dtype: weights + autocast
    model = add_adapters(base, agents, r=cfg.lora_r, alpha=cfg.lora_alpha)
    dist.on_main(checkpoint.start_run_dir, cfg, run_dir, fresh=resuming is None)  # rank 0 writes
    if wants_checkpointing(cfg, device, base):  # only active in train mode, i.e. in the update, never in rollouts
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    scalers = {a.name: grad_scaler(resolve_dtype(cfg.dtype, device), device) for a in agents}  # fp16: loss scaling
    optimizers, schedulers = make_optimizers(model, agents, cfg.lr, cfg.weight_decay, cfg.warmup_steps,
                                             (cfg.adam_beta1, cfg.adam_beta2), cfg.lr_schedule, planned_steps(cfg, agents))
    coach = CoachGuard(coach or make_coach(cfg, model, tokenizer, agents), cfg.max_unscored_steps)  # local base or --coach-url
    sampler = checkpoint.TaskSampler(train_tasks, cfg.seed)
    limits = sandbox.Limits(timeout_s=cfg.code_timeout, memory_mb=cfg.code_memory_mb)
    log = RunLog(run_dir, agents, cfg.log_samples, quiet=quiet, report_to=cfg.report_to, config=dict(vars(cfg)))
    names = [a.name for a in agents]
    if dist.active():  # data parallel: rank 0's adapters on every rank, but each rank samples its own episodes
        dist.broadcast_([p for n, p in model.named_parameters() if "lora_" in n])
        seed_everything(cfg.seed + 100_003 * dist.rank())
    start, progress = 0, Progress(enabled=dist.is_main() and not quiet)  # a status line on a terminal
    if resuming:
        state = checkpoint.load_newest(run_dir, model, names, optimizers, schedulers, sampler)  # or an older one
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
        progress(f"step {step}/{cfg.steps}: rollout, {len(batch)} episodes")
        try:
            rollout(model, tokenizer, agents, batch, temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens,
                    batch_size=cfg.gen_batch_size, limits=limits, prefill_tokens=cfg.prefill_tokens,
                    progress=lambda text: progress(f"step {step}/{cfg.steps}: rollout, {text}"))
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
                progress(f"step {step}/{cfg.steps}: coach, {len(items)} actions")
                for (_, a), s in zip(items, coach.score(items)):
                    a.score = s
            assign_rewards(episodes, cfg.reward, cfg.outcome_weight)
        finally:  # workspaces are per episode; the grader and the coach have read them
            workspace.remove_workspaces(batch)
        t_coach = time.perf_counter()
        # 3. each agent learns from its own actions only, on its own adapter and optimiser
        metrics = {"step": step, "episode/dropped": dist.sum_float(len(batch) - len(episodes))} \
            | rollout_metrics(dist.gather_episodes(episodes), agents, coached=cfg.reward != "outcome")  # global batch
        for agent in agents:
            actions = [a for ep in episodes for a in ep.actions if a.agent == agent.name]
            progress(f"step {step}/{cfg.steps}: update {agent.name}, {len(actions)} actions")
            stats = update_agent(model, agent.name, actions, optimizers[agent.name], cfg, schedulers[agent.name],
                                 scalers[agent.name])
            stats = dist.merge_update_stats(stats)
            metrics |= {f"{agent.name}/{k}": v for k, v in stats.items()}
        t_end = time.perf_counter()
        metrics |= {"time/step": t_end - t0, "time/rollout": t_rollout - t0,
                    "time/coach": t_coach - t_rollout, "time/update": t_end - t_coach}
        # 4. held-out evaluation, on its own RNG stream so training goes on exactly as without it
        if cfg.eval_every and step % cfg.eval_every == 0 and dist.is_main():
            import eval as evaluation
            progress(f"step {step}/{cfg.steps}: eval, {cfg.eval_problems} tasks")
            with torch.random.fork_rng():
                result = evaluation.evaluate(model, tokenizer, cfg, agents, k=1, limit=cfg.eval_problems)
            metrics |= {f"eval/{k}": v for k, v in result["summary"].items()}
        # 5. log and checkpoint (data parallel: rank 0 writes; the checkpoint has every rank's RNG state)
        if dist.is_main():
            progress.done()
            log.log(metrics, episodes)
        if step % cfg.save_every == 0 or step == cfg.steps:
            extra = dist.rank_states(checkpoint.rng_state)
            dist.on_main(checkpoint.save_safely, run_dir, step, model, names, optimizers, schedulers, sampler,
                         cfg.keep_checkpoints, cfg, extra=extra)
            dist.barrier()
    log.close()
    return run_dir


def update_agent(model, name: str, actions: list[Action], optimizer, cfg: Config, scheduler=None,
                 scaler=None) -> dict:
    """One agent's REINFORCE++ update on its own actions of this rollout batch (SPEC §4).

    Unscored actions (reward None) and actions cut off by the length limit get no loss and stay
    out of the baseline. Reference log-probs come from a batched no-grad pass with all adapters
    off; old-policy ones from one with the adapter on, or, with one epoch and one optimiser step,
    from the training pass itself (one_step_update). Both no-grad passes run on the first epoch's
    own micro-batches, so old and new log-probs come from the same layout (issue 29 item 3: in
    bf16 another padding or batch gives other roundings, and the PPO ratio would not start at 1).
    scaler: a GradScaler for fp16 (precision.grad_scaler), else None. Returns metrics for the log.
    """
    train_on = [a for a in actions if a.reward is not None and not a.truncated]
    stats = {"trained": len(train_on), "tokens": 0, "loss": float("nan"), "kl": float("nan"),
             "clip_frac": float("nan"), "grad_norm": float("nan"), "skipped": 0, "no_signal": float("nan"),
             "lr": optimizer.param_groups[0]["lr"]}
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
    # data parallel: every rank takes the same number of steps; one with fewer actions adds zero grads
    n_steps = dist.max_int(math.ceil(len(train_on) / cfg.minibatch_size))
    lengths = [len(a.prompt_ids) + len(a.action_ids) for a in train_on]
    orders = [by_length(torch.randperm(len(train_on)).tolist(), lengths, cfg.minibatch_size)
              for _ in range(cfg.ppo_epochs)]
    layout = micro_batches(orders[0], cfg.minibatch_size, cfg.micro_batch_size)  # epoch 1's, as trained
    with torch.no_grad():
        if own_old:
            logp_old = sampled_logprobs(train_on, T)
        else:
            with acting_as(model, name):
                logp_old = layout_logprobs(model, train_on, layout, T, cfg.temperature)
        with acting_as(model, None):
            logp_ref = layout_logprobs(model, train_on, layout, T, cfg.temperature)
    kl = rl.kl_k1(logp_old, logp_ref)
    rewards = torch.tensor([a.reward for a in train_on])
    advantages, stats["no_signal"] = compute_advantages(rewards, kl, mask, cfg)
    if advantages is None:  # no rank has an action of this agent to train on
        return stats
    stats["tokens"] = int(mask.sum().item())
    stats["kl"] = ((kl * mask).sum() / mask.sum()).item() if stats["tokens"] else float("nan")

    params = adapter_parameters(model, name)
    losses, clipped, seen, norms = [], 0.0, 0.0, []
    model.train()
    with acting_as(model, name):
        for order in orders:
            for mb_start in range(0, n_steps * cfg.minibatch_size, cfg.minibatch_size):
                mb = order[mb_start:mb_start + cfg.minibatch_size]
                # the loss is a mean over the GLOBAL minibatch: its tokens, or its actions (--loss-mean)
                n_tokens, n_actions = dist.sum_float(mask[mb].sum().item()), dist.sum_float(float(len(mb)))
                optimizer.zero_grad(set_to_none=True)
                mb_loss = 0.0
                for mc_start in range(0, len(mb), cfg.micro_batch_size):
                    mc = mb[mc_start:mc_start + cfg.micro_batch_size]
                    logp = action_logprobs(model, [train_on[i] for i in mc], T, len(mc), cfg.temperature)
                    old = logp.detach() if own_old else logp_old[mc]
                    weights = rl.loss_weights(mask[mc], cfg.loss_mean, n_tokens, n_actions)
                    loss, clip_frac = rl.clipped_policy_loss(logp, old, advantages[mc], mask[mc],
                                                             cfg.clip_eps, weights=weights)
                    (scaler.scale(loss) if scaler else loss).backward()
                    mb_loss += loss.item()
                    clipped += clip_frac.item() * mask[mc].sum().item()
                    seen += mask[mc].sum().item()
                losses.append(mb_loss)  # this rank's share of the minibatch's loss
                dist.sum_grads(params)  # data parallel: identical summed grads -> identical clip and step
                if scaler:
                    scaler.unscale_(optimizer)
                norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                if not torch.isfinite(norm):  # a non-finite loss or gradient: skip this step, count it
                    optimizer.zero_grad(set_to_none=True)
                    stats["skipped"] += 1
                    if scaler:
                        scaler.update()  # fp16 overflow: a smaller loss scale next time
                    continue
                if scaler:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                if scheduler is not None:
                    scheduler.step()
                norms.append(norm.item())
    model.eval()
    stats.update(loss=float(np.mean(losses)) if losses else float("nan"),
                 clip_frac=clipped / seen if seen else float("nan"),
                 grad_norm=float(np.mean(norms)) if norms else float("nan"))
    return stats


def compute_advantages(rewards: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, cfg: Config):
    """(advantages [B, T], no_signal 1.0/0.0) per --advantage, whitened with the moments of the
    global batch (data parallel: summed over ranks); (None, nan) when no rank has a token.

    no_signal (logged in both forms): the batch's reward std is below --min-reward-std; the paper's
    form still takes a full-size step then, the guarded form only the -beta*KL pull."""
    reward_moments = dist.all_sum(rl.masked_moments(rl.reward_returns(rewards, mask), mask))
    if reward_moments[2] == 0:
        return None, float("nan")
    flag = float(rl.no_signal(reward_moments, cfg.min_reward_std))
    if cfg.advantage == "guarded":
        return rl.guarded_advantages(rewards, kl, mask, cfg.beta, reward_moments, cfg.min_reward_std), flag
    returns = rl.returns_to_go(rl.token_rewards(rewards, kl, mask, cfg.beta), mask)
    moments = dist.all_sum(rl.masked_moments(returns, mask))  # data parallel: the GLOBAL batch's baseline
    return rl.normalize_advantages(returns, mask, moments), flag


def one_step_update(actions: list[Action], cfg: Config) -> bool:
    """True when the update is one optimiser step on actions whose sampling log-probs are known:
    then every training pass runs before the adapter moves, i.e. on the old policy itself."""
    return cfg.ppo_epochs == 1 and len(actions) <= cfg.minibatch_size and all(
        a.logprobs is not None and len(a.logprobs) == len(a.action_ids) for a in actions)


def micro_batches(order: list[int], minibatch: int, micro: int) -> list[list[int]]:
    """The micro-batches of one epoch, as update_agent's loop cuts them: `order` into minibatches,
    each into micro-batches. [0..9], minibatch 4, micro 3 -> [[0,1,2], [3], [4,5,6], [7], [8,9]]"""
    return [order[m:m + minibatch][c:c + micro] for m in range(0, len(order), minibatch)
            for c in range(0, min(minibatch, len(order) - m), micro)]


def by_length(order: list[int], lengths: list[int], minibatch: int) -> list[int]:
    """`order` with each minibatch's members sorted by length: the minibatches keep their random
    members, and the micro-batches cut from them hold rows of similar length (less padding)."""
    return [i for m in range(0, len(order), minibatch) for i in sorted(order[m:m + minibatch], key=lengths.__getitem__)]


def layout_logprobs(model, actions: list[Action], layout: list[list[int]], T: int, temperature: float) -> torch.Tensor:
    """action_logprobs with the rows batched as `layout` says (lists of indices into actions). -> [len(actions), T]"""
    out = torch.zeros(len(actions), T)
    for chunk in layout:
        out[chunk] = action_logprobs(model, [actions[i] for i in chunk], T, len(chunk), temperature)
    return out


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
    gradient checkpointing, which drops the cache inside checkpointed layers -- and then not in the
    no-grad passes either, so that they share the training pass's layout). No KV cache is kept
    (use_cache=False) beyond the shared head's, which prefix_forward needs."""
    out = torch.zeros(len(actions), T)
    checkpointed = any(getattr(m, "gradient_checkpointing", False) for m in model.modules())
    for start in range(0, len(actions), micro_batch):
        chunk = actions[start:start + micro_batch]
        Tc = max(len(a.action_ids) for a in chunk)
        seqs = [a.prompt_ids + a.action_ids for a in chunk]
        if share_prefix and len(chunk) > 1 and not checkpointed and shared_prefix(seqs, keep=Tc + 1) > 0:
            logits = prefix_forward(model, seqs, 0, keep=Tc + 1, logits_to_keep=Tc + 1, use_cache=False)[0].logits
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
        logits = model(input_ids=ids, attention_mask=attn, position_ids=pos, logits_to_keep=Tc + 1,
                       use_cache=False).logits
        logp = rl.token_logprobs(logits[:, :-1], acts, temperature) * act_mask
        out[start:start + len(chunk), :Tc] = logp.float().cpu()
        assert P + Tc == ids.shape[1]
    return out


def preflight(cfg: Config, coach=None) -> None:
    """The inputs train() would otherwise meet only after the model loaded or a step ran: the
    held-out tasks of --eval-every, and the --coach-url endpoint (one tiny request)."""
    if cfg.eval_every:
        import eval as evaluation
        load_tasks(cfg.task, cfg.eval_data, evaluation.default_split(cfg.eval_data), FieldSpec.of(cfg))
    if coach is None and cfg.coach_url and cfg.reward != "outcome":
        from coach_api import check_endpoint
        check_endpoint(cfg)


def planned_steps(cfg: Config, agents) -> dict[str, int]:
    """Each agent's optimiser steps over the run, for --lr-schedule cosine: --steps x --ppo-epochs x
    minibatches of its actions per step, counting every action it may take (an upper bound: an agent
    that acts less often ends above 0.1 x lr)."""
    per_step = cfg.problems_per_step * cfg.samples_per_problem
    return {a.name: cfg.steps * cfg.ppo_epochs * math.ceil(per_step * a.max_actions / cfg.minibatch_size)
            for a in agents}


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
    except KeyboardInterrupt:  # checkpoints are atomic and the lock is released: the run is resumable
        print(interrupted(checkpoint.run_folder(cfg) if cfg is not None else None), file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()

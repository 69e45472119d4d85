"""MAPPA: train a team of LLM agents with per-action process rewards from a coach.

    python train.py --task math --preset tiny      # a laptop, minutes
    python train.py --task math                     # one GPU, a real model in 4-bit

Each step: tasks -> the agents act (rollout) -> the grader and the coach score every action ->
advantages per agent -> one update per agent on its own adapter -> log -> checkpoint (and eval).
"""
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

import checkpoint
import rl
import sandbox
from agents import PIPELINES, ModelLoadError, acting_as, add_adapters, adapter_parameters, load_base, make_optimizers
from config import Config, UserError, fail, parse_args
from reward import LLMCoach, assign_rewards, grade
from rollout import Action, Episode, episode_guard, live, pad_left, rollout
from runlog import RunLog, rollout_metrics
from tasks import DataError


def train(cfg: Config, *, coach=None, agents=None, tasks=None, grader=grade, quiet: bool = False) -> Path:
    """Run (or resume) training; returns the run folder.

    The defaults come from cfg.task; an experiment can swap in its own team of `agents`, its own
    `tasks` (objects with .id and .problem or .description), a `grader(episode, agents)`, and a
    `coach`: any object with .score(list of (episode, action)) -> list of scores 0..10 or None.
    """
    # Every input is checked before anything is written: a typo never costs a run.
    agents = agents or PIPELINES[cfg.task]
    run_dir, resuming = checkpoint.check_run_dir(cfg)
    train_tasks = tasks if tasks is not None else load_tasks(cfg.task, cfg.data, "train")
    seed_everything(cfg.seed)
    tokenizer, base = load_base(cfg.model, cfg.load_in_4bit, cfg.device)
    model = add_adapters(base, agents, r=cfg.lora_r, alpha=cfg.lora_alpha)
    checkpoint.start_run_dir(cfg, run_dir, fresh=resuming is None)
    if cfg.gradient_checkpointing:  # only active in train mode, i.e. in the update, never in rollouts
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    optimizers, schedulers = make_optimizers(model, agents, cfg.lr, cfg.weight_decay, cfg.warmup_steps)
    coach = coach or LLMCoach(model, tokenizer, agents, cfg.coach, cfg.coach_sees_answer,
                              cfg.coach_max_new_tokens, cfg.coach_batch_size)
    sampler = checkpoint.TaskSampler(train_tasks, cfg.seed)
    limits = sandbox.Limits(timeout_s=cfg.code_timeout, memory_mb=cfg.code_memory_mb)
    log = RunLog(run_dir, agents, cfg.log_samples, quiet=quiet)
    names = [a.name for a in agents]
    start = 0
    if resuming:
        state = checkpoint.load(resuming, model, names, optimizers, schedulers, sampler)
        checkpoint.truncate_logs(run_dir, state["log_sizes"])
        start = state["step"]
        print(f"resumed {run_dir} from step {start}", flush=True)

    for step in range(start + 1, cfg.steps + 1):
        t0 = time.perf_counter()
        # 1. tasks -> episodes, and every agent acts on all of them, stage by stage
        batch = new_episodes(sampler.take(cfg.problems_per_step), cfg.samples_per_problem)
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
        finally:
            for ep in batch:  # workspaces are per episode; the coach has read the file trail
                if ep.workdir:
                    shutil.rmtree(ep.workdir, ignore_errors=True)
        t_coach = time.perf_counter()
        # 3. each agent learns from its own actions only, on its own adapter and optimiser
        metrics = {"step": step, "episode/dropped": len(batch) - len(episodes)} | rollout_metrics(episodes, agents)
        for agent in agents:
            actions = [a for ep in episodes for a in ep.actions if a.agent == agent.name]
            stats = update_agent(model, agent.name, actions, optimizers[agent.name], cfg, schedulers[agent.name])
            metrics |= {f"{agent.name}/{k}": v for k, v in stats.items()}
        t_end = time.perf_counter()
        metrics |= {"time/step": t_end - t0, "time/rollout": t_rollout - t0,
                    "time/coach": t_coach - t_rollout, "time/update": t_end - t_coach}
        # 4. held-out evaluation, on its own RNG stream so training goes on exactly as without it
        if cfg.eval_every and step % cfg.eval_every == 0:
            import eval as evaluation
            with torch.random.fork_rng():
                result = evaluation.evaluate(model, tokenizer, cfg, agents, k=1, limit=cfg.eval_problems)
            metrics |= {f"eval/{k}": v for k, v in result["summary"].items()}
        # 5. log and checkpoint
        log.log(metrics, episodes)
        if step % cfg.save_every == 0 or step == cfg.steps:
            checkpoint.save(run_dir, step, model, names, optimizers, schedulers, sampler, cfg.keep_checkpoints, cfg)
    return run_dir


def update_agent(model, name: str, actions: list[Action], optimizer, cfg: Config, scheduler=None) -> dict:
    """One agent's REINFORCE++ update on its own actions of this rollout batch (SPEC §4).

    Unscored actions (reward None) and actions cut off by the length limit get no loss and stay
    out of the baseline. Old-policy and reference log-probs come from batched no-grad passes of
    the same model: adapter on, then all adapters off. Returns metrics for the log.
    """
    train_on = [a for a in actions if a.reward is not None and not a.truncated]
    stats = {"trained": len(train_on), "loss": float("nan"), "kl": float("nan"), "clip_frac": float("nan"),
             "grad_norm": float("nan"), "skipped": 0, "lr": optimizer.param_groups[0]["lr"]}
    if not train_on:
        return stats
    T = max(len(a.action_ids) for a in train_on)
    mask = torch.zeros(len(train_on), T)
    for i, a in enumerate(train_on):
        mask[i, :len(a.action_ids)] = 1
    with torch.no_grad():
        with acting_as(model, name):
            logp_old = action_logprobs(model, train_on, T, cfg.micro_batch_size, cfg.temperature)
        with acting_as(model, None):
            logp_ref = action_logprobs(model, train_on, T, cfg.micro_batch_size, cfg.temperature)
    kl = rl.kl_k1(logp_old, logp_ref)
    rewards = torch.tensor([a.reward for a in train_on])
    returns = rl.returns_to_go(rl.token_rewards(rewards, kl, mask, cfg.beta), mask)
    advantages = rl.normalize_advantages(returns, mask)
    stats["kl"] = ((kl * mask).sum() / mask.sum()).item()

    params = adapter_parameters(model, name)
    losses, clips, norms = [], [], []
    model.train()
    with acting_as(model, name):
        for _ in range(cfg.ppo_epochs):
            order = torch.randperm(len(train_on)).tolist()
            for mb_start in range(0, len(order), cfg.minibatch_size):
                mb = order[mb_start:mb_start + cfg.minibatch_size]
                n_tokens = mask[mb].sum().item()
                optimizer.zero_grad(set_to_none=True)
                for mc_start in range(0, len(mb), cfg.micro_batch_size):
                    mc = mb[mc_start:mc_start + cfg.micro_batch_size]
                    logp = action_logprobs(model, [train_on[i] for i in mc], T, len(mc), cfg.temperature)
                    loss, clip_frac = rl.clipped_policy_loss(logp, logp_old[mc], advantages[mc], mask[mc],
                                                             cfg.clip_eps, n_tokens)
                    loss.backward()
                    losses.append(loss.item())
                    clips.append(clip_frac.item())
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
    stats.update(loss=sum(losses), clip_frac=float(np.mean(clips)), grad_norm=float(np.mean(norms)) if norms else float("nan"))
    return stats


def action_logprobs(model, actions: list[Action], T: int, micro_batch: int, temperature: float) -> torch.Tensor:
    """log pi(a_t | context) of every action token, in micro-batches. -> [len(actions), T] (0 past the end)

    Each row is laid out [left pad, prompt, action, right pad], so every action sits right after
    its exact generation context and logits are only computed for the action positions."""
    out = torch.zeros(len(actions), T)
    for start in range(0, len(actions), micro_batch):
        chunk = actions[start:start + micro_batch]
        P = max(len(a.prompt_ids) for a in chunk)
        Tc = max(len(a.action_ids) for a in chunk)
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


def new_episodes(tasks: list, samples: int) -> list[Episode]:
    """`samples` fresh episodes per task (data tasks get a workspace with train.csv and test.csv)."""
    episodes = []
    for task in tasks:
        for _ in range(samples):
            if hasattr(task, "description"):
                import tempfile

                import tabular
                workdir = tempfile.mkdtemp(prefix="mappa-ws-")
                tabular.write_workspace(task, Path(workdir))
                episodes.append(Episode(task, task.description, workdir=workdir))
            else:
                episodes.append(Episode(task, task.problem))
    return episodes


def load_tasks(task: str, source: str, split: str) -> list:
    if task == "data":
        import tabular
        return tabular.builtin_tabular(split) if source == "builtin" else tabular.load_task_folder(source)
    import tasks
    return tasks.load_problems(source, split)


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

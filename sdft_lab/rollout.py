"""On-policy rollouts from the student, and re-scoring a completion under any prompt.

A batch of completions is a [B, T] tensor of token ids, right-padded, with a mask
that is 1 up to and including the first EOS. Scoring runs [prompt + completion]
through the model and returns the hidden states that predict each completion
token, so that logits can be made chunk by chunk (see losses.py).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from . import sampler
from .bundled import machine_key, read_cache, write_cache
from .losses import chunked_token_logp, sequence_means
from .models import decoder, lm_head
from .prompts import left_pad


ENGINES = ("auto", "lean", "hf")


@dataclass
class Completions:
    ids: torch.Tensor  # [B, T] token ids, padded after EOS
    mask: torch.Tensor  # [B, T] 1 for real tokens, including the first EOS
    texts: list[str]
    engine: str = ""  # what sampled them: "lean (W·xᵀ 5/5)" with its matmul layouts, or "hf"

    @property
    def lengths(self) -> torch.Tensor:
        return self.mask.sum(-1)


def eos_ids(model, tokenizer) -> list[int]:
    ids = model.generation_config.eos_token_id
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    ids.append(tokenizer.eos_token_id)
    return sorted({i for i in ids if i is not None})


def end_of_turn_id(model, tokenizer) -> int:
    """The token the chat template closes an assistant turn with: what SFT trains the student to end on.

    Not simply the smallest EOS id: Qwen2.5-Instruct lists [<|im_end|>, <|endoftext|>] and Llama-3.x-Instruct
    [<|end_of_text|>, …, <|eot_id|>], and in both the turn ends with the other one.
    """
    eos = eos_ids(model, tokenizer)
    if tokenizer.chat_template is not None:
        mark = "\u2063END\u2063"  # text that no template writes by itself
        turn = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": mark}]
        text = tokenizer.apply_chat_template(turn, tokenize=False)
        after = tokenizer(text[text.rindex(mark) + len(mark):], add_special_tokens=False)["input_ids"]
        special = set(tokenizer.all_special_ids)
        for token in after:  # the first EOS after the answer, else its first special token
            if token in eos:
                return token
        for token in after:
            if token in special:
                return token
    return tokenizer.eos_token_id if tokenizer.eos_token_id is not None else eos[0]


def completions_from_ids(seqs: list[list[int]], tokenizer, eos: list[int], pad_id: int) -> Completions:
    """Cut each sequence after its first EOS and right-pad into a Completions batch."""
    cut = []
    for s in seqs:
        end = next((i + 1 for i, t in enumerate(s) if t in eos), len(s))
        cut.append(list(s[:end]))
    width = max(1, max(len(s) for s in cut))
    ids = torch.full((len(cut), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(cut), width), dtype=torch.long)
    for i, s in enumerate(cut):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    texts = [tokenizer.decode(s, skip_special_tokens=True) for s in cut]
    return Completions(ids, mask, texts)


@torch.no_grad()
def sample(
    model,
    tokenizer,
    prompts: list[list[int]],
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int | None = None,
    engine: str = "auto",
) -> Completions:
    """Sample one completion per prompt. temperature 0 is greedy. Reproducible for a given seed.

    engine: "lean" (sampler.py's loop, llama-family models; its matmul layout measured on this machine),
    "hf" (`model.generate`), or "auto": on the CPU whichever of the two decoded faster on this machine for
    this model and batch size (`faster_engine`), on a GPU generate. Both draw the same tokens for the same
    seed; the result's `engine` says which ran.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    device = next(model.parameters()).device
    if engine == "lean" and not sampler.supported(model):
        raise ValueError(f"the lean sampler supports {sampler.SUPPORTED} models without merged or DoRA adapters; "
                         f"use engine='hf' for {model.config.model_type}")
    ids, mask = left_pad(prompts, tokenizer.pad_token_id)
    eos = eos_ids(model, tokenizer)
    was_training = model.training
    model.eval()
    try:
        # auto on a GPU: generate(); the lean sampler's CUDA graph has not run on a GPU yet (make gpu-check times it)
        lean = engine == "lean" or (engine == "auto" and sampler.supported(model) and device.type == "cpu"
                                    and faster_engine(model, ids, mask, eos, tokenizer.pad_token_id) == "lean")
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            if seed is not None:
                torch.manual_seed(seed)
            if lean:
                new, how = sampler.generate(model, ids.to(device), mask.to(device), max_new_tokens, temperature,
                                            top_p, eos, tokenizer.pad_token_id)
            else:
                new = generate_clean(model, ids.to(device), mask.to(device), max_new_tokens, temperature, top_p,
                                     eos, tokenizer.pad_token_id)
    finally:
        model.train(was_training)
    out = completions_from_ids(new.tolist(), tokenizer, eos, tokenizer.pad_token_id)
    out.engine = f"lean ({how})" if lean else "hf"
    return out


# (machine, model shape, rows) → "lean" or "hf", measured by faster_engine; kept per machine in the cache folder
ENGINE_MARGIN = 0.9  # generate() must take under 90 % of the lean sampler's time to be chosen
TIMED_TOKENS = 12
clock = time.perf_counter  # faster_engine's timer
CHOSEN: dict[str, str] = {}  # this process's choices
ENGINES_FILE = "engines.json"  # in the cache folder


def faster_engine(model, ids: torch.Tensor, mask: torch.Tensor, eos: list[int], pad_id: int) -> str:
    """The engine engine="auto" uses on the CPU: the first time for a model shape and batch size on a machine,
    both decode TIMED_TOKENS tokens of this batch (after a warm-up), and the faster per token is kept in the
    process and in the cache folder's engines.json, so that every later run on the machine picks alike
    without timing again. The random stream is left as it was. SDFT_LAB_ENGINE=lean or =hf pins one."""
    if pin := os.environ.get("SDFT_LAB_ENGINE"):
        return pin
    cfg = model.config
    key = (f"{cfg.model_type} {cfg.hidden_size}x{cfg.num_hidden_layers} {next(model.parameters()).dtype} "
           f"{len(ids)} rows")
    if key in CHOSEN:  # decided once per process: another process's later timing does not switch this run
        return CHOSEN[key]
    saved = read_cache(ENGINES_FILE)
    here = saved.setdefault(machine_key(), {})
    if key not in here:
        run = {"lean": lambda n: sampler.generate(model, ids, mask, n, 1.0, 1.0, eos, pad_id)[0],
               "hf": lambda n: generate_clean(model, ids, mask, n, 1.0, 1.0, eos, pad_id)}
        per_token = {}
        with torch.random.fork_rng(), torch.no_grad():
            for name, decode in run.items():
                decode(2)  # warm-up: the lean sampler measures its matmul layouts here
                t = clock()
                steps = decode(TIMED_TOKENS).shape[1]  # fewer when every row ends early
                per_token[name] = (clock() - t) / steps
        here[key] = "hf" if per_token["hf"] < ENGINE_MARGIN * per_token["lean"] else "lean"
        write_cache(ENGINES_FILE, saved)
    CHOSEN[key] = here[key]
    return CHOSEN[key]


def generate_clean(model, ids: torch.Tensor, mask: torch.Tensor, max_new_tokens: int, temperature: float,
                   top_p: float, eos: list[int], pad_id: int) -> torch.Tensor:
    """`model.generate` drawing from the model's own distribution: temperature and top-p only.

    generate() fills every setting left unset from `model.generation_config` (Qwen2.5-Instruct sets
    repetition_penalty 1.05, others top_k or no_repeat_ngram_size), which would make the rollouts samples
    of another distribution. So it runs with a clean config in its place for the call.
    """
    from transformers import GenerationConfig

    hf = model.get_base_model() if hasattr(model, "get_base_model") else model
    saved = hf.generation_config
    greedy = temperature == 0
    hf.generation_config = GenerationConfig(bos_token_id=saved.bos_token_id, eos_token_id=eos, pad_token_id=pad_id)
    try:
        return model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=not greedy,
            temperature=None if greedy else temperature, top_p=None if greedy else top_p,
            top_k=None if greedy else 0,  # 0 = no top-k cut: the paper samples the full distribution
            eos_token_id=eos, pad_token_id=pad_id,
        )[:, ids.shape[1]:]
    finally:
        hf.generation_config = saved


def greedy_texts(model, tokenizer, prompts: list[list[int]], max_new_tokens: int, batch_size: int = 16,
                 desc: str | None = None) -> list[str]:
    """Greedy answers to many prompts, `batch_size` at a time (with a progress bar when desc is given)."""
    return greedy(model, tokenizer, prompts, max_new_tokens, batch_size, desc)[0]


def greedy(model, tokenizer, prompts: list[list[int]], max_new_tokens: int, batch_size: int = 16,
           desc: str | None = None) -> tuple[list[str], list[bool]]:
    """Greedy answers and, per answer, whether it was cut: the token budget ran out before an EOS."""
    texts, cut = [], []
    eos = eos_ids(model, tokenizer)
    for i in tqdm(range(0, len(prompts), batch_size), desc=desc, leave=False, disable=desc is None):
        y = sample(model, tokenizer, prompts[i:i + batch_size], max_new_tokens, temperature=0)
        texts += y.texts
        cut += [int(y.ids[j, n - 1]) not in eos for j, n in enumerate(y.lengths.tolist())]
    return texts, cut


def completion_hidden(model, prompts: list[list[int]], completions: Completions) -> torch.Tensor:
    """Hidden states [B, T, H] whose logits predict completion token t, given prompt + completion[:t].

    Prompts are left-padded and completions right-padded, so every completion
    starts at the same column P. Position ids count real tokens only, matching
    what generate() used when it sampled the completion.
    """
    device = next(model.parameters()).device
    p_ids, p_mask = left_pad(prompts, 0)
    ids = torch.cat([p_ids, completions.ids], dim=1).to(device)
    mask = torch.cat([p_mask, completions.mask], dim=1).to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    hidden = decoder(model)(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False).last_hidden_state
    P, T = p_ids.shape[1], completions.ids.shape[1]
    return hidden[:, P - 1 : P + T - 1]


@torch.no_grad()
def branch_hidden(model, prompts: list[list[int]], completions: Completions, of: list[int]) -> torch.Tensor:
    """completion_hidden for completions that share prompts: completion r follows prompts[of[r]].

    Each prompt runs once and its keys and values serve all its completions, so the k options of a
    multiple-choice question, or the answer and the passage after one meter question, cost one pass over the
    question instead of k. For scoring only: no gradient. A model that keeps no cache (gradient checkpointing
    in training mode turns it off) is scored with each prompt repeated instead.
    """
    body = decoder(model)
    if body.training and getattr(body, "gradient_checkpointing", False):
        return completion_hidden(model, [prompts[i] for i in of], completions)
    device = next(model.parameters()).device
    p_ids, p_mask = (t.to(device) for t in left_pad(prompts, 0))
    prefix = body(input_ids=p_ids, attention_mask=p_mask, position_ids=(p_mask.cumsum(-1) - 1).clamp(min=0),
                  use_cache=True)
    rows = torch.tensor(of, device=device)
    cache = prefix.past_key_values
    cache.batch_select_indices(rows)  # one copy of its prompt's keys and values per completion
    ids, mask = completions.ids.to(device), completions.mask.to(device)
    positions = p_mask.sum(-1)[rows, None] + torch.arange(ids.shape[1], device=device)
    hidden = body(input_ids=ids, attention_mask=torch.cat([p_mask[rows], mask], 1), position_ids=positions,
                  past_key_values=cache, use_cache=True).last_hidden_state
    # token 0 is predicted by the prompt's last position (left padding puts it in the last column), token t by t-1
    return torch.cat([prefix.last_hidden_state[rows, -1:], hidden[:, :-1]], 1)


@torch.no_grad()
def mean_logp(model, prompts: list[list[int]], completions: Completions, of: list[int] | None = None) -> torch.Tensor:
    """[B]: each completion's mean per-token log-prob after its prompt; of: completion r follows prompts[of[r]],
    each prompt run once for all of its completions (branch_hidden)."""
    device = next(model.parameters()).device
    mask = completions.mask.to(device)
    hidden = completion_hidden(model, prompts, completions) if of is None else branch_hidden(model, prompts,
                                                                                             completions, of)
    logp = chunked_token_logp(hidden, lm_head(model), completions.ids.to(device), mask)
    return sequence_means(logp, mask)[0]

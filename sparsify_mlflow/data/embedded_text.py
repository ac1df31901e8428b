"""The embedded default text dataset: movie-review sentiment generated from a small grammar.

No hub and no network: sentences are drawn from templates with positive and negative phrases,
including negations ("was not dull") and contrasts ("although ..., ..."), where the label follows
the meaning rather than single words, so a bag-of-words guess is not enough. The same row count
always gives the same files (fixed generator seed), written once to the cache folder as
train.jsonl + validation.jsonl (80/20) with string labels "negative"/"positive".
"""
from __future__ import annotations

import random
from pathlib import Path

from sparsify_mlflow.data.embedded import cached_splits, json_lines

DEFAULT_ROWS = 800
MIN_ROWS, MAX_ROWS = 40, 20000
GENERATOR_VERSION = 1
_SEED = 20240611

ASPECTS = (
    "the acting", "the plot", "the soundtrack", "the cinematography", "the dialogue", "the ending",
    "the pacing", "the cast", "the script", "the direction", "the camera work", "the costume design",
    "the story", "the humor", "the editing", "the lead performance", "the score", "the screenplay",
    "the effects work",
)
FILMS = ("this film", "the movie", "this picture", "the sequel", "this documentary", "the new thriller",
         "this comedy", "the drama", "this animated feature", "the remake")
WORDS = {
    "positive": ("wonderful", "brilliant", "moving", "delightful", "superb", "charming", "gripping",
                 "beautiful", "clever", "memorable", "fantastic", "heartfelt", "engaging", "stunning",
                 "excellent", "great", "good", "fun", "inventive", "touching"),
    "negative": ("dull", "boring", "awful", "clumsy", "tedious", "forgettable", "terrible", "weak",
                 "messy", "bland", "painful", "predictable", "lifeless", "poor", "bad", "disappointing",
                 "confusing", "shallow", "sloppy", "annoying"),
}
INTENSIFIERS = ("", "", "", "really ", "truly ", "absolutely ", "quite ", "remarkably ", "genuinely ", "rather ")
NEGATIONS = ("was not", "wasn't", "was never", "is not", "isn't", "was hardly")
VERDICTS = {
    "positive": ("I would recommend it to anyone.", "worth every minute.", "I left the cinema smiling.",
                 "I want to see it again.", "a real treat."),
    "negative": ("I would not recommend it.", "a waste of an evening.", "I almost walked out.",
                 "I want my money back.", "skip this one."),
}


def other(label: str) -> str:
    return "negative" if label == "positive" else "positive"


def sentence(rng: random.Random, label: str) -> str:
    """One review whose overall sentiment is `label`."""
    a, b = rng.sample(ASPECTS, 2)
    film = rng.choice(FILMS)
    good, bad = rng.choice(WORDS[label]), rng.choice(WORDS[other(label)])
    good2 = rng.choice(WORDS[label])
    i, j = rng.choice(INTENSIFIERS), rng.choice(INTENSIFIERS)
    templates = (
        f"{a} was {i}{good}.",
        f"{film} is {i}{good}.",
        f"I thought {a} was {i}{good}, and {b} was {j}{good2}.",
        f"{a} {rng.choice(NEGATIONS)} {bad}.",
        f"{film} {rng.choice(NEGATIONS)} {bad} at all, {rng.choice(VERDICTS[label])}",
        f"although {a} was {bad}, {b} was {i}{good}.",
        f"{a} was {bad} at first, but overall {film} was {i}{good}.",
        f"a {i}{good} experience from start to finish.",
        f"{a}: {good}. {b[0].upper() + b[1:]}: {good2}. {rng.choice(VERDICTS[label])}",
        f"{film}? {rng.choice(VERDICTS[label])}",
        f"some say {a} is {bad}, but I found it {i}{good}.",
        f"{a} and {b} were both {i}{good}.",
        f"{a} felt {i}{good}.",
    )
    text = rng.choice(templates)
    return text[0].upper() + text[1:]


def generate(rows: int, seed: int = _SEED) -> list[dict[str, str]]:
    """`rows` distinct, balanced examples {"text", "label"} (deterministic for a given seed)."""
    rng = random.Random(seed)
    out: list[dict[str, str]] = []
    seen: set[str] = set()
    attempts = 0
    while len(out) < rows:
        label = ("negative", "positive")[len(out) % 2]
        text = sentence(rng, label)
        attempts += 1
        if text in seen and attempts < rows * 50:
            continue
        seen.add(text)
        out.append({"text": text, "label": label})
    rng.shuffle(out)
    return out


def sentiment_dataset(rows: int = DEFAULT_ROWS) -> Path:
    """Folder with train.jsonl and validation.jsonl (80/20), generated once into the cache."""
    if not MIN_ROWS <= rows <= MAX_ROWS:
        raise ValueError(f"embedded sentiment rows must be in [{MIN_ROWS}, {MAX_ROWS}], got {rows}")
    return cached_splits(f"sentiment-synthetic-v{GENERATOR_VERSION}-{rows}", lambda: generate(rows), json_lines,
                         ".jsonl")

"""Embedded default datasets for NER and question answering, generated from one small world.

No hub and no network: people, places, organisations, jobs and years are drawn from fixed lists
and put into templates. Some names are ambiguous on purpose ("Jordan", "Washington", "Victoria"
are people and places), so the tag follows the context, not the word. The same row count always
gives the same files (fixed generator seed), written once to the cache folder:
- NER: train.jsonl + validation.jsonl (80/20) of {"tokens": [...], "ner_tags": ["B-PER", ...]};
- QA: train.json + validation.json in the nested SQuAD layout, contexts of two or three people
  with questions about where they were born, when, what they do and where they work.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

from sparsify_mlflow.data.embedded import cached_splits, json_lines

DEFAULT_ROWS = 600
MIN_ROWS, MAX_ROWS = 40, 20000
GENERATOR_VERSION = 1
_SEED = 20240612

FIRST = ("Maria", "John", "Aiko", "Pedro", "Fatima", "Olga", "Kwame", "Lena", "Ravi", "Sofia", "Jordan",
         "Victoria", "Chen", "Amara", "Lucas", "Ingrid", "Tomas", "Yusuf", "Elena", "Hugo")
LAST = ("Garcia", "Smith", "Tanaka", "Alves", "Haddad", "Petrova", "Mensah", "Weber", "Patel", "Rossi",
        "Washington", "Lincoln", "Li", "Okafor", "Martin", "Berg", "Novak", "Demir", "Costa", "Dubois")
PLACES = ("Paris", "Tokyo", "Berlin", "Lagos", "Lima", "Oslo", "Cairo", "Mumbai", "Jordan", "Washington",
          "Victoria", "New York", "Buenos Aires", "Cape Town", "Hong Kong", "San Diego", "Kuala Lumpur",
          "Rio de Janeiro", "Lincoln", "Vienna")
ORGS = ("Acme Corporation", "Globex", "Initech", "Red Cross", "Siemens", "Bank of Lima", "Nordic Rail",
        "Blue Harbor Labs", "United Nations", "Oxford University", "Tata Steel", "Green Leaf Foods",
        "Apex Robotics", "Lincoln Hospital", "Victoria Press", "Sunrise Airlines", "Orion Energy",
        "Delta Clinic", "Atlas Insurance", "Pioneer Bank")
JOBS = ("engineer", "nurse", "teacher", "pilot", "lawyer", "chemist", "architect", "journalist",
        "accountant", "surgeon", "designer", "translator")
NER_TEMPLATES = (
    "{PER} works for {ORG} in {LOC} .",
    "{PER} moved from {LOC} to {LOC} last year .",
    "Yesterday {PER} met {PER} at the {ORG} office .",
    "{ORG} opened a new branch in {LOC} .",
    "According to {PER} , {ORG} will hire more staff in {LOC} .",
    "The team from {LOC} was led by {PER} .",
    "{PER} visited {LOC} with colleagues from {ORG} .",
    "Shares of {ORG} rose after {PER} spoke in {LOC} .",
    "In {LOC} , {ORG} signed a deal with {ORG} .",
    "{PER} was born in {LOC} and studied there .",
    "A spokesperson for {ORG} said the plan was approved .",
    "It rained all week in {LOC} .",
)


def _entity(rng: random.Random, kind: str) -> str:
    if kind == "PER":
        return f"{rng.choice(FIRST)} {rng.choice(LAST)}" if rng.random() < 0.8 else rng.choice(LAST)
    return rng.choice(PLACES if kind == "LOC" else ORGS)


def ner_sentence(rng: random.Random) -> dict[str, list[str]]:
    """One sentence as whitespace tokens with IOB2 tags (B- opens an entity, I- continues it)."""
    tokens: list[str] = []
    tags: list[str] = []
    for word in rng.choice(NER_TEMPLATES).split():
        kind = word[1:-1] if word.startswith("{") else None
        if kind is None:
            tokens.append(word)
            tags.append("O")
            continue
        parts = _entity(rng, kind).split()
        tokens += parts
        tags += [f"B-{kind}"] + [f"I-{kind}"] * (len(parts) - 1)
    return {"tokens": tokens, "ner_tags": tags}


def _distinct(rows: int, make) -> list:
    """`rows` items from `make()`, without repeats while the generator still finds new ones."""
    out, seen, attempts = [], set(), 0
    while len(out) < rows:
        item = make()
        key = json.dumps(item, sort_keys=True)
        attempts += 1
        if key in seen and attempts < rows * 50:
            continue
        seen.add(key)
        out.append(item)
    return out


def generate_ner(rows: int, seed: int = _SEED) -> list[dict[str, list[str]]]:
    rng = random.Random(seed)
    return _distinct(rows, lambda: ner_sentence(rng))


def qa_paragraph(rng: random.Random, index: int) -> dict:
    """A context about two or three people and four questions on it, with answer offsets."""
    people = rng.sample([f"{first} {last}" for first in FIRST for last in LAST], rng.choice((2, 3)))
    context, facts = "", []
    for person in people:
        place, org, job, year = rng.choice(PLACES), rng.choice(ORGS), rng.choice(JOBS), str(rng.randint(1950, 2005))
        pieces = [(person, None), (" was born in ", None), (place, "place"), (" in ", None), (year, "year"),
                  (f". {person.split()[0]} works as {'an' if job[0] in 'aeiou' else 'a'} ", None), (job, "job"),
                  (" at ", None), (org, "org"), (". ", None)]
        fact = {"person": person}
        for text, slot in pieces:
            if slot:
                fact[slot] = (text, len(context))
            context += text
        facts.append(fact)
    questions = {
        "place": "Where was {p} born?", "year": "In which year was {p} born?",
        "job": "What is the job of {p}?", "org": "Where does {p} work?",
    }
    qas = []
    for slot in rng.sample(list(questions), 4):
        fact = rng.choice(facts)
        text, start = fact[slot]
        qas.append({"id": f"q{index}-{len(qas)}", "question": questions[slot].format(p=fact["person"]),
                    "answers": [{"text": text, "answer_start": start}]})
    return {"context": context.strip(), "qas": qas}


def generate_qa(questions: int, seed: int = _SEED) -> list[dict]:
    """SQuAD articles (one paragraph each) holding about `questions` questions in all."""
    rng = random.Random(seed)
    return [{"title": f"people-{i}", "paragraphs": [qa_paragraph(rng, i)]} for i in range(max(2, questions // 4))]


def ner_dataset(rows: int = DEFAULT_ROWS) -> Path:
    """Folder with train.jsonl and validation.jsonl (80/20) of tagged sentences, generated once."""
    _check(rows)
    return cached_splits(f"ner-synthetic-v{GENERATOR_VERSION}-{rows}", lambda: generate_ner(rows), json_lines, ".jsonl")


def qa_dataset(questions: int = DEFAULT_ROWS) -> Path:
    """Folder with train.json and validation.json (SQuAD layout, 80/20 by context), generated once."""
    _check(questions)
    return cached_splits(f"qa-synthetic-v{GENERATOR_VERSION}-{questions}", lambda: generate_qa(questions),
                         lambda part: json.dumps({"version": "synthetic-1", "data": part}, indent=1), ".json")


def _check(rows: int) -> None:
    if not MIN_ROWS <= rows <= MAX_ROWS:
        raise ValueError(f"embedded rows must be in [{MIN_ROWS}, {MAX_ROWS}], got {rows}")

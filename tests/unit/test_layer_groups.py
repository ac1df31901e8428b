"""benchmarks/layer_allocation.py sums DeepSparse's per-layer times by what a layer computes: the names
below are the ONNX node names our exports carry (DeepSparse's canonical_name of a layer)."""
from __future__ import annotations

import pytest

from benchmarks.layer_allocation import BERT_GROUPS, group_of, group_times

BERT = "/bert/encoder/layer.{}/{}/MatMul_quant"


@pytest.mark.parametrize(("module", "group"), [
    ("attention/self/query/module", "query/key/value"),
    ("attention/self/value/module", "query/key/value"),
    ("attention/self/attention_scores_matmul/forward_fn", "attention matmuls"),
    ("attention/self/context_layer_matmul/forward_fn", "attention matmuls"),
    ("attention/output/dense/module", "attention output"),
    ("intermediate/dense/module", "FFN up"),
    ("output/dense/module", "FFN down"),
])
def test_bert_layers_group_by_what_they_compute(module: str, group: str) -> None:
    assert group_of(BERT.format(11, module), "bert") == group


def test_other_layers_and_resnet_stages() -> None:
    assert group_of("/bert/embeddings/LayerNorm/Add_1", "bert") == "other"
    assert group_of("/classifier/module/Gemm", "bert") == "other"
    assert group_of("/layer3/layer3.2/conv2/Conv_quant", "vision") == "layer3"
    assert group_of("/conv1/module/Conv", "vision") == "other"


def test_group_times_sum_per_group() -> None:
    layers = {"layers": [{"name": "a", "canonical_name": BERT.format(0, "intermediate/dense/module"), "ms": 1.5},
                         {"name": "b", "canonical_name": BERT.format(1, "intermediate/dense/module"), "ms": 0.5},
                         {"name": "Softmax_3", "canonical_name": "", "ms": 0.25}]}
    assert group_times(layers, "bert") == {"FFN up": 2.0, "other": 0.25}
    assert set(group_times(layers, "bert")) <= set(BERT_GROUPS) and group_times(None, "bert") == {}

"""The accuracy benchmark's table: a row says the rate its pruned model started at, and a rerun at another
rate is kept beside the earlier one instead of replacing it."""
from benchmarks.recipe_accuracy import markdown, same_run


def row(variant: str, lr: float | None, sparse: float, example: str = "docstrings") -> dict:
    return {"example": example, "variant": variant, "level": 0.5, "metric": "accuracy", "machine": "AMD EPYC",
            "dense": 0.7633, "sparse": sparse, "drop_pt": round(100 * (0.7633 - sparse), 2), "sparsity": 0.71,
            "lr": lr, "dense_lr": 1e-4 if lr else None}


def test_each_file_is_a_line_with_its_rate_against_its_dense_baseline():
    rows = [row("block4", 2e-4, 0.7633), row("block4", 1e-4, 0.75), row("unstructured", None, 0.99, "digits")]
    lines = markdown(rows, "AMD EPYC").splitlines()[4:]
    assert lines[0].startswith("| digits |") and "| unstructured | 1x | 0.7633 | 0.9900 | +22.7 |" in lines[0]
    assert "| block4 | 2x | 0.7633 | 0.7633 | +0.0 | 0.71 |" in lines[1]
    assert "| block4 | 1x | 0.7633 | 0.7500 | -1.3 | 0.71 |" in lines[2]
    assert same_run(rows[0]) != same_run(rows[1])

"""A level that lost far more than seeds and schedules move gets a note saying what to try."""
from sparsify_mlflow.experiment import LARGE_DROP_PT, large_drop_note
from sparsify_mlflow.levels import PruningScope, plan_recipe

PLAN = plan_recipe(1.0, 6, PruningScope(prune=("fc.weight",), keep_dense={}), 1e-4)


def test_only_a_collapse_gets_the_note_and_it_says_what_to_try():
    assert large_drop_note(4.5, "accuracy", PLAN) is None  # what one seed of real text can lose at level 0.5
    assert large_drop_note(LARGE_DROP_PT, "accuracy", PLAN) is None
    note = large_drop_note(43.8, "accuracy", PLAN)
    assert note.startswith("the sparse model lost 43.8 points of accuracy at optim level 1:")
    assert "--optim-level" in note and "--epochs" in note and "promote --max-metric-drop" in note

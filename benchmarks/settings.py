"""What the suite measures and how hard: one dataclass, two presets (full and --quick)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class ModelSpec:
    """One model family of the engine section (ResNet-50 or a BERT-base-shaped encoder)."""

    key: str                 # "resnet50" | "bert-base"
    kind: str                # "vision" | "bert"
    image_size: int = 224    # vision
    layers: int = 12         # bert
    hidden: int = 768
    heads: int = 12
    intermediate: int = 3072
    seq_len: int = 128
    vocab: int = 30522       # bert: only the embedding table's size (no effect on engine speed)
    # The short schedule: plan `plan_epochs` epochs and step through all of them with
    # `steps_per_epoch` steps of `train_batch` generated rows (GMP reaches its final sparsity at
    # prune_end and QAT observers see a few batches; speed does not need accuracy).
    plan_epochs: int = 3
    steps_per_epoch: int = 4  # the least that gives QAT observers a forward before they are disabled
    train_batch: int = 2
    train_seq_len: int = 16   # bert: the recipe's steps run on short rows (export traces seq_len)

    def describe(self) -> str:
        if self.kind == "vision":
            return f"{self.key} {self.image_size}x{self.image_size}"
        return (f"{self.key} ({self.layers} layers, hidden {self.hidden}, {self.heads} heads, "
                f"intermediate {self.intermediate}, seq {self.seq_len})")


@dataclass(frozen=True)
class Settings:
    mode: str
    levels: tuple[float, ...]
    models: tuple[ModelSpec, ...]
    # --target at every level that prunes: each is built and timed (default = unstructured masks,
    # vnni = 1x4 blocks); levels that only quantize are built once
    targets: tuple[str, ...] = ("default", "vnni")
    # Pruned levels whose INT8 file is also timed on OpenVINO (its QDQ twin, 1x4 blocks: the mask the
    # targets use), so the fastest sparse deployment is measured, not assumed to be DeepSparse (OpenVINO
    # packs sparse INT8 weights on AMX CPUs; on one AMX Xeon that gained nothing: docs/engines.md).
    # Two levels, not all, to keep the suite within its time budget.
    openvino_levels: tuple[float, ...] = (0.5, 1.0)
    batch_sizes: tuple[int, int] = (1, 16)   # (latency, throughput)
    rounds: int = 3                          # repeated runs per figure, interleaved across variants
    # One run: at least this long and this many timed batches, after the warm-up. 1 s and one
    # warm-up batch (was 2 s and 2) to bring the full suite towards its 30-min budget.
    min_run_seconds: float = 1.0
    min_run_iterations: int = 3
    max_run_iterations: int = 200
    warmup_iterations: int = 1
    # training cost (resnet18 QAT-ready variant, generated images). The use case's default schedule
    # shape (10 epochs: pruning ramp 0-4, stabilisation 4-8, QAT 8-10); GMP updates masks 20 times
    # over the ramp, so with 12 steps per epoch (48 ramp steps) most ramp steps are plain steps as
    # in a real run (the default job has ~22 steps per epoch) and the median is a typical step.
    train_model: str = "resnet18"
    train_image_size: int = 64
    train_batch: int = 32
    train_plan_epochs: int = 10
    train_steps_per_epoch: int = 12
    train_dense_epochs: int = 1
    train_rounds: int = 3
    # end to end
    e2e_args: tuple[str, ...] = ()
    e2e_repeats: int = 1
    # Builds run with one torch thread: a build is mostly single-threaded graph rewriting, and on a
    # 2-core box that another process keeps busy, 2 OpenMP threads make torch 5-20x slower (every
    # parallel region waits for a descheduled thread). Levels other than 0 and the highest are
    # built two at a time; their export times are then not overhead figures.
    build_threads: int = 1
    parallel_builds: int = 2
    # --quick: all builds in one process, all engine timing in one, all training runs in one
    # (starting a process that imports torch + sparseml costs ~10 s of CPU)
    merge_workers: bool = False
    # torch threads of the training-cost runs and the main job: None = torch's default (what users
    # get). --quick uses 1 so the smoke test finishes on a busy box.
    job_threads: int | None = None
    # --quick only: run the main job while the other sections run (a smoke test, not a measurement)
    overlap_e2e: bool = False
    timeouts: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


FULL = Settings(
    mode="full",
    levels=(0.0, 0.1, 0.3, 0.5, 0.7, 1.0),
    models=(
        ModelSpec("resnet50", "vision", image_size=224),
        ModelSpec("bert-base", "bert", layers=12, seq_len=128),
    ),
)

# --quick checks that every section runs and the JSON is complete, not the speed, in < 5 min on a
# busy 2-core box: smaller models (ResNet-18 at 64 px, a 1-layer BERT-base-width encoder at seq
# 32 with a 2048-token vocabulary), 2 levels, short rounds, a 1-epoch main job on 600 of the 1797
# digits running alongside the rest, one torch thread.
QUICK = Settings(
    mode="quick",
    levels=(0.0, 1.0),
    targets=("vnni",),
    openvino_levels=(1.0,),
    models=(
        ModelSpec("resnet18", "vision", image_size=64),
        ModelSpec("bert-base", "bert", layers=1, seq_len=32, vocab=2048),
    ),
    rounds=2,
    min_run_seconds=0.2,
    min_run_iterations=2,
    max_run_iterations=20,
    warmup_iterations=1,
    train_image_size=32,
    train_batch=8,
    train_plan_epochs=3,
    train_steps_per_epoch=2,
    train_dense_epochs=1,
    train_rounds=1,
    e2e_args=("--data", "embedded:600", "--epochs", "1", "--benchmark-iterations", "3", "--benchmark-rounds", "3",
              "--no-int8-reference"),
    job_threads=1,
    merge_workers=True,
    overlap_e2e=True,
)


def preset(quick: bool) -> Settings:
    return QUICK if quick else FULL

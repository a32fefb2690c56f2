"""The recipe schema: typed sections, the only home of defaults.

Checks here need nothing but the recipe itself; names that live in registries (model
families, tasks, sizes, pipeline steps, optimizers) are checked after validation by
`recipe.check`, so the schema imports no plugin package and plugins may import it.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo

SCHEMA_VERSION = 1


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


# --------------------------------------------------------------------------- model
class ModelSpec(Strict):
    family: str = Field(description="Model family: bert, gpt2 or vit.")
    task: str = Field(
        "classification",
        description="classification | mlm | mlm_nsp (bert) | clm (gpt2) | mim (vit).",
    )
    size: str = Field("tiny", description="Size preset of the family (tiny, mini, small, base).")
    init_from: str | None = Field(
        None,
        description="Start from an HF model dir, one of our run dirs, a checkpoint dir, or a"
        " Hugging Face Hub id (org/name[@revision], from the local Hub cache).",
    )
    hidden_size: int | None = Field(None, gt=0, description="Override the preset's hidden size.")
    num_layers: int | None = Field(None, gt=0, description="Override the preset's layer count.")
    num_heads: int | None = Field(None, gt=0, description="Override the preset's head count.")
    intermediate_size: int | None = Field(None, gt=0, description="Override the FFN width.")
    dropout: float | None = Field(None, ge=0, lt=1, description="Override hidden/attn dropout.")
    image_size: int | None = Field(
        None, gt=0, description="vit: input side in pixels (images resized to it); null: data's."
    )
    patch_size: int | None = Field(
        None, gt=0, description="vit: patch side in pixels; override the preset's (4 for tiny)."
    )


# --------------------------------------------------------------------------- data
TEXT_FORMATS = ("csv", "jsonl", "txt")
IMAGE_FORMATS = ("imagefolder", "image_manifest", "npz", "digits")
SourceFormat = Literal[
    "auto", "csv", "jsonl", "txt", "imagefolder", "image_manifest", "npz", "digits"
]


class SourceSpec(Strict):
    path: str | None = Field(
        None, description="Data file (csv, jsonl, txt; .gz allowed) or image folder/manifest/npz."
    )
    format: SourceFormat = Field(
        "auto",
        description="auto (from the path), csv, jsonl, txt; images: imagefolder"
        " (root/<class>/*.png|jpg), image_manifest (csv/jsonl of path,label), npz (arrays"
        " images, labels), digits (scikit-learn's 1,797 8x8 digits; no path).",
    )
    image: str = Field("path", description="image_manifest: column/field holding the image path.")
    split_folders: bool = Field(
        False,
        description="imagefolder: path holds train/, validation/ (or val/), test/ folders;"
        " without a validation folder, data.split.validation of train/ is held out"
        " (stratified, seeded).",
    )
    on_bad_image: Literal["fail", "skip"] = Field(
        "fail", description="Corrupt/unreadable image: fail (exit 3) or skip with a count."
    )
    text: str = Field("text", description="Column/field holding the text.")
    label: str | None = Field("label", description="Column/field holding the label.")
    group: str | None = Field(
        None, description="Column/field whose values are kept together in one split."
    )
    encoding: str = Field("utf-8", description="Text encoding of the file.")
    txt_unit: Literal["line", "paragraph"] = Field(
        "line", description="txt: one record per line, or per blank-line-separated paragraph."
    )
    limit: int | None = Field(None, gt=0, description="Read only the first N rows.")

    @model_validator(mode="after")
    def _keys_fit_format(self) -> SourceSpec:
        if self.format == "digits" and self.path is not None:
            raise ValueError("path: format digits is bundled with scikit-learn; remove path")
        if self.format != "digits" and self.path is None:
            raise ValueError("path: required key is missing (only format digits needs no file)")
        used_by = {
            "image": ("image_manifest",),
            "split_folders": ("imagefolder",),
            "on_bad_image": ("imagefolder", "image_manifest"),
            "text": TEXT_FORMATS,
            "txt_unit": ("txt",),
            "encoding": (*TEXT_FORMATS, "image_manifest"),
        }
        # With format auto the kind of source is only known once the path is looked at.
        # A key at its default is fine: that is how a resolved recipe (lock file) reads.
        checked = used_by.keys() if self.format in IMAGE_FORMATS else {"image", "split_folders"}
        if self.format != "auto":
            unused = sorted(
                key
                for key in self.model_fields_set & checked
                if self.format not in used_by[key]
                and getattr(self, key) != type(self).model_fields[key].default
            )
            if unused:
                raise ValueError(f"{', '.join(unused)}: not used by format '{self.format}'")
        return self


class StepSpec(Strict):
    """One pipeline step: a registry name and its validated parameters."""

    name: str
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _from_short_form(cls, value: Any) -> Any:
        # `- strip_html` or `- redact_pii: {urls: false}` in YAML.
        if isinstance(value, str):
            return {"name": value, "params": {}}
        if isinstance(value, dict) and len(value) == 1 and "name" not in value:
            ((name, params),) = value.items()
            return {"name": name, "params": params if params is not None else {}}
        return value

    def parsed_params(self) -> BaseModel:
        from fine_tune_cli.data.steps import STEPS

        return STEPS.get(self.name).params(**self.params)


class SplitSpec(Strict):
    validation: float = Field(0.1, ge=0, lt=1, description="Fraction held out for validation.")
    test: float = Field(0.1, ge=0, lt=1, description="Fraction held out for test.")
    stratify: bool = Field(True, description="Keep label proportions equal across splits.")
    by_group: bool = Field(
        False, description="Split whole groups (data.source.group), e.g. books, not records."
    )
    seed: int = Field(0, description="Seed of the split (independent of train.seed).")

    @model_validator(mode="after")
    def _fractions(self) -> SplitSpec:
        if self.validation + self.test >= 1:
            raise ValueError("validation + test must leave some data for training (sum < 1)")
        return self


class TokenizerSpec(Strict):
    kind: Literal["auto", "wordpiece", "bpe", "pretrained"] = Field(
        "auto",
        description="auto: reuse init_from's tokenizer, else train wordpiece (bert) or bpe (gpt2).",
    )
    path: str | None = Field(
        None, description="Tokenizer dir or Hub id org/name[@revision] (kind: pretrained)."
    )
    vocab_size: int = Field(8000, ge=100, description="Vocabulary size of a trained tokenizer.")
    min_frequency: int = Field(2, ge=1, description="Min count of a merge/word piece.")
    lowercase: bool = Field(True, description="Lowercase before WordPiece training.")

    @model_validator(mode="after")
    def _path_for_pretrained(self) -> TokenizerSpec:
        if self.kind == "pretrained" and not self.path:
            raise ValueError("path: kind 'pretrained' needs a tokenizer directory in path")
        if self.kind != "pretrained" and self.path:
            raise ValueError(f"path: only used with kind 'pretrained' (kind is '{self.kind}')")
        return self


class DataSpec(Strict):
    source: SourceSpec
    steps: tuple[StepSpec, ...] = Field((), description="Pipeline steps, applied in order.")
    augment: tuple[StepSpec, ...] = Field(
        (),
        description="Train-split augmentation: text copies at prepare; images on the fly.",
    )
    split: SplitSpec = Field(default_factory=SplitSpec)
    balance: Literal["none", "oversample", "undersample", "class_weight"] = Field(
        "none", description="Class-imbalance handling on the train split."
    )
    tokenizer: TokenizerSpec = Field(default_factory=TokenizerSpec)
    max_length: int = Field(
        128, ge=8, le=8192, description="Max tokens per example (block length for LM tasks)."
    )
    nsp_negative_ratio: float = Field(
        0.5, gt=0, lt=1, description="mlm_nsp: share of pairs whose B segment is random."
    )
    cache_dir: str | None = Field(
        None, description="Prepared-data store (default $FTC_CACHE_DIR or ~/.cache/fine_tune_cli)."
    )
    num_workers: int = Field(
        1,
        ge=1,
        le=256,
        description="Processes tokenising chunks at prepare (output identical for any number).",
    )
    leakage: Literal["off", "report", "drop"] = Field(
        "off",
        description="After splitting: count validation/test records with a near duplicate in"
        " train (report) or also remove them (drop); counts go to the prepared manifest.",
    )
    leakage_threshold: float = Field(
        0.8, gt=0, le=1, description="Shingle Jaccard similarity that counts as leakage."
    )
    leakage_shingle: int = Field(5, ge=1, description="Words per shingle for data.leakage.")

    @field_validator("leakage", mode="before")
    @classmethod
    def _leakage_off(cls, value: Any) -> Any:
        return "off" if value is False else value  # YAML reads a bare `off` as false


# Data keys that do not change the prepared bytes (num_workers), or only when set away
# from their default (added later: recipes that predate them keep their data hash).
DATA_KEYS_OUT_OF_HASH = ("cache_dir", "num_workers")
DATA_KEYS_HASHED_IF_SET = ("leakage", "leakage_threshold", "leakage_shingle")


# --------------------------------------------------------------------------- optim
# One model per optimizer, told apart by `name` (a discriminated union): a key the chosen
# optimizer does not take is an unknown key of its model, and a dump holds only its keys.
DEFAULT_OPTIMIZER = "adamw"
_OPTIMIZER_DOC = "sgd, adam, adamw or rmsprop."
_HEAD_LR_DOC = "Separate LR for the task head."


class _Optimizer(Strict):
    """Keys every optimizer takes (each variant adds its own, then head_lr)."""

    name: str = Field(DEFAULT_OPTIMIZER, description=_OPTIMIZER_DOC)
    lr: float = Field(5e-4, gt=0, description="Peak learning rate.")
    weight_decay: float = Field(0.01, ge=0, description="Decay (never on biases or LayerNorm).")
    fused: bool = Field(
        True,
        description="torch's fused kernel where one exists for the optimizer and device"
        " (SGD/Adam/AdamW on CPU and CUDA; ~3x faster steps); false or none: foreach.",
    )


class SGDSpec(_Optimizer):
    name: Literal["sgd"] = Field("sgd", description=_OPTIMIZER_DOC)
    momentum: float = Field(0.0, ge=0, lt=1, description="SGD/RMSprop momentum.")
    nesterov: bool = Field(False, description="SGD Nesterov momentum.")
    head_lr: float | None = Field(None, gt=0, description=_HEAD_LR_DOC)

    @model_validator(mode="after")
    def _nesterov_needs_momentum(self) -> SGDSpec:
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov: needs momentum > 0")
        return self


class AdamSpec(_Optimizer):
    name: Literal["adam"] = Field("adam", description=_OPTIMIZER_DOC)
    betas: tuple[float, float] = Field((0.9, 0.999), description="Adam/AdamW betas.")
    eps: float = Field(1e-8, gt=0, description="Adam/AdamW/RMSprop epsilon.")
    head_lr: float | None = Field(None, gt=0, description=_HEAD_LR_DOC)


class AdamWSpec(AdamSpec):
    name: Literal["adamw"] = Field("adamw", description=_OPTIMIZER_DOC)  # type: ignore[assignment]


class RMSpropSpec(_Optimizer):
    name: Literal["rmsprop"] = Field("rmsprop", description=_OPTIMIZER_DOC)
    eps: float = Field(1e-8, gt=0, description="Adam/AdamW/RMSprop epsilon.")
    momentum: float = Field(0.0, ge=0, lt=1, description="SGD/RMSprop momentum.")
    alpha: float = Field(0.99, gt=0, lt=1, description="RMSprop smoothing constant.")
    head_lr: float | None = Field(None, gt=0, description=_HEAD_LR_DOC)


OPTIMIZER_SPECS: dict[str, type[_Optimizer]] = {
    "sgd": SGDSpec,
    "adam": AdamSpec,
    "adamw": AdamWSpec,
    "rmsprop": RMSpropSpec,
}


def _optimizer_name(value: Any) -> Any:
    """The variant tag: `name`, the default optimizer when the section leaves it out."""
    if isinstance(value, dict):
        return value.get("name", DEFAULT_OPTIMIZER)
    return getattr(value, "name", None)


OptimSpec = Annotated[
    Annotated[SGDSpec, Tag("sgd")]
    | Annotated[AdamSpec, Tag("adam")]
    | Annotated[AdamWSpec, Tag("adamw")]
    | Annotated[RMSpropSpec, Tag("rmsprop")],
    Discriminator(
        _optimizer_name,
        # recipe.messages words it like a registry's unknown name (choices listed)
        custom_error_type="unknown_variant",
        custom_error_message="unknown optimizer",
        custom_error_context={"kind": "optimizer", "key": "name", "section": "OptimSpec"},
    ),
]


def optim_spec(**fields: Any) -> SGDSpec | AdamSpec | AdamWSpec | RMSpropSpec:
    """The optimizer section from keyword fields (`name` picks the variant)."""
    return _optim_adapter().validate_python(fields)


@functools.cache
def _optim_adapter() -> TypeAdapter[Any]:
    return TypeAdapter(OptimSpec)


class ScheduleSpec(Strict):
    name: Literal["constant", "linear", "cosine", "plateau"] = Field(
        "linear", description="LR schedule after warmup."
    )
    warmup_steps: int = Field(0, ge=0, description="Linear warmup steps.")
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="Warmup as a fraction of steps.")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="Floor of linear/cosine decay.")
    factor: float = Field(0.5, gt=0, lt=1, description="plateau: LR multiplier on a plateau.")
    patience: int = Field(2, ge=0, description="plateau: evals without improvement first.")

    @model_validator(mode="after")
    def _one_warmup(self) -> ScheduleSpec:
        if self.warmup_steps and self.warmup_ratio:
            raise ValueError("set warmup_steps or warmup_ratio, not both")
        return self


# --------------------------------------------------------------------------- train
class EarlyStoppingSpec(Strict):
    patience: int | None = Field(None, ge=1, description="Evals without improvement; off if null.")
    min_delta: float = Field(0.0, ge=0, description="Smallest change that counts as better.")


class DistributedSpec(Strict):
    strategy: Literal["ddp", "fsdp"] = Field(
        "ddp",
        description="Multi-process training under torchrun or --nproc: ddp (each process"
        " holds the whole model) or fsdp (weights, gradients and optimizer state sharded"
        " across processes, for models that do not fit one device).",
    )
    timeout_s: int = Field(600, gt=0, description="Collective timeout before a rank is failed.")


LOWER_IS_BETTER = {"loss", "perplexity", "ece", "reconstruction_loss"}


class DistillSpec(Strict):
    teacher: str = Field(description="Run dir (or exported HF dir) of the teacher model.")
    temperature: float = Field(2.0, gt=0, description="Softmax temperature of the soft labels.")
    alpha: float = Field(0.5, ge=0, le=1, description="Weight of the soft-label (KL) loss.")


# int | word keys of TrainSpec: (the word, the smallest count, the message otherwise)
_COUNT_OR_WORD = {
    "eval_every": ("epoch", 1, "must be a positive number of steps or 'epoch'"),
    "workers": ("auto", 0, "must be 'auto' or a number of processes >= 0 (0: a thread)"),
}


class TrainSpec(Strict):
    epochs: int = Field(3, ge=1, description="Passes over the train split.")
    max_steps: int | None = Field(None, ge=1, description="Optimizer steps; overrides epochs.")
    batch_size: int = Field(32, ge=1, description="Per-device micro-batch size.")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    batching: Literal["random", "length_grouped"] = Field(
        "random",
        description="length_grouped: batches of similar-length texts (less padding; order"
        " still seeded per epoch). Ignored by packed clm blocks and images.",
    )
    prefetch: int = Field(
        1, ge=0, description="Steps collated ahead in a background thread; 0: inline."
    )
    workers: int | Literal["auto"] = Field(
        "auto",
        description="Processes that collate train batches ahead (prefetch steps each);"
        " 0: the prefetch thread. auto: 1 for image tasks with data.augment (per-image"
        " Python work a thread cannot overlap) on Linux with >= 2 cores per process, else 0.",
    )
    eval_batch_size: int | None = Field(None, ge=1, description="Default: 2 x batch_size.")
    seed: int = Field(42, description="Seed for init, sampling and dropout.")
    eval_every: int | Literal["epoch"] = Field("epoch", description="Steps between evals.")
    save_every: int | None = Field(None, ge=1, description="Steps between checkpoints.")
    keep_last: int = Field(2, ge=1, description="Checkpoints kept (plus best/).")
    best_metric: str = Field("loss", description="Validation metric that picks best/.")
    best_mode: Literal["auto", "max", "min"] = Field(
        "auto", description="auto: min for loss/perplexity/ece, else max."
    )
    early_stopping: EarlyStoppingSpec = Field(default_factory=EarlyStoppingSpec)
    clip_grad_norm: float | None = Field(1.0, gt=0, description="Max grad norm; null disables.")
    precision: Literal["fp32", "bf16", "fp16"] = Field("fp32", description="Compute precision.")
    device: str = Field("auto", description="auto (cuda > mps > cpu), cpu, cuda, cuda:N, mps.")
    compile: bool = Field(False, description="torch.compile the model (no gain on CPU).")
    attention: Literal["auto", "sdpa", "eager"] = Field(
        "auto", description="Attention kernel; auto: transformers' choice (SDPA where supported)."
    )
    gradient_checkpointing: bool = Field(False, description="Trade compute for memory.")
    distill: DistillSpec | None = Field(
        None, description="Train against a teacher's soft labels (classification)."
    )
    max_bad_steps: int = Field(0, ge=0, description="Non-finite steps to skip before failing.")
    run_dir: str | None = Field(None, description="Default runs/<name>.")
    distributed: DistributedSpec = Field(default_factory=DistributedSpec)

    @field_validator("eval_every", "workers", mode="before")
    @classmethod
    def _count_or_word(cls, value: Any, info: ValidationInfo) -> Any:
        # one message for every wrong value (the int | word union gives one per member)
        word, least, message = _COUNT_OR_WORD[info.field_name]
        if value != word and (type(value) is not int or value < least):
            raise ValueError(message)
        return value

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", value):
            raise ValueError(f"unknown device '{value}' (auto, cpu, cuda, cuda:N, mps)")
        return value

    def mode(self) -> str:
        if self.best_mode != "auto":
            return self.best_mode
        return "min" if self.best_metric in LOWER_IS_BETTER else "max"


class MLMSpec(Strict):
    probability: float = Field(0.15, gt=0, lt=1, description="Share of tokens selected.")
    mask_ratio: float = Field(0.8, ge=0, le=1, description="Selected tokens set to [MASK].")
    random_ratio: float = Field(0.1, ge=0, le=1, description="Selected tokens set to random.")
    whole_word: bool = Field(False, description="Mask all pieces of a word together.")

    @model_validator(mode="after")
    def _ratios(self) -> MLMSpec:
        if self.mask_ratio + self.random_ratio > 1:
            raise ValueError("mask_ratio + random_ratio must be <= 1 (the rest stay unchanged)")
        return self


class GenerateSpec(Strict):
    samples: int = Field(4, ge=0, description="clm eval: continuations written to the report.")
    max_new_tokens: int = Field(40, ge=1, description="Tokens generated per continuation.")
    top_k: int = Field(40, ge=1, description="Top-k of the sampled continuation (plus greedy).")
    top_p: float = Field(
        1.0, gt=0, le=1, description="Nucleus sampling: smallest token set of this mass (1: off)."
    )
    temperature: float = Field(
        1.0, ge=0, description="Temperature of sampled continuations (0: greedy decoding)."
    )
    prompt_tokens: int = Field(16, ge=1, description="Held-out tokens used as the prompt.")


class MIMSpec(Strict):
    mask_ratio: float = Field(0.6, gt=0, lt=1, description="mim: share of mask blocks hidden.")
    mask_patch_size: int | None = Field(
        None, gt=0, description="mim: masked block side, px (a multiple of patch); null: 1 patch."
    )


class EvalSpec(Strict):
    explain: int = Field(
        0,
        ge=0,
        description="ftc eval (classifiers): explain N misclassified examples in the report"
        " (Integrated Gradients; needs the explain extra).",
    )
    baseline: bool = Field(
        True,
        description="ftc eval (classifiers): also fit a scikit-learn baseline on the train"
        " split (TF-IDF + logistic regression; pixels for images); false skips it.",
    )


TrackerName = Literal["tensorboard", "mlflow", "wandb"]


class LogSpec(Strict):
    every: int = Field(10, ge=1, description="Steps between metrics.jsonl lines.")
    progress_every: float = Field(
        30,
        ge=0,
        description="Seconds between progress lines (step, loss, lr, samples/s, eta) when"
        " stderr is not a terminal (cron, CI); also at step 1. 0: none. A terminal gets a bar.",
    )
    trackers: tuple[TrackerName, ...] | None = Field(
        None,
        description="Experiment trackers: tensorboard, mlflow, wandb (each needs its extra)."
        " null: tensorboard when installed; recipe.lock.yaml records the list that ran.",
    )
    tensorboard: bool | None = Field(
        None,
        description="Deprecated, use log.trackers: true adds tensorboard, false leaves it out"
        " of the default.",
    )

    @field_validator("trackers", mode="before")
    @classmethod
    def _one_tracker(cls, value: Any) -> Any:
        return (value,) if isinstance(value, str) else value  # log.trackers=mlflow

    @field_validator("trackers")
    @classmethod
    def _distinct(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is not None and len(set(value)) != len(value):
            raise ValueError(f"names a tracker twice: {list(value)}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> LogSpec:
        if self.tensorboard is False and "tensorboard" in (self.trackers or ()):
            raise ValueError("tensorboard: false contradicts trackers; drop log.tensorboard")
        return self

    def resolved_trackers(self) -> tuple[str, ...]:
        """The trackers a run uses, the default made explicit (tensorboard when installed,
        checked without importing it) and the deprecated log.tensorboard folded in."""
        import importlib.util

        if self.trackers is not None:
            names = self.trackers
        elif self.tensorboard is not None:
            names = ()
        else:
            names = ("tensorboard",) if importlib.util.find_spec("tensorboard") else ()
        if self.tensorboard and "tensorboard" not in names:
            names = ("tensorboard", *names)
        return names


class ExportSpec(Strict):
    max_abs_diff: float = Field(
        1e-3, ge=0, description="Parity gate (hf, onnx, pt2): max |logit difference|."
    )
    max_metric_drop: float = Field(
        0.01, ge=0, description="Parity gate (every format): allowed drop of the task metric."
    )
    parity_samples: int = Field(256, ge=1, description="Validation examples used for parity.")
    int8_max_abs_diff: float = Field(
        0.25, ge=0, description="int8 parity gate: max |logit difference| (quantization noise)."
    )
    int8_min_agreement: float = Field(
        0.99, ge=0, le=1, description="int8 parity gate: min share of predictions equal to fp32's."
    )
    opset: int = Field(18, ge=18, description="ONNX opset of onnx and int8 exports.")
    latency_runs: int = Field(
        20, ge=0, description="Single-example latency: median of N timed runs (0 skips it)."
    )
    prune_sparsity: float = Field(
        0.5, gt=0, lt=1, description="pruned: share of linear-layer weights set to zero."
    )
    prune_scope: Literal["global", "layer"] = Field(
        "global", description="pruned: smallest weights across all layers, or per layer."
    )
    prune_recovery_steps: int = Field(
        0, ge=0, description="pruned: fine-tune steps on the train split after pruning."
    )
    prune_recovery_lr: float | None = Field(
        None, gt=0, description="pruned: recovery LR (default optim.lr / 10, linear decay)."
    )


class Recipe(Strict):
    version: Literal[1] = Field(SCHEMA_VERSION, description="Schema version.")
    name: str = Field(description="Recipe name; names the default run dir.")
    description: str = Field("", description="One line shown by `ftc recipes list`.")
    model: ModelSpec
    data: DataSpec
    optim: OptimSpec = Field(default_factory=OPTIMIZER_SPECS[DEFAULT_OPTIMIZER])
    schedule: ScheduleSpec = Field(default_factory=ScheduleSpec)
    train: TrainSpec = Field(default_factory=TrainSpec)
    mlm: MLMSpec = Field(default_factory=MLMSpec)
    generate: GenerateSpec = Field(default_factory=GenerateSpec)
    mim: MIMSpec = Field(default_factory=MIMSpec)
    eval: EvalSpec = Field(default_factory=EvalSpec)
    log: LogSpec = Field(default_factory=LogSpec)
    export: ExportSpec = Field(default_factory=ExportSpec)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", value):
            raise ValueError("use letters, digits, '.', '_' and '-' (it names a directory)")
        return value

    def resolved(self) -> dict[str, Any]:
        """The full recipe as plain data (it validates again as a recipe of its own)."""
        return self.model_dump(mode="json")

    # -- derived paths -------------------------------------------------------------
    def run_dir(self) -> Path:
        """train.run_dir, else <runs dir>/<name> ($FTC_RUNS_DIR or ./runs)."""
        from fine_tune_cli.runs import default_runs_dir

        return Path(self.train.run_dir) if self.train.run_dir else default_runs_dir() / self.name


def models_in(annotation: Any) -> list[type[BaseModel]]:
    """The section models inside a field's annotation (`X`, `X | None`, `tuple[X, ...]`,
    every variant of a discriminated union)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in getattr(annotation, "__args__", ()) or ():
        found += [m for m in models_in(arg) if m not in found]
    return found


def model_in(annotation: Any) -> type[BaseModel] | None:
    """The (first) section model inside a field's annotation."""
    found = models_in(annotation)
    return found[0] if found else None


def variants_of(field: FieldInfo) -> tuple[Discriminator | None, dict[str, type[BaseModel]]]:
    """A discriminated-union field's discriminator and its models by tag ((None, {}) else)."""
    discriminator = next((m for m in field.metadata if isinstance(m, Discriminator)), None)
    variants = {}
    for arg in getattr(field.annotation, "__args__", ()) or ():
        tag = next((m.tag for m in getattr(arg, "__metadata__", ()) if isinstance(m, Tag)), None)
        model = model_in(arg)
        if tag is not None and model is not None:
            variants[tag] = model
    return (discriminator, variants) if discriminator and variants else (None, {})

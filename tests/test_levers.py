"""Training levers: augmentation, class balance, logit adjustment."""

import json

import pytest
import torch

from eyescreen import augment
from eyescreen.config import preset
from eyescreen.distributed import Context, balanced_epoch_indices
from eyescreen.train import train
from synthetic import fundus


def _batch(n=4, size=64):
    import numpy as np

    return torch.from_numpy(np.stack([np.asarray(fundus(size, seed=i)[0]) for i in range(n)])).permute(
        0, 3, 1, 2
    )


def test_fundus_augmentation_is_per_image_seeded_and_keeps_uint8():
    batch = _batch()
    t = augment.build("fundus", 64)
    torch.manual_seed(0)
    a = augment.apply(t, batch)
    torch.manual_seed(0)
    b = augment.apply(t, batch)
    assert a.dtype == torch.uint8 and a.shape == batch.shape
    assert torch.equal(a, b)  # seeded
    same = batch[:1].repeat(4, 1, 1, 1)
    out = augment.apply(t, same)
    assert not all(torch.equal(out[0], out[i]) for i in range(1, 4))  # each image its own draw
    assert augment.apply(augment.build("none", 64), batch) is batch


def test_fundus_geometry_without_jitter_is_only_flips_and_keeps_black_outside():
    """With rotation, scale, shift and colour switched off, each image comes back as itself or one of
    its three flips: the batched affine resampling puts pixels where a flip would."""
    batch = _batch(8)
    t = augment.FundusAugment(degrees=0, scale=(1, 1), translate=0, brightness=0, contrast=0,
                              saturation=0, hue=0, gamma=(1, 1))  # fmt: skip
    torch.manual_seed(3)
    out = augment.apply(t, batch)
    kinds = set()
    for image, got in zip(batch, out, strict=True):
        flips = {"none": image, "h": image.flip(-1), "v": image.flip(-2), "hv": image.flip(-1, -2)}
        close = [k for k, f in flips.items() if (got.int() - f.int()).abs().max() <= 1]
        assert len(close) == 1, close
        kinds.add(close[0])
    assert len(kinds) >= 2  # flips are drawn per image
    # Rotation, scale and shift keep the corners (outside the fundus disc) black.
    geometric = augment.FundusAugment(brightness=0, contrast=0, saturation=0, hue=0, gamma=(1, 1))
    rotated = augment.apply(geometric, batch)
    assert int(rotated[:, :, 0, 0].max()) == 0


def test_light_augmentation_stays_close_to_a_flip_of_the_image():
    """`light` tilts by at most 15 degrees and leaves colour alone, so each output is near one of the four
    flips of its input, much nearer than with the full `fundus` augmentation (any angle, colour)."""
    batch = _batch(8)

    def distance_to_nearest_flip(name):
        torch.manual_seed(0)
        out = augment.apply(augment.build(name, 64), batch).float()
        flips = [batch, batch.flip(-1), batch.flip(-2), batch.flip(-1, -2)]
        return torch.stack([(out - f.float()).abs().mean((1, 2, 3)) for f in flips]).min(0).values

    light, full = distance_to_nearest_flip("light"), distance_to_nearest_flip("fundus")
    assert light.mean() < 0.6 * full.mean()
    assert (light > 0).all()  # but every image is changed


def test_fundus_augmentation_rejects_non_uint8_batches():
    with pytest.raises(ValueError, match="uint8"):
        augment.apply(augment.build("fundus", 64), torch.zeros(2, 3, 8, 8))


def test_balanced_sampler_draws_classes_equally_and_shards_for_ddp():
    labels = torch.tensor([0] * 90 + [1] * 10)
    order = balanced_epoch_indices(labels, seed=0, epoch=0, ctx=Context())
    share = (labels[order] == 1).float().mean().item()
    assert 0.4 < share < 0.6
    shards = [balanced_epoch_indices(labels, 0, 0, Context(2, r, r)) for r in (0, 1)]
    assert torch.equal(torch.sort(torch.cat(shards)).values, torch.sort(order).values)


def test_training_runs_with_every_lever_on(synthetic_manifest, tmp_path):
    cfg = preset("quick", model="tiny-cnn", image_size=40, epochs=1, batch_size=8, precision="fp32",
                 augment="fundus", class_weighting="balanced", sampler="balanced", logit_adjust=1.0,
                 label_smoothing=0.1, warmup_epochs=0)  # fmt: skip
    train(cfg, synthetic_manifest, tmp_path / "run", progress=False)
    assert (tmp_path / "run" / "best.safetensors").is_file()


def test_weight_average_is_what_gets_validated_and_saved(synthetic_manifest, tmp_path):
    from safetensors.torch import load_file

    from eyescreen.checkpoint import load_state

    def saved_and_trained(ema):
        cfg = preset(
            "quick", model="tiny-cnn", image_size=40, epochs=2, batch_size=8, precision="fp32", ema=ema
        )
        train(cfg, synthetic_manifest, tmp_path / f"ema{ema}", progress=False)
        saved = load_file(tmp_path / f"ema{ema}" / "last.safetensors")
        return saved, load_state(tmp_path / f"ema{ema}" / "resume.pt")["model"]

    saved, trained = saved_and_trained(0.0)
    assert all(torch.equal(saved[k], trained[k]) for k in saved)
    saved, trained = saved_and_trained(0.9)
    weights = [k for k in saved if saved[k].is_floating_point()]
    assert weights and not all(torch.equal(saved[k], trained[k]) for k in weights)
    with pytest.raises(ValueError, match="ema"):
        preset("graham", ema=1.0)


def test_tta_averages_its_views_and_evaluates(synthetic_manifest, tmp_path):
    from eyescreen.config import preset
    from eyescreen.evaluate import evaluate
    from eyescreen.inference import ViewAverage
    from eyescreen.models import create_model
    from eyescreen.train import train

    torch.manual_seed(0)
    model = create_model("tiny-cnn", 3).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        expected = (model(x) + model(x.flip(-1)) + model(x.flip(-2)) + model(x.flip(-1, -2))) / 4
        torch.testing.assert_close(ViewAverage(model)(x), expected)
        turns = [torch.rot90(x, k, dims=(-2, -1)) for k in range(4)]
        views = turns + [t.flip(-1) for t in turns]
        expected = torch.stack([model(v) for v in views]).mean(0)
        torch.testing.assert_close(ViewAverage(model, "dihedral")(x), expected)
        # Each is invariant to the transformations it averages over; flips alone are not to a turn.
        for views, moved in (("flips", x.flip(-1)), ("dihedral", torch.rot90(x, 1, dims=(-2, -1)))):
            torch.testing.assert_close(
                ViewAverage(model, views)(moved), ViewAverage(model, views)(x), rtol=1e-5, atol=1e-6
            )
        turned = torch.rot90(x, 1, dims=(-2, -1))
        assert not torch.allclose(ViewAverage(model)(turned), ViewAverage(model)(x), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="dihedral"):
        ViewAverage(model, "rotations")
    cfg = preset("quick", model="tiny-cnn", image_size=40, epochs=1, batch_size=8, precision="fp32")
    best = train(cfg, synthetic_manifest, tmp_path / "run", progress=False)
    report = evaluate(best, tmp_path / "tta", progress=False, n_resamples=20, tta="dihedral")
    assert report["test_time_augmentation"] == "quarter turns x flips (8 views)"
    assert "averaged over quarter turns x flips (8 views)" in (tmp_path / "tta" / "report.md").read_text()
    evaluate(best, tmp_path / "plain", progress=False, n_resamples=20)
    assert "test-time augmentation" not in (tmp_path / "plain" / "report.md").read_text()
    assert 0 <= report["metrics"]["macro_auc"] <= 1


def test_presets_are_the_recipes_measured_in_results():
    """benchmarks/RESULTS.md measured each recipe as a command and chose the default on validation; the
    presets must be those commands' settings, or the published numbers no longer describe them."""
    from eyescreen.config import DEFAULT_PRESET

    measured = preset("seed", enhance="graham", optimizer="adamw", lr=0.002, weight_decay=0.05, warmup_epochs=1,
                      label_smoothing=0.1, image_size=128, epochs=10, select_metric="macro_auc")  # fmt: skip
    assert preset("graham") == measured  # the seed+adamw+graham row
    assert preset("graham-augment") == preset(
        "graham", augment="fundus", epochs=40
    )  # graham+augment-128px-40ep
    assert preset("graham-findings") == preset(
        "graham-augment", findings="keywords", epochs=60
    )  # graham-augment-findings-60ep
    assert DEFAULT_PRESET == "graham-findings"  # the best validation macro-AUC, three seeds
    assert preset("finetune-224", init="a") == preset(
        "graham-findings", image_size=224, epochs=15, lr=0.0005, init="a"
    )  # ft224-from-findings-seed1/2
    assert preset("graham-findings-crop") == preset(
        "graham-findings", image_size=256, crop_size=160
    )  # graham-findings-crop160-256-seed1
    assert preset("graham-findings-256") == preset(
        "graham-findings", image_size=256, epochs=120
    )  # runs/gpu/f256-e120-s1 (benchmarks/gpu_recipes.py)
    assert preset("graham-findings-256-half") == preset(
        "graham-findings-256", model="resnet18-half"
    )  # graham-findings-256-half-seed1-fp32, -seed2-fp32
    assert preset("graham-augment-256") == preset(
        "graham-findings", image_size=256, epochs=120, findings=""
    )  # runs/gpu/nofind-f256-e120-s1 (benchmarks/gpu_recipes.py)


def test_default_preset_is_the_best_one_the_data_and_model_allow(tmp_path, synthetic_manifest):
    """graham-findings needs a diagnoses column and a single-eye model; without them the default is the
    best recipe that trains on any manifest, and the reason is said."""
    from eyescreen.config import default_preset

    with_keywords = tmp_path / "with.csv"
    with_keywords.write_text("image,label,keywords\na.jpg,normal,normal fundus\n")
    assert default_preset(with_keywords)[0] == "graham-findings"
    assert default_preset(with_keywords, "resnet18")[0] == "graham-findings"
    name, why = default_preset(with_keywords, "resnet18-binocular")
    assert name == "graham-augment" and "--findings keywords" in why
    name, why = default_preset(synthetic_manifest, "resnet18-binocular")  # no diagnoses column to name
    assert name == "graham-augment" and "--findings COLUMN" in why
    name, why = default_preset(synthetic_manifest)  # image,patient_id,eye,label
    assert name == "graham-augment" and "'keywords'" in why
    (tmp_path / "folder" / "normal").mkdir(parents=True)
    assert default_preset(tmp_path / "folder")[0] == "graham-augment"


def test_default_preset_on_a_gpu_is_the_long_256_px_recipe(tmp_path, synthetic_manifest):
    """On a GPU the best recipe found is affordable (minutes); on a CPU it would take hours, so the CPU
    default stays the hour-long one, and says which one a GPU would use."""
    from eyescreen.config import default_preset

    with_keywords = tmp_path / "with.csv"
    with_keywords.write_text("image,label,keywords\na.jpg,normal,normal fundus\n")
    name, why = default_preset(with_keywords, "resnet18", "cuda")
    assert name == "graham-findings-256" and "on a GPU" in why
    name, why = default_preset(with_keywords, "resnet18", "cpu")
    assert name == "graham-findings" and "graham-findings-256;" in why
    assert "on a CPU with an afternoon: graham-findings-256-half" in why  # nearly the same accuracy
    assert default_preset(with_keywords, "resnet18-binocular", "cuda")[0] == "graham-augment"
    # without a diagnoses column, 256 px and 120 epochs on a GPU too; a both-eye model was not measured there
    name, why = default_preset(synthetic_manifest, None, "cuda:0")
    assert name == "graham-augment-256" and "'keywords'" in why and "on a GPU" in why
    name, why = default_preset(synthetic_manifest, None, "cpu")
    assert name == "graham-augment" and "graham-augment-256" in why
    assert default_preset(synthetic_manifest, "resnet18-binocular", "cuda")[0] == "graham-augment"


def test_cli_train_without_a_preset_says_and_records_the_default(synthetic_manifest, tmp_path, capsys):
    from eyescreen.cli import main

    small = "--model tiny-cnn --image-size 32 --epochs 2 --precision fp32 --no-progress".split()
    assert main(["train", "--data", str(synthetic_manifest), "--out", str(tmp_path / "plain"), *small]) == 0
    assert "preset: graham-augment (the default here: no 'keywords' column" in capsys.readouterr().out
    saved = json.loads((tmp_path / "plain" / "config.json").read_text())["config"]
    assert saved["findings"] == "" and saved["augment"] == "fundus" and saved["enhance"] == "graham"

    rows = synthetic_manifest.read_text().splitlines()
    keywords = [rows[0] + ",keywords"] + [row + ",lesion; disc" for row in rows[1:]]
    with_keywords = synthetic_manifest.parent / "with_keywords.csv"
    with_keywords.write_text("\n".join(keywords) + "\n")
    assert main(["train", "--data", str(with_keywords), "--out", str(tmp_path / "findings"), *small]) == 0
    out = capsys.readouterr().out
    assert "preset: graham-findings (the default here: the manifest's 'keywords' column" in out
    assert "findings head: 2 findings (disc, lesion)" in out
    assert json.loads((tmp_path / "findings" / "config.json").read_text())["config"]["findings"] == "keywords"


def test_mixup_blends_pairs_of_the_batch_and_their_losses():
    from eyescreen.tasks import mixed, mixup

    torch.manual_seed(0)
    x = torch.rand(6, 3, 8, 8)
    original = x.clone()
    blend, (lam, perm) = mixup(x, alpha=0.4)
    torch.testing.assert_close(x, original)  # the batch itself is left as it was
    assert 0 <= lam <= 1 and sorted(perm.tolist()) == list(range(6))
    torch.testing.assert_close(blend, lam * x + (1 - lam) * x[perm])

    targets = torch.tensor([0, 1, 2, 0, 1, 2])
    loss = lambda t: t.float().sum()  # noqa: E731 - a criterion whose value shows which targets it saw
    assert mixed(loss, targets, None) == 6
    swapped = torch.tensor([1, 0, 3, 2, 5, 4])
    assert mixed(loss, targets, (0.25, swapped)) == 0.25 * 6 + 0.75 * targets[swapped].sum()


def test_mixup_trains_single_eye_models_and_refuses_both_eye_models(synthetic_manifest, tmp_path):
    cfg = preset(
        "quick", model="tiny-cnn", image_size=40, epochs=1, batch_size=8, precision="fp32", mixup=0.2
    )
    train(cfg, synthetic_manifest, tmp_path / "run", progress=False)
    config = json.loads((tmp_path / "run" / "config.json").read_text())["config"]
    assert config["mixup"] == 0.2 and (tmp_path / "run" / "best.safetensors").is_file()
    both = preset("quick", model="tiny-cnn-binocular", image_size=40, epochs=1, mixup=0.2)
    with pytest.raises(ValueError, match="--mixup blends single eyes"):
        train(both, synthetic_manifest, tmp_path / "both", progress=False)
    with pytest.raises(ValueError, match="mixup must be zero"):
        preset("graham", mixup=-1.0)


def test_random_crop_copies_a_window_of_each_image_at_its_own_scale():
    batch = _batch(8, size=64)
    torch.manual_seed(1)
    out = augment.apply(augment.build("none", 64, crop_size=40), batch)
    assert out.shape == (8, 3, 40, 40) and out.dtype == torch.uint8
    corners = set()
    for image, got in zip(batch, out, strict=True):
        found = [
            (r, c) for r in range(25) for c in range(25) if torch.equal(image[:, r : r + 40, c : c + 40], got)
        ]
        assert len(found) >= 1  # an exact window: no resampling blur, no change of scale
        corners.add(found[0])
    assert len(corners) > 1  # each image its own window


def test_fundus_augmentation_with_a_crop_is_seeded_and_crop_size_must_fit():
    batch = _batch(4, size=64)
    t = augment.build("fundus", 64, crop_size=48)
    torch.manual_seed(0)
    a = augment.apply(t, batch)
    torch.manual_seed(0)
    assert a.shape == (4, 3, 48, 48) and torch.equal(a, augment.apply(t, batch))
    with pytest.raises(ValueError, match="does not fit"):
        augment.apply(augment.build("light", 64, crop_size=48), batch[:, :, :32, :32])
    with pytest.raises(ValueError, match="crop_size 128 must be 0"):
        preset("quick", image_size=128, crop_size=128)


@pytest.mark.parametrize("model", ["tiny-cnn", "tiny-cnn-binocular"])
def test_training_on_crops_validates_and_saves_a_whole_image_model(synthetic_manifest, tmp_path, model,
                                                                   monkeypatch):  # fmt: skip
    """The optimiser sees crops; validation, calibration and the checkpoint see whole images."""
    from eyescreen import inference
    from eyescreen.checkpoint import load_model

    seen = []
    real = inference.prepare_batch

    def recording(batch, *args, **kwargs):
        seen.append((torch.is_grad_enabled(), batch.shape[-1]))
        return real(batch, *args, **kwargs)

    monkeypatch.setattr(inference, "prepare_batch", recording)
    monkeypatch.setattr("eyescreen.tasks.prepare_batch", recording)
    cfg = preset("quick", model=model, image_size=40, crop_size=24, epochs=1, batch_size=8,
                 precision="fp32", augment="fundus")  # fmt: skip
    best = train(cfg, synthetic_manifest, tmp_path / "run", progress=False)
    assert {size for grad, size in seen if grad} == {24}
    assert {size for grad, size in seen if not grad} == {40}
    _, meta = load_model(best, "cpu")
    assert meta["config"]["crop_size"] == 24 and meta["preprocessing"]["image_size"] == 40


def _marked(n=1, size=64, at=(8, 8), width=6):
    """Black images with one white square (a stand-in disc) whose top-left pixel is `at` (row, col)."""
    batch = torch.zeros((n, 3, size, size), dtype=torch.uint8)
    batch[:, :, at[0] : at[0] + width, at[1] : at[1] + width] = 255
    disc = torch.tensor([at[0] + width / 2 - 0.5, at[1] + width / 2 - 0.5, float(width)])
    return batch, disc.repeat(n, 1)


def test_crops_on_the_disc_hold_it_at_any_rotation_and_zoom():
    batch, discs = _marked(64)
    marker = int(batch[0].sum())
    torch.manual_seed(0)
    exact = augment.apply(augment.build("none", 64, crop_size=24, crop_on_disc=1.0), batch, discs)
    assert all(int(crop.sum()) == marker for crop in exact)  # the whole square, copied pixel for pixel
    torch.manual_seed(0)
    anywhere = augment.apply(augment.build("none", 64, crop_size=24), batch)
    assert sum(int(crop.sum()) == marker for crop in anywhere) < 8  # a corner disc: random crops miss it
    light = augment.build("light", 64, crop_size=24, crop_on_disc=1.0)
    light.brightness = light.contrast = 0.0  # geometry only: the marker's mass must survive resampling
    rotated = augment.apply(light, batch, discs)
    # The marker's mass scales with the zoom squared (0.95² to 1.05²); a cut marker would lose more.
    assert all(0.88 < int(crop.sum()) / marker < 1.12 for crop in rotated)


def test_crop_on_disc_is_a_share_and_unknown_discs_crop_anywhere():
    batch, discs = _marked(400)
    marker = int(batch[0].sum())
    torch.manual_seed(1)
    half = augment.apply(augment.build("none", 64, crop_size=24, crop_on_disc=0.5), batch, discs)
    held = sum(int(crop.sum()) == marker for crop in half) / len(half)
    assert 0.4 < held < 0.65  # 0.5 on the disc, plus the ~2% of random crops that happen to hold it
    unknown = torch.full_like(discs, float("nan"))
    torch.manual_seed(2)
    a = augment.apply(augment.build("none", 64, crop_size=24, crop_on_disc=1.0), batch, unknown)
    torch.manual_seed(2)
    assert torch.equal(a, augment.apply(augment.build("none", 64, crop_size=24), batch))
    with pytest.raises(ValueError, match="crop_on_disc needs crop_size"):
        preset("quick", crop_on_disc=0.5)
    with pytest.raises(ValueError, match=r"crop_on_disc must be in \[0, 1\]"):
        preset("quick", image_size=64, crop_size=32, crop_on_disc=1.5)


def test_disc_positions_are_located_on_the_colour_image_and_cached(tmp_path, monkeypatch):
    from eyescreen import discs as disc_module
    from synthetic import fundus

    paths = []
    for i in range(2):
        fundus(160, macula=True, seed=3)[0].save(tmp_path / f"eye{i}.png")
        paths.append(tmp_path / f"eye{i}.png")
    from PIL import Image

    Image.new("RGB", (160, 160)).save(tmp_path / "blank.png")  # no field of view: disc unknown
    found = disc_module.locate_discs([*paths, tmp_path / "blank.png"], 160, tmp_path / "cache")
    assert found.shape == (3, 3)
    disc_row, disc_col = 80 - 4, 80 + int(0.18 * 160)  # where synthetic.fundus draws it
    assert abs(found[0, 0] - disc_row) <= 4 and abs(found[0, 1] - disc_col) <= 4 and found[0, 2] > 10
    assert found[2].isnan().all()

    def fail(image):
        raise AssertionError("located again instead of read from the cache")

    monkeypatch.setattr(disc_module, "locate", fail)
    assert torch.equal(disc_module.locate_discs(paths, 160, tmp_path / "cache"), found[:2])


def test_training_with_crops_on_the_disc(synthetic_manifest, tmp_path, monkeypatch):
    from eyescreen import discs as disc_module

    located = []
    real = disc_module.locate_discs

    def recording(paths, *args, **kwargs):
        located.append(len(paths))
        return real(paths, *args, **kwargs)

    monkeypatch.setattr(disc_module, "locate_discs", recording)
    cfg = preset("quick", image_size=40, crop_size=24, crop_on_disc=0.5, epochs=1, batch_size=8,
                 precision="fp32", augment="fundus")  # fmt: skip
    train(cfg, synthetic_manifest, tmp_path / "run", progress=False)
    assert len(located) == 1 and located[0] > 0  # the training eyes, once
    both = preset("quick", model="tiny-cnn-binocular", image_size=40, crop_size=24, crop_on_disc=0.5)
    with pytest.raises(ValueError, match="--crop-on-disc crops single eyes"):
        train(both, synthetic_manifest, tmp_path / "both", progress=False)


def test_a_warm_up_as_long_as_the_run_names_both_flags():
    with pytest.raises(
        ValueError, match=r"warmup_epochs \(1\) must be smaller than epochs \(1\): give more --epochs"
    ):
        preset("graham-augment", epochs=1)
    assert preset("graham-augment", epochs=1, warmup_epochs=0).epochs == 1


def test_train_help_says_what_every_setting_does_and_offers_the_named_choices(capsys):
    from eyescreen.cli_args import build_parser
    from eyescreen.config import config_fields

    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--help"])
    shown = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for f in config_fields():
        assert " ".join(f.metadata["help"].split()) in shown, f.name
    assert "--augment {none,fundus,light}" in shown
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--out", "x", "--augment", "heavy"])
    assert "invalid choice: 'heavy'" in capsys.readouterr().err


def test_every_option_of_every_command_says_what_it_is_for():
    import argparse

    from eyescreen.cli_args import build_parser

    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    silent = [
        f"{name} {action.option_strings or action.dest}"
        for name, parser in commands.choices.items()
        for action in parser._actions
        if not action.help and not isinstance(action, argparse._HelpAction)
    ]
    assert not silent


def test_the_workflow_in_the_top_level_help_is_made_of_valid_commands():
    import shlex

    from eyescreen.cli_args import WORKFLOW, build_parser

    commands = [
        line.split("eyescreen ", 1)[1].split("(")[0] for line in WORKFLOW.splitlines() if "eyescreen " in line
    ]
    runnable = [c for c in commands if "COMMAND" not in c]
    assert len(runnable) == 7
    for command in runnable:
        args = build_parser().parse_args(shlex.split(command))  # exits (fails the test) on a bad option
        assert args.command == command.split()[0]


def test_compiled_training_keeps_the_full_batch_graph_after_a_smaller_last_batch():
    from eyescreen.train import compile_model

    torch._dynamo.reset()
    graphs = []  # [batch size it was compiled for, calls], per graph dynamo hands the backend

    def counting_backend(graph, example_inputs):
        images = next(x for x in example_inputs if isinstance(x, torch.Tensor) and x.shape[1:] == (3, 8, 8))
        entry = [images.shape[0], 0]
        graphs.append(entry)

        def run(*args):
            entry[1] += 1
            return graph.forward(*args)

        return run

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(2))
    net(torch.zeros(1, 3, 8, 8))  # materialise the lazy layer before compiling
    compiled = compile_model(net, backend=counting_backend)
    for batch in (32, 32, 18, 32, 32, 18, 32):  # epochs whose last batch is smaller
        compiled(torch.randn(batch, 3, 8, 8))
    assert sorted(graphs) == [[18, 2], [32, 5]]  # each shape its own graph; no dynamic one serving all
    torch._dynamo.reset()


def test_presets_lists_each_recipe_as_train_flags_that_rebuild_it(capsys):
    import shlex

    from eyescreen.cli import main
    from eyescreen.cli_args import build_parser, config_overrides
    from eyescreen.config import PRESETS, TrainConfig, preset_settings

    assert main(["presets"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for name in PRESETS:
        at = next(i for i, line in enumerate(lines) if line.split(" (")[0] == name)
        purpose, flags = lines[at + 1].strip(), lines[at + 2].strip()
        assert purpose and flags.startswith("= ")
        given = [] if flags == "= the defaults" else shlex.split(flags[2:])
        args = build_parser().parse_args(["train", "--out", "x", *given])
        assert TrainConfig(**config_overrides(args)) == preset_settings(name), name


def test_a_boolean_setting_is_shown_as_the_switch_that_sets_it():
    from eyescreen.cli_args import as_flag, build_parser

    for value in (True, False):
        args = build_parser().parse_args(["train", "--out", "x", as_flag("channels_last", value)])
        assert args.channels_last is value
    assert as_flag("image_size", 256) == "--image-size 256"

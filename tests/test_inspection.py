"""Images through attack and defense one by one (the Defense page and `python -m core inspect`),
the sensitivity grid, and reading a user's image file."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from core.cli import build_parser, defense_from_args, experiment_from_args, main
from core.commands import defend_command, inspect_command
from core.data import decode_upload
from core.defense import DefenseConfig, purify
from core.errors import ConfigError, DataError
from core.evasion import AttackConfig
from core.experiment import ExperimentConfig
from core.inspection import VERSIONS, inspect, sensitivity_grid
from core.models import predict
from core.robustness import RobustnessConfig

QUICK = DefenseConfig(iterations=50)


def test_inspection_shows_what_the_model_predicts_for_each_version(small_victim):
    model, images, labels = small_victim
    result = inspect(model, images[:4], labels[:4], AttackConfig(name="cw-l2"), QUICK)
    assert result.images.shape == (len(VERSIONS), 4, 3, 32, 32) and result.heatmaps.shape == (len(VERSIONS), 4, 32, 32)
    torch.testing.assert_close(result.images[0], images[:4])
    torch.testing.assert_close(result.images[2], purify(result.images[1], QUICK))
    torch.testing.assert_close(result.images[3], purify(images[:4], QUICK))
    for v in range(len(VERSIONS)):
        assert torch.equal(result.predicted[v], predict(model, result.images[v]))
    assert torch.equal(result.predicted[0], labels[:4]) and not torch.equal(result.predicted[1], labels[:4])
    assert bool((result.heatmaps.abs().flatten(2).sum(-1) > 0).all())
    rows = result.summary()
    assert rows[0]["label"] == int(labels[0]) and set(rows[0]) == {"label", *VERSIONS}
    assert 0 < rows[0]["attacked"]["linf_from_clean"] <= 1 and rows[0]["clean"]["linf_from_clean"] == 0


def test_without_labels_the_attack_moves_away_from_the_clean_prediction(small_victim):
    model, images, _ = small_victim
    result = inspect(model, images[:2], None, AttackConfig(name="pgd-linf"), QUICK)
    assert torch.equal(result.labels, predict(model, images[:2]))
    assert bool((result.predicted[1] != result.labels).all())


def test_sensitivity_grid_varies_one_parameter_at_a_time(small_victim):
    model, images, _ = small_victim
    rows = (("gamma", (0.02, 1.0)), ("cost_unit", (1 / 32, 1.0)))
    grid = sensitivity_grid(model, images[0], QUICK, rows)
    assert [[c.parameter for c in row] for row in grid] == [["gamma", "gamma"], ["cost_unit", "cost_unit"]]
    torch.testing.assert_close(grid[0][0].barycenter, purify(images[:1], QUICK)[0])
    torch.testing.assert_close(grid[0][0].barycenter, grid[1][0].barycenter)  # both are the base setting
    assert grid[0][1].config.gamma == 1.0 and grid[0][1].config.iterations == 50
    # In pixel units the kernel is the identity: the barycenter is a pixelwise mix, sharper than with transport.
    mix = grid[1][1].barycenter
    assert (mix - images[0]).abs().mean() < (grid[1][0].barycenter - images[0]).abs().mean()
    assert not grid[0][0].is_default and DefenseConfig().iterations == 300  # 50 iterations is not the default
    assert sensitivity_grid(model, images[0], DefenseConfig(), (("tau", (0.2,)),))[0][0].is_default
    with pytest.raises(ConfigError, match="varies"):
        sensitivity_grid(model, images[0], QUICK, (("window", (3,)),))


def _encoded(fmt: str, size=(57, 41)) -> bytes:
    rgb = (np.random.default_rng(0).random((size[1], size[0], 3)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format=fmt)
    return buffer.getvalue()


def test_uploads_of_any_size_are_resized_and_other_files_refused():
    for fmt in ("PNG", "JPEG"):
        image = decode_upload(_encoded(fmt))
        assert image.shape == (32, 32, 3) and image.dtype == np.uint8
    same_size = decode_upload(_encoded("PNG", (32, 32)))
    assert same_size.shape == (32, 32, 3)
    with pytest.raises(DataError, match="only PNG or JPEG"):
        decode_upload(_encoded("GIF"))
    with pytest.raises(DataError, match="not an image"):
        decode_upload(b"%PDF-1.4 not an image")
    with pytest.raises(DataError, match="empty"):
        decode_upload(b"")
    with pytest.raises(DataError, match="cannot be read"):
        decode_upload(_encoded("PNG")[:60])


def test_cli_commands_carry_every_setting_that_differs_from_the_defaults():
    experiment = ExperimentConfig.from_query({"subset": "3000", "epochs": "2"})
    attack_config = AttackConfig(name="fgsm", eps=4 / 255, seed=2)
    defense = DefenseConfig(marginals="B4", iterations=100, tau=0.1, cost_unit=0.05)
    command = inspect_command(experiment, "clean", "--test-index 3 9", attack_config, defense, sensitivity="attacked")
    assert command.startswith("python -m core inspect ") and "--theta" not in command
    args = build_parser().parse_args(command.split()[3:])
    assert experiment_from_args(args) == experiment and defense_from_args(args) == defense
    assert (args.test_index, args.model, args.sensitivity) == ([3, 9], "clean", "attacked")
    assert AttackConfig(name=args.attack, eps=args.eps, seed=args.attack_seed) == attack_config
    robustness = RobustnessConfig(images=200, eps_l2=0.25, defense=DefenseConfig(theta=1e4))
    args = build_parser().parse_args(defend_command(experiment, "poisoned", robustness).split()[3:])
    assert experiment_from_args(args) == experiment and defense_from_args(args) == robustness.defense
    assert (args.images, args.eps_l2, args.eps_linf, args.models, tuple(args.attacks)) == (200, 0.25, 8 / 255, "poisoned", robustness.attacks)


@pytest.mark.parametrize("argv, message", [
    ([], "either --test-index or --image"),
    (["--test-index", "99999"], "test indices must be in"),
    (["--image", "/nonexistent.png"], "--image: '/nonexistent.png' does not exist"),
    (["--test-index", "1", "--eps", "-1"], "--eps: '-1' is out of range"),
    (["--test-index", "1", "--tau", "0"], "--tau: '0' is out of range"),
])
@pytest.mark.data  # the test split is read before the index is checked
def test_cli_inspect_refuses_bad_input_with_a_message(argv, message, capsys):
    assert main(["inspect", "--quiet", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err


@pytest.mark.data
def test_cli_inspect_refuses_a_file_that_is_not_png_or_jpeg(tmp_path, capsys):
    path = tmp_path / "sign.gif"
    path.write_bytes(_encoded("GIF"))
    assert main(["inspect", "--quiet", "--image", str(path)]) == 2
    assert "only PNG or JPEG" in capsys.readouterr().err

import dataclasses

import pytest

from orion_utils.config import ConfigError, load_profile
from orion_utils.runner import NOTEBOOKS, parse_overrides

PROFILES = ["smoke", "toy", "smol", "colab", "paper"]


@pytest.mark.parametrize("name", PROFILES)
def test_profiles_load_and_cover_every_notebook_section(name):
    profile = load_profile(name)
    assert profile.name == name
    for sections in NOTEBOOKS.values():
        for section in sections:
            assert dataclasses.is_dataclass(profile.sections[section])


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"unknown key 'exposure\.kk'"):
        load_profile("toy", {"exposure": {"kk": 3}})


def test_unknown_section_is_named():
    with pytest.raises(ConfigError, match="unknown section 'exposur'"):
        load_profile("toy", {"exposur": {"k": 3}})


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match=r"'exposure\.k' should be int"):
        load_profile("toy", {"exposure": {"k": "four"}})
    with pytest.raises(ConfigError, match=r"'evaluation\.temperature' should be float"):
        load_profile("toy", {"evaluation": {"temperature": "hot"}})


def test_unknown_profile_lists_known_ones():
    with pytest.raises(ConfigError, match="known profiles:.*toy"):
        load_profile("nope")


def test_smoke_inherits_from_toy_and_overrides():
    toy, smoke = load_profile("toy"), load_profile("smoke")
    assert smoke.student.model == toy.student.model == "toy"
    assert smoke.data.n_train < toy.data.n_train


def test_overrides_from_the_command_line():
    overrides = parse_overrides(["evaluation.n_samples=8", "student.model=some/model", "data.benchmarks=['gsm8k']"])
    assert overrides == {"evaluation": {"n_samples": 8}, "student": {"model": "some/model"},
                         "data": {"benchmarks": ["gsm8k"]}}
    assert load_profile("toy", overrides).evaluation.n_samples == 8
    with pytest.raises(ConfigError):
        parse_overrides(["n_samples=8"])


def test_seed_overrides_touch_every_seeded_section_but_data():
    from orion_utils.runner import _merge, seed_overrides

    profile = load_profile("toy")
    overrides = seed_overrides(profile, 3)
    assert "data" not in overrides and {"exposure", "sft", "evaluation", "warmup"} <= set(overrides)
    seeded = load_profile("toy", _merge({"evaluation": {"n_samples": 2}}, overrides))
    assert seeded.exposure.seed == 3 and seeded.sft.seed == 3 and seeded.evaluation.n_samples == 2
    assert seeded.data.seed == profile.data.seed

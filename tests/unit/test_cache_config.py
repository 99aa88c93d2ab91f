"""cache.local_max_negative: its default, its override and its validation."""

import pytest

from proxy.config import ConfigError, settings_from_dict

MINIMAL = {"services": [{"id": "1", "token": "tok", "upstream": "http://127.0.0.1:3000"}]}


def cache(env: dict[str, str] | None = None, **values):
    return settings_from_dict({**MINIMAL, "cache": values}, source="f.yaml", env=env or {}).cache


def test_the_negative_segment_defaults_to_a_tenth_of_the_cache():
    assert cache().local_max_negative is None
    assert cache().negative_entries == 4_000  # of the default 40_000
    assert cache(local_max_entries=25).negative_entries == 2
    assert cache(local_max_entries=5).negative_entries == 1  # never 0


def test_the_negative_segment_can_be_set_in_the_file_or_the_environment():
    assert cache(local_max_entries=1000, local_max_negative=50).negative_entries == 50
    assert cache({"PROXY_CACHE__LOCAL_MAX_NEGATIVE": "7"}).negative_entries == 7


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"local_max_negative": 0},
            "cache.local_max_negative: must be greater than 0 and less than cache.local_max_entries",
        ),
        (
            {"local_max_entries": 10, "local_max_negative": 10},
            "cache.local_max_negative: must be greater than 0 and less than cache.local_max_entries",
        ),
        ({"local_max_negative": "many"}, "cache.local_max_negative: must be a whole number, got 'many'"),
        (
            {"local_max_entries": 1},
            "cache.local_max_entries: must be at least 2 (allowed and denied keys are kept apart)",
        ),
    ],
)
def test_a_bad_negative_segment_is_a_config_error(values, message):
    with pytest.raises(ConfigError) as err:
        cache(**values)
    assert f"f.yaml: {message}" in str(err.value).splitlines()

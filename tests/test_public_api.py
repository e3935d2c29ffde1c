"""The package's public names: sorted, all resolving, the second tier reachable, ``import sadp_data`` light."""

import subprocess
import sys

import pytest

import sadp_data as sd


def test_all_is_sorted_unique_and_every_name_resolves() -> None:
    assert sd.__all__ == sorted(set(sd.__all__))
    missing = [name for name in sd.__all__ if getattr(sd, name, None) is None]
    assert missing == []
    assert set(sd.__all__) <= set(dir(sd))


def test_the_second_tier_is_the_modules_own_objects() -> None:
    from sadp_data import distributed, methods
    from sadp_data.adapters import infobatch
    from sadp_data.remote import fetch

    assert sd.open_store is distributed.open_store
    assert sd.FetchOptions is fetch.FetchOptions
    assert sd.InfoBatch is infobatch.InfoBatch  # the drop-in for InfoBatch's API
    assert methods.InfoBatch is methods.InfoBatchBaseline is methods.METHODS["infobatch"]  # the baseline method
    assert sd.InfoBatch is not methods.InfoBatchBaseline


@pytest.mark.slow
def test_import_sadp_data_loads_fetch_only_when_fetch_options_is_used() -> None:
    code = (
        "import sys, sadp_data\n"
        "before = 'sadp_data.remote.fetch' in sys.modules\n"
        "options = sadp_data.FetchOptions()\n"
        "print(before, 'sadp_data.remote.fetch' in sys.modules, type(options).__name__)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.split() == ["False", "True", "FetchOptions"]


def test_an_unknown_attribute_is_an_attribute_error_naming_it() -> None:
    with pytest.raises(AttributeError, match="no attribute 'FetchOption'"):
        sd.FetchOption  # noqa: B018

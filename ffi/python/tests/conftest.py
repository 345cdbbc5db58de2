import os

import pytest


@pytest.fixture(autouse=True)
def _no_larder_environment(monkeypatch):
    """Tests choose their own settings: none leak in from the caller's environment."""
    for name in list(os.environ):
        if (name.startswith("LARDER_") and name != "LARDER_BIN_FOR_TESTS") or name == "MOONCAKE_OFFLOAD_FILE_STORAGE_PATH":
            monkeypatch.delenv(name)

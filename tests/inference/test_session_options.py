"""The spinning modes reach ONNX Runtime as its own session config entries, and settings name them."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from tuneloop.inference import session_options
from tuneloop.settings import ServingSettings


@pytest.mark.parametrize(("spinning", "allow", "stop_after_run"),
                         [("off", "0", "0"), ("during_runs", "1", "1"), ("always", "1", "0")])
def test_each_spinning_mode_sets_ort_config(spinning: str, allow: str, stop_after_run: str) -> None:
    options = session_options(2, spinning)  # type: ignore[arg-type]
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == allow
    assert options.get_session_config_entry("session.force_spinning_stop") == stop_after_run


def test_the_service_spins_during_runs_only_unless_told() -> None:
    assert ServingSettings().ort_spinning == "during_runs"
    assert ServingSettings(ort_spinning="off").ort_spinning == "off"
    with pytest.raises(ValidationError, match="during_runs"):
        ServingSettings(ort_spinning="sometimes")  # type: ignore[arg-type]

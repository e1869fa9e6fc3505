"""Look through a run's adapter with the shared analysis model, then give the model back unchanged.

The dashboard's model is loaded once per server and must not be changed by a run. To compare
base and tuned on the same weights (embedding map, generation probes), the adapter is
injected under the model's lock, used, and removed again with PEFT's ``unload()`` (no merge):
the base weights are never touched, and no other forward can run while it is attached.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from .anatomy import model_lock
from .errors import TLIError


@contextlib.contextmanager
def temporary_adapter(model, adapter_dir: str | Path):
    """``with temporary_adapter(model, run.adapter_dir) as tuned: ...`` -- tuned is a PeftModel."""
    from peft import PeftModel

    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise TLIError(f"no PEFT adapter in {adapter_dir}")
    with model_lock(model):
        try:
            tuned = PeftModel.from_pretrained(model, str(adapter_dir))
        except (ValueError, KeyError, RuntimeError) as exc:
            raise TLIError(f"the adapter in {adapter_dir} does not fit this model: "
                           f"{str(exc).splitlines()[0]}") from None
        tuned.eval()
        try:
            yield tuned
        finally:
            tuned.unload()

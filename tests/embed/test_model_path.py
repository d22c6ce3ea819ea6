"""A sentence-transformers model directory given by path (METIS_EMBED__MODEL_PATH)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydantic
import pytest

from metis_rag.config import EmbedSettings
from metis_rag.embed.packaged import count_tokens, packaged_model_dir
from metis_rag.embed.torch import TorchEmbedder


async def test_a_model_directory_is_loaded_with_its_own_tokenizer(tmp_path: Path) -> None:
    # A copy under another name stands for "any model directory" (no other model ships here).
    model = tmp_path / "my-minilm"
    model.symlink_to(packaged_model_dir(), target_is_directory=True)
    by_path = TorchEmbedder(EmbedSettings(backend="torch", model_path=str(model)))
    packaged = TorchEmbedder(EmbedSettings(backend="torch"))
    assert by_path.model_id == "torch:my-minilm" != packaged.model_id
    await by_path.start()
    await packaged.start()
    try:
        texts = ["How do I rotate log files?", "rsync copies files between hosts."]
        assert np.allclose(await by_path.embed(texts), await packaged.embed(texts), atol=1e-5)
        assert by_path.count_tokens(texts) == count_tokens(texts)
    finally:
        await by_path.close()
        await packaged.close()


def test_a_path_that_is_not_a_model_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(pydantic.ValidationError, match="not a model directory"):
        EmbedSettings(backend="torch", model_path=str(tmp_path))

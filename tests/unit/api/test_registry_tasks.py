"""What each served model is for (--task) and how an embed model pools (--pooling,
--embed-normalize over the checkpoint's sentence-transformers files)."""

from stratus.api.registry import ModelRegistry
from stratus.engine.pooling import Pooling
from tests.checkpoints import add_sentence_transformers_pooling, build_checkpoint


def test_tasks_and_pooling_overrides(tmp_path):
    path = build_checkpoint(tmp_path, "llama")
    add_sentence_transformers_pooling(path, "mean_tokens", normalize=True)
    paths = {"e5": path, "chat": path}
    registry = ModelRegistry(paths, tasks={"e5": "embed"})
    assert registry.models["e5"].task == "embed" and registry.models["chat"].task == "generate"
    assert registry._pooling("e5", path) == Pooling("mean", True)  # as the checkpoint declares
    assert registry._pooling("e5", None) == Pooling("last", True)  # no checkpoint here: the default
    overridden = ModelRegistry(paths, tasks={"*": "embed"}, pooling={"*": "cls"}, embed_normalize=False)
    assert overridden.models["chat"].task == "embed"
    assert overridden._pooling("e5", path) == Pooling("cls", False)

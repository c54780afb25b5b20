"""Bad input to `stratus compress`: a clear error, and nothing written."""

import json

import pytest
from click.testing import CliRunner

from stratus.cli.main import main
from stratus.compress import CompressError, CompressSpec, compress
from stratus.compress import checkpoint as checkpoint_module
from stratus.engine import CheckpointError, EngineConfig, EngineCore


def run(*args):
    return CliRunner().invoke(main, ["compress", *map(str, args)])


def entries(path):
    return sorted(p.name for p in path.iterdir())


def test_unknown_method_and_impossible_group_size(rand_dir, tmp_path):
    result = run(rand_dir, tmp_path / "out", "--method", "int3")
    assert result.exit_code == 2 and "'int3' is not one of" in result.output
    result = run(rand_dir, tmp_path / "out", "--method", "int4", "--group-size", "100")
    assert result.exit_code == 1 and "group size 100 is not possible" in result.output
    with pytest.raises(CompressError, match="unknown method"):
        compress(rand_dir, tmp_path / "out", CompressSpec("fp8"))
    with pytest.raises(CompressError, match="--awq applies to int4"):
        compress(rand_dir, tmp_path / "out", CompressSpec("int8", awq=True))
    result = run(rand_dir, tmp_path / "out", "--method", "int8", "--gptq")
    assert result.exit_code == 1 and "--gptq applies to int4" in result.output
    with pytest.raises(CompressError, match="--sparsity must be between 0 and 1"):
        compress(rand_dir, tmp_path / "out", CompressSpec("prune", sparsity=1.5))
    result = run(rand_dir, tmp_path / "out")
    assert result.exit_code == 1 and "--method is required" in result.output
    assert entries(tmp_path) == []


def test_already_quantized_source_and_existing_target(rand_dir, tmp_path):
    quantized = tmp_path / "q"
    compress(rand_dir, quantized, CompressSpec("int8"))
    before = entries(tmp_path)
    result = run(quantized, tmp_path / "again", "--method", "int4")
    assert result.exit_code == 1 and "already quantized" in result.output
    assert entries(tmp_path) == before

    mtime = (quantized / "model.safetensors").stat().st_mtime_ns
    result = run(rand_dir, quantized, "--method", "int4", "--no-evaluate")
    assert result.exit_code == 1 and "already exists; pass --overwrite" in result.output
    assert (quantized / "model.safetensors").stat().st_mtime_ns == mtime

    result = run(rand_dir, quantized, "--method", "int4", "--no-evaluate", "--overwrite")
    assert result.exit_code == 0, result.output
    assert json.loads((quantized / "config.json").read_text())["quantization"]["method"] == "int4"
    assert entries(tmp_path) == before  # the old directory was replaced, nothing left aside

    result = run(rand_dir, rand_dir / "inside", "--method", "int8")
    assert result.exit_code == 1 and "must not be SRC or lie inside it" in result.output
    result = run(tmp_path / "nope", tmp_path / "out", "--method", "int8")
    assert result.exit_code == 1 and "not a directory" in result.output


def test_a_crash_mid_write_leaves_no_checkpoint(rand_dir, tmp_path, monkeypatch):
    def crash(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint_module, "save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        compress(rand_dir, tmp_path / "out", CompressSpec("int8"))
    assert entries(tmp_path) == []  # neither out/ nor the temporary directory

    # with --overwrite, the old checkpoint survives a failed replacement
    monkeypatch.undo()
    compress(rand_dir, tmp_path / "out", CompressSpec("int8"))
    monkeypatch.setattr(checkpoint_module, "save_file", crash)
    with pytest.raises(OSError):
        compress(rand_dir, tmp_path / "out", CompressSpec("int4"), overwrite=True)
    assert entries(tmp_path) == ["out"]
    assert json.loads((tmp_path / "out" / "config.json").read_text())["quantization"]["method"] == "int8"


def test_engine_rejects_a_damaged_quantized_checkpoint(rand_dir, tmp_path):
    dst = tmp_path / "q"
    compress(rand_dir, dst, CompressSpec("int4"))
    config = json.loads((dst / "config.json").read_text())
    config["quantization"]["group_size"] = 64  # no longer matches the stored tensors
    (dst / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"q_proj\.scales has shape"):
        EngineCore(dst, EngineConfig(kv_cache_memory_mb=16))
    config["quantization"]["group_size"] = 100
    (dst / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="group_size 100 not supported"):
        EngineCore(dst, EngineConfig(kv_cache_memory_mb=16))


def test_evaluate_only_needs_an_existing_pair(rand_dir, tmp_path):
    result = run(rand_dir, tmp_path / "missing", "--evaluate-only")
    assert result.exit_code == 1 and "no config.json" in result.output
    assert entries(tmp_path) == []


@pytest.mark.timeout(300)
def test_evaluate_only_reports_on_an_existing_pair_and_changes_nothing_else(rand_dir, tmp_path):
    dst = tmp_path / "int4"
    assert run(rand_dir, dst, "--method", "int4", "--no-evaluate").exit_code == 0
    weights = (dst / "model.safetensors").read_bytes()
    text = tmp_path / "text.txt"
    text.write_text("Beautiful is better than ugly. Explicit is better than implicit. " * 10)
    result = run(rand_dir, dst, "--evaluate-only", "--no-speed", "--eval-text", text)
    assert result.exit_code == 0, result.output
    assert "| perplexity" in result.output
    report = json.loads((dst / "compression_report.json").read_text())
    assert report["compression"]["method"] == "int4" and report["output"] == str(dst)
    assert report["before"]["perplexity"] > 1 and report["after"]["perplexity"] > 1
    assert (dst / "model.safetensors").read_bytes() == weights
    assert sorted(p.name for p in dst.iterdir() if p.name.startswith("compression_report")) == [
        "compression_report.json",
        "compression_report.md",
    ]

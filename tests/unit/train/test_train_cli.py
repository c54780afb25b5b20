"""`stratus train` refuses a job it cannot run before starting any worker."""

import pytest
from click.testing import CliRunner

from stratus.cli import main


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "give one of --lora SPEC"),
        (["--full", "--lora", "r=4"], "give one of --lora SPEC"),
        (["--lora", "r=4,targets=q,nope"], "unknown target 'nope'"),
        (["--full", "--workers", "3", "--batch-size", "8"], "--batch-size must be a multiple of --workers"),
        (["--full", "--micro-batch", "0"], "--micro-batch must be at least 1"),
    ],
)
def test_usage_errors(train_llama, tmp_path, extra, message):
    data = tmp_path / "a.txt"
    data.write_text("hello world")
    args = ["train", "--model", str(train_llama), "--data", str(data), "--out", str(tmp_path / "o"), *extra]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "o").exists()


def test_out_may_not_be_the_model(train_llama, tmp_path):
    data = tmp_path / "a.txt"
    data.write_text("hello world")
    args = ["train", "--model", str(train_llama), "--data", str(data), "--out", str(train_llama), "--full"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and "--out is the model's own directory" in result.output


def test_a_missing_model_is_a_usage_error(tmp_path):
    args = [
        "train",
        "--model",
        str(tmp_path / "none"),
        "--data",
        "x.txt",
        "--out",
        str(tmp_path / "o"),
        "--full",
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and "no such file or directory" in result.output


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--full", "--deploy", "http://127.0.0.1:9", "--deploy-as", "tiny:a"], "needs --deploy-as NAME"),
        (["--lora", "r=4", "--deploy", "http://127.0.0.1:9"], "--deploy-as BASE:NAME"),
        (["--lora", "r=4", "--deploy", "http://127.0.0.1:9", "--deploy-as", "a"], "--deploy-as BASE:NAME"),
        (["--lora", "r=4", "--deploy-as", "tiny:a"], "--deploy-as needs --deploy"),
    ],
)
def test_deploy_usage_errors(train_llama, tmp_path, extra, message):
    data = tmp_path / "a.txt"
    data.write_text("hello world")
    args = ["train", "--model", str(train_llama), "--data", str(data), "--out", str(tmp_path / "o"), *extra]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and message in result.output, result.output

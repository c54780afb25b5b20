"""Examples from text and chat JSONL: which tokens are learned, and the data order."""

import json

import pytest

from stratus.engine.tokenizer import Tokenizer
from stratus.train.data import DataError, ExampleReader, Order, collate, split_heldout


@pytest.fixture
def reader(train_llama):
    return ExampleReader(Tokenizer(train_llama), seq_len=64)


def test_only_assistant_turns_are_learned(reader):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hello world"},
        {"role": "assistant", "content": "the quick brown fox"},
        {"role": "user", "content": "and then?"},
        {"role": "assistant", "content": "jumps over the lazy dog"},
    ]
    example, cut = reader.conversation(messages)
    assert not cut
    learned = [t for t, on in zip(example.ids, example.learn) if on]
    text = reader.tokenizer.decode(learned, skip_special_tokens=False)
    # each assistant turn with the template's end of turn after it, nothing of the other turns
    assert text == "the quick brown fox<|end|>\njumps over the lazy dog<|end|>\n"
    whole = reader.tokenizer.apply_chat_template(messages, add_generation_prompt=False)
    assert reader.tokenizer.decode(list(example.ids), skip_special_tokens=False) == whole


def test_long_conversations_are_cut_to_seq_len(train_llama):
    short = ExampleReader(Tokenizer(train_llama), seq_len=8)
    example, cut = short.conversation(
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "the quick brown fox " * 5}]
    )
    assert cut and len(example.ids) == 8


def test_text_is_cut_into_windows(reader, tmp_path):
    file = tmp_path / "book.txt"
    file.write_text("Beautiful is better than ugly. " * 40)
    data = reader.read([file])
    assert [len(e.ids) for e in data.examples[:-1]] == [64] * (len(data.examples) - 1)
    assert data.examples[0].ids[0] == reader.tokenizer.bos_token_id
    assert all(all(e.learn) for e in data.examples)


def test_jsonl_lines_and_errors(reader, tmp_path):
    good = tmp_path / "good.jsonl"
    rows = [
        {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
        {"text": "hello world"},
    ]
    good.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    assert len(reader.read([good]).examples) == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(rows[0]) + "\n" + json.dumps({"prompt": "x"}) + "\n")
    with pytest.raises(DataError, match=r"bad\.jsonl:2"):
        reader.read([bad])


def test_collate_pads_right_and_masks_padding(reader):
    a, _ = reader.conversation([{"role": "user", "content": "a"}, {"role": "assistant", "content": "hello"}])
    b = reader.windows("the quick brown fox jumps over the lazy dog")[0]
    ids, learn = collate([a, b], pad_id=2)
    assert ids.shape == (2, max(len(a.ids), len(b.ids)))
    assert learn.shape == (2, ids.shape[1] - 1)
    assert learn.sum().item() == a.targets + b.targets


def test_order_depends_on_step_and_seed_only():
    order = Order(10, batch_size=4, seed=3)
    seen = [i for step in range(5) for i in order.batch(step)]
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:20]) == list(range(10))
    assert Order(10, 4, 3).batch(3) == order.batch(3) != Order(10, 4, 4).batch(3)


def test_split_heldout_is_seeded_and_disjoint(reader):
    examples = reader.windows("Readability counts. " * 200)
    train, held = split_heldout(examples, 0.25, seed=1)
    assert len(held) == round(len(examples) * 0.25) and len(train) + len(held) == len(examples)
    assert split_heldout(examples, 0.25, seed=1) == (train, held)

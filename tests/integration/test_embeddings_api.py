"""POST /v1/embeddings on a live gateway with access control and metering, through the official
`openai` client and plain HTTP.

The gateway serves "embedder" (a small checkpoint declared mean-pooled and normalised the
sentence-transformers way, --task embed, in an engine process of its own) beside the shared
tiny generation model. Vectors are compared with transformers' own (AutoModel hidden states
pooled the same way): max abs difference < 1e-4, cosine > 0.9999, float32.
"""

from __future__ import annotations

import base64
import time

import httpx
import numpy as np
import openai
import pytest
import torch

from stratus.api import create_app
from stratus.api.auth import build_access
from stratus.config import Settings
from stratus.security.bootstrap import bootstrap
from stratus.security.keys import generate
from stratus.security.stage import IdentityStage
from stratus.store import usage as ledger
from tests import issued
from tests.checkpoints import add_sentence_transformers_pooling, build_checkpoint, hf_embeddings
from tests.conftest import TINY_MODEL
from tests.live_server import LiveServer

pytestmark = pytest.mark.timeout(300)

EMBEDDER = "embedder"
HIDDEN = 64
CONTEXT = 128
TEXTS = ["Beautiful is better than ugly.", "hello world", "Readability counts. " * 5]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = build_checkpoint(
        tmp_path_factory.mktemp("embedder"),
        "qwen2",
        hidden_size=HIDDEN,
        init_std=0.1,
        max_position_embeddings=CONTEXT,
    )
    add_sentence_transformers_pooling(path, "mean_tokens", normalize=True)
    return path


@pytest.fixture(scope="module")
def server(checkpoint, tiny_engine, tmp_path_factory):
    data_dir = issued.data_dir_of(tmp_path_factory.mktemp("embeddings-gateway"))
    settings = Settings(
        models={EMBEDDER: str(checkpoint)},
        task=f"{EMBEDDER}=embed",
        data_dir=str(data_dir),
        engine_isolation="process",
    )
    access = build_access(settings)
    admin = issued.record(generate().secret)
    bootstrap(access.store, admin)
    app = create_app(settings, engines={TINY_MODEL: tiny_engine}, identity=IdentityStage(access))
    with LiveServer(app) as live:
        live.wait_ready()
        live.admin = admin
        live.state = app.state.stratus
        yield live


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=server.admin, max_retries=0)


@pytest.fixture
def http(server):
    headers = {"Authorization": f"Bearer {server.admin}"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=60) as c:
        yield c


def token_ids(http, text: str) -> list[int]:
    r = http.post("/tokenize", json={"model": EMBEDDER, "prompt": text})
    assert r.status_code == 200, r.text
    return r.json()["tokens"]


def assert_matches(ours, ref: torch.Tensor) -> None:
    ours = torch.tensor(np.asarray(ours, dtype=np.float32))
    assert ours.shape == ref.shape
    assert (ours - ref).abs().max().item() < 1e-4
    assert torch.nn.functional.cosine_similarity(ours, ref, dim=-1).min().item() > 0.9999


def test_openai_client_embeddings_match_transformers(server, client, http, checkpoint):
    prompts = [token_ids(http, t) for t in TEXTS]
    ref = hf_embeddings(checkpoint, prompts, "mean", normalize=True)

    # The SDK asks for base64 by default and decodes it: little-endian float32.
    got = client.embeddings.create(model=EMBEDDER, input=TEXTS)
    assert got.object == "list" and got.model == EMBEDDER
    assert [d.index for d in got.data] == [0, 1, 2] and all(d.object == "embedding" for d in got.data)
    assert_matches([d.embedding for d in got.data], ref)
    assert got.usage.prompt_tokens == got.usage.total_tokens == sum(len(p) for p in prompts)

    floats = client.embeddings.create(model=EMBEDDER, input=TEXTS, encoding_format="float")
    # The same float32 values: JSON carries each as its shortest float32 text.
    as_f32 = np.array([d.embedding for d in floats.data], dtype=np.float32)
    assert np.array_equal(as_f32, np.array([d.embedding for d in got.data], dtype=np.float32))

    # Token ids, one list or several, embed as the texts they encode.
    one = client.embeddings.create(model=EMBEDDER, input=prompts[0], encoding_format="float")
    assert_matches([one.data[0].embedding], ref[:1])
    many = client.embeddings.create(model=EMBEDDER, input=prompts, encoding_format="float")
    assert_matches([d.embedding for d in many.data], ref)
    single = client.embeddings.create(model=EMBEDDER, input=TEXTS[1], encoding_format="float")
    assert_matches([single.data[0].embedding], ref[1:2])


def test_dimensions_truncate_then_renormalise(client, http, checkpoint):
    prompts = [token_ids(http, t) for t in TEXTS]
    full = hf_embeddings(checkpoint, prompts, "mean", normalize=True)
    short = torch.nn.functional.normalize(full[:, :16], dim=-1)
    for fmt in ("float", "base64"):
        got = client.embeddings.create(model=EMBEDDER, input=TEXTS, dimensions=16, encoding_format=fmt)
        if fmt == "base64":
            vectors = [np.frombuffer(base64.b64decode(d.embedding), dtype="<f4") for d in got.data]
        else:
            vectors = [d.embedding for d in got.data]
        assert all(len(v) == 16 for v in vectors)
        assert_matches(vectors, short)
    whole = client.embeddings.create(
        model=EMBEDDER, input="hello", dimensions=HIDDEN, encoding_format="float"
    )
    assert len(whole.data[0].embedding) == HIDDEN


def error_of(r: httpx.Response) -> dict:
    assert r.headers["content-type"].startswith("application/json")
    return r.json()["error"]


@pytest.mark.parametrize(
    ("body", "param", "says"),
    [
        ({"input": "hi", "dimensions": HIDDEN + 1}, "dimensions", "more than this model's"),
        ({"input": "hi", "dimensions": 0}, "dimensions", ""),
        ({"input": [5] * (CONTEXT + 1)}, "input", "maximum context length"),
        ({"input": ["ok", "Readability counts. " * 60]}, "input", "input 1"),
        ({"input": []}, "input", ""),
        ({"input": ""}, "input", ""),
        ({"input": ["x"] * 2049}, "input", ""),
        ({"input": [[1, 2], []]}, "input", ""),
        ({"input": [10**6]}, "input", "out of range"),
        ({"input": "hi", "encoding_format": "int8"}, "encoding_format", ""),
        ({"model": TINY_MODEL, "input": "hi"}, "model", "text generation, not embeddings"),
    ],
)
def test_bad_embedding_requests_are_400s_naming_the_field(http, body, param, says):
    r = http.post("/v1/embeddings", json={"model": EMBEDDER, **body})
    assert r.status_code == 400, r.text
    error = error_of(r)
    assert error["param"].split(".")[0] == param and says in error["message"]  # input.0: the item


def test_an_embed_model_refuses_generation_routes(http, client):
    chat = {"model": EMBEDDER, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    for path, body in (
        ("/v1/chat/completions", chat),
        ("/v1/completions", {"model": EMBEDDER, "prompt": "hi", "max_tokens": 2}),
    ):
        r = http.post(path, json=body)
        assert r.status_code == 400, r.text
        assert error_of(r)["param"] == "model" and "/v1/embeddings" in error_of(r)["message"]
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model=TINY_MODEL, input="hi")
    # The generation model still generates; the embed model still tokenizes.
    ok = http.post("/v1/completions", json={"model": TINY_MODEL, "prompt": "hi", "max_tokens": 2})
    assert ok.status_code == 200
    assert http.post("/tokenize", json={"model": EMBEDDER, "prompt": "hi"}).status_code == 200


def ledger_row(server, request_id: str) -> dict:
    with server.state.meter.store.connect() as conn:
        rows = [dict(r) for r in conn.execute(ledger.usage_ledger.select()).mappings()]
    found = [r for r in rows if r["request_id"] == request_id]
    assert len(found) == 1, found
    return found[0]


def audit_record(server, request_id: str):
    for _ in range(200):
        found = [r for r in server.state.audit.recorder.log.records() if r.request_id == request_id]
        if found:
            assert len(found) == 1
            return found[0]
        time.sleep(0.05)
    raise AssertionError(f"no audit record for {request_id}")


def test_usage_ledger_and_audit_record(server, http):
    r = http.post("/v1/embeddings", json={"model": EMBEDDER, "input": TEXTS})
    assert r.status_code == 200, r.text
    rid = r.headers["x-request-id"]
    tokens = r.json()["usage"]["prompt_tokens"]
    row = ledger_row(server, rid)
    assert (row["model"], row["prompt_tokens"], row["completion_tokens"], row["status"]) == (
        EMBEDDER,
        tokens,
        0,
        "ok",
    )
    rec = audit_record(server, rid)
    assert rec.status == 200 and rec.outcome == "ok" and rec.prompt_tokens == tokens

    refused = http.post("/v1/embeddings", json={"model": EMBEDDER, "input": [5] * (CONTEXT + 1)})
    assert refused.status_code == 400
    rid = refused.headers["x-request-id"]
    assert ledger_row(server, rid)["status"] == "refused_400"
    assert audit_record(server, rid).status == 400


def test_token_quota_counts_embedding_tokens(server, http):
    """A tokens-per-minute limit admits an embedding request by its input tokens."""
    meter = server.state.meter
    with meter.store.begin() as conn:
        ledger.put_limit(conn, {"scope": "user", "subject": "tpm-user", "tpm": 5}, time.time(), "test")
    meter.invalidate()
    r = http.post("/admin/users", json={"name": "tpm-user", "role": "member"})
    assert r.status_code in (200, 201), r.text
    key = http.post("/admin/keys", json={"name": "t", "user": "tpm-user"}).json()["secret"]
    http.put(f"/admin/users/tpm-user/models/{EMBEDDER}")
    headers = {"Authorization": f"Bearer {issued.record(key)}"}
    r = http.post(
        "/v1/embeddings", headers=headers, json={"model": EMBEDDER, "input": "Readability counts. " * 3}
    )
    assert r.status_code == 429, r.text


def test_the_route_is_in_the_openapi_document(http):
    doc = http.get("/openapi.json").json()
    op = doc["paths"]["/v1/embeddings"]["post"]
    assert op["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("EmbeddingRequest")
    assert "EmbeddingResponse" in doc["components"]["schemas"]

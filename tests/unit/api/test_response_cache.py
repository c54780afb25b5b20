"""The exact-match response cache: per tenant, canonical keys, TTL and LRU bounds."""

from stratus.api.response_cache import ResponseCache

BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}


def test_keys_are_per_tenant_and_ignore_transport_fields():
    k = ResponseCache.key
    assert k("team:a", "/r", "m", BODY) != k("team:b", "/r", "m", BODY)
    assert k("team:a", "/r", "m", BODY) == k("team:a", "/r", "m", {**BODY, "user": "x", "stream": False})
    reordered = dict(reversed(list(BODY.items())))
    assert k("team:a", "/r", "m", BODY) == k("team:a", "/r", "m", reordered)
    assert k("team:a", "/r", "m", BODY) != k("team:a", "/r", "m", {**BODY, "seed": 1})


def test_entry_is_never_served_to_another_tenant():
    cache = ResponseCache(8, ttl=60)
    cache.put("key", "team:a", {"answer": 1})
    assert cache.get("key", "team:b") is None
    assert cache.get("key", "team:a") is None  # the mismatching read dropped it


def test_returns_copies():
    cache = ResponseCache(8, ttl=60)
    cache.put("k", "t", {"choices": [1]})
    cache.get("k", "t")["choices"].append(2)
    assert cache.get("k", "t") == {"choices": [1]}


def test_ttl_and_lru():
    now = [0.0]
    cache = ResponseCache(2, ttl=10, clock=lambda: now[0])
    cache.put("a", "t", {"v": "a"})
    cache.put("b", "t", {"v": "b"})
    assert cache.get("a", "t") == {"v": "a"}  # a is now most recent
    cache.put("c", "t", {"v": "c"})  # evicts b
    assert cache.get("b", "t") is None and len(cache) == 2
    now[0] = 11
    assert cache.get("a", "t") is None

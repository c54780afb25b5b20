"""API key material: format, entropy, hashing, constant-time comparison, the verification cache."""

import base64
import hmac

import pytest

from stratus.names import redact_keys
from stratus.security import keys
from stratus.security.identity import Principal
from tests import issued


def test_format_entropy_and_hash():
    made = [keys.generate() for _ in range(50)]
    for k in made:
        issued.record(k.secret)
        assert keys.KEY_RE.fullmatch(k.secret)
        body = k.secret.split("_", 1)[1]
        assert len(base64.urlsafe_b64decode(body + "=")) * 8 >= 256  # the secret half alone
        assert keys.lookup_of(k.secret) == k.lookup and k.prefix == f"sk-stratus-{k.lookup}"
        assert k.hash == keys.digest(k.secret) and len(k.hash) == 64 and k.secret not in k.hash
        assert k.secret not in repr(k) and k.hash not in repr(k)
    assert len({k.secret for k in made}) == len({k.lookup for k in made}) == 50


@pytest.mark.parametrize(
    "token",
    [
        "",
        "sk-stratus-",
        "sk-stratus-0123456789ab",
        "sk-stratus-0123456789ab_short",
        "sk-stratus-0123456789AB_" + "a" * 43,  # lookup must be lower-case hex
        "sk-other-0123456789ab_" + "a" * 43,
        "sk-stratus-0123456789ab_" + "a" * 43 + "\n",
        "sk-stratus-0123456789ab_" + "a" * 300,
        "sk-stratus-0123456789ab_" + "a" * 42 + "!",
    ],
)
def test_malformed_keys_have_no_lookup(token):
    assert keys.lookup_of(token) is None


def test_from_secret_demands_the_format():
    good = issued.record(keys.generate().secret)
    assert keys.from_secret(good).hash == keys.digest(good)
    with pytest.raises(ValueError, match="stratus keys generate"):
        keys.from_secret("password123")


def test_comparison_is_constant_time(monkeypatch):
    calls = []
    real = hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(keys.hmac, "compare_digest", spy)
    k = keys.generate()
    issued.record(k.secret)
    assert keys.matches(keys.digest(k.secret), k.hash)
    assert not keys.matches(keys.digest(k.secret + "x"), k.hash)
    assert len(calls) == 2


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def test_cache_ttl_negative_entries_invalidation_and_bound():
    clock = Clock()
    cache = keys.VerificationCache(ttl=2.0, max_entries=3, clock=clock)
    p = Principal(user="a", key_id="key_1")
    cache.put("d1", p)
    cache.put("bad", None)
    assert cache.get("d1") == (True, p)
    assert cache.get("bad") == (True, None)  # a known refusal
    assert cache.get("other") == (False, None)
    clock.t += 2.1
    assert cache.get("d1") == (False, None)  # expired: ask the database again
    cache.put("d1", p)
    cache.put("d2", Principal(user="a", key_id="key_1"))
    cache.put("d3", Principal(user="b", key_id="key_2"))
    cache.invalidate_key("key_1")
    assert cache.get("d1")[0] is False and cache.get("d2")[0] is False and cache.get("d3")[0] is True
    for i in range(10):
        cache.put(f"x{i}", None)
    assert len(cache) == 3


def test_cache_respects_the_credentials_own_expiry():
    cache = keys.VerificationCache(ttl=60)
    expired = Principal(user="a", key_id="k", expires_at=1.0)  # long past
    cache.put("d", expired)
    assert cache.get("d") == (True, None)
    off = keys.VerificationCache(ttl=0)
    off.put("d", Principal(user="a"))
    assert off.get("d") == (False, None)


def test_redact_keeps_the_prefix_and_drops_the_secret():
    k = keys.generate()
    issued.record(k.secret)
    text = redact_keys(f"model '{k.secret}' and again {k.secret}.")
    assert k.secret.split("_", 1)[1] not in text
    assert text.count(f"{k.prefix}_[redacted]") == 2
    assert redact_keys("nothing here") == "nothing here"


def test_cache_forgets_a_users_credentials():
    cache = keys.VerificationCache(ttl=60)
    cache.put("a1", Principal(user="a", key_id="k1"))
    cache.put("a2", Principal(user="a", key_id="k2"))
    cache.put("b1", Principal(user="b", key_id="k3"))
    cache.invalidate_user("a")
    assert [cache.get(d)[0] for d in ("a1", "a2", "b1")] == [False, False, True]


def test_unknown_and_known_lookup_ids_take_the_same_refusal_path(tmp_path, monkeypatch):
    """An unknown lookup id used to be refused before any comparison, a known one after it: a
    timing difference that tells which ids exist. Both now pay one digest comparison."""
    from stratus.security.access import AccessControl
    from stratus.security.bootstrap import bootstrap
    from stratus.security.errors import Unauthenticated
    from stratus.store import Store

    path = issued.data_dir_of(tmp_path) / "stratus.db"
    Store.open(f"sqlite:///{path}").close()
    access = AccessControl(Store(f"sqlite:///{path}"), cache_ttl=0)
    known = issued.record(bootstrap(access.store).generated_secret)
    compared: list[str] = []
    real = keys.matches
    monkeypatch.setattr(keys, "matches", lambda d, stored: compared.append(stored) or real(d, stored))
    wrong_secret = issued.record(known[: known.index("_") + 1] + "A" * 43)
    unknown_id = issued.record(keys.generate().secret)
    for token in (wrong_secret, unknown_id):
        with pytest.raises(Unauthenticated):
            access.authenticate(token)
    assert len(compared) == 2 and compared[1] == keys.UNKNOWN_KEY_HASH
    assert not real(keys.digest(unknown_id), keys.UNKNOWN_KEY_HASH)
    access.store.close()

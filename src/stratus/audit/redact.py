"""Redaction of personal data and credentials from text, before content logging stores it.

    redact("mail bob@example.com, card 4111 1111 1111 1111")
    -> "mail [email], card [card]"

What is replaced, in this order (earlier patterns win where they overlap):
  api_key  stratus keys (sk-stratus-…), provider key shapes (OpenAI/Anthropic sk-…, AWS AKIA…,
           GitHub gh?_…, Slack xox?-…, Google AIza…, Hugging Face hf_…, GitLab glpat-…), JWTs,
           and long hex (32+) or base64-like (40+, letters and digits mixed) tokens
  email    name@domain.tld
  card     13-19 digits, optionally grouped by spaces or dashes, that pass the Luhn check
           (a digit run that fails it is left alone: order numbers are not cards)
  phone    an international +CC number, or a grouped national number with 9+ digits
Redaction errs towards removing too much: a false positive costs a log reader a word, a false
negative leaks a credential into a database.
"""

from __future__ import annotations

import re

_KEY_SHAPES = [
    r"sk-stratus-[0-9a-f]{12}(?:_[A-Za-z0-9_-]*)?",
    r"sk-(?:proj-|ant-(?:api\d+-)?|live_|test_)?[A-Za-z0-9_-]{20,}",
    r"(?:AKIA|ASIA)[0-9A-Z]{16}",
    r"gh[pousr]_[A-Za-z0-9]{30,}",
    r"github_pat_[A-Za-z0-9_]{40,}",
    r"xox[abprs]-[A-Za-z0-9-]{10,}",
    r"AIza[0-9A-Za-z_-]{35}",
    r"hf_[A-Za-z0-9]{30,}",
    r"glpat-[A-Za-z0-9_-]{20,}",
    r"(?<![A-Za-z0-9_-])eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*",  # a JWT
    r"(?<![A-Za-z0-9])[0-9a-fA-F]{32,}(?![A-Za-z0-9])",
    r"(?<![A-Za-z0-9+/_-])(?=[A-Za-z0-9+/_-]*\d)(?=[A-Za-z0-9+/_-]*[A-Za-z])[A-Za-z0-9+/_-]{40,}={0,2}",
]
API_KEY = re.compile("|".join(f"(?:{p})" for p in _KEY_SHAPES))
# The local part is bounded (64, RFC 5321): unbounded, a long run with no "@" was rescanned from
# every position, and a 20 kB prompt took seconds.
EMAIL = re.compile(r"[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
CARD_CANDIDATE = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d])")
PHONE = re.compile(
    r"(?<![\w+])(?:\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{2,4}(?:[ .-]?\d{2,4}){1,4}"
    r"|\(?\d{3}\)?[ .-]\d{3}[ .-]\d{4})(?![\w])"
)


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _card(match: re.Match) -> str:
    digits = re.sub(r"[ -]", "", match.group())
    return "[card]" if 13 <= len(digits) <= 19 and luhn_ok(digits) else match.group()


def _phone(match: re.Match) -> str:
    digits = sum(c.isdigit() for c in match.group())
    return "[phone]" if digits >= 9 else match.group()


def redact(text: str) -> str:
    """`text` with every credential, e-mail address, card number and phone number replaced."""
    text = API_KEY.sub("[api_key]", text)
    text = EMAIL.sub("[email]", text)
    text = CARD_CANDIDATE.sub(_card, text)
    return PHONE.sub(_phone, text)
